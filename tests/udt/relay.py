"""A seeded UDP impairment relay: loss, duplication, reordering, delay, and a bounded queue.

    python relay.py --to 127.0.0.1:9000 [--listen 127.0.0.1:0] [--loss 0.05] [--dup 0.01]
                    [--reorder 0.02] [--delay 0.002] [--jitter 0.0005] [--queue 10000] [--seed 1]

Datagrams from the first client address go to ``--to``; datagrams from
``--to`` go back to that client. Each one is, in this order and with one
seeded ``random.Random``: dropped with probability ``loss``; held for
``delay`` plus up to ``jitter`` seconds (FIFO: jitter does not reorder); when ``reorder`` strikes, held for up
to another ``3 * delay`` (so later packets overtake it); sent twice when
``dup`` strikes. At most ``queue`` datagrams wait (more are dropped, like a
router's queue). The bound port is printed first (``listening PORT``);
statistics as one JSON line when stdin closes or on SIGTERM. Standalone: the
tests run it as a separate process so it does not share their CPU time slice.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import select
import signal
import socket
import sys
import time
from typing import Any


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Relay:
    def __init__(
        self,
        sock: socket.socket,
        target: tuple[str, int],
        *,
        loss: float,
        dup: float,
        reorder: float,
        delay: float,
        jitter: float,
        queue: int,
        seed: int,
    ) -> None:
        self.sock = sock
        self.target = target
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.delay, self.jitter, self.queue = delay, jitter, queue
        self.rng = random.Random(seed)
        self.client: Any = None
        self.heap: list[tuple[float, int, bytes, Any]] = []
        self.last: dict[Any, float] = {}
        self.counter = itertools.count()
        self.stats = dict.fromkeys(
            ("received", "forwarded", "dropped", "duplicated", "reordered", "overflow"), 0
        )

    def _schedule(self, data: bytes, dst: Any, now: float) -> None:
        rng, stats = self.rng, self.stats
        if rng.random() < self.loss:
            stats["dropped"] += 1
            return
        copies = 1
        if rng.random() < self.dup:
            copies = 2
            stats["duplicated"] += 1
        for _ in range(copies):
            if len(self.heap) >= self.queue:
                stats["overflow"] += 1
                continue
            # jitter varies the delay but keeps the queue FIFO; only `reorder` lets packets overtake
            at = max(now + self.delay + rng.random() * self.jitter, self.last.get(dst, 0.0))
            self.last[dst] = at
            if rng.random() < self.reorder:
                at += rng.random() * 3 * max(self.delay, 0.001)
                stats["reordered"] += 1
            heapq.heappush(self.heap, (at, next(self.counter), data, dst))

    def run(self, stop: Any) -> None:
        sock, heap = self.sock, self.heap
        sock.setblocking(False)
        watch = [sock] + ([stop] if stop is not None else [])
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, data, dst = heapq.heappop(heap)
                try:
                    sock.sendto(data, dst)
                    self.stats["forwarded"] += 1
                except (BlockingIOError, InterruptedError):
                    self.stats["overflow"] += 1
                except OSError:
                    pass
            timeout = max(0.0, heap[0][0] - now) if heap else 1.0
            ready, _, _ = select.select(watch, [], [], timeout)
            if stop is not None and stop in ready and not stop.read(1):
                return
            if sock in ready:
                now = time.monotonic()
                for _ in range(1000):
                    try:
                        data, src = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    self.stats["received"] += 1
                    if src == self.target:
                        if self.client is not None:
                            self._schedule(data, self.client, now)
                    else:
                        self.client = src
                        self._schedule(data, self.target, now)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=_addr, default=("127.0.0.1", 0))
    p.add_argument("--to", type=_addr, required=True)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--dup", type=float, default=0.0)
    p.add_argument("--reorder", type=float, default=0.0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--queue", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        except OSError:
            pass
    sock.bind(args.listen)
    relay = Relay(
        sock,
        args.to,
        loss=args.loss,
        dup=args.dup,
        reorder=args.reorder,
        delay=args.delay,
        jitter=args.jitter,
        queue=args.queue,
        seed=args.seed,
    )

    def report(*_: object) -> None:
        print(json.dumps(relay.stats), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    print(f"listening {sock.getsockname()[1]}", flush=True)
    relay.run(sys.stdin)
    report()


if __name__ == "__main__":
    main()
