"""SCTP associations: the stream, the message channel and listener, socket options, ``struct`` layouts.

The implementation of ``sctp://`` (see the package): imported when a
connection or a listener is made, or one of its classes is used, not when
the plugin registers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, final

import trio

from trio_conduit import Address, AddressError, Connection, MessageTooLarge
from trio_conduit.transport import (
    ConflictDetector,
    Context,
    Listener,
    MessageSocketChannel,
    SockAddr,
    SocketHolder,
    SocketStream,
    connect_error_from_oserror,
)

__all__ = [
    "SCTPMessage",
    "SCTPMessageChannel",
    "SCTPMessageListener",
    "SCTPStream",
    "association_up",
    "prepare",
]

SOL_SCTP: Final = 132
# socket options
SCTP_INITMSG: Final = 2
SCTP_NODELAY: Final = 3
SCTP_EVENTS: Final = 11
SCTP_RECVRCVINFO: Final = 32
SCTP_SOCKOPT_PEELOFF_FLAGS: Final = 122
# cmsg types
SCTP_SNDRCV: Final = 1
SCTP_SNDINFO: Final = 2
SCTP_RCVINFO: Final = 3
# flags and notifications
SCTP_UNORDERED: Final = 1
MSG_NOTIFICATION: Final = 0x8000
SCTP_ASSOC_CHANGE: Final = 0x8001
SCTP_SHUTDOWN_EVENT: Final = 0x8005
SCTP_COMM_UP, SCTP_COMM_LOST, SCTP_RESTART, SCTP_SHUTDOWN_COMP, SCTP_CANT_STR_ASSOC = range(5)

_INITMSG: Final = struct.Struct("=HHHH")  # num_ostreams, max_instreams, max_attempts, max_init_timeo
_SNDINFO: Final = struct.Struct("=HHIIi")  # sid, flags, ppid, context, assoc_id
_RCVINFO: Final = struct.Struct("=HHH2xIIIIi")  # sid, ssn, flags, ppid, tsn, cumtsn, context, assoc_id
_SNDRCV: Final = struct.Struct("=HHH2xIIIIIi")  # stream, ssn, flags, ppid, context, ttl, tsn, cumtsn, assoc
_NOTIFICATION: Final = struct.Struct("=HHI")  # type, flags, length
_ASSOC_CHANGE: Final = struct.Struct("=HHIHHHHi")  # ..., state, error, outbound, inbound, assoc_id
_PEELOFF_FLAGS: Final = struct.Struct("=iiI")  # assoc_id, sd (out), flags
# struct sctp_event_subscribe: data_io, association, address, send_failure, peer_error, shutdown
_EVENTS_RCVINFO: Final = bytes([0, 1, 0, 0, 0, 1])
_EVENTS_SNDRCV: Final = bytes([1, 1, 0, 0, 0, 1])
_ANC_SPACE: Final = socket.CMSG_SPACE(_SNDRCV.size) + socket.CMSG_SPACE(_RCVINFO.size)
_NOTE_SIZE: Final = 4096
#: Stream mode: each send() is one SCTP message and must fit the send buffer (EMSGSIZE otherwise).
SEND_SIZE: Final = 65536


def prepare(options: Mapping[str, object], sock: trio.socket.SocketType) -> None:
    """Socket options that must be set before connect/listen (stream counts, notifications)."""
    if options["nodelay"]:
        sock.setsockopt(SOL_SCTP, SCTP_NODELAY, 1)
    streams = options["streams"]
    if streams is not None:
        if not isinstance(streams, int) or not 1 <= streams <= 65535:
            raise AddressError(f"streams must be a count from 1 to 65535, not {streams!r}")
        sock.setsockopt(SOL_SCTP, SCTP_INITMSG, _INITMSG.pack(streams, streams, 0, 0))
    if sock.type == socket.SOCK_SEQPACKET:
        _subscribe(sock)


def _subscribe(sock: trio.socket.SocketType) -> None:
    """Association and shutdown notifications, and per-message stream ids (RCVINFO, else SNDRCV)."""
    try:
        sock.setsockopt(SOL_SCTP, SCTP_RECVRCVINFO, 1)
        events = _EVENTS_RCVINFO
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise
        events = _EVENTS_SNDRCV  # kernels before SCTP_RCVINFO: the older ancillary data
    sock.setsockopt(SOL_SCTP, SCTP_EVENTS, events)


@dataclass(frozen=True, slots=True)
class AssocChange:
    state: int
    error: int
    outbound: int
    inbound: int
    assoc_id: int


def _notification(data: bytes) -> tuple[int, AssocChange | None]:
    """A notification's type, and its contents when it is an association change."""
    if len(data) < _NOTIFICATION.size:
        return 0, None
    kind = _NOTIFICATION.unpack_from(data)[0]
    if kind == SCTP_ASSOC_CHANGE and len(data) >= _ASSOC_CHANGE.size:
        _, _, _, state, error, outbound, inbound, assoc_id = _ASSOC_CHANGE.unpack_from(data)
        return kind, AssocChange(state, error, outbound, inbound, assoc_id)
    return kind, None


