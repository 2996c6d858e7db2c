"""The hook catalogue: every hook a plugin can implement, grouped by lifecycle.

Implement a hook with ``@trio_conduit.hookimpl`` on a function or method named
after the spec. Implementations may take any subset of the spec's parameters.

Two calling conventions:

* **Registration hooks** (``conduit_addhooks``, ``conduit_transports``,
  ``conduit_proxy_types``, ``conduit_benchmarks``) are called synchronously,
  once, when a pool or listener builds its registry (``conduit_benchmarks``:
  when ``conduit bench`` starts). They return objects.
* **Lifecycle hooks** (everything else) are *awaited* by trio-conduit's own
  dispatcher: an implementation may be ``async def`` and may take its time.
  Implementations run in pluggy's call order (``tryfirst`` ones first,
  ``trylast`` ones last, otherwise the later registered first); for a
  ``firstresult`` hook the first implementation whose *awaited* value is not
  ``None`` wins and the rest are not called.
  Wrappers (``wrapper=True``/``hookwrapper=True``) are not supported on
  lifecycle hooks and are refused when the plugin is registered.

Hooks can be registered globally (the ``trio_conduit`` entry-point group, or
:func:`trio_conduit.register_plugin`), per pool (``open_pool(plugins=[...])``)
or per listener (``pool.serve(..., plugins=[...])``); a narrower scope sees all
the hooks of the wider ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import ssl

    import trio
    from cryptography import x509

    from ._address import Address
    from ._benchmark import Benchmark
    from ._connection import Connection
    from ._sockets import SocketRole
    from ._transport import Transport
    from .proxy import ProxyType
    from .tls import Certificate, ClientHello, SessionKey, TLSConnection, TLSHandshake

hookspec = pluggy.HookspecMarker("trio_conduit")

# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------


@hookspec(historic=True)
def conduit_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add this plugin's own hook specifications: ``pluginmanager.add_hookspecs(module)``.

    Called once for each plugin manager the plugin is registered with (the
    global one and each narrower scope's), as soon as the plugin is
    registered, so implementations of the new hooks in any plugin are checked
    against them. The hooks a plugin adds this way are its own to call
    (``ctx.scope.pm.hook.NAME()``); they are synchronous. The ``udt://``
    plugin adds ``conduit_congestion_controls`` this way. (pytest's
    ``pytest_addhooks``.) Synchronous.
    """


@hookspec
def conduit_transports() -> Sequence[Transport]:  # type: ignore[empty-body]
    """Return the transports this plugin provides.

    Each :class:`~trio_conduit.Transport` names its URL scheme(s), its kind
    (stream or datagram), its capabilities and options, an availability probe,
    and async ``connect``/``listen``. Two plugins registering the same scheme
    is a :class:`~trio_conduit.PluginError`. Synchronous.
    """


@hookspec
def conduit_benchmarks() -> Sequence[Benchmark]:  # type: ignore[empty-body]
    """Return the benchmarks this plugin adds to ``conduit bench``.

    Each :class:`~trio_conduit.Benchmark` has a ``name`` (what ``--only``
    chooses; two plugins giving the same name is a
    :class:`~trio_conduit.PluginError`), a one-line ``help``, ``run(options)``
    returning its figures as a dict (``options``: the parsed ``conduit bench``
    arguments), ``format(results)`` giving the lines to print, and
    ``default`` (runs without ``--only``). They run after trio-conduit's own,
    in plugin registration order. Keep the plugin cheap to import: import the
    benchmark code inside the implementation. Called by ``conduit bench``
    only. Synchronous.
    """


# --------------------------------------------------------------------------
# Sockets
# --------------------------------------------------------------------------


@hookspec
async def conduit_socket_created(
    sock: trio.socket.SocketType, transport: Transport, address: Address, role: SocketRole
) -> None:
    """A kernel socket was just made by the shared socket path.

    Called after the core has applied its own options (``SO_REUSEADDR``,
    ``SO_BINDTODEVICE``, ``IP_OPTIONS``, ``SO_BROADCAST``, the local bind) and
    before ``connect``/``listen``. Set socket options here. Raising aborts the
    attempt: the socket is closed and the error propagates to the caller (for
    an accepted socket: it is logged and the connection is dropped; the
    listener goes on).
    ``role`` says whether the socket will connect, listen, or is an accepted one.
    """


# --------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------


