"""``vsock://cid:port`` and ``vsock+dgram://cid:port`` — AF_VSOCK, sockets between a VM and its host.

The CID is a number or one of the names ``any`` (``VMADDR_CID_ANY``, to
listen on every CID), ``hypervisor`` (0), ``local`` (1, the loopback) and
``host`` (2). Ports are 32-bit; listening on port 0 asks the kernel for one
(``VMADDR_PORT_ANY``). ``vsock://`` gives half-closeable streams, or with
``?mode=message`` (``SOCK_SEQPACKET``) channels of whole messages.
``vsock+dgram://`` needs a kernel datagram transport, which only VMCI
provides: elsewhere (virtio, loopback) the kernel says ``ENODEV`` and so do we.

A kernel without the loopback transport (``vsock_loopback``) cannot reach
CID 1: connecting there would hand the request to the hypervisor's
transport, so we refuse with :class:`~trio_conduit.TransportUnavailable`
instead (``EADDRNOTAVAIL``, as ``bind`` says).
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from collections.abc import Sequence
from functools import partial
from typing import Final

import trio

from trio_conduit import (
    Address,
    AddressError,
    ConnectError,
    Connection,
    ConnectionRefused,
    Kind,
    TransportUnavailable,
)
from trio_conduit.transport import (
    DEFAULT_DATAGRAM_SIZE,
    Availability,
    Capabilities,
    Context,
    Listener,
    Option,
    SockAddr,
    SocketRole,
    Transport,
    URLParts,
    hookimpl,
    probe_socket,
)

__all__ = ["VsockDatagramTransport", "VsockTransport", "parse_vsock_address"]

CID_ANY: Final = socket.VMADDR_CID_ANY
CID_LOCAL: Final = 1
CID_HOST: Final = socket.VMADDR_CID_HOST
PORT_ANY: Final = socket.VMADDR_PORT_ANY
CID_NAMES: Final = {"any": CID_ANY, "hypervisor": 0, "local": CID_LOCAL, "host": CID_HOST}
_U32_MAX: Final = 0xFFFFFFFF

NO_LOOPBACK: Final = (
    "the kernel has no vsock loopback transport (the vsock_loopback module): CID 1 (local) cannot be reached"
)
NO_DATAGRAMS: Final = (
    "the kernel has no vsock datagram transport (only VMCI provides one; virtio and loopback do not)"
)


def _number(parts: URLParts, text: str, what: str, limit: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise parts.error(f"{what} {text!r} is not a number")
    if len(text) > 10 or int(text) > limit:
        raise parts.error(f"{what} {text} is out of range (0-{limit})")
    return int(text)


def parse_vsock_address(parts: URLParts, *, listening: bool) -> Address:
    """``scheme://cid:port`` with a named or numeric CID; ``any`` and port 0 only to listen."""
    if parts.path not in ("", "/"):
        raise parts.error(f"unexpected path {parts.path!r} after cid:port")
    cid_text, colon, port_text = parts.authority.partition(":")
    if not cid_text:
        raise parts.error("missing CID (a number, or any, hypervisor, local, host)")
    if not colon or not port_text:
        raise parts.error("missing port (expected cid:port, e.g. vsock://local:5000)")
    name = cid_text.lower()
    cid = CID_NAMES[name] if name in CID_NAMES else _number(parts, cid_text, "CID", _U32_MAX)
    port = _number(parts, port_text, "port", _U32_MAX - 1)
    if not listening and cid == CID_ANY:
        raise parts.error("CID 'any' can only be used to listen; connect to local, host or a number")
    if not listening and port == 0:
        raise parts.error("port 0 can only be used to listen (it asks the kernel to choose)")
    host = name if name in CID_NAMES else str(cid)
    return Address(parts.scheme, host=host, port=port, query=parts.query)


def cid_of(address: Address) -> int:
    """The numeric CID an address names."""
    assert address.host is not None
    return CID_NAMES[address.host] if address.host in CID_NAMES else int(address.host)


def _sockaddr(address: Address) -> tuple[int, int]:
    assert address.port is not None
    return cid_of(address), address.port or PORT_ANY


