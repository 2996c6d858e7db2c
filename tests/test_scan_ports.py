"""The port-set parser (nmap's syntax), and its inverse, with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_conduit._scan._ports import PortSpecError, parse_ports
from trio_conduit._scan._report import format_ports


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("22", [22]),
        ("22,80", [22, 80]),
        ("80,22,22", [22, 80]),
        ("1000-1003", [1000, 1001, 1002, 1003]),
        ("-3", [1, 2, 3]),
        ("65533-", [65533, 65534, 65535]),
        ("0", [0]),
        ("5-5", [5]),
    ],
)
def test_parses(spec: str, expected: list[int]) -> None:
    assert parse_ports(spec) == expected


def test_all_ports() -> None:
    ports = parse_ports("-")
    assert ports[0] == 1
    assert ports[-1] == 65535
    assert len(ports) == 65535


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "empty"),
        ("22,", "stray comma"),
        ("a", "not a port number"),
        ("70000", "above 65535"),
        ("2000-1000", "backwards"),
        ("1-2-3", "more than one"),
        (" 22", "not a port number"),
        ("\uff12\uff12", "not a port number"),  # full-width digits are digits to str.isdigit()
    ],
)
def test_rejects_with_a_clear_message(spec: str, words: str) -> None:
    with pytest.raises(PortSpecError, match=words):
        parse_ports(spec)


@given(st.text(alphabet="0123456789-, x", max_size=30))
def test_fuzz_parses_or_says_why(spec: str) -> None:
    try:
        ports = parse_ports(spec)
    except PortSpecError as exc:
        message = str(exc)
        assert message.startswith("port spec")  # a message that says what was read
    else:
        assert ports == sorted(set(ports))
        assert ports
        assert all(0 <= p <= 65535 for p in ports)


@given(st.text(max_size=20))
def test_fuzz_any_text(spec: str) -> None:
    try:
        parse_ports(spec)
    except PortSpecError:
        pass


@given(st.sets(st.integers(0, 65535), min_size=1, max_size=200))
def test_format_round_trips(ports: set[int]) -> None:
    text = format_ports(ports)
    assert parse_ports(text) == sorted(ports)
    assert len(text.split(",")) <= len(ports)


# ---------------------------------------------------------------------------
# the command refuses bad input before scanning anything
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["scan", "tcp://10.0.0.1", "-p", "80-20"], "backwards"),
        (["scan", "tcp://10.0.0.1", "-p", "http"], "not a port number"),
        (["scan", "ftp://10.0.0.1"], "cannot scan over ftp://"),
        (["scan", "tcp://"], "no host to scan"),
        (["scan", "tcp://10.0.0.1", "udp://10.0.0.2"], "one scheme per scan"),
    ],
)
def test_cli_usage_errors(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    from trio_conduit.cli._main import main

    assert main(argv) == 2
    assert words in capsys.readouterr().err
