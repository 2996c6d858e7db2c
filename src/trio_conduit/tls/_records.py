"""TLS record sizing (ATS ``proxy.config.ssl.max_record_size``), and reading record headers.

Dynamic sizing: a burst starts with records of about one TCP segment
(:data:`SMALL_RECORD` = 1300 bytes of plaintext) so the peer can decrypt and
use the first bytes without waiting for a 16 KiB record to arrive in a dozen
segments; after :data:`BURST_THRESHOLD` bytes it switches to full 16 KiB
records for throughput; after :data:`IDLE_RESET` seconds without a write the
next burst starts small again. A fixed size caps every record; off (the
default) lets OpenSSL fill records up to 16 KiB.

:class:`RecordSizer` is the rule alone, with the clock passed in; the TLS
stream asks it how to cut each write.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BURST_THRESHOLD",
    "IDLE_RESET",
    "MAX_RECORD",
    "SMALL_RECORD",
    "RecordHeader",
    "RecordSizer",
    "iter_records",
]

SMALL_RECORD: Final = 1300
MAX_RECORD: Final = 16384
BURST_THRESHOLD: Final = 1_000_000
IDLE_RESET: Final = 1.0

_HEADER: Final = struct.Struct("!BHH")


class RecordSizer:
    """How to cut writes into records.

    ``size=None``: dynamic (small, then large, small again after idle); an
    int: every record at most that many bytes. :meth:`plan` returns the
    pieces a write of ``n`` bytes at time ``now`` should be cut into.
    """

    __slots__ = ("_burst", "_last_write", "fixed")

    def __init__(self, size: int | None = None) -> None:
        if size is not None and not 1 <= size <= MAX_RECORD:
            raise ValueError(f"record size must be 1..{MAX_RECORD}, not {size}")
        self.fixed = size
        self._burst = 0
        self._last_write: float | None = None

    @property
    def burst_bytes(self) -> int:
        """Bytes written in the current burst."""
        return self._burst

    def plan(self, n: int, now: float) -> list[int]:
        """Record sizes for a write of ``n`` bytes at ``now``; counts them as written."""
        if self.fixed is not None:
            full, rest = divmod(n, self.fixed)
            return [self.fixed] * full + ([rest] if rest else [])
        if self._last_write is not None and now - self._last_write > IDLE_RESET:
            self._burst = 0
        self._last_write = now
        pieces: list[int] = []
        left = n
        while left and self._burst < BURST_THRESHOLD:
            piece = min(SMALL_RECORD, left)
            pieces.append(piece)
            self._burst += piece
            left -= piece
        if left:
            # OpenSSL cuts the rest into full-size records itself.
            pieces.append(left)
            self._burst += left
        return pieces


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """A TLS record header seen on the wire: content type, version, length of the body."""

    content_type: int
    version: int
    length: int


def iter_records(data: bytes) -> Iterator[RecordHeader]:
    """The record headers in ``data`` (a captured byte stream starting at a record boundary).

    Stops at a trailing incomplete record. For tests and diagnostics.
    """
    pos = 0
    while pos + _HEADER.size <= len(data):
        content_type, version, length = _HEADER.unpack_from(data, pos)
        if pos + _HEADER.size + length > len(data):
            return
        yield RecordHeader(content_type, version, length)
        pos += _HEADER.size + length
