"""One UDT connection's protocol state: the reference's ``CUDT``, less its two halves.

A :class:`Session` is made by its :class:`~._endpoint.Endpoint` (connecting,
or accepted by a listener) and holds what belongs to the connection as a
whole: the handshake (client, server and rendezvous sides), the state from
connecting to closed, the timers (ACK, NAK, EXP, handshake retransmission,
linger, paced sending: one deadline the endpoint schedules), the RTT, and
the glue to the congestion controller. What it sends and receives belongs
to the two objects it owns, ``sender`` (:class:`~._sender.Sender`) and
``receiver`` (:class:`~._receiver.Receiver`); control packets are taken
apart here and handed to the one they concern.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Final

from ._congestion import CongestionControl
from ._engine import (
    IP_UDP_HEADERS,
    MIN_EXP,
    SYN,
    UDT_VERSION,
    Closed,
    CloseReason,
    Config,
    Connected,
    ConnectFailed,
    FailReason,
    LocalProtocolError,
    Snapshot,
    State,
    Stats,
)
from ._packet import (
    CONTROL_FLAG,
    HANDSHAKE_SIZE,
    HEADER,
    HEADER_SIZE,
    U32,
    BadPacket,
    ControlType,
    Handshake,
    RequestType,
    SocketType,
    UserDefined,
    control_type,
    control_word,
    ip_to_wire,
    parse_packet_untrusted,
)
from ._receiver import Receiver
from ._sender import Sender
from ._seq import SEQ_MASK

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["Session", "replace_handshake", "sane_handshake"]

_BROKEN_SILENCE: Final = 5.0
_BROKEN_EXPIRATIONS: Final = 16
_CONFIRM_TIME: Final = 1.0
_CONFIRM_PROBE: Final = 0.05
_SHUTDOWN_COPIES: Final = 3
_NEVER: Final = math.inf
_PAD: Final = b"\0\0\0\0"
_SHUTDOWN_WORD: Final = control_word(ControlType.SHUTDOWN)
_KEEPALIVE_WORD: Final = control_word(ControlType.KEEPALIVE)


class Session:
    """One UDT connection's protocol state: handshake, timers, and its sender and receiver.

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
        self.payload_size = config.mss - IP_UDP_HEADERS - HEADER_SIZE
        self.start_time = now
        #: The peer closed (shutdown received): reads drain, then end.
        self.peer_closed = False
        self._closed_by_app = False
        # handshake
        self._request: Handshake | None = None
        self._response: Handshake | None = None
        self._last_request = -_NEVER
        self._connect_deadline = _NEVER
        self._in_accept_queue = False
        # rendezvous: data waits until the peer is known to be connected (see _establish)
        self._confirm_until = -_NEVER
        # timers: the deadline the endpoint has, and its generation (older heap entries are stale)
        self._deadline = _NEVER
        self._gen = 0
        self._linger_deadline = _NEVER
        self._exp_count = 1
        self._last_rsp = now
        self.rtt = 0.1  # seconds
        self.rtt_var = 0.05
        self.cc: CongestionControl = config.congestion()
        self.sender = Sender(self, now)
        self.receiver = Receiver(self, now)

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
    def flow_window(self) -> int:
        """The peer's flow window (packets), as its handshake and ACKs announce it."""
        return self.sender.flow_window

    @property
    def delivery_rate(self) -> int:
        """Packets per second the peer reports receiving."""
        return self.sender.delivery_rate

    @property
    def bandwidth(self) -> int:
        """The link capacity the peer estimates (packets per second)."""
        return self.sender.bandwidth

    @property
    def send_buffered(self) -> int:
        """Packets in the send buffer (sent but unacknowledged, or not yet sent)."""
        return self.sender.buffered

    @property
    def send_space(self) -> int:
        """Free send-buffer space, in bytes."""
        return max(0, self.config.snd_buf - self.sender.buffered) * self.payload_size

    @property
    def readable_bytes(self) -> int:
        return self.receiver.readable_bytes

    @property
    def messages_waiting(self) -> int:
        return len(self.receiver.messages)

    @property
    def at_eof(self) -> bool:
        """No more data will ever arrive (the peer closed, or the connection ended)."""
        return self.peer_closed or self.state is State.CLOSED

    @property
    def max_message_size(self) -> int:
        return self.config.snd_buf * self.payload_size

    def _now_us(self, now: float) -> int:
        return int((now - self.start_time) * 1_000_000) & U32

    # -- the application side ---------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue stream bytes; returns how many fit in the send buffer (possibly 0)."""
        if not self.is_stream:
            raise LocalProtocolError("send() is for stream connections; use send_message()")
        self._check_sendable()
        return self.sender.send_stream(data, now)

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
        return self.sender.send_message(data, now, ttl, in_order)

    def _check_sendable(self) -> None:
        if self.state is not State.CONNECTED or self._closed_by_app:
            raise LocalProtocolError(f"cannot send on a {self.state.value} connection")

    def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of stream data (``b""`` when none is waiting)."""
        return self.receiver.receive(max_bytes)

    def receive_message(self) -> bytes | None:
        """The next whole message, or ``None`` when none is complete."""
        return self.receiver.receive_message()

    def close(self, now: float) -> None:
        """Graceful close: linger until sent data is acknowledged (or ``linger`` passes), then shut down."""
        if self.state is State.CONNECTING:
            self._fail(FailReason.CANCELLED, now)
            return
        if self.state is not State.CONNECTED:
            return
        self._closed_by_app = True
        linger = self.config.linger
        if linger and self.sender.buffered and not self.peer_closed:
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
        self.sender.reset(isn)
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
        pkt = replace_handshake(self._request, timestamp=self._now_us(now), dest=dest & U32)
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
                    if w0 & CONTROL_FLAG:
                        self._on_control(data, w0, w1, now)
                    else:
                        self.receiver.on_data_segments(data, 0, len(data), len(data), now)
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
                self._request = replace_handshake(self._request, request_type=int(RequestType.RESPONSE))
                self._send_request(now)
                return
            self._establish(pkt, now)
            return
        if pkt.request_type == RequestType.CONNECT:
            # the listener's cookie challenge: answer with the cookie
            self._request = replace_handshake(
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

    def _take_peer(self, hs: Handshake) -> None:
        """What the peer's handshake sets: the MSS, its flow window, its ISN and socket id."""
        self.mss = min(self.config.mss, hs.mss)
        self.sender.flow_window = hs.flight_flag_size
        self.peer_isn = hs.isn
        self.peer_id = hs.socket_id

    def _establish(self, res: Handshake, now: float) -> None:
        """Configure from the peer's response and go CONNECTED (client and rendezvous)."""
        if not sane_handshake(res):
            return
        self._take_peer(res)
        self._response = res
        self.receiver.reset(res.isn)
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
        self._take_peer(hs)
        # The reference answers with the client's ISN as its own (the client checks it).
        self.isn = hs.isn
        self.sender.reset(hs.isn)
        self.receiver.reset(hs.isn)
        self._become_connected(now)
        return self._response_again(hs, now)

    def _response_again(self, hs: Handshake, now: float) -> Handshake:
        """The response to the peer's request ``hs`` (again, when the peer missed it)."""
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
            dest=hs.socket_id & U32,
        )

    def _become_connected(self, now: float) -> None:
        self.payload_size = self.mss - IP_UDP_HEADERS - HEADER_SIZE
        self.state = State.CONNECTED
        self._connect_deadline = _NEVER
        self.start_time = now
        self._last_rsp = now
        self.receiver.start(now)
        self.sender.next_time = now
        cc = self.cc
        self._cc_inputs(now)
        cc.max_cwnd = float(self.sender.flow_window)
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
                self._send_control(_SHUTDOWN_WORD, 0, _PAD, now)
        was_connected = self.state is not State.CONNECTING
        self.state = State.CLOSED
        self.close_reason = reason
        self._deadline = _NEVER
        self.sender.clear()
        self.receiver.clear()
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
        receiver = self.receiver
        if receiver.next != receiver.last_ack_ack or receiver.window_update:
            d = min(d, receiver.next_ack)
        if self.config.periodic_nak and receiver.loss:
            d = min(d, receiver.next_nak)
        sender = self.sender
        if self._confirm_until != -_NEVER:
            d = min(d, self._confirm_until, self._last_request + _CONFIRM_PROBE)
        elif sender.want and (sender.loss or sender.can_send_new()):
            d = min(d, sender.next_time)
        d = min(d, sender.stuck_deadline())
        if state is State.CLOSING:
            d = min(d, self._linger_deadline)
        return d

    def _exp_deadline(self) -> float:
        rto = self.cc.rto
        if rto is not None:
            return self._last_rsp + rto / 1_000_000
        n = self._exp_count
        interval = max(n * (self.rtt + 4 * self.rtt_var) + SYN, n * MIN_EXP)
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
        sender = self.sender
        if state is State.CLOSING and (now >= self._linger_deadline or not sender.buffered):
            self._finish(CloseReason.LOCAL, now, send_shutdown=True)
            return
        self.cc.now = int(now * 1_000_000)
        receiver = self.receiver
        if now >= receiver.next_ack:
            receiver.send_ack(now)
        if self.config.periodic_nak and receiver.loss and now >= receiver.next_nak:
            receiver.send_periodic_nak(now)
        if now >= self._exp_deadline():
            self._on_exp(now)
            if self.state is State.CLOSED:
                return
        sender.resend_stuck(now)
        if self._confirm_until != -_NEVER:
            if now >= self._confirm_until:
                self._confirmed(now)  # the peer never said; send anyway
            elif now - self._last_request >= _CONFIRM_PROBE:
                self._send_request(now)
        if sender.want and now >= sender.next_time and self._confirm_until == -_NEVER:
            sender.emit(now)
        self._reschedule()

    def _on_exp(self, now: float) -> None:
        if self._exp_count > _BROKEN_EXPIRATIONS and now - self._last_rsp > _BROKEN_SILENCE:
            self._finish(CloseReason.TIMEOUT, now, send_shutdown=False)
            return
        sender = self.sender
        if sender.buffered:
            # resend everything unacknowledged
            n = sender.on_timeout()
            self.stats.pkt_snd_loss += n
            self.stats.pkt_timeout_loss += n
            self._cc_inputs(now)
            self.cc.on_timeout()
            self._cc_update()
            sender.wake(now)
        else:
            self._send_control(_KEEPALIVE_WORD, 0, _PAD, now)
        self._exp_count += 1
        self._last_rsp = now

    def _heard(self, now: float) -> None:
        self._exp_count = 1
        self._last_rsp = now

    def _confirmed(self, now: float) -> None:
        self._confirm_until = -_NEVER
        sender = self.sender
        if sender.want and sender.next_time < now:
            sender.next_time = now

    def _rtt_sample(self, rtt: float) -> None:
        """An RTT measurement (seconds) into the smoothed RTT and its variation."""
        self.rtt_var = (self.rtt_var * 3 + abs(rtt - self.rtt)) / 4
        self.rtt = (self.rtt * 7 + rtt) / 8

    # -- congestion control glue --------------------------------------------------------
    def _cc_inputs(self, now: float) -> None:
        cc = self.cc
        sender = self.sender
        cc.mss = self.mss
        cc.max_cwnd = float(sender.flow_window)
        cc.snd_curr_seq = sender.next - 1
        cc.rcv_rate = sender.delivery_rate
        cc.rtt = int(self.rtt * 1_000_000)
        cc.bandwidth = sender.bandwidth
        cc.now = int(now * 1_000_000)

    def _cc_update(self) -> None:
        cc = self.cc
        period = cc.pkt_send_period / 1_000_000
        max_bw = self.config.max_bandwidth
        if max_bw:
            period = max(period, self.mss / max_bw)
        self.sender.period = max(period, 1e-9)
        self.sender.cwnd = cc.cwnd

    def _send_custom(self, subtype: int, data: bytes) -> None:
        now = self.endpoint.now
        self._control(UserDefined(subtype, data, timestamp=self._now_us(now), dest=self.peer_id).encode())

    # -- control packets ------------------------------------------------------------------
    def _on_control(self, data: bytes | bytearray | memoryview, w0: int, w1: int, now: float) -> None:
        self._heard(now)
        ctype = control_type(w0)
        if self._confirm_until != -_NEVER and ctype != ControlType.HANDSHAKE:
            # control packets come from the peer's receive path: it has us registered
            self._confirmed(now)
        if ctype == ControlType.ACK:
            self.sender.on_ack(data, w1, now)
        elif ctype == ControlType.ACK2:
            self.receiver.on_ack2(w1, now)
        elif ctype == ControlType.NAK:
            self.sender.on_nak(data, now)
        elif ctype == ControlType.KEEPALIVE:
            pass
        elif ctype == ControlType.SHUTDOWN:
            self._on_shutdown(now)
            return
        elif ctype == ControlType.HANDSHAKE:
            self._on_handshake_connected(data, now)
        elif ctype == ControlType.DROP_REQUEST:
            self.receiver.on_drop_request(data, w1)
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
                dest=self.peer_id & U32,
            )
            self._control(reply.encode())

    # -- statistics -------------------------------------------------------------------------------
    def snapshot(self, now: float) -> Snapshot:
        s = self.stats
        sender = self.sender
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
            us_pkt_snd_period=sender.period * 1e6,
            pkt_flow_window=sender.flow_window,
            pkt_congestion_window=int(sender.cwnd),
            pkt_flight_size=max(0, sender.next - sender.last_ack),
            ms_rtt=self.rtt * 1000,
            ms_rtt_var=self.rtt_var * 1000,
            mbps_bandwidth=sender.bandwidth * self.payload_size * 8 / 1e6,
            pkt_delivery_rate=sender.delivery_rate,
            byte_avail_snd_buf=self.send_space,
            byte_avail_rcv_buf=max(0, self.config.rcv_buf - self.receiver.held() - 1) * self.payload_size,
            mss=self.mss,
            socket_id=self.socket_id,
            peer_socket_id=self.peer_id,
            isn=self.isn,
            peer_isn=self.peer_isn,
            congestion=type(self.cc).__name__,
        )


def replace_handshake(hs: Handshake, **changes: Any) -> Handshake:
    """``hs`` with ``changes``, its timestamp and destination cleared unless changed too."""
    return dataclasses.replace(hs, **{"timestamp": 0, "dest": 0, **changes})


def sane_handshake(hs: Handshake) -> bool:
    return (
        IP_UDP_HEADERS + HANDSHAKE_SIZE <= hs.mss <= 65535
        and hs.flight_flag_size >= 1
        and hs.socket_id > 0
        and 0 <= hs.isn <= SEQ_MASK
    )
