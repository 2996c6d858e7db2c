"""Certificates for the TLS tests, made at test time (no private key is committed).

``pki`` (one per session): a CA; a server certificate for localhost,
127.0.0.1, ::1, a.test and b.test; a client certificate; an expired server
certificate; a server certificate from a CA nobody trusts; all written as PEM
files in a private directory, with the CA as ``ca.pem``.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trio_conduit.tls import Certificate, EphemeralCA, TLSConfig, session_cache


@dataclass
class Pair:
    cert: Certificate
    certfile: str
    keyfile: str


@dataclass
class PKI:
    dir: Path
    ca: EphemeralCA
    cafile: str
    server: Pair
    client: Pair
    expired: Pair
    stranger: Pair  # issued by a CA no one trusts
    stranger_ca: EphemeralCA

    def issue(self, stem: str, *names: str, client: bool = False) -> Pair:
        cert = self.ca.issue(*names, client=client)
        certfile, keyfile = cert.write(self.dir, stem)
        return Pair(cert, str(certfile), str(keyfile))

    def server_config(self, **changes: object) -> TLSConfig:
        return TLSConfig(certfile=self.server.certfile, keyfile=self.server.keyfile).replace(**changes)

    def client_config(self, **changes: object) -> TLSConfig:
        return TLSConfig(cafile=self.cafile).replace(**changes)

    def server_url(self, scheme: str = "tls", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:0?certfile={self.server.certfile}&keyfile={self.server.keyfile}"


def _pair(ca: EphemeralCA, directory: Path, stem: str, *names: str, **kw: object) -> Pair:
    cert = ca.issue(*names, **kw)  # type: ignore[arg-type]
    certfile, keyfile = cert.write(directory, stem)
    return Pair(cert, str(certfile), str(keyfile))


@pytest.fixture(scope="session")
def pki() -> Iterator[PKI]:
    directory = Path(tempfile.mkdtemp(prefix="conduit-pki-"))
    try:
        ca = EphemeralCA("conduit test CA")
        cafile = directory / "ca.pem"
        cafile.write_bytes(ca.cert_pem)
        stranger_ca = EphemeralCA("nobody trusts me")
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        yield PKI(
            dir=directory,
            ca=ca,
            cafile=str(cafile),
            server=_pair(ca, directory, "server", "localhost", "127.0.0.1", "::1", "a.test", "b.test"),
            client=_pair(ca, directory, "client", "alice", client=True),
            expired=_pair(
                ca,
                directory,
                "expired",
                "localhost",
                "127.0.0.1",
                not_before=past - datetime.timedelta(days=10),
                not_after=past,
            ),
            stranger=_pair(stranger_ca, directory, "stranger", "localhost", "127.0.0.1"),
            stranger_ca=stranger_ca,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_session_cache() -> Iterator[None]:
    """Each test starts with an empty client session cache (resumption is tested on purpose)."""
    session_cache.clear()
    yield
    session_cache.clear()
