"""The ``trio_conduit`` entry points, found without importing :mod:`importlib.metadata`.

Every ``conduit`` command and every first pool looks up the entry-point
group. :func:`importlib.metadata.entry_points` costs more than the rest of
the package to import (it pulls in ``email``, ``csv``, ``zipfile``,
``importlib.resources``), and reading a distribution's name and version
parses its whole ``METADATA`` file with the ``email`` package. For the
common case — every ``sys.path`` entry a plain directory (or missing), and
no meta-path finder of its own that discovers distributions — this module
does what :mod:`importlib.metadata` does there, as cheaply as it can: list
each directory, take its ``*.dist-info`` and ``*.egg-info`` directories (the
first of each normalized name wins, in ``sys.path`` order), read their
``entry_points.txt`` and keep the group's lines.

Anything else (a zip or an ``.egg`` on ``sys.path``, a custom finder, a line
it does not read exactly as :mod:`importlib.metadata` would) makes
:func:`scan` return ``None``, and the caller asks :mod:`importlib.metadata`
instead. ``tests/test_entry_points.py`` checks the two agree, on this
installation and on generated ones.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

__all__ = ["EntryPoint", "scan"]

_SUFFIXES: Final = (".dist-info", ".egg-info")
#: What importlib.metadata's ``EntryPoint.pattern`` accepts, without extras (rare; left to it).
_VALUE: Final = re.compile(r"([\w.]+)\s*(?::\s*([\w.]+)\s*)?$")


class EntryPoint(NamedTuple):  # not a dataclass: making one costs start-up time
    """One entry point of the group: ``name = value`` in ``dist``'s ``entry_points.txt``."""

    name: str
    #: ``module`` or ``module:attribute.path``.
    value: str
    #: The ``*.dist-info`` / ``*.egg-info`` directory it was read from.
    dist: str

    def load(self) -> object:
        """Import the module and return the object the value names (as ``EntryPoint.load`` does)."""
        match = _VALUE.match(self.value)
        assert match is not None  # scan() keeps only values that match
        found: object = importlib.import_module(match.group(1))
        for attribute in filter(None, (match.group(2) or "").split(".")):
            found = getattr(found, attribute)
        return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _distributions(path: Sequence[str]) -> list[str] | None:
    """The metadata directories of the distributions on ``path``, first of each name; ``None``: not plain."""
    seen: set[str] = set()
    found: list[str] = []
    for entry in path:
        root = entry or "."
        try:
            children = os.listdir(root)
        except NotADirectoryError:
            return None  # a zip or an egg file: importlib.metadata reads those
        except OSError:
            continue  # missing or unreadable: importlib.metadata finds nothing there either
        if os.path.basename(root).lower().endswith(".egg"):
            return None
        by_name: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if not low.endswith(_SUFFIXES):
                continue
            if not child.endswith(_SUFFIXES):
                return None  # odd case: importlib.metadata's lookup and naming disagree there
            by_name.setdefault(_normalize(child.rpartition(".")[0].partition("-")[0]), []).append(child)
        for name, children_of_name in by_name.items():
            if name not in seen:
                seen.add(name)
                found.append(os.path.join(entry, children_of_name[0]))
    return found


def _read(dist: str, group: str) -> list[EntryPoint] | None:
    """The group's entry points in ``dist``'s ``entry_points.txt``; ``None``: a line this reader leaves."""
    try:
        with open(os.path.join(dist, "entry_points.txt"), encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return []
    found: list[EntryPoint] = []
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section != group:
            continue
        name, sep, value = line.partition("=")
        if not sep or not _VALUE.match(value.strip()):
            return None
        found.append(EntryPoint(name.strip(), value.strip(), dist))
    return found


def _plain_finders(finders: Iterable[object]) -> bool:
    """Whether the only meta-path finder that discovers distributions is the standard path finder."""
    from importlib.machinery import PathFinder

    return all(f is PathFinder or not hasattr(f, "find_distributions") for f in finders)


def scan(group: str, path: Sequence[str] | None = None) -> list[EntryPoint] | None:
    """The entry points of ``group`` on ``path`` (default ``sys.path``), in the order
    :func:`importlib.metadata.entry_points` gives them; ``None`` when only it can tell."""
    if not _plain_finders(sys.meta_path):
        return None
    dists = _distributions(sys.path if path is None else path)
    if dists is None:
        return None
    found: list[EntryPoint] = []
    for dist in dists:
        more = _read(dist, group)
        if more is None:
            return None
        found.extend(more)
    return found
