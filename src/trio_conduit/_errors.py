"""The error tree, and the one place where an ``errno`` becomes a type.

Every connect failure is a :class:`ConnectError` and *also* an instance of the
built-in exception a caller would catch without knowing about us
(``ConnectionRefusedError``, ``TimeoutError``, ...). Errors during
``send``/``receive`` on an established socket follow trio's contract instead
(``trio.BrokenResourceError`` etc.): :class:`SocketErrors` is that boundary,
for streams, message sockets and datagram sockets alike.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Final

import trio

__all__ = [
    "AddressError",
    "AddressInUse",
    "ConduitError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionRefused",
    "HostUnreachable",
    "MessageTooLarge",
    "NameResolutionError",
    "NetworkUnreachable",
    "PermissionDenied",
    "PluginError",
    "ProxyAuthenticationError",
    "ProxyError",
    "ProxyProtocolError",
    "ProxyRejected",
    "ProxyTargetRefused",
    "ProxyTargetUnreachable",
    "ProxyTimeout",
    "SocketErrors",
    "TransportUnavailable",
    "connect_error_from_oserror",
]


class ConduitError(Exception):
    """Base class of every error this library raises on purpose."""


class AddressError(ConduitError, ValueError):
    """A URL or address that cannot be used: malformed, or naming no registered scheme."""


class PluginError(ConduitError):
    """A plugin broke the rules: a duplicate scheme, a bad hook implementation."""


class ConnectError(ConduitError, OSError):
    """A connect (or listen) attempt failed.

    Subclasses ``OSError``: ``exc.errno`` is the errno the kernel gave (or the one
    that best describes the failure), ``exc.strerror`` says it in words, and
    ``exc.address`` is the URL that was being reached, when known.
    """

    address: str | None

    def __init__(self, errno: int, message: str, *, address: str | None = None) -> None:
        super().__init__(errno, message)
        self.address = address

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        return f"{self.strerror} [{name}]"

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.errno, self.strerror), {"address": self.address})


class ConnectionRefused(ConnectError, ConnectionRefusedError):
    """The peer answered with a reset / ICMP port unreachable: nothing listens there."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No answer in time: our own deadline passed, or the kernel gave up (``ETIMEDOUT``)."""


class HostUnreachable(ConnectError):
    """``EHOSTUNREACH``: a router (or our own routing table) says the host cannot be reached."""


class NetworkUnreachable(ConnectError):
    """``ENETUNREACH``: there is no route to that network at all."""


class PermissionDenied(ConnectError, PermissionError):
    """``EACCES``/``EPERM``: e.g. a broadcast address without ``broadcast=True``,
    a ``prohibit`` route, or ``SO_BINDTODEVICE`` without ``CAP_NET_RAW``."""


class AddressInUse(ConnectError):
    """``EADDRINUSE``: the local address is taken (for a listener, or a ``local=`` bind)."""


class NameResolutionError(ConnectError):
    """The host name could not be resolved. ``exc.errno`` is the ``EAI_*`` code."""


class MessageTooLarge(ConduitError, ValueError):
    """A datagram larger than the transport (or path MTU) can carry (``EMSGSIZE``)."""


class TransportUnavailable(ConnectError):
    """The running kernel lacks this protocol or address family.

    ``exc.errno`` is what ``socket()``/``bind()`` said (e.g. ``EPROTONOSUPPORT``)
    and the message is a sentence about what is missing.
    """


_BY_ERRNO: Final[dict[int, type[ConnectError]]] = {
    _errno.ECONNREFUSED: ConnectionRefused,
    _errno.ETIMEDOUT: ConnectTimeout,
    _errno.EHOSTUNREACH: HostUnreachable,
    _errno.EHOSTDOWN: HostUnreachable,
    _errno.ENETUNREACH: NetworkUnreachable,
    _errno.ENETDOWN: NetworkUnreachable,
    _errno.EACCES: PermissionDenied,
    _errno.EPERM: PermissionDenied,
    _errno.EADDRINUSE: AddressInUse,
    _errno.EPROTONOSUPPORT: TransportUnavailable,
    _errno.ESOCKTNOSUPPORT: TransportUnavailable,
    _errno.EAFNOSUPPORT: TransportUnavailable,
    _errno.EPFNOSUPPORT: TransportUnavailable,
    _errno.ENODEV: TransportUnavailable,
}

