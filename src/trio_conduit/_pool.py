"""The pool: one nursery that owns every connection, listener and handler task.

After nsock's ``nsock_pool``, made structured: ``open_pool()`` is an async
context manager; leaving it cancels every task the pool runs and closes every
connection and listener it handed out.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, NoReturn, final

import trio

from ._address import Address, resolve_options, split_url
from ._connection import Connection, DatagramConnection, Kind, Listener, StreamConnection
from ._errors import AddressError, ConduitError, ConnectError, ConnectTimeout
from ._idle import IdleReaper
from ._plugins import HookScope, global_scope
from ._pool_options import CORE_OPTIONS, check_drain_timeout, check_timeout, known_options, resolve
from ._sockets import SocketOptions, SocketRole
from ._trace import Tracer
from ._transport import Context, Transport
from ._util import peer_text

if TYPE_CHECKING:
    from ._access import AccessGate, AccessSource
    from ._scan._engine import ScanResult
    from .proxy._chain import ProxyChain
    from .proxy._url import ProxyURL
    from .tls import TLSConnection
    from .tls._api import SecureLayer

__all__ = ["Handler", "Pool", "PoolListener", "open_pool"]

_log = logging.getLogger("trio_conduit")

_PARSE_CACHE_MAX: Final = 512
#: Keyword values that identify themselves by value (see Pool._context).
_PLAIN: Final = frozenset({str, int, float, bool, bytes, type(None)})

#: A connection handler: ``async def handler(conn)``.
Handler = Callable[[Any], Awaitable[object]]

#: How long ``conduit_connection_lost`` hooks and a handler's final close may take.
CLOSE_GRACE: Final = 5.0


class _Owner:
    """Tracks connections for one hook scope (the pool's, or a listener's)."""

    def __init__(self, pool: Pool, scope: HookScope) -> None:
        self.pool = pool
        self.scope = scope

    async def adopt(self, conn: Connection) -> None:
        conn._owner = self
        self.pool._conns[conn.id] = conn
        if self.scope.has_impls("conduit_connection_made"):
            try:
                await self.scope.acall("conduit_connection_made", conn=conn)
            except BaseException:
                await trio.aclose_forcefully(conn)
                raise

    @property
    def tracer(self) -> Tracer:
        return self.pool.tracer

    async def start_tls(
        self, conn: StreamConnection, tls: object, server_side: bool, options: dict[str, object]
    ) -> TLSConnection:
        """``conn.start_tls(...)``: the connection reaches the TLS layer through its owner."""
        from .tls._api import start_tls

        return await start_tls(conn, tls, server_side=server_side, **options)

    def replace(self, old: Connection, new: Connection) -> None:
        """``new`` takes ``old``'s place under the same id (``start_tls`` upgraded ``old``)."""
        old._owner = None
        new._owner = self
        self.pool._conns[new.id] = new

    async def connection_closed(self, conn: Connection, exc: BaseException | None) -> None:
        pool = self.pool
        pool._conns.pop(conn.id, None)
        tracer = pool.tracer
        if tracer.log.isEnabledFor(logging.INFO):
            tracer.info("closed conn #%d event #%d", conn.id, tracer.next_event_id())
        if self.scope.has_impls("conduit_connection_lost"):
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_GRACE):
                await self.scope.notify("conduit_connection_lost", conn=conn, exc=exc)


