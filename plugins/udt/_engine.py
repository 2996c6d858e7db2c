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

Modules
-------

The engine is split after the reference's own classes:

* this module, the vocabulary the others share: states, reasons, events,
  :class:`Config`, :class:`Stats` and :class:`Snapshot`;
* :mod:`._endpoint`, :class:`~._endpoint.Endpoint`: the multiplexer;
* :mod:`._session`, :class:`~._session.Session`: one connection (``CUDT``):
  handshake, timers, state, congestion-control glue;
* :mod:`._sender`: the send buffer (``CSndBuffer``) and the sending half
  of ``CUDT`` (pacing, retransmission, ACK and NAK processing);
* :mod:`._receiver`: the receive side (``CRcvBuffer`` and the receiving half
  of ``CUDT``): reordering, message assembly, ACK and NAK generation;
* :mod:`._losslist`, :mod:`._seq` and :mod:`._packet`: loss lists, sequence
  arithmetic and the wire format.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from trio_conduit import ConduitError

from ._congestion import SYN_INTERVAL, CongestionControl, NativeCC
from ._packet import HANDSHAKE_SIZE, SocketType

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "IP_UDP_HEADERS",
    "MIN_EXP",
    "SYN",
    "UDT_VERSION",
    "Accepted",
    "CloseReason",
    "Closed",
    "Config",
    "ConnectFailed",
    "Connected",
    "Event",
    "FailReason",
    "LocalProtocolError",
    "Readable",
    "SessionEvent",
    "Snapshot",
    "State",
    "Stats",
    "Writable",
]

UDT_VERSION: Final = 4
#: UDT's SYN interval in seconds.
SYN: Final = SYN_INTERVAL / 1_000_000
#: What ``mss`` counts beyond a UDT packet: the IP and UDP headers.
IP_UDP_HEADERS: Final = 28
#: The reference's shortest EXP period, in seconds.
MIN_EXP: Final = 0.3


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
class SessionEvent:
    """Something happened to ``session``; the endpoint's events are its subclasses."""

    session: Session


class Accepted(SessionEvent):
    """A listener set up a new connection; take it with :meth:`Endpoint.accept`."""

    __slots__ = ()


class Connected(SessionEvent):
    """An outgoing (or rendezvous) connect finished."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ConnectFailed(SessionEvent):
    """An outgoing (or rendezvous) connect failed."""

    reason: FailReason


class Readable(SessionEvent):
    """Data (or end of data) is waiting to be read."""

    __slots__ = ()


class Writable(SessionEvent):
    """Send buffer space was freed."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Closed(SessionEvent):
    """The session is gone (its socket id is free again)."""

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
        if self.mss < IP_UDP_HEADERS + HANDSHAKE_SIZE:
            raise ValueError(f"mss must be at least {IP_UDP_HEADERS + HANDSHAKE_SIZE}")
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
