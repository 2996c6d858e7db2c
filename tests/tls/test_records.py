"""Dynamic TLS record sizing: the rule (sans-IO, virtual time) and the record headers on the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import trio_conduit as conduit
from trio_conduit.tls import BURST_THRESHOLD, SMALL_RECORD, RecordSizer, iter_records

from .conftest import PKI

APPLICATION_DATA = 23
TLS13_OVERHEAD = 17  # inner content type + 16-byte AEAD tag


def test_dynamic_rule() -> None:
    sizer = RecordSizer()
    first = sizer.plan(3_000_000, now=0.0)
    small = list(first[:-1])
    assert all(s == SMALL_RECORD for s in small)
    assert sum(small) >= BURST_THRESHOLD
    assert sum(small) - SMALL_RECORD < BURST_THRESHOLD
    assert sum(first) == 3_000_000
    assert first[-1] == 3_000_000 - sum(small)
    # still in the burst: large
    assert sizer.plan(50_000, now=0.5) == [50_000]
    # exactly 1 s after the last write: still the same burst (ATS resets after *more than* 1 s)
    assert sizer.plan(5000, now=1.5) == [5000]
    # idle for more than a second: small again
    assert sizer.plan(5000, now=2.6) == [1300, 1300, 1300, 1100]
    assert sizer.burst_bytes == 5000


def test_small_writes_add_up_to_the_threshold() -> None:
    sizer = RecordSizer()
    t = 0.0
    for _ in range(999):
        assert sizer.plan(1000, now=t) == [1000]
        t += 0.001
    assert sizer.plan(2000, now=t) == [1300, 700]  # 999,000 + 1300 crosses the threshold
    assert sizer.plan(20_000, now=t) == [20_000]


def test_fixed_size() -> None:
    sizer = RecordSizer(4096)
    assert sizer.plan(10_000, now=0) == [4096, 4096, 1808]
    assert sizer.plan(10, now=100) == [10]
    with pytest.raises(ValueError, match="record size"):
        RecordSizer(20_000)


@asynccontextmanager
async def tapped_server(pool: conduit.Pool, pki: PKI, captured: bytearray) -> AsyncIterator[int]:
    """A TLS sink (acks each chunk) behind a TCP relay that records what the client sends."""

    async def sink(conn: Any) -> None:
        while True:
            header = await read_exactly(conn, 4)
            if not header:
                return
            await read_exactly(conn, int.from_bytes(header, "big"))
            await conn.send_all(b"k")

    async def relay(client: Any) -> None:
        upstream = await pool.connect(f"tcp://127.0.0.1:{server.port}")

        async def up() -> None:
            while data := await client.receive_some():
                captured.extend(data)
                await upstream.send_all(data)
            await upstream.send_eof()

        async def down() -> None:
            while data := await upstream.receive_some():
                await client.send_all(data)
            await client.send_eof()

        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(up)
            nursery.start_soon(down)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: pool.serve(pki.server_url(), sink, task_status=task_status)
        )
        front = await nursery.start(
            lambda task_status: pool.serve("tcp://127.0.0.1:0", relay, task_status=task_status)
        )
        yield front.port
        nursery.cancel_scope.cancel()


async def read_exactly(conn: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = await conn.receive_some(n - len(data))
        if not more:
            return data
        data += more
    return data


async def send_chunk(conn: Any, size: int) -> None:
    await conn.send_all(size.to_bytes(4, "big") + bytes(size))
    assert await conn.receive_some(1) == b"k"


def plaintext_sizes(captured: bytes) -> list[int]:
    """Plaintext sizes of the client's TLS 1.3 application-data records (after its Finished)."""
    encrypted = [
        r.length - TLS13_OVERHEAD for r in iter_records(captured) if r.content_type == APPLICATION_DATA
    ]
    return encrypted[1:]  # the first encrypted record is the client's Finished


async def test_dynamic_sizing_on_the_wire(pki: PKI) -> None:
    captured = bytearray()
    async with conduit.open_pool() as pool, tapped_server(pool, pki, captured) as port:
        conn = await pool.connect(
            f"tls://localhost:{port}", cafile=pki.cafile, record_size="dynamic", max_version="1.3"
        )
        burst = 1_500_000
        await send_chunk(conn, burst)
        sizes = plaintext_sizes(bytes(captured))
        assert sum(sizes) == burst + 4
        small = 0
        while sum(sizes[:small]) < BURST_THRESHOLD:
            assert sizes[small] == SMALL_RECORD, (small, sizes[small])
            small += 1
        assert small == -(-BURST_THRESHOLD // SMALL_RECORD)  # 770 records of 1300 bytes
        large = sizes[small:]
        assert large[:-1] == [16384] * (len(large) - 1)
        assert 0 < large[-1] <= 16384
        # the burst goes on: more data right away is sent in large records
        before = len(sizes)
        await send_chunk(conn, 40_000)
        assert plaintext_sizes(bytes(captured))[before:] == [16384, 16384, 7236]
        # after more than a second without writing, small records again
        await trio.sleep(1.05)
        before = len(plaintext_sizes(bytes(captured)))
        await send_chunk(conn, 3000)
        assert plaintext_sizes(bytes(captured))[before:] == [1300, 1300, 404]
        await conn.aclose()


@pytest.mark.parametrize(
    ("record_size", "expected"), [(4096, [4096] * 9 + [3140]), (None, [16384, 16384, 7236])]
)
async def test_fixed_and_default_sizes_on_the_wire(
    pki: PKI, record_size: int | None, expected: list[int]
) -> None:
    captured = bytearray()
    async with conduit.open_pool() as pool, tapped_server(pool, pki, captured) as port:
        conn = await pool.connect(f"tls://localhost:{port}", cafile=pki.cafile, record_size=record_size)
        await send_chunk(conn, 40_000)
        assert plaintext_sizes(bytes(captured)) == expected
        await conn.aclose()
