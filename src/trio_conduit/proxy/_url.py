"""Proxy URLs (``socks5h://user:pass@host:port``) and tunnel targets.

A proxy URL's password lives in one attribute of :class:`ProxyURL` and
nowhere else: ``str()``, ``repr()``, trace lines and error messages show
``***`` in its place, and parsing errors never quote it.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

from .._address import Address, URLParts, parse_host_port, split_url
from .._errors import AddressError

__all__ = ["ProxyURL", "Target", "split_proxy_url"]

REDACTED: Final = "***"
_UNSET: Final = object()


@dataclass(frozen=True, slots=True)
class Target:
    """Where a hop is asked to connect: a host (an IP literal or a name) and a port.

    IPv6 literals are kept without brackets (``::1``).
    """

    host: str
    port: int
    _ip: object = field(init=False, repr=False, compare=False, default=_UNSET)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address, or ``None`` for a name (worked out once)."""
        ip = self._ip
        if ip is _UNSET:
            try:
                ip = ipaddress.ip_address(self.host.split("%", 1)[0])
            except ValueError:
                ip = None
            object.__setattr__(self, "_ip", ip)
        return ip  # type: ignore[return-value]

    @property
    def hostport(self) -> str:
        """``host:port``, with brackets around an IPv6 address (the HTTP authority form)."""
        host = self.host
        if ":" in host:
            host = "[" + host.replace("%", "%25", 1) + "]"
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.hostport

    def name_bytes(self) -> bytes:
        """The host name as it goes on the wire: ASCII as it is, anything else IDNA-encoded.

        Raises UnicodeError if it cannot be encoded.
        """
        if self.host.isascii():
            return self.host.encode("ascii")
        return self.host.encode("idna")


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """One parsed hop of a proxy chain.

    ``username``/``password`` are percent-decoded (``None`` when absent).
    ``str(url)`` and ``repr(url)`` show the password as ``***``.
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()

    @property
    def target(self) -> Target:
        """This proxy as the target of the hop before it."""
        return Target(self.host, self.port)

    @property
    def address(self) -> Address:
        """``tcp://host:port`` of the proxy: how the first hop is reached."""
        return Address("tcp", host=self.host, port=self.port)

    @property
    def redacted(self) -> str:
        """The URL with the password shown as ``***`` (what logs and errors print)."""
        auth = ""
        if self.username is not None:
            auth = urllib.parse.quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + REDACTED
            auth += "@"
        q = ("?" + urllib.parse.urlencode(self.query)) if self.query else ""
        return f"{self.scheme}://{auth}{Target(self.host, self.port).hostport}{q}"

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"ProxyURL({self.redacted!r})"


def _decode(text: str, what: str, shown: str) -> str:
    if "%" in text and re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise AddressError(f"{shown!r}: invalid percent-escape in the {what} (write '%' itself as %25)")
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise AddressError(f"{shown!r}: the {what} is not valid UTF-8 after percent-decoding") from None


def split_proxy_url(text: object) -> tuple[URLParts, str | None, str | None]:
    """Cut a proxy URL into (parts without the user information, username, password).

    The parts' ``text`` (what error messages quote) has the password replaced
    by ``***``; nothing raised here quotes the password.
    """
    if not isinstance(text, str):
        raise AddressError(f"a proxy must be a URL string, not {type(text).__name__}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        # No userinfo can be told apart without "://": quote nothing after an '@'.
        shown = text.split("@")[-1] if "@" in text else text
        raise AddressError(f"{shown!r}: no scheme; expected a proxy URL like socks5://host:1080")
    username = password = None
    if "@" in rest:
        # Everything up to the last '@' is user information, even a '/', '?' or '#' in an
        # unencoded password: it must never be taken for the host, path or query (and quoted).
        userinfo, _, after = rest.rpartition("@")
        user_text, colon, pass_text = userinfo.partition(":")
        shown_auth = user_text + (":" + REDACTED if colon else "")
        shown = f"{scheme}://{shown_auth}@{after}"
        bad = next((c for c in userinfo if c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F), None)
        if bad is not None:
            raise AddressError(f"{shown!r}: whitespace or a control character in the user information")
        if any(c in user_text for c in "/?#"):
            raise AddressError(f"{shown!r}: '/', '?' and '#' in a user name must be percent-encoded")
        username = _decode(user_text, "user name", shown)
        password = _decode(pass_text, "password", shown) if colon else None
        parts = split_url(f"{scheme}://{after}")
        parts = URLParts(shown, parts.scheme, parts.authority, parts.path, parts.query)
    else:
        parts = split_url(text)
    return parts, username, password


def parse_proxy_parts(
    parts: URLParts, username: str | None, password: str | None, *, default_port: int
) -> ProxyURL:
    """The generic ``scheme://[user[:pass]@]host[:port]`` grammar (IPv6 in brackets)."""
    address = parse_host_port(parts, listening=False, default_port=default_port)
    assert address.host is not None
    assert address.port is not None
    return ProxyURL(parts.scheme, address.host, address.port, username, password, parts.query)
