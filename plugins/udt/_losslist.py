"""Loss lists: sorted, merged runs of extended sequence numbers.

The sender keeps the packets it must retransmit (from NAKs and EXP timeouts)
and pops the smallest first; the receiver keeps the packets it is missing and
reports them in NAKs. Both are lists of disjoint inclusive ``[first, last]``
runs kept in order, so a burst loss of thousands of packets costs one entry.
Each run also remembers when it was last reported (the receiver's periodic
NAK skips runs reported too recently for their repair to have arrived).
Sequence numbers here are the engine's extended (never wrapping) integers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

__all__ = ["LossList"]


class LossList:
    """Disjoint, sorted inclusive runs of sequence numbers."""

    __slots__ = ("_firsts", "_lasts", "_times", "length")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._times: list[float] = []
        #: How many sequence numbers the list holds.
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return self.length > 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._firsts, self._lasts, strict=True))

    def __contains__(self, seq: int) -> bool:
        i = bisect_right(self._firsts, seq) - 1
        return i >= 0 and seq <= self._lasts[i]

    def __repr__(self) -> str:
        return f"LossList({list(self)!r})"

    @property
    def first(self) -> int | None:
        """The smallest sequence number held, if any."""
        return self._firsts[0] if self._firsts else None

    @property
    def runs(self) -> int:
        return len(self._firsts)

    def insert(self, first: int, last: int, when: float = 0.0) -> int:
        """Add ``first..last`` (reported at ``when``); returns how many numbers were new."""
        if last < first:
            return 0
        firsts, lasts, times = self._firsts, self._lasts, self._times
        # Fast path: appending after the last run (losses are found in order).
        if not firsts or first > lasts[-1] + 1:
            firsts.append(first)
            lasts.append(last)
            times.append(when)
            self.length += last - first + 1
            return last - first + 1
        # Runs that overlap or touch [first, last] are merged into one.
        lo = bisect_right(lasts, first - 2)  # first run whose last >= first - 1
        hi = bisect_right(firsts, last + 1)  # runs before hi have first <= last + 1
        if lo >= hi:
            firsts.insert(lo, first)
            lasts.insert(lo, last)
            times.insert(lo, when)
            self.length += last - first + 1
            return last - first + 1
        old = sum(lasts[i] - firsts[i] + 1 for i in range(lo, hi))
        new_first = min(first, firsts[lo])
        new_last = max(last, lasts[hi - 1])
        oldest = min(when, *times[lo:hi])  # the merged run is due when its oldest part is
        firsts[lo:hi] = [new_first]
        lasts[lo:hi] = [new_last]
        times[lo:hi] = [oldest]
        added = (new_last - new_first + 1) - old
        self.length += added
        return added

    def remove(self, seq: int) -> bool:
        """Remove one number; returns whether it was there."""
        firsts, lasts = self._firsts, self._lasts
        i = bisect_right(firsts, seq) - 1
        if i < 0 or seq > lasts[i]:
            return False
        first, last = firsts[i], lasts[i]
        if first == last:
            del firsts[i]
            del lasts[i]
            del self._times[i]
        elif seq == first:
            firsts[i] = seq + 1
        elif seq == last:
            lasts[i] = seq - 1
        else:
            lasts[i] = seq - 1
            firsts.insert(i + 1, seq + 1)
            lasts.insert(i + 1, last)
            self._times.insert(i + 1, self._times[i])
        self.length -= 1
        return True

    def remove_range(self, first: int, last: int) -> int:
        """Remove every number in ``first..last``; returns how many were there."""
        if last < first or not self._firsts:
            return 0
        removed = 0
        firsts, lasts = self._firsts, self._lasts
        i = max(0, bisect_right(firsts, first) - 1)
        while i < len(firsts) and firsts[i] <= last:
            f, lst = firsts[i], lasts[i]
            if lst < first:
                i += 1
                continue
            cut_lo, cut_hi = max(f, first), min(lst, last)
            removed += cut_hi - cut_lo + 1
            if f < cut_lo and lst > cut_hi:
                lasts[i] = cut_lo - 1
                firsts.insert(i + 1, cut_hi + 1)
                lasts.insert(i + 1, lst)
                self._times.insert(i + 1, self._times[i])
                break
            if f < cut_lo:
                lasts[i] = cut_lo - 1
                i += 1
            elif lst > cut_hi:
                firsts[i] = cut_hi + 1
                i += 1
            else:
                del firsts[i]
                del lasts[i]
                del self._times[i]
        self.length -= removed
        return removed

    def remove_below(self, seq: int) -> int:
        """Remove every number smaller than ``seq`` (acknowledged); returns how many."""
        firsts = self._firsts
        if not firsts or firsts[0] >= seq:
            return 0
        return self.remove_range(firsts[0], seq - 1)

    def pop_first(self) -> int:
        """Remove and return the smallest number (``IndexError`` when empty)."""
        firsts, lasts = self._firsts, self._lasts
        seq = firsts[0]
        if seq == lasts[0]:
            del firsts[0]
            del lasts[0]
            del self._times[0]
        else:
            firsts[0] = seq + 1
        self.length -= 1
        return seq

    def clear(self) -> None:
        self._firsts.clear()
        self._lasts.clear()
        self._times.clear()
        self.length = 0

    def due(self, now: float, age: float, limit: int) -> list[tuple[int, int]]:
        """Runs last reported at least ``age`` ago (at most ``limit``); marks them reported now."""
        out: list[tuple[int, int]] = []
        times = self._times
        cutoff = now - age
        for i, when in enumerate(times):
            if when <= cutoff:
                out.append((self._firsts[i], self._lasts[i]))
                times[i] = now
                if len(out) >= limit:
                    break
        return out

    def runs_list(self, limit: int | None = None) -> list[tuple[int, int]]:
        """The runs in order, at most ``limit`` of them."""
        pairs = zip(self._firsts, self._lasts, strict=True)
        if limit is None:
            return list(pairs)
        out: list[tuple[int, int]] = []
        for pair in pairs:
            if len(out) >= limit:
                break
            out.append(pair)
        return out
