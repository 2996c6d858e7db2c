"""Pool semantics: serve / listen / spawn, handler lifetimes and errors, limits, closing, ids, trace."""

from __future__ import annotations

import errno
import logging
import re
import socket
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit import DEBUG_ALL, hookimpl

from .conftest import free_tcp_port


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def roundtrip(conn: Any, data: bytes) -> bytes:
    await conn.send_all(data)
    got = b""
    while len(got) < len(data):
        chunk = await conn.receive_some()
        assert chunk, "unexpected end of stream"
        got += chunk
    return got


class Recorder:
    """A pool plugin that records the lifecycle hooks it sees."""

    def __init__(self) -> None:
        self.made: list[int] = []
        self.lost: list[tuple[int, BaseException | None]] = []
        self.errors: list[tuple[Any, BaseException]] = []
        self.error_event = trio.Event()
        self.lost_events: dict[int, trio.Event] = {}

    def lost_event(self, conn_id: int) -> trio.Event:
        return self.lost_events.setdefault(conn_id, trio.Event())

    @hookimpl
    async def conduit_connection_made(self, conn: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.made.append(conn.id)

    @hookimpl
    def conduit_connection_lost(self, conn: Any, exc: BaseException | None) -> None:
        self.lost.append((conn.id, exc))
        self.lost_event(conn.id).set()

    @hookimpl
    async def conduit_handler_error(self, conn: Any, exc: BaseException) -> None:
        await trio.lowlevel.checkpoint()
        self.errors.append((conn, exc))
        self.error_event.set()


# ---------------------------------------------------------------------------
# serve / listen / spawn
# ---------------------------------------------------------------------------


async def test_serve_reports_bound_address_port_zero() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        assert isinstance(address, conduit.Address)
        assert address.scheme == "tcp"
        assert address.host == "127.0.0.1"
        assert address.port not in (None, 0)
        assert str(address) == f"tcp://127.0.0.1:{address.port}"
        # The address is really bound: a plain socket reaches the handler.
        with socket.create_connection(("127.0.0.1", address.port)) as s:
            s.setblocking(False)
        conn = await pool.connect(address)
        assert await roundtrip(conn, b"hello") == b"hello"
        nursery.cancel_scope.cancel()


async def test_serve_on_a_given_port() -> None:
    port = free_tcp_port()
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, f"tcp://127.0.0.1:{port}", echo)
        assert address.port == port
        conn = await pool.connect(f"tcp://127.0.0.1:{port}")
        assert await roundtrip(conn, b"x") == b"x"
        nursery.cancel_scope.cancel()


async def test_listen_and_accept_by_hand(sock_dir: Path) -> None:
    async with conduit.open_pool() as pool:
        for url in ("tcp://127.0.0.1:0", f"unix://{sock_dir}/l.sock"):
            listener = await pool.listen(url)
            assert isinstance(listener, trio.abc.Listener)
            assert isinstance(listener, conduit.PoolListener)
            client = await pool.connect(listener.address)
            server: Any = await listener.accept()
            assert isinstance(server, conduit.HalfCloseableStreamConnection)
            assert server in pool.connections
            assert client in pool.connections
            await client.send_all(b"ping")
            assert await server.receive_some() == b"ping"
            await server.send_all(b"pong")
            assert await client.receive_some() == b"pong"
            await listener.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await listener.accept()
            # Connections outlive their listener.
            await client.send_all(b"still")
            assert await server.receive_some() == b"still"


async def test_connect_stream_and_connect_channel_say_what_they_return(sock_dir: Path) -> None:
    async with conduit.open_pool() as pool:
        for url in ("tcp://127.0.0.1:0", f"unix://{sock_dir}/typed.sock"):
            listener = await pool.listen(url)
            stream = await pool.connect_stream(listener.address, timeout=5)
            assert isinstance(stream, conduit.StreamConnection)
            assert stream in pool.connections
            server = await listener.accept()
            assert isinstance(server, conduit.StreamConnection)
            await stream.send_all(b"typed")
            assert await server.receive_some() == b"typed"
        receiver = await pool.listen("udp://127.0.0.1:0")
        channel = await pool.connect_channel(receiver.address)
        assert isinstance(channel, conduit.DatagramConnection)
        assert channel in pool.connections
        await channel.send(b"whole")
        peer = await receiver.accept()
        assert isinstance(peer, conduit.DatagramConnection)
        assert await peer.receive() == b"whole"


