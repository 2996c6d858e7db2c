"""HTTP CONNECT (RFC 9110 §9.3.6), both sides, with Basic authentication (RFC 7617).

The client sends ``CONNECT host:port HTTP/1.1`` with the same authority in
``Host`` (IPv6 in brackets), and ``Proxy-Authorization: Basic ...`` when it
has credentials. Any 2xx answer opens the tunnel; its header section ends the
handshake (a 2xx reply to CONNECT has no body) and whatever follows is the
tunnel's first bytes. Informational (1xx) answers are skipped. An error
status becomes a typed error: 407 (or 401) → authentication; an RFC 9209
``Proxy-Status`` error, or squid's ``X-Squid-Error`` errno, says why the
target could not be reached; otherwise 504 → timeout, 502/503 → unreachable,
anything else → rejected.
"""

from __future__ import annotations

import base64
import binascii
import errno
import re
from collections.abc import Callable
from typing import Final

from .._errors import (
    AddressError,
    ProxyAuthenticationError,
    ProxyError,
    ProxyRejected,
    ProxyTargetRefused,
    ProxyTargetUnreachable,
    ProxyTimeout,
)
from ._engine import (
    NEED_DATA,
    ClientEngine,
    Command,
    Established,
    Event,
    NeedData,
    ReplyCode,
    Request,
    ServerEngine,
)
from ._url import Target

__all__ = ["HTTPConnectClient", "HTTPConnectServer", "basic_credentials"]

#: The largest header section either side reads before calling it junk.
MAX_HEAD: Final = 64 * 1024
_STATUS_LINE: Final = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\Z")
_REQUEST_LINE: Final = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d)\.(\d)\Z")
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_PROXY_STATUS_ERROR: Final = re.compile(rb"(?:^|;)\s*error\s*=\s*\"?([a-z_]+)", re.IGNORECASE)
_SQUID_ERRNO: Final = re.compile(rb"\s(\d+)\s*\Z")

#: RFC 9209 Proxy-Status error types → (error class, errno).
_PROXY_STATUS: Final[dict[str, tuple[type[ProxyError], int]]] = {
    "connection_refused": (ProxyTargetRefused, errno.ECONNREFUSED),
    "connection_timeout": (ProxyTimeout, errno.ETIMEDOUT),
    "destination_ip_unroutable": (ProxyTargetUnreachable, errno.ENETUNREACH),
    "destination_unavailable": (ProxyTargetUnreachable, errno.EHOSTUNREACH),
    "destination_not_found": (ProxyTargetUnreachable, errno.EHOSTUNREACH),
    "dns_error": (ProxyTargetUnreachable, errno.EHOSTUNREACH),
    "dns_timeout": (ProxyTimeout, errno.ETIMEDOUT),
    "destination_ip_prohibited": (ProxyRejected, errno.EACCES),
}
_BY_ERRNO: Final[dict[int, type[ProxyError]]] = {
    errno.ECONNREFUSED: ProxyTargetRefused,
    errno.ETIMEDOUT: ProxyTimeout,
    errno.EHOSTUNREACH: ProxyTargetUnreachable,
    errno.ENETUNREACH: ProxyTargetUnreachable,
}
#: What a server says for each reply code: (status, reason, RFC 9209 error type).
_HTTP_REPLY: Final = {
    ReplyCode.SUCCEEDED: (200, "Connection established", None),
    ReplyCode.GENERAL_FAILURE: (502, "Bad Gateway", "proxy_internal_error"),
    ReplyCode.NOT_ALLOWED: (403, "Forbidden", "destination_ip_prohibited"),
    ReplyCode.NETWORK_UNREACHABLE: (502, "Network Unreachable", "destination_ip_unroutable"),
    ReplyCode.HOST_UNREACHABLE: (502, "Host Unreachable", "destination_unavailable"),
    ReplyCode.CONNECTION_REFUSED: (502, "Connection Refused", "connection_refused"),
    ReplyCode.TTL_EXPIRED: (504, "Gateway Timeout", "connection_timeout"),
    ReplyCode.COMMAND_NOT_SUPPORTED: (405, "Method Not Allowed", None),
    ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: (400, "Bad Request", None),
}


