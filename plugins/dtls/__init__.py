"""``dtls://host:port`` — DTLS over ``udp://``: whole messages, encrypted, with the TLS hooks.

A layer (``Transport.layered_over``) over the datagram transport registered
for ``udp``, as ``tls://`` is over ``tcp://``. Options: the TLS ones
(:data:`trio_conduit.tls.TLS_OPTIONS`, same names and defaults: verification
on), ``mtu`` (the ciphertext MTU to start from) and ``queue`` (datagrams held
per association on a server), and the inner transport's own. A client's
association is a handshake over a connected ``udp://`` channel; a server
is the inner transport's listener whose socket the DTLS listener takes over
to serve every peer from it (:func:`trio_conduit.tls.dtls_listener`:
stateless cookies first). ``dtls=`` on ``unix+dgram://`` or on ``udp://``
through a SOCKS5 proxy is the pool's (the same two functions).

Written as a third-party plugin must be: it imports ``trio_conduit``,
``trio_conduit.transport`` and ``trio_conduit.tls`` only, the last when
first needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

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

_OWN = (
    Option.count("mtu", 1472, "ciphertext MTU to start from, bytes (falls back after losses; default 1472)"),
    Option.count("queue", 64, "server: datagrams held per association before dropping (default 64)"),
)


class DTLSTransport(Transport):
    """DTLS over the datagram transport registered for ``udp`` (looked up when used)."""

    schemes = ("dtls",)
    name = "DTLS"
    kind = Kind.DATAGRAM
    capabilities = Capabilities(message_boundaries=True, device=True, ip_options=True)
    description = "DTLS over udp:// (pyOpenSSL; stateless cookies; hooks may await)"
    inner_scheme = "udp"
    layered_over = "udp"

    def __init__(self) -> None:
        self._options: tuple[Option, ...] | None = None
        self._configs: TLSConfigCache | None = None

    def _below(self) -> Transport | None:
        return self.scope.transport_for(self.inner_scheme) if self.scope is not None else None

    @property
    def options(self) -> tuple[Option, ...]:  # type: ignore[override]  # with the inner transport's
        if self._options is None:
            from trio_conduit.tls import TLS_OPTIONS, layered_options

            inner = self._below()
            if inner is None:
                return TLS_OPTIONS + _OWN  # not kept: the inner transport may be registered later
            self._options = layered_options(TLS_OPTIONS + _OWN, inner)
        return self._options

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    def availability(self) -> Availability:
        inner = self._below()
        if inner is None:
            return Availability(False, "needs the udp:// transport, which no plugin registers")
        try:
            from trio_conduit.tls import dtls_versions
        except ImportError as exc:  # pragma: no cover - pyOpenSSL is a dependency
            return Availability(False, f"needs pyOpenSSL: {exc}")
        found = inner.availability()
        if not found.available:
            return found
        return Availability(True, dtls_versions().reason)

    def loopback_url(self, tmpdir: str) -> str | None:
        from trio_conduit.tls import self_signed_certificate

        cert, key = self_signed_certificate("127.0.0.1").write(tmpdir, "conduit-check-dtls")
        return f"dtls://127.0.0.1:0?certfile={cert}&keyfile={key}&cafile={cert}"

    # -- options ------------------------------------------------------------------
    def config(self, ctx: Context) -> TLSConfig:
        """The TLS options for this connect/listen: ``tls=`` amended by the other TLS options."""
        if self._configs is None:
            from trio_conduit.tls import TLSConfigCache

            self._configs = TLSConfigCache()
        return self._configs.config(ctx.options)

    def inner_context(self, ctx: Context) -> Context:
        inner = ctx.scope.transport_for(self.inner_scheme)
        if inner is None or inner.kind is not Kind.DATAGRAM:
            raise TransportUnavailable(
                0,
                "dtls:// needs a udp:// datagram transport, which no plugin registers",
                address=str(ctx.address),
            )
        names = {o.name for o in inner.options}
        options = {k: v for k, v in ctx.options.items() if k in names}
        options["connected"] = True
        query = tuple((k, v) for k, v in ctx.address.query if k in names)
        address = ctx.address.replace(scheme=self.inner_scheme, query=query)
        return ctx.retarget(inner, address, MappingProxyType(options))

    # -- connecting ---------------------------------------------------------------
    async def connect_over(self, conn: Connection, ctx: Context) -> Connection:
        from trio_conduit.tls import dtls_client

        return await dtls_client(
            conn, self.config(ctx), ctx, transport_name="dtls", mtu=ctx.int_option("mtu")
        )

    async def connect(self, ctx: Context) -> Connection:
        from trio_conduit.tls import dtls_client

        config = self.config(ctx)  # bad TLS options fail before a socket is opened
        inner_ctx = self.inner_context(ctx)
        conn = await inner_ctx.transport.connect(inner_ctx)
        return await dtls_client(conn, config, ctx, transport_name="dtls", mtu=ctx.int_option("mtu"))

    async def listen(self, ctx: Context) -> Listener:
        from trio_conduit.tls import dtls_listener

        config = self.config(ctx)
        inner_ctx = self.inner_context(ctx)
        listener = await inner_ctx.transport.listen(inner_ctx)
        address = listener.address.replace(scheme="dtls", query=ctx.address.query)
        try:
            return dtls_listener(
                listener,
                config,
                ctx,
                transport_name="dtls",
                address=address,
                mtu=ctx.int_option("mtu"),
                queue=ctx.int_option("queue"),
            )
        except BaseException:  # a certificate that does not load: no listener at all
            await trio.aclose_forcefully(listener)
            raise


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [DTLSTransport()]
