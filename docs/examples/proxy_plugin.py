"""A proxy type from a plugin: ``haproxy://`` sends a PROXY protocol v1 header, then the data.

The ``conduit_proxy_types`` hook registers it, for one pool here; a package
would register it globally with an entry point, as trio-conduit's own types are.
"""

from collections.abc import Sequence

import trio

import trio_conduit as conduit
from trio_conduit.proxy import Hop, ProxyServer, ProxyType, ProxyURL, Target, Tunnel


class HAProxyV1(ProxyType):
    schemes = ("haproxy",)
    name = "PROXY v1"
    default_port = 80

    async def open(self, stream: trio.abc.Stream, proxy: ProxyURL, target: Target, hop: Hop) -> Tunnel:
        await stream.send_all(f"PROXY TCP4 192.0.2.10 {target.host} 40000 {target.port}\r\n".encode())
        return Tunnel(stream, "PROXY v1 header sent")


class HAProxyPlugin:
    @conduit.hookimpl
    def conduit_proxy_types(self) -> Sequence[ProxyType]:
        return [HAProxyV1()]


async def backend(conn: conduit.StreamConnection) -> None:
    """A server behind a load balancer: the first line says who the client really is."""
    data = b""
    while b"\r\n" not in data:
        data += await conn.receive_some()
    header, _, rest = data.partition(b"\r\n")
    rest = rest or await conn.receive_some()
    await conn.send_all(b"you are " + header.split()[2] + b"; you said " + rest)


async def main() -> None:
    async with conduit.open_pool(plugins=[HAProxyPlugin()]) as pool, trio.open_nursery() as nursery:
        server = await nursery.start(pool.serve, "tcp://127.0.0.1:0", backend)
        socks = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        chain = [f"socks5://{socks.hostport}", f"haproxy://{server.hostport}"]
        conn = await pool.connect_stream("tcp://127.0.0.1:443", proxies=chain, timeout=5)
        async with conn:
            await conn.send_all(b"hi")
            print(await conn.receive_some())
        nursery.cancel_scope.cancel()


trio.run(main)
