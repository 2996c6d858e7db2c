"""URL parsing. One grammar splitter; the scheme's transport says what the rest means.

``split_url`` cuts ``scheme://authority/path?query`` and rejects junk. The
transport registered for the scheme then turns the parts into an
:class:`Address` with one of the shared helpers here (``parse_host_port`` for
``host:port`` schemes, ``parse_unix_path`` for socket paths) or its own code.
Every failure is an :class:`AddressError` that names the URL and what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Final

from ._errors import AddressError
from ._record import Record
from ._record import set_field as _set

__all__ = [
    "Address",
    "Option",
    "URLParts",
    "parse_bool",
    "parse_host_port",
    "parse_unix_path",
    "split_url",
]

#: Names of options whose values are secret (an Option made with ``secret=True`` adds its name).
SECRET_OPTIONS: set[str] = {"password", "passphrase", "secret", "key_password"}
REDACTED: Final = "***"


def redact_query(query: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``query`` with the values of secret options replaced by ``***``."""
    return tuple((k, REDACTED if k in SECRET_OPTIONS else v) for k, v in query)


def redact_url(text: str) -> str:
    """A URL's text for display: secret query values and any ``user:password@`` password
    shown as ``***`` (no parsing beyond that: safe on malformed text)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    head, q, qs = rest.partition("?")
    slash = head.find("/")
    auth, path = (head, "") if slash < 0 else (head[:slash], head[slash:])
    if "@" in auth:
        user, _, hostport = auth.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":" + REDACTED
        auth = f"{user}@{hostport}"
    if q:
        parts = []
        for item in qs.split("&"):
            key, eq, _ = item.partition("=")
            parts.append(f"{key}={REDACTED}" if eq and urllib.parse.unquote(key) in SECRET_OPTIONS else item)
        qs = "&".join(parts)
    return f"{scheme}{sep}{auth}{path}{q}{qs}"


_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.\-]*\Z")
_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_\-]{1,63}(?<!-)\Z")
_MAX_URL: Final = 4096
UNIX_PATH_MAX: Final = 107  # sun_path is 108 bytes including the terminating NUL


class URLParts(Record):
    """A URL cut into its pieces, before any transport has looked at it."""

    __slots__ = ("text", "scheme", "authority", "path", "query")
    text: str
    scheme: str
    authority: str
    path: str
    query: tuple[tuple[str, str], ...]

    def __init__(
        self, text: str, scheme: str, authority: str, path: str, query: tuple[tuple[str, str], ...]
    ) -> None:
        _set(self, "text", text)
        _set(self, "scheme", scheme)
        _set(self, "authority", authority)
        _set(self, "path", path)
        _set(self, "query", query)

    def error(self, what: str) -> AddressError:
        return AddressError(f"{self.text!r}: {what}")


class Address(Record):
    """A parsed, validated address.

    ``host``/``port`` for network schemes (IPv6 without brackets; ``host`` is
    ``""`` for "all interfaces" when listening), ``path`` for socket paths
    (``"@name"`` is the Linux abstract namespace), ``params`` the URL's query
    parameters. ``str(address)`` is the URL again.
    """

    __slots__ = ("scheme", "host", "port", "path", "query")
    scheme: str
    host: str | None
    port: int | None
    path: str | None
    query: tuple[tuple[str, str], ...]

    def __init__(
        self,
        scheme: str,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        query: tuple[tuple[str, str], ...] = (),
    ) -> None:
        _set(self, "scheme", scheme)
        _set(self, "host", host)
        _set(self, "port", port)
        _set(self, "path", path)
        _set(self, "query", query)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.query)

    @property
    def hostport(self) -> str:
        """``host:port`` with brackets around IPv6, or the path."""
        if self.path is not None:
            return self.path
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}" if self.port is not None else host

    def url(self) -> str:
        """The whole URL, secrets included: for parsing again, never for display."""
        if self.path is not None:
            rest = urllib.parse.quote(self.path, safe="/@:~+-._")
        else:
            rest = self.hostport
            if self.host and "%" in self.host:  # an IPv6 zone id, written %25<zone> (RFC 6874)
                ip, zone = self.host.split("%", 1)
                rest = rest.replace(self.host, f"{ip}%25{urllib.parse.quote(zone, safe='')}", 1)
        q = ("?" + urllib.parse.urlencode(self.query)) if self.query else ""
        return f"{self.scheme}://{rest}{q}"

    def __str__(self) -> str:
        """The URL again, with the values of secret options (passwords) shown as ``***``."""
        if not self.query or SECRET_OPTIONS.isdisjoint(k for k, _ in self.query):
            return self.url()
        shown = self.replace(query=redact_query(self.query)).url()
        return shown.replace("=%2A%2A%2A", "=" + REDACTED)

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"


_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def check_escapes(text: str, shown: str) -> None:
    """AddressError if ``text`` has a ``%`` that does not start a ``%XX`` escape."""
    bad = _BAD_ESCAPE.search(text)
    if bad is not None:
        raise AddressError(f"{shown!r}: invalid percent-escape in the query (write '%' itself as %25)")


def split_url(text: object) -> URLParts:
    """Cut ``scheme://authority/path?query`` into parts, rejecting junk.

    The scheme is returned lower-cased. Fragments, whitespace and control
    characters are refused; repeated query keys are refused (which one would win?).
    """
    if not isinstance(text, str):
        raise AddressError(f"an address must be a str URL, not {type(text).__name__}")
    shown = redact_url(text)
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    if not text:
        raise AddressError("empty address: expected a URL like tcp://host:port")
    if len(text) > _MAX_URL:
        raise AddressError(f"{shown!r}: longer than {_MAX_URL} characters")
    bad = next((c for c in text if c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise AddressError(f"{shown!r}: contains whitespace or a control character ({bad!r})")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise AddressError(f"{shown!r}: no scheme; expected a URL like tcp://host:port")
    scheme = scheme.lower()
    if not _SCHEME.match(scheme):
        raise AddressError(f"{shown!r}: {scheme!r} is not a valid scheme name")
    if "#" in rest:
        raise AddressError(f"{shown!r}: fragments ('#...') have no meaning in a connection URL")
    rest, _, qs = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    query: list[tuple[str, str]] = []
    if qs:
        check_escapes(qs, shown)
        try:
            pairs = urllib.parse.parse_qsl(qs, keep_blank_values=True, strict_parsing=True, errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise AddressError(f"{shown!r}: malformed query string: {exc}") from None
        seen: set[str] = set()
        for key, value in pairs:
            if not key:
                raise AddressError(f"{shown!r}: empty option name in the query string")
            if key in seen:
                raise AddressError(f"{shown!r}: option {key!r} given twice")
            seen.add(key)
            query.append((key, value))
    return URLParts(shown, scheme, authority, path, tuple(query))


def _parse_port(parts: URLParts, text: str, *, listening: bool) -> int:
    if not text:
        raise parts.error("missing port number after ':'")
    if not text.isascii() or not text.isdigit():
        raise parts.error(f"port {text!r} is not a number")
    if len(text) > 5 or int(text) > 65535:
        raise parts.error(f"port {text} is out of range (1-65535)")
    port = int(text)
    if port == 0 and not listening:
        raise parts.error("port 0 can only be used to listen (it asks the kernel to choose)")
    return port


def _check_hostname(parts: URLParts, host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if len(host) > 253:
        raise parts.error("host name longer than 253 characters")
    labels = host.rstrip(".").split(".") if host != "." else [""]
    if any(not _HOST_LABEL.match(label) for label in labels):
        raise parts.error(f"{host!r} is not a valid host name or IP address")
    if all(label.isdigit() for label in labels):
        raise parts.error(f"{host!r} is not a valid IPv4 address")
    return host.lower()


def parse_host_port(parts: URLParts, *, listening: bool, default_port: int | None = None) -> Address:
    """The ``scheme://host:port`` grammar shared by network transports.

    IPv6 literals go in brackets (``[::1]:80``, zone ids as ``[fe80::1%25eth0]``).
    When ``listening`` the host may be empty (all interfaces) and the port 0.
    """
    if parts.path not in ("", "/"):
        raise parts.error(f"unexpected path {parts.path!r} after host:port")
    auth = parts.authority
    if "@" in auth:
        raise parts.error("user information ('user@') is not allowed here")
    if auth.startswith("["):
        end = auth.find("]")
        if end < 0:
            raise parts.error("'[' without a closing ']' around the IPv6 address")
        literal = urllib.parse.unquote(auth[1:end])
        after = auth[end + 1 :]
        zone = ""
        if "%" in literal:
            literal, zone = literal.split("%", 1)
            if not zone:
                raise parts.error("empty IPv6 zone id after '%'")
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise parts.error(f"{literal!r} is not a valid IPv6 address") from None
        if zone:
            host = f"{host}%{zone}"
        if after and not after.startswith(":"):
            raise parts.error(f"unexpected {after!r} after the IPv6 address")
        port_text = after[1:] if after else None
    else:
        if auth.count(":") > 1:
            raise parts.error("IPv6 addresses must be written in brackets, e.g. tcp://[::1]:80")
        host, colon, port_text_ = auth.partition(":")
        port_text = port_text_ if colon else None
        if host:
            host = _check_hostname(parts, host)
        elif not listening:
            raise parts.error("missing host")
    if port_text is None:
        if default_port is None:
            raise parts.error("missing port (expected host:port)")
        port = default_port
    else:
        port = _parse_port(parts, port_text, listening=listening)
    return Address(parts.scheme, host=host, port=port, query=parts.query)


def parse_unix_path(parts: URLParts) -> Address:
    """``unix:///absolute/path`` or ``unix://@abstract-name`` (Linux abstract namespace)."""
    raw = parts.authority + parts.path
    try:
        path = urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise parts.error("the socket path is not valid UTF-8 after percent-decoding") from None
    if parts.authority and not parts.authority.startswith("@"):
        raise parts.error(
            "a unix socket address is an absolute path (unix:///tmp/s.sock) "
            "or an abstract name (unix://@name); this looks like a host name"
        )
    if not path or path == "@":
        raise parts.error("missing socket path")
    if "\x00" in path:
        raise parts.error("NUL byte in the socket path")
    # sun_path is 108 bytes: a path needs its terminating NUL, an abstract name ("@" → NUL) does not.
    limit = UNIX_PATH_MAX + 1 if path.startswith("@") else UNIX_PATH_MAX
    if len(path.encode()) > limit:
        raise parts.error(f"socket path longer than {limit} bytes (the kernel's limit)")
    return Address(parts.scheme, path=path, query=parts.query)


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {text!r}")


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text[:100]!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


