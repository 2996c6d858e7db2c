"""A TLS plugin that serves a certificate per server name (SNI) from a directory.

The ``conduit_tls_certificate`` hook is ``async``: it reads ``NAME.crt`` and
``NAME.key`` without blocking the other handshakes (they go on while this
one waits), and keeps what it loaded. An unknown name gets no certificate:
the client is told so with an ``unrecognized_name`` alert.
"""

import tempfile
from pathlib import Path

import trio

import trio_conduit as conduit
from trio_conduit.tls import Certificate, EphemeralCA, TLSError


class CertificatesFromDirectory:
    """``conduit_tls_certificate``: ``DIRECTORY/<server name>.crt`` and ``.key``."""

    def __init__(self, directory: Path) -> None:
        self.directory = trio.Path(directory)
        self.loaded: dict[str, Certificate] = {}

    @conduit.hookimpl
    async def conduit_tls_certificate(self, server_name: str | None) -> Certificate | None:
        if server_name is None or "/" in server_name or server_name.startswith("."):
            return None
        if server_name not in self.loaded:
            cert, key = self.directory / f"{server_name}.crt", self.directory / f"{server_name}.key"
            if not await cert.exists():
                return None
            self.loaded[server_name] = Certificate(await cert.read_bytes(), await key.read_bytes())
        return self.loaded[server_name]


async def main() -> None:
    ca = EphemeralCA("example CA")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("a.example", "b.example"):
            ca.issue(name).write(tmp, name)
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            plugin = CertificatesFromDirectory(Path(tmp))
            # No certificate of its own: every one comes from the plugin (a listener plugin).
            address = await nursery.start(
                lambda task_status: pool.serve(
                    "tls://127.0.0.1:0", echo, plugins=[plugin], task_status=task_status
                )
            )
            for name in ("a.example", "b.example", "c.example"):
                try:
                    conn = await pool.connect_stream(
                        f"tls://127.0.0.1:{address.port}", cadata=ca.cert_pem.decode(), server_hostname=name
                    )
                except TLSError as exc:
                    print(f"{name}: {type(exc).__name__}: {exc.reason}")
                    continue
                facts = conn.info.tls
                assert facts is not None
                assert facts.peer_certificate is not None
                subject = facts.peer_certificate.subject.rfc4514_string()
                await conn.send_all(b"hi")
                print(f"{name}: {subject}, echo {await conn.receive_some()!r}")
                await conn.aclose()
            print("loaded:", sorted(plugin.loaded))
            nursery.cancel_scope.cancel()


async def echo(conn: conduit.StreamConnection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


trio.run(main)