_UNAVAILABLE_SENTENCES: Final[dict[int, str]] = {
    _errno.EPROTONOSUPPORT: "the kernel does not support this protocol (module not loaded or not built)",
    _errno.ESOCKTNOSUPPORT: "the kernel does not support this socket type for the protocol",
    _errno.EAFNOSUPPORT: "the kernel does not support this address family",
    _errno.EPFNOSUPPORT: "the kernel does not support this protocol family",
    _errno.ENODEV: "the kernel has no device/transport for this address family here",
}


def unavailable_reason(err: int) -> str:
    """A sentence saying what the kernel lacks, for an errno from ``socket()``/``bind()``."""
    return _UNAVAILABLE_SENTENCES.get(err, os.strerror(err))


def connect_error_from_oserror(exc: OSError, *, action: str, address: str | None) -> ConnectError:
    """Map an ``OSError`` from ``socket``/``bind``/``connect`` to our typed error.

    ``action`` is a short phrase ("connect to", "bind", "listen on") used in the
    message. The caller raises the result ``from exc``.
    """
    if isinstance(exc, ConnectError):
        return exc
    err = exc.errno if exc.errno is not None else 0
    cls = _BY_ERRNO.get(err, ConnectError)
    where = f" {address}" if address else ""
    if cls is TransportUnavailable:
        detail = unavailable_reason(err)
    else:
        detail = os.strerror(err) if err else (exc.strerror or str(exc))
    return cls(err, f"cannot {action}{where}: {detail}", address=address)


# ---------------------------------------------------------------------------
# proxies
# ---------------------------------------------------------------------------


