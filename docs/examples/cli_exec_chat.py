"""``conduit listen --sh-exec`` as an inetd, and ``conduit listen --chat``, driven from the pool."""

import re
import subprocess
import sys

import trio

import trio_conduit as conduit


def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """``conduit listen ARGS tcp://127.0.0.1:0`` in its own process, and the URL it listens on."""
    argv = [sys.executable, "-m", "trio_conduit", "listen", *args, "tcp://127.0.0.1:0"]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert server.stderr is not None
    for line in server.stderr:
        found = re.match(rb"conduit: listening on (\S+)", line)
        if found:
            return server, found.group(1).decode()
    raise RuntimeError("the server did not start")


async def read_all(conn: conduit.StreamConnection) -> bytes:
    data = b""
    while chunk := await conn.receive_some():
        data += chunk
    return data


async def read_line(conn: conduit.StreamConnection, pending: bytearray) -> bytes:
    while b"\n" not in pending:
        chunk = await conn.receive_some()
        if not chunk:
            raise EOFError("the server closed the connection")
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


async def main() -> None:
    script = 'read -r said; echo "hello $CONDUIT_REMOTE_ADDR ($CONDUIT_PROTO), you said: $said"'
    inetd, url = start("-k", "--sh-exec", script)
    chat, chat_url = start("--chat")
    try:
        async with conduit.open_pool() as pool:
            for word in ("one", "two"):
                conn = await pool.connect(url)
                assert isinstance(conn, conduit.HalfCloseableStreamConnection)
                await conn.send_all(word.encode() + b"\n")
                await conn.send_eof()
                print((await read_all(conn)).decode().strip())
                await conn.aclose()

            alice = await pool.connect(chat_url)
            bob = await pool.connect(chat_url)
            assert isinstance(alice, conduit.StreamConnection)
            assert isinstance(bob, conduit.StreamConnection)
            pending = bytearray()

            async def alice_sees() -> None:
                line = (await read_line(alice, pending)).decode()
                print("alice sees:", re.sub(r":\d+ ", ":PORT ", line))

            for _ in range(3):  # she joins, nobody else is here, bob joins
                await alice_sees()
            await bob.send_all(b"hi alice \x1b[2J\n")  # an escape sequence: shown, not obeyed
            await alice_sees()
            await bob.aclose()
            await alice_sees()
            await alice.aclose()
    finally:
        for server in (inetd, chat):
            server.terminate()  # SIGTERM: listen drains (nothing is left to drain) and exits 0
            print("exit status", server.wait())
            assert server.stderr is not None
            server.stderr.close()


trio.run(main)
