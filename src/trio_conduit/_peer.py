"""The peer process of a unix socket: a fact only unix connections have.

Apart from :mod:`trio_conduit._connection` so that a connection over any
other transport does not pay for making the class at start-up; imported by
:func:`trio_conduit.transport.peer_credentials` when a unix socket asks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PeerCredentials"]


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer process of a unix socket, as the kernel saw it at connect time (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int