class ProxyError(ConnectError):
    """A connect through a proxy chain failed at one of its hops.

    ``exc.hop`` is the proxy's position in the chain (1 is the first; ``None``
    when a protocol engine raised it outside a chain), ``exc.proxy`` its URL
    with the password replaced by ``***``, and ``exc.reply`` what the proxy
    answered, in words (the SOCKS reply code and its meaning, the HTTP status
    line) or what went wrong. ``str(exc)`` says all three. Raised as this base
    class when the first proxy itself cannot be reached (the cause is the
    connect error) or drops the connection mid-handshake.
    """

    reply: str
    hop: int | None
    proxy: str | None

    def __init__(
        self,
        errno: int,
        reply: str,
        *,
        hop: int | None = None,
        proxy: str | None = None,
        address: str | None = None,
    ) -> None:
        self.reply = reply
        self.hop = hop
        self.proxy = proxy
        super().__init__(errno, self._message(), address=address)

    def _message(self) -> str:
        if self.hop is None:
            return self.reply
        return f"proxy hop {self.hop} ({self.proxy}): {self.reply}"

    def locate(self, hop: int, proxy: str, address: str | None = None) -> None:
        """Name the hop this error happened at (the chain driver calls this)."""
        self.hop, self.proxy = hop, proxy
        if address is not None:
            self.address = address
        self.strerror = self._message()
        self.args = (self.errno, self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        state = {"hop": self.hop, "proxy": self.proxy, "address": self.address}
        return (type(self), (self.errno, self.reply), state)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.__dict__.update(state)
        self.strerror = self._message()
        self.args = (self.errno, self.strerror)


class ProxyProtocolError(ProxyError):
    """The peer does not speak the proxy protocol: a malformed or unexpected reply
    (often: the wrong port, or a proxy of another type). ``errno`` is ``EPROTO``."""


class ProxyAuthenticationError(ProxyError):
    """The proxy wants credentials, or refused the ones given (SOCKS5 username/password
    status, no acceptable authentication method, HTTP 407, SOCKS4 identd replies)."""


class ProxyRejected(ProxyError):
    """The proxy refused the request itself: its rules forbid it, it does not support
    the command or address type, or it failed in a way that names no cause
    (SOCKS4 reply 91, HTTP 403 and other error statuses)."""


class ProxyTargetRefused(ProxyError, ConnectionRefused):
    """The proxy reached the target's host and was refused (SOCKS5 reply 5, an HTTP
    proxy's report of ``ECONNREFUSED``). Also a :class:`ConnectionRefused`."""


class ProxyTargetUnreachable(ProxyError, HostUnreachable):
    """The proxy cannot reach the target's host or network (SOCKS5 replies 3 and 4,
    HTTP 502/503). ``errno`` is ``EHOSTUNREACH`` or ``ENETUNREACH``."""


class ProxyTimeout(ProxyError, ConnectTimeout):
    """No answer in time: the caller's ``timeout`` ran out while this hop was being
    set up (the message says what it was waiting for), or the proxy reports that the
    target did not answer (SOCKS5 reply 6, HTTP 504)."""


# Errors a datagram socket reports for an earlier datagram (ICMP) or its route.
_DATAGRAM_REACH: Final = frozenset(
    {
        _errno.ECONNREFUSED,
        _errno.EHOSTUNREACH,
        _errno.ENETUNREACH,
        _errno.EHOSTDOWN,
        _errno.ENETDOWN,
        _errno.ETIMEDOUT,
    }
)


class SocketErrors:
    r"""``with SocketErrors(...):`` around a send or receive on an established socket: the one
    place where its ``OSError`` becomes trio's error or ours (``raise ... from exc``).

    Always: ``EBADF`` (closed under us) is ``trio.ClosedResourceError``; anything
    not listed below is ``trio.BrokenResourceError``. ``messages=True`` (message
    and datagram sockets): ``EMSGSIZE`` is :class:`MessageTooLarge`, the socket
    stays usable. ``peer`` given (datagram sockets, WSAConnect / nsock semantics):
    ``ECONNREFUSED`` and the other reachability errors (an ICMP error for an
    earlier datagram) are typed :class:`ConnectError`\ s reported on the next
    call, ``EACCES`` is a broadcast without ``broadcast=True``.

    A class, not ``@contextmanager``: it wraps every send and receive, and a
    generator-based manager costs several times as much per use. Managers
    without a peer are shared: :data:`STREAM_ERRORS`, :data:`MESSAGE_ERRORS`.
    """

    __slots__ = ("datagram", "messages", "peer")

    def __init__(self, peer: object = None, *, messages: bool = False, datagram: bool = False) -> None:
        self.peer = peer
        self.messages = messages or datagram
        self.datagram = datagram

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if not isinstance(exc, OSError):
            return
        err = exc.errno
        if err == _errno.EBADF:
            raise trio.ClosedResourceError(
                "this channel was closed" if self.messages else "this connection was closed"
            ) from None
        peer = self.peer
        if self.messages and err == _errno.EMSGSIZE:
            what = "datagram" if self.datagram else "message"
            raise MessageTooLarge(f"{what} too large for {peer}: {exc.strerror}") from exc
        if self.datagram:
            if err == _errno.EACCES:
                raise PermissionDenied(
                    err,
                    f"sending to {peer} was refused (EACCES): a broadcast address needs broadcast=True",
                    address=str(peer),
                ) from exc
            if err in _DATAGRAM_REACH:
                raise connect_error_from_oserror(exc, action="reach", address=str(peer)) from exc
            raise trio.BrokenResourceError(f"datagram socket broken: {exc}") from exc
        raise trio.BrokenResourceError(f"connection broken: {exc}") from exc


#: The translation for stream sockets, and for connected message sockets (no peer to name).
STREAM_ERRORS: Final = SocketErrors()
MESSAGE_ERRORS: Final = SocketErrors(messages=True)