@pytest.mark.parametrize(
    ("method", "url", "words"),
    [
        ("connect_stream", "udp://127.0.0.1:9", "connect_stream() needs a byte stream, but UDP (udp://)"),
        ("connect_stream", "udt://127.0.0.1:9?mode=message", "use connect_channel() or connect()"),
        ("connect_channel", "tcp://127.0.0.1:{port}", "connect_channel() needs a channel of messages"),
        ("connect_channel", "tls://localhost:{port}", "but TLS (tls://) makes a byte stream"),
    ],
)
async def test_the_wrong_kind_of_url_fails_before_connecting(method: str, url: str, words: str) -> None:
    recorder = Recorder()
    port = free_tcp_port()  # nothing listens: a connect attempt would be refused
    async with conduit.open_pool(plugins=[recorder]) as pool:
        with pytest.raises(conduit.AddressError, match=re.escape(words)):
            await getattr(pool, method)(url.format(port=port))
        assert pool.connections == []
        assert recorder.made == []


async def test_transport_connection_kind_follows_a_message_mode() -> None:
    async with conduit.open_pool() as pool:
        tcp, udp = pool.transports["tcp"], pool.transports["udp"]
        assert tcp.connection_kind({}) is conduit.Kind.STREAM
        assert tcp.connection_kind({"mode": "message"}) is conduit.Kind.DATAGRAM
        assert tcp.connection_kind({"mode": "stream"}) is conduit.Kind.STREAM
        assert udp.connection_kind({"mode": "message"}) is conduit.Kind.DATAGRAM


async def test_spawn_runs_handler_and_closes_its_connection() -> None:
    recorder = Recorder()
    async with conduit.open_pool(plugins=[recorder]) as pool, trio.open_nursery() as nursery:
        server_saw_eof = trio.Event()
        server_got = bytearray()

        async def server(conn: Any) -> None:
            while data := await conn.receive_some():
                server_got.extend(data)
                await conn.send_all(data.upper())
            server_saw_eof.set()

        address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", server)
        done = trio.Event()
        seen: list[Any] = []

        async def client(conn: Any) -> None:
            seen.append(conn)
            assert await roundtrip(conn, b"spawned") == b"SPAWNED"
            done.set()

        pool.spawn(address, client)
        await done.wait()
        # The handler returned: its connection is closed, so the server reads EOF.
        await server_saw_eof.wait()
        assert server_got == b"spawned"
        (conn,) = seen
        await recorder.lost_event(conn.id).wait()
        assert conn.socket.fileno() == -1
        assert conn not in pool.connections
        with pytest.raises(trio.ClosedResourceError):
            await conn.send_all(b"late")
        assert recorder.errors == []
        nursery.cancel_scope.cancel()


