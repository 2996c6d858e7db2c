"""The trio driver: one UDP socket per multiplexer, the engine, and the connection objects users see.

A :class:`Multiplexer` owns a kernel UDP socket (made by the core's shared
socket path, so ``local=``, ``device=``, ``ip_options=`` and the
``conduit_socket_created`` hooks apply), one :class:`~._endpoint.Endpoint`
and one task. The task waits for the socket to become readable or for the
endpoint's next deadline, drains every waiting datagram (GRO-coalesced
batches are handed to the engine whole), runs the due timers, sends what
the engine queued (``UDP_SEGMENT`` batches where the kernel takes them,
single datagrams otherwise) and wakes the tasks waiting on connections.
Application calls (``send_all``, ``receive_some``, ``aclose``) act on the
engine directly and then :meth:`Multiplexer.kick` it: run what became due,
flush, and move the task's wake-up time earlier if needed.

Multiplexers are shared, as the reference shares its ``CMultiplexer``: a
listener and every connection it accepts use one socket, and an outgoing
connection bound (``local=``) to a port that a multiplexer of the same pool
already has joins it. A multiplexer closes its socket and ends its task when
its last user goes.
"""

from __future__ import annotations

import errno
import math
import operator
import socket
import struct
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, final

import trio

from trio_conduit import (
    Address,
    CommunicationInfo,
    ConnectError,
    ConnectionRefused,
    ConnectTimeout,
    DatagramConnection,
    Listener,
    MessageTooLarge,
    StreamConnection,
)
from trio_conduit import Connection as _Connection
from trio_conduit.transport import ConflictDetector

from ._endpoint import Endpoint
from ._engine import (
    Accepted,
    CloseReason,
    FailReason,
    Readable,
    Snapshot,
    State,
    Writable,
)
from ._recvmmsg import MSG_TRUNC, STAMP_ONLY, BatchReader
from ._session import Session

__all__ = [
    "Multiplexer",
    "UDTListener",
    "UDTMessageChannel",
    "UDTStream",
    "UDTTimeout",
]

SOL_UDP: Final = 17
UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO: Final = getattr(socket, "UDP_GRO", 104)
#: The kernel's receive timestamp of each datagram (a ``struct timespec``, CLOCK_REALTIME).
SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC: Final = struct.Struct("@qq")
_ANC_SPACE: Final = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(_TIMESPEC.size)
_RECV_SIZE: Final = 65536
#: Datagrams drained per wake-up before timers and sends get their turn.
_DRAIN_BATCH: Final = 256
#: Datagrams per ``recvmmsg`` call.
_MMSG_BATCH: Final = 32
_SEG: Final = struct.Struct("=H")
_MAX_SEGMENTS: Final = 64
_DRAIN_TIME: Final = 0.001
_GSO_ERRORS: Final = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE})
DEFAULT_RECEIVE_SIZE: Final = 256 * 1024

# One registry of multiplexers per pool (keyed by the pool's nursery).
_REGISTRY: weakref.WeakKeyDictionary[trio.Nursery, dict[tuple[int, int], Multiplexer]] = (
    weakref.WeakKeyDictionary()
)


class UDTTimeout(ConnectError, TimeoutError):
    """A send or receive waited longer than the connection's ``send_timeout``/``receive_timeout``."""


def _set_buffer(sock: socket.socket, force: int, normal: int, size: int) -> None:
    if size <= 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root: past net.core.*mem_max
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, normal, size)
        except OSError:
            pass


