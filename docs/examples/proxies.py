"""Connect through a chain of proxies, and see which hop failed and why.

The proxies are trio-conduit's own ProxyServer (SOCKS5, SOCKS4 and HTTP
CONNECT on one port), on loopback: nothing here leaves the machine.
"""

import socket

import trio

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer


async def greet_then_echo(conn: conduit.StreamConnection) -> None:
    await conn.send_all(b"hello from the target\n")  # speaks first, right behind the proxy's reply
    while data := await conn.receive_some():
        await conn.send_all(data)


async def never_answer(conn: conduit.StreamConnection) -> None:
    await trio.sleep_forever()


async def main() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        target = await nursery.start(pool.serve, "tcp://127.0.0.1:0", greet_then_echo)
        public = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        private = await nursery.start(
            pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool, users={"alice": "s3cret"})
        )

        # Two hops: SOCKS5 with a password (the proxy resolves "localhost"), then HTTP CONNECT.
        chain = [f"socks5h://alice:s3cret@{private.hostport}", f"http://{public.hostport}"]
        conn = await pool.connect_stream(f"tcp://localhost:{target.port}", proxies=chain, timeout=5)
        async with conn:
            print(await conn.receive_some())
            remote = conn.info.remote  # through proxies: the target, (host, port) as asked for
            assert isinstance(remote, tuple)
            print(remote[0], len(conn.info.via), "hops")
            print("password shown:", "s3cret" in str(conn.info))
            print(conn.info.via[0].split("@")[0])

        # Failures are typed, name the hop, and say what the proxy answered.
        bad_chain = [f"http://{public.hostport}", f"socks5://alice:wrong@{private.hostport}"]
        try:
            await pool.connect(str(target), proxies=bad_chain, timeout=5)
        except conduit.ProxyAuthenticationError as exc:
            print(type(exc).__name__, "at hop", exc.hop, "-", exc.reply)

        with socket.socket() as closed:  # bound, not listening: connects to it are refused
            closed.bind(("127.0.0.1", 0))
            try:
                await pool.connect(f"tcp://127.0.0.1:{closed.getsockname()[1]}", proxies=chain, timeout=5)
            except ConnectionRefusedError as exc:  # conduit.ProxyTargetRefused
                print(type(exc).__name__, "at hop", exc.hop, "-", exc.reply)

        # A proxy that accepts and never answers: the timeout covers the whole chain.
        silent = await nursery.start(pool.serve, "tcp://127.0.0.1:0", never_answer)
        try:
            await pool.connect(str(target), proxies=[*chain, f"socks4://{silent.hostport}"], timeout=0.5)
        except TimeoutError as exc:  # conduit.ProxyTimeout
            print(type(exc).__name__, "at hop", exc.hop, "-", exc.reply.partition("(")[2].rstrip(")"))
        nursery.cancel_scope.cancel()


trio.run(main)
