"""SOCKS4 and SOCKS4a, both sides.

SOCKS4 carries an IPv4 address only; SOCKS4a sends a host name instead, after
the USERID, with the address set to ``0.0.0.x`` (x not 0). The reply is eight
bytes: a null version byte, the code (90 granted, 91 rejected or failed, 92
and 93 identd trouble), a port and an address.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from collections.abc import Callable
from typing import Final

from .._errors import AddressError, ProxyAuthenticationError, ProxyRejected
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

__all__ = ["Socks4Client", "Socks4Server"]

VERSION: Final = 4
GRANTED: Final = 90
REJECTED: Final = 91
_REPLY: Final = struct.Struct("!BBH4s")
_REQUEST_HEAD: Final = struct.Struct("!BBH4s")
#: The longest USERID or host name a server accepts before calling the request junk.
MAX_FIELD: Final = 255
_CODES: Final = {
    GRANTED: "request granted",
    REJECTED: "request rejected or failed",
    92: "request rejected: the proxy cannot reach an identd on the client",
    93: "request rejected: identd reports a different user id",
}
_COMMANDS: Final = {Command.CONNECT: 1, Command.BIND: 2}
_COMMAND_OF: Final = {v: k for k, v in _COMMANDS.items()}


class Socks4Client(ClientEngine):
    """The client side of a SOCKS4 (``socks4a=False``) or SOCKS4a request.

    SOCKS4 needs an IPv4 ``target``: resolve names first. SOCKS4a sends a
    name as it is (an IPv4 literal still goes as an address).
    """

    def __init__(
        self, target: Target, *, userid: str = "", socks4a: bool = False, command: Command = Command.CONNECT
    ) -> None:
        super().__init__()
        self.protocol = "SOCKS4a" if socks4a else "SOCKS4"
        if command not in _COMMANDS:
            raise AddressError(f"SOCKS4 has no {command.value} command")
        user = userid.encode()
        if b"\0" in user:
            raise AddressError("a SOCKS4 user id cannot contain a NUL byte")
        ip = target.ip
        if isinstance(ip, ipaddress.IPv4Address) and ip.packed[:3] == b"\0\0\0" and ip.packed[3]:
            # 0.0.0.x (x not 0) is SOCKS4a's "a name follows" marker: it cannot be a SOCKS4 address.
            if not socks4a:
                raise AddressError(f"SOCKS4 cannot carry {target.host}: 0.0.0.x means a SOCKS4a host name")
            ip = None
        if isinstance(ip, ipaddress.IPv4Address):
            address, name = ip.packed, b""
        elif ip is not None:
            raise AddressError(f"{self.protocol} carries IPv4 addresses only, not {target.host}")
        elif not socks4a:
            raise AddressError(f"SOCKS4 needs an IPv4 address, not the name {target.host!r}: use socks4a")
        else:
            try:
                name = target.name_bytes()
            except UnicodeError:
                raise AddressError(f"{target.host!r} cannot be sent to a SOCKS4a proxy") from None
            address = b"\0\0\0\x01"
            name += b"\0"
        self._out += (
            _REQUEST_HEAD.pack(VERSION, _COMMANDS[command], target.port, address) + user + b"\0" + name
        )
        self.waiting_for = f"its reply to {command.value}"

    def _step(self) -> Event | NeedData:
        if not self._need(_REPLY.size, "its reply"):
            return NEED_DATA
        version, code, port, address = _REPLY.unpack(self._in.take(_REPLY.size))
        # The reply's version byte is 0; some servers put 4 there.
        if version not in (0, VERSION):
            raise self._protocol_error(f"the reply starts with {version:#04x}, not 0x00")
        text = f"{self.protocol} reply {code}: {_CODES.get(code, 'unknown reply code')}"
        if code == GRANTED:
            return Established(text, Target(str(ipaddress.IPv4Address(address)), port))
        if code in (92, 93):
            raise ProxyAuthenticationError(errno.EACCES, text)
        if code == REJECTED:
            raise ProxyRejected(errno.ECONNREFUSED, text)
        raise self._protocol_error(f"unknown reply code {code}")


class Socks4Server(ServerEngine):
    """The server side of SOCKS4 and SOCKS4a.

    ``check_userid(userid) -> bool``: accept only some USERIDs (refused ones
    get reply 91); ``None`` accepts any. ``socks4a``: accept host names.
    """

    protocol = "SOCKS4"

    def __init__(self, *, check_userid: Callable[[str], bool] | None = None, socks4a: bool = True) -> None:
        super().__init__()
        self._check = check_userid
        self._socks4a = socks4a
        self._state = "request"

    def _field(self, start: int, what: str) -> int | None:
        """End (the NUL's index) of a NUL-terminated field at ``start``, or None if incomplete."""
        end = self._in.find(b"\0", start)
        if end < 0:
            if len(self._in) - start > MAX_FIELD:
                raise self._protocol_error(f"no NUL within {MAX_FIELD} bytes of its {what}")
            self._need(len(self._in) + 1, f"its {what}")
            return None
        if end - start > MAX_FIELD:
            raise self._protocol_error(f"its {what} is longer than {MAX_FIELD} bytes")
        return end

    def _refuse(
        self, exc: ProxyRejected | ProxyAuthenticationError
    ) -> ProxyRejected | ProxyAuthenticationError:
        self._out += _REPLY.pack(0, REJECTED, 0, b"\0\0\0\0")
        return exc

    def _step(self) -> Event | NeedData:
        if self._state == "wait":
            return NEED_DATA
        if self._state != "request":
            raise RuntimeError("next_event() after the request was answered")
        if not self._need(_REQUEST_HEAD.size, "its request"):
            return NEED_DATA
        version, cmd, port, address = _REQUEST_HEAD.unpack(self._in.peek(_REQUEST_HEAD.size))
        if version != VERSION:
            raise self._protocol_error(f"the request starts with {version:#04x}, not 0x04")
        user_end = self._field(_REQUEST_HEAD.size, "USERID")
        if user_end is None:
            return NEED_DATA
        is_4a = address[:3] == b"\0\0\0" and address[3] != 0
        if is_4a:
            name_end = self._field(user_end + 1, "host name")
            if name_end is None:
                return NEED_DATA
            raw = self._in.take(name_end + 1)
            name = raw[user_end + 1 : name_end]
        else:
            raw = self._in.take(user_end + 1)
            name = b""
        userid_raw = raw[_REQUEST_HEAD.size : user_end]
        try:
            userid = userid_raw.decode()
            host = name.decode("ascii") if is_4a else str(ipaddress.IPv4Address(address))
        except UnicodeDecodeError:
            raise self._refuse(
                ProxyRejected(errno.EPROTO, "SOCKS4: a USERID or host name that is not text")
            ) from None
        protocol = "SOCKS4a" if is_4a else "SOCKS4"
        command = _COMMAND_OF.get(cmd)
        if command is None:
            raise self._refuse(ProxyRejected(errno.EOPNOTSUPP, f"{protocol}: unknown command {cmd}"))
        if is_4a and (not self._socks4a or not host or not host.isprintable() or " " in host):
            raise self._refuse(ProxyRejected(errno.EAFNOSUPPORT, f"{protocol}: host names are not accepted"))
        if self._check is not None and not self._check(userid):
            raise self._refuse(ProxyAuthenticationError(errno.EACCES, f"{protocol}: USERID not accepted"))
        self._state = "wait"
        return Request(protocol, command, Target(host, port), userid or None)

    def reply(self, code: ReplyCode, bound: Target | None = None) -> None:
        if self._state != "wait":
            raise RuntimeError("reply() before a request, or twice")
        port, address = 0, b"\0\0\0\0"
        if bound is not None and isinstance(bound.ip, ipaddress.IPv4Address):
            port, address = bound.port, bound.ip.packed
        granted = code == ReplyCode.SUCCEEDED
        self._out += _REPLY.pack(0, GRANTED if granted else REJECTED, port, address)
        self._state = "done" if granted else "closed"
