"""What ``conduit`` needs before it knows its command: no Trio, no transport, nothing heavy.

``conduit --version`` and ``conduit --help`` build the whole argument parser
and stop there, so everything the parser and :func:`~trio_conduit.cli.main`
use before dispatching lives here or in other modules that import no Trio
(``_main``, ``_tls``, ``_scan`` keep their heavy imports inside the functions
that run a command). ``tests/test_startup.py`` checks which modules each
command loads.
"""

from __future__ import annotations

import argparse
import math
import os

__all__ = ["parse_duration", "parse_linger", "parse_seconds", "reserve_standard_fds"]


def reserve_standard_fds() -> None:
    """Open ``/dev/null`` on any of fds 0, 1, 2 that is closed (``<&-``), before sockets are made.

    Otherwise the first socket would get fd 0 and "stdin" would be the connection itself.
    """
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, flags)  # the lowest free number: fd itself, as lower ones are open
            if new != fd:
                os.dup2(new, fd)
                os.close(new)


#: ncat's time units (``-w 500ms``, ``-i 2m``): a bare number is seconds.
_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def parse_duration(text: str) -> float:
    """Seconds from ncat's time format: a number, and optionally a unit (``ms``, ``s``, ``m``,
    ``h``: ``500ms``, ``1.5s``, ``2m``); ``inf`` is infinite. ``ArgumentTypeError`` for
    anything else, and for a negative or NaN time."""
    number, scale = text.strip(), 1.0
    for unit, factor in _UNITS:
        if number.endswith(unit):
            number, scale = number[: -len(unit)], factor
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (seconds, or a number with ms, s, m or h)"
        ) from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def parse_linger(text: str) -> float:
    """``--linger``/``--drain-timeout``: a time >= 0 (:func:`parse_duration`), or ``inf``."""
    return parse_duration(text)


def parse_seconds(text: str) -> float:
    """``--wait``/``--idle-timeout``: a time > 0 and finite (:func:`parse_duration`)."""
    value = parse_duration(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive, finite time: {text!r}")
    return value