async def _next_notification(sock: trio.socket.SocketType) -> tuple[int, AssocChange | None, SockAddr]:
    """Read the socket until a whole notification arrives (data before it is not expected: dropped)."""
    while True:
        data, _, flags, addr = await sock.recvmsg(_NOTE_SIZE)
        while not flags & socket.MSG_EOR and data:  # the rest of a long notification or message
            more, _, flags, _ = await sock.recvmsg(_NOTE_SIZE)
            data += more
            if not more:
                break
        if flags & MSG_NOTIFICATION:
            kind, change = _notification(data)
            return kind, change, addr if isinstance(addr, (str, bytes, tuple)) else ()


async def association_up(sock: trio.socket.SocketType, where: str) -> tuple[AssocChange, SockAddr]:
    """Wait for a connecting one-to-many socket's association: up, or a typed error."""
    while True:
        try:
            _kind, change, remote = await _next_notification(sock)
        except OSError as exc:
            raise connect_error_from_oserror(exc, action="connect to", address=where) from exc
        if change is not None and change.state == SCTP_COMM_UP:
            return change, remote
        if change is not None and change.state == SCTP_CANT_STR_ASSOC:
            err = change.error or errno.ECONNREFUSED  # the kernel reports the errno: refused, timed out
            raise connect_error_from_oserror(
                OSError(err, os.strerror(err)), action="connect to", address=where
            )


_libc: ctypes.CDLL | None = None


def _peeloff(sock: trio.socket.SocketType, assoc_id: int) -> socket.socket:
    """Branch an association off a one-to-many socket into a socket of its own.

    ``getsockopt(SCTP_SOCKOPT_PEELOFF_FLAGS)`` reads its argument too, which
    Python's ``getsockopt`` cannot pass: it is called through libc.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    arg = ctypes.create_string_buffer(
        _PEELOFF_FLAGS.pack(assoc_id, 0, socket.SOCK_CLOEXEC), _PEELOFF_FLAGS.size
    )
    size = ctypes.c_uint32(_PEELOFF_FLAGS.size)
    # Linux returns the new descriptor (>= 0) from getsockopt itself here, and in ``sd``.
    if _libc.getsockopt(sock.fileno(), SOL_SCTP, SCTP_SOCKOPT_PEELOFF_FLAGS, arg, ctypes.byref(size)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return socket.socket(fileno=_PEELOFF_FLAGS.unpack(arg.raw)[1])


@final
class SCTPStream(SocketStream):
    """An SCTP association as a byte stream (a one-to-one socket: the default mode).

    A ``trio.abc.Stream``, *not* half-closeable: SCTP has no half-close (after
    ``shutdown(SHUT_WR)`` the peer cannot send either). Each ``send()`` call
    carries at most 64 KiB, as SCTP sends it as one message that must fit the
    send buffer. Bytes go through this object, never around it: the kernel's
    ``sendfile``/``splice`` into SCTP sends page-sized messages, several times slower.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        conn_id: int,
        ctx: Context,
        *,
        address: Address,
        remote: SockAddr | None = None,
    ) -> None:
        super().__init__(
            sock,
            conn_id,
            transport="sctp",
            tracer=ctx.tracer,
            address=address,
            remote=remote,
            send_size=SEND_SIZE,
        )


@dataclass(frozen=True, slots=True)
class SCTPMessage:
    """One received message: its bytes, stream number and payload protocol id.

    ``ppid`` is the value on the wire (IANA's numbering: 51 is WebRTC's
    string), converted from the network byte order the kernel leaves it in.
    ``stream`` and ``ppid`` are ``None`` if the kernel gave no receive info.
    """

    data: bytes
    stream: int | None
    ppid: int | None
    unordered: bool = False