@final
class PoolListener(Listener):
    """A transport's listener as the pool hands it out (``pool.listen``).

    ``accept()`` returns connections already registered with the pool
    (ids, trace, ``conduit_connection_made`` hooks). ``address`` is the bound
    :class:`~trio_conduit.Address` (with the real port when 0 was asked for).
    """

    def __init__(
        self, inner: Listener, owner: _Owner, transport: Transport, access: AccessGate | None = None
    ) -> None:
        self._inner = inner
        self._owner = owner
        self.transport = transport
        self._address = inner.address
        #: The access rules at work (``allow=``/``deny=``), or ``None``.
        self.access = access

    @property
    def denied(self) -> int:
        """How many peers the access rules refused (stream connections; datagrams on a datagram
        listener); 0 without rules."""
        return 0 if self.access is None else self.access.denied

    @property
    def address(self) -> Address:
        """The bound address (the transport listener's)."""
        return self._address

    @property
    def inner(self) -> Listener:
        """The transport's own listener object."""
        return self._inner

    async def accept(self) -> Connection:
        """The next connection (a stream or datagram channel, by transport), registered with the pool."""
        while True:
            registered = await self._register(await self._inner.accept())
            if registered is not None:
                return registered

    async def _accept_in_steps(
        self,
    ) -> tuple[
        Connection, Callable[[], Awaitable[Any]] | None, Callable[[Connection], Awaitable[Any]] | None
    ]:
        """For ``serve()``: an accepted connection whose setup may not be done, the async
        ``finish()`` that completes it, and the registering with the pool that must follow
        (``None``: ``finish()`` returns the connection ready and registered).

        A transport listener that sets connections up in steps (TLS: ``accept_unfinished``)
        leaves its handshake to ``finish()``, which ``serve()`` runs in the connection's own
        handler task; ``finish()`` returns ``None`` when that failed (traced and closed).
        A listener without steps gives ``(conn, None, None)``: ``conn`` is ready and registered
        (nothing more to keep per connection: idle connections cost less).
        """
        steps = getattr(self._inner, "accept_unfinished", None)
        if steps is None:
            return await self.accept(), None, None
        raw, finish = await steps()
        return raw, finish, self._register

    async def _register(self, conn: Connection) -> Connection | None:
        tracer = self._owner.pool.tracer
        if tracer.log.isEnabledFor(logging.INFO):
            tracer.info(
                "%s connection accepted from %s on %s (conn #%d) event #%d",
                self.transport.name,
                peer_text(conn.info.remote),
                self.address,
                conn.id,
                tracer.next_event_id(),
            )
        try:
            await self._owner.adopt(conn)
        except Exception:
            _log.exception("conduit_connection_made rejected conn #%d; dropped", conn.id)
            return None
        return conn

    async def aclose(self) -> None:
        self._owner.pool._listeners.discard(self)
        await self._inner.aclose()