#: The largest count an option takes unless it says otherwise (a C ``int``).
COUNT_MAX: Final = 2**31 - 1


def _parse_count(text: str, maximum: int = COUNT_MAX, minimum: int = 0) -> int:
    if not text.isascii() or not text.strip().lstrip("+").isdigit():
        raise ValueError(f"expected a whole number >= {minimum}, got {text!r}")
    if len(text.strip()) > 24:
        raise ValueError(f"expected a count from {minimum} to {maximum}, got {text[:24]!r}...")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ValueError(f"expected a count from {minimum} to {maximum}, got {text!r}")
    return value


def _type_name(value: object) -> str:
    return type(value).__name__


def check_bool(value: object) -> bool:
    """A keyword value for a boolean option: a bool (or 0/1, or the URL's words)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return parse_bool(value)
    raise TypeError(f"expected a bool, not {_type_name(value)} {value!r}")


def check_seconds(value: object) -> float:
    """A keyword value for a seconds option: an int or float, finite and >= 0 (or its text)."""
    if isinstance(value, str):
        return _parse_seconds(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number of seconds, not {_type_name(value)} {value!r}")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _counter(maximum: int, minimum: int = 0) -> Callable[[object], int]:
    def check_count(value: object) -> int:
        if isinstance(value, str):
            return _parse_count(value, maximum, minimum)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an int, not {_type_name(value)} {value!r}")
        if not minimum <= value <= maximum:
            raise ValueError(f"expected a count from {minimum} to {maximum}, got {value!r}")
        return value

    return check_count


def check_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, not {_type_name(value)} {value!r}")
    return value


class Option(Record):
    """A transport option: settable as a keyword argument or a URL query parameter.

    ``parse`` converts the URL's text and raises ``ValueError`` on bad text.
    ``check`` checks (and may convert) a keyword argument's value, raising
    ``TypeError`` or ``ValueError``; without one, keyword values are taken as
    they are. ``None`` is always accepted for an option whose default is ``None``.
    ``secret``: the value is never shown — ``str(address)``, reprs, trace lines
    and errors print ``***`` in its place (a password).
    """

    __slots__ = ("name", "parse", "default", "doc", "check", "secret")
    name: str
    parse: Callable[[str], object]
    default: object
    doc: str
    check: Callable[[object], object] | None
    secret: bool

    def __init__(
        self,
        name: str,
        parse: Callable[[str], object],
        default: object,
        doc: str,
        check: Callable[[object], object] | None = None,
        secret: bool = False,
    ) -> None:
        _set(self, "name", name)
        _set(self, "parse", parse)
        _set(self, "default", default)
        _set(self, "doc", doc)
        _set(self, "check", check)
        _set(self, "secret", secret)
        if secret:
            SECRET_OPTIONS.add(name)

    @staticmethod
    def boolean(name: str, default: bool, doc: str) -> Option:
        return Option(name, parse_bool, default, doc, check_bool)

    @staticmethod
    def seconds(name: str, default: float | None, doc: str, *, maximum: float | None = None) -> Option:
        if maximum is None:
            return Option(name, _parse_seconds, default, doc, check_seconds)
        limit = maximum

        def check(value: object) -> float:
            seconds = check_seconds(value)
            if seconds > limit:
                raise ValueError(f"expected at most {limit:g} seconds, got {value!r}")
            return seconds

        return Option(name, check, default, doc, check)

    @staticmethod
    def count(
        name: str, default: int | None, doc: str, *, maximum: int = COUNT_MAX, minimum: int = 0
    ) -> Option:
        check = _counter(maximum, minimum)
        return Option(name, check, default, doc, check)

    @staticmethod
    def text(name: str, default: str | None, doc: str, *, secret: bool = False) -> Option:
        return Option(name, str, default, doc, check_text, secret)


def resolve_options(
    where: object,
    known: Mapping[str, Option],
    query: tuple[tuple[str, str], ...],
    given: Mapping[str, object],
) -> dict[str, object]:
    """Merge defaults, URL query parameters and keyword arguments (which win).

    ``where`` (the address; made text only for an error message) says where the options came from.
    """
    out = {name: opt.default for name, opt in known.items()}
    for key, text in query:
        opt = known.get(key)
        if opt is None:
            raise AddressError(
                f"{where}: unknown option {key!r} (known: {', '.join(sorted(known)) or 'none'})"
            )
        try:
            out[key] = opt.parse(text)
        except ValueError as exc:
            raise AddressError(f"{where}: bad value for option {key!r}: {exc}") from None
    for key, value in given.items():
        opt = known.get(key)
        if opt is None:
            raise TypeError(f"{where}: unknown option {key!r} (known: {', '.join(sorted(known)) or 'none'})")
        if opt.check is not None and not (value is None and opt.default is None):
            shown = "***" if opt.secret else None
            try:
                value = opt.check(value)
            except TypeError as exc:
                raise TypeError(f"{where}: option {key!r}: {shown or exc}") from None
            except ValueError as exc:
                raise ValueError(f"{where}: bad value for option {key!r}: {shown or exc}") from None
        out[key] = value
    return out
