"""Small utilities every layer may use (the bottom layer: imports nothing of ours).

:class:`ConflictDetector` is the one guard for trio's rule that a stream or
channel has at most one sending and one receiving task at a time (trio's own
``_util.ConflictDetector`` is private, so we keep ours: a few lines).
"""

from __future__ import annotations

from typing import final

import trio

__all__ = ["ConflictDetector"]


@final
class ConflictDetector:
    """``with detector:`` around a send (or receive); a second task entering meanwhile gets
    ``trio.BusyResourceError(message)``.

    A class with ``__slots__`` rather than ``@contextmanager``: it wraps every
    send and receive, and a generator-based manager costs several times as much.
    """

    __slots__ = ("_held", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    @property
    def held(self) -> bool:
        """Whether a task is inside the guard now."""
        return self._held

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False
