"""The layer order of trio-conduit, and the check that the imports keep it.

One table, :data:`LAYERS`, bottom first. A module may import (at run time:
``TYPE_CHECKING`` blocks are left out, imports inside functions count) only
modules of its own layer or of a lower one, and no import cycle may exist
among the modules, whatever their layers. First-party plugins
(``trio_conduit_plugins.*``) and the example third-party package in
``docs/examples`` may import from ``trio_conduit`` only the public
plugin-author modules in :data:`PLUGIN_API`, and from ``trio_conduit_plugins``
only their own plugin package.

``tests/test_layers.py`` runs :func:`violations`; the docs' architecture page
draws its diagram from :data:`LAYERS` (``docs/_ext/conduit_docs.py``).
Run ``python tools/layers.py`` to print the module graph by layer.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (layer name, module-name prefixes it holds, what it is), bottom first. A prefix
#: ``a.b`` holds ``a.b`` and ``a.b.*``; the longest matching prefix decides.
LAYERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "base",
        (
            "trio_conduit._errors",
            "trio_conduit._trace",
            "trio_conduit._address",
            "trio_conduit._util",
            "trio_conduit._version",
            "trio_conduit._benchmark",
            "trio_conduit._lazy",
            "trio_conduit._entry_points",
            "trio_conduit._access",
            "trio_conduit._record",
        ),
        "errors, trace lines, URL parsing, utilities, what a benchmark is, lazy re-exports, entry points, "
        "access rules, frozen value classes",
    ),
    (
        "connection",
        ("trio_conduit._connection", "trio_conduit._peer"),
        "what a connection is: the classes users see, its facts",
    ),
    (
        "sockets",
        ("trio_conduit._sockets",),
        "making, resolving, connecting and listening: the one socket path",
    ),
    (
        "socket streams and channels",
        ("trio_conduit._socket_stream", "trio_conduit._socket_channel"),
        "kernel sockets as streams, channels and listeners; the error boundaries",
    ),
    ("transport API", ("trio_conduit._transport",), "Transport, Context: what a plugin implements and gets"),
    (
        "plugins",
        ("trio_conduit._plugins", "trio_conduit.hookspecs", "trio_conduit.transport"),
        "the hook catalogue, scopes, the async dispatcher; the plugin-author module",
    ),
    ("tls and proxies", ("trio_conduit.tls", "trio_conduit.proxy"), "TLS on any stream; proxy chains"),
    (
        "scanning",
        ("trio_conduit._scan",),
        "port scans: the port-set parser, the sans-IO engine, its trio driver, nmap's report formats",
    ),
    (
        "pool",
        ("trio_conduit._pool", "trio_conduit._pool_options", "trio_conduit._idle"),
        "the pool: nursery, ids, connect / spawn / serve / listen",
    ),
    ("package", ("trio_conduit",), "the public names"),
    (
        "testing",
        ("trio_conduit.testing",),
        "trio_conduit.testing: conformance checks, the impairment relay, certificates, pytest fixtures",
    ),
    ("bench", ("trio_conduit.bench",), "conduit bench: every benchmark"),
    ("cli", ("trio_conduit.cli", "trio_conduit.__main__"), "the conduit command"),
)

#: What a plugin may import from trio_conduit.
PLUGIN_API: frozenset[str] = frozenset({"trio_conduit", "trio_conduit.transport", "trio_conduit.tls"})

#: Where the code is: top-level package name → its directory.
SOURCES: dict[str, Path] = {
    "trio_conduit": ROOT / "src" / "trio_conduit",
    "trio_conduit_plugins": ROOT / "plugins",
    "conduit_rot13": ROOT / "docs" / "examples" / "conduit-rot13" / "src" / "conduit_rot13",
}
OURS = frozenset(SOURCES)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    #: Private names (``_x``) taken from ``imported`` by ``from imported import _x``.
    private: tuple[str, ...] = ()


def modules() -> dict[str, Path]:
    """Every module of ours: dotted name → file."""
    found: dict[str, Path] = {}
    for package, directory in SOURCES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for statement in node.body:
                    skip.update(id(n) for n in ast.walk(statement))
    return skip


def imports(known: dict[str, Path]) -> Iterator[Import]:
    """Every run-time import of one of our modules by another."""
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    if not is_package:
                        base.pop()
                    base = base[: len(base) - node.level + 1]
                    source = ".".join([*base, node.module] if node.module else base)
                else:
                    source = node.module or ""
                names = [f"{source}.{alias.name}" for alias in node.names]
                submodules = [name for name in names if name in known]
                targets = submodules
                if len(submodules) < len(names):  # some names are attributes of `source` itself
                    targets = [source, *submodules]
                private = tuple(
                    alias.name
                    for alias in node.names
                    if alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and f"{source}.{alias.name}" not in known
                )
                if private and source.split(".")[0] in OURS and source != module:
                    yield Import(module, source, node.lineno, private)
                    targets = [t for t in targets if t != source]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in OURS and target != module:
                    yield Import(module, target, node.lineno)


def _package(module: str, known: dict[str, Path]) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to itself)."""
    return module if known[module].name == "__init__.py" else module.rpartition(".")[0]


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of the layer holding ``module`` (``None``: not in the core)."""
    best: tuple[int, int] | None = None
    for index, (_name, prefixes, _doc) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (index, len(prefix))
    return None if best is None else best[0]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def violations() -> list[str]:
    """Everything wrong with the imports, one sentence each (empty: the layering holds)."""
    known = modules()
    problems: list[str] = []
    edges: dict[str, set[str]] = {}
    for imp in imports(known):
        edges.setdefault(imp.importer, set()).add(imp.imported)
        where = f"{known[imp.importer].relative_to(ROOT)}:{imp.line}"
        top = imp.importer.split(".")[0]
        if imp.private and _package(imp.imported, known) != _package(imp.importer, known):
            problems.append(
                f"{where}: {imp.importer} takes private {', '.join(imp.private)} from {imp.imported}, "
                "another package"
            )
        if top == "trio_conduit":
            mine, theirs = layer_of(imp.importer), layer_of(imp.imported)
            if mine is None:
                problems.append(f"{where}: {imp.importer} is in no layer of tools/layers.py")
            elif imp.imported.startswith("trio_conduit_plugins") or imp.imported.startswith("conduit_rot13"):
                problems.append(f"{where}: the core imports a plugin ({imp.imported})")
            elif theirs is None:
                problems.append(f"{where}: {imp.imported} is in no layer of tools/layers.py")
            elif theirs > mine:
                problems.append(
                    f"{where}: {imp.importer} ({LAYERS[mine][0]}) imports {imp.imported} "
                    f"({LAYERS[theirs][0]}), a higher layer"
                )
        else:  # a plugin
            plugin = ".".join(imp.importer.split(".")[:2]) if top == "trio_conduit_plugins" else top
            if imp.imported.startswith("trio_conduit.") or imp.imported == "trio_conduit":
                if imp.imported not in PLUGIN_API:
                    problems.append(
                        f"{where}: plugin module {imp.importer} imports {imp.imported}, which is not "
                        f"the plugin-author API ({', '.join(sorted(PLUGIN_API))})"
                    )
            elif not (imp.imported == plugin or imp.imported.startswith(plugin + ".")):
                problems.append(
                    f"{where}: plugin module {imp.importer} imports {imp.imported}, another plugin"
                )
    problems.extend(f"import cycle: {' <-> '.join(cycle)}" for cycle in _cycles(edges))
    return problems


def main() -> int:
    known = modules()
    by_layer: dict[int | None, list[str]] = {}
    for module in known:
        by_layer.setdefault(layer_of(module), []).append(module)
    for index, (name, _prefixes, _doc) in enumerate(LAYERS):
        print(f"{index:2d} {name}: {' '.join(sorted(by_layer.get(index, [])))}")
    problems = violations()
    print("\n".join(problems) or "the layering holds")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
