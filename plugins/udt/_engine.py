"""The sans-IO UDT4 engine: datagrams and a clock in, datagrams and events out.

Theory of operation
-------------------

An :class:`Endpoint` is one UDP port's worth of UDT (the reference's
multiplexer: ``CSndQueue`` + ``CRcvQueue``): it owns every :class:`Session`
(the reference's ``CUDT``, one UDT socket) bound to that port, an optional
listener, and the rendezvous/connecting sessions. It does no I/O:

* ``receive_datagram(data, addr, now)`` (or :meth:`Endpoint.receive_segments`
  for a GRO-coalesced batch) feeds what arrived on the UDP socket;
* ``datagrams_to_send()`` hands back what must be sent, as
  ``(data, addr, segment_size)``: ``segment_size`` 0 is one datagram, else
  ``data`` is several packets of that size (the last may be shorter) that the
  driver sends with ``UDP_SEGMENT`` or splits. ``data`` is a bytes-like
  object or a list of them to be sent gathered (``sendmsg``'s iovecs), so
  that packet payloads are never copied in Python;
* ``next_deadline()`` says when :meth:`Endpoint.handle_timeout` must next be
  called; every timer (ACK, NAK, EXP, handshake retransmission, linger) *and*
  the paced sending of data run from ``handle_timeout(now)``;
* ``next_event()`` returns what happened (a connection accepted, connected,
  failed, readable, writable, closed).

Time is a float in seconds (the driver passes ``trio.current_time()``);
packet timestamps and the congestion-control interface use microseconds as
the reference does. Sequence numbers are kept *extended* (never wrapping) in
every structure and cut to 31 bits only on the wire (see :mod:`._seq`).

Pacing: the congestion controller gives a packet period; rather than waking
per packet, a session due to send is allowed as many packets as the elapsed
time covers (at most ``max_burst`` seconds' worth), so the driver wakes about
once a millisecond at most, and packets leave in GSO batches.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import os
import random
import statistics
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from trio_conduit import ConduitError

from ._congestion import SYN_INTERVAL, CongestionControl, NativeCC
from ._cookie import CookieJar
from ._losslist import LossList
from ._packet import (
    HANDSHAKE_SIZE,
    HEADER,
    HEADER_SIZE,
    BadPacket,
    Boundary,
    ControlType,
    Handshake,
    RequestType,
    SocketType,
    UserDefined,
    encode_loss_list,
    ip_to_wire,
    parse_packet_untrusted,
)
from ._seq import MAX_MSGNO, SEQ_MASK, SEQ_THRESHOLD, next_msgno

__all__ = [
    "UDT_VERSION",
    "Accepted",
    "CloseReason",
    "Closed",
    "Config",
    "ConnectFailed",
    "Connected",
    "Endpoint",
    "Event",
    "FailReason",
    "LocalProtocolError",
    "Readable",
    "Session",
    "State",
    "Stats",
    "Writable",
]

UDT_VERSION: Final = 4
#: UDT's SYN interval in seconds.
SYN: Final = SYN_INTERVAL / 1_000_000
_IP_UDP_HEADERS: Final = 28
_CONTROL_FLAG: Final = 0x80000000
_MIN_EXP: Final = 0.3  # the reference's minimum EXP period
_MIN_NAK: Final = 2 * SYN
_MAX_NAK: Final = _MIN_EXP / 2
_BROKEN_SILENCE: Final = 5.0
_BROKEN_EXPIRATIONS: Final = 16
_LIGHT_ACK_PACKETS: Final = 64
_ACK_WINDOW: Final = 1024
_MAX_SEGMENTS: Final = 64
_MAX_GSO_BYTES: Final = 65000
_CONFIRM_TIME: Final = 1.0
_SHUTDOWN_COPIES: Final = 3
#: A packet pair found inside one coalesced datagram came back to back: 1 us apart at most.
_BACK_TO_BACK: Final = 1e-6
_CONFIRM_PROBE: Final = 0.05
_NEVER: Final = math.inf
_U32: Final = 0xFFFFFFFF
_HS_ID: Final = struct.Struct("!i")
_WORD: Final = struct.Struct("!I")
_SEQ_DEST: Final = struct.Struct("!I8xI")  # a data packet's sequence word and destination id
# A received-but-dropped message's slot in the reorder buffer.
_DROPPED: Final = None


class LocalProtocolError(ConduitError, RuntimeError):
    """The application asked for something the connection cannot do now."""


class State(enum.Enum):
    """A session's life: connecting, connected, lingering on close, closed."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: Closed by the application; waiting for its sent data to be acknowledged (linger).
    CLOSING = "closing"
    CLOSED = "closed"


class FailReason(enum.Enum):
    """Why a connect attempt failed."""

    TIMEOUT = "no response in time"
    REJECTED = "the listener rejected the connection (1002)"
    SECURITY = "the response's initial sequence number does not match the request's"
    CANCELLED = "the connect was abandoned"


class CloseReason(enum.Enum):
    """Why a session ended."""

    #: This side closed it (``close``/``abort``).
    LOCAL = "closed locally"
    #: The peer sent a shutdown.
    PEER_SHUTDOWN = "the peer closed the connection"
    #: Nothing heard from the peer for 16 EXP periods and at least 5 s.
    TIMEOUT = "the peer stopped responding"
    #: The peer sent something impossible (an ACK beyond what was sent, a bad loss list).
    PROTOCOL = "the peer broke the protocol"


# ---------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """A listener set up a new connection; take it with :meth:`Endpoint.accept`."""

    session: Session


@dataclass(frozen=True, slots=True)
class Connected:
    """An outgoing (or rendezvous) connect finished."""

    session: Session


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """An outgoing (or rendezvous) connect failed."""

    session: Session
    reason: FailReason


@dataclass(frozen=True, slots=True)
class Readable:
    """Data (or end of data) is waiting to be read."""

    session: Session


