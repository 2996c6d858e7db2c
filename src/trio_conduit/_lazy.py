"""Lazy re-exports (PEP 562): a package's public names, each imported from its private module on first use.

``conduit --version`` should not import Trio, and ``conduit connect tcp://``
should not import the TLS layer, the proxy engines or the scanner. A package
``__init__`` that re-exports with ``from ._x import Name as Name`` imports
all of them whenever anything below it is imported (``import
trio_conduit.cli`` runs ``trio_conduit/__init__.py`` first). So the
packages that re-export heavy modules (:mod:`trio_conduit`,
:mod:`trio_conduit.proxy`) declare their names in a table instead and get
their module ``__getattr__`` and ``__dir__`` from :func:`lazy_exports`; the
same re-exports stay under ``if TYPE_CHECKING:`` so that type checkers and
readers see them (``tests/test_exports.py`` holds the two lists equal).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, table: Mapping[str, tuple[str, ...]], namespace: MutableMapping[str, object]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``table``: relative module → its names.

    A name is imported from its module on first access and stored in
    ``namespace`` (the package's ``globals()``), so later lookups are plain
    attribute reads. An unknown name raises :exc:`AttributeError` as usual.
    """
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
