"""Times on the command line, in ncat's format: seconds, or a number with ms, s, m or h."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_conduit.cli._startup import parse_duration, parse_linger, parse_seconds

UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2", 2.0), ("500ms", 0.5), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), (" 3s ", 3.0), ("0", 0.0)],
)
def test_ncat_s_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@given(st.floats(min_value=0, max_value=1e9), st.sampled_from(sorted(UNITS)))
def test_a_number_and_a_unit(number: float, unit: str) -> None:
    assert parse_duration(f"{number!r}{unit}") == pytest.approx(number * UNITS[unit])


@given(st.text(max_size=12))
def test_any_text_is_a_time_or_a_usage_error(text: str) -> None:
    error = ""
    try:
        value = parse_duration(text)
    except argparse.ArgumentTypeError as exc:
        error = str(exc)
    if error:
        assert repr(text) in error
    else:
        assert value >= 0
        assert not math.isnan(value)


@pytest.mark.parametrize("text", ["", "ms", "5x", "5 sec", "-1s", "nan", "nanms", "1d", "5mm", "s5"])
def test_not_times(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_linger_takes_zero_and_inf_wait_takes_neither() -> None:
    assert parse_linger("0") == 0
    assert parse_linger("inf") == math.inf
    for text in ("0", "0ms", "inf", "infs"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive, finite"):
            parse_seconds(text)
    assert parse_seconds("250ms") == pytest.approx(0.25)
