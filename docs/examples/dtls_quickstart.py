"""DTLS with trio-conduit: dtls:// URLs, whole messages, the facts, a hook, close_notify.

The certificates come from an in-memory CA (``EphemeralCA``); verification
is on by default, as for TLS.
"""

import tempfile

import trio

import trio_conduit as conduit
from trio_conduit.tls import EphemeralCA, TLSHandshake, dtls_versions


class Names:
    """A servername hook: it may await (here it only records) without holding up other peers."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @conduit.hookimpl
    async def conduit_tls_servername(self, handshake: TLSHandshake, server_name: str) -> None:
        self.seen.append(server_name)


async def shout(conn: conduit.DatagramConnection) -> None:
    try:
        async for message in conn:  # whole messages; the loop ends at the peer's close_notify
            await conn.send(message.upper())
    finally:
        print("server: peer closed")


async def main() -> None:
    ca = EphemeralCA("example CA")
    names = Names()
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile = (str(p) for p in ca.issue("localhost", "127.0.0.1").write(tmp, "server"))
        cadata = ca.cert_pem.decode()
        async with conduit.open_pool(plugins=[names]) as pool, trio.open_nursery() as nursery:
            url = f"dtls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
            address = await nursery.start(pool.serve, url, shout)
            conn = await pool.connect(f"dtls://localhost:{address.port}", cadata=cadata, mtu=1200)
            await conn.send(b"hello over dtls")
            print(await conn.receive())
            tls = conn.info.tls
            print(tls.version, tls.server_name, tls.peer_certificate.subject.rfc4514_string())
            try:
                await conn.send(b"x" * 2000)  # more than one datagram can carry
            except conduit.MessageTooLarge:
                print("too large for one datagram")
            await conn.aclose()  # sends close_notify
            await trio.sleep(0.2)
            print("hook saw:", names.seen)
            print("DTLS 1.2 available:", "DTLSv1.2" in dtls_versions().versions)
            nursery.cancel_scope.cancel()


trio.run(main)