@hookspec
async def conduit_connection_made(conn: Connection) -> None:
    """A connection was established (connected, or accepted by a listener).

    ``conn.id`` and ``conn.info`` are set. Raising closes the connection and
    the error propagates to whoever made it (for an accepted connection: it is
    logged and the connection is dropped; the listener goes on).
    """


@hookspec
async def conduit_connection_lost(conn: Connection, exc: BaseException | None) -> None:
    """A connection was closed. ``exc`` is what ended it, if anything did.

    Called once per connection, after its resources are released, inside a
    shielded cancel scope bounded by a short deadline: do not block here.
    Errors raised here are logged and swallowed.
    """


@hookspec
async def conduit_handler_error(conn: Connection | None, exc: BaseException) -> None:
    """A connection handler (``pool.spawn``/``pool.serve``) raised ``exc``.

    The error has already been logged; the connection will be closed and the
    listener keeps serving. For ``pool.spawn`` whose connect failed, ``conn``
    is ``None`` and ``exc`` is the connect error. Errors raised here are logged
    and swallowed.
    """


# --------------------------------------------------------------------------
# Proxies
# --------------------------------------------------------------------------


@hookspec
def conduit_proxy_types() -> Sequence[ProxyType]:  # type: ignore[empty-body]
    """Return the proxy types this plugin provides: the schemes ``proxies=[...]`` accepts.

    Each :class:`~trio_conduit.proxy.ProxyType` names its URL scheme(s) and
    default port, parses its URLs (user information included: keep the
    password out of every message), and opens a tunnel through a stream
    connected to the proxy (``async open(stream, proxy, target, hop)``). A
    type with ``datagrams = True`` also relays ``udp://`` targets
    (``open_datagrams``). trio-conduit's own ``http``, ``socks4``,
    ``socks4a``, ``socks5`` and ``socks5h`` come from a default plugin
    (``trio_conduit.proxy._plugin``) through this same hook. Two plugins
    registering the same scheme is a :class:`~trio_conduit.PluginError`.
    Synchronous; called once per scope, when its first proxied connect is made.
    """


# --------------------------------------------------------------------------
# TLS (after Apache Traffic Server's TLS hooks; see the "TLS hooks" page)
#
# Every TLS hook gets ``handshake``: a trio_conduit.tls.TLSHandshake, the
# connection's TLS state as hooks see it (side, peer, config, hello,
# server_name, stash) with its decisions: ``handshake.reject(reason)``,
# ``handshake.tunnel(url)``, ``handshake.use_context(ctx)``,
# ``handshake.use_certificate(cert)``, ``handshake.restrict_alpn([...])``.
# Any hook may take its time (it is awaited: the handshake waits, others go
# on) within ``handshake_timeout``. A hook that raises refuses the connection:
# it is closed and the error is a TLSRejected (TLSError) naming the hook.
# --------------------------------------------------------------------------


@hookspec
async def conduit_tls_start(handshake: TLSHandshake) -> None:
    """Server: a connection was accepted for TLS; no byte has been read yet (ATS ``VCONN_START``).

    Reject it (``handshake.reject("...")``), delay it (await something), or
    make it a blind tunnel from the first byte (``handshake.tunnel(url)``).
    ``handshake.conn.info.remote`` is the client's address.
    """


@hookspec
async def conduit_tls_client_hello(handshake: TLSHandshake, hello: ClientHello) -> None:
    """Server: the client's ClientHello arrived, parsed by trio-conduit before OpenSSL sees it
    (ATS ``SSL_CLIENT_HELLO``).

    ``hello`` is a :class:`~trio_conduit.tls.ClientHello`: ``server_name``,
    ``alpn_protocols``, ``supported_versions``, ``cipher_suites``,
    ``extensions``, ``raw``, ``ja3``. Decide here: reject, choose the
    server context (``handshake.use_context``) or certificate, restrict ALPN,
    or tunnel (``handshake.tunnel("tcp://origin:443")``: the hello and
    everything after it go to the origin undecrypted, and back).
    """


@hookspec(firstresult=True)
async def conduit_tls_servername(
    handshake: TLSHandshake, server_name: str
) -> ssl.SSLContext | Certificate | None:
    """Server: the client asked for ``server_name`` (SNI); called only when it sent one
    (ATS ``SSL_SERVERNAME``). ``firstresult``.

    Return an ``ssl.SSLContext`` (server side) or a
    :class:`~trio_conduit.tls.Certificate` to use for this name, or ``None``
    to leave the choice to later hooks and the listener's own certificate.
    May also reject or tunnel, like ``conduit_tls_client_hello``.
    """


