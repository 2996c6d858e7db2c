"""``tls://host:port`` (TLS over tcp) and ``tls+sctp://host:port`` (TLS over sctp).

A TLS transport is a layer (``Transport.layered_over``) over another stream
transport, found in the scope of each connect or listen (the pool's, a
listener's), with TLS on top. The URL's query and the keywords take the TLS
options (:data:`trio_conduit.tls.TLS_OPTIONS`: :class:`~trio_conduit.tls.TLSConfig`'s
fields, e.g. ``?cafile=ca.pem&alpn=h2``) and the inner transport's own
(``nodelay``, ...: the scope adds those, and says whether the inner transport is
available); ``tls=`` takes a whole ``TLSConfig`` (or an ``ssl.SSLContext``)
that the other options then amend.

Written as a third-party plugin must be: it imports ``trio_conduit``,
``trio_conduit.transport`` and ``trio_conduit.tls`` only, the last one when
first needed (importing the TLS layer costs start-up time a plain ``tcp://``
user should not pay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from trio_conduit import Address, Connection, Kind, TransportUnavailable
from trio_conduit.transport import (
    Availability,
    Capabilities,
    Context,
    Listener,
    Option,
    Transport,
    URLParts,
    hookimpl,
    parse_host_port,
)

if TYPE_CHECKING:
    from trio_conduit.tls import TLSConfig, TLSConfigCache

K = TypeVar("K")
V = TypeVar("V")


def _remember(cache: dict[K, V], key: K, value: V) -> None:
    """``cache[key] = value``, the cache emptied first when it is full (256 entries)."""
    if len(cache) >= 256:
        cache.clear()
    cache[key] = value


class TLSTransport(Transport):
    """TLS over the stream transport registered for ``inner`` (looked up when used)."""

    kind = Kind.STREAM
    capabilities = Capabilities(half_close=True, device=True, ip_options=True)  # half-close: close_notify

    def __init__(self, scheme: str, inner: str, name: str, description: str) -> None:
        self.schemes = (scheme,)
        self.inner_scheme = inner
        self.layered_over = inner
        self._configs: TLSConfigCache | None = None
        # By the identity of a connect's resolved options (the pool hands out the same
        # mapping for the same URL and keywords), what config() and _inner() made of them.
        # Each entry holds the objects whose ids make its key, so no id is reused meanwhile.
        self._config_by_options: dict[int, tuple[Mapping[str, object], TLSConfig]] = {}
        self._inner_by_options: dict[tuple[int, int, int], tuple[Any, ...]] = {}
        self._options: tuple[Option, ...] | None = None
        self.name = name
        self.description = description

    # -- options and addresses ------------------------------------------------
    def _below(self) -> Transport | None:
        """The transport beneath, as the scope that registered this one has it."""
        return self.scope.transport_for(self.inner_scheme) if self.scope is not None else None

    @property
    def options(self) -> tuple[Option, ...]:  # type: ignore[override]  # with the inner transport's
        if self._options is None:
            from trio_conduit.tls import TLS_OPTIONS, layered_options

            inner = self._below()
            if inner is None:
                return TLS_OPTIONS  # not kept: the inner transport may be registered later
            self._options = layered_options(TLS_OPTIONS, inner)
        return self._options

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    def availability(self) -> Availability:
        inner = self._below()
        if inner is None:
            return Availability(
                False, f"needs the {self.inner_scheme}:// transport, which no plugin registers"
            )
        return inner.availability()

    def loopback_url(self, tmpdir: str) -> str | None:
        if self.inner_scheme != "tcp":
            return None
        from trio_conduit.tls import self_signed_certificate

        cert, key = self_signed_certificate("127.0.0.1").write(tmpdir, "conduit-check")
        # The same file is the server's certificate and the client's trust anchor.
        return f"{self.schemes[0]}://127.0.0.1:0?certfile={cert}&keyfile={key}&cafile={cert}"

    # -- connecting -------------------------------------------------------------
    def _inner(self, ctx: Context) -> tuple[Transport, Context]:
        key = (id(ctx.options), id(ctx.address), id(ctx.scope))
        hit = self._inner_by_options.get(key)
        if hit is not None:
            inner, options, address = hit[3:]
        else:
            inner = ctx.scope.transport_for(self.inner_scheme)
            if inner is None or inner.kind is not Kind.STREAM:
                raise TransportUnavailable(
                    0,
                    f"{self.schemes[0]}:// needs a {self.inner_scheme}:// stream transport, "
                    "which no plugin registers",
                    address=str(ctx.address),
                )
            names = {o.name for o in inner.options}
            options = MappingProxyType({k: v for k, v in ctx.options.items() if k in names})
            query = tuple((k, v) for k, v in ctx.address.query if k in names)
            address = ctx.address.replace(scheme=self.inner_scheme, query=query)
            entry = (ctx.options, ctx.address, ctx.scope, inner, options, address)
            _remember(self._inner_by_options, key, entry)
        inner_ctx = ctx.retarget(inner, address, options)
        return inner, inner_ctx

    def config(self, ctx: Context) -> TLSConfig:
        """The TLS options for this connect/listen: ``tls=`` amended by the other TLS options."""
        known = self._config_by_options.get(id(ctx.options))
        if known is not None:
            return known[1]
        if self._configs is None:
            from trio_conduit.tls import TLSConfigCache

            self._configs = TLSConfigCache()
        config = self._configs.config(ctx.options)
        _remember(self._config_by_options, id(ctx.options), (ctx.options, config))
        return config

    def inner_context(self, ctx: Context) -> Context:
        return self._inner(ctx)[1]

    async def connect_over(self, conn: Connection, ctx: Context) -> Connection:
        return await self._handshake(conn, ctx, self.config(ctx))

    async def _handshake(self, conn: Connection, ctx: Context, config: TLSConfig) -> Connection:
        from trio_conduit.tls import tls_client

        return await tls_client(conn, config, ctx, transport_name=self.schemes[0])

    async def connect(self, ctx: Context) -> Connection:
        config = self.config(ctx)  # bad TLS options fail before a connection is opened
        inner, inner_ctx = self._inner(ctx)
        return await self._handshake(await inner.connect(inner_ctx), ctx, config)

    async def listen(self, ctx: Context) -> Listener:
        from trio_conduit.tls import tls_listener

        config = self.config(ctx)
        inner, inner_ctx = self._inner(ctx)
        listener = await inner.listen(inner_ctx)
        address = listener.address.replace(scheme=self.schemes[0], query=ctx.address.query)
        try:
            return tls_listener(listener, config, ctx, transport_name=self.schemes[0], address=address)
        except BaseException:  # a certificate that does not load: no listener at all
            await trio.aclose_forcefully(listener)
            raise


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [
        TLSTransport("tls", "tcp", "TLS", "TLS over tcp:// (trio.SSLStream; hooks may await)"),
        TLSTransport("tls+sctp", "sctp", "TLS/SCTP", "TLS over sctp://"),
    ]