def basic_credentials(username: str, password: str | None) -> str:
    """The ``Proxy-Authorization`` value for Basic authentication (UTF-8, RFC 7617)."""
    if ":" in username:
        raise AddressError("a user name for HTTP Basic authentication cannot contain ':'")
    raw = f"{username}:{password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _split_head(data: bytes) -> list[bytes]:
    """The header section's lines (CRLF or a bare LF ends a line)."""
    return [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]


def _parse_fields(lines: list[bytes], error: Callable[[str], ProxyError]) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise error(f"a malformed header line {line[:60]!r}")
        fields.append((name.lower(), value.strip(b" \t")))
    return fields


class _HeadReader:
    """Finds the end of a header section (an empty line) in a buffer, at most MAX_HEAD bytes in."""

    def __init__(self) -> None:
        self._scanned = 0

    def end(self, engine: HTTPConnectClient | HTTPConnectServer, what: str) -> int | None:
        buf = engine._in
        start = max(0, self._scanned - 3)
        ends = [
            i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if 0 <= (i := buf.find(sep, start)) <= MAX_HEAD
        ]
        if ends:
            self._scanned = 0
            return min(ends)
        self._scanned = len(buf)
        if len(buf) > MAX_HEAD:
            raise engine._protocol_error(f"{what} is longer than {MAX_HEAD} bytes")
        engine._need(len(buf) + 1, what)
        return None


