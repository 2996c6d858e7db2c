"""``unix:///path``, ``unix://@abstract`` and ``unix+dgram:///path`` — AF_UNIX sockets.

Listeners handle a stale socket file left by a dead server (nothing answers
there: it is removed) and refuse to steal a live one; they remove their file
on close. Stream connections carry the peer's credentials (``SO_PEERCRED``).
A datagram client binds a path of its own so replies can reach it, and removes
it on close.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Sequence

import trio

from trio_conduit import Address, AddressInUse, ConnectError, Connection, ConnectionRefused, Kind
from trio_conduit.transport import (
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
    parse_unix_path,
    peer_credentials,
    probe_socket,
)


def sockaddr(path: str) -> str:
    """``@name`` → the abstract-namespace address; a path as it is."""
    return "\0" + path[1:] if path.startswith("@") else path


def _unlink_if_ours(path: str, ino: int | None) -> Callable[[], None]:
    def cleanup() -> None:
        if path.startswith("@") or ino is None:
            return
        try:
            if os.lstat(path).st_ino == ino:
                os.unlink(path)
        except OSError:
            pass

    return cleanup


def _clear_stale(path: str, type: int, where: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse otherwise."""
    if path.startswith("@"):
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUse(
            errno.EADDRINUSE, f"cannot listen on {where}: {path} exists and is not a socket", address=where
        )
    probe = socket.socket(socket.AF_UNIX, type)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: its server is gone
        return
    except OSError:
        return  # let bind() report what is wrong
    finally:
        probe.close()
    raise AddressInUse(
        errno.EADDRINUSE, f"cannot listen on {where}: a server is already listening there", address=where
    )


async def _bind_listener(ctx: Context, type: int) -> tuple[trio.socket.SocketType, Callable[[], None]]:
    path = ctx.address.path
    assert path is not None
    _clear_stale(path, type, str(ctx.address))
    sock = await ctx.make_socket(socket.AF_UNIX, type, role=SocketRole.LISTEN)
    await ctx.bind_socket(sock, sockaddr(path), listen=type == socket.SOCK_STREAM)
    try:
        ino = None if path.startswith("@") else os.lstat(path).st_ino
    except BaseException:
        sock.close()
        raise
    return sock, _unlink_if_ours(path, ino)


async def _connect(ctx: Context, sock: trio.socket.SocketType) -> None:
    path = ctx.address.path
    assert path is not None

    def explain(exc: OSError) -> ConnectError | None:
        if exc.errno != errno.ENOENT:
            return None
        return ConnectionRefused(
            errno.ENOENT, f"cannot connect to {ctx.address}: no socket at {path}", address=str(ctx.address)
        )

    await ctx.connect_socket(sock, sockaddr(path), explain=explain)


class UnixStreamTransport(Transport):
    schemes = ("unix",)
    name = "UNIX"
    kind = Kind.STREAM
    capabilities = Capabilities(half_close=True)
    description = "unix stream sockets (paths and the abstract namespace); peer credentials"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_unix_path(parts)

    async def connect(self, ctx: Context) -> Connection:
        sock = await ctx.make_socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await _connect(ctx, sock)
        return ctx.stream(sock, peer_credentials=peer_credentials(sock))

    async def listen(self, ctx: Context) -> Listener:
        sock, cleanup = await _bind_listener(ctx, socket.SOCK_STREAM)
        bound = ctx.address

        def wrap(s: trio.socket.SocketType, remote: SockAddr, conn_id: int) -> Connection:
            return ctx.stream(
                s, conn_id=conn_id, address=bound, remote=remote, peer_credentials=peer_credentials(s)
            )

        return ctx.stream_listener(sock, bound, wrap, on_close=cleanup)

    def availability(self) -> Availability:
        return probe_socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def loopback_url(self, tmpdir: str) -> str:
        return f"unix://{tmpdir}/check-stream.sock"


class UnixDatagramTransport(Transport):
    schemes = ("unix+dgram",)
    name = "UNIX-DGRAM"
    kind = Kind.DATAGRAM
    capabilities = Capabilities(message_boundaries=True, unconnected=True)
    options = (
        Option.boolean("bind", True, "bind a client path of our own (removed on close) so replies arrive"),
        Option.count("max_size", 65536, "largest datagram received whole"),
        Option.count("queue", 256, "listener: datagrams held per peer before dropping"),
    )
    description = "unix datagram sockets; the client binds a path so replies reach it"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_unix_path(parts)

    async def connect(self, ctx: Context) -> Connection:
        sock = await ctx.make_socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        cleanup: Callable[[], None] | None = None
        try:
            if ctx.socket_options.local is None and ctx.options["bind"]:
                own = os.path.join(
                    tempfile.gettempdir(), f"conduit-{os.getpid()}-{ctx.conn_id}-{os.urandom(4).hex()}.sock"
                )
                await sock.bind(own)
                cleanup = _unlink_if_ours(own, os.lstat(own).st_ino)
            elif isinstance(ctx.socket_options.local, str):
                local = ctx.socket_options.local
                cleanup = _unlink_if_ours(local, None if local.startswith("@") else os.lstat(local).st_ino)
        except BaseException:
            sock.close()
            raise
        try:
            await _connect(ctx, sock)
        except BaseException:
            if cleanup is not None:
                cleanup()
            raise
        return ctx.channel(
            sock, remote=sock.getpeername(), on_close=cleanup, max_size=ctx.int_option("max_size")
        )

    async def listen(self, ctx: Context) -> Listener:
        sock, cleanup = await _bind_listener(ctx, socket.SOCK_DGRAM)
        return ctx.datagram_listener(
            sock,
            ctx.address,
            on_close=cleanup,
            queue=ctx.int_option("queue"),
            max_size=ctx.int_option("max_size"),
        )

    def availability(self) -> Availability:
        return probe_socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def loopback_url(self, tmpdir: str) -> str:
        return f"unix+dgram://{tmpdir}/check-dgram.sock"


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [UnixStreamTransport(), UnixDatagramTransport()]
