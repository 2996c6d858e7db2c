"""The import graph keeps the layer order of ``tools/layers.py``: no cycle, no upward arrow,
no plugin importing a private ``trio_conduit`` module, no private name taken across packages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

_PATH = Path(__file__).resolve().parent.parent / "tools" / "layers.py"


def _layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conduit_layers", _PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("conduit_layers", module)
    spec.loader.exec_module(module)
    return module


layers = _layers()


def test_the_layering_holds() -> None:
    assert layers.violations() == []


def test_every_core_module_is_in_a_layer() -> None:
    core = [m for m in layers.modules() if m.split(".")[0] == "trio_conduit"]
    assert len(core) > 20
    assert [m for m in core if layers.layer_of(m) is None] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # an upward arrow
        ("from trio_conduit._pool import Pool\n", "a higher layer"),
        # a lazy one counts too
        ("def f():\n    from trio_conduit.cli import main\n", "a higher layer"),
    ],
)
def test_the_check_catches_an_upward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: str
) -> None:
    """The checker is not vacuous: a low-layer module that imports upwards is reported."""
    fake = tmp_path / "trio_conduit"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "_errors.py").write_text(source)
    (fake / "_pool.py").write_text("Pool = 1\n")
    (fake / "cli").mkdir()
    (fake / "cli" / "__init__.py").write_text("main = 1\n")
    monkeypatch.setattr(layers, "SOURCES", {"trio_conduit": fake})
    monkeypatch.setattr(layers, "ROOT", tmp_path)
    problems = layers.violations()
    assert any(expected in p and "_errors.py" in p for p in problems), problems


def test_the_check_catches_cycles_plugins_and_private_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = tmp_path / "trio_conduit"
    (core / "tls").mkdir(parents=True)
    (core / "__init__.py").write_text("")
    (core / "tls" / "__init__.py").write_text("")
    (core / "tls" / "_a.py").write_text("from ._b import x\n")
    (core / "tls" / "_b.py").write_text("from ._a import y\nfrom .._sockets import _hidden\n")
    (core / "_sockets.py").write_text("_hidden = 1\n")
    plugins = tmp_path / "plugins"
    (plugins / "tcp").mkdir(parents=True)
    (plugins / "__init__.py").write_text("")
    (plugins / "tcp" / "__init__.py").write_text(
        "from trio_conduit._sockets import x\nfrom trio_conduit_plugins.udp import y\n"
    )
    monkeypatch.setattr(layers, "SOURCES", {"trio_conduit": core, "trio_conduit_plugins": plugins})
    monkeypatch.setattr(layers, "ROOT", tmp_path)
    problems = "\n".join(layers.violations())
    assert "import cycle: trio_conduit.tls._a <-> trio_conduit.tls._b" in problems
    assert "takes private _hidden from trio_conduit._sockets" in problems
    assert "imports trio_conduit._sockets, which is not the plugin-author API" in problems
    assert "imports trio_conduit_plugins.udp, another plugin" in problems


def test_every_package_is_in_the_distribution() -> None:
    """pyproject.toml lists packages by hand; one missing works in an editable install and
    breaks every real one, so compare the list with the tree."""
    import tomllib

    config = tomllib.loads((layers.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: layers.ROOT / path for name, path in config["package-dir"].items()}
    found = {
        ".".join([name, *init.parent.relative_to(root).parts])
        for name, root in roots.items()
        for init in root.rglob("__init__.py")
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set()


def test_no_source_file_is_over_1000_lines() -> None:
    long = {
        str(path.relative_to(layers.ROOT)): n
        for path in layers.modules().values()
        if (n := len(path.read_text().splitlines())) > 1000
    }
    assert long == {}
