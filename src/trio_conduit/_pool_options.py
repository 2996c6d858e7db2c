"""The pool's options: those every kernel-socket transport takes (``local``, ``device``,
``ip_options``, ``broadcast``, ``backlog``, ``reuse_port``), how a connect's or listen's
options are resolved, and the checks for the pool's own keywords (timeouts)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ._address import Address, Option, resolve_options
from ._sockets import SocketOptions
from ._transport import Transport

__all__ = ["CORE_OPTIONS", "check_drain_timeout", "check_timeout", "known_options", "resolve"]

#: IPv4 options fit in 40 bytes (a 60-byte header at most, 20 of them fixed).
IP_OPTIONS_MAX: Final = 40


def _check_ip_options(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, not {type(value).__name__} {value!r}")
    data = bytes(value)
    if len(data) > IP_OPTIONS_MAX:
        raise ValueError(f"IPv4 options are at most {IP_OPTIONS_MAX} bytes; got {len(data)}")
    return data


def _parse_ip_options(text: str) -> bytes:
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"expected hex digits, got {text[:100]!r}") from None
    return _check_ip_options(data)


def _check_local(value: object) -> object:
    """``local=``: ``"host:port"``, ``"host"``, a port, a path (unix), or a sockaddr tuple."""
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 65535:
            raise ValueError(f"local port {value} is out of range (0-65535)")
        return value
    if isinstance(value, tuple) and len(value) in (2, 4):
        host, port = value[0], value[1]
        if not isinstance(host, str):
            raise TypeError(f"local address {value!r}: the host must be a str, not {type(host).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"local address {value!r}: the port must be an int, not {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"local address {value!r}: port {port} is out of range (0-65535)")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in value[2:]):
            raise TypeError(f"local address {value!r}: flowinfo and scope id must be ints")
        return value
    raise TypeError(
        f"local address must be 'host:port', 'host', a port, a path or a (host, port) tuple, not {value!r}"
    )


# Options every kernel-socket transport takes from the URL too (keywords win).
CORE_OPTIONS: Final = {
    o.name: o
    for o in (
        Option("local", str, None, "local address to bind before connecting", _check_local),
        Option.text("device", None, "network device to bind to (SO_BINDTODEVICE)"),
        Option.boolean("broadcast", False, "allow sending to broadcast addresses (SO_BROADCAST)"),
        Option.count("backlog", None, "listen backlog", maximum=65535),
        Option.boolean("reuse_port", False, "listeners: share the port with other processes (SO_REUSEPORT)"),
        Option("ip_options", _parse_ip_options, None, "raw IPv4 options (hex in a URL)", _check_ip_options),
    )
}


_KNOWN: weakref.WeakKeyDictionary[Transport, tuple[tuple[Option, ...], dict[str, Option]]] = (
    weakref.WeakKeyDictionary()
)


def known_options(transport: Transport) -> Mapping[str, Option]:
    """The core's options and ``transport``'s, by name (cached while its option list is the same)."""
    options = tuple(transport.options)
    hit = _KNOWN.get(transport)
    if hit is not None and hit[0] is options:  # the same tuple object: unchanged
        return hit[1]
    known = dict(CORE_OPTIONS)
    known.update((o.name, o) for o in options)
    _KNOWN[transport] = (options, known)
    return known


def check_timeout(name: str, value: object) -> float:
    """A timeout in seconds: a finite number > 0 (``TypeError``/``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__} {value!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_drain_timeout(drain_timeout: float | None) -> None:
    if drain_timeout is not None and (
        isinstance(drain_timeout, bool)
        or not isinstance(drain_timeout, (int, float))
        or not drain_timeout >= 0  # NaN too
    ):
        raise ValueError(f"drain_timeout must be a number of seconds >= 0, not {drain_timeout!r}")


def resolve(
    transport: Transport, address: Address, given: dict[str, object]
) -> tuple[Mapping[str, object], SocketOptions]:
    """The transport's options for ``address`` and ``given`` (read-only), and the socket options."""
    opts = resolve_options(address, known_options(transport), address.query, given)
    ip_options = opts.pop("ip_options")
    local, device, backlog = opts.pop("local"), opts.pop("device"), opts.pop("backlog")
    if ip_options is not None and not isinstance(ip_options, bytes):
        raise TypeError(f"{address}: ip_options must be bytes, not {ip_options!r}")
    if device is not None and not isinstance(device, str):
        raise TypeError(f"{address}: device must be a str, not {device!r}")
    if backlog is not None and not isinstance(backlog, int):
        raise TypeError(f"{address}: backlog must be an int, not {backlog!r}")
    sockopts = SocketOptions(
        local=local,
        device=device,
        ip_options=ip_options,
        broadcast=bool(opts.pop("broadcast")),
        backlog=backlog,
        reuse_port=bool(opts.pop("reuse_port")),
    )
    return MappingProxyType(opts), sockopts
