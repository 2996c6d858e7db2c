"""udp:// through a SOCKS5 proxy: datagrams go through its UDP ASSOCIATE relay."""

import trio

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer, Socks5DatagramChannel


async def shout_back(channel: conduit.DatagramConnection) -> None:
    async for datagram in channel:
        await channel.send(datagram.upper())


async def main() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        server = await nursery.start(pool.serve, "udp://127.0.0.1:0", shout_back)
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))

        channel = await pool.connect_channel(str(server), proxies=[f"socks5://{proxy.hostport}"], timeout=5)
        assert isinstance(channel, Socks5DatagramChannel)  # it has .relay, the proxy's relay address
        async with channel:
            for word in (b"through", b"the relay"):
                await channel.send(word)
                print(await channel.receive())
            # The relay's address is not the server's: the channel goes through the proxy.
            print(channel.info.transport, channel.info.remote == ("127.0.0.1", server.port))
            print("relay is the server:", channel.relay == ("127.0.0.1", server.port))
        nursery.cancel_scope.cancel()


trio.run(main)
