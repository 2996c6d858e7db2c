"""The client-side TLS session cache, keyed by peer.

A session can only be resumed with the context that made it, so entries
remember their context and are found only by the same one (compared by
identity). TLS keeps ``ssl.SSLSession`` objects here under their
``ssl.SSLContext``, DTLS pyOpenSSL's ``SSL.Session`` under its ``SSL.Context``:
one cache, and each reader checks the type of what it takes. TLS 1.3
tickets are meant to be used once: :meth:`SessionCache.take` removes what it
returns, and the resumed connection's new session is put back. Plugins can
keep sessions elsewhere with the ``conduit_tls_session_get/put/remove`` hooks;
this cache is used when no hook returns a session.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["SessionCache", "SessionKey", "session_cache"]

_PER_PEER: Final = 4


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Who a session is for: the peer (``host:port`` or a socket path) and the server name sent."""

    peer: str
    server_name: str | None

    def __str__(self) -> str:
        return f"{self.peer}/{self.server_name}" if self.server_name else self.peer


class SessionCache:
    """Recent client sessions, at most ``max_peers`` peers (least recently used go first)."""

    def __init__(self, max_peers: int = 1024) -> None:
        self.max_peers = max_peers
        self._entries: OrderedDict[SessionKey, list[tuple[object, object]]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def take(self, key: SessionKey, context: object) -> object | None:
        """The newest session for ``key`` made with ``context``, removed from the cache."""
        entries = self._entries.get(key)
        if not entries:
            return None
        for i in range(len(entries) - 1, -1, -1):
            ctx, session = entries[i]
            if ctx is context:
                del entries[i]
                if not entries:
                    del self._entries[key]
                return session
        return None

    def put(self, key: SessionKey, context: object, session: object) -> None:
        entries = self._entries.setdefault(key, [])
        self._entries.move_to_end(key)
        entries.append((context, session))
        del entries[:-_PER_PEER]
        while len(self._entries) > self.max_peers:
            self._entries.popitem(last=False)

    def remove(self, key: SessionKey) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


#: The process-wide client session cache.
session_cache: Final = SessionCache()
