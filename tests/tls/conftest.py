"""Certificates for the TLS tests, made at test time (no private key is committed).

Built on the public :class:`trio_conduit.testing.TestPKI` (the ``conduit_pki`` fixture's).

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
from pathlib import Path

import pytest

from trio_conduit.testing import CertificateFiles, TestPKI
from trio_conduit.tls import EphemeralCA, session_cache

Pair = CertificateFiles


class PKI(TestPKI):
    """The public :class:`~trio_conduit.testing.TestPKI`, with the extra certificates these tests need."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            directory,
            server_names=("localhost", "127.0.0.1", "::1", "a.test", "b.test"),
            ca_name="conduit test CA",
        )
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        self.expired = self.issue(
            "expired",
            "localhost",
            "127.0.0.1",
            not_before=past - datetime.timedelta(days=10),
            not_after=past,
        )
        self.stranger_ca = EphemeralCA("nobody trusts me")  # issued by a CA no one trusts
        self.stranger = self.issue("stranger", "localhost", "127.0.0.1", ca=self.stranger_ca)


@pytest.fixture(scope="session")
def pki() -> Iterator[PKI]:
    directory = Path(tempfile.mkdtemp(prefix="conduit-pki-"))
    try:
        yield PKI(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_session_cache() -> Iterator[None]:
    """Each test starts with an empty client session cache (resumption is tested on purpose)."""
    session_cache.clear()
    yield
    session_cache.clear()
