"""Where TLS meets the pool: the ``tls=`` option, ``handlers=`` by ALPN, and ``start_tls``.

The pool calls :func:`take_tls_option` before it resolves a transport's
options, then :func:`tls_client` on the connection a transport (or a proxy
chain) produced, or :func:`tls_listener` on the listener it made. The
``tls://`` transport uses the same two functions over ``tcp://``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

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

__all__ = ["alpn_handler", "start_tls", "take_tls_option", "tls_client", "tls_listener"]

Handler = Callable[[Any], Awaitable[object]]


def take_tls_option(transport: Transport, opts: dict[str, object]) -> TLSConfig | None:
    """Remove ``tls`` from keyword options (unless ``transport`` takes it itself) as a :class:`TLSConfig`.

    ``None`` when no TLS was asked for (absent, ``None`` or ``False``).
    """
    if any(o.name == "tls" for o in transport.options):
        return None
    value = opts.pop("tls", None)
    if value is None or value is False:
        return None
    if transport.kind is not Kind.STREAM:
        raise TypeError(f"tls= needs a stream transport; {transport.name} carries datagrams")
    return TLSConfig.coerce(value)


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

    ``handler`` (if any) runs when no protocol was agreed or none matches;
    without it such connections are closed (and reported as handler errors).
    Unless ALPN protocols were given, the server offers ``handlers``' keys, in
    order. ``opts`` are the serve() keyword options (changed in place).
    """
    if not handlers:
        raise ValueError("handlers= must map at least one ALPN protocol to a handler")
    table = dict(handlers)
    protocols = tuple(table)
    tls = opts.get("tls")
    if tls is not None and tls is not False:
        config = TLSConfig.coerce(tls)
        if config.alpn is None and config.builds_context:
            config = config.replace(alpn=protocols)
        opts["tls"] = config
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
