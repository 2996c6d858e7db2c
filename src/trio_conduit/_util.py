"""Small utilities every layer may use (the bottom layer: imports nothing of ours).

:class:`ConflictDetector` is the one guard for trio's rule that a stream or
channel has at most one sending and one receiving task at a time (trio's own
``_util.ConflictDetector`` is private, so we keep ours: a few lines).
:func:`peer_text` is the one way a socket address is written in trace lines, logs
and errors; :data:`LINGER_ZERO` the ``SO_LINGER`` value that makes ``close()`` send
an RST.
"""

from __future__ import annotations

import struct
from typing import Final, final

import trio

__all__ = ["LINGER_ZERO", "ConflictDetector", "peer_text"]

#: ``setsockopt(SOL_SOCKET, SO_LINGER, LINGER_ZERO)``: ``close()`` then resets the connection.
LINGER_ZERO: Final = struct.pack("ii", 1, 0)


def peer_text(sockaddr: object) -> str:
    """A socket address for people: ``host:port``, ``[v6]:port``, ``@name`` for a Linux abstract
    unix address, the path of a unix one; ``(unnamed)`` for none (an unbound unix peer)."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    if isinstance(sockaddr, bytes):
        return "@" + sockaddr[1:].decode(errors="replace") if sockaddr.startswith(b"\0") else repr(sockaddr)
    return str(sockaddr) if sockaddr else "(unnamed)"


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
