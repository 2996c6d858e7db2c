"""The one socket path every kernel-socket transport shares (nsock's ``nsock_make_socket``).

* :func:`make_socket` — create, apply the core options, run the
  ``conduit_socket_created`` hooks.
* :func:`connect_socket` / :func:`bind_socket` — connect, or bind (and
  listen), closing the socket on failure and raising a typed error: every
  transport's connect and bind goes through these two.
* :func:`connect_inet` — resolve and connect with happy eyeballs (RFC 8305
  style, as trio's ``open_tcp_stream``), every attempt through ``make_socket``.
* :func:`listen_inet` — resolve and bind a listening socket.
* :func:`socket_info` and friends — a socket's facts for ``conn.info``.

The wrappers that make connections of sockets are one layer up
(``_socket_stream.py``, ``_socket_channel.py``). ``ctx`` here is a
:class:`~trio_conduit.transport.Context`, the layer above; this module uses it
only through its attributes.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import trio

from ._connection import CommunicationInfo, SockAddr
from ._errors import (
    AddressError,
    ConnectError,
    NameResolutionError,
    PermissionDenied,
    connect_error_from_oserror,
)
from ._record import Record
from ._record import set_field as _set

if TYPE_CHECKING:
    from ._peer import PeerCredentials
    from ._transport import Context

__all__ = [
    "SocketOptions",
    "SocketRole",
    "bind_socket",
    "connect_inet",
    "connect_socket",
    "listen_inet",
    "make_socket",
    "resolve_inet",
]

#: A transport's own socket options, applied by the shared path to each socket it makes
#: (after the core options, before the ``conduit_socket_created`` hooks, before connect/bind).
SocketPreparer = Callable[[trio.socket.SocketType], None]

#: A transport's own reading of a failed connect or bind: a typed error, or ``None`` for the
#: core's (:func:`~trio_conduit.transport.connect_error_from_oserror`).
ErrorExplainer = Callable[[OSError], ConnectError | None]

HAPPY_EYEBALLS_DELAY: Final = 0.250

#: A socket's (family, type, protocol), as ``socket`` reports them.
SocketKind = tuple[socket.AddressFamily, socket.SocketKind, int]


class SocketRole(enum.Enum):
    """What a socket made by the shared path is for."""

    CONNECT = "connect"
    LISTEN = "listen"
    ACCEPTED = "accepted"


class SocketOptions(Record):
    """The options every kernel-socket transport honours (nsock's ``nsock_make_socket``).

    ``local``: bind here before connecting (``"host:port"``, ``"host"``, a
    sockaddr tuple, or a path for unix sockets). ``device``: ``SO_BINDTODEVICE``.
    ``ip_options``: raw IPv4 options (``IP_OPTIONS``). ``broadcast``:
    ``SO_BROADCAST`` (datagram sockets only; sending to a broadcast address
    without it is ``EACCES``). ``backlog``: for listeners. ``reuse_port``:
    ``SO_REUSEPORT`` on a listening socket, so that several processes (each
    setting it, same user) share one port and the kernel spreads new
    connections across them.
    """

    __slots__ = ("local", "device", "ip_options", "broadcast", "backlog", "reuse_port")
    local: object | None
    device: str | None
    ip_options: bytes | None
    broadcast: bool
    backlog: int | None
    reuse_port: bool

    def __init__(
        self,
        local: object | None = None,
        device: str | None = None,
        ip_options: bytes | None = None,
        broadcast: bool = False,
        backlog: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        _set(self, "local", local)
        _set(self, "device", device)
        _set(self, "ip_options", ip_options)
        _set(self, "broadcast", broadcast)
        _set(self, "backlog", backlog)
        _set(self, "reuse_port", reuse_port)


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

    ``SO_REUSEADDR`` for listeners (not unix), ``SO_REUSEPORT`` for listeners
    asked for it (``reuse_port``), ``SO_BINDTODEVICE`` for
    ``device``, ``IP_OPTIONS`` for ``ip_options`` (IPv4), ``SO_BROADCAST``
    only when ``broadcast`` is set, and a bind to ``local`` before a connect.
    Then the transport's ``prepare(sock)`` (its own options, e.g. SCTP's
    stream counts, which must be set before connect/listen). Any failure
    closes the socket and raises a typed error.
    """
    opts = ctx.socket_options
    try:
        sock = trio.socket.socket(family, type, proto)
    except OSError as exc:
        raise connect_error_from_oserror(
            exc, action=f"create a {ctx.transport.name} socket for", address=str(ctx.address)
        ) from exc
    where = ctx.address  # formatted only when a message needs it
    try:
        if role is SocketRole.LISTEN and family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts.reuse_port and role is SocketRole.LISTEN:
            if family == socket.AF_UNIX:
                raise AddressError(f"{where}: reuse_port is for IP sockets, not unix sockets")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if opts.device is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, opts.device.encode())
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EACCES):
                    raise PermissionDenied(
                        exc.errno,
                        f"binding to device {opts.device!r} needs CAP_NET_RAW (run as root)",
                        address=str(where),
                    ) from exc
                raise ConnectError(
                    exc.errno or 0,
                    f"cannot bind to device {opts.device!r}: {exc.strerror}",
                    address=str(where),
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
                    exc, action=f"bind to local address {opts.local!r} for", address=str(where)
                ) from exc
        if prepare is not None:
            try:
                prepare(sock)
            except OSError as exc:
                raise connect_error_from_oserror(
                    exc, action=f"set {ctx.transport.name} socket options for", address=str(where)
                ) from exc
        if "conduit_socket_created" in ctx.scope.implemented:
            await socket_created(ctx, sock, role)
    except BaseException:
        sock.close()
        raise
    if ctx.tracer.log.isEnabledFor(logging.DEBUG):
        ctx.tracer.debug(
            "%s socket made (fd %d, %s) for %s", ctx.transport.name, sock.fileno(), role.value, where
        )
    return sock


