"""A UDP server: each peer's datagrams arrive on a channel of its own.

``pool.serve("udp://...")`` reads the one bound socket and hands every new
peer address to the handler as its own scoped channel; replies go back to that
peer. The client side is a *connected* datagram channel: only the server's
datagrams reach it; ``connected=False`` gives ``send_to``/``receive_from``.
"""

import trio

import trio_conduit as conduit
from trio_conduit.transport import SocketChannel


async def numbered(channel: conduit.DatagramConnection) -> None:
    # One task per peer: number its datagrams, per peer.
    count = 0
    async for datagram in channel:
        count += 1
        await channel.send(b"%d:%s" % (count, datagram))


async def main() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "udp://127.0.0.1:0", numbered)
        alice = await pool.connect_channel(address)
        bob = await pool.connect_channel(address)
        for channel, words in ((alice, [b"a", b"b"]), (bob, [b"x"]), (alice, [b"c"])):
            for word in words:
                await channel.send(word)
                print(await channel.receive())
        server = (address.host, address.port)
        print("alice's peer is the server:", alice.info.remote == server)

        # Unconnected mode: name the peer on each datagram, receive from anyone.
        loose = await pool.connect_channel(address, connected=False)
        assert isinstance(loose, SocketChannel)  # what udp:// gives: it has send_to / receive_from
        await loose.send_to(b"hi", server)
        data, peer = await loose.receive_from()
        print(data, "from the server:", peer == server)
        nursery.cancel_scope.cancel()


trio.run(main)
