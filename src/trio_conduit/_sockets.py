"""The one socket path every kernel-socket transport shares (nsock's ``nsock_make_socket``).

* :func:`make_socket` — create, apply the core options, run the
  ``conduit_socket_created`` hooks.
* :func:`connect_inet` — resolve and connect with happy eyeballs (RFC 8305
  style, as trio's ``open_tcp_stream``), every attempt through ``make_socket``.
* :func:`listen_inet` — resolve and bind a listening socket.
* :class:`SocketStream` / :class:`HalfCloseableSocketStream`,
  :class:`SocketListener`, :class:`SocketChannel`, :class:`DatagramListener` —
  the wrappers; OS errors become trio's stream errors in :class:`_StreamErrors`
  and :class:`_DatagramErrors`, the one boundary each.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, final

import trio

from ._address import Address
from ._connection import (
    CommunicationInfo,
    Connection,
    DatagramConnection,
    HalfCloseableStreamConnection,
    Listener,
    PeerCredentials,
    SockAddr,
    StreamConnection,
)
from ._errors import (
    AddressError,
    ConnectError,
    MessageTooLarge,
    NameResolutionError,
    PermissionDenied,
    connect_error_from_oserror,
)
from ._trace import DEBUG_ALL

if TYPE_CHECKING:
    from ._trace import Tracer
    from ._transport import Context, SocketRole

__all__ = [
    "DatagramListener",
    "HalfCloseableSocketStream",
    "MessageSocketChannel",
    "SocketChannel",
    "SocketListener",
    "SocketStream",
    "connect_inet",
    "listen_inet",
    "make_socket",
]

#: A transport's own socket options, applied by the shared path to each socket it makes
#: (after the core options, before the ``conduit_socket_created`` hooks, before connect/bind).
SocketPreparer = Callable[[trio.socket.SocketType], None]

_log = logging.getLogger("trio_conduit")

#: What trio's ``send_all``/``send`` accept.
Buffer = bytes | bytearray | memoryview

#: Bigger than trio's 64 KiB: fewer system calls per byte on bulk transfers.
DEFAULT_RECEIVE_SIZE: Final = 256 * 1024
DEFAULT_DATAGRAM_SIZE: Final = 65536
HAPPY_EYEBALLS_DELAY: Final = 0.250
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


# ---------------------------------------------------------------------------
# socket making
# ---------------------------------------------------------------------------


def local_sockaddr(local: object, family: int) -> SockAddr:
    """``local=`` as a sockaddr for ``family``: ``"host:port"``, ``"host"``, a port, or a tuple."""
    if isinstance(local, tuple):
        return local
    if family == socket.AF_UNIX:
        if isinstance(local, (str, bytes)):
            return local
        raise AddressError(f"local address for a unix socket must be a path, not {local!r}")
    if isinstance(local, int) and not isinstance(local, bool):
        host, port = "", local
    elif isinstance(local, str):
        text = local
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise AddressError(f"local address {local!r}: '[' without ']'")
            host, rest = text[1:end], text[end + 1 :]
            port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
            if port_text is None:
                raise AddressError(f"local address {local!r}: unexpected {rest!r}")
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        else:
            host, port_text = text, ""
        if port_text and not (port_text.isascii() and port_text.isdigit() and int(port_text) < 65536):
            raise AddressError(f"local address {local!r}: bad port {port_text!r}")
        port = int(port_text) if port_text else 0
    else:
        raise AddressError(f"local address must be 'host:port', 'host', a port or a tuple, not {local!r}")
    if host:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise AddressError(f"local address {local!r}: {host!r} is not an IP address") from None
        if (ip.version == 4) != (family == socket.AF_INET):
            raise AddressError(f"local address {local!r} is not of the target's address family")
    else:
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    return (host, port)


def _local_family(local: object) -> int | None:
    """The address family a ``local=`` value pins, if it pins one."""
    text = local[0] if isinstance(local, tuple) and local else local
    if isinstance(text, str):
        text = text.strip("[")
        text = (
            text.split("]")[0] if "]" in text else (text.rsplit(":", 1)[0] if text.count(":") == 1 else text)
        )
        try:
            return socket.AF_INET if ipaddress.ip_address(text).version == 4 else socket.AF_INET6
        except ValueError:
            return None
    return None


async def make_socket(
    ctx: Context,
    family: int,
    type: int,
    proto: int = 0,
    *,
    role: SocketRole,
    prepare: SocketPreparer | None = None,
) -> trio.socket.SocketType:
    """Create a non-blocking socket and apply the core options, then the plugins' hooks.

    ``SO_REUSEADDR`` for listeners (not unix), ``SO_BINDTODEVICE`` for
    ``device``, ``IP_OPTIONS`` for ``ip_options`` (IPv4), ``SO_BROADCAST``
    only when ``broadcast`` is set, and a bind to ``local`` before a connect.
    Then the transport's ``prepare(sock)`` (its own options, e.g. SCTP's
    stream counts, which must be set before connect/listen). Any failure
    closes the socket and raises a typed error.
    """
    from ._transport import SocketRole

    opts = ctx.socket_options
    where = str(ctx.address)
    try:
        sock = trio.socket.socket(family, type, proto)
    except OSError as exc:
        raise connect_error_from_oserror(
            exc, action=f"create a {ctx.transport.name} socket for", address=where
        ) from exc
    try:
        if role is SocketRole.LISTEN and family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts.device is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, opts.device.encode())
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EACCES):
                    raise PermissionDenied(
                        exc.errno,
                        f"binding to device {opts.device!r} needs CAP_NET_RAW (run as root)",
                        address=where,
                    ) from exc
                raise ConnectError(
                    exc.errno or 0, f"cannot bind to device {opts.device!r}: {exc.strerror}", address=where
                ) from exc
        if opts.ip_options is not None:
            if family != socket.AF_INET:
                raise AddressError(f"{where}: ip_options are IPv4 options; this socket is not IPv4")
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opts.ip_options)
        if opts.broadcast:
            if type != socket.SOCK_DGRAM:
                raise AddressError(f"{where}: broadcast=True only makes sense for datagram sockets")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if opts.local is not None and role is SocketRole.CONNECT:
            try:
                await sock.bind(local_sockaddr(opts.local, family))
            except OSError as exc:
                raise connect_error_from_oserror(
                    exc, action=f"bind to local address {opts.local!r} for", address=where
                ) from exc
        if prepare is not None:
            try:
                prepare(sock)
            except OSError as exc:
                raise connect_error_from_oserror(
                    exc, action=f"set {ctx.transport.name} socket options for", address=where
                ) from exc
        if ctx.scope.has_impls("conduit_socket_created"):
            await ctx.scope.acall(
                "conduit_socket_created", sock=sock, transport=ctx.transport, address=ctx.address, role=role
            )
    except BaseException:
        sock.close()
        raise
    ctx.tracer.debug(
        "%s socket made (fd %d, %s) for %s", ctx.transport.name, sock.fileno(), role.value, where
    )
    return sock


async def _resolve(
    ctx: Context, host: str, port: int, socktype: int, *, passive: bool = False
) -> list[tuple[int, SockAddr]]:
    try:
        infos = await trio.socket.getaddrinfo(
            host or None, port, type=socktype, flags=socket.AI_PASSIVE if passive else 0
        )
    except socket.gaierror as exc:
        raise NameResolutionError(
            exc.errno or 0,
            f"cannot resolve {host!r} for {ctx.address}: {exc.strerror}",
            address=str(ctx.address),
        ) from exc
    seen: set[tuple[int, SockAddr]] = set()
    out: list[tuple[int, SockAddr]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        key = (int(family), sockaddr)
        if key[0] in (socket.AF_INET, socket.AF_INET6) and key not in seen:
            seen.add(key)
            out.append(key)
    return out


async def resolve_inet(ctx: Context, socktype: int) -> list[tuple[int, SockAddr]]:
    """``ctx.address``'s host and port as (family, sockaddr) pairs; :class:`NameResolutionError` if none."""
    host, port = ctx.address.host or "", ctx.address.port or 0
    targets = await _resolve(ctx, host, port, socktype)
    if not targets:
        raise NameResolutionError(
            socket.EAI_NONAME,
            f"{host!r} has no IPv4 or IPv6 address for {ctx.address}",
            address=str(ctx.address),
        )
    return targets


