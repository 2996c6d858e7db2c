"""``tcp://host:port`` — TCP streams (happy-eyeballs client, half-closeable)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence

import trio

from trio_conduit import Address, Connection, Kind
from trio_conduit.transport import (
    Availability,
    Capabilities,
    Context,
    Listener,
    Option,
    SockAddr,
    Transport,
    URLParts,
    hookimpl,
    parse_host_port,
    probe_socket,
    socket_kind,
)

#: Keepalive timing: option name → socket option (any of them set turns keepalive on).
_KEEPALIVE_TIMING = (
    ("keepalive_idle", socket.TCP_KEEPIDLE),
    ("keepalive_interval", socket.TCP_KEEPINTVL),
    ("keepalive_count", socket.TCP_KEEPCNT),
)


def _tune(sock: trio.socket.SocketType, options: Mapping[str, object]) -> None:
    if options["nodelay"]:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    timing = [(opt, options[name]) for name, opt in _KEEPALIVE_TIMING if options[name] is not None]
    if options["keepalive"] or timing:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in timing:
            sock.setsockopt(socket.IPPROTO_TCP, opt, int(value))  # type: ignore[call-overload]
    user_timeout = options["user_timeout"]
    if user_timeout is not None:
        milliseconds = round(float(user_timeout) * 1000)  # type: ignore[arg-type]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
    congestion = options["congestion"]
    if congestion:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, str(congestion).encode())


class TCPTransport(Transport):
    schemes = ("tcp",)
    name = "TCP"
    kind = Kind.STREAM
    capabilities = Capabilities(half_close=True, device=True, ip_options=True)
    options = (
        Option.boolean("nodelay", True, "TCP_NODELAY: send small writes at once"),
        Option.boolean("keepalive", False, "SO_KEEPALIVE"),
        Option.count(
            "keepalive_idle",
            None,
            "TCP_KEEPIDLE: seconds idle before the first keepalive probe (turns keepalive on)",
            minimum=1,
            maximum=32767,
        ),
        Option.count(
            "keepalive_interval",
            None,
            "TCP_KEEPINTVL: seconds between keepalive probes (turns keepalive on)",
            minimum=1,
            maximum=32767,
        ),
        Option.count(
            "keepalive_count",
            None,
            "TCP_KEEPCNT: unanswered probes before the connection is dropped (turns keepalive on)",
            minimum=1,
            maximum=127,
        ),
        Option.seconds(
            "user_timeout",
            None,
            "TCP_USER_TIMEOUT in seconds (fractions allowed; set in ms): how long sent data may stay "
            "unacknowledged before the connection is dropped; 0 is the kernel's default",
            maximum=2147483,
        ),
        Option.text("congestion", None, "TCP_CONGESTION algorithm (bbr, cubic, reno, ...)"),
    )
    description = "TCP streams; the client races addresses (happy eyeballs)"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    async def connect(self, ctx: Context) -> Connection:
        sock = await ctx.connect_inet(socket.SOCK_STREAM)
        try:
            _tune(sock, ctx.options)
        except BaseException:
            sock.close()
            raise
        return ctx.stream(sock)

    async def listen(self, ctx: Context) -> Listener:
        sock = await ctx.listen_inet(socket.SOCK_STREAM)
        name = sock.getsockname()
        host, port = name[:2]
        bound = Address(ctx.address.scheme, host=host, port=port, query=ctx.address.query)
        options = ctx.options
        kind = socket_kind(sock)  # every accepted socket's
        # and, bound to one address (not a wildcard), every accepted socket's local address
        local = None if ipaddress.ip_address(host.partition("%")[0]).is_unspecified else name

        def wrap(s: trio.socket.SocketType, remote: SockAddr, conn_id: int) -> Connection:
            _tune(s, options)
            return ctx.stream(s, conn_id=conn_id, address=bound, remote=remote, kind=kind, local=local)

        return ctx.stream_listener(sock, bound, wrap)

    def availability(self) -> Availability:
        return probe_socket(socket.AF_INET, socket.SOCK_STREAM)

    def loopback_url(self, tmpdir: str) -> str:
        return "tcp://127.0.0.1:0"


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [TCPTransport()]
