"""``rot13+tcp://host:port``: TCP with every byte rot13'd. A worked trio-conduit plugin.

Once the distribution is installed, every pool knows the scheme::

    async with trio_conduit.open_pool() as pool:
        conn = await pool.connect_stream("rot13+tcp://127.0.0.1:8000")
        await conn.send_all(b"Hello")  # the peer's socket receives b"Uryyb"

How the pieces fit:

* ``pyproject.toml`` names this module in the ``trio_conduit`` entry-point
  group. trio-conduit imports it, registers it as the plugin ``rot13`` and
  calls its :func:`conduit_transports` hook.
* :class:`Rot13Transport` parses ``host:port`` with the core's grammar
  (:func:`~trio_conduit.transport.parse_host_port`), makes its sockets
  through the core's one socket path (``ctx.connect_inet``,
  ``ctx.listen_inet``) and makes streams of them with ``ctx.stream`` and
  ``ctx.stream_listener``. So ``local=``, ``device=``, happy eyeballs, the
  ``conduit_socket_created`` hook and the typed connect errors all work as
  they do for ``tcp://``, for free. Everything it needs comes from
  :mod:`trio_conduit` and :mod:`trio_conduit.transport`, the plugin-author
  API; never from a private module.
* :class:`Rot13Stream` wraps the core's TCP stream and translates the bytes
  going through it.
* :class:`ConnectionCounter` is an optional plugin *object* whose lifecycle
  hooks are ``async def``. Register it for one pool
  (``open_pool(plugins=[counter])``), not through the entry point: a global
  lifecycle hook would run for every connection of every pool in the process.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Final, final

import trio

from trio_conduit import Address, CommunicationInfo, Connection, HalfCloseableStreamConnection, Kind
from trio_conduit.transport import (
    Availability,
    Capabilities,
    Context,
    Listener,
    SockAddr,
    Transport,
    URLParts,
    hookimpl,
    parse_host_port,
    probe_socket,
)

__all__ = ["SCHEME", "ConnectionCounter", "Rot13Stream", "Rot13Transport", "conduit_transports", "rot13"]

#: The URL scheme this plugin registers.
SCHEME: Final = "rot13+tcp"

_ROT13: Final = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
)


def rot13(data: bytes | bytearray | memoryview) -> bytes:
    """Rotate ASCII letters by 13 places; other bytes pass unchanged. Its own inverse."""
    return bytes(data).translate(_ROT13)


@final
class Rot13Stream(HalfCloseableStreamConnection):
    """A stream that rot13s what it sends and un-rot13s what it receives.

    It keeps the inner connection's ``id`` and ``info`` (whose ``transport`` is
    ``"rot13+tcp"``). Errors are the inner stream's, so trio's stream contract
    (``BrokenResourceError``, ``ClosedResourceError``, ``BusyResourceError``)
    holds unchanged.
    """

    def __init__(self, inner: HalfCloseableStreamConnection) -> None:
        super().__init__(inner.id, inner.address)
        self._inner = inner

    @property
    def inner(self) -> HalfCloseableStreamConnection:
        """The TCP stream underneath (its ``socket`` attribute is the kernel socket)."""
        return self._inner

    @property
    def info(self) -> CommunicationInfo:
        return self._inner.info

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(rot13(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return rot13(await self._inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            # Tell the owning pool that this connection is gone: it traces the
            # close and runs the conduit_connection_lost hooks (once, however
            # often aclose is called).
            await self._closed()


def _nodelay(sock: trio.socket.SocketType) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Rot13Transport(Transport):
    """``rot13+tcp://host:port``: IPv6 literals in brackets, port 0 to listen on any free port."""

    schemes = (SCHEME,)
    name = "ROT13"
    kind = Kind.STREAM
    capabilities = Capabilities(half_close=True, device=True, ip_options=True)
    description = "TCP with every byte rot13'd (the example third-party plugin)"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    async def connect(self, ctx: Context) -> Connection:
        sock = await ctx.connect_inet(socket.SOCK_STREAM)
        try:
            _nodelay(sock)
        except BaseException:
            sock.close()  # whatever fails after the socket exists must not leak it
            raise
        return Rot13Stream(ctx.stream(sock))  # a HalfCloseableSocketStream with this connection's id

    async def listen(self, ctx: Context) -> Listener:
        sock = await ctx.listen_inet(socket.SOCK_STREAM)
        host, port = sock.getsockname()[:2]
        bound = Address(SCHEME, host=host, port=port, query=ctx.address.query)

        # The listener calls this for each accepted socket, with the id the new
        # connection gets. If it raises, that socket is closed and the listener goes on.
        def wrap(accepted: trio.socket.SocketType, remote: SockAddr, conn_id: int) -> Connection:
            _nodelay(accepted)
            return Rot13Stream(ctx.stream(accepted, conn_id=conn_id, address=bound, remote=remote))

        return ctx.stream_listener(sock, bound, wrap)

    def availability(self) -> Availability:
        """What ``conduit check`` reports: can this kernel make TCP sockets, and if not, why."""
        return probe_socket(socket.AF_INET, socket.SOCK_STREAM)

    def loopback_url(self, tmpdir: str) -> str:
        return f"{SCHEME}://127.0.0.1:0"


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    """Registration hook (synchronous): a fresh transport for each pool or listener scope."""
    return [Rot13Transport()]


class ConnectionCounter:
    """Counts rot13 connections made and lost, in ``async def`` lifecycle hooks.

    Use it for one pool::

        counter = ConnectionCounter()
        async with trio_conduit.open_pool(plugins=[counter]) as pool:
            ...
        print(counter.made, counter.lost)

    trio-conduit awaits these hooks in pluggy's order. They need not wait for
    anything here, but they could (ask a policy service, write to an async
    log). A hook may take a subset of its spec's parameters:
    ``conduit_connection_lost`` here ignores ``exc``.
    """

    def __init__(self) -> None:
        self.made = 0
        self.lost = 0

    @property
    def open(self) -> int:
        """rot13 connections made and not yet lost."""
        return self.made - self.lost

    @hookimpl
    async def conduit_connection_made(self, conn: Connection) -> None:
        if conn.info.transport == SCHEME:
            self.made += 1

    @hookimpl
    async def conduit_connection_lost(self, conn: Connection) -> None:
        if conn.info.transport == SCHEME:
            self.lost += 1