def _interleave(targets: list[tuple[int, SockAddr]]) -> list[tuple[int, SockAddr]]:
    """First address family first, then alternate families (RFC 8305 §4)."""
    if not targets:
        return targets
    first = targets[0][0]
    a = [t for t in targets if t[0] == first]
    b = [t for t in targets if t[0] != first]
    out: list[tuple[int, SockAddr]] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out


async def _connect_one(
    ctx: Context,
    family: int,
    socktype: int,
    proto: int,
    sockaddr: SockAddr,
    prepare: SocketPreparer | None = None,
) -> trio.socket.SocketType:
    from ._transport import SocketRole

    sock = await make_socket(ctx, family, socktype, proto, role=SocketRole.CONNECT, prepare=prepare)
    try:
        await sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        raise connect_error_from_oserror(exc, action="connect to", address=str(ctx.address)) from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_inet(
    ctx: Context, socktype: int, proto: int = 0, *, prepare: SocketPreparer | None = None
) -> trio.socket.SocketType:
    """Resolve ``ctx.address`` and connect, racing addresses 250 ms apart (happy eyeballs).

    The first socket to connect wins; the others are cancelled and closed.
    When all fail: one error of their common type if they agree, else a
    :class:`ConnectError` listing each, raised from an ``ExceptionGroup`` of them.
    """
    host, port = ctx.address.host, ctx.address.port
    assert host is not None
    assert port is not None
    targets = await _resolve(ctx, host, port, socktype)
    local = ctx.socket_options.local
    pinned = _local_family(local) if local is not None else None
    if pinned is not None:
        targets = [t for t in targets if t[0] == pinned]
        if not targets:
            version = "IPv4" if pinned == socket.AF_INET else "IPv6"
            raise AddressError(
                f"{ctx.address}: local address {local!r} is {version}, "
                f"but {host!r} has no {version} address (not the same address family)"
            )
    if not targets:
        raise NameResolutionError(
            socket.EAI_NONAME,
            f"{host!r} has no IPv4 or IPv6 address for {ctx.address}",
            address=str(ctx.address),
        )
    if len(targets) == 1:
        return await _connect_one(ctx, targets[0][0], socktype, proto, targets[0][1], prepare)

    targets = _interleave(targets)
    winner: trio.socket.SocketType | None = None
    errors: list[ConnectError] = []
    other_errors: list[Exception] = []

    async def attempt(family: int, sockaddr: SockAddr, failed: trio.Event, nursery: trio.Nursery) -> None:
        nonlocal winner
        try:
            sock = await _connect_one(ctx, family, socktype, proto, sockaddr, prepare)
        except ConnectError as exc:
            errors.append(exc)
            failed.set()
            return
        except Exception as exc:  # not a connect failure (a plugin's hook raised): stop the race
            other_errors.append(exc)
            nursery.cancel_scope.cancel()
            return
        if winner is None:
            winner = sock
            nursery.cancel_scope.cancel()
        else:
            sock.close()

    try:
        async with trio.open_nursery() as nursery:
            for family, sockaddr in targets:
                failed = trio.Event()
                nursery.start_soon(attempt, family, sockaddr, failed, nursery)
                with trio.move_on_after(HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    if other_errors:
        if winner is not None:
            winner.close()
        raise other_errors[0]
    if winner is not None:
        return winner
    kinds = {type(e) for e in errors}
    first = errors[0]
    if len(kinds) == 1:
        raise type(first)(first.errno or 0, first.strerror or "", address=first.address) from ExceptionGroup(
            "all connect attempts failed", errors
        )
    detail = "; ".join(str(e) for e in errors)
    raise ConnectError(
        first.errno or 0,
        f"cannot connect to {ctx.address}: every address failed: {detail}",
        address=str(ctx.address),
    ) from ExceptionGroup("all connect attempts failed", errors)


async def listen_inet(
    ctx: Context, socktype: int, proto: int = 0, *, prepare: SocketPreparer | None = None
) -> trio.socket.SocketType:
    """Make, bind (and for streams, ``listen()`` on) a socket for ``ctx.address``.

    An empty host listens on every interface: IPv6 ``::`` accepting IPv4 too
    where the kernel has IPv6, else ``0.0.0.0``.
    """
    from ._transport import SocketRole

    host, port = ctx.address.host or "", ctx.address.port or 0
    where = str(ctx.address)
    if host:
        targets = await _resolve(ctx, host, port, socktype, passive=True)
        if not targets:
            raise NameResolutionError(socket.EAI_NONAME, f"{host!r} has no usable address", address=where)
        family, sockaddr = targets[0]
    elif socket.has_ipv6 and _ipv6_works():
        family, sockaddr = socket.AF_INET6, ("::", port)
    else:
        family, sockaddr = socket.AF_INET, ("0.0.0.0", port)
    sock = await make_socket(ctx, family, socktype, proto, role=SocketRole.LISTEN, prepare=prepare)
    try:
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            await sock.bind(sockaddr)
            if socktype in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
                sock.listen(_backlog(ctx))
        except OSError as exc:
            raise connect_error_from_oserror(exc, action="listen on", address=where) from exc
    except BaseException:
        sock.close()
        raise
    return sock


_IPV6: bool | None = None


def _ipv6_works() -> bool:
    global _IPV6
    if _IPV6 is None:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.bind(("::1", 0))
            _IPV6 = True
        except OSError:
            _IPV6 = False
    return _IPV6


def _backlog(ctx: Context) -> int:
    backlog = ctx.socket_options.backlog
    return socket.SOMAXCONN if backlog is None else max(0, backlog)


# ---------------------------------------------------------------------------
# the error boundaries
# ---------------------------------------------------------------------------


class _StreamErrors:
    """OS errors on an established stream → trio's stream errors (the one place).

    A class, not ``@contextmanager``: it wraps every send and receive, and a
    generator-based manager costs several times as much per use.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError):
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("this connection was closed") from None
            raise trio.BrokenResourceError(f"connection broken: {exc}") from exc


_stream_errors: Final = _StreamErrors()


class _DatagramErrors:
    """OS errors on a datagram socket → typed errors; the channel stays usable.

    ``ECONNREFUSED`` (an ICMP port unreachable for an earlier datagram) is
    reported as :class:`ConnectionRefused` on the next send/receive, as Winsock
    and nsock do; ``EACCES`` is a broadcast without ``broadcast=True``.
    """

    __slots__ = ("peer",)

    def __init__(self, peer: object) -> None:
        self.peer = peer

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if not isinstance(exc, OSError):
            return
        peer = self.peer
        err = exc.errno
        if err == errno.EBADF:
            raise trio.ClosedResourceError("this channel was closed") from None
        if err == errno.EMSGSIZE:
            raise MessageTooLarge(f"datagram too large for {peer}: {exc.strerror}") from exc
        if err == errno.EACCES:
            raise PermissionDenied(
                err,
                f"sending to {peer} was refused (EACCES): a broadcast address needs broadcast=True",
                address=str(peer),
            ) from exc
        if err in (
            errno.ECONNREFUSED,
            errno.EHOSTUNREACH,
            errno.ENETUNREACH,
            errno.EHOSTDOWN,
            errno.ENETDOWN,
            errno.ETIMEDOUT,
        ):
            raise connect_error_from_oserror(exc, action="reach", address=str(peer)) from exc
        raise trio.BrokenResourceError(f"datagram socket broken: {exc}") from exc


# ---------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------


def _sockname(sock: trio.socket.SocketType) -> SockAddr | None:
    try:
        return sock.getsockname()  # type: ignore[no-any-return]
    except OSError:
        return None


#: A socket's (family, type, protocol), as ``socket`` reports them.
SocketKind = tuple[socket.AddressFamily, socket.SocketKind, int]


def socket_kind(sock: trio.socket.SocketType) -> SocketKind:
    """``(family, type, proto)``: what a listener's accepted sockets share (``kind=``)."""
    return sock.family, sock.type, sock.proto


def socket_info(
    sock: trio.socket.SocketType,
    transport: str,
    remote: SockAddr | None = None,
    peer_credentials: PeerCredentials | None = None,
    kind: SocketKind | None = None,
    local: SockAddr | None = None,
) -> CommunicationInfo:
    """The facts of a connected kernel socket; ``remote`` defaults to ``getpeername()``,
    ``local`` to ``getsockname()``.

    ``kind`` spares asking the socket its family, type and protocol (each an enum
    conversion in Python's ``socket``), when they are known: an accepted socket's
    are its listener's. So does ``local`` a system call, for a socket accepted on a
    listener bound to one address (not a wildcard): the listener's.
    """
    if remote is None:
        try:
            remote = sock.getpeername()
        except OSError:
            remote = None
    family, socktype, proto = kind if kind is not None else socket_kind(sock)
    return CommunicationInfo(
        transport=transport,
        family=family,
        socktype=socktype,
        protocol=proto,
        local=local if local is not None else _sockname(sock),
        remote=remote,
        peer_credentials=peer_credentials,
    )


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials | None:
    """``SO_PEERCRED`` of a unix socket (pid, uid, gid), if the kernel gives it."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return None
    pid, uid, gid = (int.from_bytes(raw[i : i + 4], "little", signed=True) for i in (0, 4, 8))
    return PeerCredentials(pid, uid, gid)


class SocketStream(StreamConnection):
    """A stream connection over a kernel socket (no half-close: e.g. SCTP).

    ``socket`` is the trio socket, for options this library does not wrap.
    ``kind``: the socket's ``(family, type, proto)`` when the caller knows them
    (a listener's :func:`socket_kind`, shared by what it accepts), which
    spares working them out again for each connection; ``local`` likewise its
    local address (see :func:`socket_info`).
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
        self._send_busy = False
        self._recv_busy = False
        self._is_closed = False
        self._tracer = tracer
        self._receive_size = receive_size
        self._send_size = send_size
        self._info = socket_info(sock, transport, remote, peer_credentials, kind, local)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def info(self) -> CommunicationInfo:
        return self._info

    async def send_all(self, data: Buffer) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._send_busy = True
        try:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            if self._sock.did_shutdown_SHUT_WR:
                raise trio.ClosedResourceError("cannot send data after send_eof()")
            sock = self._sock
            with _stream_errors, memoryview(data) as view:
                total = len(view)
                if not total:
                    await trio.lowlevel.checkpoint()
                else:
                    step = self._send_size or total
                    sent = await sock.send(view) if step >= total else 0
                    while sent < total:
                        with view[sent : sent + step] as rest:
                            sent += await sock.send(rest)
        finally:
            self._send_busy = False
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "write %d bytes to conn #%d event #%d",
                total,
                self.id,
                self._tracer.next_event_id(),
            )

    async def wait_send_all_might_not_block(self) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._send_busy = True
        try:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            with _stream_errors:
                await self._sock.wait_writable()
        finally:
            self._send_busy = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = self._receive_size
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._recv_busy:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        self._recv_busy = True
        try:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            with _stream_errors:
                data: bytes = await self._sock.recv(max_bytes)
        finally:
            self._recv_busy = False
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
        if not self._is_closed:
            self._is_closed = True
            self._sock.close()
            await self._closed()
        await trio.lowlevel.checkpoint()


@final
class HalfCloseableSocketStream(SocketStream, HalfCloseableStreamConnection):
    """A stream connection over a kernel socket that can half-close (TCP, unix)."""

    async def send_eof(self) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._send_busy = True
        try:
            if self._is_closed:
                raise trio.ClosedResourceError("this connection was closed")
            await trio.lowlevel.checkpoint()
            with _stream_errors:
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    if exc.errno != errno.ENOTCONN:
                        raise
        finally:
            self._send_busy = False


#: Builds a connection from an accepted socket: (sock, remote, conn_id) → connection.
AcceptWrapper = Callable[[trio.socket.SocketType, SockAddr, int], Connection]


@final
class SocketListener(Listener):
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
        self._is_closed = False

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def address(self) -> Address:
        return self._address

    async def accept(self) -> Connection:
        from ._transport import SocketRole

        ctx = self._ctx
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
            try:
                if ctx.scope.has_impls("conduit_socket_created"):
                    await ctx.scope.acall(
                        "conduit_socket_created",
                        sock=sock,
                        transport=ctx.transport,
                        address=ctx.address,
                        role=SocketRole.ACCEPTED,
                    )
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
        if not self._is_closed:
            self._is_closed = True
            self._sock.close()
            if self._on_close is not None:
                self._on_close()
        await trio.lowlevel.checkpoint()


# ---------------------------------------------------------------------------
# datagrams
# ---------------------------------------------------------------------------


class SocketChannel(DatagramConnection):
    """A datagram channel over a kernel socket (WSAConnect / nsock semantics).

    Connected (the usual case): ``send``/``receive`` talk to the default peer,
    the kernel drops datagrams from anyone else, and an ICMP port unreachable
    for an earlier datagram surfaces as :class:`ConnectionRefused` on the next
    call (the channel stays usable). :meth:`set_peer` changes the peer.
    Unconnected (``connected=False``): ``send`` goes to the default peer,
    ``receive`` takes datagrams from anyone, and ``send_to``/``receive_from``
    name the peer.
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
        max_size: int = DEFAULT_DATAGRAM_SIZE,
        on_close: Callable[[], None] | None = None,
        connected: bool = True,
    ) -> None:
        super().__init__(conn_id, address)
        self._sock = sock
        self._tracer = tracer
        self._transport = transport
        self._remote = remote
        self._connected = connected
        self._max_size = max_size
        self._on_close = on_close
        self._is_closed = False

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def info(self) -> CommunicationInfo:
        return CommunicationInfo(
            transport=self._transport,
            family=self._sock.family,
            socktype=self._sock.type,
            protocol=self._sock.proto,
            local=_sockname(self._sock),
            remote=self._remote,
        )

    @property
    def peer(self) -> SockAddr | None:
        """The current default peer (``None`` when unconnected)."""
        return self._remote

    def _check_open(self) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")

    def _trace(self, what: str, n: int, peer: object) -> None:
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "%s datagram of %d bytes %s %s on conn #%d event #%d",
                what,
                n,
                "to" if what == "sent" else "from",
                peer,
                self.id,
                self._tracer.next_event_id(),
            )

    async def set_peer(self, peer: SockAddr) -> None:
        """Connect to another peer (a sockaddr); datagrams from the old one are no longer accepted."""
        self._check_open()
        with _DatagramErrors(peer):
            await self._sock.connect(peer)
        self._remote = peer
        self._connected = True

    async def send(self, value: Buffer) -> None:
        self._check_open()
        if self._remote is None:
            raise trio.BrokenResourceError("this channel has no default peer: use send_to()")
        with _DatagramErrors(self._remote):
            if self._connected:
                n = await self._sock.send(value)
            else:
                n = await self._sock.sendto(value, self._remote)
        self._trace("sent", n, self._remote)

    async def receive(self) -> bytes:
        self._check_open()
        with _DatagramErrors(self._remote):
            data: bytes
            if self._connected:
                data = await self._sock.recv(self._max_size)
                peer = self._remote
            else:
                data, peer = await self._sock.recvfrom(self._max_size)
        self._trace("received", len(data), peer)
        return data

    async def send_to(self, value: Buffer, peer: SockAddr) -> None:
        """Send one datagram to ``peer`` (a sockaddr)."""
        self._check_open()
        with _DatagramErrors(peer):
            n = await self._sock.sendto(value, peer)
        self._trace("sent", n, peer)

    async def receive_from(self) -> tuple[bytes, SockAddr]:
        """Receive one datagram and the address it came from."""
        self._check_open()
        with _DatagramErrors(self._remote):
            data, peer = await self._sock.recvfrom(self._max_size)
        self._trace("received", len(data), peer)
        return data, peer

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._sock.close()
            if self._on_close is not None:
                self._on_close()
            await self._closed()
        await trio.lowlevel.checkpoint()


#: Ancillary data as ``socket.sendmsg``/``recvmsg`` give it: (level, type, data).
AncData = list[tuple[int, int, bytes]]


class MessageSocketChannel(DatagramConnection):
    """Whole messages over a connected ``SOCK_SEQPACKET`` socket (vsock, SCTP, unix).

    ``send`` sends one message, all of it (too big for the transport:
    :class:`MessageTooLarge`, the channel stays usable). ``receive`` returns
    one whole message; a message longer than ``max_size`` was cut by the
    kernel (``MSG_TRUNC``) and raises :class:`MessageTooLarge`. Once the peer
    has closed, ``receive`` raises ``trio.EndOfChannel``. A broken
    connection is ``trio.BrokenResourceError``. Subclasses that need
    ancillary data (SCTP's stream ids) use :meth:`_sendmsg` and :meth:`_recvmsg`.
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
        max_size: int = DEFAULT_DATAGRAM_SIZE,
    ) -> None:
        super().__init__(conn_id, address)
        self._sock = sock
        self._tracer = tracer
        self._max_size = max_size
        self._is_closed = False
        self._info = socket_info(sock, transport, remote)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def info(self) -> CommunicationInfo:
        return self._info

    @property
    def max_size(self) -> int:
        """The largest message :meth:`receive` returns whole."""
        return self._max_size

    def _trace(self, what: str, n: int) -> None:
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "%s message of %d bytes on conn #%d event #%d",
                what,
                n,
                self.id,
                self._tracer.next_event_id(),
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")
        try:
            yield
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise MessageTooLarge(f"message too large for {self.info.remote!r}: {exc.strerror}") from exc
            if exc.errno == errno.EBADF or self._is_closed:
                raise trio.ClosedResourceError("this channel was closed") from None
            raise trio.BrokenResourceError(f"connection broken: {exc}") from exc

    async def _sendmsg(self, value: Buffer, ancdata: AncData | None = None) -> None:
        """Send ``value`` as one message, with ``ancdata`` (a list of (level, type, bytes))."""
        with self._errors():
            n = await self._sock.sendmsg([value], ancdata or [])
        self._trace("sent", n)

    async def _recvmsg(self, bufsize: int, ancbufsize: int = 0) -> tuple[bytes, AncData, int]:
        """One ``recvmsg``: (data, ancillary data, msg_flags). Errors translated, nothing interpreted."""
        with self._errors():
            data, ancdata, flags, _addr = await self._sock.recvmsg(bufsize, ancbufsize)
        self._trace("received", len(data))
        return data, ancdata, flags

    async def send(self, value: Buffer) -> None:
        await self._sendmsg(value)

    async def receive(self) -> bytes:
        data, _, flags = await self._recvmsg(self._max_size)
        if flags & socket.MSG_TRUNC:
            raise MessageTooLarge(f"a message longer than max_size={self._max_size} was cut short")
        if not data:
            raise trio.EndOfChannel
        return data

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._sock.close()
            await self._closed()
        await trio.lowlevel.checkpoint()


@final
class PeerChannel(DatagramConnection):
    """One peer of a datagram listener: its datagrams in, replies out through the shared socket."""

    def __init__(self, listener: DatagramListener, peer: SockAddr, conn_id: int, queue: int) -> None:
        super().__init__(conn_id, listener.address)
        self._listener = listener
        self._peer = peer
        self._send_q, self._recv_q = trio.open_memory_channel[bytes](queue)
        self._is_closed = False
        self.dropped = 0

    @property
    def info(self) -> CommunicationInfo:
        sock = self._listener.socket
        return CommunicationInfo(
            transport=self._listener.transport,
            family=sock.family,
            socktype=sock.type,
            protocol=sock.proto,
            local=_sockname(sock),
            remote=self._peer,
        )

    @property
    def peer(self) -> SockAddr:
        return self._peer

    def _deliver(self, data: bytes) -> None:
        try:
            self._send_q.send_nowait(data)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1

    async def send(self, value: Buffer) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")
        if not self._peer:
            raise trio.BrokenResourceError("this peer has no address (an unbound unix socket): cannot reply")
        with _DatagramErrors(self._peer):
            await self._listener.socket.sendto(value, self._peer)

    async def receive(self) -> bytes:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")
        try:
            return await self._recv_q.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("the listener was closed") from None

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._recv_q.close()
            self._send_q.close()
            self._listener._forget(self)
            await self._closed()
        await trio.lowlevel.checkpoint()


@final
class DatagramListener(Listener):
    """Server side of a datagram transport: each new peer address becomes a channel.

    A reader task (in the pool's nursery, ended with the listener) receives on
    the one bound socket and routes each datagram to its peer's channel; a new
    peer is queued for :meth:`accept` (``backlog`` of them at most; beyond,
    its datagrams are dropped until there is room). A peer's channel holds up
    to ``queue`` datagrams; more are dropped and counted. Closing a peer's
    channel forgets it: its next datagram makes a new one.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        ctx: Context,
        address: Address,
        *,
        nursery: trio.Nursery,
        queue: int = 256,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._sock = sock
        self._ctx = ctx
        self._address = address
        self.transport = ctx.address.scheme
        self._queue = queue
        self._max_size = max_size
        self._on_close = on_close
        self._peers: dict[SockAddr, PeerChannel] = {}
        backlog = ctx.socket_options.backlog
        self._new_send, self._new_recv = trio.open_memory_channel[PeerChannel](
            128 if backlog is None else max(1, backlog)
        )
        self._is_closed = False
        self._cancel = trio.CancelScope()
        self.dropped = 0
        nursery.start_soon(self._reader)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def address(self) -> Address:
        return self._address

    def _forget(self, peer: PeerChannel) -> None:
        if self._peers.get(peer.peer) is peer:
            del self._peers[peer.peer]

    async def _reader(self) -> None:
        with self._cancel:
            while True:
                try:
                    data, addr = await self._sock.recvfrom(self._max_size)
                except OSError as exc:
                    if exc.errno == errno.EBADF or self._is_closed:
                        return
                    # ICMP errors for earlier replies, truncation: not fatal to the listener.
                    continue
                except trio.ClosedResourceError:
                    return
                key = addr if addr else ""
                peer = self._peers.get(key)
                if peer is None:
                    peer = PeerChannel(self, key, self._ctx.new_conn_id(), self._queue)
                    try:
                        self._new_send.send_nowait(peer)
                    except trio.WouldBlock:
                        self.dropped += 1
                        continue
                    self._peers[key] = peer
                peer._deliver(data)

    async def accept(self) -> Connection:
        try:
            return await self._new_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("this listener was closed") from None

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._cancel.cancel()
            self._sock.close()
            self._new_send.close()
            self._new_recv.close()
            for peer in list(self._peers.values()):
                peer._send_q.close()
            if self._on_close is not None:
                self._on_close()
        await trio.lowlevel.checkpoint()
