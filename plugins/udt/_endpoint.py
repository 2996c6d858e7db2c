"""One UDP port's worth of UDT: the reference's multiplexer (``CSndQueue`` and ``CRcvQueue``).

An :class:`Endpoint` owns every :class:`~._session.Session` bound to its
port, an optional listener (SYN cookies, the accept queue) and the sessions
still connecting. Datagrams come in through :meth:`Endpoint.receive_datagram`
(and the batch entry points) and go to the session their destination socket
id names; what the sessions queue leaves through
:meth:`Endpoint.datagrams_to_send`; one heap of deadlines runs every
session's timers from :meth:`Endpoint.handle_timeout`; what happened comes
out of :meth:`Endpoint.next_event`. No I/O, no clock of its own.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from ._cookie import CookieJar
from ._engine import (
    UDT_VERSION,
    Accepted,
    Config,
    Event,
    LocalProtocolError,
    Readable,
    State,
    Writable,
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
    control_type,
    parse_packet_untrusted,
    repeated_struct,
)
from ._seq import SEQ_MASK
from ._session import Session, replace_handshake, sane_handshake

if TYPE_CHECKING:
    from ._receiver import Receiver

__all__ = ["Endpoint"]

_NEVER: Final = math.inf


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
        #: When the datagram being handled reached the host (the kernel's receive timestamp, on
        #: the same clock as ``now``): the receiver times packet arrivals, packet pairs and ACK2s
        #: by it, so that time the datagram spent queued in the socket is not taken for network
        #: time. Without a timestamp (``arrival=None``) it is ``now``.
        self.arrival = now
        #: The driver reads datagrams in passes and calls :meth:`end_of_pass` after each: the
        #: receivers measure their arrival rate per pass (see ``Receiver._arrived``).
        self.read_passes = False
        self._read_this_pass: list[Receiver] = []
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
        self._admit: Callable[[tuple[Any, ...]], bool] | None = None
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
    def listen(
        self, config: Config, backlog: int, admit: Callable[[tuple[Any, ...]], bool] | None = None
    ) -> None:
        """Accept connection requests on this port (one listener per port, as the reference).

        ``admit(addr)``: whether a peer may connect at all (access rules); a request from a
        peer it refuses is dropped unread, before the cookie exchange."""
        if self.listening:
            raise LocalProtocolError("this port already has a listener")
        if config.rendezvous:
            raise LocalProtocolError("a rendezvous socket cannot listen")
        self.listening = True
        self._listen_config = config
        self._backlog = max(1, backlog)
        self._admit = admit
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
        self,
        data: bytes | bytearray | memoryview,
        addr: tuple[Any, ...],
        now: float,
        arrival: float | None = None,
    ) -> None:
        """One UDP datagram arrived from ``addr`` (at ``arrival`` when the kernel says: :attr:`arrival`)."""
        self.now = now
        self.arrival = now if arrival is None else min(arrival, now)
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
                if w0 & CONTROL_FLAG:
                    s._on_control(data, w0, w1, now)
                else:
                    s.receiver.on_data_segments(data, 0, size, size, now)
            elif state is State.CONNECTING:
                s._on_connecting_packet(data, now)
            return
        # destination 0: connection requests
        if not (w0 & CONTROL_FLAG) or control_type(w0) != ControlType.HANDSHAKE:
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
        arrival: float | None = None,
    ) -> None:
        """A GRO-coalesced datagram: ``nbytes`` of packets ``segment`` bytes each (the last maybe shorter)."""
        if segment <= 0 or segment >= nbytes:
            self.receive_datagram(memoryview(data)[:nbytes], addr, now, arrival)
            return
        self.now = now
        self.arrival = now if arrival is None else min(arrival, now)
        view = data if isinstance(data, memoryview) else memoryview(data)
        off = 0
        while off < nbytes:
            end = min(off + segment, nbytes)
            if end - off >= HEADER_SIZE:
                w0, _w1, _ts, dest = HEADER.unpack_from(view, off)
                s = self._sessions.get(dest) if dest else None
                if (
                    s is not None
                    and not w0 & CONTROL_FLAG
                    and s.peer_addr == addr
                    and (s.state is State.CONNECTED or s.state is State.CLOSING)
                ):
                    stop = s.receiver.on_data_segments(view, off, nbytes, segment, now)
                    if stop > off:
                        off = stop
                        continue
            self.receive_datagram(view[off:end], addr, now, self.arrival)
            off = end

    def receive_batch(
        self,
        headers: bytearray | memoryview,
        payloads: bytearray | memoryview,
        slot: int,
        count: int,
        last_len: int,
        addr: tuple[Any, ...],
        now: float,
        arrival: float | None = None,
        arrivals: Sequence[float] | None = None,
    ) -> bool:
        """The fast path for ``count`` packets received scattered by the driver.

        ``headers`` holds their 16-byte headers back to back and ``payloads``
        their payloads in ``slot``-byte slots (the last ``last_len`` long), as
        ``recvmsg_into`` left them with an iovec list alternating the two (one
        GRO-coalesced datagram, which arrived at ``arrival``), or as
        ``recvmmsg`` left ``count`` datagrams (which arrived at ``arrivals``,
        one stamp each). If they are in-order stream data for one session,
        their payloads go to its reader as one block and this returns
        ``True``; otherwise it takes nothing and returns ``False`` (the driver
        then hands the datagrams over the ordinary way).
        """
        w0, _w1, _ts, dest = HEADER.unpack_from(headers)
        s = self._sessions.get(dest)
        if s is None:
            return False
        r = s.receiver
        if (
            w0 & CONTROL_FLAG
            or w0 != r.next31
            or s.payload_size != slot
            or not r.is_stream
            or r.reorder
            or s.peer_addr != addr
            or (s.state is not State.CONNECTED and s.state is not State.CLOSING)
            or r.held() + count >= r.rcv_buf - 1
            or w0 + count - 1 > SEQ_MASK
        ):
            return False
        if count > 1:
            fields = repeated_struct("I8xI", count).unpack_from(headers)
            if fields[0::2] != tuple(range(w0, w0 + count)) or fields[1::2] != (dest,) * count:
                return False
        self.now = now
        if arrivals is not None:
            arrival = arrivals[-1]
        self.arrival = now if arrival is None else min(arrival, now)
        r.accept_run(bytes(payloads[: (count - 1) * slot + last_len]), count, w0, last_len, now, arrivals)
        return True

    def end_of_pass(self, now: float, *, backlog: bool = False) -> None:
        """The driver read what was waiting (a pass of :meth:`receive_datagram` and the like);
        ``backlog``: it stopped at its limit, with datagrams still waiting."""
        passed = self._read_this_pass
        if passed:
            self._read_this_pass = []
            for r in passed:
                r.end_of_pass(now, backlog=backlog)

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
        if self._admit is not None and not self._admit(addr):
            return  # refused by the access rules (counted and traced there): not even parsed
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
            reply = replace_handshake(hs, cookie=cookies.make(host, port, now))
            self._out.append((_with_header(reply, hs.socket_id, 0), addr, 0))
            return
        if not cookies.check(hs.cookie, host, port, now):
            self.dropped += 1
            return
        if hs.version != UDT_VERSION or hs.socket_type != int(config.socket_type):
            reject = replace_handshake(hs, request_type=int(RequestType.REJECTED))
            self._out.append((_with_header(reject, hs.socket_id, 0), addr, 0))
            return
        if not sane_handshake(hs):
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
            reject = replace_handshake(hs, request_type=int(RequestType.REJECTED))
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
    return replace_handshake(hs, timestamp=timestamp, dest=dest & U32).encode()
