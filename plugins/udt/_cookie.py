"""SYN cookies for the listener: HMAC-SHA-256 over the client's address and a time period.

The reference hashes ``host:port:minute`` with MD5 and no secret; we use an
HMAC keyed with a random per-listener secret (``cryptography``), keep the
reference's one-minute period and accept the current and the previous
period, so a cookie handed out just before a period boundary still works.
A cookie is the first four bytes of the MAC as a signed 32-bit integer (the
handshake field's type). Computing or checking one allocates no state.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.hazmat.primitives import hashes, hmac

__all__ = ["COOKIE_PERIOD", "CookieJar"]

#: Seconds per cookie period (the reference changes its secret input every minute).
COOKIE_PERIOD: Final = 60.0


class CookieJar:
    """Makes and checks SYN cookies for one listener."""

    __slots__ = ("_epoch", "_secret")

    def __init__(self, epoch: float, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        if len(self._secret) < 16:
            raise ValueError("the cookie secret must be at least 16 bytes")
        self._epoch = epoch

    def _period(self, now: float) -> int:
        return int((now - self._epoch) // COOKIE_PERIOD)

    def _mac(self, host: str, port: int, period: int) -> int:
        mac = hmac.HMAC(self._secret, hashes.SHA256())
        mac.update(f"{host}:{port}:{period}".encode())
        return int.from_bytes(mac.finalize()[:4], "big", signed=True)

    def make(self, host: str, port: int, now: float) -> int:
        """The cookie for a client at ``host:port`` now."""
        return self._mac(host, port, self._period(now))

    def check(self, cookie: int, host: str, port: int, now: float) -> bool:
        """Whether ``cookie`` was made for ``host:port`` in this period or the previous one."""
        period = self._period(now)
        return cookie in (self._mac(host, port, period), self._mac(host, port, period - 1))
