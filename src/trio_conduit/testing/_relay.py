"""A seeded UDP impairment relay: loss, duplication, reordering, delay, and a bounded queue.

    python -m trio_conduit.testing._relay_process --to 127.0.0.1:9000 [--listen 127.0.0.1:0]
        [--loss 0.05] [--dup 0.01] [--reorder 0.02] [--delay 0.002] [--jitter 0.0005]
        [--queue 10000] [--seed 1] [--keep 10000]

From Trio code, :func:`impairment_relay` runs it and stops it.

Datagrams from the first client address go to ``--to``; datagrams from
``--to`` go back to that client. Each one is, in this order and with one
seeded ``random.Random``: dropped with probability ``loss``; held for
``delay`` plus up to ``jitter`` seconds (FIFO: jitter does not reorder); when ``reorder`` strikes, held for up
to another ``3 * delay`` (so later packets overtake it); sent twice when
``dup`` strikes. At most ``queue`` datagrams wait (more are dropped, like a
router's queue). The bound port is printed first (``listening PORT``).

It records what it dropped, per direction (``to_target``, ``to_client``): every
datagram of which no copy was sent on (lost, or each copy overflowed), its bytes
kept (hex) for the first ``keep`` of them in each direction, all of them counted.
So a test can prove delivery: whatever the network did not drop must arrive.

When stdin closes (or on SIGTERM) it reads what is still waiting on its socket,
sends everything queued at once (the delay is cut short, nothing is dropped for
stopping), and prints its statistics and drops as one JSON line. Standalone: it
runs as a separate process so it does not share the CPU time slice of the Trio
program under test.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["DIRECTIONS", "Impairment", "ImpairmentRelay", "Relay", "impairment_relay", "main"]

#: The two directions through a relay: from its client to the target, and back.
DIRECTIONS = ("to_target", "to_client")


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Relay:
    """The relay loop on one UDP socket (what the process runs); see the module's docstring."""

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
        keep: int = 10000,
    ) -> None:
        self.sock = sock
        self.target = target
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.delay, self.jitter, self.queue = delay, jitter, queue
        self.rng = random.Random(seed)
        self.client: Any = None
        #: (when, order, datagram, destination, its id: one per datagram received, shared by copies)
        self.heap: list[tuple[float, int, bytes, Any, int]] = []
        self.last: dict[Any, float] = {}
        self.counter = itertools.count()
        self.stats = dict.fromkeys(
            ("received", "forwarded", "dropped", "duplicated", "reordered", "overflow"), 0
        )
        self.keep = keep
        #: Per direction: how many datagrams were dropped (no copy sent on), and the first ``keep``.
        self.drop_counts = dict.fromkeys(DIRECTIONS, 0)
        self.drops: dict[str, list[bytes]] = {d: [] for d in DIRECTIONS}
        #: Datagram id → [copies still queued, whether one was sent].
        self.copies: dict[int, list[int]] = {}

    def _direction(self, dst: Any) -> str:
        return "to_target" if dst == self.target else "to_client"

    def _lost(self, data: bytes, dst: Any) -> None:
        direction = self._direction(dst)
        self.drop_counts[direction] += 1
        if len(self.drops[direction]) < self.keep:
            self.drops[direction].append(data)

    def _settle(self, ident: int, data: bytes, dst: Any, sent: bool) -> None:
        """One copy of datagram ``ident`` left the queue (sent or not)."""
        state = self.copies[ident]
        state[0] -= 1
        state[1] |= sent
        if state[0] == 0:
            del self.copies[ident]
            if not state[1]:
                self._lost(data, dst)

    def _schedule(self, data: bytes, dst: Any, now: float) -> None:
        rng, stats = self.rng, self.stats
        if rng.random() < self.loss:
            stats["dropped"] += 1
            self._lost(data, dst)
            return
        copies = 1
        if rng.random() < self.dup:
            copies = 2
            stats["duplicated"] += 1
        ident = next(self.counter)
        queued = 0
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
            heapq.heappush(self.heap, (at, next(self.counter), data, dst, ident))
            queued += 1
        if queued:
            self.copies[ident] = [queued, False]
        else:
            self._lost(data, dst)

    def _send_due(self, now: float) -> None:
        sock, heap = self.sock, self.heap
        while heap and heap[0][0] <= now:
            _, _, data, dst, ident = heapq.heappop(heap)
            sent = False
            try:
                sock.sendto(data, dst)
                self.stats["forwarded"] += 1
                sent = True
            except (BlockingIOError, InterruptedError):
                self.stats["overflow"] += 1
            except OSError:
                pass
            self._settle(ident, data, dst, sent)

    def _read(self, now: float) -> None:
        for _ in range(1000):
            try:
                data, src = self.sock.recvfrom(65536)
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

    def finish(self) -> None:
        """Stopping: take what waits on the socket, then send everything queued now."""
        self._read(time.monotonic())
        self._send_due(float("inf"))

    def report(self) -> dict[str, Any]:
        """The statistics, the drop counts and the kept drops (hex), per direction."""
        return {
            **self.stats,
            "drop_counts": self.drop_counts,
            "drops": {d: [data.hex() for data in kept] for d, kept in self.drops.items()},
        }

    def run(self, stop: Any) -> None:
        sock, heap = self.sock, self.heap
        sock.setblocking(False)
        watch = [sock] + ([stop] if stop is not None else [])
        while True:
            self._send_due(time.monotonic())
            timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else 1.0
            ready, _, _ = select.select(watch, [], [], timeout)
            if stop is not None and stop in ready and not stop.read(1):
                self.finish()
                return
            if sock in ready:
                self._read(time.monotonic())


