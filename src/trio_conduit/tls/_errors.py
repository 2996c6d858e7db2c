"""TLS errors: one base class, a few kinds, each with the reason in words.

A handshake that fails raises :class:`TLSError` (or a subclass) whose message
says who and why: ``TLS handshake with 127.0.0.1:4433 failed: certificate
verify failed: certificate has expired (X509 verify code 10)``. The OpenSSL
error, when there is one, is the ``__cause__``.
"""

from __future__ import annotations

import ssl

from .._errors import ConduitError

__all__ = [
    "ClientHelloError",
    "TLSError",
    "TLSHandshakeTimeout",
    "TLSRejected",
    "TLSVerifyError",
    "describe_ssl_error",
]


class TLSError(ConduitError):
    """A TLS handshake (or setup) failed.

    ``reason`` is a short upper-case code (OpenSSL's, e.g. ``TLSV1_ALERT_UNKNOWN_CA``,
    or ours: ``PEER_CLOSED``, ``REJECTED``, ``TIMEOUT``, ``BAD_CLIENT_HELLO``,
    ``NO_CERTIFICATE``, ``PIN_MISMATCH``); ``peer`` the peer's address, when known.
    """

    reason: str
    peer: str | None

    def __init__(self, message: str, *, reason: str = "TLS_ERROR", peer: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.peer = peer

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self),), {"reason": self.reason, "peer": self.peer})


class TLSVerifyError(TLSError):
    """The peer's certificate was not accepted: OpenSSL's verification, the
    host name check, a pin, or a ``conduit_tls_verify_peer`` hook said no.

    ``verify_code`` is OpenSSL's X509 verify code (``10`` expired, ``18``/``19``
    self-signed, ``20`` unknown issuer, ``62`` host name mismatch, ...) or
    ``None`` when the refusal was ours (a pin, a hook); ``verify_message``
    says it in words.
    """

    verify_code: int | None
    verify_message: str

    def __init__(
        self,
        message: str,
        *,
        reason: str = "CERTIFICATE_VERIFY_FAILED",
        peer: str | None = None,
        verify_code: int | None = None,
        verify_message: str = "",
    ) -> None:
        super().__init__(message, reason=reason, peer=peer)
        self.verify_code = verify_code
        self.verify_message = verify_message

    def __reduce__(self) -> tuple[object, ...]:
        state = {
            "reason": self.reason,
            "peer": self.peer,
            "verify_code": self.verify_code,
            "verify_message": self.verify_message,
        }
        return (type(self), (str(self),), state)


class TLSRejected(TLSError):
    """A hook refused the connection (``handshake.reject(reason)``, or it raised)."""

    def __init__(self, message: str, *, reason: str = "REJECTED", peer: str | None = None) -> None:
        super().__init__(message, reason=reason, peer=peer)


class TLSHandshakeTimeout(TLSError, TimeoutError):
    """The handshake (hooks included) did not finish within ``handshake_timeout``."""

    def __init__(self, message: str, *, reason: str = "TIMEOUT", peer: str | None = None) -> None:
        super().__init__(message, reason=reason, peer=peer)


class ClientHelloError(TLSError):
    """The bytes a client sent are not a ClientHello we accept.

    The only exception the ClientHello parser raises, whatever the input.
    """

    def __init__(self, message: str, *, reason: str = "BAD_CLIENT_HELLO", peer: str | None = None) -> None:
        super().__init__(message, reason=reason, peer=peer)


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """An OpenSSL error in words: ``the peer sent a fatal alert: unknown ca (TLSV1_ALERT_UNKNOWN_CA)``."""
    reason = exc.reason or ""
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return "the peer closed the connection without close_notify (ragged_eof=True accepts that)"
    if reason:
        text = reason.lower().replace("_", " ")
        if "alert" in text:
            alert = text.split("alert", 1)[1].strip()
            return f"the peer sent a fatal alert: {alert} ({reason})"
        return f"{text} ({reason})"
    return str(exc)