@dataclass(frozen=True, slots=True)
class Writable:
    """Send buffer space was freed."""

    session: Session


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is gone (its socket id is free again)."""

    session: Session
    reason: CloseReason


Event = Accepted | Connected | ConnectFailed | Readable | Writable | Closed


# ---------------------------------------------------------------------------
# configuration and statistics
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """Per-connection settings (the reference's socket options and defaults).

    Sizes follow the reference: ``mss`` includes the IP and UDP headers;
    ``snd_buf``/``rcv_buf`` count packets; ``flight_flag_size`` is the
    largest flow window (packets).
    """

    socket_type: SocketType = SocketType.STREAM
    mss: int = 1500
    flight_flag_size: int = 25600
    snd_buf: int = 8192
    rcv_buf: int = 8192
    #: Seconds ``close`` waits for unacknowledged data; ``None`` disables linger.
    linger: float | None = 180.0
    #: Bytes per second the connection may use (``None``: no limit).
    max_bandwidth: float | None = None
    rendezvous: bool = False
    #: Makes the congestion controller for a new connection.
    congestion: Callable[[], CongestionControl] = NativeCC
    #: Send NAKs for still-missing packets periodically (the draft's NAK timer).
    periodic_nak: bool = True
    connect_timeout: float = 3.0
    rendezvous_timeout: float = 30.0
    request_interval: float = 0.25
    #: Longest burst of paced packets, in seconds of sending time (catching up after a delay).
    max_burst: float = 0.002
    #: Shortest burst: when sending, send at least this much sending time's worth of packets
    #: (ahead of the pacing schedule), so that the driver wakes about once a millisecond ...
    min_burst: float = 0.001
    #: ... and at least this many packets. The reference's timer paces in clumps like
    #: these, and its receivers' rate measurements (per-packet intervals) rely on them.
    min_burst_packets: int = 16

    def __post_init__(self) -> None:
        if self.mss < _IP_UDP_HEADERS + HANDSHAKE_SIZE:
            raise ValueError(f"mss must be at least {_IP_UDP_HEADERS + HANDSHAKE_SIZE}")
        if self.mss > 65535:
            raise ValueError("mss must be at most 65535")
        if self.flight_flag_size < 1 or self.snd_buf < 1 or self.rcv_buf < 1:
            raise ValueError("window and buffer sizes must be positive")

    @property
    def advertised_window(self) -> int:
        """What the handshake announces: the smaller of the receive buffer and the flow window."""
        return min(self.rcv_buf, max(32, self.flight_flag_size))


@dataclass(slots=True)
class Stats:
    """Performance counters, after UDT's ``CPerfMon`` (totals since the connection started)."""

    pkt_sent: int = 0
    pkt_recv: int = 0
    pkt_snd_loss: int = 0
    pkt_rcv_loss: int = 0
    pkt_retrans: int = 0
    pkt_recv_dup: int = 0
    pkt_sent_ack: int = 0
    pkt_recv_ack: int = 0
    pkt_sent_nak: int = 0
    pkt_recv_nak: int = 0
    pkt_sent_ack2: int = 0
    pkt_recv_ack2: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    msg_dropped: int = 0
    pkt_timeout_loss: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A moment's view of a session: UDT's ``perfmon`` plus the negotiated values."""

    elapsed: float
    pkt_sent: int
    pkt_recv: int
    pkt_snd_loss: int
    #: Of ``pkt_snd_loss``: packets marked lost because an EXP timeout expired (all unacknowledged ones).
    pkt_timeout_loss: int
    pkt_rcv_loss: int
    pkt_retrans: int
    pkt_recv_dup: int
    pkt_sent_ack: int
    pkt_recv_ack: int
    pkt_sent_nak: int
    pkt_recv_nak: int
    bytes_sent: int
    bytes_recv: int
    msg_dropped: int
    #: Average rates since the start, megabits per second.
    mbps_send_rate: float
    mbps_recv_rate: float
    us_pkt_snd_period: float
    pkt_flow_window: int
    pkt_congestion_window: int
    pkt_flight_size: int
    ms_rtt: float
    ms_rtt_var: float
    mbps_bandwidth: float
    pkt_delivery_rate: int
    byte_avail_snd_buf: int
    byte_avail_rcv_buf: int
    mss: int
    socket_id: int
    peer_socket_id: int
    isn: int
    peer_isn: int
    congestion: str


# ---------------------------------------------------------------------------
# the send buffer
# ---------------------------------------------------------------------------


class _Chunk:
    """A run of send-buffer packets from one ``send``: stream bytes or one message."""

    __slots__ = ("data", "dropped", "first", "in_order", "msgno", "npkts", "origin", "ttl", "view")

    def __init__(
        self,
        first: int,
        data: bytes | memoryview,
        npkts: int,
        msgno: int,
        in_order: bool,
        ttl: float | None,
        origin: float,
    ) -> None:
        self.first = first
        self.data = data
        self.view = memoryview(data)
        self.npkts = npkts
        self.msgno = msgno
        self.in_order = in_order
        self.ttl = ttl
        self.origin = origin
        self.dropped = False

    @property
    def end(self) -> int:
        return self.first + self.npkts


class _RateWindow:
    """Median-filtered intervals (the reference's ``CPktTimeWindow``), for rates in packets/s."""

    __slots__ = ("_pos", "_values")

    def __init__(self, size: int, initial: float) -> None:
        self._values = [initial] * size
        self._pos = 0

    def add(self, interval: float) -> None:
        self._values[self._pos] = interval
        self._pos = (self._pos + 1) % len(self._values)

    def add_many(self, interval: float, count: int) -> None:
        size = len(self._values)
        for _ in range(min(count, size)):
            self._values[self._pos] = interval
            self._pos = (self._pos + 1) % size

    def rate(self, *, need_half: bool) -> int:
        values = self._values
        median = statistics.median_low(values)
        upper, lower = median * 8, median / 8
        kept = [v for v in values if lower < v < upper]
        if need_half and len(kept) <= len(values) // 2:
            return 0
        if not need_half:
            kept.append(median)
        mean = sum(kept) / len(kept) if kept else 0.0
        return math.ceil(1.0 / mean) if mean > 0 else 0


# ---------------------------------------------------------------------------
# a session (one UDT socket)
# ---------------------------------------------------------------------------


class Session:
    """One UDT connection's protocol state: handshake, sender, receiver, timers.

    Made by :meth:`Endpoint.connect` or by the endpoint's listener; never
    directly. The application side is :meth:`send` / :meth:`send_message`,
    :meth:`receive` / :meth:`receive_message`, :meth:`close` and
    :meth:`abort`; the rest is driven by the endpoint.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        socket_id: int,
        peer_addr: tuple[Any, ...],
        config: Config,
        now: float,
        *,
        role: str,
    ) -> None:
        self.endpoint = endpoint
        self.socket_id = socket_id
        self.peer_addr = peer_addr
        self.config = config
        self.role = role  # "client", "server" or "rendezvous"
        self.state = State.CONNECTING
        self.close_reason: CloseReason | None = None
        self.fail_reason: FailReason | None = None
        self.stats = Stats()
        self.peer_id = 0
        self.isn = 0
        self.peer_isn = 0
        self.mss = config.mss
        self.payload_size = config.mss - _IP_UDP_HEADERS - HEADER_SIZE
        self.flow_window = config.flight_flag_size
        self.start_time = now
        #: The peer closed (shutdown received): reads drain, then end.
        self.peer_closed = False
        self._closed_by_app = False
        # handshake
        self._request: Handshake | None = None
        self._response: Handshake | None = None
        self._last_request = -_NEVER
        self._connect_deadline = _NEVER
        self._deadline = _NEVER
        self._gen = 0
        self._in_accept_queue = False
        self._window_update = False
        self._last_avail = 0
        # rendezvous: data waits until the peer is known to be connected (see _establish)
        self._confirm_until = -_NEVER
        # sender
        self._chunks: list[_Chunk] = []
        self._chunk_head = 0
        self._send_chunk = 0
        self._send_pkt = 0
        self._snd_next = 0  # next new sequence number to send (extended)
        self._snd_end = 0  # sequence number after the last buffered packet
        self._snd_last_ack = 0
        self._snd_last_data_ack = 0
        self._snd_loss = LossList()
        self._snd_next_time = now
        self._snd_want = False
        self._period = 1e-6  # seconds per packet
        self._cwnd = 16.0
        self._msgno = 1
        self._last_ack2_seqno = -1
        self._last_ack2_time = -_NEVER
        self._snd_bytes_buffered = 0
        self._linger_deadline = _NEVER
        # receiver
        self._rcv_next = 0  # everything before this was received (extended)
        self._rcv_next31 = 0
        self._rcv_curr = -1  # the largest sequence number received
        self._rcv_last_ack = 0
        self._rcv_last_ack_ack = 0
        self._reorder: dict[int, tuple[int, Any] | None] = {}
        self._rcv_loss = LossList()
        self._readable: deque[Any] = deque()
        self._readable_bytes = 0
        self._head_offset = 0
        self._buffered_pkts = 0
        self._msg_parts: list[Any] = []
        self._msg_parts_pkts = 0
        self._messages: deque[tuple[bytes, int]] = deque()
        self._unordered: dict[int, list[int]] = {}
        self._delivered_early: set[int] = set()
        self._ack_seqno = 0
        self._ack_window: deque[tuple[int, int, float]] = deque(maxlen=_ACK_WINDOW)
        self._last_full_ack = -_NEVER
        self._last_ack_sent = -_NEVER
        self._next_ack = now + SYN
        self._next_nak = now + _MIN_EXP
        self._nak_interval = _MIN_NAK
        self._pkt_count = 0
        self._light_ack_count = 1
        # arrival rate: median-filtered packet intervals (the reference's CPktTimeWindow)
        self._speed = _RateWindow(16, 1.0)
        self._last_arrival = now
        self._probe = _RateWindow(64, 0.001)
        self._probe_time = -_NEVER
        self._probe_batch = -1
        self._probe_seq31 = -1
        self._batch = 0
        # shared
        self.rtt = 0.1  # seconds
        self.rtt_var = 0.05
        self.delivery_rate = 16  # packets/s, from the peer's ACKs
        self.bandwidth = 1  # packets/s, from the peer's ACKs
        self._rate_seen = False
        self._bw_seen = False
        self._exp_count = 1
        self._last_rsp = now
        self.cc: CongestionControl = config.congestion()

    # -- facts ----------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<Session {self.socket_id} {self.state.value} peer {self.peer_id}@{self.peer_addr}>"

    @property
    def is_stream(self) -> bool:
        return self.config.socket_type is SocketType.STREAM

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    @property
    def send_buffered(self) -> int:
        """Packets in the send buffer (sent but unacknowledged, or not yet sent)."""
        return self._snd_end - self._snd_last_data_ack

    @property
    def send_space(self) -> int:
        """Free send-buffer space, in bytes."""
        return max(0, self.config.snd_buf - self.send_buffered) * self.payload_size

    @property
    def readable_bytes(self) -> int:
        return self._readable_bytes

    @property
    def messages_waiting(self) -> int:
        return len(self._messages)

    @property
    def at_eof(self) -> bool:
        """No more data will ever arrive (the peer closed, or the connection ended)."""
        return self.peer_closed or self.state is State.CLOSED

    def _now_us(self, now: float) -> int:
        return int((now - self.start_time) * 1_000_000) & _U32

    # -- the application side ---------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue stream bytes; returns how many fit in the send buffer (possibly 0)."""
        if not self.is_stream:
            raise LocalProtocolError("send() is for stream connections; use send_message()")
        self._check_sendable()
        size = len(data)
        if not size:
            return 0
        free = self.config.snd_buf - self.send_buffered
        if free <= 0:
            return 0
        take = min(size, free * self.payload_size)
        # Immutable bytes (directly or under a memoryview) are kept by reference; anything
        # the caller may change after send_all returns is copied.
        chunk_data: bytes | memoryview
        if isinstance(data, bytes):
            chunk_data = data if take == size else memoryview(data)[:take]
        elif isinstance(data, memoryview) and isinstance(data.obj, bytes) and data.contiguous:
            chunk_data = data[:take]  # a new view: the caller may release its own
        else:
            chunk_data = bytes(data[:take])
        self._enqueue(chunk_data, False, None, now)
        return take

    def send_message(
        self,
        data: bytes | bytearray | memoryview,
        now: float,
        *,
        ttl: float | None = None,
        in_order: bool = True,
    ) -> bool:
        """Queue one message whole; ``False`` when the send buffer lacks room for it now.

        ``ttl``: seconds after which an undelivered message is dropped (sender
        side, like the reference's ``msttl``); ``None`` never. ``in_order``:
        deliver only after every earlier message.
        """
        if self.is_stream:
            raise LocalProtocolError("send_message() is for message connections; use send()")
        self._check_sendable()
        size = len(data)
        if size > self.max_message_size:
            raise LocalProtocolError(
                f"message of {size} bytes is larger than the send buffer ({self.max_message_size} bytes)"
            )
        npkts = max(1, -(-size // self.payload_size))
        if self.config.snd_buf - self.send_buffered < npkts:
            return False
        self._enqueue(bytes(data), in_order, ttl, now)
        return True

    @property
    def max_message_size(self) -> int:
        return self.config.snd_buf * self.payload_size

    def _check_sendable(self) -> None:
        if self.state is not State.CONNECTED or self._closed_by_app:
            raise LocalProtocolError(f"cannot send on a {self.state.value} connection")

    def _enqueue(self, data: bytes | memoryview, in_order: bool, ttl: float | None, now: float) -> None:
        npkts = max(1, -(-len(data) // self.payload_size))
        if self._snd_end == self._snd_last_data_ack:
            # nothing was outstanding: restart the EXP clock (as the reference does)
            self._last_rsp = now
        chunk = _Chunk(self._snd_end, data, npkts, self._msgno, in_order, ttl, now)
        self._msgno = next_msgno(self._msgno)
        self._chunks.append(chunk)
        self._snd_end += npkts
        self._snd_bytes_buffered += len(data)
        if not self._snd_want:
            self._snd_want = True
            if self._snd_next_time < now:
                self._snd_next_time = now
        self._reschedule()

    def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of stream data (``b""`` when none is waiting)."""
        if not self._readable_bytes:
            return b""
        readable = self._readable
        head = self._head_offset
        first = readable[0]
        flen = len(first) - head
        if flen >= max_bytes:
            # one packet (or a piece of one) is enough
            out = bytes(first[head : head + max_bytes])
            if flen == max_bytes:
                readable.popleft()
                self._head_offset = 0
            else:
                self._head_offset = head + max_bytes
            self._readable_bytes -= max_bytes
            self._after_read(max_bytes)
            return out
        parts = [first[head:] if head else first]
        total = flen
        readable.popleft()
        while readable:
            nxt = readable[0]
            n = len(nxt)
            if total + n > max_bytes:
                if total < max_bytes:
                    take = max_bytes - total
                    parts.append(nxt[:take])
                    total += take
                    self._head_offset = take
                else:
                    self._head_offset = 0
                break
            parts.append(nxt)
            total += n
            readable.popleft()
        else:
            self._head_offset = 0
        out = b"".join(parts)
        self._readable_bytes -= len(out)
        self._after_read(len(out))
        return out

    def receive_message(self) -> bytes | None:
        """The next whole message, or ``None`` when none is complete."""
        if not self._messages:
            return None
        data, npkts = self._messages.popleft()
        self._readable_bytes -= len(data)
        self._buffered_pkts -= npkts
        self._after_read(len(data))
        return data

    def _held(self) -> int:
        """Packets' worth of received data the application has not read yet (the window's use)."""
        if self.is_stream:
            return -(-self._readable_bytes // self.payload_size)
        return self._buffered_pkts

    def _after_read(self, n: int) -> None:
        # A reader draining a buffer that was advertised (nearly) full reopens the
        # window: tell the sender now rather than waiting for its next probe.
        if self.state is not State.CONNECTED or self._window_update:
            return
        limit = self.config.rcv_buf
        if self._last_avail < limit // 8 and limit - self._held() - 1 >= limit // 4:
            self._window_update = True
            self._next_ack = self.endpoint.now
            self._reschedule()

    def close(self, now: float) -> None:
        """Graceful close: linger until sent data is acknowledged (or ``linger`` passes), then shut down."""
        if self.state is State.CONNECTING:
            self._fail(FailReason.CANCELLED, now)
            return
        if self.state is not State.CONNECTED:
            return
        self._closed_by_app = True
        linger = self.config.linger
        if linger and self.send_buffered and not self.peer_closed:
            self.state = State.CLOSING
            self._linger_deadline = now + linger
            self._reschedule()
            return
        self._finish(CloseReason.LOCAL, now, send_shutdown=not self.peer_closed)

    def abort(self, now: float) -> None:
        """Forceful close: send a shutdown now and forget everything."""
        if self.state is State.CONNECTING:
            self._fail(FailReason.CANCELLED, now)
        elif self.state in (State.CONNECTED, State.CLOSING):
            self._closed_by_app = True
            self._finish(CloseReason.LOCAL, now, send_shutdown=not self.peer_closed)

    # -- output helpers -----------------------------------------------------------
    def _control(self, packet: bytes) -> None:
        self.endpoint._out.append((packet, self.peer_addr, 0))

    def _send_control(self, word0: int, word1: int, body: bytes, now: float) -> None:
        self.endpoint._out.append(
            (HEADER.pack(word0, word1, self._now_us(now), self.peer_id) + body, self.peer_addr, 0)
        )

    # -- handshake ----------------------------------------------------------------
    def _start_connect(self, now: float, isn: int) -> None:
        cfg = self.config
        self.isn = isn
        self._init_sender_seq(isn, now)
        rendezvous = self.role == "rendezvous"
        self._request = Handshake(
            version=UDT_VERSION,
            socket_type=int(cfg.socket_type),
            isn=isn,
            mss=cfg.mss,
            flight_flag_size=cfg.advertised_window,
            request_type=int(RequestType.RENDEZVOUS if rendezvous else RequestType.CONNECT),
            socket_id=self.socket_id,
            cookie=0,
            peer_ip=ip_to_wire(self.peer_addr[0]),
        )
        timeout = cfg.rendezvous_timeout if rendezvous else cfg.connect_timeout
        self._connect_deadline = now + timeout
        self._send_request(now)

    def _send_request(self, now: float) -> None:
        assert self._request is not None
        dest = self._response.socket_id if (self.role == "rendezvous" and self._response) else 0
        pkt = Handshake(
            **{
                **{f: getattr(self._request, f) for f in _HS_FIELDS},
                "timestamp": self._now_us(now),
                "dest": dest & _U32,
            }
        )
        self._control(pkt.encode())
        self._last_request = now
        self._reschedule()

    def _on_connecting_packet(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """A packet for a session still connecting (the reference's ``CUDT::connect(response)``)."""
        try:
            pkt = parse_packet_untrusted(data)
        except BadPacket:
            return
        if not isinstance(pkt, Handshake):
            # A rendezvous peer that already connected sends data or keep-alives: it got our
            # request; connect with its recorded response and take the packet as usual.
            if self.role == "rendezvous" and self._response is not None and self._response.socket_type != 0:
                self._establish(self._response, now)
                if self.state is State.CONNECTED:
                    w0, w1 = HEADER.unpack_from(data)[:2]
                    if w0 & _CONTROL_FLAG:
                        self._on_control(data, w0, w1, now)
                    else:
                        self._on_data_segments(data, 0, len(data), len(data), now, self.peer_addr)
            return
        assert self._request is not None
        if self.role == "rendezvous":
            if pkt.request_type == RequestType.CONNECT:
                return  # a regular connect must not talk to a rendezvous one
            if pkt.request_type == RequestType.REJECTED:
                self._fail(FailReason.REJECTED, now)
                return
            self._response = pkt
            if (
                self._request.request_type == RequestType.RENDEZVOUS
                or pkt.request_type == RequestType.RENDEZVOUS
            ):
                self._request = _replace_hs(self._request, request_type=int(RequestType.RESPONSE))
                self._send_request(now)
                return
            self._establish(pkt, now)
            return
        if pkt.request_type == RequestType.CONNECT:
            # the listener's cookie challenge: answer with the cookie
            self._request = _replace_hs(
                self._request, request_type=int(RequestType.RESPONSE), cookie=pkt.cookie
            )
            self._send_request(now)
            return
        if pkt.request_type == RequestType.REJECTED:
            self._fail(FailReason.REJECTED, now)
            return
        if pkt.request_type != RequestType.RESPONSE:
            return
        if pkt.isn != self.isn:
            self._fail(FailReason.SECURITY, now)
            return
        self._establish(pkt, now)

    def _establish(self, res: Handshake, now: float) -> None:
        """Configure from the peer's response and go CONNECTED (client and rendezvous)."""
        if not _sane_handshake(res):
            return
        self.mss = min(self.config.mss, res.mss)
        self.flow_window = res.flight_flag_size
        self.peer_isn = res.isn
        self.peer_id = res.socket_id
        self._response = res
        self._init_receiver_seq(res.isn, now)
        self._become_connected(now)
        if self.role == "rendezvous" and res.request_type != RequestType.RENDEZVOUS_RESPONSE:
            # The peer may still be connecting, and the reference drops every packet that
            # reaches a rendezvous socket before it has connected. Hold our data until the
            # peer shows it is connected (it answers this -1 with -2, or sends anything),
            # probing every 50 ms for at most a second.
            self._confirm_until = now + _CONFIRM_TIME
            self._send_request(now)
        self.endpoint._events.append(Connected(self))

    def _accept_request(self, hs: Handshake, now: float) -> Handshake:
        """Server side of a valid request (the reference's ``CUDT::connect(peer, hs)``); the response."""
        cfg = self.config
        self.mss = min(cfg.mss, hs.mss)
        self.flow_window = hs.flight_flag_size
        self.peer_isn = hs.isn
        self.peer_id = hs.socket_id
        # The reference answers with the client's ISN as its own (the client checks it).
        self.isn = hs.isn
        self._init_sender_seq(hs.isn, now)
        self._init_receiver_seq(hs.isn, now)
        self._become_connected(now)
        return Handshake(
            version=UDT_VERSION,
            socket_type=hs.socket_type,
            isn=self.isn,
            mss=self.mss,
            flight_flag_size=cfg.advertised_window,
            request_type=int(RequestType.RESPONSE),
            socket_id=self.socket_id,
            cookie=hs.cookie,
            peer_ip=ip_to_wire(self.peer_addr[0]),
            timestamp=self._now_us(now),
            dest=hs.socket_id & _U32,
        )

    def _response_again(self, hs: Handshake, now: float) -> Handshake:
        """A repeated request from the peer of this connection: answer from what is set up."""
        return Handshake(
            version=UDT_VERSION,
            socket_type=hs.socket_type,
            isn=self.isn,
            mss=self.mss,
            flight_flag_size=self.config.advertised_window,
            request_type=int(RequestType.RESPONSE),
            socket_id=self.socket_id,
            cookie=hs.cookie,
            peer_ip=ip_to_wire(self.peer_addr[0]),
            timestamp=self._now_us(now),
            dest=hs.socket_id & _U32,
        )

    def _init_sender_seq(self, isn: int, now: float) -> None:
        self._snd_next = isn
        self._snd_end = isn
        self._snd_last_ack = isn
        self._snd_last_data_ack = isn

    def _init_receiver_seq(self, peer_isn: int, now: float) -> None:
        self._rcv_next = peer_isn
        self._rcv_next31 = peer_isn
        self._rcv_curr = peer_isn - 1
        self._rcv_last_ack = peer_isn
        self._rcv_last_ack_ack = peer_isn

    def _become_connected(self, now: float) -> None:
        self.payload_size = self.mss - _IP_UDP_HEADERS - HEADER_SIZE
        self.state = State.CONNECTED
        self._connect_deadline = _NEVER
        self.start_time = now
        self._last_rsp = now
        self._next_ack = now + SYN
        self._next_nak = now + _MIN_EXP
        self._snd_next_time = now
        cc = self.cc
        self._cc_inputs(now)
        cc.max_cwnd = float(self.flow_window)
        cc._send_custom = self._send_custom
        cc.init()
        self._cc_update()
        self.endpoint._on_connected(self)
        self._reschedule()

    def _fail(self, reason: FailReason, now: float) -> None:
        if self.state is not State.CONNECTING:
            return
        self.fail_reason = reason
        self.state = State.CLOSED
        self._deadline = _NEVER
        self.endpoint._forget(self)
        self.endpoint._events.append(ConnectFailed(self, reason))

    def _finish(self, reason: CloseReason, now: float, *, send_shutdown: bool) -> None:
        if self.state is State.CLOSED:
            return
        if send_shutdown and self.state in (State.CONNECTED, State.CLOSING):
            # Nothing acknowledges a shutdown; a lost one leaves the peer waiting out its
            # broken-connection timer (about 46 s). The reference sends one: send a few.
            for _ in range(_SHUTDOWN_COPIES):
                self._send_control(_CONTROL_FLAG | (ControlType.SHUTDOWN << 16), 0, b"\0\0\0\0", now)
        was_connected = self.state is not State.CONNECTING
        self.state = State.CLOSED
        self.close_reason = reason
        self._deadline = _NEVER
        self._snd_loss.clear()
        self._chunks.clear()
        self._chunk_head = self._send_chunk = 0
        self._reorder.clear()
        if was_connected:
            self.cc.close()
        self.endpoint._forget(self)
        self.endpoint._events.append(Closed(self, reason))

    # -- timers ---------------------------------------------------------------------
    def _compute_deadline(self) -> float:
        state = self.state
        if state is State.CONNECTING:
            return min(self._connect_deadline, self._last_request + self.config.request_interval)
        if state is State.CLOSED:
            return _NEVER
        d = self._exp_deadline()
        if self._rcv_next != self._rcv_last_ack_ack or self._window_update:
            d = min(d, self._next_ack)
        if self.config.periodic_nak and self._rcv_loss:
            d = min(d, self._next_nak)
        if self._confirm_until != -_NEVER:
            d = min(d, self._confirm_until, self._last_request + _CONFIRM_PROBE)
        elif self._snd_want and (self._snd_loss or self._can_send_new()):
            d = min(d, self._snd_next_time)
        if state is State.CLOSING:
            d = min(d, self._linger_deadline)
        return d

    def _can_send_new(self) -> bool:
        if self._snd_next >= self._snd_end:
            return False
        return self._snd_next - self._snd_last_ack < int(min(self.flow_window, self._cwnd))

    def _exp_deadline(self) -> float:
        rto = self.cc.rto
        if rto is not None:
            return self._last_rsp + rto / 1_000_000
        n = self._exp_count
        interval = max(n * (self.rtt + 4 * self.rtt_var) + SYN, n * _MIN_EXP)
        return self._last_rsp + interval

    def _reschedule(self) -> None:
        d = self._compute_deadline()
        if d != self._deadline:
            self._deadline = d
            self._gen += 1
            if d != _NEVER:
                self.endpoint._schedule(self, d)

    def _on_timer(self, now: float) -> None:
        state = self.state
        if state is State.CONNECTING:
            if now >= self._connect_deadline:
                self._fail(FailReason.TIMEOUT, now)
                return
            if now - self._last_request >= self.config.request_interval:
                self._send_request(now)
            return
        if state is State.CLOSED:
            return
        if state is State.CLOSING and (now >= self._linger_deadline or not self.send_buffered):
            self._finish(CloseReason.LOCAL, now, send_shutdown=True)
            return
        self._cc_update_inputs(now)
        if now >= self._next_ack:
            self._send_ack(now)
        if self.config.periodic_nak and self._rcv_loss and now >= self._next_nak:
            self._send_periodic_nak(now)
        if now >= self._exp_deadline():
            self._on_exp(now)
            if self.state is State.CLOSED:
                return
        if self._confirm_until != -_NEVER:
            if now >= self._confirm_until:
                self._confirmed(now)  # the peer never said; send anyway
            elif now - self._last_request >= _CONFIRM_PROBE:
                self._send_request(now)
        if self._snd_want and now >= self._snd_next_time and self._confirm_until == -_NEVER:
            self._emit(now)
        self._reschedule()

    def _on_exp(self, now: float) -> None:
        if self._exp_count > _BROKEN_EXPIRATIONS and now - self._last_rsp > _BROKEN_SILENCE:
            self._finish(CloseReason.TIMEOUT, now, send_shutdown=False)
            return
        if self.send_buffered:
            if self._snd_next != self._snd_last_ack and not self._snd_loss:
                # resend everything unacknowledged
                n = self._snd_loss.insert(self._snd_last_ack, self._snd_next - 1)
                self.stats.pkt_snd_loss += n
                self.stats.pkt_timeout_loss += n
            self._cc_inputs(now)
            self.cc.on_timeout()
            self._cc_update()
            self._snd_want = True
            self._snd_next_time = min(self._snd_next_time, now)
        else:
            self._send_control(_CONTROL_FLAG | (ControlType.KEEPALIVE << 16), 0, b"\0\0\0\0", now)
        self._exp_count += 1
        self._last_rsp = now

    def _heard(self, now: float) -> None:
        self._exp_count = 1
        self._last_rsp = now

    def _confirmed(self, now: float) -> None:
        self._confirm_until = -_NEVER
        if self._snd_want and self._snd_next_time < now:
            self._snd_next_time = now

    # -- congestion control glue --------------------------------------------------------
    def _cc_inputs(self, now: float) -> None:
        cc = self.cc
        cc.mss = self.mss
        cc.max_cwnd = float(self.flow_window)
        cc.snd_curr_seq = self._snd_next - 1
        cc.rcv_rate = self.delivery_rate
        cc.rtt = int(self.rtt * 1_000_000)
        cc.bandwidth = self.bandwidth
        cc.now = int(now * 1_000_000)

    def _cc_update_inputs(self, now: float) -> None:
        self.cc.now = int(now * 1_000_000)

    def _cc_update(self) -> None:
        cc = self.cc
        period = cc.pkt_send_period / 1_000_000
        max_bw = self.config.max_bandwidth
        if max_bw:
            period = max(period, self.mss / max_bw)
        self._period = max(period, 1e-9)
        self._cwnd = cc.cwnd

    def _send_custom(self, subtype: int, data: bytes) -> None:
        now = self.endpoint.now
        self._control(UserDefined(subtype, data, timestamp=self._now_us(now), dest=self.peer_id).encode())

    # -- the sender -------------------------------------------------------------------
    def _locate(self, seq: int) -> tuple[_Chunk, int] | None:
        chunks = self._chunks
        lo, hi = self._chunk_head, len(chunks)
        while lo < hi:
            mid = (lo + hi) // 2
            if chunks[mid].first <= seq:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
        if i < self._chunk_head:
            return None
        chunk = chunks[i]
        if seq >= chunk.end:
            return None
        return chunk, seq - chunk.first

    def _emit(self, now: float) -> None:
        """Send what pacing, the windows and the buffers allow now, in GSO batches."""
        period = self._period
        late = now - self._snd_next_time
        burst = self.config.max_burst
        if late > burst:
            late = burst
            self._snd_next_time = now - burst
        cfg = self.config
        budget = min(max(int(late / period) + 1, int(cfg.min_burst / period), cfg.min_burst_packets), 4096)
        out = self.endpoint._out
        addr = self.peer_addr
        peer_id = self.peer_id
        ts = self._now_us(now)
        payload_size = self.payload_size
        full = payload_size + HEADER_SIZE
        sent = retrans = nbytes = 0
        first_sent = self._snd_next

        if self._snd_loss:
            batch = _Batch(out, addr)
            loss = self._snd_loss
            while sent < budget and loss:
                seq = loss.pop_first()
                if seq < self._snd_last_data_ack:
                    continue
                where = self._locate(seq)
                if where is None:
                    continue
                chunk, idx = where
                if chunk.ttl is not None and now - chunk.origin > chunk.ttl:
                    self._drop_message(chunk, now)
                    continue
                start = idx * payload_size
                piece = chunk.view[start : start + payload_size]
                batch.add(HEADER.pack(seq & SEQ_MASK, _msg_word(chunk, idx), ts, peer_id), piece)
                sent += 1
                retrans += 1
                nbytes += len(piece)
            batch.flush()
            first_sent = self._snd_next

        probe = 0
        if sent < budget and self._snd_next < self._snd_end:
            room = int(min(self.flow_window, self._cwnd)) - (self._snd_next - self._snd_last_ack)
            available = self._snd_end - self._snd_next
            todo = min(budget - sent, room, available)
            if todo > 0 and (self._snd_next + todo - 1) & 0xF == 0 and todo < min(room, available):
                # The reference sends packet 16n+1 right behind 16n, unpaced: the receiver
                # times the pair to estimate the link's capacity.
                todo += 1
                probe = 1
            chunks = self._chunks
            max_batch = min(_MAX_SEGMENTS, _MAX_GSO_BYTES // full)
            while todo > 0:
                chunk = chunks[self._send_chunk]
                pi = self._send_pkt
                if pi == 0 and chunk.ttl is not None and now - chunk.origin > chunk.ttl:
                    # expired before its first packet left: drop it whole
                    skipped = chunk.npkts
                    self._drop_message(chunk, now)
                    todo -= skipped
                    continue
                npkts = chunk.npkts
                k = min(todo, npkts - pi)
                view = chunk.view
                base = chunk.msgno | (0x20000000 if chunk.in_order else 0)
                last = npkts - 1
                seq = self._snd_next
                j = pi
                end = pi + k
                while j < end:
                    # One GSO batch as an iovec list: its headers packed in one call, then
                    # header and payload views alternating (the kernel gathers them).
                    m = min(end - j, max_batch)
                    flat = [0, base, ts, peer_id] * m
                    if seq + m - 1 <= SEQ_MASK:
                        flat[0::4] = range(seq, seq + m)
                    else:
                        flat[0::4] = [x & SEQ_MASK for x in range(seq, seq + m)]
                    if j == 0:
                        flat[1] |= 0x80000000
                    if j + m - 1 == last:
                        flat[4 * m - 3] |= 0x40000000
                    headers = memoryview(_headers_struct(m).pack(*flat))
                    iov: list[Any] = [None] * (2 * m)
                    iov[0::2] = [headers[h : h + HEADER_SIZE] for h in range(0, HEADER_SIZE * m, HEADER_SIZE)]
                    first_byte = j * payload_size
                    iov[1::2] = [
                        view[b : b + payload_size]
                        for b in range(first_byte, first_byte + m * payload_size, payload_size)
                    ]
                    out.append((iov, addr, full if m > 1 else 0))
                    nbytes += min(len(view), first_byte + m * payload_size) - first_byte
                    seq += m
                    j += m
                self._snd_next = seq
                sent += k
                todo -= k
                if end >= npkts:
                    self._send_chunk += 1
                    self._send_pkt = 0
                else:
                    self._send_pkt = end

        stats = self.stats
        if sent:
            stats.pkt_sent += sent
            stats.pkt_retrans += retrans
            stats.bytes_sent += nbytes
            self._snd_next_time += (sent - probe) * period
            cc = self.cc
            cc.snd_curr_seq = self._snd_next - 1
            if sent > retrans:
                cc.on_pkt_sent(first_sent, sent - retrans)
        if not self._snd_loss and self._snd_next >= self._snd_end:
            self._snd_want = False
        elif not sent and self._snd_next_time < now:
            # blocked by the window: the next ACK reopens it
            self._snd_next_time = now

    def _drop_message(self, chunk: _Chunk, now: float) -> None:
        first, last = chunk.first, chunk.end - 1
        self._snd_loss.remove_range(first, last)
        if self._snd_next <= last:
            # skip the packets of it not sent yet
            self._snd_next = last + 1
            self._skip_send_position()
        if not chunk.dropped:  # a repeated NAK may hit it again: the request is resent, counted once
            chunk.dropped = True
            self.stats.msg_dropped += 1
        body = struct.pack("!II", first & SEQ_MASK, last & SEQ_MASK)
        self._send_control(_CONTROL_FLAG | (ControlType.DROP_REQUEST << 16), chunk.msgno, body, now)

    def _skip_send_position(self) -> None:
        chunks = self._chunks
        ci = self._send_chunk
        while ci < len(chunks) and chunks[ci].end <= self._snd_next:
            ci += 1
        self._send_chunk = ci
        self._send_pkt = self._snd_next - chunks[ci].first if ci < len(chunks) else 0

    def _release_acked(self, ack: int) -> None:
        chunks = self._chunks
        head = self._chunk_head
        n = len(chunks)
        freed = 0
        while head < n and chunks[head].end <= ack:
            freed += len(chunks[head].data)
            head += 1
        self._snd_bytes_buffered -= freed
        if head > 256 and head * 2 > n:
            del chunks[:head]
            self._send_chunk -= head
            head = 0
        self._chunk_head = head

    # -- control packets ------------------------------------------------------------------
    def _on_control(self, data: bytes | bytearray | memoryview, w0: int, w1: int, now: float) -> None:
        self._heard(now)
        ctype = (w0 >> 16) & 0x7FFF
        if self._confirm_until != -_NEVER and ctype != ControlType.HANDSHAKE:
            # control packets come from the peer's receive path: it has us registered
            self._confirmed(now)
        if ctype == ControlType.ACK:
            self._on_ack(data, w1, now)
        elif ctype == ControlType.ACK2:
            self._on_ack2(w1, now)
        elif ctype == ControlType.NAK:
            self._on_nak(data, now)
        elif ctype == ControlType.KEEPALIVE:
            pass
        elif ctype == ControlType.SHUTDOWN:
            self._on_shutdown(now)
            return
        elif ctype == ControlType.HANDSHAKE:
            self._on_handshake_connected(data, now)
        elif ctype == ControlType.DROP_REQUEST:
            self._on_drop_request(data, w1, now)
        elif ctype == ControlType.CONGESTION_WARNING:
            self.cc.pkt_send_period = math.ceil(self.cc.pkt_send_period * 1.125)
            self._cc_update()
        elif ctype == ControlType.ERROR_SIGNAL:
            pass
        elif ctype == ControlType.USER_DEFINED:
            try:
                pkt = parse_packet_untrusted(data)
            except BadPacket:
                return
            assert isinstance(pkt, UserDefined)
            self._cc_inputs(now)
            self.cc.process_custom_msg(pkt)
            self._cc_update()
        self._reschedule()

    def _on_ack(self, data: bytes | bytearray | memoryview, ack_seqno: int, now: float) -> None:
        size = len(data) - HEADER_SIZE
        if size < 4:
            return
        ack31 = _WORD.unpack_from(data, HEADER_SIZE)[0]
        if ack31 & _CONTROL_FLAG:
            return
        ack = _unwrap(ack31, self._snd_last_ack)
        stats = self.stats
        stats.pkt_recv_ack += 1
        if size == 4:
            # light ACK: only moves the flow window
            if ack >= self._snd_last_ack:
                self.flow_window -= ack - self._snd_last_ack
                self._snd_last_ack = ack
            return
        if size < 16:
            return
        # ACK2, not for every ACK: at most one per SYN, or for a repeated ACK
        if now - self._last_ack2_time > SYN or ack_seqno == self._last_ack2_seqno:
            self._send_control(_CONTROL_FLAG | (ControlType.ACK2 << 16), ack_seqno, b"\0\0\0\0", now)
            self._last_ack2_seqno = ack_seqno
            self._last_ack2_time = now
            stats.pkt_sent_ack2 += 1
        if ack > self._snd_next:
            # acknowledges what was never sent: an attack or a bug
            self._finish(CloseReason.PROTOCOL, now, send_shutdown=True)
            return
        rtt, _var, avail = struct.unpack_from("!iii", data, HEADER_SIZE + 4)
        if ack >= self._snd_last_ack:
            self.flow_window = max(avail, 0)
            self._snd_last_ack = ack
        offset = ack - self._snd_last_data_ack
        if offset <= 0:
            return
        self._snd_last_data_ack = ack
        self._snd_loss.remove_below(ack)
        self._release_acked(ack)
        if rtt > 0:
            srtt = rtt / 1_000_000
            self.rtt_var = (self.rtt_var * 3 + abs(srtt - self.rtt)) / 4
            self.rtt = (self.rtt * 7 + srtt) / 8
        if size >= 24:
            # EWMAs of the peer's reports, as the reference; but where it starts them from
            # placeholders (16 and 1 packets/s), the first report is taken as it is
            rate, bw = struct.unpack_from("!ii", data, HEADER_SIZE + 16)
            if rate > 0:
                self.delivery_rate = (self.delivery_rate * 7 + rate) >> 3 if self._rate_seen else rate
                self._rate_seen = True
            if bw > 0:
                self.bandwidth = (self.bandwidth * 7 + bw) >> 3 if self._bw_seen else bw
                self._bw_seen = True
        self._cc_inputs(now)
        self.cc.on_ack(ack)
        self._cc_update()
        if (self._snd_next < self._snd_end or self._snd_loss) and not self._snd_want:
            self._snd_want = True
            self._snd_next_time = max(self._snd_next_time, now - self.config.max_burst)
        self.endpoint._writable(self)
        if self.state is State.CLOSING and not self.send_buffered:
            self._finish(CloseReason.LOCAL, now, send_shutdown=True)

    def _on_ack2(self, ack_seqno: int, now: float) -> None:
        self.stats.pkt_recv_ack2 += 1
        window = self._ack_window
        for i, (seqno, ack, sent) in enumerate(window):
            if seqno == ack_seqno:
                rtt = now - sent
                for _ in range(i + 1):
                    window.popleft()
                if rtt > 0:
                    self.rtt_var = (self.rtt_var * 3 + abs(rtt - self.rtt)) / 4
                    self.rtt = (self.rtt * 7 + rtt) / 8
                if ack > self._rcv_last_ack_ack:
                    self._rcv_last_ack_ack = ack
                return

    def _on_nak(self, data: bytes | bytearray | memoryview, now: float) -> None:
        self.stats.pkt_recv_nak += 1
        body = data[HEADER_SIZE:]
        if len(body) % 4 or not body:
            return
        words = struct.unpack(f"!{len(body) // 4}I", body)
        runs: list[tuple[int, int]] = []
        i, n = 0, len(words)
        ref = self._snd_last_ack
        while i < n:
            w = words[i]
            if w & _CONTROL_FLAG:
                if i + 1 >= n:
                    self._finish(CloseReason.PROTOCOL, now, send_shutdown=True)
                    return
                first = _unwrap(w & SEQ_MASK, ref)
                last = _unwrap(words[i + 1], ref)
                i += 2
            else:
                first = last = _unwrap(w, ref)
                i += 1
            if first > last or last >= self._snd_next:
                # a loss beyond what was sent: an attack or a bug
                self._finish(CloseReason.PROTOCOL, now, send_shutdown=True)
                return
            runs.append((first, last))
        self._cc_inputs(now)
        self.cc.on_loss(runs)
        self._cc_update()
        added = 0
        floor = self._snd_last_ack
        for first, last in runs:
            if last >= floor:
                added += self._snd_loss.insert(max(first, floor), last)
        self.stats.pkt_snd_loss += added
        if self._snd_loss:
            self._snd_want = True
            self._snd_next_time = min(self._snd_next_time, now)

    def _on_shutdown(self, now: float) -> None:
        self.peer_closed = True
        self.endpoint._readable(self)
        self._finish(CloseReason.PEER_SHUTDOWN, now, send_shutdown=False)

    def _on_handshake_connected(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """A handshake reaching a connected session: the peer missed our response; send it again."""
        try:
            hs = parse_packet_untrusted(data)
        except BadPacket:
            return
        if not isinstance(hs, Handshake):
            return
        rendezvous = self.role == "rendezvous"
        if hs.request_type == RequestType.RENDEZVOUS_RESPONSE and self._confirm_until != -_NEVER:
            self._confirmed(now)  # only a connected peer answers -2
        if hs.request_type > 0 or (rendezvous and hs.request_type != RequestType.RENDEZVOUS_RESPONSE):
            reply = Handshake(
                version=UDT_VERSION,
                socket_type=int(self.config.socket_type),
                isn=self.isn,
                mss=self.mss,
                flight_flag_size=self.config.advertised_window,
                request_type=int(RequestType.RENDEZVOUS_RESPONSE if rendezvous else RequestType.RESPONSE),
                socket_id=self.socket_id,
                peer_ip=ip_to_wire(self.peer_addr[0]),
                timestamp=self._now_us(now),
                dest=self.peer_id & _U32,
            )
            self._control(reply.encode())

    def _on_drop_request(self, data: bytes | bytearray | memoryview, w1: int, now: float) -> None:
        if len(data) < HEADER_SIZE + 8:
            return
        first31, last31 = struct.unpack_from("!II", data, HEADER_SIZE)
        if (first31 | last31) & _CONTROL_FLAG:
            return
        first = _unwrap(first31, self._rcv_next)
        last = _unwrap(last31, self._rcv_next)
        if last < first or last - first > self.config.rcv_buf:
            return
        msgno = w1 & MAX_MSGNO
        self.stats.msg_dropped += 1
        reorder = self._reorder
        lo = max(first, self._rcv_next)
        for seq in range(lo, last + 1):
            entry = reorder.get(seq)
            if entry is None or (entry[0] & MAX_MSGNO) == msgno:
                reorder[seq] = _DROPPED
        self._rcv_loss.remove_range(first, last)
        if last > self._rcv_curr and first <= self._rcv_curr + 1:
            self._rcv_curr = last
        # a message being assembled from this one is gone too
        if self._msg_parts and first <= self._rcv_next - 1:
            self._msg_parts.clear()
            self._buffered_pkts -= self._msg_parts_pkts
            self._msg_parts_pkts = 0
        self._unordered.pop(msgno, None)
        self._advance(now)

    # -- ACK / NAK ----------------------------------------------------------------------------
    def _send_ack(self, now: float, *, light: bool = False) -> None:
        ack = self._rcv_next
        update = self._window_update
        if ack == self._rcv_last_ack_ack and not update:
            self._next_ack = now + SYN
            return
        if light:
            self._send_control(_CONTROL_FLAG | (ControlType.ACK << 16), 0, _WORD.pack(ack & SEQ_MASK), now)
            self.stats.pkt_sent_ack += 1
            return
        self._next_ack = now + SYN
        self._window_update = False
        if ack > self._rcv_last_ack:
            self._rcv_last_ack = ack
        elif ack == self._rcv_last_ack:
            if not update and now - self._last_ack_sent < self.rtt + 4 * self.rtt_var:
                return
        else:
            return
        self._pkt_count = 0
        self._light_ack_count = 1
        self._ack_seqno = (self._ack_seqno + 1) & 0x7FFFFFFF
        avail = max(2, self.config.rcv_buf - self._held() - 1)
        self._last_avail = avail
        rtt_us = int(self.rtt * 1_000_000)
        var_us = int(self.rtt_var * 1_000_000)
        if now - self._last_full_ack > SYN:
            rate = self._arrival_rate()
            bw = self._probe.rate(need_half=False)
            body = struct.pack("!Iiiiii", ack & SEQ_MASK, rtt_us, var_us, avail, rate, bw)
            self._last_full_ack = now
        else:
            body = struct.pack("!Iiii", ack & SEQ_MASK, rtt_us, var_us, avail)
        self._send_control(_CONTROL_FLAG | (ControlType.ACK << 16), self._ack_seqno, body, now)
        self._last_ack_sent = now
        self._ack_window.append((self._ack_seqno, ack, now))
        self.stats.pkt_sent_ack += 1

    def _arrived(self, count: int, now: float) -> None:
        # The reference records the interval before each packet. A datagram holding a
        # coalesced batch is what the reference would see as one interval, then packets
        # back to back (they came together, or the kernel would not have joined them).
        gap = now - self._last_arrival
        self._last_arrival = now
        self._speed.add(gap if gap > 0 else _BACK_TO_BACK)
        if count > 1:
            self._speed.add_many(_BACK_TO_BACK, count - 1)

    def _arrival_rate(self) -> int:
        """Packets per second arriving lately (0 while too few intervals agree)."""
        return self._speed.rate(need_half=True)

    def _send_periodic_nak(self, now: float) -> None:
        # only the losses not reported within a NAK period: the others' repairs may be on the way
        limit = max(1, self.payload_size // 8)
        due = self._rcv_loss.due(now, self._nak_interval * 0.99, limit)
        runs = [(f & SEQ_MASK, lst & SEQ_MASK) for f, lst in due]
        if runs:
            self._send_control(_CONTROL_FLAG | (ControlType.NAK << 16), 0, encode_loss_list(runs), now)
            self.stats.pkt_sent_nak += 1
        self._update_nak_interval(now)

    def _update_nak_interval(self, now: float) -> None:
        # The draft's NAK period: long enough for a resent packet to arrive (RTT + 4 RTTVar,
        # plus the time to resend the losses at the arrival rate, at most another RTT), but
        # not the reference's 300 ms floor: a lost retransmission would stall the stream. And
        # at most half the sender's shortest EXP period, so that a receiver stuck on a hole
        # speaks up before the sender decides it timed out and resends its whole window.
        base = self.rtt + 4 * self.rtt_var + SYN
        speed = self._arrival_rate()
        extra = min(len(self._rcv_loss) / speed, base) if speed > 0 else 0.0
        self._nak_interval = min(max(base + extra, _MIN_NAK), _MAX_NAK)
        self._next_nak = now + self._nak_interval

    # -- data packets -------------------------------------------------------------------------
    def _on_data_segments(
        self, buf: bytes | bytearray | memoryview, start: int, end: int, seg: int, now: float, addr: Any
    ) -> int:
        """Process data packets at ``buf[start:end]`` (``seg`` bytes each, the last maybe shorter).

        Returns the offset where processing stopped: a packet for another
        session or a control packet (the endpoint carries on from there).
        """
        self._heard(now)
        self._batch += 1
        batch = self._batch
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        my_id = self.socket_id
        payload_size = self.payload_size
        full = payload_size + HEADER_SIZE
        off = start
        count = 0
        nbytes = 0
        short = False
        while off < end:
            if seg == full and self.is_stream and not self._reorder:
                # The fast path: a run of full-size, in-order stream packets goes straight to the
                # reader as views of the datagram, no per-packet state beyond the sequence number.
                take = min((end - off) // full, self.config.rcv_buf - 1 - self._held())
                if take > 0:
                    expect = first = self._rcv_next31
                    unpack = _SEQ_DEST.unpack_from
                    append = self._readable.append
                    o = off
                    stop = off + take * full
                    while o < stop:
                        w0, dest = unpack(buf, o)
                        if w0 != expect or dest != my_id:
                            break
                        append(view[o + HEADER_SIZE : o + full])
                        expect = (w0 + 1) & SEQ_MASK
                        o += full
                    k = (o - off) // full
                    if k:
                        # packet pairs (16n, 16n+1), timed only across datagrams: the first packet
                        # here may complete a pair, the last one may start one
                        if first & 0xF == 1 and self._probe_seq31 == first - 1 and self._probe_batch != batch:
                            self._probe.add(max(now - self._probe_time, _BACK_TO_BACK))
                            self._probe_seq31 = -1
                        if (-first) & 0xF <= k - 2:
                            self._probe.add(_BACK_TO_BACK)  # a pair inside this datagram
                        last = (expect - 1) & SEQ_MASK
                        if last & 0xF == 0:
                            self._probe_time = now
                            self._probe_batch = batch
                            self._probe_seq31 = last
                        nxt = self._rcv_next + k
                        self._rcv_next = nxt
                        self._rcv_next31 = expect
                        if nxt - 1 > self._rcv_curr:
                            self._rcv_curr = nxt - 1
                        self._readable_bytes += k * payload_size
                        count += k
                        nbytes += k * payload_size
                        off = o
                        continue
            # one packet, the general way
            pend = off + seg if off + seg < end else end
            w0, w1, _ts, dest = HEADER.unpack_from(buf, off)
            if dest != my_id or w0 & _CONTROL_FLAG:
                break
            count += 1
            plen = pend - off - HEADER_SIZE
            nbytes += plen
            if plen != payload_size:
                short = True
            low = w0 & 0xF
            if low == 0:
                self._probe_time = now
                self._probe_batch = batch
                self._probe_seq31 = w0
            elif low == 1 and self._probe_seq31 == w0 - 1:
                # across datagrams: their spacing; within one coalesced datagram: back to back
                self._probe.add(now - self._probe_time if self._probe_batch != batch else _BACK_TO_BACK)
                self._probe_seq31 = -1
            if (
                w0 == self._rcv_next31
                and self.is_stream
                and not self._reorder
                and self._held() < self.config.rcv_buf - 1
            ):
                self._readable.append(view[off + HEADER_SIZE : pend])
                self._readable_bytes += plen
                nxt = self._rcv_next + 1
                self._rcv_next = nxt
                self._rcv_next31 = nxt & SEQ_MASK
                if nxt - 1 > self._rcv_curr:
                    self._rcv_curr = nxt - 1
            else:
                self._on_data_slow(w0, w1, view[off + HEADER_SIZE : pend], now)
            off = pend
        if count:
            stats = self.stats
            stats.pkt_recv += count
            stats.bytes_recv += nbytes
            self._arrived(count, now)
            self._pkt_count += count
            self.cc.now = int(now * 1_000_000)
            self.cc.on_pkt_received(self._rcv_curr, count)
            if short:
                self._next_ack = now
            if self._readable_bytes or self._messages:
                self.endpoint._readable(self)
            if self._pkt_count >= _LIGHT_ACK_PACKETS * self._light_ack_count:
                self._send_ack(now, light=True)
                self._light_ack_count += 1
            self._reschedule()
        return off

    def _accept_run(self, payload: bytes, count: int, first31: int, last_len: int, now: float) -> None:
        """``count`` in-order stream packets from one datagram, their payloads joined (the fast path)."""
        self._heard(now)
        self._batch += 1
        # packet pairs (16n, 16n+1) timed only across datagrams
        if first31 & 0xF == 1 and self._probe_seq31 == first31 - 1 and self._probe_batch != self._batch:
            self._probe.add(max(now - self._probe_time, _BACK_TO_BACK))
            self._probe_seq31 = -1
        if (-first31) & 0xF <= count - 2:
            self._probe.add(_BACK_TO_BACK)  # a pair (16n, 16n+1) inside this datagram
        last31 = (first31 + count - 1) & SEQ_MASK
        if last31 & 0xF == 0:
            self._probe_time = now
            self._probe_batch = self._batch
            self._probe_seq31 = last31
        self._readable.append(payload)
        self._readable_bytes += len(payload)
        nxt = self._rcv_next + count
        self._rcv_next = nxt
        self._rcv_next31 = nxt & SEQ_MASK
        if nxt - 1 > self._rcv_curr:
            self._rcv_curr = nxt - 1
        stats = self.stats
        stats.pkt_recv += count
        stats.bytes_recv += len(payload)
        self._arrived(count, now)
        self._pkt_count += count
        self.cc.now = int(now * 1_000_000)
        self.cc.on_pkt_received(nxt - 1, count)
        if last_len != self.payload_size:
            self._next_ack = now
        self.endpoint._readable(self)
        if self._pkt_count >= _LIGHT_ACK_PACKETS * self._light_ack_count:
            self._send_ack(now, light=True)
            self._light_ack_count += 1
        self._reschedule()

    def _on_data_slow(self, seq31: int, w1: int, payload: Any, now: float) -> None:
        seq = _unwrap(seq31, self._rcv_next)
        offset = seq - self._rcv_next
        if offset < 0:
            self.stats.pkt_recv_dup += 1
            return
        if offset >= self.config.rcv_buf - self._held() - 1:
            return  # beyond the receive window
        reorder = self._reorder
        if seq in reorder:
            # already here, or given up by a drop request
            self.stats.pkt_recv_dup += 1
            return
        curr = self._rcv_curr
        if seq > curr + 1:
            # a gap: report it at once
            first, last = curr + 1, seq - 1
            self._rcv_loss.insert(first, last, now)
            self.stats.pkt_rcv_loss += last - first + 1
            if first == last:
                body = _WORD.pack(first & SEQ_MASK)
            else:
                body = struct.pack("!II", (first & SEQ_MASK) | _CONTROL_FLAG, last & SEQ_MASK)
            self._send_control(_CONTROL_FLAG | (ControlType.NAK << 16), 0, body, now)
            self.stats.pkt_sent_nak += 1
            if self.config.periodic_nak and len(self._rcv_loss) == last - first + 1:
                self._update_nak_interval(now)
        if seq > curr:
            self._rcv_curr = seq
        else:
            self._rcv_loss.remove(seq)
        reorder[seq] = (w1, payload)
        if not self.is_stream and not (w1 & 0x20000000) and offset:
            self._note_unordered(seq, w1)
        if offset == 0:
            self._advance(now)

    def _advance(self, now: float) -> None:
        """Move everything contiguous from the reorder buffer to the reader."""
        reorder = self._reorder
        nxt = self._rcv_next
        is_stream = self.is_stream
        while nxt in reorder:
            entry = reorder.pop(nxt)
            if entry is not None:
                w1, payload = entry
                if is_stream:
                    self._readable.append(payload)
                    self._readable_bytes += len(payload)
                else:
                    self._assemble(nxt, w1, payload)
            elif not is_stream:
                self._delivered_early.discard(nxt)
            nxt += 1
        if nxt != self._rcv_next:
            self._rcv_next = nxt
            self._rcv_next31 = nxt & SEQ_MASK
            if nxt - 1 > self._rcv_curr:
                self._rcv_curr = nxt - 1
            self._rcv_loss.remove_below(nxt)
            if self._readable_bytes or self._messages:
                self.endpoint._readable(self)

    # -- messages ---------------------------------------------------------------------------------
    def _assemble(self, seq: int, w1: int, payload: Any) -> None:
        boundary = w1 >> 30
        parts = self._msg_parts
        if boundary & Boundary.FIRST:
            if parts:
                # a message without its last packet: corrupt, drop it
                self._buffered_pkts -= self._msg_parts_pkts
                parts.clear()
                self._msg_parts_pkts = 0
        elif not parts:
            return  # the middle of a dropped message
        parts.append(payload)
        self._msg_parts_pkts += 1
        self._buffered_pkts += 1
        if boundary & Boundary.LAST:
            if self._unordered:
                self._unordered.pop(w1 & MAX_MSGNO, None)
            data = b"".join(parts)
            self._messages.append((data, self._msg_parts_pkts))
            self._readable_bytes += len(data)
            parts.clear()
            self._msg_parts_pkts = 0

    def _note_unordered(self, seq: int, w1: int) -> None:
        """An out-of-order packet of an unordered message: deliver the message once it is whole."""
        msgno = w1 & MAX_MSGNO
        info = self._unordered.get(msgno)
        if info is None:
            info = self._unordered[msgno] = [-1, -1, 0]
        boundary = w1 >> 30
        if boundary & Boundary.FIRST:
            info[0] = seq
        if boundary & Boundary.LAST:
            info[1] = seq
        info[2] += 1
        first, last, have = info
        if first < 0 or last < 0 or have != last - first + 1:
            return
        del self._unordered[msgno]
        reorder = self._reorder
        parts = []
        for s in range(first, last + 1):
            entry = reorder.get(s)
            if entry is None:
                return
            parts.append(entry[1])
        data = b"".join(parts)
        npkts = last - first + 1
        for s in range(first, last + 1):
            reorder[s] = _DROPPED
            self._delivered_early.add(s)
        self._messages.append((data, npkts))
        self._readable_bytes += len(data)
        self._buffered_pkts += npkts
        self.endpoint._readable(self)

    # -- statistics -------------------------------------------------------------------------------
    def snapshot(self, now: float) -> Snapshot:
        s = self.stats
        elapsed = max(now - self.start_time, 1e-9)
        return Snapshot(
            elapsed=elapsed,
            pkt_sent=s.pkt_sent,
            pkt_recv=s.pkt_recv,
            pkt_snd_loss=s.pkt_snd_loss,
            pkt_timeout_loss=s.pkt_timeout_loss,
            pkt_rcv_loss=s.pkt_rcv_loss,
            pkt_retrans=s.pkt_retrans,
            pkt_recv_dup=s.pkt_recv_dup,
            pkt_sent_ack=s.pkt_sent_ack,
            pkt_recv_ack=s.pkt_recv_ack,
            pkt_sent_nak=s.pkt_sent_nak,
            pkt_recv_nak=s.pkt_recv_nak,
            bytes_sent=s.bytes_sent,
            bytes_recv=s.bytes_recv,
            msg_dropped=s.msg_dropped,
            mbps_send_rate=s.bytes_sent * 8 / elapsed / 1e6,
            mbps_recv_rate=s.bytes_recv * 8 / elapsed / 1e6,
            us_pkt_snd_period=self._period * 1e6,
            pkt_flow_window=self.flow_window,
            pkt_congestion_window=int(self._cwnd),
            pkt_flight_size=max(0, self._snd_next - self._snd_last_ack),
            ms_rtt=self.rtt * 1000,
            ms_rtt_var=self.rtt_var * 1000,
            mbps_bandwidth=self.bandwidth * self.payload_size * 8 / 1e6,
            pkt_delivery_rate=self.delivery_rate,
            byte_avail_snd_buf=self.send_space,
            byte_avail_rcv_buf=max(0, self.config.rcv_buf - self._held() - 1) * self.payload_size,
            mss=self.mss,
            socket_id=self.socket_id,
            peer_socket_id=self.peer_id,
            isn=self.isn,
            peer_isn=self.peer_isn,
            congestion=type(self.cc).__name__,
        )


_HS_FIELDS: Final = (
    "version",
    "socket_type",
    "isn",
    "mss",
    "flight_flag_size",
    "request_type",
    "socket_id",
    "cookie",
    "peer_ip",
)
_EMPTY_HEADER: Final = bytes(HEADER_SIZE)


def _replace_hs(hs: Handshake, **changes: Any) -> Handshake:
    values = {f: getattr(hs, f) for f in _HS_FIELDS}
    values.update(changes)
    return Handshake(**values)


def _sane_handshake(hs: Handshake) -> bool:
    return (
        _IP_UDP_HEADERS + HANDSHAKE_SIZE <= hs.mss <= 65535
        and hs.flight_flag_size >= 1
        and hs.socket_id > 0
        and 0 <= hs.isn <= SEQ_MASK
    )


def _unwrap(value31: int, near: int) -> int:
    d = (value31 - near) & SEQ_MASK
    if d >= SEQ_THRESHOLD:
        d -= 0x80000000
    return near + d


class _Batch:
    """Collects packets into GSO batches: equal-size segments, a shorter one only last."""

    __slots__ = ("addr", "buf", "count", "out", "seg")

    def __init__(self, out: list[tuple[Any, tuple[Any, ...], int]], addr: tuple[Any, ...]) -> None:
        self.out = out
        self.addr = addr
        self.buf = bytearray()
        self.seg = 0
        self.count = 0

    def add(self, header: bytes, payload: Any) -> None:
        size = HEADER_SIZE + len(payload)
        if self.count and (
            size > self.seg or self.count >= _MAX_SEGMENTS or len(self.buf) + size > _MAX_GSO_BYTES
        ):
            self.flush()
        if not self.count:
            self.seg = size
        self.buf += header
        self.buf += payload
        self.count += 1
        if size < self.seg:
            self.flush()  # a short segment ends a batch

    def flush(self) -> None:
        if self.count:
            self.out.append((self.buf, self.addr, self.seg if self.count > 1 else 0))
            self.buf = bytearray()
            self.count = 0


_SEQ_DEST_STRUCTS: dict[int, struct.Struct] = {}
_HEADERS_STRUCTS: dict[int, struct.Struct] = {}


def _headers_struct(count: int) -> struct.Struct:
    """Packs ``count`` packet headers back to back."""
    st = _HEADERS_STRUCTS.get(count)
    if st is None:
        st = _HEADERS_STRUCTS[count] = struct.Struct("!" + "IIII" * count)
    return st


def _seq_dest_struct(count: int) -> struct.Struct:
    """Reads the sequence word and destination id of ``count`` headers back to back."""
    st = _SEQ_DEST_STRUCTS.get(count)
    if st is None:
        st = _SEQ_DEST_STRUCTS[count] = struct.Struct("!" + "I8xI" * count)
    return st


def _msg_word(chunk: _Chunk, idx: int) -> int:
    word = chunk.msgno | (0x20000000 if chunk.in_order else 0)
    if idx == 0:
        word |= 0x80000000
    if idx == chunk.npkts - 1:
        word |= 0x40000000
    return word


# ---------------------------------------------------------------------------
# the endpoint (one UDP port)
# ---------------------------------------------------------------------------


class Endpoint:
    """One UDP port: a multiplexer of sessions, dispatching by destination socket id.

    ``rng`` seeds socket ids and initial sequence numbers (tests pass a seeded
    ``random.Random``); ``secret`` keys the listener's SYN cookies.
    """

    def __init__(
        self,
        now: float,
        *,
        rng: random.Random | None = None,
        secret: bytes | None = None,
        ipv6: bool = False,
    ) -> None:
        self.now = now
        self._rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self._secret = secret
        self.ipv6 = ipv6
        self._sessions: dict[int, Session] = {}
        self._connecting: list[Session] = []
        self._by_peer: dict[tuple[tuple[Any, ...], int, int], Session] = {}
        self._out: list[tuple[Any, tuple[Any, ...], int]] = []
        self._events: deque[Event] = deque()
        self._heap: list[tuple[float, int, int, Session]] = []
        self._tiebreak = itertools.count()
        self._next_id = self._rng.randint(1, 1 << 30)
        # listener
        self.listening = False
        self._listen_config: Config | None = None
        self._backlog = 0
        self._cookies: CookieJar | None = None
        self._accept_queue: deque[Session] = deque()
        self._dirty_read: set[Session] = set()
        self._dirty_write: set[Session] = set()
        #: Datagrams dropped unparsed (short, unknown destination, wrong address).
        self.dropped = 0

    # -- facts -----------------------------------------------------------------------
    @property
    def sessions(self) -> list[Session]:
        """Every live session (connecting, connected or lingering)."""
        return list(self._sessions.values())

    @property
    def state_size(self) -> int:
        """How many objects the endpoint holds for peers (sessions, indexes, queues): for flood tests."""
        return len(self._sessions) + len(self._connecting) + len(self._by_peer) + len(self._accept_queue)

    @property
    def pending_accepts(self) -> int:
        return len(self._accept_queue)

    def _new_id(self) -> int:
        # The reference counts down from a random start; ids stay positive.
        for _ in range(1 << 20):
            sid = self._next_id
            self._next_id = sid - 1 if sid > 1 else (1 << 30)
            if sid not in self._sessions:
                return sid
        raise LocalProtocolError("no free UDT socket id")  # pragma: no cover

    # -- the application side ---------------------------------------------------------------
    def listen(self, config: Config, backlog: int) -> None:
        """Accept connection requests on this port (one listener per port, as the reference)."""
        if self.listening:
            raise LocalProtocolError("this port already has a listener")
        if config.rendezvous:
            raise LocalProtocolError("a rendezvous socket cannot listen")
        self.listening = True
        self._listen_config = config
        self._backlog = max(1, backlog)
        self._cookies = CookieJar(self.now, self._secret)

    def stop_listening(self) -> list[Session]:
        """Stop accepting; returns the connections set up but never accepted (close them)."""
        self.listening = False
        self._cookies = None
        queued = list(self._accept_queue)
        self._accept_queue.clear()
        for s in queued:
            s._in_accept_queue = False
        return queued

    def accept(self) -> Session | None:
        """The next connection the listener set up, or ``None``."""
        if not self._accept_queue:
            return None
        s = self._accept_queue.popleft()
        s._in_accept_queue = False
        return s

    def connect(self, addr: tuple[Any, ...], config: Config, now: float) -> Session:
        """Start connecting to ``addr`` (rendezvous when ``config.rendezvous``); a session."""
        self.now = now
        if config.rendezvous and any(
            s.peer_addr == addr and s.role == "rendezvous" for s in self._connecting
        ):
            raise LocalProtocolError(f"a rendezvous connect to {addr} is already under way here")
        sid = self._new_id()
        role = "rendezvous" if config.rendezvous else "client"
        s = Session(self, sid, addr, config, now, role=role)
        self._sessions[sid] = s
        self._connecting.append(s)
        isn = self._rng.randint(0, SEQ_MASK)
        s._start_connect(now, isn)
        return s

    # -- I/O ------------------------------------------------------------------------------------
    def receive_datagram(
        self, data: bytes | bytearray | memoryview, addr: tuple[Any, ...], now: float
    ) -> None:
        """One UDP datagram arrived from ``addr``."""
        self.now = now
        size = len(data)
        if size < HEADER_SIZE:
            self.dropped += 1
            return
        w0, w1, _ts, dest = HEADER.unpack_from(data)
        if dest:
            s = self._sessions.get(dest)
            if s is None or s.peer_addr != addr:
                self.dropped += 1
                return
            state = s.state
            if state is State.CONNECTED or state is State.CLOSING:
                if w0 & _CONTROL_FLAG:
                    s._on_control(data, w0, w1, now)
                else:
                    s._on_data_segments(data, 0, size, size, now, addr)
            elif state is State.CONNECTING:
                s._on_connecting_packet(data, now)
            return
        # destination 0: connection requests
        if not (w0 & _CONTROL_FLAG) or (w0 >> 16) & 0x7FFF != ControlType.HANDSHAKE:
            self.dropped += 1
            return
        if self.listening:
            self._on_request(data, addr, now)
            return
        for s in self._connecting:
            if s.peer_addr == addr:
                s._on_connecting_packet(data, now)
                return
        self.dropped += 1

    def receive_segments(
        self,
        data: bytes | bytearray | memoryview,
        nbytes: int,
        segment: int,
        addr: tuple[Any, ...],
        now: float,
    ) -> None:
        """A GRO-coalesced datagram: ``nbytes`` of packets ``segment`` bytes each (the last maybe shorter)."""
        if segment <= 0 or segment >= nbytes:
            self.receive_datagram(memoryview(data)[:nbytes], addr, now)
            return
        self.now = now
        view = data if isinstance(data, memoryview) else memoryview(data)
        off = 0
        while off < nbytes:
            end = min(off + segment, nbytes)
            if end - off >= HEADER_SIZE:
                w0, _w1, _ts, dest = HEADER.unpack_from(view, off)
                s = self._sessions.get(dest) if dest else None
                if (
                    s is not None
                    and not w0 & _CONTROL_FLAG
                    and s.peer_addr == addr
                    and (s.state is State.CONNECTED or s.state is State.CLOSING)
                ):
                    stop = s._on_data_segments(view, off, nbytes, segment, now, addr)
                    if stop > off:
                        off = stop
                        continue
            self.receive_datagram(view[off:end], addr, now)
            off = end

    def receive_batch(
        self,
        headers: bytearray,
        payloads: bytearray,
        slot: int,
        count: int,
        last_len: int,
        addr: tuple[Any, ...],
        now: float,
    ) -> bool:
        """The fast path for ``count`` packets received scattered by the driver.

        ``headers`` holds their 16-byte headers back to back and ``payloads``
        their payloads in ``slot``-byte slots (the last ``last_len`` long), as
        ``recvmsg_into`` left them with an iovec list alternating the two. If
        they are in-order stream data for one session, their payloads go to
        its reader as one block and this returns ``True``; otherwise it takes
        nothing and returns ``False`` (the driver then hands the datagram
        over the ordinary way).
        """
        w0, _w1, _ts, dest = HEADER.unpack_from(headers)
        s = self._sessions.get(dest)
        if (
            s is None
            or w0 & _CONTROL_FLAG
            or w0 != s._rcv_next31
            or s.payload_size != slot
            or not s.is_stream
            or s._reorder
            or s.peer_addr != addr
            or (s.state is not State.CONNECTED and s.state is not State.CLOSING)
            or s._held() + count >= s.config.rcv_buf - 1
            or w0 + count - 1 > SEQ_MASK
        ):
            return False
        if count > 1:
            fields = _seq_dest_struct(count).unpack_from(headers)
            if fields[0::2] != tuple(range(w0, w0 + count)) or fields[1::2] != (dest,) * count:
                return False
        self.now = now
        s._accept_run(bytes(payloads[: (count - 1) * slot + last_len]), count, w0, last_len, now)
        return True

    def datagrams_to_send(self) -> list[tuple[Any, tuple[Any, ...], int]]:
        """Everything queued for sending: ``(data, addr, segment_size)`` (0: a single datagram).

        ``data`` is bytes-like, or a list of bytes-like pieces whose concatenation is the
        datagram (or the batch of ``segment_size`` packets).
        """
        out = self._out
        self._out = []
        return out

    def next_deadline(self) -> float:
        """When :meth:`handle_timeout` must run next (``math.inf``: no timer)."""
        heap = self._heap
        while heap:
            d, _, gen, s = heap[0]
            if gen == s._gen:
                return d
            heapq.heappop(heap)  # stale: the session's deadline moved
        return _NEVER

    def handle_timeout(self, now: float) -> None:
        """Run every timer due at ``now`` (ACK, NAK, EXP, retransmission, linger, paced sending)."""
        self.now = now
        heap = self._heap
        ran: set[Session] = set()
        while heap and heap[0][0] <= now:
            _d, _, gen, s = heapq.heappop(heap)
            if gen != s._gen:
                continue
            s._deadline = _NEVER  # this entry is used up; _on_timer reschedules
            s._gen += 1
            if s in ran:
                # a timer that stays due after running would spin: look again next time
                s._reschedule()
                if s._deadline <= now:
                    s._deadline = _NEVER
                    s._gen += 1
                    deferred = now + 1e-4
                    s._deadline = deferred
                    self._schedule(s, deferred)
                continue
            ran.add(s)
            s._on_timer(now)
            if s.state is not State.CLOSED and s._deadline == _NEVER:
                s._reschedule()

    def next_event(self) -> Event | None:
        """The next event, or ``None``. Readable/Writable are reported once per batch of changes."""
        if self._dirty_read:
            s = self._dirty_read.pop()
            return Readable(s)
        if self._dirty_write:
            s = self._dirty_write.pop()
            return Writable(s)
        if self._events:
            return self._events.popleft()
        return None

    def events(self) -> Iterator[Event]:
        """Drain :meth:`next_event`."""
        while (ev := self.next_event()) is not None:
            yield ev

    # -- internals --------------------------------------------------------------------------------
    def _schedule(self, s: Session, deadline: float) -> None:
        heapq.heappush(self._heap, (deadline, next(self._tiebreak), s._gen, s))

    def _readable(self, s: Session) -> None:
        self._dirty_read.add(s)

    def _writable(self, s: Session) -> None:
        self._dirty_write.add(s)

    def _on_connected(self, s: Session) -> None:
        if s in self._connecting:
            self._connecting.remove(s)

    def _forget(self, s: Session) -> None:
        if self._sessions.get(s.socket_id) is s:
            del self._sessions[s.socket_id]
        if s in self._connecting:
            self._connecting.remove(s)
        key = (s.peer_addr, s.peer_id, s.peer_isn)
        if self._by_peer.get(key) is s:
            del self._by_peer[key]
        if s._in_accept_queue:
            s._in_accept_queue = False
            try:
                self._accept_queue.remove(s)
            except ValueError:  # pragma: no cover
                pass
        self._dirty_write.discard(s)
        s._gen += 1  # drop its timer entries

    def _on_request(self, data: bytes | bytearray | memoryview, addr: tuple[Any, ...], now: float) -> None:
        """A handshake for socket id 0 at a listener (the reference's ``CUDT::listen``)."""
        if len(data) - HEADER_SIZE != HANDSHAKE_SIZE:
            self.dropped += 1
            return
        try:
            hs = parse_packet_untrusted(data)
        except BadPacket:
            self.dropped += 1
            return
        assert isinstance(hs, Handshake)
        cookies = self._cookies
        config = self._listen_config
        assert cookies is not None
        assert config is not None
        host, port = str(addr[0]), int(addr[1])
        if hs.request_type == RequestType.CONNECT:
            # the SYN cookie: answer, remember nothing
            reply = _replace_hs(hs, cookie=cookies.make(host, port, now))
            self._out.append((_with_header(reply, hs.socket_id, 0), addr, 0))
            return
        if not cookies.check(hs.cookie, host, port, now):
            self.dropped += 1
            return
        if hs.version != UDT_VERSION or hs.socket_type != int(config.socket_type):
            reject = _replace_hs(hs, request_type=int(RequestType.REJECTED))
            self._out.append((_with_header(reject, hs.socket_id, 0), addr, 0))
            return
        if not _sane_handshake(hs):
            self.dropped += 1
            return
        key = (addr, hs.socket_id, hs.isn)
        existing = self._by_peer.get(key)
        if existing is not None and existing.state is not State.CLOSED:
            # a repeated request: the peer missed our response
            reply = existing._response_again(hs, now)
            self._out.append((reply.encode(), addr, 0))
            return
        if len(self._accept_queue) >= self._backlog:
            reject = _replace_hs(hs, request_type=int(RequestType.REJECTED))
            self._out.append((_with_header(reject, hs.socket_id, 0), addr, 0))
            return
        sid = self._new_id()
        s = Session(self, sid, addr, config, now, role="server")
        self._sessions[sid] = s
        response = s._accept_request(hs, now)
        self._by_peer[key] = s
        s._in_accept_queue = True
        self._accept_queue.append(s)
        self._out.append((response.encode(), addr, 0))
        self._events.append(Accepted(s))


def _with_header(hs: Handshake, dest: int, timestamp: int) -> bytes:
    values: dict[str, Any] = {f: getattr(hs, f) for f in _HS_FIELDS}
    return Handshake(**values, timestamp=timestamp, dest=dest & _U32).encode()