@final
class Pool:
    """Owns connections, listeners and handler tasks. Make one with :func:`open_pool`."""

    def __init__(
        self, nursery: trio.Nursery, scope: HookScope, *, drain_timeout: float | None = None
    ) -> None:
        check_drain_timeout(drain_timeout)
        self._nursery = nursery
        self._drain_timeout = drain_timeout
        #: This pool's plugins: the global ones plus those given to ``open_pool(plugins=...)``.
        self.scope: HookScope = scope
        self.tracer = Tracer()
        self._owner = _Owner(self, scope)
        self._conns: dict[int, Connection] = {}
        self._listeners: set[PoolListener] = set()
        self._serving: dict[trio.CancelScope, trio.Event] = {}
        self._parsed: dict[tuple[str, bool, HookScope], tuple[Transport, Address]] = {}
        # resolved options by (transport, address object, keyword options): (address, options, socket options)
        self._resolved: dict[tuple[object, ...], tuple[Address, Mapping[str, object], SocketOptions]] = {}
        self._closed = False
        self._idle = IdleReaper(self)
        #: The longest drain_timeout of a serve() running now (how long closing may wait for them).
        self._max_drain = drain_timeout or 0.0

    # -- addresses ----------------------------------------------------------
    @property
    def transports(self) -> Mapping[str, Transport]:
        """scheme → transport, as registered by this pool's plugins."""
        return self.scope.transports

    def parse(
        self, url: str | Address, *, listening: bool = False, scope: HookScope | None = None
    ) -> tuple[Transport, Address]:
        """Parse ``url`` with its scheme's transport: (transport, address) or AddressError."""
        scope = scope or self.scope
        text = url.url() if isinstance(url, Address) else url
        key = (text, listening, scope)  # the scope itself, not id(): ids are reused once a scope dies
        hit = self._parsed.get(key) if isinstance(text, str) else None
        if hit is not None:
            return hit
        parts = split_url(text)
        transport = scope.transport_for(parts.scheme)
        if transport is None:
            known = ", ".join(sorted(scope.transports)) or "none"
            raise AddressError(f"{parts.text!r}: unknown scheme {parts.scheme!r} (registered: {known})")
        address = transport.parse_address(parts, listening=listening)
        resolve_options(address, known_options(transport), address.query, {})  # bad options fail here
        result = (transport, address)
        if len(self._parsed) >= _PARSE_CACHE_MAX:
            self._parsed.clear()
        self._parsed[key] = result
        return result

    def _context(
        self,
        transport: Transport,
        address: Address,
        scope: HookScope,
        role: SocketRole,
        given: dict[str, object],
        conn_id: int = 0,
        event_id: int = 0,
    ) -> Context:
        # Connecting to one URL with the same keywords again resolves nothing again: the
        # same (read-only) options mapping comes back, and transports may cache by it.
        # Only plain values make a key: an object equal to another need not be the same
        # (a TLSConfig compares without its session), and those are resolved each time.
        key: tuple[object, ...] | None = None
        hit = None
        if not given:  # the common case: no keywords
            key = (transport, scope, id(address))
            hit = self._resolved.get(key)
        elif all(type(value) in _PLAIN for value in given.values()):
            key = (
                transport,
                scope,
                id(address),
                *[(name, type(value), value) for name, value in given.items()],
            )
            hit = self._resolved.get(key)
        if hit is not None:  # (the entry keeps the address alive: its id is not reused)
            opts, sockopts = hit[1], hit[2]
        else:
            opts, sockopts = resolve(transport, address, given)
            if key is not None:
                if len(self._resolved) >= _PARSE_CACHE_MAX:
                    self._resolved.clear()
                self._resolved[key] = (address, opts, sockopts)
        return Context(
            transport,
            address,
            opts,
            sockopts,
            scope,
            self.tracer,
            role,
            conn_id,
            event_id,
            nursery=self._nursery,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this pool is closed")

    # -- connecting ---------------------------------------------------------
    def _layer_over_proxies(
        self, proxies: Iterable[str | ProxyURL], transport: Transport, address: Address
    ) -> tuple[ProxyChain, Callable[[Context], Awaitable[Connection]]]:
        scheme = transport.layered_over
        assert scheme is not None
        inner = self.scope.transport_for(scheme)
        if inner is None:
            raise AddressError(f"{address}: needs the {scheme}:// transport, and no plugin registers it")
        target = address.replace(scheme=scheme, query=())
        chain = _build_chain(proxies, inner, target, self.scope)

        async def connect_layered(ctx: Context) -> Connection:
            conn = await chain.connect(transport.inner_context(ctx))
            return await transport.connect_over(conn, ctx)

        return chain, connect_layered

    async def connect(
        self,
        url: str | Address,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        local: object | None = None,
        device: str | None = None,
        ip_options: bytes | None = None,
        broadcast: bool = False,
        proxies: Iterable[str | ProxyURL] | None = None,
        **opts: object,
    ) -> Connection:
        """Connect to ``url`` and return the connection (a stream or a datagram channel).

        ``timeout`` bounds the whole connect (resolution included) and raises
        :class:`~trio_conduit.ConnectTimeout`; ``local``, ``device``,
        ``ip_options`` and ``broadcast`` go to the shared socket path;
        other keywords are the transport's options. The connection belongs to
        the pool: it is closed when the pool closes, if not before.
        ``proxies``: reach ``url`` through this chain of proxy URLs, first hop
        first (see :doc:`proxies`); ``timeout`` then covers the whole chain.
        ``idle_timeout``: close the connection once no send or receive call on it
        has completed for that many seconds (see :doc:`pool`, "Connection lifetime").

        :meth:`connect_stream` and :meth:`connect_channel` do the same and say
        (to the type checker too) which kind of connection they return.
        """
        if idle_timeout is not None:
            idle_timeout = check_timeout("idle_timeout", idle_timeout)
        conn = await self._connect(url, None, timeout, local, device, ip_options, broadcast, proxies, opts)
        if idle_timeout is not None:
            self._idle.watch(conn, idle_timeout)
        return conn

    async def connect_stream(
        self,
        url: str | Address,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        local: object | None = None,
        device: str | None = None,
        ip_options: bytes | None = None,
        broadcast: bool = False,
        proxies: Iterable[str | ProxyURL] | None = None,
        **opts: object,
    ) -> StreamConnection:
        """:meth:`connect` to a byte stream (``tcp://``, ``tls://``, ``unix://`` ...).

        A URL whose connections are not streams (``udp://``, or a stream
        transport's ``?mode=message``) raises :class:`~trio_conduit.AddressError`
        before anything is connected.
        """
        if idle_timeout is not None:
            idle_timeout = check_timeout("idle_timeout", idle_timeout)
        conn = await self._connect(
            url, Kind.STREAM, timeout, local, device, ip_options, broadcast, proxies, opts
        )
        if not isinstance(conn, StreamConnection):
            await _wrong_class(conn, "StreamConnection")
        if idle_timeout is not None:
            self._idle.watch(conn, idle_timeout)
        return conn

    async def connect_channel(
        self,
        url: str | Address,
        *,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        local: object | None = None,
        device: str | None = None,
        ip_options: bytes | None = None,
        broadcast: bool = False,
        proxies: Iterable[str | ProxyURL] | None = None,
        **opts: object,
    ) -> DatagramConnection:
        """:meth:`connect` to a channel of whole messages (``udp://``, ``unix+dgram://``,
        a stream transport's ``?mode=message`` ...).

        A URL whose connections are byte streams raises
        :class:`~trio_conduit.AddressError` before anything is connected.
        """
        if idle_timeout is not None:
            idle_timeout = check_timeout("idle_timeout", idle_timeout)
        conn = await self._connect(
            url, Kind.DATAGRAM, timeout, local, device, ip_options, broadcast, proxies, opts
        )
        if not isinstance(conn, DatagramConnection):
            await _wrong_class(conn, "DatagramConnection")
        if idle_timeout is not None:
            self._idle.watch(conn, idle_timeout)
        return conn

    async def _connect(
        self,
        url: str | Address,
        kind: Kind | None,
        timeout: float | None,
        local: object | None,
        device: str | None,
        ip_options: bytes | None,
        broadcast: bool,
        proxies: Iterable[str | ProxyURL] | None,
        opts: dict[str, object],
    ) -> Connection:
        """What the ``connect`` methods do; ``kind``: the kind of connection asked for (any: ``None``)."""
        self._check_open()
        transport, address = self.parse(url)
        chain = None
        open_connection: Callable[[Context], Awaitable[Connection]] = transport.connect
        if proxies and transport.layered_over is not None:
            # A layer (TLS) over a transport the chain can carry: the chain goes beneath it.
            chain, open_connection = self._layer_over_proxies(proxies, transport, address)
        elif proxies:
            chain = _build_chain(proxies, transport, address, self.scope)
            open_connection = chain.connect
        given = opts  # the caller's own **opts dict: ours to change
        tls = _take_tls(transport, given)
        if tls is not None:
            open_connection = _with_tls(open_connection, tls)
        if local is not None:
            given["local"] = local
        if device is not None:
            given["device"] = device
        if ip_options is not None:
            given["ip_options"] = ip_options
        if broadcast:
            given["broadcast"] = True
        tracer = self.tracer
        conn_id, event_id = tracer.next_conn_id(), tracer.next_event_id()
        ctx = self._context(transport, address, self.scope, SocketRole.CONNECT, given, conn_id, event_id)
        if kind is not None:
            _check_kind(transport, ctx, kind)
        tracing = tracer.log.isEnabledFor(logging.INFO)
        if tracing:
            tracer.info(
                "%s connection requested to %s (conn #%d) event #%d",
                transport.name,
                address.hostport,
                conn_id,
                event_id,
            )
        try:
            if timeout is None:
                conn = await open_connection(ctx)
            else:
                with trio.move_on_after(timeout) as cs:
                    conn = await open_connection(ctx)
                if cs.cancelled_caught:
                    if chain is not None:
                        raise chain.timeout_error(timeout)
                    raise ConnectTimeout(
                        errno.ETIMEDOUT,
                        f"cannot connect to {address}: no answer within {timeout:g} s",
                        address=str(address),
                    )
        except ConnectError as exc:
            tracer.info("connect failed for event #%d (conn #%d): %s", event_id, conn_id, exc)
            raise
        if tracing:
            tracer.info(
                "connect succeeded for event #%d (conn #%d) [%s]",
                event_id,
                conn_id,
                peer_text(conn.info.remote),
            )
        await self._owner.adopt(conn)
        return conn

    def spawn(self, url: str | Address, handler: Handler, **kwargs: Any) -> None:
        """Connect to ``url`` and run ``handler(conn)`` as its own task in the pool.

        Returns at once. A connect failure or a handler's exception is logged
        and passed to ``conduit_handler_error`` (``conn`` is ``None`` for a
        connect failure); the connection is closed when the handler ends.
        ``kwargs`` are :meth:`connect`'s, checked now (a bad one raises here);
        with ``idle_timeout`` an idle connection's handler is cancelled.
        """
        self._check_open()
        transport, address = self.parse(url)  # a malformed URL or unknown scheme raises here, at once
        self._check_connect_kwargs(transport, address, kwargs)  # and a bad keyword or value
        self._nursery.start_soon(self._spawned, url, handler, kwargs, name=f"conduit spawn {url}")

    def _check_connect_kwargs(self, transport: Transport, address: Address, kwargs: dict[str, Any]) -> None:
        """What :meth:`connect` would refuse in ``kwargs``, refused now (``spawn``)."""
        given = dict(kwargs)
        for name in ("timeout", "idle_timeout"):
            value = given.pop(name, None)
            if value is not None:
                check_timeout(name, value)
        proxies = given.pop("proxies", None)
        if proxies:
            _build_chain(proxies, transport, address, self.scope)
        if given.get("broadcast") is False:
            del given["broadcast"]
        given = {k: v for k, v in given.items() if not (v is None and k in CORE_OPTIONS)}
        _take_tls(transport, given)  # a bad tls= raises
        resolve(transport, address, given)

    async def _spawned(self, url: str | Address, handler: Handler, kwargs: dict[str, Any]) -> None:
        idle_timeout = kwargs.pop("idle_timeout", None)
        try:
            conn = await self.connect(url, **kwargs)
        except (ConduitError, OSError) as exc:
            _log.error("spawn %s: %s", url, exc)
            await self.scope.notify("conduit_handler_error", conn=None, exc=exc)
            return
        await _run_handler(conn, handler, self.scope, idle=(self._idle, idle_timeout))

    # -- scanning -----------------------------------------------------------
    def scan(
        self, targets: str | Sequence[str], ports: str | Iterable[int] = "1-1000", **options: Any
    ) -> AsyncGenerator[ScanResult, None]:
        """:func:`trio_conduit.scan` over this pool's transports: each target's scheme must be
        one this pool registers (and one the scanner can probe). ``options``: ``scan``'s."""
        from ._scan._driver import scan, split_target

        self._check_open()
        for url in [targets] if isinstance(targets, str) else targets:
            scheme, _ = split_target(url)
            if scheme not in self.transports:
                raise AddressError(f"{url!r}: no transport registers {scheme}:// in this pool")
        return scan(targets, ports, **options)

    # -- listening ----------------------------------------------------------
    async def listen(
        self,
        url: str | Address,
        *,
        plugins: Iterable[object] = (),
        backlog: int | None = None,
        reuse_port: bool = False,
        allow: AccessSource | None = None,
        deny: AccessSource | None = None,
        **opts: object,
    ) -> PoolListener:
        """Bind and listen on ``url``; accept connections yourself with ``accept()``.

        Port 0 asks the kernel for a free port: ``listener.address`` has it.
        ``plugins`` are hook implementations for this listener only.
        ``reuse_port``: ``SO_REUSEPORT`` (see :meth:`serve`).
        ``allow``/``deny``: access rules, enforced as each peer is accepted, before
        anything is read from it (see :doc:`access`); host names in them are resolved now.
        """
        self._check_open()
        gate: AccessGate | None = None
        if allow is not None or deny is not None:  # (the access module loads only when used)
            from ._access import open_gate

            gate = await open_gate(allow, deny, self.tracer)
        scope = self.scope.child(plugins)
        transport, address = self.parse(url, listening=True, scope=scope)
        given: dict[str, object] = dict(opts)
        tls = _take_tls(transport, given)
        if backlog is not None:
            given["backlog"] = backlog
        if reuse_port:
            given["reuse_port"] = True
        ctx = self._context(transport, address, scope, SocketRole.LISTEN, given)
        ctx.access = gate
        inner = await transport.listen(ctx)
        if gate is not None:
            from ._access import check_enforced

            await check_enforced(gate, inner, address)
        if tls is not None:
            try:
                inner = tls.listener(inner, ctx)
            except BaseException:  # a certificate that does not load: no listener at all
                await trio.aclose_forcefully(inner)
                raise
        listener = PoolListener(inner, _Owner(self, scope), transport, gate)
        self._listeners.add(listener)
        self.tracer.info("%s listening on %s", transport.name, listener.address)
        return listener

    async def serve(
        self,
        url: str | Address,
        handler: Handler | None = None,
        *,
        handlers: Mapping[str, Handler] | None = None,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        plugins: Iterable[object] = (),
        backlog: int | None = None,
        reuse_port: bool = False,
        drain_timeout: float | None = None,
        allow: AccessSource | None = None,
        deny: AccessSource | None = None,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
        **opts: object,
    ) -> None:
        """Listen on ``url`` and run ``handler(conn)`` for each connection, each its own task.

        Use as ``await nursery.start(pool.serve, url, handler)`` to get the
        bound :class:`~trio_conduit.Address`. At ``max_connections`` live
        handlers, accepting pauses (the kernel's backlog holds new ones). A
        handler's exception is logged and passed to ``conduit_handler_error``;
        the listener goes on. Runs until cancelled or until the pool closes (then it
        returns); its handlers are cancelled with it.

        ``idle_timeout``: a connection on which no send or receive call has
        completed for that many seconds is closed and its handler cancelled (the
        handler's task ends quietly; see :doc:`pool`, "Connection lifetime").

        ``handlers`` maps ALPN protocols to handlers (TLS: ``tls://`` or
        ``tls=``): each connection runs the one its negotiated protocol selects,
        else ``handler`` (see :doc:`tls`).

        ``reuse_port``: ``SO_REUSEPORT``, so that other processes can serve the
        same port (see :doc:`serving`). ``drain_timeout`` (default: the pool's,
        see :func:`open_pool`): when the pool closes, :meth:`drain` is called or
        the listener is closed, accepting stops at once and live handlers get
        this many seconds to finish before they are cancelled (``None`` or 0:
        cancelled at once). A cancellation from outside (the caller's cancel
        scope, Ctrl-C) cancels the handlers at once.

        ``allow``/``deny``: access rules (see :meth:`listen` and :doc:`access`); a
        refused peer never reaches a handler, a hook or a TLS handshake.
        """
        if handlers is not None:
            from .tls._api import alpn_handler

            handler = alpn_handler(url, handler, handlers, opts)
        elif handler is None:
            raise TypeError("serve() needs a handler, or handlers= mapping ALPN protocols to handlers")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if idle_timeout is not None:
            idle_timeout = check_timeout("idle_timeout", idle_timeout)
        idle = (self._idle, idle_timeout)
        if drain_timeout is None:
            drain_timeout = self._drain_timeout
        check_drain_timeout(drain_timeout)
        self._max_drain = max(self._max_drain, drain_timeout or 0.0)
        listener = await self.listen(
            url, plugins=plugins, backlog=backlog, reuse_port=reuse_port, allow=allow, deny=deny, **opts
        )
        scope = listener._owner.scope
        limit = trio.Semaphore(max_connections) if max_connections else None
        # Closing the pool or drain() cancels this, even when we run in a nursery outside the pool.
        cancel = trio.CancelScope()
        done = self._serving[cancel] = trio.Event()
        stopped: BaseException | None = None
        try:
            with trio.CancelScope() as handlers_scope:
                async with trio.open_nursery() as nursery:
                    try:
                        with cancel:
                            async with listener:
                                task_status.started(listener.address)
                                while True:
                                    if limit is not None:
                                        await limit.acquire()
                                    try:
                                        # a TLS handshake runs in the handler's task, not in the accept loop
                                        conn, finish, register = await listener._accept_in_steps()
                                    except BaseException:
                                        if limit is not None:
                                            limit.release()
                                        raise
                                    if finish is None:
                                        nursery.start_soon(
                                            _run_handler,
                                            conn,
                                            handler,
                                            scope,
                                            limit,
                                            idle,
                                            name=f"conduit handler #{conn.id}",
                                        )
                                    else:
                                        nursery.start_soon(
                                            _finish_and_run_handler,
                                            finish,
                                            register,
                                            handler,
                                            scope,
                                            limit,
                                            idle,
                                            name=f"conduit handler #{conn.id}",
                                        )
                    except BaseException as exc:
                        # Re-raised once the handlers are done: raised here, it would cancel them.
                        stopped = exc
                    # Not accepting any more (the listener is closed): drain, or cancel at once.
                    if isinstance(stopped, trio.Cancelled) or not drain_timeout:
                        handlers_scope.cancel()
                    else:
                        if nursery.child_tasks:
                            self.tracer.info(
                                "draining %d connection(s) on %s for up to %g s",
                                len(nursery.child_tasks),
                                listener.address,
                                drain_timeout,
                            )
                        handlers_scope.deadline = trio.current_time() + drain_timeout
            if stopped is not None:
                raise stopped
        except trio.ClosedResourceError:
            if not self._closed:
                raise
        finally:
            del self._serving[cancel]
            done.set()

    async def drain(self) -> None:
        """Stop every :meth:`serve` of this pool accepting, at once, and wait until they return.

        Their live handlers get the ``drain_timeout`` of their ``serve`` to
        finish, then are cancelled. The pool stays open: connections made with
        :meth:`connect` are untouched, and ``serve`` may be called again.
        """
        serving = list(self._serving.items())
        for cancel, _ in serving:
            cancel.cancel()
        for _, done in serving:
            await done.wait()

    # -- closing ------------------------------------------------------------
    async def _close_all(self) -> None:
        self._closed = True
        serving = list(self._serving.items())
        for cancel, _ in serving:
            cancel.cancel()
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_GRACE + self._max_drain):
            # serve() calls running in nurseries outside the pool: let their handlers unwind
            # (cancelled, closing their own connections) before we force-close what is left.
            for _, done in serving:
                await done.wait()
        with trio.CancelScope(shield=True):
            for listener in list(self._listeners):
                await trio.aclose_forcefully(listener)
            for conn in list(self._conns.values()):
                await trio.aclose_forcefully(conn)

    @property
    def connections(self) -> list[Connection]:
        """The connections this pool owns that are still open."""
        return list(self._conns.values())

    @property
    def listeners(self) -> list[PoolListener]:
        """The listeners this pool owns that are still open (those of running :meth:`serve` calls too:
        ``listener.denied`` counts the peers their access rules refused)."""
        return list(self._listeners)


