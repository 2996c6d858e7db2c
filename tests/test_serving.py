"""Running a server: graceful drain (``drain_timeout``, ``pool.drain()``) and ``reuse_port``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import trio

import trio_conduit as conduit


async def test_drain_lets_a_live_handler_finish_and_refuses_new_connects() -> None:
    started, release = trio.Event(), trio.Event()
    finished: list[bytes] = []

    async def handler(conn: Any) -> None:
        data = await conn.receive_some()
        started.set()
        await release.wait()  # mid-transfer when the drain begins
        await conn.send_all(data.upper())
        finished.append(data)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(partial_serve(pool, handler, drain_timeout=30))
        client = await pool.connect(f"tcp://127.0.0.1:{address.port}")
        await client.send_all(b"hello")
        await started.wait()
        drained = trio.Event()

        async def drain() -> None:
            await pool.drain()
            drained.set()

        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        # accepting stopped at once: a new connect is refused, while the handler is still live
        with pytest.raises(conduit.ConnectionRefused):
            await pool.connect(f"tcp://127.0.0.1:{address.port}")
        assert not drained.is_set()
        release.set()
        assert await client.receive_some() == b"HELLO"
        await drained.wait()
        assert finished == [b"hello"]


async def test_drain_cancels_handlers_past_the_timeout() -> None:
    cancelled = trio.Event()

    async def handler(conn: Any) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    async with conduit.open_pool(drain_timeout=0.05) as pool, trio.open_nursery() as nursery:
        address = await nursery.start(partial_serve(pool, handler))
        client = await pool.connect(f"tcp://127.0.0.1:{address.port}")
        await trio.testing.wait_all_tasks_blocked()
        await pool.drain()
        assert cancelled.is_set()
        assert await client.receive_some() == b""  # the handler's connection was closed


async def test_closing_the_pool_drains_a_serve_running_outside_it() -> None:
    finished = trio.Event()
    release = trio.Event()

    async def handler(conn: Any) -> None:
        await release.wait()
        await conn.send_all(b"bye")
        finished.set()

    async with trio.open_nursery() as outer:
        async with conduit.open_pool(drain_timeout=30) as pool:
            address = await outer.start(partial_serve(pool, handler))
            raw = await trio.open_tcp_stream("127.0.0.1", address.port)
            await trio.testing.wait_all_tasks_blocked()
            outer.start_soon(_set_later, release)
        # the pool closed only once the handler finished its work
        assert finished.is_set()
        assert await raw.receive_some() == b"bye"
        await raw.aclose()


async def _set_later(event: trio.Event) -> None:
    await trio.testing.wait_all_tasks_blocked()
    event.set()


async def test_outside_cancellation_does_not_wait_for_the_drain() -> None:
    cancelled = trio.Event()

    async def handler(conn: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with conduit.open_pool(drain_timeout=3600) as pool:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(partial_serve(pool, handler))
                await pool.connect(f"tcp://127.0.0.1:{address.port}")
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        assert cancelled.is_set()


@pytest.mark.parametrize("bad", [-1, float("nan"), "5", True])
async def test_drain_timeout_must_be_seconds(bad: object) -> None:
    with pytest.raises(ValueError, match="drain_timeout"):
        async with conduit.open_pool(drain_timeout=bad):  # type: ignore[arg-type]
            pass
    async with conduit.open_pool() as pool:
        with pytest.raises(ValueError, match="drain_timeout"):
            await pool.serve("tcp://127.0.0.1:0", _noop, drain_timeout=bad)  # type: ignore[arg-type]


async def _noop(conn: Any) -> None:
    pass


def partial_serve(pool: conduit.Pool, handler: Any, **kw: Any) -> Any:
    async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await pool.serve("tcp://127.0.0.1:0", handler, task_status=task_status, **kw)

    return serve


async def test_reuse_port_sets_so_reuseport_and_lets_two_listeners_share_a_port() -> None:
    async with conduit.open_pool() as pool:
        first = await pool.listen("tcp://127.0.0.1:0", reuse_port=True)
        sock = first.inner.socket  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        second = await pool.listen(f"tcp://127.0.0.1:{first.address.port}?reuse_port=1")
        assert second.address.port == first.address.port
        with pytest.raises(conduit.AddressInUse):
            await pool.listen(f"tcp://127.0.0.1:{first.address.port}")
        plain = await pool.listen("tcp://127.0.0.1:0")
        assert plain.inner.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0  # type: ignore[attr-defined]


async def test_reuse_port_is_refused_for_unix_sockets(tmp_path: Any) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match="reuse_port"):
            await pool.listen(f"unix://{tmp_path}/s", reuse_port=True)


WORKER = textwrap.dedent(
    """
    import functools, os, sys, trio, trio_conduit as conduit

    async def handler(conn):
        await conn.send_all(str(os.getpid()).encode())

    async def main():
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            serve = functools.partial(pool.serve, reuse_port=True)
            address = await nursery.start(serve, f"tcp://127.0.0.1:{sys.argv[1]}", handler)
            print(address.port, flush=True)

    trio.run(main)
    """
)


async def test_two_processes_serve_one_port_with_reuse_port() -> None:
    first = subprocess.Popen([sys.executable, "-c", WORKER, "0"], stdout=subprocess.PIPE, text=True)
    procs = [first]
    try:
        assert first.stdout is not None
        port = int(await trio.to_thread.run_sync(first.stdout.readline))
        second = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(port)], stdout=subprocess.PIPE, text=True
        )
        procs.append(second)
        assert second.stdout is not None
        assert int(await trio.to_thread.run_sync(second.stdout.readline)) == port
        seen: set[int] = set()
        async with conduit.open_pool() as pool:
            for _ in range(200):  # the kernel hashes each connection to one of them
                conn = await pool.connect_stream(f"tcp://127.0.0.1:{port}")
                got = b""
                while chunk := await conn.receive_some():
                    got += chunk
                await conn.aclose()
                seen.add(int(got))
                if len(seen) == 2:
                    break
        assert seen == {first.pid, second.pid}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    assert os.getpid() not in seen


def test_the_serving_benchmarks_run_and_measure() -> None:
    """``conduit bench --only memory`` / ``--only workers`` at a tiny size: figures, not speeds."""
    from trio_conduit.bench.serving import run_memory_bench, run_workers_bench

    memory = run_memory_bench(300, 1)["memory_per_idle_connection_kb"]
    assert memory["connections"] == 300
    assert memory["raw_trio"] > 0
    assert memory["pool"] > 0
    workers = run_workers_bench(40, 10, 1)
    assert set(workers) == {"workers_connections_per_s", "workers_tls_handshakes_per_s"}
    for figure in workers.values():
        assert len(figure["runs"]["1"]) == len(figure["runs"]["2"]) == 1
        assert figure["one_worker"] > 0
        assert figure["two_workers"] > 0