async def socket_created(ctx: Context, sock: trio.socket.SocketType, role: SocketRole) -> None:
    """Run the ``conduit_socket_created`` hooks for ``sock`` (nothing to await when none is
    implemented). The caller closes ``sock`` if this raises."""
    if "conduit_socket_created" in ctx.scope.implemented:
        await ctx.scope.acall(
            "conduit_socket_created", sock=sock, transport=ctx.transport, address=ctx.address, role=role
        )


def _literal(host: str, port: int) -> tuple[socket.AddressFamily, SockAddr] | None:
    """``host`` as ``getaddrinfo`` gives a plain IPv4 or IPv6 literal (a sockaddr in canonical
    form), or ``None`` when it is something else (a name, a scope id, ``127.1``): no resolver
    call, no idna encoding, no enum conversions for the address connected to most often."""
    if not host.isascii():
        return None
    try:
        if ":" not in host:
            socket.inet_pton(socket.AF_INET, host)  # only the canonical a.b.c.d passes
            return socket.AF_INET, (host, port)
        text = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
    except (OSError, ValueError):  # (ValueError: a NUL in it)
        return None
    return socket.AF_INET6, (text, port, 0, 0)


def _numeric_getaddrinfo(host: str, port: int, socktype: int, flags: int) -> list[tuple[Any, ...]] | None:
    """``getaddrinfo`` of an address literal (or no host); ``None`` when ``host`` is a name.

    A literal needs no resolver: the C call answers at once, without trio's
    thread (or its checkpoint: the connect that follows is the checkpoint). The
    host goes in as bytes: given a str, the C call would load and run the
    ``idna`` codec (start-up time), and a literal is ASCII anyway; a name that
    is not is trio's resolver's to encode.
    """
    if host and not host.isascii():
        return None
    try:
        return socket.getaddrinfo(
            host.encode() if host else None, port, type=socktype, flags=flags | socket.AI_NUMERICHOST
        )
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME or not host:
            raise
        return None


