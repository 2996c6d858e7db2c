"""The error tree, and the one place where an ``errno`` becomes a type.

Every connect failure is a :class:`ConnectError` and *also* an instance of the
built-in exception a caller would catch without knowing about us
(``ConnectionRefusedError``, ``TimeoutError``, ...). Stream errors during
``send``/``receive`` follow trio's contract instead (``trio.BrokenResourceError``
etc.); that translation lives in ``_sockets.py``.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Final

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