async def _finish_and_run_handler(
    finish: Callable[[], Awaitable[Any]],
    register: Callable[[Connection], Awaitable[Any]] | None,
    handler: Handler,
    scope: HookScope,
    limit: trio.Semaphore | None,
    idle: tuple[IdleReaper, float | None],
) -> None:
    conn = None
    try:
        conn = await finish()
        if conn is not None and register is not None:
            conn = await register(conn)
    finally:
        if conn is None and limit is not None:
            limit.release()  # no handler will run to release it
    if conn is not None:
        await _run_handler(conn, handler, scope, limit, idle)


async def _run_handler(
    conn: Connection,
    handler: Handler,
    scope: HookScope,
    limit: trio.Semaphore | None = None,
    idle: tuple[IdleReaper, float | None] | None = None,
) -> None:
    try:
        if idle is None or idle[1] is None:
            await handler(conn)
        else:
            watch = idle[0].watch(conn, idle[1], handled=True)
            try:
                with watch.scope:
                    await handler(conn)
            finally:
                watch.done = True
    except Exception as exc:
        _log.error("handler for conn #%d raised %s: %s", conn.id, type(exc).__name__, exc, exc_info=exc)
        await scope.notify("conduit_handler_error", conn=conn, exc=exc)
    finally:
        while conn._upgraded is not None:  # start_tls() in the handler: close the TLS layer
            conn = conn._upgraded
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_GRACE) as cs:
                await conn.aclose()
            if cs.cancelled_caught:
                await trio.aclose_forcefully(conn)
        finally:
            if limit is not None:
                limit.release()