class SCTPMessageChannel(MessageSocketChannel):
    """One SCTP association as a channel of whole messages (``?mode=message``).

    :meth:`send` takes a stream number (``0`` to ``streams[0] - 1``), a payload
    protocol id and ``unordered``; :meth:`receive_message` returns an
    :class:`SCTPMessage`; :meth:`receive` just the bytes. A graceful shutdown
    by the peer ends the channel (``trio.EndOfChannel``); a lost or aborted
    association breaks it (``trio.BrokenResourceError``). ``streams`` is
    (outbound, inbound) as negotiated, ``assoc_id`` the kernel's association id.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        conn_id: int,
        ctx: Context,
        change: AssocChange,
        *,
        address: Address,
        remote: SockAddr | None,
    ) -> None:
        super().__init__(
            sock,
            conn_id,
            transport="sctp",
            tracer=ctx.tracer,
            address=address,
            remote=remote,
            max_size=ctx.int_option("max_size"),
        )
        self.assoc_id = change.assoc_id
        self.streams = (change.outbound, change.inbound)
        self._eof = False
        self._broken: str | None = None
        self._partial: list[bytes] = []  # a message delivered in parts, kept across cancellation
        self._partial_size = 0
        self._receive_conflict = ConflictDetector("another task is already receiving on this channel")
        try:
            sock.getsockopt(SOL_SCTP, SCTP_RECVRCVINFO)
            self._sndinfo = True
        except OSError:
            self._sndinfo = False  # a kernel from before SCTP_SNDINFO: the older SCTP_SNDRCV

    async def send(
        self,
        value: bytes | bytearray | memoryview,
        *,
        stream: int = 0,
        ppid: int = 0,
        unordered: bool = False,
    ) -> None:
        """Send ``value`` as one message on ``stream`` with payload protocol id ``ppid``."""
        if not 0 <= stream < self.streams[0]:
            raise ValueError(f"stream {stream} out of range: this association has {self.streams[0]} streams")
        if not len(value):
            raise ValueError("SCTP cannot send an empty message")
        flags, wire_ppid = SCTP_UNORDERED if unordered else 0, socket.htonl(ppid)
        if self._sndinfo:
            info = (SOL_SCTP, SCTP_SNDINFO, _SNDINFO.pack(stream, flags, wire_ppid, 0, self.assoc_id))
        else:
            info = (
                SOL_SCTP,
                SCTP_SNDRCV,
                _SNDRCV.pack(stream, 0, flags, wire_ppid, 0, 0, 0, 0, self.assoc_id),
            )
        await self._sendmsg(value, [info])

    async def receive(self) -> bytes:
        return (await self.receive_message()).data

    async def receive_message(self) -> SCTPMessage:
        """The next whole message with its stream number and payload protocol id."""
        with self._receive_conflict:
            return await self._receive_message()

    async def _receive_message(self) -> SCTPMessage:
        while True:
            if self._broken is not None:
                raise trio.BrokenResourceError(f"the association was {self._broken}")
            if self._eof:
                raise trio.EndOfChannel
            data, ancdata, flags = await self._recvmsg(self._max_size, _ANC_SPACE)
            if flags & MSG_NOTIFICATION:
                self._note(data)
                continue
            if not data and not flags & socket.MSG_EOR:
                self._eof = True  # the kernel says the association is shut down
                continue
            self._partial_size += len(data)
            if self._partial_size <= self._max_size:
                self._partial.append(data)
            else:
                self._partial.clear()  # too long: read it to its end, keep none of it
            if not flags & socket.MSG_EOR:
                continue
            parts, size = self._partial, self._partial_size
            self._partial, self._partial_size = [], 0
            if size > self._max_size:
                raise MessageTooLarge(f"a message of {size} bytes is longer than max_size={self._max_size}")
            return _message(b"".join(parts), ancdata)

    def _note(self, data: bytes) -> None:
        kind, change = _notification(data)
        if kind == SCTP_SHUTDOWN_EVENT or (change is not None and change.state == SCTP_SHUTDOWN_COMP):
            self._eof = True  # the peer shut the association down: no more messages
        elif change is not None and change.state in (SCTP_COMM_LOST, SCTP_CANT_STR_ASSOC):
            self._broken = "lost (aborted by the peer, or it stopped answering)"
        elif change is not None and change.state == SCTP_RESTART:
            self.streams = (change.outbound, change.inbound)


def _message(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> SCTPMessage:
    for level, kind, raw in ancdata:
        if level == SOL_SCTP and kind == SCTP_RCVINFO and len(raw) >= _RCVINFO.size:
            sid, _ssn, flags, ppid, *_ = _RCVINFO.unpack_from(raw)
            return SCTPMessage(data, sid, socket.ntohl(ppid), bool(flags & SCTP_UNORDERED))
        if level == SOL_SCTP and kind == SCTP_SNDRCV and len(raw) >= _SNDRCV.size:
            sid, _ssn, flags, ppid, *_ = _SNDRCV.unpack_from(raw)
            return SCTPMessage(data, sid, socket.ntohl(ppid), bool(flags & SCTP_UNORDERED))
    return SCTPMessage(data, None, None)


class SCTPMessageListener(SocketHolder, Listener):
    """A one-to-many socket that accepts associations by peeling each off when it comes up."""

    def __init__(self, sock: trio.socket.SocketType, ctx: Context, address: Address) -> None:
        self._sock = sock
        self._ctx = ctx
        self._address = address

    @property
    def address(self) -> Address:
        return self._address

    async def accept(self) -> Connection:
        ctx = self._ctx
        while True:
            if self._is_closed:
                raise trio.ClosedResourceError("this listener was closed")
            try:
                _kind, change, remote = await _next_notification(self._sock)
            except OSError as exc:
                if exc.errno == errno.EBADF or self._is_closed:
                    raise trio.ClosedResourceError("this listener was closed") from None
                raise
            if change is None or change.state != SCTP_COMM_UP:
                continue
            try:
                sock = trio.socket.from_stdlib_socket(_peeloff(self._sock, change.assoc_id))
            except OSError:
                continue  # the association is already gone
            try:
                _subscribe(sock)
                await ctx.socket_accepted(sock)
                return SCTPMessageChannel(
                    sock, ctx.new_conn_id(), ctx, change, address=self.address, remote=remote
                )
            except BaseException:
                sock.close()
                raise

    async def aclose(self) -> None:
        self._close_socket()
        await trio.lowlevel.checkpoint()