class HTTPConnectClient(ClientEngine):
    """The client side of ``CONNECT``: ``target`` as the request target and ``Host``.

    ``username``/``password``: Basic authentication. ``headers``: more header
    lines to send, as (name, value) pairs.
    """

    protocol = "HTTP"

    def __init__(
        self,
        target: Target,
        *,
        username: str | None = None,
        password: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__()
        if not 1 <= target.port <= 0xFFFF:
            raise AddressError(f"port {target.port} is out of range for HTTP CONNECT")
        authority = target.hostport
        if target.ip is None:
            try:
                authority = target.name_bytes().decode("ascii") + f":{target.port}"
            except UnicodeError:
                raise AddressError(f"{target.host!r} cannot be sent in an HTTP request") from None
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if username is not None:
            lines.append(f"Proxy-Authorization: {basic_credentials(username, password)}")
        for name, value in headers:
            if not _TOKEN.match(name.encode()) or any(c in value for c in "\r\n\0"):
                raise AddressError(f"bad extra header {name!r}")
            lines.append(f"{name}: {value}")
        self._out += ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._authenticated = username is not None
        self._head = _HeadReader()
        self.waiting_for = f"its answer to CONNECT {authority}"

    def _step(self) -> Event | NeedData:
        while True:
            # Not HTTP at all (an SSH banner, a SOCKS reply): say so at once, without waiting
            # for a header section that will never end.
            start = self._in.peek(5)
            if not b"HTTP/".startswith(start[:5]):
                line_end = self._in.find(b"\n")
                first = self._in.peek(line_end if 0 <= line_end < 60 else 60)
                raise self._protocol_error(f"the reply starts with {first!r}")
            end = self._head.end(self, "the reply's header section")
            if end is None:
                return NEED_DATA
            lines = _split_head(self._in.take(end))
            status_line = lines[0]
            match = _STATUS_LINE.match(status_line)
            if match is None:
                raise self._protocol_error(f"the reply starts with {status_line[:60]!r}")
            status = int(match.group(3))
            shown = status_line.decode("latin-1")
            fields = _parse_fields([line for line in lines[1:] if line], self._protocol_error)
            if 100 <= status < 200:
                continue  # informational: the real answer follows
            if 200 <= status < 300:
                self.waiting_for = "nothing"
                return Established(shown)
            raise self._status_error(status, shown, fields)

    def _status_error(self, status: int, shown: str, fields: list[tuple[bytes, bytes]]) -> ProxyError:
        # A 401 to CONNECT can only be the proxy's own (no tunnel exists yet): tinyproxy sends it.
        if status in (401, 407):
            why = "credentials refused" if self._authenticated else "the proxy wants credentials"
            return ProxyAuthenticationError(errno.EACCES, f"{shown} ({why})")
        for name, value in fields:
            if name == b"proxy-status":
                m = _PROXY_STATUS_ERROR.search(value)
                known = _PROXY_STATUS.get(m.group(1).decode().lower()) if m else None
                if known is not None:
                    cls, err = known
                    return cls(err, f"{shown} (Proxy-Status: {value.decode('latin-1')[:120]})")
            if name == b"x-squid-error":
                m = _SQUID_ERRNO.search(value)
                squid_cls = _BY_ERRNO.get(int(m.group(1))) if m and len(m.group(1)) < 6 else None
                if m is not None and squid_cls is not None:
                    err = int(m.group(1))
                    return squid_cls(err, f"{shown} (X-Squid-Error: {value.decode('latin-1')[:120]})")
        if status == 504:
            return ProxyTimeout(errno.ETIMEDOUT, shown)
        if status in (502, 503):
            return ProxyTargetUnreachable(errno.EHOSTUNREACH, shown)
        return ProxyRejected(errno.EACCES if status == 403 else errno.ECONNREFUSED, shown)


def _parse_authority(target: bytes) -> Target | None:
    """``host:port`` (IPv6 in brackets) from a CONNECT request target, or None."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_text = rest[1:]
        host = host.replace("%25", "%", 1)
        if Target(host, 0).ip is None:
            return None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host or "@" in host or "/" in host:
            return None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    port = int(port_text)
    if not 1 <= port <= 0xFFFF:
        return None
    return Target(host.lower() if not host.startswith("[") else host, port)


class HTTPConnectServer(ServerEngine):
    """The server side of ``CONNECT``.

    ``check_credentials(username, password) -> bool``: require Basic
    authentication (a client without it, or with wrong ones, gets 407 and the
    engine raises); ``None``: no authentication. Other methods get 405, a
    malformed request 400.
    """

    protocol = "HTTP"

    def __init__(self, *, check_credentials: Callable[[str, str], bool] | None = None) -> None:
        super().__init__()
        self._check = check_credentials
        self._head = _HeadReader()
        self._state = "request"

    def _respond(self, status: int, reason: str, *fields: str) -> None:
        lines = [f"HTTP/1.1 {status} {reason}", *fields]
        if status >= 300:
            lines += ["Content-Length: 0", "Connection: close"]
        self._out += ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _step(self) -> Event | NeedData:
        if self._state == "wait":
            return NEED_DATA
        if self._state != "request":
            raise RuntimeError("next_event() after the request was answered")
        end = self._head.end(self, "the request's header section")
        if end is None:
            return NEED_DATA
        lines = _split_head(self._in.take(end))
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
        while lines and not lines[0]:
            lines.pop(0)
        match = _REQUEST_LINE.match(lines[0]) if lines else None
        if match is None:
            self._respond(400, "Bad Request")
            raise self._protocol_error(f"the request starts with {lines[0][:60] if lines else b''!r}")
        method, target_raw = match.group(1), match.group(2)
        fields = _parse_fields([line for line in lines[1:] if line], self._protocol_error)
        if method != b"CONNECT":
            self._respond(405, "Method Not Allowed", "Allow: CONNECT")
            raise ProxyRejected(errno.EOPNOTSUPP, f"HTTP: {method.decode()} is not supported, only CONNECT")
        target = _parse_authority(target_raw)
        if target is None:
            self._respond(400, "Bad Request")
            raise self._protocol_error(f"a CONNECT target that is not host:port ({target_raw[:60]!r})")
        username = None
        if self._check is not None:
            credentials = next((v for n, v in fields if n == b"proxy-authorization"), None)
            username = self._authenticate(credentials)
            if username is None:
                self._respond(
                    407, "Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="conduit"'
                )
                why = "no credentials" if credentials is None else "wrong credentials"
                raise ProxyAuthenticationError(errno.EACCES, f"HTTP: the client sent {why}")
        self._state = "wait"
        return Request(self.protocol, Command.CONNECT, target, username)

    def _authenticate(self, value: bytes | None) -> str | None:
        if value is None:
            return None
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            raw = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        username, colon, password = raw.partition(":")
        assert self._check is not None
        if not colon or not self._check(username, password):
            return None
        return username

    def reply(self, code: ReplyCode, bound: Target | None = None) -> None:
        if self._state != "wait":
            raise RuntimeError("reply() before a request, or twice")
        status, reason, error = _HTTP_REPLY[code]
        fields = [f"Proxy-Status: conduit; error={error}"] if error else []
        self._respond(status, reason, *fields)
        self._state = "done" if code == ReplyCode.SUCCEEDED else "closed"
