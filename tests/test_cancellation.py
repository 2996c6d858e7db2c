"""Cancellation at any checkpoint leaks nothing: no file descriptor, no task, no socket file.

Each scenario is first run to completion while counting trio task steps (every
time any task resumes from a checkpoint); then it is run again with a cancel
scope cancelled just before step N, for every N when there are few steps and
for seeded random N otherwise, plus a few random wall-clock deadlines. After
each run the descriptor table and the task tree must be as they were.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_conduit as conduit

from .conftest import assert_no_fd_leak, open_fds, task_count

Scenario = Callable[[], Awaitable[None]]

#: Checkpoint counts at or below this are all tried; above, a seeded random sample.
EXHAUSTIVE_UP_TO = 60
SAMPLES = 20


class _StepCanceller(trio.abc.Instrument):
    """Counts task steps in the whole run; cancels ``scope`` just before step ``at``."""

    def __init__(self, scope: trio.CancelScope | None, at: int | None) -> None:
        self.scope = scope
        self.at = at
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps == self.at and self.scope is not None:
            self.scope.cancel()


@contextmanager
def _instrument(instrument: trio.abc.Instrument) -> Iterator[None]:
    trio.lowlevel.add_instrument(instrument)
    try:
        yield
    finally:
        trio.lowlevel.remove_instrument(instrument)


async def count_steps(scenario: Scenario) -> int:
    counter = _StepCanceller(None, None)
    with _instrument(counter):
        await scenario()
    return counter.steps


async def run_cancelled_at_step(scenario: Scenario, at: int) -> bool:
    """Run ``scenario`` cancelling it before task step ``at``; True if the cancel landed."""
    with trio.CancelScope() as scope, _instrument(_StepCanceller(scope, at)):
        await scenario()
    return scope.cancelled_caught


async def run_cancelled_after(scenario: Scenario, delay: float) -> bool:
    with trio.move_on_after(delay) as scope:
        await scenario()
    return scope.cancelled_caught


async def assert_cancel_safe(
    scenario: Scenario,
    *,
    seed: int,
    max_delay: float = 0.01,
    delays: int = 5,
    check: Callable[[], None] | None = None,
) -> None:
    """Cancel ``scenario`` at many checkpoints; after each run nothing may be left over."""
    rng = random.Random(seed)
    fds, tasks = open_fds(), task_count()

    def no_leaks(what: str) -> None:
        assert_no_fd_leak(fds)
        assert task_count() == tasks, f"tasks leaked after {what}"
        if check is not None:
            check()

    total = await count_steps(scenario)
    no_leaks("an uncancelled run")
    assert total > 0
    if total <= EXHAUSTIVE_UP_TO:
        points = list(range(1, total + 1))
    else:
        points = sorted({1, 2, 3, total, *rng.sample(range(4, total), SAMPLES)})
    landed = 0
    for at in points:
        landed += await run_cancelled_at_step(scenario, at)
        no_leaks(f"a cancel at step {at} of about {total}")
    for _ in range(delays):
        delay = rng.uniform(0, max_delay)
        await run_cancelled_after(scenario, delay)
        no_leaks(f"a cancel after {delay:.6f} s")
    # Some steps are the pool's shielded closing, where a cancel has nothing to
    # interrupt; but the cancels must have hit the scenario mid-way too.
    assert landed >= max(1, len(points) // 4), (landed, len(points))


async def test_the_harness_catches_a_leak() -> None:
    """A scenario that leaks a descriptor when cancelled is caught (the checks can fail)."""
    leaked: list[socket.socket] = []

    async def leaky() -> None:
        sock = socket.socket()
        leaked.append(sock)
        await trio.sleep(0)
        await trio.sleep(0)
        sock.close()

    try:
        with pytest.raises(AssertionError, match="file descriptors leaked"):
            await assert_cancel_safe(leaky, seed=0)
    finally:
        for sock in leaked:
            sock.close()

    async def task_leaky() -> None:
        await trio.sleep(0)
        # A task started in a nursery outside the cancelled scope outlives the scenario.
        outside.start_soon(trio.sleep_forever)

    async with trio.open_nursery() as outside:
        with pytest.raises(AssertionError, match="tasks leaked"):
            await assert_cancel_safe(task_leaky, seed=0)
        outside.cancel_scope.cancel()


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def uecho(ch: Any) -> None:
    async for data in ch:
        await ch.send(data)


def no_files_in(directory: Path, *allowed: str) -> Callable[[], None]:
    def check() -> None:
        left = sorted(p.name for p in directory.iterdir() if p.name not in allowed)
        assert left == [], f"socket files left behind: {left}"

    return check


async def _plain_datagram_echo(sock: trio.socket.SocketType) -> None:
    with sock:
        while True:
            data, peer = await sock.recvfrom(65536)
            if peer:
                await sock.sendto(data, peer)


# ---------------------------------------------------------------------------
# connect
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tcp", "unix", "udp", "unix+dgram"])
async def test_cancel_connect(scheme: str, sock_dir: Path) -> None:
    """Cancel ``pool.connect`` (and a first exchange) at every checkpoint."""
    async with conduit.open_pool() as server_pool, trio.open_nursery() as nursery:
        if scheme == "tcp":
            url = "tcp://127.0.0.1:0"
        elif scheme == "udp":
            url = "udp://127.0.0.1:0"
        else:
            url = f"{scheme}://{sock_dir}/server.sock"
        if scheme in ("tcp", "unix"):
            # Listen but never accept: the kernel completes connects in its backlog,
            # so every descriptor the scenario opens is the client's own.
            listener = await server_pool.listen(url)
            address = str(listener.address)
        else:
            # A plain echo socket: no per-peer state (tasks) outside the scenario.
            family = socket.AF_INET if scheme == "udp" else socket.AF_UNIX
            server = trio.socket.socket(family, socket.SOCK_DGRAM)
            await server.bind(("127.0.0.1", 0) if scheme == "udp" else f"{sock_dir}/server.sock")
            nursery.start_soon(_plain_datagram_echo, server)
            where = server.getsockname()
            address = f"udp://127.0.0.1:{where[1]}" if scheme == "udp" else f"unix+dgram://{where}"

        async def scenario() -> None:
            async with conduit.open_pool() as pool:
                conn = await pool.connect(address)
                if scheme in ("udp", "unix+dgram"):
                    await conn.send(b"ping")
                    assert await conn.receive() == b"ping"
                else:
                    await conn.send_all(b"ping")
                assert conn in pool.connections
            assert pool.connections == []

        await assert_cancel_safe(
            scenario, seed=hash(scheme) & 0xFFFF, check=no_files_in(sock_dir, "server.sock")
        )
        nursery.cancel_scope.cancel()


async def test_cancel_connect_with_timeout_racing() -> None:
    """A connect timeout and an outer cancel at the same time: typed error or Cancelled, no leak."""
    async with conduit.open_pool() as server_pool:
        listener = await server_pool.listen("tcp://127.0.0.1:0")

        async def scenario() -> None:
            async with conduit.open_pool() as pool:
                try:
                    conn = await pool.connect(listener.address, timeout=0.0005)
                except conduit.ConnectTimeout:
                    return
                # Close it here, a checkpoint of our own: a connect to an address literal has
                # only the connect's wait to cancel, and a cancel that lands on its last step
                # shows here (not in the pool's shielded close).
                await conn.aclose()

        await assert_cancel_safe(scenario, seed=7, max_delay=0.001)


class _DualStackResolver(trio.abc.HostnameResolver):
    """Resolves ``dual.test`` to ::1 first, then 127.0.0.1 (as a dual-stack localhost would)."""

    def __init__(self) -> None:
        self.calls = 0

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        await trio.lowlevel.checkpoint()
        assert host in (b"dual.test", "dual.test"), host
        self.calls += 1
        port = int(port or 0)
        kind = socket.SocketKind(type or socket.SOCK_STREAM)
        return [
            (socket.AF_INET6, kind, 0, "", ("::1", port, 0, 0)),
            (socket.AF_INET, kind, 0, "", ("127.0.0.1", port)),
        ]

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        raise NotImplementedError


@contextmanager
def dual_stack_resolver() -> Iterator[_DualStackResolver]:
    resolver = _DualStackResolver()
    old = trio.socket.set_custom_hostname_resolver(resolver)
    try:
        yield resolver
    finally:
        trio.socket.set_custom_hostname_resolver(old)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _listen_v4_and_clogged_v6() -> tuple[int, list[socket.socket]]:
    """A port with a listener on 127.0.0.1 and a full accept queue on [::1] (SYNs dropped).

    A connect to [::1] then hangs (as to a silent host), so happy eyeballs must
    start the IPv4 attempt after its delay and cancel the IPv6 one.
    """
    for _ in range(50):
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::1", 0))
        port = v6.getsockname()[1]
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            v4.bind(("127.0.0.1", port))
        except OSError:
            v4.close()
            v6.close()
            continue
        v4.listen(64)
        v6.listen(0)
        fillers = []
        for _ in range(4):  # a backlog of 0 still queues one connection
            f = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            f.setblocking(False)
            f.connect_ex(("::1", port))
            fillers.append(f)
        return port, [v4, v6, *fillers]
    raise RuntimeError("no port free on both families")


@pytest.mark.parametrize("v6", ["refused", "silent"])
async def test_cancel_happy_eyeballs_mid_race(v6: str, autojump_clock: trio.testing.MockClock) -> None:
    """``dual.test`` → [::1, 127.0.0.1] with a listener on IPv4 only; cancel anywhere in the race.

    ``refused``: nothing on [::1], its attempt fails at once. ``silent``: [::1]
    drops SYNs, so both attempts are in flight when the IPv4 one starts.
    (Virtual time: the 250 ms happy-eyeballs delay costs nothing.)
    """
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    socks: list[socket.socket] = []
    try:
        if v6 == "refused":
            v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            v4.bind(("127.0.0.1", 0))
            v4.listen(64)
            port = v4.getsockname()[1]
            socks.append(v4)
        else:
            port, socks = _listen_v4_and_clogged_v6()
        with dual_stack_resolver() as resolver:
            won: list[Any] = []
            took: list[float] = []

            async def scenario() -> None:
                async with conduit.open_pool() as pool:
                    start = trio.current_time()
                    conn = await pool.connect(f"tcp://dual.test:{port}")
                    took.append(trio.current_time() - start)
                    won.append(conn.info.remote)
                    await conn.aclose()

            await assert_cancel_safe(scenario, seed=port, max_delay=0.4, delays=10)
            assert resolver.calls > 0
            assert won
            assert set(won) == {("127.0.0.1", port)}
            if v6 == "silent":
                # The IPv6 attempt hung, so IPv4 only started after the happy-eyeballs delay.
                assert min(took) >= 0.25 - 1e-9  # virtual time; allow float rounding only
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------
# accept loops
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tcp", "unix", "udp", "unix+dgram"])
async def test_cancel_serve_accept_loop(scheme: str, sock_dir: Path) -> None:
    """Cancel ``pool.serve`` with clients arriving, at random checkpoints."""
    url = {
        "tcp": "tcp://127.0.0.1:0",
        "udp": "udp://127.0.0.1:0",
        "unix": f"unix://{sock_dir}/serve.sock",
        "unix+dgram": f"unix+dgram://{sock_dir}/serve.sock",
    }[scheme]
    datagram = scheme in ("udp", "unix+dgram")

    async def scenario() -> None:
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            address = await nursery.start(pool.serve, url, uecho if datagram else echo)

            async def client(i: int) -> None:
                conn = await pool.connect(address)
                if datagram:
                    await conn.send(b"%d" % i)
                    assert await conn.receive() == b"%d" % i
                else:
                    await conn.send_all(b"%d" % i)
                    assert await conn.receive_some() == b"%d" % i
                await conn.aclose()

            async with trio.open_nursery() as clients:
                for i in range(3):
                    clients.start_soon(client, i)
            nursery.cancel_scope.cancel()

    await assert_cancel_safe(scenario, seed=len(scheme), check=no_files_in(sock_dir))


# ---------------------------------------------------------------------------
# busy handlers
# ---------------------------------------------------------------------------

BIG = 4 * 1024 * 1024


@pytest.mark.parametrize("direction", ["handler-sends", "handler-receives"])
@pytest.mark.parametrize("scheme", ["tcp", "unix"])
async def test_cancel_busy_handler(scheme: str, direction: str, sock_dir: Path) -> None:
    """Cancel while a handler is in the middle of a big transfer."""
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else f"unix://{sock_dir}/busy.sock"
    payload = os.urandom(BIG)

    async def sender(conn: Any) -> None:
        view = memoryview(payload)
        for i in range(0, BIG, 65536):
            await conn.send_all(view[i : i + 65536])
        await conn.send_eof()

    async def receiver(conn: Any) -> None:
        got = 0
        while data := await conn.receive_some():
            got += len(data)
        assert got == BIG

    handler, client_side = (sender, receiver) if direction == "handler-sends" else (receiver, sender)

    async def scenario() -> None:
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            address = await nursery.start(pool.serve, url, handler)
            conn = await pool.connect(address)
            await client_side(conn)
            if direction == "handler-receives":
                assert await conn.receive_some() == b""
            nursery.cancel_scope.cancel()

    await assert_cancel_safe(scenario, seed=BIG + len(direction), max_delay=0.02, check=no_files_in(sock_dir))


async def test_closing_the_pool_cancels_busy_spawned_handlers() -> None:
    """Leave the pool while spawned handlers are mid-transfer: all cancelled, all closed."""
    rng = random.Random(1234)
    fds, tasks = open_fds(), task_count()
    running: set[Any] = set()
    cancelled: list[Any] = []
    handled: list[Any] = []
    hook_errors: list[BaseException] = []

    class ErrorHook:
        @conduit.hookimpl
        def conduit_handler_error(self, exc: BaseException) -> None:
            hook_errors.append(exc)

    async def busy(conn: Any) -> None:
        running.add(conn)
        handled.append(conn)
        try:
            block = b"z" * 65536
            while True:
                await conn.send_all(block)
                await conn.receive_some(65536)
        except trio.Cancelled:
            cancelled.append(conn)
            raise
        finally:
            running.discard(conn)

    async with conduit.open_pool() as server_pool, trio.open_nursery() as nursery:
        address = await nursery.start(server_pool.serve, "tcp://127.0.0.1:0", echo)
        for _ in range(8):
            async with conduit.open_pool(plugins=[ErrorHook()]) as pool:
                for _ in range(3):
                    pool.spawn(address, busy)
                await trio.sleep(rng.uniform(0, 0.02))
            # Leaving the pool cancelled every handler still running and closed its connection.
            assert running == set()
            assert pool.connections == []
        nursery.cancel_scope.cancel()
    assert hook_errors == []
    assert handled, "no handler ever started: the test proves nothing"
    # Busy handlers never end by themselves: every one was cancelled (none failed
    # on a connection closed under it).
    assert sorted(map(id, cancelled)) == sorted(map(id, handled))
    assert all(conn.socket.fileno() == -1 for conn in handled)
    assert_no_fd_leak(fds)
    assert task_count() == tasks


async def test_closing_the_pool_cancels_busy_serve_handlers_outside_it() -> None:
    """``serve`` running in a nursery outside the pool, handlers mid-transfer, then the pool
    closes: the handlers are cancelled (not failed by their connection closing under them)."""
    rng = random.Random(99)
    fds, tasks = open_fds(), task_count()
    hook_errors: list[BaseException] = []
    cancelled = 0

    class ErrorHook:
        @conduit.hookimpl
        def conduit_handler_error(self, exc: BaseException) -> None:
            hook_errors.append(exc)

    async def pump(conn: Any) -> None:
        nonlocal cancelled
        try:
            block = b"s" * 65536
            while True:
                await conn.send_all(block)
        except trio.Cancelled:
            cancelled += 1
            raise

    async def drain(conn: Any) -> None:
        while await conn.receive_some():
            pass

    for _ in range(8):
        async with (
            conduit.open_pool() as clients,
            trio.open_nursery() as outer,
            conduit.open_pool(plugins=[ErrorHook()]) as pool,
        ):
            address = await outer.start(pool.serve, "tcp://127.0.0.1:0", pump)
            for _ in range(3):
                clients.spawn(address, drain)
            await trio.sleep(rng.uniform(0, 0.02))
            # serve() returns quietly (the outer nursery raises nothing) once its pool closed.
    assert hook_errors == []
    assert cancelled > 0
    assert_no_fd_leak(fds)
    assert task_count() == tasks
