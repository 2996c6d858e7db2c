"""ncat's access-control flags for ``conduit listen``: ``--allow``, ``--deny``, ``--allowfile``,
``--denyfile`` (each repeatable), turned into ``pool.serve``/``pool.listen``'s ``allow=``/``deny=``.

``--allow 10.0.0.1,10.0.0.2`` (comma-separated specs, as ncat) and ``--allowfile F``
(a file of specs) add to one allow list; the same for deny. The specs are parsed
before anything is bound: a bad one is a usage error (exit status 2) naming it
(and the file and line). See :mod:`trio_conduit._access` for the grammar.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["access_keywords", "add_access_arguments"]


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow``, ``--deny``, ``--allowfile``, ``--denyfile`` to ``conduit listen``."""
    group = parser.add_argument_group(
        "access control",
        "which clients may connect (as ncat's): addresses, ranges (192.168.0.1-50, 10.0-3.*.*), "
        "CIDR blocks, host names; a denied client is reset at once, before anything is read from it. "
        "With both, a client must be allowed and not denied",
    )
    for name, what in (("allow", "only these clients"), ("deny", "not these clients")):
        group.add_argument(
            f"--{name}",
            metavar="SPECS",
            action="append",
            default=[],
            help=f"accept {what}: comma-separated specs (repeatable)",
        )
        group.add_argument(
            f"--{name}file",
            metavar="FILE",
            action="append",
            default=[],
            type=Path,
            help=f"accept {what}: specs in FILE, one or more a line, # comments (repeatable)",
        )


def access_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """``allow=`` and ``deny=`` for ``pool.serve``/``pool.listen`` from the flags (empty: no rules)."""
    keywords: dict[str, Any] = {}
    for name in ("allow", "deny"):
        sources: list[str | Path] = [*getattr(args, name, []), *getattr(args, f"{name}file", [])]
        if sources:
            keywords[name] = sources
    return keywords
