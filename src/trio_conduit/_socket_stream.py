"""Kernel sockets as stream connections, and the listener that accepts them.

:class:`SocketStream` / :class:`HalfCloseableSocketStream` wrap a connected
socket (OS errors become trio's stream errors at one boundary,
:data:`~trio_conduit._errors.STREAM_ERRORS`; one task at a time per direction,
guarded by :class:`~trio_conduit._util.ConflictDetector`);
:class:`SocketListener` accepts, skipping errors that concern only the
connection being accepted and waiting out fd exhaustion.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

import trio

from ._connection import (
    Buffer,
    CommunicationInfo,
    Connection,
    HalfCloseableStreamConnection,
    Listener,
    SockAddr,
    StreamConnection,
)
from ._errors import STREAM_ERRORS
from ._sockets import SocketHolder, SocketKind, SocketRole, socket_created, socket_info, sockname
from ._trace import DEBUG_ALL
from ._util import ConflictDetector

if TYPE_CHECKING:
    from ._address import Address
    from ._peer import PeerCredentials
    from ._trace import Tracer
    from ._transport import Context

__all__ = ["DEFAULT_RECEIVE_SIZE", "HalfCloseableSocketStream", "SocketListener", "SocketStream"]

_log = logging.getLogger("trio_conduit")

#: Bigger than trio's 64 KiB: fewer system calls per byte on bulk transfers.
DEFAULT_RECEIVE_SIZE: Final = 256 * 1024
# accept() errors that concern only the connection being accepted.
_ACCEPT_SKIP: Final = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
    }
)
# accept() errors from running out of something: wait and retry.
_ACCEPT_STARVED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class SocketStream(SocketHolder, StreamConnection):
    """A stream connection over a kernel socket (no half-close: e.g. SCTP).

    ``socket`` is the trio socket, for options this library does not wrap.
    ``kind``: the socket's ``(family, type, proto)`` when the caller knows them
    (a listener's :func:`socket_kind`, shared by what it accepts), which
    spares working them out again for each connection; ``local`` likewise its
    local address (see :func:`socket_info`). With ``remote`` given (the address it
    connected to, or accepted from), :attr:`info` is made on first use, and the local
    address asked of the kernel then (or when the socket closes, if that comes first):
    a connection nobody asks about costs no ``CommunicationInfo``.
    ``receive_some()`` without a size reads up to ``receive_size`` bytes
    (256 KiB by default). ``send_size`` caps what one ``send()`` call carries
    (SCTP sends each call as one message, which must fit the send buffer).
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        conn_id: int,
        *,
        transport: str,
        tracer: Tracer,
        address: Address | None = None,
        remote: SockAddr | None = None,
        peer_credentials: PeerCredentials | None = None,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        send_size: int | None = None,
        kind: SocketKind | None = None,
        local: SockAddr | None = None,
    ) -> None:
        super().__init__(conn_id, address)
        self._sock = sock
        self._send_conflict = ConflictDetector("another task is already sending on this connection")
        self._receive_conflict = ConflictDetector("another task is already receiving on this connection")
        self._is_closed = False
        self._tracer = tracer
        self._receive_size = receive_size
        self._send_size = send_size
        self._facts = (transport, remote, peer_credentials, kind)
        self._local = local
        self._info: CommunicationInfo | None = None
        if remote is None:  # ask the kernel now, while the peer is surely there
            self._info = socket_info(sock, transport, remote, peer_credentials, kind, local)

    @property
    def info(self) -> CommunicationInfo:
        info = self._info
        if info is None:
            info = self._info = socket_info(self._sock, *self._facts, self._local)
        return info

    def _close_socket(self) -> bool:
        if self._info is None and self._local is None and not self._is_closed:
            self._local = sockname(self._sock)  # the last moment to learn it (for a later ``info``)
        return super()._close_socket()

    async def send_all(self, data: Buffer) -> None:
        with self._send_conflict:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            if self._sock.did_shutdown_SHUT_WR:
                raise trio.ClosedResourceError("cannot send data after send_eof()")
            sock = self._sock
            with STREAM_ERRORS, memoryview(data) as view:
                total = len(view)
                if not total:
                    await trio.lowlevel.checkpoint()
                else:
                    step = self._send_size or total
                    sent = await sock.send(view) if step >= total else 0
                    while sent < total:
                        with view[sent : sent + step] as rest:
                            sent += await sock.send(rest)
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "write %d bytes to conn #%d event #%d",
                total,
                self.id,
                self._tracer.next_event_id(),
            )

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            with STREAM_ERRORS:
                await self._sock.wait_writable()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = self._receive_size
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            with STREAM_ERRORS:
                data: bytes = await self._sock.recv(max_bytes)
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "read %d bytes from conn #%d event #%d%s",
                len(data),
                self.id,
                self._tracer.next_event_id(),
                "" if data else " (end of stream)",
            )
        return data

    async def aclose(self) -> None:
        if self._close_socket():
            await self._closed()
        await trio.lowlevel.checkpoint()


@final
class HalfCloseableSocketStream(SocketStream, HalfCloseableStreamConnection):
    """A stream connection over a kernel socket that can half-close (TCP, unix)."""

    async def send_eof(self) -> None:
        with self._send_conflict:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            await trio.lowlevel.checkpoint()
            with STREAM_ERRORS:
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    if exc.errno != errno.ENOTCONN:
                        raise


#: Builds a connection from an accepted socket: (sock, remote, conn_id) → connection.
AcceptWrapper = Callable[[trio.socket.SocketType, SockAddr, int], Connection]


@final
class SocketListener(SocketHolder, Listener):
    """Accepts stream connections on a listening kernel socket.

    Errors that concern only the connection being accepted (``ECONNABORTED``
    …) are skipped; running out of file descriptors or memory is logged and
    retried after 100 ms rather than killing the listener.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        ctx: Context,
        wrap: AcceptWrapper,
        address: Address,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._sock = sock
        self._ctx = ctx
        self._wrap = wrap
        self._address = address
        self._on_close = on_close
        if ctx.access is not None:
            ctx.access.install(sock.family)

    @property
    def address(self) -> Address:
        return self._address

    async def accept(self) -> Connection:
        ctx = self._ctx
        gate = ctx.access
        while True:
            if self._is_closed:
                raise trio.ClosedResourceError("this listener was closed")
            try:
                sock, remote = await self._sock.accept()
            except OSError as exc:
                if exc.errno == errno.EBADF or self._is_closed:
                    raise trio.ClosedResourceError("this listener was closed") from None
                if exc.errno in _ACCEPT_SKIP:
                    continue
                if exc.errno in _ACCEPT_STARVED:
                    _log.error("accept on %s: %s; retrying in 100 ms", self.address, exc)
                    await trio.sleep(0.1)
                    continue
                raise
            if gate is not None and not gate.admits(remote):
                gate.refuse(sock)  # before any byte is read, any hook or TLS: an RST
                continue
            try:
                await socket_created(ctx, sock, SocketRole.ACCEPTED)
                return self._wrap(sock, remote, ctx.new_conn_id())
            except Exception:
                # A plugin hook or the wrapper failed for this one connection: drop it
                # (as a rejecting conduit_connection_made does); the listener goes on.
                sock.close()
                _log.exception("dropped a connection accepted on %s: setting it up raised", self.address)
                continue
            except BaseException:
                sock.close()
                raise

    async def aclose(self) -> None:
        self._close_socket()
        await trio.lowlevel.checkpoint()
