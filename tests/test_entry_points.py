"""trio_conduit._entry_points finds what importlib.metadata finds, or steps aside (``None``)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_conduit import ENTRY_POINT_GROUP
from trio_conduit._entry_points import scan

GROUP = "conduit_test_group"


def reference(group: str) -> list[tuple[str, str]]:
    return [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=group)]


def ours(group: str, path: list[str] | None = None) -> list[tuple[str, str]] | None:
    found = scan(group, path)
    return None if found is None else [(ep.name, ep.value) for ep in found]


def test_this_installation_agrees_with_importlib_metadata() -> None:
    assert ours(ENTRY_POINT_GROUP) == reference(ENTRY_POINT_GROUP)
    assert ("tcp", "trio_conduit_plugins.tcp") in (ours(ENTRY_POINT_GROUP) or [])
    found = scan(ENTRY_POINT_GROUP)
    assert found is not None
    loaded = {ep.name: ep.load() for ep in found}
    assert loaded["tcp"] is importlib.import_module("trio_conduit_plugins.tcp")


def test_load_follows_the_attribute_path() -> None:
    from trio_conduit._entry_points import EntryPoint

    ep = EntryPoint("x", "trio_conduit._entry_points : EntryPoint.load", "nowhere")
    assert ep.load() is EntryPoint.load


def _dist(root: Path, dirname: str, text: str | None) -> None:
    d = root / dirname
    d.mkdir(exist_ok=True)
    if text is not None:
        (d / "entry_points.txt").write_text(text)


names = st.sampled_from(["alpha", "Alpha", "al_pha", "al.pha", "beta", "gamma-x", "Gamma_X"])
versions = st.sampled_from(["1.0", "2.0b1", "0"])
suffixes = st.sampled_from([".dist-info", ".egg-info"])
ep_names = st.sampled_from(["tcp", "udp", "x", "Y"])
modules = st.sampled_from(["json", "json.decoder", "os:path", "os : path.join", "json:loads [extra]"])
junk = st.sampled_from(
    ["", "# a comment", "  ", "[other]", "name = value", "[conduit_test_group]", "no sign"]
)


@st.composite
def files(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            lines.append(f"[{GROUP}]")
        elif kind == 1:
            lines.append(f"{draw(ep_names)} = {draw(modules)}")
        else:
            lines.append(draw(junk))
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.lists(
        st.tuples(st.integers(0, 1), names, versions, suffixes, st.one_of(st.none(), files())),
        max_size=6,
    )
)
def test_generated_installations_agree(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    layout: list[tuple[int, str, str, str, str | None]],
) -> None:
    base = tmp_path_factory.mktemp("sites")
    roots = [base / "a", base / "b"]
    for root in roots:
        root.mkdir()
    for where, name, version, suffix, text in layout:
        _dist(roots[where], f"{name}-{version}{suffix}", text)
    path = [str(roots[0]), str(base / "missing"), str(roots[1])]
    with monkeypatch.context() as m:
        m.setattr(sys, "path", path)
        importlib.invalidate_caches()
        got = ours(GROUP)
        try:
            expected: list[tuple[str, str]] | None = reference(GROUP)
        except (ValueError, TypeError):  # a line without "=" (importlib.metadata: TypeError)
            expected = None
    if expected is None:
        # importlib.metadata rejects a line without "=" anywhere in a file; we read only our
        # group's lines (another package's broken metadata does not stop conduit)
        assert any(text and "no sign" in text for *_, text in layout)
    elif got is not None:
        assert got == expected
    else:  # left to importlib.metadata: extras
        assert any(text and "[extra]" in text for *_, text in layout)


def test_a_zip_on_the_path_is_left_to_importlib_metadata(tmp_path: Path) -> None:
    archive = tmp_path / "some.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))
    assert scan(GROUP, [str(archive)]) is None


def test_a_finder_of_distributions_is_left_to_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    class Finder:
        @staticmethod
        def find_distributions(*args: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder()])
    assert scan(GROUP) is None
