"""Records behave as the frozen dataclasses they replace (``trio_conduit._record``)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_conduit import Address, CommunicationInfo
from trio_conduit._record import Record, set_field
from trio_conduit.transport import Availability, Capabilities, Option, SocketOptions, URLParts


class Point(Record):
    __slots__ = ("x", "y", "label")
    x: int
    y: int
    label: str

    def __init__(self, x: int, y: int = 0, label: str = "") -> None:
        set_field(self, "x", x)
        set_field(self, "y", y)
        set_field(self, "label", label)


@dataclasses.dataclass(frozen=True)
class Twin:
    """What ``Point`` would be as a dataclass."""

    x: int
    y: int = 0
    label: str = ""


class Single(Record):
    __slots__ = ("value",)
    value: object

    def __init__(self, value: object) -> None:
        set_field(self, "value", value)


values = st.tuples(st.integers(), st.integers(), st.text(max_size=5))


@given(values, values)
def test_equality_hash_and_repr_are_a_dataclass_s(a: tuple[int, int, str], b: tuple[int, int, str]) -> None:
    assert (Point(*a) == Point(*b)) == (Twin(*a) == Twin(*b))
    assert (Point(*a) != Point(*b)) == (Twin(*a) != Twin(*b))
    assert hash(Point(*a)) == hash(Twin(*a))
    assert repr(Point(*a)) == repr(Twin(*a)).replace("Twin", "Point")


def test_a_record_equals_only_its_own_class() -> None:
    assert Point(1, 2) != Twin(1, 2)
    assert Point(1, 2) != (1, 2, "")
    assert Single(1) == Single(1)
    assert Single(1) != Single(2)
    assert hash(Single("a")) == hash(("a",))


def test_frozen_like_a_dataclass() -> None:
    point = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="'x'"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del point.y
    with pytest.raises(AttributeError):
        point.other = 1
    assert point == Point(1)


def test_dataclasses_functions_work_on_records() -> None:
    point = Point(1, 2, "p")
    assert dataclasses.is_dataclass(point)
    assert [(f.name, f.default) for f in dataclasses.fields(point)] == [
        ("x", dataclasses.MISSING),
        ("y", 0),
        ("label", ""),
    ]
    assert dataclasses.replace(point, y=5) == Point(1, 5, "p")
    assert dataclasses.asdict(point) == {"x": 1, "y": 2, "label": "p"}
    assert dataclasses.astuple(point) == (1, 2, "p")


def test_replace_copy_pickle_and_match() -> None:
    point = Point(1, 2, "p")
    assert point.replace(label="q") == Point(1, 2, "q")
    with pytest.raises(TypeError, match="no field z"):
        point.replace(z=1)
    assert pickle.loads(pickle.dumps(point)) == point
    assert copy.copy(point) == point
    assert copy.deepcopy(point) == point
    match point:
        case Point(x, y, label):
            assert (x, y, label) == (1, 2, "p")
        case _:  # pragma: no cover
            pytest.fail("no match")


def test_slots_must_be_init_s_parameters() -> None:
    with pytest.raises(TypeError, match="must be __init__'s parameters"):

        class Bad(Record):
            __slots__ = ("b", "a")

            def __init__(self, a: int, b: int) -> None:
                set_field(self, "a", a)
                set_field(self, "b", b)


@pytest.mark.parametrize(
    "record",
    [
        Address("tcp", "example.com", 80, None, (("a", "1"),)),
        URLParts("tcp://h:1", "tcp", "h:1", "", ()),
        Availability(False, "EPERM", 1),
        Capabilities(half_close=True),
        SocketOptions(device="lo", backlog=5),
        CommunicationInfo("tcp", None, None, 0, ("127.0.0.1", 1), None, via=("socks5://p:1",)),
        Option.boolean("nodelay", True, "doc"),
    ],
    ids=lambda record: type(record).__name__,
)
def test_the_public_value_classes(record: Record) -> None:
    """Each public record: fields as a dataclass lists them, replace with nothing changed is equal."""
    names = tuple(f.name for f in dataclasses.fields(record))
    assert names == record.__slots__ == type(record).__match_args__
    assert dataclasses.replace(record) == record
    assert record.replace() == record
    assert hash(record.replace()) == hash(record)
    assert pickle.loads(pickle.dumps(record)) == record
