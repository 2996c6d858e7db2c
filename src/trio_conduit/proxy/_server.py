"""A proxy server: SOCKS5 (CONNECT, UDP ASSOCIATE), SOCKS4/4a and HTTP CONNECT on one port.

:class:`ProxyServer` is a connection handler for ``pool.serve``; ``conduit
listen --socks5`` runs one. It drives the same sans-IO engines as the client
side (their server halves), tells the protocols apart by the first byte
(``0x05``, ``0x04``, or an HTTP method), connects to targets with
``pool.connect`` (through ``upstream`` proxies, if given) and relays bytes
both ways, half-closing each direction when its sender is done. It is a
second, independent implementation for tests, and a small proxy for users:
it forwards to anything its ``allow`` policy lets through, so keep it on
loopback or give it ``users`` and an ``allow`` policy.
"""

from __future__ import annotations

import errno
import hmac
import logging
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import trio

from .._errors import (
    AddressError,
    ConduitError,
    ConnectionRefused,
    ConnectTimeout,
    HostUnreachable,
    NameResolutionError,
    NetworkUnreachable,
    PermissionDenied,
    ProxyError,
    ProxyProtocolError,
)
from ._engine import NEED_DATA, Command, ReplyCode, Request, ServerEngine
from ._http import HTTPConnectServer
from ._socks4 import Socks4Server
from ._socks5 import Socks5Server, pack_udp_header, unpack_udp_datagram_untrusted
from ._udp import MAX_HEADER, _same_host
from ._url import ProxyURL, Target

if TYPE_CHECKING:
    from .._pool import Pool

__all__ = ["PROTOCOLS", "ProxyServer"]

_log = logging.getLogger("trio_conduit.proxy")

#: The protocols a :class:`ProxyServer` can speak.
PROTOCOLS: Final = frozenset({"socks5", "socks4", "http"})
RELAY_READ: Final = 65536


def reply_code_for(exc: BaseException) -> ReplyCode:
    """The reply that tells a client why its target could not be reached."""
    if isinstance(exc, ConnectionRefused):
        return ReplyCode.CONNECTION_REFUSED
    if isinstance(exc, NetworkUnreachable):
        return ReplyCode.NETWORK_UNREACHABLE
    if isinstance(exc, (HostUnreachable, NameResolutionError, AddressError)):
        return ReplyCode.HOST_UNREACHABLE
    if isinstance(exc, ConnectTimeout):
        return ReplyCode.TTL_EXPIRED
    if isinstance(exc, PermissionDenied):
        return ReplyCode.NOT_ALLOWED
    return ReplyCode.GENERAL_FAILURE