def local_cid() -> int | None:
    """This machine's own CID (``IOCTL_VM_SOCKETS_GET_LOCAL_CID`` on ``/dev/vsock``), if it has one."""
    try:
        with open("/dev/vsock", "rb") as dev:
            raw = fcntl.ioctl(dev, socket.IOCTL_VM_SOCKETS_GET_LOCAL_CID, b"\0" * 4)
    except OSError:
        return None
    cid: int = struct.unpack("I", raw)[0]
    return None if cid == CID_ANY else cid


def loopback_availability() -> Availability:
    """Whether CID 1 works: bind a stream socket there (no packet leaves the socket layer)."""
    probe = probe_socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    if not probe.available:
        return probe
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((CID_LOCAL, PORT_ANY))
        except OSError as exc:
            err = exc.errno or 0
            return Availability(False, f"{errno.errorcode.get(err, err)}: {NO_LOOPBACK}", err)
    return Availability(True)


def _check_reachable(ctx: Context, cid: int) -> None:
    """Refuse CID 1 (and our own CID) without a loopback transport: never send those to the hypervisor."""
    if cid != CID_LOCAL and cid != local_cid():
        return
    probe = loopback_availability()
    if not probe.available:
        raise TransportUnavailable(
            probe.errno or errno.EADDRNOTAVAIL,
            f"cannot connect to {ctx.address}: {probe.reason}",
            address=str(ctx.address),
        )


async def _connect(ctx: Context, type: int) -> trio.socket.SocketType:
    cid, port = _sockaddr(ctx.address)
    _check_reachable(ctx, cid)
    sock = await ctx.make_socket(socket.AF_VSOCK, type)
    await ctx.connect_socket(sock, (cid, port), explain=partial(_explain_connect, ctx, cid))
    return sock


def _explain_connect(ctx: Context, cid: int, exc: OSError) -> ConnectError | None:
    """vsock's own errnos on connect: a reset is a refusal, ENODEV an unreachable CID."""
    where = str(ctx.address)
    if exc.errno == errno.ECONNRESET:  # vsock's answer when nothing listens on the port
        return ConnectionRefused(
            errno.ECONNREFUSED,
            f"cannot connect to {where}: nothing listens there (the connection request was reset)",
            address=where,
        )
    if exc.errno == errno.ENODEV:
        return TransportUnavailable(
            errno.ENODEV, f"cannot connect to {where}: no vsock transport reaches CID {cid}", address=where
        )
    return None


def _explain_bind(ctx: Context, type: int, sockaddr: tuple[int, int], exc: OSError) -> ConnectError | None:
    """A kernel without a datagram or loopback transport says so at bind."""
    where = str(ctx.address)
    if exc.errno == errno.ENODEV and type == socket.SOCK_DGRAM:
        return TransportUnavailable(errno.ENODEV, f"cannot bind for {where}: {NO_DATAGRAMS}", address=where)
    if exc.errno == errno.EADDRNOTAVAIL and sockaddr[0] == CID_LOCAL:
        return TransportUnavailable(
            errno.EADDRNOTAVAIL, f"cannot listen on {where}: {NO_LOOPBACK}", address=where
        )
    return None


async def _bind(ctx: Context, type: int, role: SocketRole) -> trio.socket.SocketType:
    """A vsock socket bound to the URL's address (listen) or to any (a datagram client)."""
    where = str(ctx.address)
    try:
        sock = await ctx.make_socket(socket.AF_VSOCK, type, role=role)
    except TransportUnavailable as exc:
        if type != socket.SOCK_DGRAM or exc.errno != errno.ENODEV:
            raise
        raise TransportUnavailable(
            errno.ENODEV, f"cannot use {where}: {NO_DATAGRAMS}", address=where
        ) from exc
    sockaddr = _sockaddr(ctx.address) if role is SocketRole.LISTEN else (CID_ANY, PORT_ANY)
    await ctx.bind_socket(
        sock,
        sockaddr,
        listen=role is SocketRole.LISTEN and type != socket.SOCK_DGRAM,
        explain=partial(_explain_bind, ctx, type, sockaddr),
    )
    return sock


def _bound(ctx: Context, sock: trio.socket.SocketType) -> Address:
    _cid_bound, port = sock.getsockname()
    return Address(ctx.address.scheme, host=ctx.address.host, port=port, query=ctx.address.query)


def _parse_mode(text: str) -> str:
    if text not in ("stream", "message"):
        raise ValueError(f"expected 'stream' or 'message', got {text!r}")
    return text


