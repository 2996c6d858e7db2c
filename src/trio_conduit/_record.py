"""Frozen value classes without :func:`dataclasses.dataclass`'s start-up cost.

``@dataclass`` writes a class's ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``
and (frozen) ``__setattr__``/``__delattr__`` as source text and compiles each when
the class is made: about 4.7M instructions per frozen class (``valgrind
--tool=callgrind``), and the value classes every ``conduit`` command loads made up
a fifth of its start-up beyond ``import trio`` (the architecture page, "Start-up").
A :class:`Record` writes its ``__init__`` by hand and takes the rest from here,
already compiled:

- its fields are its ``__slots__``, which must name ``__init__``'s parameters in
  order (checked when the class is made, so the two cannot drift apart);
- ``==`` compares the fields of two instances of the same class, ``hash()`` hashes
  them, ``repr()`` is ``Name(field=value, ...)`` (a class may write its own);
- instances are frozen: setting or deleting an attribute raises
  :class:`dataclasses.FrozenInstanceError` (``__init__`` sets fields with
  :data:`set_field`, ``object.__setattr__``, as a frozen dataclass does);
- ``__match_args__``, pickling and :mod:`copy` work;
- ``record.replace(**changes)`` makes a changed copy, and :func:`dataclasses.fields`,
  :func:`dataclasses.replace`, :func:`dataclasses.asdict` and
  :func:`dataclasses.is_dataclass` work as on a frozen dataclass: the first of them to
  look builds the class's ``dataclasses.Field`` objects, from a real dataclass with the
  same fields and defaults, and keeps them.
"""

from __future__ import annotations

import operator
from typing import Any, ClassVar, Final, Self, dataclass_transform

__all__ = ["Record", "set_field"]

#: How a record's ``__init__`` sets a field (its own ``__setattr__`` refuses: it is frozen).
set_field: Final = object.__setattr__


class _DataclassFields:
    """A record class's ``__dataclass_fields__``, made when :mod:`dataclasses` first asks."""

    def __get__(self, instance: object, owner: type[Record]) -> dict[str, Any]:
        import dataclasses

        init = owner.__init__
        positional = owner.__slots__[: init.__code__.co_argcount - 1]  # after self
        given = init.__defaults__ or ()
        defaults = dict(zip(positional[len(positional) - len(given) :], given, strict=True))
        defaults.update(init.__kwdefaults__ or {})
        spec = [
            (name, owner.__annotations__.get(name, Any), dataclasses.field(default=defaults[name]))
            if name in defaults
            else (name, owner.__annotations__.get(name, Any))
            for name in owner.__slots__
        ]
        shadow = dataclasses.make_dataclass(owner.__name__, spec, frozen=True)
        fields = {field.name: field for field in dataclasses.fields(shadow)}
        type.__setattr__(owner, "__dataclass_fields__", fields)  # kept: asked once per class
        return fields


@dataclass_transform(eq_default=True, frozen_default=True)
class Record:
    """Base of a frozen value class: fields in ``__slots__``, a hand-written ``__init__``."""

    __slots__: ClassVar[tuple[str, ...]] = ()
    __match_args__: ClassVar[tuple[str, ...]] = ()
    __dataclass_fields__: ClassVar[Any] = _DataclassFields()
    _values: ClassVar[Any]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        fields = cls.__slots__
        code = cls.__init__.__code__
        params = code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount]  # after self
        if not isinstance(fields, tuple) or params != fields:
            raise TypeError(f"{cls.__name__}: __slots__ {fields!r} must be __init__'s parameters {params!r}")
        type.__setattr__(cls, "__match_args__", fields)  # mypy will not let a ClassVar be set
        getter = operator.attrgetter(*fields)
        cls._values = getter if len(fields) > 1 else staticmethod(lambda record: (getter(record),))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(self._values(self) == self._values(other))

    def __hash__(self) -> int:
        return hash(self._values(self))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={value!r}" for name, value in zip(self.__slots__, self._values(self), strict=True)
        )
        return f"{self.__class__.__qualname__}({shown})"

    def __setattr__(self, name: str, value: object) -> None:
        import dataclasses

        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        import dataclasses

        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[Record], tuple[object, ...]]:
        return self.__class__, self._values(self)

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes`` (field names) applied, checked by ``__init__`` as a new one is."""
        unknown = changes.keys() - set(self.__slots__)
        if unknown:
            raise TypeError(f"{self.__class__.__name__} has no field {', '.join(sorted(unknown))}")
        return self.__class__(**{**dict(zip(self.__slots__, self._values(self), strict=True)), **changes})
