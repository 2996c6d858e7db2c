"""A virtual-time network for the sans-IO UDT engine: endpoints, links, a seeded impairment.

Datagrams from ``datagrams_to_send()`` are split into packets (GSO batches
included), each delayed, maybe dropped, duplicated or reordered by a seeded
``random.Random``, and delivered with ``receive_datagram``; the clock jumps
to the next delivery or deadline. Every packet that crossed is recorded so
tests can assert on the wire.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trio_conduit_plugins.udt._endpoint import Endpoint
from trio_conduit_plugins.udt._engine import Event
from trio_conduit_plugins.udt._packet import Packet, parse_packet_untrusted

Addr = tuple[Any, ...]


@dataclass
class Wire:
    """One packet that crossed the network."""

    time: float
    src: Addr
    dst: Addr
    data: bytes

    @property
    def packet(self) -> Packet:
        return parse_packet_untrusted(self.data)


@dataclass
class Net:
    seed: int = 0
    delay: float = 0.005
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    jitter: float = 0.0
    now: float = 100.0
    #: Only these (src, dst) directions are impaired (all when empty).
    impaired: set[tuple[Addr, Addr]] = field(default_factory=set)
    #: Drop every packet this returns True for (after impairment), e.g. to cut a peer off.
    blackhole: Callable[[Wire], bool] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.endpoints: dict[Addr, Endpoint] = {}
        self.queue: list[tuple[float, int, Addr, Addr, bytes]] = []
        self.counter = itertools.count()
        self.log: list[Wire] = []
        self.events: list[tuple[Addr, Event]] = []
        self.dropped = 0
        self.fifo: dict[tuple[Addr, Addr], float] = {}

    def endpoint(self, addr: Addr, **kwargs: Any) -> Endpoint:
        ep = Endpoint(self.now, rng=random.Random(hash((self.seed, addr))), **kwargs)
        self.endpoints[addr] = ep
        return ep

    def inject(self, src: Addr, dst: Addr, data: bytes, at: float | None = None) -> None:
        """Put a packet on the wire as if ``src`` sent it."""
        heapq.heappush(self.queue, (self.now if at is None else at, next(self.counter), src, dst, data))

    def _collect(self) -> None:
        for src, ep in self.endpoints.items():
            for data, dst, seg in ep.datagrams_to_send():
                raw = b"".join(data) if isinstance(data, list) else bytes(data)
                pieces = [raw[i : i + seg] for i in range(0, len(raw), seg)] if seg else [raw]
                for piece in pieces:
                    self._transmit(src, dst, piece)

    def _transmit(self, src: Addr, dst: Addr, data: bytes) -> None:
        rng = self.rng
        impaired = not self.impaired or (src, dst) in self.impaired
        if impaired and rng.random() < self.loss:
            self.dropped += 1
            return
        copies = 2 if impaired and rng.random() < self.dup else 1
        for _ in range(copies):
            # jitter varies the delay but keeps each direction FIFO; only `reorder` reorders
            at = self.now + self.delay + (rng.random() * self.jitter if impaired else 0.0)
            at = max(at, self.fifo.get((src, dst), 0.0))
            self.fifo[(src, dst)] = at
            if impaired and rng.random() < self.reorder:
                at += self.delay * rng.random() * 2
            heapq.heappush(self.queue, (at, next(self.counter), src, dst, data))

    def step(self, limit: float) -> bool:
        """Deliver what is due, run timers, move the clock; False when nothing can happen before limit."""
        self._collect()
        self._collect_events()
        nxt = min(
            [ep.next_deadline() for ep in self.endpoints.values()]
            + [self.queue[0][0] if self.queue else math.inf]
        )
        if nxt > limit:
            self.now = limit
            return False
        self.now = max(self.now, nxt)
        while self.queue and self.queue[0][0] <= self.now:
            _t, _, src, dst, data = heapq.heappop(self.queue)
            wire = Wire(self.now, src, dst, data)
            if self.blackhole is not None and self.blackhole(wire):
                continue
            self.log.append(wire)
            ep = self.endpoints.get(dst)
            if ep is not None:
                ep.receive_datagram(data, src, self.now)
        for ep in self.endpoints.values():
            if ep.next_deadline() <= self.now:
                ep.handle_timeout(self.now)
        self._collect_events()
        return True

    def _collect_events(self) -> None:
        for addr, ep in self.endpoints.items():
            for ev in ep.events():
                self.events.append((addr, ev))

    def run_until(
        self, cond: Callable[[], bool], timeout: float = 60.0, *, between: Callable[[], None] | None = None
    ) -> None:
        limit = self.now + timeout
        while not cond():
            if between is not None:
                between()
                if cond():
                    return
            if not self.step(limit):
                if cond():
                    return
                raise TimeoutError(f"condition not met within {timeout} s of virtual time")

    def run_for(self, seconds: float, *, between: Callable[[], None] | None = None) -> None:
        limit = self.now + seconds
        while True:
            if between is not None:
                between()
            if not self.step(limit):
                return

    def packets(self, src: Addr | None = None, dst: Addr | None = None) -> list[Wire]:
        return [w for w in self.log if (src is None or w.src == src) and (dst is None or w.dst == dst)]