async def test_spawn_connect_failure_goes_to_hook(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    port = free_tcp_port()
    async with conduit.open_pool(plugins=[recorder]) as pool:
        called = False

        async def never(conn: Any) -> None:  # pragma: no cover - must not run
            nonlocal called
            called = True

        pool.spawn(f"tcp://127.0.0.1:{port}", never)
        with trio.fail_after(5):
            await recorder.error_event.wait()
    ((conn, exc),) = recorder.errors
    assert conn is None
    assert isinstance(exc, conduit.ConnectionRefused)
    assert not called
    assert any(f"127.0.0.1:{port}" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_handler_that_raises_does_not_stop_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    calls = 0

    async def handler(conn: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await conn.receive_some()
            raise ValueError("boom from the first handler")
        await echo(conn)

    async with conduit.open_pool(plugins=[recorder]) as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
        first = await pool.connect(address)
        await first.send_all(b"trigger")
        # The raising handler's connection is closed: the client reads EOF.
        assert await first.receive_some() == b""
        await recorder.error_event.wait()
        ((bad_conn, exc),) = recorder.errors
        assert isinstance(exc, ValueError)
        assert str(exc) == "boom from the first handler"
        assert isinstance(bad_conn, conduit.HalfCloseableStreamConnection)
        assert cast(Any, bad_conn).socket.fileno() == -1
        # The error was logged, with its traceback.
        (record,) = [r for r in caplog.records if "boom from the first handler" in r.getMessage()]
        assert record.levelno == logging.ERROR
        assert record.name.startswith("trio_conduit")
        assert f"conn #{bad_conn.id}" in record.getMessage()
        assert record.exc_info is not None
        # ... and the next client is served.
        second = await pool.connect(address)
        assert await roundtrip(second, b"next client") == b"next client"
        assert calls == 2
        nursery.cancel_scope.cancel()


async def test_handler_error_hook_per_listener() -> None:
    pool_recorder, listener_recorder = Recorder(), Recorder()

    async def handler(conn: Any) -> None:
        raise RuntimeError("listener-scoped")

    async with conduit.open_pool(plugins=[pool_recorder]) as pool, trio.open_nursery() as nursery:
        serve = partial(pool.serve, plugins=[listener_recorder])
        address = await nursery.start(serve, "tcp://127.0.0.1:0", handler)
        conn = await pool.connect(address)
        assert await conn.receive_some() == b""
        await listener_recorder.error_event.wait()
        await pool_recorder.error_event.wait()
        # A listener's scope sees its own hooks and the pool's.
        assert [type(e) for _, e in listener_recorder.errors] == [RuntimeError]
        assert [type(e) for _, e in pool_recorder.errors] == [RuntimeError]
        nursery.cancel_scope.cancel()


async def test_connection_made_and_lost_hooks() -> None:
    recorder = Recorder()
    async with conduit.open_pool(plugins=[recorder]) as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        client = await pool.connect(listener.address)
        server = await listener.accept()
        assert recorder.made == [client.id, server.id]
        await client.aclose()
        assert recorder.lost == [(client.id, None)]
    assert {i for i, _ in recorder.lost} == {client.id, server.id}


async def test_max_connections_holds_the_third_client() -> None:
    release = {i: trio.Event() for i in range(3)}
    entered: list[int] = []
    third_entered = trio.Event()

    async def handler(conn: Any) -> None:
        index = int((await conn.receive_some()).decode())
        entered.append(index)
        if len(entered) == 3:
            third_entered.set()
        await conn.send_all(b"in %d" % index)
        await release[index].wait()

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(partial(pool.serve, max_connections=2), "tcp://127.0.0.1:0", handler)
        clients = []
        for i in range(2):
            conn = await pool.connect(address)
            await conn.send_all(b"%d" % i)
            assert await conn.receive_some() == b"in %d" % i
            clients.append(conn)
        # The third connect is not refused: the kernel's backlog holds it.
        third = await pool.connect(address)
        await third.send_all(b"2")
        clients.append(third)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert sorted(entered) == [0, 1]
        assert not third_entered.is_set()
        # One handler finishes: the third client is accepted and handled.
        release[0].set()
        assert await clients[0].receive_some() == b""  # its connection was closed
        with trio.fail_after(5):
            await third_entered.wait()
        assert await third.receive_some() == b"in 2"
        release[1].set()
        release[2].set()
        nursery.cancel_scope.cancel()


async def test_max_connections_must_be_positive() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(ValueError, match="max_connections"):
            await pool.serve("tcp://127.0.0.1:0", echo, max_connections=0)


# ---------------------------------------------------------------------------
# closing the pool
# ---------------------------------------------------------------------------


async def test_closing_the_pool_cancels_and_closes_everything(sock_dir: Path, no_fd_leak: object) -> None:
    unix_path = sock_dir / "srv.sock"
    handler_cancelled: list[int] = []
    spawned_cancelled = trio.Event()
    handlers_running = trio.Event()
    running = 0

    async def blocking_handler(conn: Any) -> None:
        nonlocal running
        running += 1
        if running == 2:
            handlers_running.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            handler_cancelled.append(conn.id)
            raise

    async def spawned(conn: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            spawned_cancelled.set()

    async with trio.open_nursery() as outer:
        async with conduit.open_pool() as pool:
            tcp_address = await outer.start(pool.serve, "tcp://127.0.0.1:0", blocking_handler)
            unix_address = await outer.start(pool.serve, f"unix://{unix_path}", blocking_handler)
            assert unix_path.is_socket()
            by_hand = await pool.listen("tcp://127.0.0.1:0")
            echo_address = await outer.start(pool.serve, "tcp://127.0.0.1:0", echo)
            pool.spawn(echo_address, spawned)
            clients = [await pool.connect(tcp_address), await pool.connect(unix_address)]
            await handlers_running.wait()
            pending = await pool.connect(by_hand.address)
            accepted = await by_hand.accept()
            owned = pool.connections
            assert len(owned) >= 6
            await trio.testing.wait_all_tasks_blocked()
        # Left the pool: every task it ran or served is cancelled ...
        assert spawned_cancelled.is_set()
        assert len(handler_cancelled) == 2
        # ... and every connection and listener it handed out is closed.
        for conn in [*clients, pending, accepted, *owned]:
            assert conn.socket.fileno() == -1, conn
            with pytest.raises(trio.ClosedResourceError):
                await conn.send_all(b"x")
        assert cast(Any, by_hand.inner).socket.fileno() == -1
        with pytest.raises(trio.ClosedResourceError):
            await by_hand.accept()
        assert not unix_path.exists()
        assert pool.connections == []
        with pytest.raises(trio.ClosedResourceError):
            await pool.connect(tcp_address)
        # The serve() tasks in the outer nursery were cancelled with the pool and end quietly.
        await trio.testing.wait_all_tasks_blocked()
        assert outer.child_tasks == frozenset()


async def test_pool_closes_when_its_body_raises() -> None:
    # The body's exception comes out as itself (not in an ExceptionGroup), so that
    # `except ConnectionRefused:` around an `async with open_pool()` works.
    with pytest.raises(KeyError, match="body failed"):
        async with conduit.open_pool() as pool:
            listener = await pool.listen("tcp://127.0.0.1:0")
            conn = await pool.connect(listener.address)
            raise KeyError("body failed")
    assert conn.socket.fileno() == -1
    assert cast(Any, listener.inner).socket.fileno() == -1


async def test_connect_error_in_pool_body_is_catchable_as_itself() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connects are refused
        with pytest.raises(conduit.ConnectionRefused) as info:
            async with conduit.open_pool() as pool:
                await pool.connect(f"tcp://127.0.0.1:{port}")
    assert type(info.value) is conduit.ConnectionRefused  # not an ExceptionGroup around it
    assert info.value.errno == errno.ECONNREFUSED
    assert "Error connecting" not in str(info.value)  # our words, not trio's repeated


# ---------------------------------------------------------------------------
# ids and trace lines
# ---------------------------------------------------------------------------


async def test_connection_ids_unique_and_increasing(sock_dir: Path) -> None:
    async with conduit.open_pool() as pool:
        tcp = await pool.listen("tcp://127.0.0.1:0")
        unix = await pool.listen(f"unix://{sock_dir}/ids.sock")
        ids: list[int] = []
        for listener in (tcp, unix, tcp, unix):
            client = await pool.connect(listener.address)
            server = await listener.accept()
            ids += [client.id, server.id]
        udp = await pool.connect("udp://127.0.0.1:9")
        ids.append(udp.id)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(isinstance(i, int) and i > 0 for i in ids)
    # A second pool counts on its own.
    async with conduit.open_pool() as other:
        listener = await other.listen("tcp://127.0.0.1:0")
        assert (await other.connect(listener.address)).id == 1


async def test_trace_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(DEBUG_ALL, logger="trio_conduit")
    recorder = Recorder()
    async with conduit.open_pool(plugins=[recorder]) as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        port = address.port
        conn = await pool.connect(address)
        assert await roundtrip(conn, b"12345") == b"12345"
        await conn.aclose()
        # The server's handler reads the end of stream and returns: its connection closes.
        with trio.fail_after(5):
            while len(recorder.lost) < 2:
                await recorder.lost_event(recorder.made[-1]).wait()
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("trio_conduit")]
    text = "\n".join(lines)

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        assert match, f"no trace line matching {pattern!r} in:\n{text}"
        return match

    find(rf"^TCP listening on tcp://127\.0\.0\.1:{port}$")
    requested = find(rf"^TCP connection requested to 127\.0\.0\.1:{port} \(conn #(\d+)\) event #(\d+)$")
    cid, event = int(requested[1]), int(requested[2])
    assert cid == conn.id
    find(rf"^connect succeeded for event #{event} \(conn #{cid}\) \[127\.0\.0\.1:{port}\]$")
    accepted = find(
        rf"^TCP connection accepted from 127\.0\.0\.1:\d+ on tcp://127\.0\.0\.1:{port} "
        r"\(conn #(\d+)\) event #(\d+)$"
    )
    sid = int(accepted[1])
    assert sid != cid
    find(rf"^write 5 bytes to conn #{cid} event #\d+$")
    find(rf"^read 5 bytes from conn #{sid} event #\d+$")
    find(rf"^write 5 bytes to conn #{sid} event #\d+$")
    find(rf"^read 5 bytes from conn #{cid} event #\d+$")
    find(rf"^read 0 bytes from conn #{sid} event #\d+ \(end of stream\)$")
    find(rf"^closed conn #{cid} event #\d+$")
    find(rf"^closed conn #{sid} event #\d+$")
    # Event ids only go up, in the order the lines were written ("connect succeeded/failed
    # for event #N" refers back to the request's event).
    fresh = "\n".join(line for line in lines if not line.startswith("connect "))
    events = [int(m) for m in re.findall(r"event #(\d+)", fresh)]
    assert events == sorted(events)
    assert len(set(events)) == len(events)
    # Levels: connects/accepts/closes at INFO, reads/writes at DEBUG_ALL.
    levels = {r.getMessage().split(" ")[0]: r.levelno for r in caplog.records}
    assert levels["TCP"] == logging.INFO
    assert levels["closed"] == logging.INFO
    assert levels["read"] == DEBUG_ALL
    assert levels["write"] == DEBUG_ALL


async def test_no_io_trace_lines_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_conduit")
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        conn = await pool.connect(listener.address)
        server: Any = await listener.accept()
        await conn.send_all(b"x")
        assert await server.receive_some() == b"x"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("TCP connection requested") for m in messages)
    assert not any(m.startswith(("read ", "write ")) for m in messages)


async def test_resolved_options_are_shared_only_for_plain_equal_keywords() -> None:
    """The same URL and plain keywords give the same read-only options; objects that merely
    compare equal (two TLS configs differing only in their session) are never mixed up."""
    import dataclasses

    from trio_conduit._transport import SocketRole
    from trio_conduit.tls import TLSConfig

    async with conduit.open_pool() as pool:
        transport, address = pool.parse("tls://127.0.0.1:9")

        def options(**given: object) -> Any:
            return pool._context(transport, address, pool.scope, SocketRole.CONNECT, dict(given)).options

        first = options(cafile="/x/ca.pem", session_cache=False)
        assert options(cafile="/x/ca.pem", session_cache=False) is first
        assert options(cafile="/x/ca.pem", session_cache=0) is not first  # 0 == False, but not the same
        assert options(cafile="/y/ca.pem", session_cache=False)["cafile"] == "/y/ca.pem"
        with pytest.raises(TypeError):
            first["cafile"] = "/z"  # read-only: shared between connects
        a = TLSConfig(server_hostname="a.test")
        b = dataclasses.replace(a)  # equal, as two configs with different sessions are
        assert a == b
        assert a is not b
        assert options(tls=a)["tls"] is a
        assert options(tls=b)["tls"] is b
