"""Where TLS meets the pool: the ``tls=`` and ``dtls=`` options, ``handlers=`` by ALPN, ``start_tls``.

The pool calls :func:`take_tls_option` before it resolves a transport's
options: ``tls=`` on a stream transport, ``dtls=`` on a datagram one, as a
:class:`SecureLayer`. Its ``client`` runs :func:`tls_client` (or
:func:`~._dtls.dtls_client`) on the connection a transport (or a proxy chain)
produced, its ``listener`` :func:`tls_listener` (or
:func:`~._dtls.dtls_listener`) on the listener it made. The ``tls://`` and
``dtls://`` transports use the same functions over ``tcp://`` and ``udp://``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

import trio

from .._address import Address, split_url
from .._connection import Connection, Kind, Listener, StreamConnection
from .._plugins import global_scope
from .._trace import Tracer
from ._config import TLSConfig, build_context
from ._errors import TLSError
from ._handshake import TunnelPlan, client_handshake, server_handshake
from ._listener import TLSListener
from ._stream import TLSConnection

if TYPE_CHECKING:
    from .._transport import Context, Transport

__all__ = ["SecureLayer", "alpn_handler", "start_tls", "take_tls_option", "tls_client", "tls_listener"]

Handler = Callable[[Any], Awaitable[object]]


@final
@dataclass(frozen=True)
class SecureLayer:
    """``tls=`` over a stream transport, or ``dtls=`` over a datagram one: what the pool puts
    over the connection or the listener the transport (or a proxy chain) made."""

    config: TLSConfig
    datagram: bool

    async def client(self, conn: Connection, ctx: Context) -> Connection:
        """The client handshake over ``conn`` (closed if it fails)."""
        if self.datagram:
            from ._dtls import dtls_client  # (DTLS needs pyOpenSSL: loaded only for DTLS)

            return await dtls_client(conn, self.config, ctx)
        return await tls_client(conn, self.config, ctx)

    def listener(self, inner: Listener, ctx: Context) -> Listener:
        """The server over ``inner`` (the caller closes ``inner`` if this raises)."""
        if self.datagram:
            from ._dtls import dtls_listener

            return dtls_listener(inner, self.config, ctx)
        return tls_listener(inner, self.config, ctx)


def take_tls_option(transport: Transport, opts: dict[str, object]) -> SecureLayer | None:
    """Remove ``tls`` (a stream transport) or ``dtls`` (a datagram one) from keyword options,
    unless ``transport`` takes it itself, as a :class:`SecureLayer`.

    Either takes what :meth:`TLSConfig.coerce` takes (``dtls=``: not an ``ssl.SSLContext``,
    Python's ``ssl`` has no DTLS). ``None`` when neither was asked for (absent, ``None`` or
    ``False``); the wrong one for the transport's kind is a ``TypeError`` now.
    """
    if any(o.name == "tls" for o in transport.options):
        return None
    tls = opts.pop("tls", None)
    dtls = opts.pop("dtls", None)
    tls = None if tls is False else tls
    dtls = None if dtls is False else dtls
    if tls is None and dtls is None:
        return None
    datagram = transport.kind is not Kind.STREAM
    if tls is not None and dtls is not None:
        raise TypeError("give tls= (stream transports) or dtls= (datagram transports), not both")
    if tls is not None and datagram:
        raise TypeError(f"tls= needs a stream transport; {transport.name} carries datagrams: use dtls=")
    if dtls is not None and not datagram:
        raise TypeError(f"dtls= needs a datagram transport; {transport.name} is a byte stream: use tls=")
    config = TLSConfig.coerce(tls if tls is not None else dtls)
    if datagram and not config.builds_context:
        raise TypeError("dtls= cannot take an ssl.SSLContext (Python's ssl has no DTLS): give the options")
    return SecureLayer(config, datagram)


async def tls_client(
    conn: Connection, config: TLSConfig, ctx: Context, *, transport_name: str | None = None
) -> TLSConnection:
    """A client handshake over ``conn`` (closed if it fails), with ``ctx``'s hooks, tracer and address."""
    if not isinstance(conn, StreamConnection):
        await trio.aclose_forcefully(conn)
        raise TypeError(f"TLS needs a stream connection, not {conn!r}")
    return await client_handshake(
        conn, config, scope=ctx.scope, tracer=ctx.tracer, address=ctx.address, transport_name=transport_name
    )


