"""Certificates for tests: a CA, a server and a client certificate, written as PEM files."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..tls import Certificate, EphemeralCA, TLSConfig

__all__ = ["CertificateFiles", "TestPKI"]

#: The names the server certificate of :class:`TestPKI` is for, by default.
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate (:class:`~trio_conduit.tls.Certificate`, in memory) and where its PEM files are."""

    cert: Certificate = field(repr=False)
    certfile: str
    keyfile: str


class TestPKI:
    """A throwaway CA (:class:`~trio_conduit.tls.EphemeralCA`) and certificates it issued, on disk.

    ``directory`` (which must exist, and should be private: the keys are not
    encrypted) gets ``ca.pem``, ``server.pem``/``server.key`` (for
    ``server_names``: by default localhost, 127.0.0.1 and ::1) and
    ``client.pem``/``client.key`` (a client certificate for ``alice``).
    :meth:`issue` adds more. Nothing is printed; the keys live in the files and
    in memory only.

    >>> pki = TestPKI(tmp_path)                                       # doctest: +SKIP
    >>> await pool.serve(pki.server_url(), handler)                   # doctest: +SKIP
    >>> await pool.connect(url, tls=pki.client_config())              # doctest: +SKIP
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        server_names: tuple[str, ...] = SERVER_NAMES,
        ca_name: str = "trio-conduit test CA",
    ) -> None:
        self.dir = Path(directory)
        self.ca = EphemeralCA(ca_name)
        cafile = self.dir / "ca.pem"
        cafile.write_bytes(self.ca.cert_pem)
        #: The CA certificate's PEM file: what a peer trusts (``cafile=``).
        self.cafile = str(cafile)
        self.server = self.issue("server", *server_names)
        self.client = self.issue("client", "alice", client=True)

    def issue(
        self,
        stem: str,
        *names: str,
        client: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        ca: EphemeralCA | None = None,
    ) -> CertificateFiles:
        """A certificate for ``names`` issued by this CA (or ``ca``), written as ``stem.pem``/``stem.key``."""
        cert = (ca or self.ca).issue(*names, client=client, not_before=not_before, not_after=not_after)
        certfile, keyfile = cert.write(self.dir, stem)
        return CertificateFiles(cert, str(certfile), str(keyfile))

    def server_config(self, **changes: object) -> TLSConfig:
        """A server :class:`~trio_conduit.tls.TLSConfig` with the server certificate."""
        return TLSConfig(certfile=self.server.certfile, keyfile=self.server.keyfile).replace(**changes)

    def client_config(self, **changes: object) -> TLSConfig:
        """A client :class:`~trio_conduit.tls.TLSConfig` that trusts this CA."""
        return TLSConfig(cafile=self.cafile).replace(**changes)

    def server_url(self, scheme: str = "tls", host: str = "127.0.0.1", port: int = 0) -> str:
        """A URL to serve on with the server certificate (``tls://127.0.0.1:0?certfile=...&keyfile=...``)."""
        return f"{scheme}://{host}:{port}?certfile={self.server.certfile}&keyfile={self.server.keyfile}"

    def __repr__(self) -> str:
        return f"<TestPKI in {self.dir}>"