@final
class Multiplexer:
    """One UDP socket, its engine, and the task driving both."""

    def __init__(
        self,
        sock: socket.socket,
        nursery: trio.Nursery,
        *,
        gso: bool = True,
        gro: bool = True,
        udp_sndbuf: int = 0,
        udp_rcvbuf: int = 0,
        payload_size: int = 1456,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.family = sock.family
        self.local: tuple[Any, ...] = sock.getsockname()
        self.endpoint = Endpoint(trio.current_time(), ipv6=sock.family == socket.AF_INET6)
        self.endpoint.read_passes = True  # _drain calls end_of_pass
        _set_buffer(sock, getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF, udp_sndbuf)
        _set_buffer(sock, getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF, udp_rcvbuf)
        self.gso = gso
        self.gro = False
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        # Arrival times from the kernel: what the receiver measures (packet intervals, packet
        # pairs, ACK2s for the RTT) is then the network's timing, not how long a datagram
        # waited in the socket for this task to read it.
        self.timestamps = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.timestamps = True
        except OSError:
            pass
        self._setup_scatter(payload_size)
        self._owners: dict[Session, _Owner] = {}
        self._users = 0
        self._listener: UDTListener | None = None
        self._accept_lot = trio.lowlevel.ParkingLot()
        self._pending: list[tuple[Any, tuple[Any, ...], int]] = []
        self._sleep: trio.CancelScope | None = None
        self._cancel = trio.CancelScope()
        self._closed = False
        self._key: tuple[int, int] | None = None
        self._registry: dict[tuple[int, int], Multiplexer] | None = None
        #: Datagrams the kernel would not take (other than "try again").
        self.send_errors = 0
        nursery.start_soon(self._run, name=f"udt multiplexer {self.local}")

    # -- registry -----------------------------------------------------------------
    @classmethod
    def shared(cls, nursery: trio.Nursery, family: int, port: int) -> Multiplexer | None:
        """A live multiplexer of this pool bound to ``port`` (``None`` if none)."""
        table = _REGISTRY.get(nursery)
        mux = table.get((family, port)) if table else None
        return mux if mux is not None and not mux._closed else None

    def register(self, nursery: trio.Nursery) -> None:
        table = _REGISTRY.setdefault(nursery, {})
        key = (int(self.family), int(self.local[1]))
        if key not in table:
            table[key] = self
            self._key = key
            self._registry = table

    @property
    def socket(self) -> socket.socket:
        return self._sock

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def users(self) -> int:
        """Listener and connections using this multiplexer."""
        return self._users

    # -- users ------------------------------------------------------------------------
    def acquire(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this UDT multiplexer is closed")
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self.close()

    def adopt(self, session: Session, owner: _Owner) -> None:
        self._owners[session] = owner

    def disown(self, session: Session) -> None:
        self._owners.pop(session, None)

    def close(self) -> None:
        """Abort every session, close the socket, end the task."""
        if self._closed:
            return
        self._closed = True
        ep = self.endpoint
        now = trio.current_time()
        for s in ep.sessions:
            s.abort(now)
        self._flush()
        if self._registry is not None and self._key is not None and self._registry.get(self._key) is self:
            del self._registry[self._key]
        self._cancel.cancel()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        self._dispatch()
        self._accept_lot.unpark_all()

    # -- driving ----------------------------------------------------------------------
    def kick(self) -> None:
        """After an application call: run what became due, send, wake the task earlier if needed."""
        if self._closed:
            return
        ep = self.endpoint
        now = trio.current_time()
        if ep.next_deadline() <= now:
            ep.handle_timeout(now)
        self._flush()
        self._dispatch()
        sleep = self._sleep
        if sleep is not None:
            deadline = ep.next_deadline()
            if self._pending:
                deadline = min(deadline, now)
            if deadline < sleep.deadline:
                sleep.deadline = deadline

    async def _run(self) -> None:
        sock = self._sock
        ep = self.endpoint
        wait_readable = trio.lowlevel.wait_readable
        wait_writable = trio.lowlevel.wait_writable
        with self._cancel:
            while not self._closed:
                now = trio.current_time()
                if ep.next_deadline() <= now:
                    ep.handle_timeout(now)
                self._flush()
                self._dispatch()
                deadline = ep.next_deadline()
                # A sender whose pacing timer is already due when it gets here would never see
                # the socket readable (the wait is cancelled at once) and leave ACKs unread, and
                # their ACK2s unsent, for as long as it keeps sending: it reads on every turn.
                due = deadline <= trio.current_time()
                with trio.CancelScope(deadline=deadline) as sleep:
                    self._sleep = sleep
                    if self._pending:
                        await wait_writable(sock)
                    else:
                        await wait_readable(sock)
                self._sleep = None
                if not self._closed and (due or not sleep.cancelled_caught):
                    self._drain()

    def _setup_scatter(self, slot: int) -> None:
        """Receive buffers laid out for ``slot``-byte payloads (see :meth:`_drain`)."""
        count = max(1, min(_MAX_SEGMENTS, 65000 // (slot + 16)))
        self._slot = slot
        self._headers = bytearray(16 * count)
        self._payloads = bytearray(slot * count)
        self._spill = bytearray(_RECV_SIZE)
        hv, pv = memoryview(self._headers), memoryview(self._payloads)
        big: list[memoryview] = []
        for i in range(count):
            big += [hv[16 * i : 16 * (i + 1)], pv[slot * i : slot * (i + 1)]]
        self._iov_big = big
        self._iov_small = [hv[:16], pv[:slot], memoryview(self._spill)]
        self._use_big = False
        self._reader = BatchReader.open(self._sock, _MMSG_BATCH, slot)

    def _drain(self) -> None:
        backlog = False
        try:
            backlog = self._read_pass()
        finally:
            self.endpoint.end_of_pass(trio.current_time(), backlog=backlog)

    def _read_pass(self) -> bool:
        """Read every waiting datagram (up to a batch) and feed the engine; whether it stopped
        at its limit with datagrams still waiting.

        With GRO the socket is read with ``recvmsg_into`` over an iovec list
        that alternates 16-byte header slots and payload slots: the kernel
        itself strips the headers of a coalesced batch and lays the payloads
        out back to back, so an in-order batch reaches the reader as one
        block (:meth:`Endpoint.receive_batch`). While the peer sends single
        datagrams, a short list (one slot pair and a spill buffer) keeps the
        per-call cost low; the first coalesced batch switches to the long one.
        Anything else is put back together and handed over the ordinary way.
        """
        sock = self._sock
        ep = self.endpoint
        clock = trio.current_time
        # the kernel stamps with the wall clock: its offset from trio's clock, once per wake-up
        wall = time.clock_gettime(time.CLOCK_REALTIME) - clock()
        if self._reader is not None and not self._use_big:
            return self._read_many(self._reader, wall)
        recvmsg = sock.recvmsg
        if not self.gro:
            for _ in range(_DRAIN_BATCH):
                try:
                    data, anc, _flags, addr = recvmsg(_RECV_SIZE, _ANC_SPACE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return False
                    continue
                arrival = None
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                        sec, nsec = _TIMESPEC.unpack_from(value)
                        arrival = sec + nsec * 1e-9 - wall
                ep.receive_datagram(data, addr, clock(), arrival)
                if ep._out:
                    self._flush()  # a light ACK or a NAK: now, not after the pass
            return False
        recvmsg_into = sock.recvmsg_into
        slot = self._slot
        full = slot + 16
        # at most a millisecond per wake-up: timers (ACKs) and readers get their turn
        until = clock() + _DRAIN_TIME
        late = False
        for _ in range(_DRAIN_BATCH):
            if late:
                break
            iov = self._iov_big if self._use_big else self._iov_small
            try:
                n, anc, _flags, addr = recvmsg_into(iov, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return False
                continue  # e.g. an ICMP error queued for an earlier send
            now = clock()
            late = now > until  # this one, then stop
            segment = n
            arrival = None
            for level, kind, value in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    segment = int.from_bytes(value[:4], "little")
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    # a coalesced batch has one stamp, its first packet's: the rest came with it
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    arrival = sec + nsec * 1e-9 - wall
            count = -(-n // segment) if segment else 1
            if count > 1 and not self._use_big:
                self._use_big = True  # coalesced batches are coming: use the long list
            else:
                if count == 1 and n >= full and self._use_big:
                    self._use_big = False  # full-size single datagrams: the peer does not batch
                if (segment == full or (count == 1 and n <= full)) and n >= 16:
                    last_len = n - (count - 1) * full - 16
                    if ep.receive_batch(
                        self._headers, self._payloads, slot, count, last_len, addr, now, arrival
                    ):
                        if ep._out:
                            self._flush()  # a light ACK or a NAK: now, not after the pass
                        continue
            data = _gather(iov, n)
            if count > 1:
                ep.receive_segments(data, n, segment, addr, now, arrival)
            else:
                ep.receive_datagram(data, addr, now, arrival)
            if ep._out:
                self._flush()  # ACK2s, light ACKs, NAKs: now, not after the pass
        return late

    def _read_many(self, reader: BatchReader, wall: float) -> bool:
        """:meth:`_read_pass` with ``recvmmsg``: up to :data:`_MMSG_BATCH` datagrams per call.

        Runs of in-order full-size data datagrams from one peer go to the engine
        together (:meth:`Endpoint.receive_batch`, one arrival stamp each); anything
        else is put back together and handed over one by one. A GRO-coalesced
        datagram switches to :meth:`_read_pass`'s long iovec list for the next pass.
        """
        clock = trio.current_time
        until = clock() + _DRAIN_TIME
        left = _DRAIN_BATCH
        while left > 0:
            try:
                k = reader.read(left)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return False
                left -= 1
                continue  # e.g. an ICMP error queued for an earlier send
            if not k:
                return False
            # a short read emptied the socket; a full one may have left datagrams waiting
            more = k >= min(left, reader.count)
            left -= k
            now = clock()
            self._take_many(reader, k, now, wall)
            if self._use_big or self._closed:
                return False
            if now > until:
                return more
        return True

    def _take_many(self, reader: BatchReader, k: int, now: float, wall: float) -> None:
        """Hand the ``k`` datagrams ``reader`` holds to the engine."""
        ep = self.endpoint
        meta = reader.meta(k)
        controls = meta[0::3]
        lengths = meta[2::3]
        slot = reader.slot
        full = slot + 16
        plain = STAMP_ONLY if self.timestamps else 0
        if plain:
            stamps = reader.stamps(k)
            arrivals = [
                sec + nsec * 1e-9 - wall for sec, nsec in zip(stamps[0::2], stamps[1::2], strict=True)
            ]
        else:
            arrivals = [now] * k
        addr = reader.source(0) if reader.same_source(k) else None
        headers, payloads = memoryview(reader.headers), memoryview(reader.payloads)
        i = 0
        while i < k:
            if addr is not None:
                # the longest run from i of full-size data datagrams, the last maybe shorter
                j = i
                while j < k and lengths[j] == full and controls[j] == plain:
                    j += 1
                if j < k and 16 < lengths[j] < full and controls[j] == plain and headers[16 * j] < 0x80:
                    j += 1
                if j > i and ep.receive_batch(
                    headers[16 * i :],
                    payloads[slot * i :],
                    slot,
                    j - i,
                    lengths[j - 1] - 16,
                    addr,
                    now,
                    arrivals=arrivals[i:j],
                ):
                    if ep._out:
                        self._flush()  # a light ACK: now, not after the pass
                    i = j
                    continue
            # datagram i, the ordinary way
            length = lengths[i]
            if meta[3 * i + 1] & MSG_TRUNC:
                ep.dropped += 1
            else:
                arrival: float | None = arrivals[i]
                segment = 0
                if controls[i] != plain:
                    arrival, segment = reader.control(i, controls[i])
                    if arrival is not None:
                        arrival -= wall
                data = reader.datagram(i, length)
                source = addr or reader.source(i)
                if 0 < segment < length:
                    if self.gro:
                        self._use_big = True  # coalesced batches are coming: use the long list
                    ep.receive_segments(data, length, segment, source, now, arrival)
                else:
                    ep.receive_datagram(data, source, now, arrival)
                if ep._out:
                    self._flush()  # ACK2s, light ACKs, NAKs: now, not after the pass
            i += 1

    def _flush(self) -> None:
        if self._closed and not self._pending and not self.endpoint._out:
            return
        out = self._pending
        new = self.endpoint.datagrams_to_send()
        if out:
            out.extend(new)
        else:
            out = new
        self._pending = []
        if not out:
            return
        sock = self._sock
        sendmsg = sock.sendmsg
        for i, (data, addr, seg) in enumerate(out):
            iov = data if isinstance(data, list) else [data]
            try:
                if not seg:
                    sendmsg(iov, (), 0, addr)
                elif self.gso:
                    try:
                        sendmsg(iov, [(SOL_UDP, UDP_SEGMENT, _SEG.pack(seg))], 0, addr)
                    except OSError as exc:
                        if exc.errno not in _GSO_ERRORS:
                            raise
                        self.gso = False  # the kernel or the route cannot: split from now on
                        self._send_split(b"".join(iov), addr, seg, out, i)
                        if self._pending:
                            return
                else:
                    self._send_split(b"".join(iov), addr, seg, out, i)
                    if self._pending:
                        return
            except (BlockingIOError, InterruptedError):
                self._pending = out[i:]
                return
            except OSError:
                self.send_errors += 1

    def _send_split(
        self, data: Any, addr: tuple[Any, ...], seg: int, out: list[tuple[Any, tuple[Any, ...], int]], i: int
    ) -> None:
        """Send a batch as single datagrams (no GSO here); queue the rest if the socket fills."""
        view = memoryview(data)
        for off in range(0, len(view), seg):
            try:
                self._sock.sendto(view[off : off + seg], addr)
            except (BlockingIOError, InterruptedError):
                rest = bytes(view[off:])
                self._pending = [(rest, addr, seg if len(rest) > seg else 0), *out[i + 1 :]]
                return
            except OSError:
                self.send_errors += 1

    def _dispatch(self) -> None:
        owners = self._owners
        for ev in self.endpoint.events():
            if isinstance(ev, Accepted):
                self._accept_lot.unpark_all()
                continue
            owner = owners.get(ev.session)
            if owner is not None:
                owner._on_event(ev)

    # -- listening ------------------------------------------------------------------------
    async def wait_accept(self) -> Session:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the UDT listener was closed")
            s = self.endpoint.accept()
            if s is not None:
                await trio.lowlevel.checkpoint()
                return s
            await self._accept_lot.park()


class _Owner(_Connection):
    """The part every user-facing UDT connection shares: waiting, waking, closing."""

    def __init__(
        self,
        mux: Multiplexer,
        session: Session,
        conn_id: int,
        *,
        transport: str = "udt",
        address: Any = None,
        send_timeout: float | None = None,
        receive_timeout: float | None = None,
    ) -> None:
        super().__init__(conn_id, address)
        self._mux = mux
        self._session = session
        self._transport = transport
        self._send_timeout = send_timeout
        self._receive_timeout = receive_timeout
        self._read_lot = trio.lowlevel.ParkingLot()
        self._write_lot = trio.lowlevel.ParkingLot()
        self._state_lot = trio.lowlevel.ParkingLot()
        self._is_closed = False
        self._send_conflict = ConflictDetector("another task is already sending on this connection")
        self._recv_conflict = ConflictDetector("another task is already receiving on this connection")
        mux.adopt(session, self)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, Readable):
            self._read_lot.unpark_all()
        elif isinstance(ev, Writable):
            self._write_lot.unpark_all()
        else:
            self._read_lot.unpark_all()
            self._write_lot.unpark_all()
            self._state_lot.unpark_all()

    @property
    def session(self) -> Session:
        """The engine's view of this connection (for tests and diagnostics)."""
        return self._session

    @property
    def stats(self) -> Snapshot:
        """UDT perfmon-style statistics: RTT, rates, losses, retransmissions, windows."""
        return self._session.snapshot(trio.current_time())

    @property
    def info(self) -> CommunicationInfo:
        sock = self._mux.socket
        return CommunicationInfo(
            transport=self._transport,
            family=socket.AddressFamily(self._mux.family),
            socktype=socket.SOCK_DGRAM,
            protocol=socket.IPPROTO_UDP,
            local=self._mux.local if sock.fileno() < 0 else _sockname(sock, self._mux.local),
            remote=self._session.peer_addr,
        )

    def _broken(self) -> trio.BrokenResourceError:
        reason = self._session.close_reason
        what = reason.value if reason is not None else "the connection is not connected"
        return trio.BrokenResourceError(f"UDT connection broken: {what}")

    async def aclose(self) -> None:
        if self._is_closed:
            await trio.lowlevel.checkpoint()
            return
        self._is_closed = True
        self._read_lot.unpark_all()
        self._write_lot.unpark_all()
        s = self._session
        mux = self._mux
        try:
            s.close(trio.current_time())
            mux.kick()
            while s.state is not State.CLOSED and not mux.closed:
                await self._state_lot.park()
            await trio.lowlevel.checkpoint()
        except BaseException:
            s.abort(trio.current_time())
            mux.kick()
            raise
        finally:
            mux.disown(s)
            mux.release()
            await _shielded(self._closed())

    async def _park(self, lot: trio.lowlevel.ParkingLot, deadline: float, what: str) -> None:
        """Wait on ``lot`` until woken; :class:`UDTTimeout` at ``deadline`` (``what``'s timeout)."""
        with trio.CancelScope(deadline=deadline) as cs:
            await lot.park()
        if cs.cancelled_caught:
            raise UDTTimeout(errno.ETIMEDOUT, f"UDT {what} timed out ({what}_timeout)")

    def _check_open(self) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this UDT connection was closed")


def _gather(iov: list[memoryview], n: int) -> bytes:
    """The first ``n`` bytes that ``recvmsg_into`` scattered over ``iov``, contiguous again."""
    parts = []
    for buf in iov:
        if n <= 0:
            break
        take = min(len(buf), n)
        parts.append(buf[:take])
        n -= take
    return b"".join(parts)


async def _shielded(coro: Any) -> None:
    with trio.CancelScope(shield=True):
        await coro


def _sockname(sock: socket.socket, default: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        name: tuple[Any, ...] = sock.getsockname()
        return name
    except OSError:
        return default


@final
class UDTStream(_Owner, StreamConnection):
    """A UDT stream-mode connection: a ``trio.abc.Stream`` (no half-close).

    UDT cannot close one direction: :meth:`aclose` lingers until the data
    already sent is acknowledged (up to the ``linger`` option), then sends a
    shutdown; the peer reads everything that arrived, then ``b""``, and its
    sends fail with ``BrokenResourceError``. A peer that stops answering is
    detected by UDT's EXP timer (16 expirations, about 46 s) and shows as
    ``BrokenResourceError``.
    """

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            self._check_open()
            await trio.lowlevel.checkpoint_if_cancelled()
            s = self._session
            with memoryview(data) as view:
                if not len(view):
                    if s.state is not State.CONNECTED:
                        raise self._broken()
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
                deadline = _deadline(self._send_timeout)
                blocked = False
                while view:
                    self._check_open()
                    if s.state is not State.CONNECTED:
                        raise self._broken()
                    n = s.send(view, trio.current_time())
                    if n:
                        view = view[n:]
                        self._mux.kick()
                    if view:
                        blocked = True
                        await self._park(self._write_lot, deadline, "send")
                if not blocked:
                    await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_open()
            s = self._session
            if s.state is State.CONNECTED and not s.send_space:
                await self._write_lot.park()
                self._check_open()
            else:
                await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._recv_conflict:
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            else:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            self._check_open()
            await trio.lowlevel.checkpoint_if_cancelled()
            s = self._session
            deadline = _deadline(self._receive_timeout)
            blocked = False
            while True:
                data = s.receive(max_bytes)
                if data:
                    self._mux.kick()
                    if not blocked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if s.at_eof:
                    if s.close_reason in (CloseReason.PEER_SHUTDOWN, CloseReason.LOCAL):
                        if not blocked:
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        return b""
                    raise self._broken()
                if s.state is State.CONNECTING:
                    raise self._broken()
                blocked = True
                await self._park(self._read_lot, deadline, "receive")
                self._check_open()


@final
class UDTMessageChannel(_Owner, DatagramConnection):
    """A UDT message-mode connection: a channel of whole messages.

    :meth:`send` uses the connection's ``ttl`` and ``in_order`` options;
    :meth:`send_message` sets them per message. A message whose ``ttl``
    passes before it is delivered is dropped by the sender (the receiver
    never sees any of it). ``receive`` raises ``trio.EndOfChannel`` once the
    peer closed and every message that arrived was read.
    """

    def __init__(
        self,
        mux: Multiplexer,
        session: Session,
        conn_id: int,
        *,
        ttl: float | None = None,
        in_order: bool = True,
        **options: Any,
    ) -> None:
        """``options``: ``transport``, ``address`` and the timeouts, as :class:`UDTStream` takes them."""
        super().__init__(mux, session, conn_id, **options)
        self._ttl = ttl
        self._in_order = in_order
        # Whole messages cannot interleave: concurrent senders take turns (a channel allows them).
        self._send_lock = trio.Lock()

    @property
    def max_message_size(self) -> int:
        """The largest message :meth:`send` takes (the send buffer's size)."""
        return self._session.max_message_size

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        await self.send_message(value)

    async def send_message(
        self,
        value: bytes | bytearray | memoryview,
        *,
        ttl: float | None = None,
        in_order: bool | None = None,
    ) -> None:
        """Send one message.

        ``ttl``: seconds it may take to be delivered before the sender drops it
        (``None``: the connection's ``ttl`` option; ``math.inf``: never).
        ``in_order``: deliver only after every earlier message (``None``: the option).
        A message larger than :attr:`max_message_size` raises
        :class:`~trio_conduit.MessageTooLarge` (the channel stays usable). Tasks may
        send at once: they take turns, one whole message each.
        """
        self._check_open()
        async with self._send_lock:
            self._check_open()
            await trio.lowlevel.checkpoint_if_cancelled()
            s = self._session
            life = self._ttl if ttl is None else ttl
            if life is not None and math.isinf(life):
                life = None
            order = self._in_order if in_order is None else in_order
            if len(value) > s.max_message_size:
                raise MessageTooLarge(
                    f"message of {len(value)} bytes is larger than the send buffer ({s.max_message_size})"
                )
            deadline = _deadline(self._send_timeout)
            blocked = False
            while True:
                self._check_open()
                if s.state is not State.CONNECTED:
                    raise self._broken()
                if s.send_message(value, trio.current_time(), ttl=life, in_order=order):
                    self._mux.kick()
                    break
                blocked = True
                await self._park(self._write_lot, deadline, "send")
            if not blocked:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        with self._recv_conflict:
            self._check_open()
            await trio.lowlevel.checkpoint_if_cancelled()
            s = self._session
            deadline = _deadline(self._receive_timeout)
            blocked = False
            while True:
                msg = s.receive_message()
                if msg is not None:
                    self._mux.kick()
                    if not blocked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return msg
                if s.at_eof:
                    if s.close_reason in (CloseReason.PEER_SHUTDOWN, CloseReason.LOCAL):
                        raise trio.EndOfChannel
                    raise self._broken()
                blocked = True
                await self._park(self._read_lot, deadline, "receive")
                self._check_open()


def _deadline(timeout: float | None) -> float:
    return trio.current_time() + timeout if timeout is not None else float("inf")


@final
class UDTListener(Listener):
    """Accepts UDT connections on one multiplexer (the reference's listening socket)."""

    def __init__(
        self,
        mux: Multiplexer,
        address: Address,
        make: Callable[[Multiplexer, Session], _Connection],
    ) -> None:
        self._mux = mux
        self._address = address
        self._make = make
        self._is_closed = False
        mux._listener = self

    @property
    def address(self) -> Address:
        return self._address

    @property
    def multiplexer(self) -> Multiplexer:
        return self._mux

    @property
    def closed(self) -> bool:
        return self._is_closed

    async def accept(self) -> _Connection:
        if self._is_closed:
            raise trio.ClosedResourceError("this listener was closed")
        session = await self._mux.wait_accept()
        if self.closed:  # closed while we waited
            session.abort(trio.current_time())
            raise trio.ClosedResourceError("this listener was closed")
        self._mux.acquire()
        try:
            return self._make(self._mux, session)
        except BaseException:
            session.abort(trio.current_time())
            self._mux.release()
            raise

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            mux = self._mux
            if not mux.closed:
                now = trio.current_time()
                for s in mux.endpoint.stop_listening():
                    s.abort(now)
                mux.kick()
                mux._accept_lot.unpark_all()
            mux._listener = None
            mux.release()
        await trio.lowlevel.checkpoint()


async def wait_connected(mux: Multiplexer, session: Session, owner: _Owner, where: str) -> None:
    """Wait for a connect to finish; typed errors for the ways it fails."""
    try:
        while session.state is State.CONNECTING:
            await owner._state_lot.park()
    except BaseException:
        session.abort(trio.current_time())
        mux.kick()
        raise
    if session.state is State.CONNECTED:
        return
    reason = session.fail_reason
    if reason is FailReason.TIMEOUT:
        timeout = (
            session.config.rendezvous_timeout if session.config.rendezvous else session.config.connect_timeout
        )
        raise ConnectTimeout(
            errno.ETIMEDOUT,
            f"cannot connect to {where}: no UDT handshake response within {timeout:g} s",
            address=where,
        )
    if reason is FailReason.REJECTED:
        raise ConnectionRefused(
            errno.ECONNREFUSED,
            f"cannot connect to {where}: the UDT listener rejected the connection "
            "(backlog full, or a version or socket type mismatch)",
            address=where,
        )
    if reason is FailReason.SECURITY:
        raise ConnectError(
            errno.EPROTO,
            f"cannot connect to {where}: the response's initial sequence number does not match",
            address=where,
        )
    raise ConnectError(errno.ECONNABORTED, f"cannot connect to {where}: the connection ended", address=where)