_KIND_WORDS: Final = {
    Kind.STREAM: ("a byte stream", "connect_stream"),
    Kind.DATAGRAM: ("a channel of messages", "connect_channel"),
}


def _check_kind(transport: Transport, ctx: Context, kind: Kind) -> None:
    """AddressError unless ``transport`` makes connections of ``kind`` with ``ctx``'s options."""
    made = transport.connection_kind(ctx.options)
    if made is not kind:
        wanted, method = _KIND_WORDS[kind]
        what, other = _KIND_WORDS[made]
        raise AddressError(
            f"{ctx.address}: {method}() needs {wanted}, but {transport.name} "
            f"({ctx.address.scheme}://) makes {what} here: use {other}() or connect()"
        )


async def _wrong_class(conn: Connection, expected: str) -> NoReturn:
    """Close ``conn`` and raise TypeError: its transport broke its word on its kind."""
    await trio.aclose_forcefully(conn)
    raise TypeError(f"{conn!r}: expected a {expected} from this transport, got a {type(conn).__name__}")


def _build_chain(
    proxies: Iterable[str | ProxyURL], transport: Transport, address: Address, scope: HookScope
) -> ProxyChain:
    """``ProxyChain.build``: the proxy layer is imported here, so a pool without proxies never loads it."""
    from .proxy._chain import ProxyChain

    return ProxyChain.build(proxies, transport, address, scope)