def tls_listener(
    inner: Listener,
    config: TLSConfig,
    ctx: Context,
    *,
    transport_name: str | None = None,
    address: Address | None = None,
) -> TLSListener:
    """TLS over what ``inner`` accepts: handshakes run concurrently in the pool's nursery.

    ``address`` is what the listener reports as bound (default: the inner listener's).
    A certificate given in ``config`` is loaded now: a missing file or a wrong key
    password raises :class:`TLSError` here, before anything is announced as
    listening (the caller closes ``inner``).
    """
    if config.builds_context and config.has_certificate():
        build_context(config, "server")  # cached: the first handshake uses this one
    return TLSListener(
        inner,
        config,
        scope=ctx.scope,
        tracer=ctx.tracer,
        nursery=ctx.nursery,
        transport_name=transport_name,
        address=address,
    )


def alpn_handler(
    url: object, handler: Handler | None, handlers: Mapping[str, Handler], opts: dict[str, object]
) -> Handler:
    """One handler that runs ``handlers[negotiated ALPN protocol]`` (ATS ``SSLNextProtocolSet``).

    ``tls=`` or ``dtls=`` (or the URL's own TLS) carries the protocols.
    ``handler`` (if any) runs when no protocol was agreed or none matches;
    without it such connections are closed (and reported as handler errors).
    Unless ALPN protocols were given, the server offers ``handlers``' keys, in
    order. ``opts`` are the serve() keyword options (changed in place).
    """
    if not handlers:
        raise ValueError("handlers= must map at least one ALPN protocol to a handler")
    table = dict(handlers)
    protocols = tuple(table)
    key = "dtls" if opts.get("dtls") not in (None, False) else "tls"
    tls = opts.get(key)
    if tls is not None and tls is not False:
        config = TLSConfig.coerce(tls)
        if config.alpn is None and config.builds_context:
            config = config.replace(alpn=protocols)
        opts[key] = config
    elif "alpn" not in opts:
        query = split_url(url.url() if isinstance(url, Address) else str(url)).query
        if not any(key == "alpn" for key, _ in query):
            opts["alpn"] = protocols

    async def by_alpn(conn: Connection) -> object:
        facts = conn.info.tls
        protocol = facts.alpn if facts is not None else None
        chosen = table.get(protocol) if protocol else None
        if chosen is None:
            chosen = handler
        if chosen is None:
            raise TLSError(
                f"conn #{conn.id}: no handler for ALPN protocol {protocol!r} "
                f"(handlers: {', '.join(protocols)})",
                reason="NO_ALPN_HANDLER",
            )
        return await chosen(conn)

    return by_alpn


async def start_tls(
    conn: StreamConnection, tls: object = None, *, server_side: bool = False, **options: object
) -> TLSConnection:
    """Upgrade a live stream connection to TLS (STARTTLS; nsock's ``nsock_reconnect_ssl``).

    See :meth:`trio_conduit.StreamConnection.start_tls`.
    """
    config = TLSConfig.coerce(True if tls is None else tls)
    if options:
        config = config.replace(**options)
    owner: Any = conn._owner
    scope = getattr(owner, "scope", None) or global_scope()
    tracer = getattr(owner, "tracer", None) or Tracer()
    if server_side:
        result = await server_handshake(conn, config, scope=scope, tracer=tracer, address=conn.address)
        if isinstance(result, TunnelPlan):
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(conn)
                await result.handshake.finished(None)
            raise TLSError(
                "a blind tunnel can only be decided on a listener, not in start_tls()", reason="REJECTED"
            )
        tls_conn = result
    else:
        tls_conn = await client_handshake(conn, config, scope=scope, tracer=tracer, address=conn.address)
    replace = getattr(owner, "replace", None)
    if replace is not None:
        replace(conn, tls_conn)  # the pool now tracks the TLS connection under the same id
    conn._upgraded = tls_conn
    return tls_conn
