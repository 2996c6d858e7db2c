"""What a ``conduit_benchmarks`` hook returns: one benchmark of ``conduit bench``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

__all__ = ["Benchmark"]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of ``conduit bench``, chosen with ``--only NAME``.

    ``run(options)`` runs it and returns its figures: figure name (such as
    ``"udt_loopback_mb_per_s"``) → a dict of JSON-able values. ``options``
    is the parsed ``conduit bench`` command line, an
    :class:`argparse.Namespace` with ``repeat``, ``bulk_mib``,
    ``connections``, ``tls_connections``, ``proxy_connections``,
    ``cli_mib``, ``cli`` (``--cli`` given), ``json`` and ``only`` (the names
    given with ``--only``, or ``None``). ``format(results)`` makes the lines
    printed for what ``run`` returned; ``--json`` prints every benchmark's
    figures in one JSON object instead.
    """

    #: The ``--only`` name.
    name: str
    #: One line for ``conduit bench --help``.
    help: str
    #: ``run(options)``: run it; its figures.
    run: Callable[[argparse.Namespace], dict[str, Any]]
    #: ``format(results)``: the lines to print for what ``run`` returned.
    format: Callable[[dict[str, Any]], list[str]]
    #: Whether it runs when no ``--only`` is given (a long one, or one that needs root, says ``False``).
    default: bool = True
