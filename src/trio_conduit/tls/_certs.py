"""Certificates in memory: a PEM pair (:class:`Certificate`), and throwaway ones.

:class:`EphemeralCA` makes a certificate authority and issues server and
client certificates with ``cryptography`` — for tests, examples, and
``conduit listen`` without ``--cert`` (:func:`self_signed_certificate`).
Nothing here is written to disk unless asked (:meth:`Certificate.write`).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported where it is used: `import trio_conduit.tls` stays cheap.

__all__ = ["Certificate", "EphemeralCA", "fingerprint", "load_certificate_into", "self_signed_certificate"]


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 of a certificate's DER bytes, as colon-separated upper-case hex (what openssl prints)."""
    from cryptography.hazmat.primitives import serialization

    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@dataclass(frozen=True)
class Certificate:
    """A certificate chain and its private key, as PEM bytes (leaf first, then intermediates).

    Hashable, so contexts built from it are cached. ``password`` decrypts an
    encrypted key.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    password: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls, certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None = None
    ) -> Certificate:
        """Read a PEM chain and its key (``keyfile`` may be omitted when ``certfile`` holds both)."""
        cert_pem = Path(certfile).read_bytes()
        key_pem = Path(keyfile).read_bytes() if keyfile is not None else cert_pem
        return cls(cert_pem, key_pem)

    @cached_property
    def leaf(self) -> x509.Certificate:
        """The leaf certificate."""
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def chain(self) -> list[x509.Certificate]:
        from cryptography import x509

        return x509.load_pem_x509_certificates(self.cert_pem)

    @property
    def sha256(self) -> str:
        """The leaf's SHA-256 fingerprint (``AB:CD:...``)."""
        return fingerprint(self.leaf)

    def write(self, directory: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
        """Write ``STEM.crt`` and ``STEM.key`` (mode 0600) into ``directory``; return their paths."""
        base = Path(directory)
        cert_path, key_path = base / f"{stem}.crt", base / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)
        return cert_path, key_path


def load_certificate_into(context: ssl.SSLContext, cert: Certificate) -> None:
    """``context.load_cert_chain`` from memory.

    Python's ``ssl`` loads certificates from files only, so the pair goes
    through a private temporary directory (mode 0700, removed at once).
    """
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="conduit-tls-", dir=shm) as tmp:
        cert_path, key_path = cert.write(tmp, "cert")
        context.load_cert_chain(cert_path, key_path, password=cert.password)


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class EphemeralCA:
    """A certificate authority that lives in memory (ECDSA P-256 keys).

    >>> ca = EphemeralCA()
    >>> server = ca.issue("localhost", "127.0.0.1")
    >>> client = ca.issue("alice", client=True)

    ``ca.cert_pem`` is what a peer trusts (``cadata=ca.cert_pem``).
    """

    def __init__(self, common_name: str = "trio-conduit ephemeral CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        *names: str,
        client: bool = False,
        common_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Certificate:
        """A certificate for ``names`` (DNS names or IP addresses) signed by this CA.

        ``client=True`` makes a client certificate (extended key usage
        clientAuth); otherwise serverAuth. Validity defaults to yesterday
        until a year from now; pass ``not_after`` in the past for an expired one.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        if not names and common_name is None:
            raise ValueError("a certificate needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or names[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(days=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Certificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def self_signed_certificate(*names: str, days: int = 365) -> Certificate:
    """A self-signed server certificate for ``names`` (default ``localhost``), made now.

    What ``conduit listen tls://...`` uses when given no certificate; the
    client checks it by its :attr:`Certificate.sha256` fingerprint (a pin).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    names = names or ("localhost",)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(_name(names[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Certificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
