"""trio_conduit.testing: a conformance check, certificates, and an impairment relay."""

import tempfile

import trio

import trio_conduit as conduit
from trio_conduit.testing import TestPKI, check_datagram_channel, impairment_relay


async def main() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        # 1. Is a UDP channel pair a good datagram channel? (raises AssertionError if not)
        listener = await pool.listen("udp://127.0.0.1:0")

        async def make_pair() -> tuple[conduit.DatagramConnection, conduit.DatagramConnection]:
            client = await pool.connect_channel(f"udp://127.0.0.1:{listener.address.port}")
            await client.send(b"hello")  # the listener accepts a peer at its first datagram
            server = await listener.accept()
            assert isinstance(server, conduit.DatagramConnection)
            await server.receive()
            return client, server

        await check_datagram_channel(make_pair, reliable=False, max_size=65507)
        print("udp:// passes check_datagram_channel")

        # 2. A CA, a server and a client certificate, as PEM files in a private directory.
        with tempfile.TemporaryDirectory() as directory:
            pki = TestPKI(directory)

            async def hello(conn: conduit.StreamConnection) -> None:
                await conn.send_all(b"hello over TLS")

            bound = await nursery.start(pool.serve, pki.server_url(), hello)
            conn = await pool.connect_stream(f"tls://localhost:{bound.port}", tls=pki.client_config())
            print(await conn.receive_some(), conn.info.tls is not None)
            await conn.aclose()

        # 3. UDP through a relay that duplicates every datagram (seeded: the same run every time).
        echo = await pool.listen("udp://127.0.0.1:0")

        async def echo_once() -> None:
            peer = await echo.accept()
            assert isinstance(peer, conduit.DatagramConnection)
            await peer.send(await peer.receive())

        nursery.start_soon(echo_once)
        async with impairment_relay(echo.address.port, seed=7, dup=1.0) as relay:
            channel = await pool.connect_channel(f"udp://127.0.0.1:{relay.port}")
            await channel.send(b"twice?")
            print(await channel.receive(), await channel.receive())
        print("relay:", relay.stats["received"], "received,", relay.stats["duplicated"], "duplicated")
        nursery.cancel_scope.cancel()


trio.run(main)
