"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929): both sides,
and the UDP ASSOCIATE datagram header (RFC 1928 §7).

Client: greeting (methods: no authentication, plus username/password when
credentials are given) → method selection → [RFC 1929 exchange] → request →
reply. Server: the same from the other end; it emits a :class:`Request` and
the driver answers it with :meth:`Socks5Server.reply`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Final

from .._errors import (
    AddressError,
    ProxyAuthenticationError,
    ProxyError,
    ProxyProtocolError,
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

__all__ = [
    "Socks5Client",
    "Socks5Server",
    "encode_address",
    "pack_udp_header",
    "unpack_udp_datagram_untrusted",
]

VERSION: Final = 5
AUTH_VERSION: Final = 1
NO_AUTH: Final = 0x00
USERPASS: Final = 0x02
NO_ACCEPTABLE: Final = 0xFF
ATYP_IPV4: Final = 1
ATYP_NAME: Final = 3
ATYP_IPV6: Final = 4
_COMMANDS: Final = {Command.CONNECT: 1, Command.BIND: 2, Command.UDP_ASSOCIATE: 3}
_COMMAND_OF: Final = {v: k for k, v in _COMMANDS.items()}
_METHOD_NAMES: Final = {NO_AUTH: "no authentication", USERPASS: "username/password"}
_PORT: Final = struct.Struct("!H")


def _reply_error(code: int) -> ProxyError:
    """A non-zero SOCKS5 reply as its typed error."""
    try:
        rc = ReplyCode(code)
    except ValueError:
        return ProxyRejected(errno.ECONNREFUSED, f"SOCKS5 reply {code:#04x}: unassigned reply code")
    text = f"SOCKS5 reply {code}: {rc.text()}"
    if rc is ReplyCode.CONNECTION_REFUSED:
        return ProxyTargetRefused(errno.ECONNREFUSED, text)
    if rc is ReplyCode.HOST_UNREACHABLE:
        return ProxyTargetUnreachable(errno.EHOSTUNREACH, text)
    if rc is ReplyCode.NETWORK_UNREACHABLE:
        return ProxyTargetUnreachable(errno.ENETUNREACH, text)
    if rc is ReplyCode.TTL_EXPIRED:
        return ProxyTimeout(errno.ETIMEDOUT, text)
    if rc is ReplyCode.COMMAND_NOT_SUPPORTED:
        return ProxyRejected(errno.EOPNOTSUPP, text)
    if rc is ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED:
        return ProxyRejected(errno.EAFNOSUPPORT, text)
    if rc is ReplyCode.NOT_ALLOWED:
        return ProxyRejected(errno.EACCES, text)
    return ProxyRejected(errno.ECONNREFUSED, text)


def encode_address(target: Target) -> bytes:
    """ATYP, DST.ADDR and DST.PORT for ``target`` (an IP literal, or a name of 1-255 bytes)."""
    if not 0 <= target.port <= 0xFFFF:
        raise AddressError(f"port {target.port} is out of range for SOCKS5")
    ip = target.ip
    if isinstance(ip, ipaddress.IPv4Address):
        return bytes((ATYP_IPV4,)) + ip.packed + _PORT.pack(target.port)
    if isinstance(ip, ipaddress.IPv6Address):
        return bytes((ATYP_IPV6,)) + ip.packed + _PORT.pack(target.port)
    try:
        name = target.name_bytes()
    except UnicodeError:
        raise AddressError(f"{target.host!r} cannot be sent to a SOCKS5 proxy as a host name") from None
    if not 1 <= len(name) <= 255:
        raise AddressError(f"host name {target.host!r} is longer than SOCKS5's 255 bytes")
    return bytes((ATYP_NAME, len(name))) + name + _PORT.pack(target.port)


def _decode_address(data: bytes, offset: int, protocol_error: Callable[[str], ProxyError]) -> int | None:
    """The length of the address at ``offset`` (ATYP included), or None if incomplete."""
    if len(data) <= offset:
        return None
    atyp = data[offset]
    if atyp == ATYP_IPV4:
        return 1 + 4 + 2
    if atyp == ATYP_IPV6:
        return 1 + 16 + 2
    if atyp == ATYP_NAME:
        if len(data) <= offset + 1:
            return None
        n = data[offset + 1]
        if n == 0:
            raise protocol_error("an empty host name")
        return 2 + n + 2
    raise protocol_error(f"unknown address type {atyp:#04x}")


def _read_address(raw: bytes, protocol_error: Callable[[str], ProxyError]) -> Target:
    """Parse a complete ATYP+ADDR+PORT (length known to be right)."""
    atyp = raw[0]
    port = _PORT.unpack(raw[-2:])[0]
    if atyp == ATYP_IPV4:
        return Target(socket.inet_ntop(socket.AF_INET, raw[1:5]), port)
    if atyp == ATYP_IPV6:
        return Target(socket.inet_ntop(socket.AF_INET6, raw[1:17]), port)
    name = raw[2:-2]
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise protocol_error(f"a host name that is not ASCII ({name[:40]!r})") from None
    if not text.isprintable() or any(c.isspace() for c in text):
        raise protocol_error(f"a host name with unprintable characters ({name[:40]!r})")
    return Target(text, port)


class Socks5Client(ClientEngine):
    """The client side of a SOCKS5 request.

    ``target``: where the proxy should connect (an IP literal is sent as an
    address, a name as a name: resolving locally first is the caller's
    choice). ``username``/``password``: offered with RFC 1929 as well as
    "no authentication"; the proxy picks. ``command``: ``CONNECT`` or
    ``UDP_ASSOCIATE`` (``target`` is then the address the client will send
    datagrams from; ``0.0.0.0:0`` if unknown).
    """

    protocol = "SOCKS5"

    def __init__(
        self,
        target: Target,
        *,
        username: str | None = None,
        password: str | None = None,
        command: Command = Command.CONNECT,
    ) -> None:
        super().__init__()
        self._request = bytes((VERSION, _COMMANDS[command], 0)) + encode_address(target)
        self._command = command
        self._credentials: bytes | None = None
        if username is not None:
            user = username.encode()
            secret = (password or "").encode()
            if not 1 <= len(user) <= 255:
                raise AddressError("a SOCKS5 user name must be 1 to 255 bytes (RFC 1929)")
            if len(secret) > 255:
                raise AddressError("a SOCKS5 password must be at most 255 bytes (RFC 1929)")
            self._credentials = bytes((AUTH_VERSION, len(user))) + user + bytes((len(secret),)) + secret
        self._methods = (NO_AUTH, USERPASS) if self._credentials is not None else (NO_AUTH,)
        self._out += bytes((VERSION, len(self._methods), *self._methods))
        self._state = "method"
        self.waiting_for = "its choice of authentication method"

    def _step(self) -> Event | NeedData:
        if self._state == "method":
            if not self._need(2, "its choice of authentication method"):
                return NEED_DATA
            version, method = self._in.take(2)
            if version != VERSION:
                raise self._protocol_error(f"the reply to the greeting starts with {version:#04x}, not 0x05")
            if method == NO_ACCEPTABLE:
                offered = " and ".join(_METHOD_NAMES[m] for m in self._methods)
                why = "it wants credentials" if self._credentials is None else f"offered: {offered}"
                raise ProxyAuthenticationError(
                    errno.EACCES, f"SOCKS5: no acceptable authentication method ({why})"
                )
            if method not in self._methods:
                raise self._protocol_error(f"the proxy chose method {method:#04x}, which was not offered")
            if method == USERPASS:
                assert self._credentials is not None
                self._out += self._credentials
                self._state = "auth"
                self.waiting_for = "its answer to the user name and password"
            else:
                self._out += self._request
                self._state = "reply"
                self.waiting_for = f"its reply to {self._command.value}"
        if self._state == "auth":
            if not self._need(2, "its answer to the user name and password"):
                return NEED_DATA
            version, status = self._in.take(2)
            # RFC 1929 says version 1; some servers answer with 5. Both are understood.
            if version not in (AUTH_VERSION, VERSION):
                raise self._protocol_error(f"the authentication reply starts with {version:#04x}")
            if status != 0:
                raise ProxyAuthenticationError(
                    errno.EACCES, f"SOCKS5 user name or password refused (RFC 1929 status {status:#04x})"
                )
            self._out += self._request
            self._state = "reply"
            self.waiting_for = f"its reply to {self._command.value}"
        if self._state == "reply":
            if not self._need(2, f"its reply to {self._command.value}"):
                return NEED_DATA
            head = self._in.peek(2)
            if head[0] != VERSION:
                raise self._protocol_error(f"the reply starts with {head[0]:#04x}, not 0x05")
            if head[1] != 0:
                raise _reply_error(head[1])
            header = self._in.peek(4 + 2 + 255 + 2)
            size = _decode_address(header, 3, self._protocol_error)
            if size is None or not self._need(3 + size, "its reply"):
                return NEED_DATA
            raw = self._in.take(3 + size)
            bound = _read_address(raw[3:], self._protocol_error)
            self._state = "done"
            self.waiting_for = "nothing"
            return Established("SOCKS5 reply 0: succeeded", bound)
        raise RuntimeError("next_event() after the handshake ended")


class Socks5Server(ServerEngine):
    """The server side of SOCKS5.

    ``check_credentials(username, password) -> bool``: require RFC 1929
    authentication and check it; ``None``: accept clients without any.
    Yields one :class:`Request` (after authentication); answer with
    :meth:`reply`. A client that fails authentication, asks for an unknown
    command or address type gets the protocol's refusal queued and the engine
    raises.
    """

    protocol = "SOCKS5"

    def __init__(self, *, check_credentials: Callable[[str, str], bool] | None = None) -> None:
        super().__init__()
        self._check = check_credentials
        self._state = "greeting"
        self._username: str | None = None
        self._request: Request | None = None

    def _refuse(self, code: ReplyCode, exc: ProxyError) -> ProxyError:
        self._out += bytes((VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0))
        return exc

    def _step(self) -> Event | NeedData:
        if self._state == "greeting":
            if not self._need(2, "its greeting"):
                return NEED_DATA
            version, count = self._in.peek(2)
            if version != VERSION:
                raise self._protocol_error(f"the greeting starts with {version:#04x}, not 0x05")
            if not self._need(2 + count, "its list of methods"):
                return NEED_DATA
            methods = self._in.take(2 + count)[2:]
            wanted = USERPASS if self._check is not None else NO_AUTH
            if wanted not in methods:
                self._out += bytes((VERSION, NO_ACCEPTABLE))
                offered = ", ".join(_METHOD_NAMES.get(m, f"{m:#04x}") for m in methods) or "none"
                raise ProxyAuthenticationError(
                    errno.EACCES,
                    f"SOCKS5: the client does not offer {_METHOD_NAMES[wanted]} (it offers: {offered})",
                )
            self._out += bytes((VERSION, wanted))
            self._state = "auth" if wanted == USERPASS else "request"
        if self._state == "auth":
            if not self._need(2, "its user name"):
                return NEED_DATA
            version, ulen = self._in.peek(2)
            if version not in (AUTH_VERSION, VERSION):
                raise self._protocol_error(f"the authentication request starts with {version:#04x}")
            if not self._need(2 + ulen + 1, "its user name and password"):
                return NEED_DATA
            plen = self._in.at(2 + ulen)
            if not self._need(3 + ulen + plen, "its password"):
                return NEED_DATA
            raw = self._in.take(3 + ulen + plen)
            try:
                username = raw[2 : 2 + ulen].decode()
                password = raw[3 + ulen :].decode()
            except UnicodeDecodeError:
                username, password = "", ""
                ok = False
            else:
                assert self._check is not None
                ok = bool(username) and self._check(username, password)
            if not ok:
                self._out += bytes((AUTH_VERSION, 1))
                raise ProxyAuthenticationError(
                    errno.EACCES, "SOCKS5: the client's user name or password is wrong"
                )
            self._out += bytes((AUTH_VERSION, 0))
            self._username = username
            self._state = "request"
        if self._state == "request":
            if not self._need(4, "its request"):
                return NEED_DATA
            version, cmd, _rsv, atyp = self._in.peek(4)
            if version != VERSION:
                raise self._protocol_error(f"the request starts with {version:#04x}, not 0x05")
            if atyp not in (ATYP_IPV4, ATYP_IPV6, ATYP_NAME):
                raise self._refuse(
                    ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
                    ProxyRejected(errno.EAFNOSUPPORT, f"SOCKS5: unknown address type {atyp:#04x}"),
                )
            size = _decode_address(self._in.peek(3 + 2 + 255 + 2), 3, self._protocol_error)
            if size is None or not self._need(3 + size, "its request"):
                return NEED_DATA
            raw = self._in.take(3 + size)
            command = _COMMAND_OF.get(cmd)
            if command is None:
                raise self._refuse(
                    ReplyCode.COMMAND_NOT_SUPPORTED,
                    ProxyRejected(errno.EOPNOTSUPP, f"SOCKS5: unknown command {cmd:#04x}"),
                )
            try:
                target = _read_address(raw[3:], self._protocol_error)
            except ProxyProtocolError as exc:
                raise self._refuse(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED, exc) from None
            self._state = "wait"
            self._request = Request(self.protocol, command, target, self._username)
            return self._request
        if self._state == "wait":
            return NEED_DATA  # the driver must reply() first
        raise RuntimeError("next_event() after the request was answered")

    def reply(self, code: ReplyCode, bound: Target | None = None) -> None:
        if self._state != "wait":
            raise RuntimeError("reply() before a request, or twice")
        self._out += bytes((VERSION, code, 0)) + encode_address(bound or Target("0.0.0.0", 0))
        self._state = "done" if code == ReplyCode.SUCCEEDED else "closed"


# ---------------------------------------------------------------------------
# UDP ASSOCIATE datagrams (RFC 1928 §7)
# ---------------------------------------------------------------------------


def pack_udp_header(target: Target) -> bytes:
    """RSV, FRAG (0: no fragmentation) and the destination, to put before a datagram."""
    return b"\x00\x00\x00" + encode_address(target)


def _udp_error(what: str) -> ProxyError:
    return ProxyProtocolError(errno.EPROTO, f"not a SOCKS5 UDP datagram: {what}")


def unpack_udp_datagram_untrusted(datagram: bytes) -> tuple[Target, int, bytes]:
    """(source or destination, FRAG, payload) of a relayed datagram.

    Raises only :class:`~trio_conduit.ProxyProtocolError` (a malformed header).
    FRAG other than 0 means a fragment: RFC 1928 lets an implementation that
    does not reassemble drop it, as this library's channels do.
    """
    if len(datagram) < 4:
        raise _udp_error(f"{len(datagram)} bytes is shorter than the header")
    if datagram[0] or datagram[1]:
        raise _udp_error("the reserved bytes are not zero")
    size = _decode_address(datagram, 3, _udp_error)
    if size is None or len(datagram) < 3 + size:
        raise _udp_error("the address is cut short")
    source = _read_address(datagram[3 : 3 + size], _udp_error)
    return source, datagram[2], datagram[3 + size :]
