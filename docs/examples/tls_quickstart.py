"""TLS with trio-conduit: tls:// URLs, the facts after a handshake, handlers by ALPN, STARTTLS.

The certificates are made on the spot by an in-memory CA (``EphemeralCA``);
in real use, pass ``certfile=``/``keyfile=`` and let clients trust the
system's CAs (verification is on by default).
"""

import functools
import tempfile

import trio

import trio_conduit as conduit
from trio_conduit.tls import EphemeralCA, TLSConnection


async def h2(conn: conduit.StreamConnection) -> None:
    await conn.send_all(b"h2 handler: " + await conn.receive_some())


async def http11(conn: conduit.StreamConnection) -> None:
    await conn.send_all(b"http/1.1 handler: " + await conn.receive_some())


async def starttls_server(conn: conduit.StreamConnection, certfile: str, keyfile: str) -> None:
    assert await conn.receive_some() == b"STARTTLS\r\n"
    await conn.send_all(b"220 go ahead\r\n")
    tls = await conn.start_tls(server_side=True, certfile=certfile, keyfile=keyfile)
    await tls.send_all((await tls.receive_some()).upper())


async def main() -> None:
    ca = EphemeralCA("example CA")
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile = (str(p) for p in ca.issue("localhost", "127.0.0.1").write(tmp, "server"))
        cadata = ca.cert_pem.decode()  # trust our CA (a cafile= works too)

        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            # A TLS server whose handler is chosen by the ALPN protocol agreed.
            url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
            serve = functools.partial(pool.serve, handlers={"h2": h2, "http/1.1": http11})
            address = await nursery.start(serve, url)
            target = f"tls://localhost:{address.port}"

            conn = await pool.connect_stream(target, cadata=cadata, alpn=["h2", "http/1.1"])
            facts = conn.info.tls  # None unless the connection is TLS
            assert facts is not None
            assert facts.peer_certificate is not None  # (None: the peer sent none)
            print(facts.version, facts.alpn, facts.server_name, facts.session_reused)
            print("peer:", facts.peer_certificate.subject.rfc4514_string())
            print("chain:", [c.subject.rfc4514_string() for c in facts.peer_chain])
            await conn.send_all(b"hello")
            print(await conn.receive_some())
            await conn.aclose()

            # The session ticket came with the data: the next handshake with the same
            # options resumes it. Offering only http/1.1 selects the other handler.
            conn = await pool.connect_stream(target, cadata=cadata, alpn=["h2", "http/1.1"])
            assert isinstance(conn, TLSConnection)  # what tls:// gives: its .tls is info.tls, never None
            print("resumed:", conn.tls.session_reused)
            await conn.aclose()
            conn = await pool.connect_stream(target, cadata=cadata, alpn=["http/1.1"])
            await conn.send_all(b"again")
            print(await conn.receive_some())
            await conn.aclose()

            # STARTTLS: a plain connection upgraded in place (same id).
            plain_address = await nursery.start(
                pool.serve, "tcp://127.0.0.1:0", lambda c: starttls_server(c, certfile, keyfile)
            )
            plain = await pool.connect_stream(f"tcp://localhost:{plain_address.port}")
            await plain.send_all(b"STARTTLS\r\n")
            print(await plain.receive_some())
            tls = await plain.start_tls(cadata=cadata)  # a TLSConnection
            print("same id:", tls.id == plain.id, tls.info.transport, tls.tls.version)
            await tls.send_all(b"now private")
            print(await tls.receive_some())
            await tls.aclose()
            nursery.cancel_scope.cancel()


trio.run(main)
