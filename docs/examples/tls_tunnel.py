"""A TLS plugin that tunnels by server name: some names go, undecrypted, to another server.

The ``conduit_tls_client_hello`` hook sees the ClientHello (parsed by
trio-conduit before OpenSSL reads it) and, for a name in its table, makes the
connection a blind tunnel: the hello and everything after it are relayed to
the origin and back. The client then talks TLS with the origin itself (it sees
the origin's certificate); other names are served here.
"""

import tempfile
from collections.abc import Awaitable, Callable

import trio

import trio_conduit as conduit
from trio_conduit.tls import ClientHello, EphemeralCA, TLSHandshake


class TunnelBySNI:
    def __init__(self, routes: dict[str, str]) -> None:
        self.routes = routes

    @conduit.hookimpl
    def conduit_tls_client_hello(self, handshake: TLSHandshake, hello: ClientHello) -> None:
        origin = self.routes.get(hello.server_name or "")
        if origin is not None:
            handshake.tunnel(origin)


def replier(text: bytes) -> Callable[[conduit.StreamConnection], Awaitable[None]]:
    async def handler(conn: conduit.StreamConnection) -> None:
        await conn.receive_some()
        await conn.send_all(text)

    return handler


async def main() -> None:
    ca = EphemeralCA("example CA")
    with tempfile.TemporaryDirectory() as tmp:
        origin_crt, origin_key = ca.issue("origin.example").write(tmp, "origin")
        front_crt, front_key = ca.issue("front.example").write(tmp, "front")
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            origin = await nursery.start(
                pool.serve,
                f"tls://127.0.0.1:0?certfile={origin_crt}&keyfile={origin_key}",
                replier(b"from the origin"),
            )
            tunnel = TunnelBySNI({"origin.example": f"tcp://127.0.0.1:{origin.port}"})
            front = await nursery.start(
                lambda task_status: pool.serve(
                    f"tls://127.0.0.1:0?certfile={front_crt}&keyfile={front_key}",
                    replier(b"from the front"),
                    plugins=[tunnel],
                    task_status=task_status,
                )
            )
            for name in ("origin.example", "front.example"):
                conn = await pool.connect_stream(
                    f"tls://127.0.0.1:{front.port}", cadata=ca.cert_pem.decode(), server_hostname=name
                )
                facts = conn.info.tls
                assert facts is not None
                assert facts.peer_certificate is not None
                subject = facts.peer_certificate.subject.rfc4514_string()
                await conn.send_all(b"hello")
                print(f"{name}: certificate {subject}, reply {await conn.receive_some()!r}")
                await conn.aclose()
            nursery.cancel_scope.cancel()


trio.run(main)
