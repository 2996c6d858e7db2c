"""``udp://host:port`` — UDP datagram channels with connected-socket semantics."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from trio_conduit import Address, Connection, Kind, PermissionDenied
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
    probe_socket,
)


class UDPTransport(Transport):
    schemes = ("udp",)
    name = "UDP"
    kind = Kind.DATAGRAM
    capabilities = Capabilities(
        message_boundaries=True, broadcast=True, unconnected=True, device=True, ip_options=True
    )
    options = (
        Option.boolean(
            "connected",
            True,
            "connect the socket: the URL is the default peer and datagrams "
            "from anyone else are dropped; false: send() goes to the URL, receive() from anyone",
        ),
        Option.count("max_size", 65536, "largest datagram received whole"),
        Option.count("queue", 256, "listener: datagrams held per peer before dropping"),
    )
    description = "UDP datagrams; connected channels, or send_to/receive_from"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    async def connect(self, ctx: Context) -> Connection:
        max_size = ctx.int_option("max_size")
        if ctx.options["connected"]:
            try:
                sock = await ctx.connect_inet(socket.SOCK_DGRAM)
            except PermissionDenied as exc:
                raise PermissionDenied(
                    exc.errno or 0,
                    f"{exc.strerror} (a broadcast address needs broadcast=True)",
                    address=str(ctx.address),
                ) from exc
            return ctx.channel(sock, remote=sock.getpeername(), max_size=max_size)
        family, peer = (await ctx.resolve_inet(socket.SOCK_DGRAM))[0]
        sock = await ctx.make_socket(family, socket.SOCK_DGRAM)
        if ctx.socket_options.local is None:
            # Bind an ephemeral port now: info.local is then real, and peers can send first.
            await ctx.bind_socket(
                sock, ("::" if family == socket.AF_INET6 else "0.0.0.0", 0), action="bind for"
            )
        return ctx.channel(sock, remote=peer, max_size=max_size, connected=False)

    async def listen(self, ctx: Context) -> Listener:
        sock = await ctx.listen_inet(socket.SOCK_DGRAM)
        host, port = sock.getsockname()[:2]
        bound = Address(ctx.address.scheme, host=host, port=port, query=ctx.address.query)
        return ctx.datagram_listener(
            sock, bound, queue=ctx.int_option("queue"), max_size=ctx.int_option("max_size")
        )

    def availability(self) -> Availability:
        return probe_socket(socket.AF_INET, socket.SOCK_DGRAM)

    def loopback_url(self, tmpdir: str) -> str:
        return "udp://127.0.0.1:0"


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [UDPTransport()]
