"""``idle_timeout``: one task per pool closes the connections on which nothing happened."""

from __future__ import annotations

import heapq
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final

import trio

from ._connection import Connection

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["IdleReaper"]


#: Connection methods whose completed calls count as activity for ``idle_timeout``.
_IO_METHODS: Final = ("receive_some", "send_all", "receive", "send", "receive_from", "send_to")


@final
class _IdleWatch:
    """One connection's ``idle_timeout``: when its last send/receive completed."""

    __slots__ = ("conn", "done", "handled", "last", "scope", "timeout")

    def __init__(self, conn: Connection, timeout: float, handled: bool) -> None:
        self.conn = conn
        self.timeout = timeout
        self.last = trio.current_time()
        self.scope = trio.CancelScope()  # a handler runs in it (serve, spawn)
        self.handled = handled  # a handler runs in scope: cancel it (it closes the connection)
        self.done = False


def _counting(method: Callable[..., Awaitable[Any]], watch: _IdleWatch) -> Callable[..., Awaitable[Any]]:
    clock = trio.current_time

    async def counted(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        watch.last = clock()
        return result

    return counted


@final
class IdleReaper:
    """``idle_timeout`` for every connection of a pool, in one task.

    A send or receive that completes stores the time (one float, no deadline
    moved); the reaper sleeps until the earliest possible expiry, and at each
    wake-up checks only the connections due then: a busy one is pushed back to
    ``last + timeout``, an idle one is closed (its handler, if any, cancelled).
    A connection without ``idle_timeout`` pays nothing.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._heap: list[tuple[float, int, _IdleWatch]] = []
        self._wake = trio.Event()
        self._started = False

    def watch(self, conn: Connection, timeout: float, *, handled: bool = False) -> _IdleWatch:
        watch = _IdleWatch(conn, timeout, handled)
        target: Any = conn
        while target._upgraded is not None:
            target = target._upgraded
        for name in _IO_METHODS:
            method = getattr(target, name, None)
            if method is not None:
                setattr(target, name, _counting(method, watch))
        expiry = watch.last + timeout
        earliest = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (expiry, id(watch), watch))
        if not self._started:
            self._started = True
            self._pool._nursery.start_soon(self._run, name="conduit idle timeouts")
        elif expiry < earliest:
            self._wake.set()
        return watch

    async def _run(self) -> None:
        heap = self._heap
        while True:
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, key, watch = heapq.heappop(heap)
                conn_id = watch.conn.id
                if watch.done or conn_id not in self._pool._conns:
                    continue  # its handler ended, or it was closed
                due = watch.last + watch.timeout
                if due > now:
                    heapq.heappush(heap, (due, key, watch))
                    continue
                watch.done = True
                tracer = self._pool.tracer
                tracer.info(
                    "idle for %g s: closing conn #%d event #%d",
                    watch.timeout,
                    conn_id,
                    tracer.next_event_id(),
                )
                if watch.handled:
                    watch.scope.cancel()  # the handler's task ends, then closes the connection
                else:
                    self._pool._nursery.start_soon(trio.aclose_forcefully, watch.conn)
