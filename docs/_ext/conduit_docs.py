"""Sphinx directives that build reference tables from the code itself, so they cannot drift.

* ``.. conduit-transports::`` -- the first-party transports: scheme, kind, capabilities.
* ``.. conduit-transport-options::`` -- an options table for each first-party transport.
* ``.. conduit-core-options::`` -- the options every transport accepts.
* ``.. conduit-errno-table::`` -- errno -> exception type, as ``connect_error_from_oserror`` maps it.
* ``.. conduit-help:: [SUBCOMMAND]`` -- ``conduit [SUBCOMMAND] --help``, run at build time.
* ``.. conduit-output:: ARGS`` -- ``conduit ARGS``, run at build time (it must succeed).
* ``.. conduit-layers::`` -- the layer order of ``tools/layers.py``, which the test suite enforces.
"""

from __future__ import annotations

import errno
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _transports() -> list[Any]:
    """The first-party transports: those registered by trio-conduit's own entry points.

    Read from the distribution's metadata rather than from every installed
    plugin, so that third-party packages installed alongside do not change
    the docs.
    """
    from trio_conduit._plugins import global_scope

    out: list[Any] = []
    dist = importlib.metadata.distribution("trio-conduit")
    for entry in sorted(dist.entry_points.select(group="trio_conduit"), key=lambda e: e.name):
        hook = getattr(entry.load(), "conduit_transports", None)  # a plugin may register no transport
        if hook is not None:
            out.extend(hook())
    for transport in out:
        transport.scope = global_scope()  # as the registry does: a layer (tls://) finds tcp:// there
    return out


def _list_table(header: Sequence[str], rows: Iterable[Sequence[str]], widths: str | None = None) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        first, *rest = row
        lines.append(f"   * - {first or ' '}")
        lines.extend(f"     - {cell or ' '}" for cell in rest)
    return lines


class _TableDirective(SphinxDirective):
    def emit(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="conduit_docs"), self.content_offset, container)
        return list(container.children)


class TransportsDirective(_TableDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from trio_conduit import Capabilities

        caps = [f.name for f in fields(Capabilities)]
        rows = []
        for t in _transports():
            flags = ["yes" if getattr(t.capabilities, c) else "--" for c in caps]
            schemes = ", ".join(f"``{s}://``" for s in t.schemes)
            rows.append([schemes, t.kind.value, *flags])
        header = ["scheme", "kind", *[f"``{c}``" for c in caps]]
        return self.emit(_list_table(header, rows))


_KINDS = {"parse_bool": "boolean", "_parse_seconds": "seconds", "_parse_count": "count", "str": "text"}


def _options_table(options: Sequence[Any]) -> list[str]:
    rows = []
    for opt in options:
        kind = _KINDS.get(
            getattr(opt.parse, "__name__", ""), "hex bytes" if opt.name == "ip_options" else "--"
        )
        default = "--" if opt.default is None else f"``{opt.default!r}``"
        rows.append([f"``{opt.name}``", kind, default, opt.doc])
    return _list_table(["option", "type", "default", "meaning"], rows, "15 10 10 65")


class CoreOptionsDirective(_TableDirective):
    """The options every transport accepts (the pool's own)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from trio_conduit import _pool_options

        return self.emit(_options_table(list(_pool_options.CORE_OPTIONS.values())))


class TransportOptionsDirective(_TableDirective):
    """For each first-party transport: its description and its options."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        lines: list[str] = []
        for t in _transports():
            schemes = ", ".join(f"``{s}://``" for s in t.schemes)
            lines += [f".. rubric:: {schemes}", "", f"{t.description}.", ""]
            if t.options:
                lines += [*_options_table(t.options), ""]
            else:
                lines += ["No options of its own.", ""]
        return self.emit(lines)


class ErrnoTableDirective(_TableDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from trio_conduit import _errors

        rows = []
        for err, cls in _errors._BY_ERRNO.items():
            builtins = [
                b.__name__
                for b in cls.__mro__[1:]
                if b.__module__ == "builtins"
                and b not in (OSError, Exception, BaseException, object, ValueError)
            ]
            also = ", ".join(f"``{b}``" for b in builtins) or "--"
            rows.append([f"``{errno.errorcode[err]}``", f":exc:`~trio_conduit.{cls.__name__}`", also])
        rows.append(["anything else", ":exc:`~trio_conduit.ConnectError`", "--"])
        return self.emit(_list_table(["errno", "raised as", "also an instance of"], rows, "25 40 35"))


def _run_conduit(directive: SphinxDirective, args: list[str]) -> nodes.Node:
    argv = [sys.executable, "-m", "trio_conduit", *args]
    env = {**os.environ, "COLUMNS": "88", "NO_COLOR": "1"}
    shown_cmd = " ".join(["$ conduit", *args])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    except subprocess.CalledProcessError as exc:
        raise directive.error(f"{shown_cmd} failed ({exc.returncode}): {exc.stderr.strip()}") from exc
    except (subprocess.SubprocessError, OSError) as exc:
        raise directive.error(f"{shown_cmd} failed: {exc}") from exc
    if not out.strip():
        raise directive.error(f"{shown_cmd} printed nothing")
    shown = shown_cmd + "\n" + out.rstrip()
    block = nodes.literal_block(shown, shown)
    block["language"] = "text"
    return block


class HelpDirective(SphinxDirective):
    """``conduit [SUBCOMMAND] --help``, as the installed command prints it."""

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        return [_run_conduit(self, [*self.arguments, "--help"])]


class OutputDirective(SphinxDirective):
    """``conduit ARGS...`` run while the docs are built: its real output (and it must succeed)."""

    required_arguments = 1
    final_argument_whitespace = True
    has_content = False

    def run(self) -> list[nodes.Node]:
        return [_run_conduit(self, self.arguments[0].split())]


def _layers() -> Any:
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "layers.py")
    spec = importlib.util.spec_from_file_location("conduit_layers", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class LayersDirective(_TableDirective):
    """The layers, top first, with the modules each holds (read from the source tree)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        layers = _layers()
        held: dict[int, list[str]] = {}
        for module in layers.modules():
            index = layers.layer_of(module)
            if index is not None:
                held.setdefault(index, []).append(module)
        width = max(len(name) for name, _, _ in layers.LAYERS)
        diagram = [".. code-block:: text", ""]
        for index in reversed(range(len(layers.LAYERS))):
            name, _prefixes, doc = layers.LAYERS[index]
            diagram.append(f"   {name:>{width}}  {doc}")
            if index:
                diagram.append(f"   {'│':>{width}}")
        rows = [
            (name, doc, ", ".join(f"``{m}``" for m in sorted(held.get(index, []))))
            for index, (name, _prefixes, doc) in reversed(list(enumerate(layers.LAYERS)))
        ]
        return self.emit([*diagram, "", *_list_table(("layer", "what", "modules"), rows, "15 30 55")])


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("conduit-transports", TransportsDirective)
    app.add_directive("conduit-core-options", CoreOptionsDirective)
    app.add_directive("conduit-transport-options", TransportOptionsDirective)
    app.add_directive("conduit-errno-table", ErrnoTableDirective)
    app.add_directive("conduit-help", HelpDirective)
    app.add_directive("conduit-output", OutputDirective)
    app.add_directive("conduit-layers", LayersDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
