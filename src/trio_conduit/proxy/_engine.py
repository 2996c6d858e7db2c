"""What every proxy protocol engine shares: the input buffer, events, reply codes.

The engines are sans-IO, after h11: ``receive_data(bytes)`` feeds what came
from the peer (``b""`` for its end of stream), ``next_event()`` returns the
next :class:`Event` or :data:`NEED_DATA`, ``data_to_send()`` takes the bytes
to write. They do no I/O and keep no clock; the trio code in ``_chain.py`` and
``_server.py`` drives them.

What a peer sends is untrusted: for any bytes at all, ``next_event()`` either
returns an event or raises a :class:`~trio_conduit.ProxyError` subclass
(:class:`~trio_conduit.ProxyProtocolError` when the bytes are not the
protocol), never anything else. Once an engine has raised, it stays failed.
"""

from __future__ import annotations

import abc
import enum
import errno
from dataclasses import dataclass
from typing import Final, final

from .._errors import ProxyError, ProxyProtocolError
from ._url import Target

__all__ = [
    "NEED_DATA",
    "ClientEngine",
    "Command",
    "Established",
    "Event",
    "NeedData",
    "ReplyCode",
    "Request",
    "ServerEngine",
]


@final
class NeedData:
    """``next_event()`` needs more bytes from the peer before it can say anything."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


#: The one :class:`NeedData` value.
NEED_DATA: Final = NeedData()


class Command(enum.Enum):
    """What a client asks the proxy for."""

    CONNECT = "CONNECT"
    BIND = "BIND"
    UDP_ASSOCIATE = "UDP ASSOCIATE"


class ReplyCode(enum.IntEnum):
    """A proxy's answer to a request, in SOCKS5's terms (RFC 1928 §6).

    Server engines translate it to their protocol (SOCKS4: 90 or 91; HTTP: a
    status code and an RFC 9209 ``Proxy-Status`` error); :meth:`text` is the
    meaning in words.
    """

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8

    def text(self) -> str:
        return _REPLY_TEXT[self]


_REPLY_TEXT: Final = {
    ReplyCode.SUCCEEDED: "succeeded",
    ReplyCode.GENERAL_FAILURE: "general SOCKS server failure",
    ReplyCode.NOT_ALLOWED: "connection not allowed by ruleset",
    ReplyCode.NETWORK_UNREACHABLE: "network unreachable",
    ReplyCode.HOST_UNREACHABLE: "host unreachable",
    ReplyCode.CONNECTION_REFUSED: "connection refused",
    ReplyCode.TTL_EXPIRED: "TTL expired (the target did not answer in time)",
    ReplyCode.COMMAND_NOT_SUPPORTED: "command not supported",
    ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}


@dataclass(frozen=True, slots=True)
class Established:
    """Client side: the proxy granted the request; the tunnel is open.

    ``reply`` is the proxy's answer in words (``"SOCKS5 reply 0: succeeded"``,
    the HTTP status line); ``bound`` the address the proxy reports (SOCKS's
    BND.ADDR/BND.PORT: for UDP ASSOCIATE, the relay), ``None`` for HTTP.
    """

    reply: str
    bound: Target | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """Server side: a client's request, authenticated if credentials were required.

    ``protocol`` is ``"SOCKS5"``, ``"SOCKS4"``, ``"SOCKS4a"`` or ``"HTTP"``;
    ``username`` the user name the client gave (SOCKS4: its USERID), if any.
    """

    protocol: str
    command: Command
    target: Target
    username: str | None = None


#: What ``next_event()`` returns.
Event = Established | Request


class _Buffer:
    """Bytes received and not yet parsed; ``eof`` once the peer's stream ended."""

    __slots__ = ("_data", "eof")

    def __init__(self) -> None:
        self._data = bytearray()
        self.eof = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self.eof = True
        else:
            self._data += data

    def __len__(self) -> int:
        return len(self._data)

    def peek(self, n: int) -> bytes:
        return bytes(self._data[:n])

    def at(self, i: int) -> int:
        return self._data[i]

    def find(self, sep: bytes, start: int = 0) -> int:
        return self._data.find(sep, start)

    def take(self, n: int) -> bytes:
        out = bytes(self._data[:n])
        del self._data[:n]
        return out

    def take_all(self) -> bytes:
        out = bytes(self._data)
        self._data.clear()
        return out


class _Engine(abc.ABC):
    """Input buffer, output buffer and the failed flag shared by every engine."""

    #: ``"SOCKS5"``, ``"SOCKS4"``, ``"HTTP"``...: for messages.
    protocol: str = "?"

    def __init__(self) -> None:
        self._in = _Buffer()
        self._out = bytearray()
        self._failed: ProxyError | None = None
        self._trailing: bytes | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer; ``b""`` means it closed its side."""
        if self._in.eof and data:
            raise RuntimeError("receive_data() after the end of the stream")
        self._in.feed(data)

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer now (may be empty); taking them clears them."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def trailing_data(self) -> bytes:
        """What the peer sent after the end of the handshake: the tunnel's first bytes.

        Only meaningful once the handshake is over (after :class:`Established`, or
        after a server engine's successful :meth:`~ServerEngine.reply`).
        """
        if self._trailing is None:
            self._trailing = self._in.take_all()
        return self._trailing

    def next_event(self) -> Event | NeedData:
        """The next event, or :data:`NEED_DATA`. Raises a ProxyError subclass on a failure."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._step()
        except ProxyError as exc:
            self._failed = exc
            raise

    @abc.abstractmethod
    def _step(self) -> Event | NeedData: ...

    def _need(self, n: int, what: str) -> bool:
        """True if ``n`` bytes are buffered; at end of stream with fewer, a protocol error."""
        if len(self._in) >= n:
            return True
        if self._in.eof:
            raise ProxyProtocolError(
                errno.EPROTO,
                f"the {self.protocol} peer closed the connection "
                + (f"in the middle of {what}" if len(self._in) else f"instead of sending {what}"),
            )
        return False

    def _protocol_error(self, what: str) -> ProxyProtocolError:
        return ProxyProtocolError(errno.EPROTO, f"not {self.protocol}: {what}")


class ClientEngine(_Engine):
    """The client side of a proxy handshake: its bytes are queued from the start.

    ``waiting_for`` says in words what the engine expects next (for timeout
    messages).
    """

    waiting_for: str = "the reply"


class ServerEngine(_Engine):
    """The server side: yields a :class:`Request`, then the driver calls :meth:`reply`."""

    @abc.abstractmethod
    def reply(self, code: ReplyCode, bound: Target | None = None) -> None:
        """Answer the :class:`Request` (queues bytes; ``data_to_send()`` takes them)."""
