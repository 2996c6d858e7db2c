"""pyOpenSSL DTLS contexts from a :class:`~trio_conduit.tls.TLSConfig`, and which DTLS versions exist.

DTLS takes the TLS options as they are (``verify``, ``cafile``, ``certfile``,
``alpn``, ``min_version``/``max_version`` — ``"1.2"`` means DTLS 1.2 and
``"1.3"`` DTLS 1.3 —, ``keylog_file``, ...); Python's ``ssl`` has no DTLS, so
the context is a pyOpenSSL ``SSL.Context`` of ``DTLS_METHOD``.

pyOpenSSL ≥ 26.2 refuses to change a context once a connection was made from
it, so a context is built whole — verification, certificate, versions,
ALPN, key log, the cookie callbacks a server's ``DTLSv1_listen`` needs — and
never touched again. Contexts are cached by :meth:`TLSConfig.context_key`
(session resumption needs the same server context), at most 64.

DTLS 1.3 needs OpenSSL 4.1 or later; :func:`dtls_versions` says what the
OpenSSL pyOpenSSL binds offers, found by asking it (setting DTLS 1.3 as a
context's version bound fails where it is unknown), and why.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from OpenSSL import SSL, crypto

from ._certs import Certificate
from ._config import Side, TLSConfig
from ._errors import TLSError

__all__ = ["DTLS_1_2", "DTLS_1_3", "DTLSVersions", "build_dtls_context", "dtls_versions"]

DTLS_1_0: Final = 0xFEFF
DTLS_1_2: Final = 0xFEFD
DTLS_1_3: Final = 0xFEFC
_NAMES: Final = {DTLS_1_0: "DTLSv1", DTLS_1_2: "DTLSv1.2", DTLS_1_3: "DTLSv1.3"}
_CACHE_MAX: Final = 64
_SESSION_ID_CONTEXT: Final = b"trio-conduit-dtls"


@dataclass(frozen=True)
class DTLSVersions:
    """The DTLS versions the bound OpenSSL offers (``("DTLSv1.2",)`` or with ``"DTLSv1.3"``) and why."""

    openssl: str
    versions: tuple[str, ...]
    reason: str

    @property
    def dtls13(self) -> bool:
        return "DTLSv1.3" in self.versions


@functools.cache
def dtls_versions() -> DTLSVersions:
    """Ask the OpenSSL that pyOpenSSL binds which DTLS versions it has (once)."""
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    probe = SSL.Context(SSL.DTLS_METHOD)
    try:
        probe.set_max_proto_version(DTLS_1_3)
    except SSL.Error:
        return DTLSVersions(
            openssl,
            ("DTLSv1.2",),
            f"{openssl} has no DTLS 1.3 (it needs OpenSSL 4.1; pyOpenSSL binds the OpenSSL of its "
            "cryptography wheels)",
        )
    return DTLSVersions(openssl, ("DTLSv1.2", "DTLSv1.3"), f"{openssl} has DTLS 1.2 and 1.3")


def version_name(version: int) -> str:
    return _NAMES.get(version, f"{version:#06x}")


def _dtls_version(version: ssl.TLSVersion) -> int:
    if version >= ssl.TLSVersion.TLSv1_3:
        return DTLS_1_3
    if version >= ssl.TLSVersion.TLSv1_2:
        return DTLS_1_2
    return DTLS_1_0


_CONTEXTS: OrderedDict[tuple[object, ...], SSL.Context] = OrderedDict()
_lock = threading.Lock()


def build_dtls_context(config: TLSConfig, side: Side) -> SSL.Context:
    """The DTLS ``SSL.Context`` for ``config`` on ``side`` (cached; built whole, never changed)."""
    if config.context is not None:
        raise TLSError(
            "DTLS cannot use an ssl.SSLContext (Python's ssl has no DTLS): give the options instead",
            reason="BAD_CONFIG",
        )
    key = ("dtls", *config.context_key(side))
    with _lock:
        context = _CONTEXTS.get(key)
        if context is not None:
            _CONTEXTS.move_to_end(key)
            return context
    try:
        context = _configure(config, side)
    except (SSL.Error, crypto.Error, OSError, ValueError) as exc:
        raise TLSError(f"cannot set up a DTLS {side} context: {exc}", reason="BAD_CONFIG") from exc
    with _lock:
        _CONTEXTS[key] = context
        if len(_CONTEXTS) > _CACHE_MAX:
            _CONTEXTS.popitem(last=False)
    return context


def clear_dtls_context_cache() -> None:
    with _lock:
        _CONTEXTS.clear()


def _verify_callback(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    # Remember the first failure (the engine's owner turns it into a TLSVerifyError).
    if not ok:
        holder = conn.get_app_data()
        if isinstance(holder, dict) and "verify_error" not in holder:
            holder["verify_error"] = (errnum, depth)
    return bool(ok)


def _cookie_generate(conn: SSL.Connection) -> bytes:
    # Our own CookieJar checked the cookie before OpenSSL saw the hello; DTLSv1_listen only
    # needs these to exist (it is used to set up the association's sequence numbers).
    return b"\0" * 16


def _cookie_verify(conn: SSL.Connection, cookie: bytes) -> bool:
    return True


def _configure(config: TLSConfig, side: Side) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION)
    versions = dtls_versions()
    ctx.set_min_proto_version(_dtls_version(config.min_version))
    top = _dtls_version(config.max_version) if config.max_version is not None else DTLS_1_3
    if top == DTLS_1_3 and not versions.dtls13:
        if config.max_version is not None and config.min_version >= ssl.TLSVersion.TLSv1_3:
            raise TLSError(f"DTLS 1.3 is not available: {versions.reason}", reason="BAD_CONFIG")
        top = DTLS_1_2
    ctx.set_max_proto_version(top)
    verify = config.verify if side == "client" else config.client_auth != "none"
    if verify:
        if config.cafile or config.capath:
            ctx.load_verify_locations(config.cafile, config.capath)
        elif config.cadata:
            _load_cadata(ctx, config.cadata)
        else:
            ctx.set_default_verify_paths()
        mode = SSL.VERIFY_PEER
        if side == "server" and config.client_auth == "required":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _verify_callback)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    if config.certificate is not None:
        _use_certificate(ctx, config.certificate)
    elif config.certfile is not None:
        password = config.password.encode() if isinstance(config.password, str) else config.password
        base = Certificate.from_files(config.certfile, config.keyfile)
        _use_certificate(ctx, dataclasses.replace(base, password=password))
    if config.ciphers:
        ctx.set_cipher_list(config.ciphers.encode())
    if config.alpn:
        if side == "client":
            ctx.set_alpn_protos([p.encode() for p in config.alpn])
        else:
            offered_by_us = [p.encode() for p in config.alpn]

            def select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
                for protocol in offered_by_us:
                    if protocol in offered:
                        return protocol
                return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

            ctx.set_alpn_select_callback(select)
    keylog = config.keylog_file if config.keylog_file is not None else os.environ.get("SSLKEYLOGFILE")
    if keylog:
        path = keylog

        def write_keylog(conn: SSL.Connection, line: bytes) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(line + b"\n")

        ctx.set_keylog_callback(write_keylog)
    if side == "server":
        ctx.set_session_id(_SESSION_ID_CONTEXT)
        ctx.set_cookie_generate_callback(_cookie_generate)
        ctx.set_cookie_verify_callback(_cookie_verify)
    else:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    return ctx


def _use_certificate(ctx: SSL.Context, cert: Certificate) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    certs = x509.load_pem_x509_certificates(cert.cert_pem)
    key = load_pem_private_key(cert.key_pem, cert.password)
    ctx.use_certificate(certs[0])
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    for extra in certs[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.check_privatekey()


def _load_cadata(ctx: SSL.Context, cadata: str | bytes) -> None:
    data = cadata.encode() if isinstance(cadata, str) else cadata
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(prefix="conduit-dtls-ca-", dir=shm, suffix=".pem") as f:
        f.write(data)
        f.flush()
        ctx.load_verify_locations(f.name)