@hookspec(firstresult=True)
async def conduit_tls_certificate(
    handshake: TLSHandshake, server_name: str | None
) -> Certificate | ssl.SSLContext | None:
    """Server: choose the certificate to present, if no earlier hook chose a context or
    certificate (ATS ``SSL_CERT``). ``firstresult``.

    Return a :class:`~trio_conduit.tls.Certificate` (PEM chain and key:
    load it from disk, a store, or make one), or an ``ssl.SSLContext``, or
    ``None`` for the listener's own. ``server_name`` is ``None`` when the
    client sent no SNI. A certificate is combined with the listener's other
    options; contexts built this way are cached.
    """


@hookspec(firstresult=True)
async def conduit_tls_alpn(handshake: TLSHandshake, offered: list[str]) -> str | None:
    """Server: the client offers these ALPN protocols, in its order of preference. ``firstresult``.

    Return the one to agree on (it must be among those offered, or the
    handshake agrees on none), or ``None`` to let the listener's list decide.
    Called only when the client offers ALPN.
    """


@hookspec
async def conduit_tls_outbound_start(handshake: TLSHandshake) -> None:
    """Client: connected, about to start the TLS handshake (ATS ``VCONN_OUTBOUND_START``).

    Override options for this connection: ``handshake.config =
    handshake.config.replace(alpn=["h2"])``, ``handshake.server_name = "..."``
    (the SNI sent and the name verified), ``handshake.session = ...`` (resume
    this session), ``handshake.use_context(ctx)`` (a client context of your own).
    """


@hookspec(firstresult=True)
async def conduit_tls_session_get(handshake: TLSHandshake, key: SessionKey) -> ssl.SSLSession | None:
    """Client: a session to resume with this peer, if you keep one. ``firstresult``.

    ``key`` is a :class:`~trio_conduit.tls.SessionKey` (``peer`` as
    ``host:port``, ``server_name``). Return ``None`` to use trio-conduit's own
    cache. A session only resumes with the ``ssl.SSLContext`` that made it;
    one that does not fit is ignored (a full handshake follows).
    """


@hookspec
async def conduit_tls_session_put(handshake: TLSHandshake, key: SessionKey, session: ssl.SSLSession) -> None:
    """Client: a resumable session for ``key`` was received (TLS 1.2: at the end of the
    handshake; TLS 1.3: when the server's ticket arrives, with data). Errors are logged
    and ignored."""


@hookspec
async def conduit_tls_session_remove(handshake: TLSHandshake, key: SessionKey) -> None:
    """Client: a handshake that offered a session for ``key`` failed; forget it.
    Errors are logged and ignored."""


@hookspec
async def conduit_tls_verify_peer(handshake: TLSHandshake, chain: list[x509.Certificate]) -> None:
    """Both sides: the peer presented certificates, and OpenSSL's checks (if enabled) and
    the SHA-256 pins passed (ATS ``SSL_VERIFY_CLIENT`` / ``SSL_VERIFY_SERVER``).

    ``chain`` is the verified chain, leaf first, as ``cryptography`` objects
    (without verification: the chain as the peer sent it). Reject with
    ``handshake.reject("...")`` (a :class:`~trio_conduit.tls.TLSRejected`) —
    the connection is closed before any application data is exchanged.
    Called once the handshake has finished, since Python's ``ssl`` has no
    verification callback; ``handshake.side`` says which direction.
    """


@hookspec
async def conduit_tls_handshake_done(handshake: TLSHandshake, conn: TLSConnection) -> None:
    """Both sides: the handshake is done; ``conn.info.tls`` has the facts. Raising
    closes the connection and the error propagates (accepted ones are dropped)."""


@hookspec
async def conduit_tls_close(handshake: TLSHandshake, exc: BaseException | None) -> None:
    """Both sides: a TLS connection ended (ATS ``VCONN_CLOSE`` / ``VCONN_OUTBOUND_CLOSE``):
    closed, failed during its handshake (``exc`` says why), or a blind tunnel that ended.

    Called once per connection that reached ``start`` / ``outbound_start``,
    in a shielded scope with a short deadline. Release what the stash holds
    here. Errors are logged and ignored.
    """
