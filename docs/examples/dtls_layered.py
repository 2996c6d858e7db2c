"""dtls= on other datagram transports: unix+dgram:// both ways, and udp:// through a SOCKS5 proxy.

``dtls=`` takes what ``tls=`` takes (a TLSConfig, True, or a dict of TLS options), on any
datagram transport, as ``tls=`` works on any stream.
"""

import tempfile
from functools import partial

import trio

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer
from trio_conduit.tls import EphemeralCA, TLSConfig


async def shout(conn: conduit.DatagramConnection) -> None:
    async for message in conn:
        await conn.send(message.upper())


async def main() -> None:
    ca = EphemeralCA("example CA")
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile = (str(p) for p in ca.issue("localhost", "127.0.0.1").write(tmp, "server"))
        server = TLSConfig(certfile=certfile, keyfile=keyfile)
        # A unix socket path is no host name: name the server the certificate must match.
        client = TLSConfig(cadata=ca.cert_pem.decode(), server_hostname="localhost")
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            # unix+dgram://: the client binds a path of its own, which the cookie binds as it
            # would an IP address and port.
            url = f"unix+dgram://{tmp}/dtls.sock"
            await nursery.start(partial(pool.serve, dtls=server), url, shout)
            async with await pool.connect(url, dtls=client) as conn:
                await conn.send(b"over a unix datagram socket")
                print(await conn.receive(), conn.info.transport, conn.info.tls.version)

            # udp:// through a SOCKS5 proxy's UDP relay (here our own SOCKS5 server).
            proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
            target = await nursery.start(partial(pool.serve, dtls=server), "udp://127.0.0.1:0", shout)
            async with await pool.connect(
                f"udp://127.0.0.1:{target.port}", proxies=[f"socks5://127.0.0.1:{proxy.port}"], dtls=client
            ) as conn:
                await conn.send(b"through the relay")
                print(await conn.receive(), "via", conn.info.via[0].partition(":")[0])
            nursery.cancel_scope.cancel()


trio.run(main)