async def _resolve(
    ctx: Context, host: str, port: int, socktype: int, *, passive: bool = False
) -> list[tuple[socket.AddressFamily, SockAddr]]:
    if host:
        literal = _literal(host, port)
        if literal is not None:
            return [literal]
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = _numeric_getaddrinfo(host, port, socktype, flags)  # other numeric forms (127.1)
        if infos is None:
            infos = await trio.socket.getaddrinfo(host, port, type=socktype, flags=flags)
    except socket.gaierror as exc:
        raise NameResolutionError(
            exc.errno or 0,
            f"cannot resolve {host!r} for {ctx.address}: {exc.strerror}",
            address=str(ctx.address),
        ) from exc
    seen: set[tuple[socket.AddressFamily, SockAddr]] = set()
    out: list[tuple[socket.AddressFamily, SockAddr]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        key = (family, sockaddr)
        if family in (socket.AF_INET, socket.AF_INET6) and key not in seen:
            seen.add(key)
            out.append(key)
    return out


async def resolve_inet(ctx: Context, socktype: int) -> list[tuple[socket.AddressFamily, SockAddr]]:
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


def _interleave(
    targets: list[tuple[socket.AddressFamily, SockAddr]],
) -> list[tuple[socket.AddressFamily, SockAddr]]:
    """First address family first, then alternate families (RFC 8305 §4)."""
    if not targets:
        return targets
    first = targets[0][0]
    a = [t for t in targets if t[0] == first]
    b = [t for t in targets if t[0] != first]
    out: list[tuple[socket.AddressFamily, SockAddr]] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out


class ConnectedSocket(NamedTuple):
    """What :func:`connect_inet` knows of the socket it returned (``ctx.connected``): its
    ``(family, type, proto)`` and the address it connected to. The connection made of that
    socket takes them for ``conn.info`` rather than asking the kernel (``getpeername()``)."""

    sock: trio.socket.SocketType
    kind: SocketKind
    remote: SockAddr


async def _connect_one(
    ctx: Context,
    family: socket.AddressFamily,
    socktype: int,
    proto: int,
    sockaddr: SockAddr,
    prepare: SocketPreparer | None = None,
) -> ConnectedSocket:
    sock = await make_socket(ctx, family, socktype, proto, role=SocketRole.CONNECT, prepare=prepare)
    await connect_socket(ctx, sock, sockaddr)
    kind = socktype if isinstance(socktype, socket.SocketKind) else socket.SocketKind(socktype)
    return ConnectedSocket(sock, (family, kind, proto), sockaddr)


async def connect_inet(
    ctx: Context, socktype: int, proto: int = 0, *, prepare: SocketPreparer | None = None
) -> trio.socket.SocketType:
    """Resolve ``ctx.address`` and connect, racing addresses 250 ms apart (happy eyeballs).

    The first socket to connect wins; the others are cancelled and closed.
    ``ctx.connected`` then says what the winner is connected to (see :class:`ConnectedSocket`).
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
        ctx.connected = await _connect_one(ctx, targets[0][0], socktype, proto, targets[0][1], prepare)
        return ctx.connected.sock

    targets = _interleave(targets)
    winner: ConnectedSocket | None = None
    errors: list[ConnectError] = []
    other_errors: list[Exception] = []

    async def attempt(
        family: socket.AddressFamily, sockaddr: SockAddr, failed: trio.Event, nursery: trio.Nursery
    ) -> None:
        nonlocal winner
        try:
            connected = await _connect_one(ctx, family, socktype, proto, sockaddr, prepare)
        except ConnectError as exc:
            errors.append(exc)
            failed.set()
            return
        except Exception as exc:  # not a connect failure (a plugin's hook raised): stop the race
            other_errors.append(exc)
            nursery.cancel_scope.cancel()
            return
        if winner is None:
            winner = connected
            nursery.cancel_scope.cancel()
        else:
            connected.sock.close()

    try:
        async with trio.open_nursery() as nursery:
            for family, sockaddr in targets:
                failed = trio.Event()
                nursery.start_soon(attempt, family, sockaddr, failed, nursery)
                with trio.move_on_after(HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
    except BaseException:
        if winner is not None:
            winner.sock.close()
        raise
    if other_errors:
        if winner is not None:
            winner.sock.close()
        raise other_errors[0]
    if winner is not None:
        ctx.connected = winner
        return winner.sock
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
    if family == socket.AF_INET6 and not host:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except BaseException:
            sock.close()
            raise
    await bind_socket(ctx, sock, sockaddr, listen=socktype in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET))
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


async def connect_socket(
    ctx: Context, sock: trio.socket.SocketType, sockaddr: SockAddr, *, explain: ErrorExplainer | None = None
) -> None:
    """Connect ``sock`` to ``sockaddr``; on failure (or cancellation) close it and raise.

    An ``OSError`` becomes a typed :class:`ConnectError` naming ``ctx.address``:
    ``explain(exc)``'s, when the transport has its own reading of that errno
    (vsock's ``ECONNRESET`` is a refusal), else the core's.
    """
    try:
        await sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        raise _typed(ctx, exc, "connect to", explain) from exc
    except BaseException:
        sock.close()
        raise


async def bind_socket(
    ctx: Context,
    sock: trio.socket.SocketType,
    sockaddr: SockAddr,
    *,
    listen: bool = False,
    action: str = "listen on",
    explain: ErrorExplainer | None = None,
) -> None:
    """Bind ``sock`` to ``sockaddr`` and, with ``listen``, ``listen()`` with the ``backlog``
    socket option (default ``SOMAXCONN``); on failure close it and raise a typed error
    saying it could not ``action`` the address (``explain`` as in :func:`connect_socket`)."""
    try:
        await sock.bind(sockaddr)
        if listen:
            backlog = ctx.socket_options.backlog
            sock.listen(socket.SOMAXCONN if backlog is None else max(0, backlog))
    except OSError as exc:
        sock.close()
        raise _typed(ctx, exc, action, explain) from exc
    except BaseException:
        sock.close()
        raise


def _typed(ctx: Context, exc: OSError, action: str, explain: ErrorExplainer | None) -> ConnectError:
    typed = explain(exc) if explain is not None else None
    return typed or connect_error_from_oserror(exc, action=action, address=str(ctx.address))


class SocketHolder:
    """Owns one kernel socket: a connection or listener made of it. ``socket`` is the trio
    socket, for options this library does not wrap; :meth:`_close_socket` closes it once."""

    _sock: trio.socket.SocketType
    _is_closed: bool = False
    #: Called once when the socket is closed (a unix listener removes its file).
    _on_close: Callable[[], None] | None = None

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    def _close_socket(self) -> bool:
        """Close the socket (and run ``_on_close``) the first time; ``False`` if already closed."""
        if self._is_closed:
            return False
        self._is_closed = True
        self._sock.close()
        if self._on_close is not None:
            self._on_close()
        return True


# ---------------------------------------------------------------------------
# a socket's facts
# ---------------------------------------------------------------------------


def sockname(sock: trio.socket.SocketType) -> SockAddr | None:
    """``getsockname()``, or ``None`` when the socket has none (closed)."""
    try:
        return sock.getsockname()  # type: ignore[no-any-return]
    except OSError:
        return None


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
        local=local if local is not None else sockname(sock),
        remote=remote,
        peer_credentials=peer_credentials,
    )


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials | None:
    """``SO_PEERCRED`` of a unix socket (pid, uid, gid), if the kernel gives it."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return None
    from ._peer import PeerCredentials  # unix sockets' alone: made on first use

    pid, uid, gid = (int.from_bytes(raw[i : i + 4], "little", signed=True) for i in (0, 4, 8))
    return PeerCredentials(pid, uid, gid)