def _take_tls(transport: Transport, given: dict[str, object]) -> SecureLayer | None:
    """Remove ``tls=`` (streams) or ``dtls=`` (datagrams) from the options, unless the transport
    takes it itself: the layer to put over what the transport makes."""
    if "tls" not in given and "dtls" not in given:
        return None
    from .tls._api import take_tls_option

    return take_tls_option(transport, given)


def _with_tls(
    connect: Callable[[Context], Awaitable[Connection]], tls: SecureLayer
) -> Callable[[Context], Awaitable[Connection]]:
    """``connect``, then a (D)TLS client handshake on what it produced (within the connect timeout)."""

    async def connect_tls(ctx: Context) -> Connection:
        return await tls.client(await connect(ctx), ctx)

    return connect_tls


@asynccontextmanager
async def open_pool(
    *, plugins: Iterable[object] = (), drain_timeout: float | None = None
) -> AsyncIterator[Pool]:
    """Open a pool. ``plugins``: hook implementations for this pool only.
    ``drain_timeout``: the default of :meth:`Pool.serve`'s (seconds a draining
    server's handlers get to finish; ``None``: none, they are cancelled at once).

    Leaving the ``async with`` block cancels every task the pool runs
    (spawned handlers, datagram readers) and closes every connection and
    listener it handed out.
    """
    check_drain_timeout(drain_timeout)
    scope = global_scope().child(plugins)
    scope.transports  # noqa: B018 - build the registry now: a duplicate scheme fails here
    pool: Pool | None = None
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            pool = Pool(nursery, scope, drain_timeout=drain_timeout)
            try:
                yield pool
            except BaseException as exc:
                # Re-raised below, outside the nursery: the caller's `except ConnectionRefused`
                # must see the error itself, not an ExceptionGroup around it.
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Only once the pool's own tasks have unwound (closing their own connections):
        # closing a connection under a running handler would make it fail with
        # ClosedResourceError (logged as a handler error) instead of being cancelled.
        if pool is not None:
            await pool._close_all()
    if body_error is not None:
        raise body_error
