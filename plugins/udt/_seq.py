"""Sequence arithmetic: 31-bit packet sequence numbers, 29-bit message numbers.

UDT's data sequence numbers live in ``[0, 2**31)`` and wrap; two numbers are
compared by their distance, which is assumed to be less than ``2**30``
(the reference's ``CSeqNo``). The engine keeps *extended* sequence numbers
internally (plain Python integers that never wrap) and converts at the wire:
:func:`wire` cuts an extended number to 31 bits and :func:`unwrap` turns a
31-bit number from the wire back into the extended number nearest to a
reference point. That keeps every list and window in the engine free of wrap
logic.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_MSGNO",
    "MAX_SEQ",
    "SEQ_MASK",
    "SEQ_THRESHOLD",
    "next_msgno",
    "seqcmp",
    "seqlen",
    "seqoff",
    "unwrap",
    "wire",
]

#: Sequence numbers are 31 bits: 0 .. 2**31 - 1.
SEQ_MASK: Final = 0x7FFFFFFF
MAX_SEQ: Final = SEQ_MASK
#: Half the sequence space: distances larger than this mean "the other way round".
SEQ_THRESHOLD: Final = 0x40000000
_SEQ_SPACE: Final = 0x80000000
#: Message numbers are 29 bits; the reference counts 1 .. 2**29 - 2 and wraps to 1.
MAX_MSGNO: Final = 0x1FFFFFFF


def seqoff(a: int, b: int) -> int:
    """The signed distance from 31-bit ``a`` to 31-bit ``b`` (``b - a``, wrap-aware)."""
    d = (b - a) & SEQ_MASK
    return d - _SEQ_SPACE if d >= SEQ_THRESHOLD else d


def seqcmp(a: int, b: int) -> int:
    """Negative, zero or positive as 31-bit ``a`` is before, at or after ``b``."""
    return -seqoff(a, b)


def seqlen(a: int, b: int) -> int:
    """How many numbers from ``a`` to ``b`` inclusive (``b`` not before ``a``)."""
    return seqoff(a, b) + 1


def wire(ext: int) -> int:
    """An extended sequence number as it goes on the wire (31 bits)."""
    return ext & SEQ_MASK


def unwrap(value: int, near: int) -> int:
    """The extended number whose 31-bit form is ``value``, nearest to extended ``near``."""
    # seqoff(near, value) written out: the engine calls this once per packet it reorders
    d = (value - near) & SEQ_MASK
    return near + (d - _SEQ_SPACE if d >= SEQ_THRESHOLD else d)


def next_msgno(msgno: int) -> int:
    """The message number after ``msgno`` (1 .. 2**29 - 2, as the reference counts)."""
    msgno += 1
    return 1 if msgno >= MAX_MSGNO else msgno
