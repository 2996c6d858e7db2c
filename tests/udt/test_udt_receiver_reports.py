"""What our receiver reports to a sender, checked against a real libudt sender on loopback.

A UDT receiver feeds its peer's congestion control: the RTT it measures
(ACK to ACK2) goes out in every ACK, and libudt's sender takes it as its
own; the receive rate in full ACKs sizes the sender's window. These tests
run libudt's sender (``udtpeer --perfmon``, which samples ``UDT::perfmon``
every 100 ms) against our receiver, and our sender against it, and check the
figures on both sides against what the transfer itself shows. No timing
decides a pass: the transfers run to their end, and what is compared is
what each side measured.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_conduit as conduit

from .peer import build_udtpeer, udtpeer_skip_reason
from .test_udt_interop import run_peer

pytestmark = pytest.mark.interop

#: Enough for a second or more at loopback speed, so that both sides take several samples
#: of the transfer's second half (libudt's perfmon every 100 ms, ours every 50 ms).
SIZE = 192 * 1024 * 1024
#: Loopback's round trip is tens of microseconds; a receiver that counts the time a packet
#: waits in its socket (or its ACK in a batch) reports milliseconds to a hundred.
RTT_BOUND_MS = 2.0


@pytest.fixture(scope="session")
def udtpeer() -> Path:
    reason = udtpeer_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return build_udtpeer()


class Sampler:
    """Our receiving session's own figures, every 50 ms of a transfer (by the reader's clock)."""

    def __init__(self, conn: Any) -> None:
        self.session = conn.session
        self.samples: list[tuple[float, int, float, int]] = []  # (t, pkt_recv, rtt ms, reported rate)
        self._next = 0.0

    def maybe(self) -> None:
        t = time.perf_counter()
        if t >= self._next:
            self._next = t + 0.05
            s = self.session
            self.samples.append((t, s.stats.pkt_recv, s.rtt * 1000, s.receiver.arrival_rate()))

    def second_half(self) -> list[tuple[float, int, float, int]]:
        return self.samples[len(self.samples) // 2 :]

    def measured_rates(self) -> list[float]:
        """Packets per second between consecutive samples (second half of the transfer)."""
        half = self.second_half()
        return [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(half) if b[0] > a[0]]


def perfmon(report_text: str) -> list[dict[str, float]]:
    for line in report_text.splitlines():
        if line.startswith('{"perfmon"'):
            samples: list[dict[str, float]] = json.loads(line)["perfmon"]
            return samples
    raise AssertionError(f"no perfmon line from udtpeer: {report_text[-500:]!r}")


async def receive_from_libudt(udtpeer: Path) -> tuple[Sampler, list[dict[str, float]], int]:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        port = str(listener.address.port)
        async with run_peer(
            udtpeer, "connect", "127.0.0.1", port, "--send", str(SIZE), "--gen", "--perfmon"
        ) as peer:
            conn = await listener.accept()
            sampler = Sampler(conn)
            got = 0
            while chunk := await conn.receive_some():
                got += len(chunk)
                sampler.maybe()
            text = await peer.rest_of_stderr()
        assert peer.proc.returncode == 0
    return sampler, perfmon(text), got


async def test_rtt_on_loopback_is_loopbacks_for_our_receiver_and_for_libudts_sender(udtpeer: Path) -> None:
    sampler, perf, got = await receive_from_libudt(udtpeer)
    assert got == SIZE
    ours = statistics.median(s[2] for s in sampler.second_half())
    # libudt's sender keeps the RTT our ACKs carry (an EWMA from its 100 ms default)
    theirs = statistics.median(p["msRTT"] for p in perf[len(perf) // 2 :])
    assert len(sampler.second_half()) >= 3
    assert len(perf) >= 4
    assert ours < RTT_BOUND_MS, f"our receiver measured {ours:.2f} ms"
    assert theirs < RTT_BOUND_MS, f"libudt's sender measured {theirs:.2f} ms against us"
    # the flow window it sees is our free receive buffer: the reference's default, 8192 packets
    # (libudt's own receiver announces the same), less what is waiting for the reader -- which
    # is how a sender faster than this reader is held back, so it may shrink as the transfer
    # goes on (not a bound on the rate at a round trip of tens of microseconds)
    windows = [p["pktFlowWindow"] for p in perf]
    assert max(windows) == 8192, windows


async def test_receive_rate_reported_to_libudt_is_the_rate_that_arrives(udtpeer: Path) -> None:
    sampler, _perf, got = await receive_from_libudt(udtpeer)
    assert got == SIZE
    reported = statistics.median(s[3] for s in sampler.second_half())
    measured = statistics.median(sampler.measured_rates())
    assert measured > 0
    assert measured / 2 <= reported <= measured * 2, f"reported {reported} packets/s, measured {measured:.0f}"


async def test_receive_rate_reported_to_our_sender_is_the_rate_that_arrives() -> None:
    block = bytes(1 << 20)
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        port = listener.address.port
        sampler: Sampler | None = None
        got = 0
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                conn = await pool.connect_stream(f"udt://127.0.0.1:{port}")
                for _ in range(SIZE // len(block)):
                    await conn.send_all(block)
                await conn.aclose()

            nursery.start_soon(send)
            conn = await listener.accept()
            sampler = Sampler(conn)
            while chunk := await conn.receive_some():
                got += len(chunk)
                sampler.maybe()
    assert got == SIZE
    assert sampler is not None
    reported = statistics.median(s[3] for s in sampler.second_half())
    measured = statistics.median(sampler.measured_rates())
    assert measured / 2 <= reported <= measured * 2, f"reported {reported} packets/s, measured {measured:.0f}"