@dataclass(frozen=True)
class Impairment:
    """What the relay does to each datagram (probabilities 0..1, times in seconds); see :class:`Relay`."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    queue: int = 10000
    #: Dropped datagrams whose bytes are kept, per direction (all are counted).
    keep: int = 10000


@dataclass
class ImpairmentRelay:
    """A running relay process: connect to ``127.0.0.1:port`` to reach the target through it.

    Filled when the relay stops (leaving :func:`impairment_relay`; what was still queued is
    delivered first): ``stats``, datagrams ``received``, ``forwarded``, ``dropped``,
    ``duplicated``, ``reordered``, and ``overflow`` (a copy dropped for a full queue);
    ``drop_counts`` and ``drops``, per direction (``"to_target"``, ``"to_client"``), how many
    datagrams the network dropped (no copy was sent on) and the first ``keep`` of them.
    """

    process: subprocess.Popen[str] = field(repr=False)
    port: int
    stats: dict[str, int] = field(default_factory=dict)
    drop_counts: dict[str, int] = field(default_factory=dict)
    drops: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    async def stop(self) -> None:
        """Stop the relay now (what is queued is delivered first) and read its report; once."""
        proc = self.process
        if proc.stdin is None or proc.stdin.closed:
            return
        proc.stdin.close()
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        if not line:
            raise RuntimeError(f"the impairment relay ended without its report (status {proc.poll()})")
        report = json.loads(line)
        self.drop_counts = report.pop("drop_counts")
        self.drops = {d: [bytes.fromhex(h) for h in kept] for d, kept in report.pop("drops").items()}
        self.stats = report

    def dropped(self, datagram: bytes, direction: str = "to_target") -> bool:
        """Whether the network dropped ``datagram`` (sent once) in ``direction`` (among those kept)."""
        return datagram in self.drops[direction]


@contextlib.asynccontextmanager
async def impairment_relay(
    target: tuple[str, int] | int, *, seed: int = 1, impairment: Impairment | None = None, **changes: float
) -> AsyncIterator[ImpairmentRelay]:
    """Run a seeded impairment relay (its own process) in front of ``target`` (a port on 127.0.0.1,
    or an IPv4 (host, port)); yield it, then stop it and read its statistics.

    ``relay.stop()`` stops it earlier (to count what arrived once nothing more can).
    ``impairment`` (default: none) with ``changes`` applied, e.g.
    ``impairment_relay(port, seed=3, loss=0.05, delay=0.002)``. The same seed and the same
    traffic give the same fate to the same datagrams.
    """
    host, port = ("127.0.0.1", target) if isinstance(target, int) else target
    params = {**(impairment or Impairment()).__dict__, **changes}
    args = [sys.executable, "-m", "trio_conduit.testing._relay_process", "--to", f"{host}:{port}"]
    args += ["--seed", str(seed)]
    for key, value in params.items():
        args += [f"--{key}", str(value)]
    # Popen returns at once; its pipe is read in a thread
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        if not line.startswith("listening "):
            raise RuntimeError(f"the impairment relay did not start (it said {line!r})")
        relay = ImpairmentRelay(proc, int(line.split()[1]))
        yield relay
        await relay.stop()
    finally:
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.kill()
            await trio.to_thread.run_sync(proc.wait)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def main(argv: list[str] | None = None) -> None:
    """The relay process: arguments as in the module's docstring."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--listen", type=_addr, default=("127.0.0.1", 0))
    p.add_argument("--to", type=_addr, required=True)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--dup", type=float, default=0.0)
    p.add_argument("--reorder", type=float, default=0.0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--queue", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", type=int, default=10000)
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
        keep=args.keep,
    )

    def report(*_: object) -> None:
        print(json.dumps(relay.report()), flush=True)
        sys.exit(0)

    def stop(*_: object) -> None:
        relay.finish()
        report()

    signal.signal(signal.SIGTERM, stop)
    print(f"listening {sock.getsockname()[1]}", flush=True)
    relay.run(sys.stdin)
    report()


if __name__ == "__main__":
    main()