class VsockTransport(Transport):
    schemes = ("vsock",)
    name = "VSOCK"
    kind = Kind.STREAM
    # Streams by default: ?mode=message (the option below) keeps message boundaries.
    capabilities = Capabilities(half_close=True)
    options = (
        Option(
            "mode", _parse_mode, "stream", "stream: a byte stream; message: whole messages (SOCK_SEQPACKET)"
        ),
        Option.count("max_size", DEFAULT_DATAGRAM_SIZE, "message mode: largest message received whole"),
    )
    description = "AF_VSOCK streams (half-closeable), or ?mode=message (SOCK_SEQPACKET)"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_vsock_address(parts, listening=listening)

    def _wrap(
        self,
        ctx: Context,
        sock: trio.socket.SocketType,
        conn_id: int,
        address: Address,
        remote: SockAddr | None = None,
    ) -> Connection:
        if sock.type == socket.SOCK_SEQPACKET:
            return ctx.message_channel(
                sock, conn_id=conn_id, address=address, remote=remote, max_size=ctx.int_option("max_size")
            )
        return ctx.stream(sock, conn_id=conn_id, address=address, remote=remote)

    def _type(self, ctx: Context) -> int:
        mode = ctx.options["mode"]
        if mode not in ("stream", "message"):
            raise AddressError(f"{ctx.address}: mode must be 'stream' or 'message', not {mode!r}")
        return socket.SOCK_SEQPACKET if mode == "message" else socket.SOCK_STREAM

    async def connect(self, ctx: Context) -> Connection:
        sock = await _connect(ctx, self._type(ctx))
        return self._wrap(ctx, sock, ctx.conn_id, ctx.address)

    async def listen(self, ctx: Context) -> Listener:
        sock = await _bind(ctx, self._type(ctx), SocketRole.LISTEN)
        bound = _bound(ctx, sock)

        def wrap(s: trio.socket.SocketType, remote: SockAddr, conn_id: int) -> Connection:
            return self._wrap(ctx, s, conn_id, bound, remote)

        return ctx.stream_listener(sock, bound, wrap)

    def availability(self) -> Availability:
        return loopback_availability()

    def loopback_url(self, tmpdir: str) -> str:
        return "vsock://local:0"


class VsockDatagramTransport(Transport):
    schemes = ("vsock+dgram",)
    name = "VSOCK-DGRAM"
    kind = Kind.DATAGRAM
    capabilities = Capabilities(message_boundaries=True)
    options = (
        Option.count("max_size", DEFAULT_DATAGRAM_SIZE, "largest datagram received whole"),
        Option.count("queue", 256, "listener: datagrams held per peer before dropping"),
    )
    description = "AF_VSOCK datagrams (needs a kernel datagram transport: VMCI)"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_vsock_address(parts, listening=listening)

    async def connect(self, ctx: Context) -> Connection:
        cid, port = _sockaddr(ctx.address)
        _check_reachable(ctx, cid)
        sock = await _bind(ctx, socket.SOCK_DGRAM, SocketRole.CONNECT)
        await ctx.connect_socket(sock, (cid, port))
        return ctx.channel(sock, remote=(cid, port), max_size=ctx.int_option("max_size"))

    async def listen(self, ctx: Context) -> Listener:
        sock = await _bind(ctx, socket.SOCK_DGRAM, SocketRole.LISTEN)
        return ctx.datagram_listener(
            sock, _bound(ctx, sock), queue=ctx.int_option("queue"), max_size=ctx.int_option("max_size")
        )

    def availability(self) -> Availability:
        probe = probe_socket(socket.AF_VSOCK, socket.SOCK_DGRAM)
        if probe.available:
            with socket.socket(socket.AF_VSOCK, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind((CID_ANY, PORT_ANY))
                except OSError as exc:
                    err = exc.errno or 0
                    probe = Availability(False, f"{errno.errorcode.get(err, err)}: {exc.strerror}", err)
        if probe.errno == errno.ENODEV:
            return Availability(False, f"ENODEV: {NO_DATAGRAMS}", errno.ENODEV)
        return probe

    def loopback_url(self, tmpdir: str) -> str:
        return "vsock+dgram://local:0"


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [VsockTransport(), VsockDatagramTransport()]
