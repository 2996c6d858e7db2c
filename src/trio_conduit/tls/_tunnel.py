"""Blind tunnels (ATS ``TSVConnTunnel``): relay a TLS connection to an origin without decrypting it.

The bytes already read (the ClientHello, when the decision came from it) go
to the origin first; then both directions are copied until both have ended.
An end in one direction is passed on as a half-close where the other stream
can half-close; otherwise, and on any error, both are closed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .._address import Address, resolve_options, split_url
from .._errors import AddressError
from .._sockets import SocketOptions, SocketRole
from .._transport import Context

if TYPE_CHECKING:
    from .._plugins import HookScope
    from .._trace import Tracer
    from ._handshake import TLSHandshake

__all__ = ["connect_target", "run_tunnel", "splice"]

_log = logging.getLogger("trio_conduit.tls")
_CHUNK = 256 * 1024


async def connect_target(
    target: object, *, scope: HookScope, tracer: Tracer, nursery: trio.Nursery | None = None
) -> trio.abc.Stream:
    """A stream to ``target``: a URL (through the scope's transports) or a stream already connected."""
    if isinstance(target, trio.abc.Stream):
        return target
    if not isinstance(target, (str, Address)):
        raise TypeError(f"a tunnel target is a URL or a trio.abc.Stream, not {target!r}")
    parts = split_url(str(target))
    transport = scope.transport_for(parts.scheme)
    if transport is None:
        raise AddressError(f"{parts.text!r}: unknown scheme {parts.scheme!r} for a tunnel origin")
    address = transport.parse_address(parts, listening=False)
    options = resolve_options(address, {o.name: o for o in transport.options}, address.query, {})
    ctx = Context(
        transport,
        address,
        options,
        SocketOptions(),
        scope,
        tracer,
        SocketRole.CONNECT,
        tracer.next_conn_id(),
        tracer.next_event_id(),
        nursery=nursery,
    )
    conn = await transport.connect(ctx)
    if not isinstance(conn, trio.abc.Stream):
        await conn.aclose()
        raise AddressError(f"{address}: a tunnel origin must be a stream transport")
    return conn


async def _pump(
    src: trio.abc.Stream, dst: trio.abc.Stream, counts: list[int], i: int, cancel: trio.CancelScope
) -> None:
    try:
        while data := await src.receive_some(_CHUNK):
            await dst.send_all(data)
            counts[i] += len(data)
        if isinstance(dst, trio.abc.HalfCloseableStream):
            await dst.send_eof()
        else:
            cancel.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        cancel.cancel()


async def splice(a: trio.abc.Stream, b: trio.abc.Stream) -> tuple[int, int]:
    """Copy ``a`` → ``b`` and ``b`` → ``a`` until both end; (bytes a→b, bytes b→a). Closes neither."""
    counts = [0, 0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, a, b, counts, 0, nursery.cancel_scope)
        nursery.start_soon(_pump, b, a, counts, 1, nursery.cancel_scope)
    return counts[0], counts[1]


async def run_tunnel(
    hs: TLSHandshake, target: object, buffered: bytes, *, tracer: Tracer, nursery: trio.Nursery | None = None
) -> None:
    """Relay ``hs.conn`` to ``target`` (``buffered`` first) until both directions end; close both."""
    conn = hs.conn
    origin: trio.abc.Stream | None = None
    exc: BaseException | None = None
    try:
        origin = await connect_target(target, scope=hs.scope, tracer=tracer, nursery=nursery)
        tracer.info(
            "TLS blind tunnel conn #%d from %s (SNI %s) to %s",
            conn.id,
            hs.peer,
            hs._valid_server_name() or "-",
            target,
        )
        if buffered:
            await origin.send_all(buffered)
        up, down = await splice(conn, origin)
        tracer.debug("TLS blind tunnel conn #%d ended: %d bytes to the origin, %d back", conn.id, up, down)
    except BaseException as e:
        exc = e
        raise
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(conn)
            if origin is not None:
                await trio.aclose_forcefully(origin)
            await hs.finished(exc)
