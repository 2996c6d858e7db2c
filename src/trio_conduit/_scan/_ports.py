"""Port sets as nmap writes them: ``22,80,1000-2000``, ``-`` (all), ``-1024``, ``60000-``."""

from __future__ import annotations

from typing import Final

__all__ = ["ALL_PORTS", "PortSpecError", "parse_ports"]

#: Every port a scan may name (port 0 is never scanned unless named on its own).
ALL_PORTS: Final = range(1, 65536)


class PortSpecError(ValueError):
    """A port specification that cannot be read; the message says which part and why."""


def _port(text: str, spec: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise PortSpecError(f"port spec {spec!r}: {text!r} is not a port number")
    value = int(text)
    if value > 65535:
        raise PortSpecError(f"port spec {spec!r}: {value} is above 65535")
    return value


def parse_ports(spec: str) -> list[int]:
    """The ports ``spec`` names, ascending, each once; :class:`PortSpecError` if malformed.

    Comma-separated items: a port (``22``), a range (``1000-2000``), an open range
    (``-1024`` from 1, ``60000-`` to 65535) or ``-`` for 1-65535. Ranges may not run
    backwards; spaces are not allowed; at least one port must be named.
    """
    if not spec:
        raise PortSpecError("port spec is empty")
    ports: set[int] = set()
    for item in spec.split(","):
        if not item:
            raise PortSpecError(f"port spec {spec!r}: empty item (a stray comma)")
        if "-" in item:
            low_text, _, high_text = item.partition("-")
            if "-" in high_text:
                raise PortSpecError(f"port spec {spec!r}: {item!r} has more than one '-'")
            low = _port(low_text, spec) if low_text else 1
            high = _port(high_text, spec) if high_text else 65535
            if low > high:
                raise PortSpecError(f"port spec {spec!r}: range {item!r} runs backwards")
            ports.update(range(low, high + 1))
        else:
            ports.add(_port(item, spec))
    return sorted(ports)
