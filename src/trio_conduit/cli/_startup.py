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

__all__ = ["parse_linger", "reserve_standard_fds"]


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


def parse_linger(text: str) -> float:
    """``--linger`` seconds: a number >= 0, or ``inf``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or inf): {text!r}")
    return value