class ProxyServer:
    """Serve SOCKS5, SOCKS4/4a and HTTP CONNECT clients: ``await pool.serve(url, ProxyServer(pool))``.

    ``users``: user name → password; when given, SOCKS5 clients must use RFC
    1929, HTTP clients Basic authentication, and SOCKS4 (which has no
    passwords) is refused. ``protocols``: which of ``"socks5"``, ``"socks4"``,
    ``"http"`` to speak. ``udp``: allow SOCKS5 UDP ASSOCIATE. ``allow(request)``:
    a policy over each :class:`~trio_conduit.proxy.Request` (and each UDP
    destination); refused ones get "not allowed". ``upstream``: proxies to
    reach targets through. ``connect_timeout`` bounds each connect to a target,
    ``handshake_timeout`` a client's handshake.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        users: Mapping[str, str] | None = None,
        protocols: Collection[str] = PROTOCOLS,
        udp: bool = True,
        allow: Callable[[Request], bool] | None = None,
        upstream: Sequence[str | ProxyURL] = (),
        connect_timeout: float = 10.0,
        handshake_timeout: float = 30.0,
    ) -> None:
        unknown = set(protocols) - PROTOCOLS
        if unknown:
            raise ValueError(f"unknown proxy protocols {sorted(unknown)} (known: {sorted(PROTOCOLS)})")
        self.pool = pool
        self._users = dict(users) if users is not None else None
        self.protocols = frozenset(protocols)
        self.udp = udp
        self.allow = allow
        self.upstream = list(upstream)
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout

    def __repr__(self) -> str:
        auth = f", {len(self._users)} users" if self._users is not None else ""
        return f"<ProxyServer {'/'.join(sorted(self.protocols))}{auth}>"

    # -- authentication ---------------------------------------------------------
    def _check(self, username: str, password: str) -> bool:
        assert self._users is not None
        expected = self._users.get(username)
        # Compare even for unknown users, so timing says nothing about who exists.
        ok = hmac.compare_digest((expected or "\0").encode(), password.encode())
        return expected is not None and ok

    def _engine_for(self, first: int) -> ServerEngine | None:
        check = self._check if self._users is not None else None
        if first == 5 and "socks5" in self.protocols:
            return Socks5Server(check_credentials=check)
        if first == 4 and "socks4" in self.protocols:
            return Socks4Server(check_userid=(lambda _userid: False) if check is not None else None)
        if "http" in self.protocols and (chr(first).isalpha() or first in (0x0D, 0x0A)):
            return HTTPConnectServer(check_credentials=check)
        return None

    # -- one client ---------------------------------------------------------------
    async def __call__(self, conn: Any) -> None:
        """Handle one client connection (a ``pool.serve`` handler)."""
        engine: ServerEngine | None = None
        request: Request | None = None
        with trio.move_on_after(self.handshake_timeout):
            first = await conn.receive_some(RELAY_READ)
            if not first:
                return
            engine = self._engine_for(first[0])
            if engine is None:
                _log.info(
                    "proxy conn #%d: not a protocol this server speaks (first byte %#04x)", conn.id, first[0]
                )
                return
            engine.receive_data(first)
            try:
                request = await _read_request(conn, engine)
            except ProxyError as exc:
                _log.info("proxy conn #%d: %s", conn.id, exc.reply)
                with trio.move_on_after(1):
                    await _flush(conn, engine)
                return
        if engine is None or request is None:
            _log.info("proxy conn #%d: no request within %g s", conn.id, self.handshake_timeout)
            return
        who = f"{request.protocol} {request.command.value} {request.target}"
        if self.allow is not None and not self.allow(request):
            _log.info("proxy conn #%d: %s: not allowed", conn.id, who)
            await self._refuse(conn, engine, ReplyCode.NOT_ALLOWED)
            return
        if request.command is Command.CONNECT:
            await self._connect(conn, engine, request, who)
        elif request.command is Command.UDP_ASSOCIATE and self.udp:
            await self._associate(conn, engine, request, who)
        else:
            _log.info("proxy conn #%d: %s: command not supported", conn.id, who)
            await self._refuse(conn, engine, ReplyCode.COMMAND_NOT_SUPPORTED)

    async def _refuse(self, conn: Any, engine: ServerEngine, code: ReplyCode) -> None:
        engine.reply(code)
        with trio.move_on_after(1):
            await _flush(conn, engine)

    async def _connect(self, conn: Any, engine: ServerEngine, request: Request, who: str) -> None:
        url = f"tcp://{request.target.hostport}"
        try:
            target = await self.pool.connect_stream(
                url, timeout=self.connect_timeout, proxies=self.upstream or None
            )
        except (ConduitError, OSError) as exc:
            code = reply_code_for(exc)
            _log.info("proxy conn #%d: %s: %s (%s)", conn.id, who, code.text(), exc)
            await self._refuse(conn, engine, code)
            return
        async with target:
            local = target.info.local
            bound = Target(str(local[0]), int(local[1])) if isinstance(local, tuple) else None
            engine.reply(ReplyCode.SUCCEEDED, bound)
            _log.info("proxy conn #%d: %s: connected (conn #%d)", conn.id, who, target.id)
            try:
                await _flush(conn, engine)
                early = engine.trailing_data
                if early:
                    await target.send_all(early)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await relay(conn, target)

    async def _associate(self, conn: Any, engine: ServerEngine, request: Request, who: str) -> None:
        local, peer = conn.info.local, conn.info.remote
        if not (isinstance(local, tuple) and isinstance(peer, tuple)) or conn.info.family is None:
            await self._refuse(conn, engine, ReplyCode.COMMAND_NOT_SUPPORTED)
            return
        family = conn.info.family
        raw = socket.socket(family, socket.SOCK_DGRAM)
        with trio.socket.from_stdlib_socket(raw) as sock:
            await sock.bind((local[0], 0))
            host, port = sock.getsockname()[:2]
            engine.reply(ReplyCode.SUCCEEDED, Target(host, port))
            _log.info("proxy conn #%d: %s: relaying at %s", conn.id, who, Target(host, port))
            route = _Route(str(peer[0]))
            wanted = request.target
            if wanted.port and (
                wanted.ip is None or wanted.ip.is_unspecified or _same_host(wanted.host, peer[0])
            ):
                route.client = (peer[0], wanted.port)
            try:
                await _flush(conn, engine)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._udp_relay, sock, route)
                try:
                    while await conn.receive_some(4096):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                # The association ends with its control connection (RFC 1928 §7), but what
                # the client sent before closing it is in hand or queued here (a DTLS
                # close_notify, say): the relay finishes the datagram it holds, reads no
                # more, and what is queued is passed on below; all within _DRAIN_SECONDS.
                route.stop()
                nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_SECONDS
            with trio.move_on_after(_DRAIN_SECONDS):
                for data, source in _queued(raw):
                    await self._relay_datagram(sock, route, data, source)
            _log.info("proxy conn #%d: UDP association over", conn.id)

    async def _udp_relay(self, sock: trio.socket.SocketType, route: _Route) -> None:
        while not route.stopping:
            got: tuple[bytes, Any] | None = None
            with trio.CancelScope() as route.reading:
                try:
                    got = await sock.recvfrom(_DATAGRAM_MAX)
                except OSError:
                    pass  # an ICMP error for an earlier datagram
            route.reading = None
            if got is not None:
                await self._relay_datagram(sock, route, *got)

    async def _relay_datagram(
        self, sock: trio.socket.SocketType, route: _Route, data: bytes, source: Any
    ) -> None:
        """One datagram: from the client, unwrapped to its destination; else wrapped to the client."""
        client = route.client
        from_client = (
            source[:2] == client[:2] if client is not None else _same_host(str(source[0]), route.client_ip)
        )
        if from_client:
            route.client = source
            try:
                dest, frag, payload = unpack_udp_datagram_untrusted(data)
            except ProxyProtocolError:
                return
            if frag != 0:
                return
            if self.allow is not None and not self.allow(Request("SOCKS5", Command.UDP_ASSOCIATE, dest)):
                return
            try:
                infos = await trio.socket.getaddrinfo(dest.host, dest.port, sock.family, socket.SOCK_DGRAM)
                await sock.sendto(payload, infos[0][4])
            except OSError:
                return
        elif client is not None:
            try:
                await sock.sendto(pack_udp_header(Target(str(source[0]), source[1])) + data, client)
            except OSError:
                return


#: A datagram as the relay reads it: the largest payload and the largest SOCKS5 header.
_DATAGRAM_MAX: Final = 65536 + MAX_HEADER
#: At the end of an association: how many already-queued datagrams are still passed on,
#: and for how long at most.
_DRAIN_MAX: Final = 64
_DRAIN_SECONDS: Final = 1.0


class _Route:
    """One association's relay state: where its client is (its address once known,
    ``client``, else its host) and whether the relay is to stop reading."""

    __slots__ = ("client", "client_ip", "reading", "stopping")

    def __init__(self, client_ip: str) -> None:
        self.client_ip = client_ip
        self.client: tuple[Any, ...] | None = None
        self.reading: trio.CancelScope | None = None
        self.stopping = False

    def stop(self) -> None:
        """Read no more: a wait for the next datagram ends; one in hand is still relayed."""
        self.stopping = True
        if self.reading is not None:
            self.reading.cancel()


def _queued(raw: socket.socket) -> list[tuple[bytes, Any]]:
    """What is already waiting on the relay's socket, read without blocking (at most ``_DRAIN_MAX``)."""
    found: list[tuple[bytes, Any]] = []
    for _ in range(_DRAIN_MAX):
        try:
            found.append(raw.recvfrom(_DATAGRAM_MAX))
        except BlockingIOError:
            break
        except OSError:
            continue  # an ICMP error for an earlier datagram
    return found


async def _flush(conn: Any, engine: ServerEngine) -> None:
    out = engine.data_to_send()
    if out:
        await conn.send_all(out)


async def _read_request(conn: Any, engine: ServerEngine) -> Request:
    """Drive a server engine to its :class:`Request` (answering the greeting and authentication)."""
    while True:
        event = engine.next_event()
        await _flush(conn, engine)
        if event is NEED_DATA:
            try:
                data = await conn.receive_some(RELAY_READ)
            except trio.BrokenResourceError as exc:
                raise ProxyError(errno.ECONNRESET, "the client broke the connection mid-handshake") from exc
            engine.receive_data(data)
            continue
        if isinstance(event, Request):
            return event
        raise ProxyProtocolError(errno.EPROTO, f"unexpected event {event!r}")  # pragma: no cover


async def _pipe(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(RELAY_READ):
            await sink.send_all(data)
        if isinstance(sink, trio.abc.HalfCloseableStream):
            await sink.send_eof()
        else:
            done.cancel()  # no half-close: one side's end is the end
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        done.cancel()


async def relay(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    """Copy bytes both ways until both directions ended (or one broke)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pipe, a, b, nursery.cancel_scope)
        nursery.start_soon(_pipe, b, a, nursery.cancel_scope)
