"""Plugins: the async hook dispatcher, scopes (pool, listener), lifecycle hooks, transports from plugins."""

from __future__ import annotations

import errno
import functools
import gc
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, final

import pluggy
import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit import (
    Address,
    AddressError,
    CommunicationInfo,
    Connection,
    ConnectionRefused,
    Context,
    HalfCloseableStreamConnection,
    Kind,
    Listener,
    PluginError,
    Pool,
    SocketRole,
    Transport,
    URLParts,
    hookimpl,
)
from trio_conduit._plugins import HookScope, global_scope

from .conftest import assert_no_fd_leak, free_tcp_port, open_fds

# ---------------------------------------------------------------------------
# the dispatcher, on a catalogue of its own
# ---------------------------------------------------------------------------

_spec = pluggy.HookspecMarker("trio_conduit")


class _Specs:
    @_spec
    async def conduit_decide(self, x: int, y: int) -> object:
        """A decision hook."""

    @_spec
    async def conduit_tell(self, x: int) -> None:
        """A notification hook."""


def make_scope(*plugins: object) -> HookScope:
    """A scope over ``plugins`` (registered in this order) and the test catalogue."""
    pm = pluggy.PluginManager("trio_conduit")
    pm.add_hookspecs(_Specs)
    for plugin in plugins:
        pm.register(plugin, name=getattr(plugin, "name", None))
    return HookScope(pm)


class Impl:
    """One implementation of ``conduit_decide``: sync or async, with a result, recording its call."""

    def __init__(self, name: str, calls: list[str], result: object = None, *, is_async: bool = True) -> None:
        self.name = name
        self.calls = calls
        self.result = result
        self.is_async = is_async

    def _run(self, x: int, y: int) -> object:
        self.calls.append(self.name)
        return self.result

    @property
    def plugin(self) -> object:
        impl = self

        if self.is_async:

            class AsyncPlugin:
                name = impl.name

                @hookimpl
                async def conduit_decide(self, x: int, y: int) -> object:
                    await trio.lowlevel.checkpoint()  # really suspends
                    return impl._run(x, y)

            return AsyncPlugin()

        class SyncPlugin:
            name = impl.name

            @hookimpl
            def conduit_decide(self, x: int, y: int) -> object:
                return impl._run(x, y)

        return SyncPlugin()


def _ordered(order: str, name: str, calls: list[str], result: object, is_async: bool) -> object:
    """A plugin implementing both test hooks, ``tryfirst``/``trylast`` when ``order`` says so."""
    first, last = order == "first", order == "last"
    plugin_name = name

    class Plugin:
        name = plugin_name

        @hookimpl(tryfirst=first, trylast=last)
        async def conduit_decide(self, x: int) -> object:
            await trio.lowlevel.checkpoint()
            calls.append(name)
            return result

        @hookimpl(tryfirst=first, trylast=last)
        def conduit_tell(self, x: int) -> None:
            calls.append(name)

    class SyncPlugin:
        name = plugin_name

        @hookimpl(tryfirst=first, trylast=last)
        def conduit_decide(self, x: int) -> object:
            calls.append(name)
            return result

        @hookimpl(tryfirst=first, trylast=last)
        def conduit_tell(self, x: int) -> None:
            calls.append(name)

    return Plugin() if is_async else SyncPlugin()


async def test_acall_awaits_in_pluggys_order() -> None:
    calls: list[str] = []
    # Registration order: plain1, first1, last1, plain2 (async), first2, last2.
    scope = make_scope(
        _ordered("", "plain1", calls, "p1", is_async=False),
        _ordered("first", "first1", calls, "f1", is_async=True),
        _ordered("last", "last1", calls, "l1", is_async=True),
        _ordered("", "plain2", calls, "p2", is_async=True),
        _ordered("first", "first2", calls, "f2", is_async=False),
        _ordered("last", "last2", calls, "l2", is_async=False),
    )
    results = await scope.acall("conduit_decide", x=1, y=2)
    # tryfirst ones, then the plain ones, then the trylast ones. Within the first two
    # groups the later registered is called first; pluggy puts each new trylast
    # implementation at the very end, so those run in registration order.
    assert calls == ["first2", "first1", "plain2", "plain1", "last1", "last2"]
    assert results == ["f2", "f1", "p2", "p1", "l1", "l2"]


async def test_acall_order_is_pluggys_own() -> None:
    # Sync implementations pluggy can call itself: it must call them in the same order.
    calls: list[str] = []
    opts = ["", "first", "last", "", "first", ""]
    scope = make_scope(*[_ordered(o, f"p{i}", calls, None, is_async=i % 2 == 0) for i, o in enumerate(opts)])
    await scope.acall("conduit_tell", x=1)
    ours = calls.copy()
    calls.clear()
    scope.pm.hook.conduit_tell(x=1)
    assert ours == calls
    assert ours == ["p4", "p1", "p5", "p3", "p0", "p2"]


async def test_acall_collects_non_none_results() -> None:
    calls: list[str] = []
    scope = make_scope(
        Impl("a", calls, 1, is_async=True).plugin,
        Impl("b", calls, None, is_async=False).plugin,
        Impl("c", calls, 0, is_async=False).plugin,
        Impl("d", calls, None, is_async=True).plugin,
    )
    assert await scope.acall("conduit_decide", x=1, y=2) == [0, 1]
    assert calls == ["d", "c", "b", "a"]


async def test_acall_without_implementations() -> None:
    assert await make_scope().acall("conduit_decide", x=1, y=2) == []
    assert await make_scope().acall_first("conduit_decide", x=1, y=2) is None


async def test_acall_first_honours_firstresult_on_the_awaited_value() -> None:
    calls: list[str] = []
    # Called in reverse registration order: d, c, b, a.
    scope = make_scope(
        Impl("a", calls, "too late", is_async=False).plugin,
        Impl("b", calls, "winner", is_async=True).plugin,
        Impl("c", calls, None, is_async=False).plugin,
        Impl("d", calls, None, is_async=True).plugin,  # its coroutine is not None, its value is
    )
    assert await scope.acall_first("conduit_decide", x=1, y=2) == "winner"
    assert calls == ["d", "c", "b"]  # "a" was never called


async def test_acall_first_a_falsy_value_still_wins() -> None:
    calls: list[str] = []
    scope = make_scope(
        Impl("a", calls, "no", is_async=True).plugin, Impl("b", calls, 0, is_async=True).plugin
    )
    assert await scope.acall_first("conduit_decide", x=1, y=2) == 0
    assert calls == ["b"]


async def test_acall_first_all_none() -> None:
    calls: list[str] = []
    scope = make_scope(
        Impl("a", calls, None, is_async=True).plugin, Impl("b", calls, None, is_async=False).plugin
    )
    assert await scope.acall_first("conduit_decide", x=1, y=2) is None
    assert calls == ["b", "a"]


async def test_implementations_take_a_subset_of_the_arguments() -> None:
    seen: list[tuple[str, object]] = []

    class OnlyY:
        @hookimpl
        async def conduit_decide(self, y: int) -> None:
            seen.append(("only y", y))

    class Nothing:
        @hookimpl
        def conduit_decide(self) -> None:
            seen.append(("nothing", None))

    class Both:
        @hookimpl
        def conduit_decide(self, y: int, x: int) -> None:  # any order
            seen.append(("both", (x, y)))

    await make_scope(OnlyY(), Nothing(), Both()).acall("conduit_decide", x=1, y=2)
    assert seen == [("both", (1, 2)), ("nothing", None), ("only y", 2)]


async def test_acall_propagates_an_error_and_stops() -> None:
    calls: list[str] = []

    class Boom:
        @hookimpl
        async def conduit_decide(self) -> None:
            calls.append("boom")
            raise KeyError("boom")

    scope = make_scope(Impl("after", calls, 1).plugin, Boom(), Impl("before", calls, None).plugin)
    with pytest.raises(KeyError, match="boom"):
        await scope.acall("conduit_decide", x=1, y=2)
    assert calls == ["before", "boom"]


async def test_notify_logs_errors_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Boom:
        name = "boom-plugin"

        @hookimpl
        async def conduit_tell(self, x: int) -> None:
            calls.append("boom")
            raise ValueError("bad plugin")

    class Fine:
        name = "fine"

        @hookimpl
        async def conduit_tell(self, x: int) -> None:
            await trio.lowlevel.checkpoint()
            calls.append("fine")

    scope = make_scope(Fine(), Boom())
    with caplog.at_level(logging.ERROR, logger="trio_conduit"):
        await scope.notify("conduit_tell", x=1)
    assert calls == ["boom", "fine"]
    [record] = [r for r in caplog.records if r.exc_info]
    assert "'boom-plugin'" in record.getMessage()
    assert "conduit_tell" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_notify_does_not_swallow_cancellation() -> None:
    calls: list[str] = []

    class Slow:
        @hookimpl
        async def conduit_tell(self) -> None:
            calls.append("slow")
            await trio.sleep_forever()

    scope = make_scope(Impl("never", calls).plugin, Slow())
    with trio.move_on_after(0) as cs:
        await scope.notify("conduit_tell", x=1)
    assert cs.cancelled_caught
    assert calls == ["slow"]


# ---------------------------------------------------------------------------
# registration rules
# ---------------------------------------------------------------------------


class NewStyleWrapper:
    @hookimpl(wrapper=True)
    def conduit_connection_made(self, conn: Connection) -> Any:
        return (yield)


class OldStyleWrapper:
    @hookimpl(hookwrapper=True)
    def conduit_connection_lost(self, conn: Connection) -> Any:
        yield


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [(NewStyleWrapper(), "conduit_connection_made"), (OldStyleWrapper(), "conduit_connection_lost")],
)
async def test_wrappers_are_refused_in_a_pool(plugin: object, hook: str) -> None:
    with pytest.raises(PluginError) as info:
        async with conduit.open_pool(plugins=[plugin]):
            raise AssertionError("the pool opened")  # pragma: no cover
    message = str(info.value)
    assert hook in message
    assert "wrapper" in message
    assert type(plugin).__name__ in message


async def test_wrappers_are_refused_on_a_listener() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(PluginError, match="wrapper"):
            await pool.listen("tcp://127.0.0.1:0", plugins=[NewStyleWrapper()])
        # The pool is unharmed.
        listener = await pool.listen("tcp://127.0.0.1:0")
        await listener.aclose()


async def test_an_unknown_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def conduit_conection_made(self, conn: Connection) -> None:  # sic
            raise AssertionError("never called")  # pragma: no cover

    with pytest.raises(PluginError, match="conduit_conection_made"):
        async with conduit.open_pool(plugins=[Typo()]):
            raise AssertionError("the pool opened")  # pragma: no cover


async def test_an_argument_the_spec_lacks_is_refused() -> None:
    class Greedy:
        @hookimpl
        def conduit_connection_made(self, conn: Connection, extra: int) -> None:
            raise AssertionError("never called")  # pragma: no cover

    with pytest.raises(PluginError, match="extra"):
        async with conduit.open_pool(plugins=[Greedy()]):
            raise AssertionError("the pool opened")  # pragma: no cover


def test_a_module_plugin_registers_its_marked_functions_only() -> None:
    """Registration skips a module's unmarked functions at once (start-up time); a marked
    one counts, also behind a ``functools.wraps`` decorator, and a typo is still refused."""
    import types

    def traced(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    module = types.ModuleType("a_plugin_module")

    def conduit_connection_made(conn: Connection) -> None:  # not marked: not a hook
        raise AssertionError("never called")  # pragma: no cover

    def conduit_connection_lost(conn: Connection) -> None:
        raise AssertionError("never called")  # pragma: no cover

    vars(module).update(
        conduit_connection_made=conduit_connection_made,
        conduit_connection_lost=traced(hookimpl(conduit_connection_lost)),
        helper=len,  # a builtin: no hook either
    )
    scope = global_scope().child([module])
    assert "conduit_connection_lost" in scope.implemented
    assert "conduit_connection_made" not in scope.implemented - global_scope().implemented
    [impl] = [i for i in scope.pm.hook.conduit_connection_lost.get_hookimpls() if i.plugin is module]
    assert impl.function is vars(module)["conduit_connection_lost"]

    vars(module)["conduit_conection_made"] = hookimpl(conduit_connection_made)  # sic
    with pytest.raises(PluginError, match="conduit_conection_made"):
        global_scope().child([module])


async def test_the_same_plugin_twice_is_refused() -> None:
    plugin = Recorder()
    with pytest.raises(PluginError, match="cannot register plugin"):
        async with conduit.open_pool(plugins=[plugin, plugin]):
            raise AssertionError("the pool opened")  # pragma: no cover


# ---------------------------------------------------------------------------
# lifecycle hooks, as a pool runs them
# ---------------------------------------------------------------------------


class Recorder:
    """Records every lifecycle hook call (async implementations), and can wait for a condition."""

    def __init__(self) -> None:
        self.made: list[Connection] = []
        self.lost: list[tuple[Connection, BaseException | None]] = []
        self.errors: list[tuple[Connection | None, BaseException]] = []
        self._changed = trio.Event()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(10):
            while not predicate():
                await self._changed.wait()

    @hookimpl
    async def conduit_connection_made(self, conn: Connection) -> None:
        await trio.lowlevel.checkpoint()
        self.made.append(conn)
        self._note()

    @hookimpl
    async def conduit_connection_lost(self, conn: Connection, exc: BaseException | None) -> None:
        await trio.lowlevel.checkpoint()
        self.lost.append((conn, exc))
        self._note()

    @hookimpl
    async def conduit_handler_error(self, conn: Connection | None, exc: BaseException) -> None:
        await trio.lowlevel.checkpoint()
        self.errors.append((conn, exc))
        self._note()

    @property
    def made_ids(self) -> list[int]:
        return sorted(id(c) for c in self.made)

    @property
    def lost_ids(self) -> list[int]:
        return sorted(id(c) for c, _ in self.lost)


async def echo_once(conn: Connection) -> None:
    assert isinstance(conn, trio.abc.Stream)
    data = await conn.receive_some()
    await conn.send_all(data)


async def round_trip(conn: Any, data: bytes = b"ping") -> None:
    await conn.send_all(data)
    assert await conn.receive_some() == data


@asynccontextmanager
async def serving(
    pool: Pool, handler: Callable[[Any], Any], url: str = "tcp://127.0.0.1:0", **kwargs: Any
) -> AsyncIterator[tuple[Address, list[Connection]]]:
    """``pool.serve`` in a nursery; yields its address and the connections handed to ``handler``."""
    handled: list[Connection] = []

    async def recording(conn: Connection) -> None:
        handled.append(conn)
        await handler(conn)

    async with trio.open_nursery() as nursery:
        address = await nursery.start(functools.partial(pool.serve, url, recording, **kwargs))
        yield address, handled
        nursery.cancel_scope.cancel()


async def test_connection_made_and_lost_once_per_connection() -> None:
    rec = Recorder()
    async with conduit.open_pool(plugins=[rec]) as pool, serving(pool, echo_once) as (address, handled):
        client = await pool.connect(address)
        await round_trip(client)
        await client.aclose()
        await client.aclose()  # twice: still one "lost"
        await rec.wait_until(lambda: len(rec.lost) == 2)
        [server] = handled
        assert rec.made_ids == rec.lost_ids == sorted([id(client), id(server)])
        assert all(exc is None for _, exc in rec.lost)
        assert rec.errors == []
        assert pool.connections == []
    # Closing the pool does not report them again.
    assert len(rec.made) == 2
    assert len(rec.lost) == 2


async def test_connection_lost_for_connections_the_pool_closes() -> None:
    rec = Recorder()
    async with conduit.open_pool(plugins=[rec]) as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        client = await pool.connect(listener.address)
        server = await listener.accept()
        assert rec.made_ids == sorted([id(client), id(server)])
        assert rec.lost == []
    # Leaving the pool closed both, and each was reported lost once.
    assert rec.lost_ids == sorted([id(client), id(server)])


async def test_connection_made_sees_id_and_info() -> None:
    seen: list[tuple[int, str, object]] = []

    class Peek:
        @hookimpl
        def conduit_connection_made(self, conn: Connection) -> None:  # a sync implementation
            seen.append((conn.id, conn.info.transport, conn.info.remote))

    async with conduit.open_pool(plugins=[Peek()]) as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        client = await pool.connect(listener.address)
        server = await listener.accept()
        assert seen == [
            (client.id, "tcp", ("127.0.0.1", listener.address.port)),
            (server.id, "tcp", client.info.local),
        ]
        assert client.id != server.id


async def test_handler_error_is_reported_and_the_listener_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    failing: list[Connection] = []

    async def handler(conn: Connection) -> None:
        if not failing:
            failing.append(conn)
            raise ValueError("handler bug")
        await echo_once(conn)

    caplog.set_level(logging.ERROR, logger="trio_conduit")
    async with conduit.open_pool(plugins=[rec]) as pool, serving(pool, handler) as (address, handled):
        first = await pool.connect(address)
        assert await first.receive_some() == b""  # closed when the handler raised
        await rec.wait_until(lambda: len(rec.errors) == 1)
        [(conn, exc)] = rec.errors
        assert conn is failing[0]
        assert isinstance(exc, ValueError)
        assert str(exc) == "handler bug"
        # The next client is served.
        second = await pool.connect(address)
        await round_trip(second)
        assert len(handled) == 2
        assert len(rec.errors) == 1
    assert any("handler bug" in r.getMessage() for r in caplog.records)


async def test_handler_error_for_a_failed_spawn() -> None:
    rec = Recorder()
    port = free_tcp_port()
    ran: list[Connection] = []

    async def handler(conn: Connection) -> None:
        ran.append(conn)  # pragma: no cover

    async with conduit.open_pool(plugins=[rec]) as pool:
        pool.spawn(f"tcp://127.0.0.1:{port}", handler)
        await rec.wait_until(lambda: bool(rec.errors))
    [(conn, exc)] = rec.errors
    assert conn is None
    assert isinstance(exc, ConnectionRefused)
    assert ran == []
    assert rec.made == []


async def test_spawned_handlers_connection_is_made_and_lost() -> None:
    rec = Recorder()
    done = trio.Event()

    async def handler(conn: Connection) -> None:
        await round_trip(conn, b"spawned")
        done.set()

    async with conduit.open_pool(plugins=[rec]) as pool, serving(pool, echo_once) as (address, _):
        pool.spawn(address, handler)
        await done.wait()
        await rec.wait_until(lambda: len(rec.lost) == 2)
        assert rec.made_ids == rec.lost_ids
        assert len(rec.made) == 2
        assert rec.errors == []


async def test_connection_made_raising_fails_the_connect() -> None:
    rec = Recorder()

    class Reject:
        @hookimpl(trylast=True)
        async def conduit_connection_made(self, conn: Connection) -> None:
            if conn.info.remote == target:
                raise PermissionError("policy says no")

    async with conduit.open_pool(plugins=[rec, Reject()]) as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        target = ("127.0.0.1", listener.address.port)
        before = open_fds()
        with pytest.raises(PermissionError, match="policy says no"):
            await pool.connect(listener.address)
        # The rejected connection was closed (and reported lost) before the error reached us.
        [(conn, _)] = rec.lost
        assert rec.made == [conn]
        assert conn.info.remote == target
        assert pool.connections == []
        server = await listener.accept()
        assert isinstance(server, trio.abc.Stream)
        assert await server.receive_some() == b""  # the client side is gone
        await server.aclose()
        assert pool.connections == []
        assert_no_fd_leak(before)
        await listener.aclose()


async def test_connection_made_raising_drops_an_accepted_connection() -> None:
    class RejectFirst:
        def __init__(self) -> None:
            self.rejected = 0

        @hookimpl
        async def conduit_connection_made(self, conn: Connection) -> None:
            await trio.lowlevel.checkpoint()
            if not self.rejected:
                self.rejected += 1
                raise RuntimeError("not this one")

    rejecter = RejectFirst()  # a listener's plugin: it sees accepted connections only
    async with (
        conduit.open_pool() as pool,
        serving(pool, echo_once, plugins=[rejecter]) as (address, handled),
    ):
        first = await pool.connect(address)
        assert await first.receive_some() == b""  # dropped at once
        second = await pool.connect(address)
        await round_trip(second)
        assert rejecter.rejected == 1
        assert len(handled) == 1


# ---------------------------------------------------------------------------
# conduit_socket_created
# ---------------------------------------------------------------------------


class KeepAlive:
    """Sets SO_KEEPALIVE on sockets that will connect; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[SocketRole, tuple[str, ...], Address]] = []

    @hookimpl
    async def conduit_socket_created(
        self, sock: trio.socket.SocketType, transport: Transport, address: Address, role: SocketRole
    ) -> None:
        await trio.lowlevel.checkpoint()
        self.seen.append((role, transport.schemes, address))
        if role is SocketRole.CONNECT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def keepalive(conn: Any) -> int:
    value: int = conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    return value


async def test_socket_created_can_set_an_option() -> None:
    plugin = KeepAlive()
    async with conduit.open_pool(plugins=[plugin]) as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        client = await pool.connect(listener.address)
        server = await listener.accept()
        assert keepalive(client) != 0
        assert keepalive(server) == 0  # only CONNECT sockets
        roles = [role for role, _, _ in plugin.seen]
        assert roles == [SocketRole.LISTEN, SocketRole.CONNECT, SocketRole.ACCEPTED]
        assert all(schemes == ("tcp",) for _, schemes, _ in plugin.seen)
        assert plugin.seen[1][2] == listener.address
    async with conduit.open_pool() as other:  # without the plugin: the kernel's default
        listener = await other.listen("tcp://127.0.0.1:0")
        client = await other.connect(listener.address)
        assert keepalive(client) == 0


async def test_socket_created_on_a_unix_socket(sock_dir: Path) -> None:
    plugin = KeepAlive()
    async with conduit.open_pool(plugins=[plugin]) as pool:
        listener = await pool.listen(f"unix://{sock_dir}/s.sock")
        await pool.connect(listener.address)
        await listener.accept()
    assert [(role, schemes) for role, schemes, _ in plugin.seen] == [
        (SocketRole.LISTEN, ("unix",)),
        (SocketRole.CONNECT, ("unix",)),
        (SocketRole.ACCEPTED, ("unix",)),
    ]


class Veto(Exception):
    pass


class VetoConnect:
    def __init__(self) -> None:
        self.sockets: list[trio.socket.SocketType] = []

    @hookimpl
    def conduit_socket_created(self, sock: trio.socket.SocketType, role: SocketRole) -> None:
        if role is SocketRole.CONNECT:
            self.sockets.append(sock)
            raise Veto("no outgoing connections")


@pytest.mark.parametrize("url", ["tcp", "unix"])
async def test_socket_created_raising_aborts_the_connect(url: str, sock_dir: Path) -> None:
    veto = VetoConnect()
    async with conduit.open_pool(plugins=[veto]) as pool:
        listen_url = "tcp://127.0.0.1:0" if url == "tcp" else f"unix://{sock_dir}/v.sock"
        async with serving(pool, echo_once, listen_url) as (address, handled):
            before = open_fds()
            with pytest.raises(Veto, match="no outgoing connections"):
                await pool.connect(address)
            with pytest.raises(Veto):
                await pool.connect(address, timeout=5)
            assert_no_fd_leak(before)
            assert [s.fileno() for s in veto.sockets] == [-1, -1]  # closed
            assert pool.connections == []
            assert handled == []


async def test_socket_created_raising_drops_an_accepted_connection(caplog: pytest.LogCaptureFixture) -> None:
    class VetoFirstAccept:
        vetoed = 0

        @hookimpl
        def conduit_socket_created(self, role: SocketRole) -> None:
            if role is SocketRole.ACCEPTED and not self.vetoed:
                self.vetoed += 1
                raise Veto("not this one")

    caplog.set_level(logging.ERROR, logger="trio_conduit")
    plugin = VetoFirstAccept()
    async with conduit.open_pool() as pool, serving(pool, echo_once, plugins=[plugin]) as (address, handled):
        first = await pool.connect(address)
        assert await first.receive_some() == b""  # dropped
        second = await pool.connect(address)
        await round_trip(second)  # the listener goes on
        assert plugin.vetoed == 1
        assert len(handled) == 1
    assert any(r.exc_info and isinstance(r.exc_info[1], Veto) for r in caplog.records)


# ---------------------------------------------------------------------------
# scopes: per pool, per listener
# ---------------------------------------------------------------------------


async def test_per_pool_plugins_are_that_pools_only() -> None:
    mine = Recorder()
    async with conduit.open_pool(plugins=[mine]) as pool, conduit.open_pool() as other:
        assert pool.scope is not other.scope
        assert pool.scope.parent is global_scope()
        assert other.scope is global_scope()  # no extras: the global scope itself
        async with serving(other, echo_once) as (address, _):
            conn = await other.connect(address)
            await round_trip(conn)
            await conn.aclose()
        async with serving(pool, echo_once) as (address, handled):
            conn = await pool.connect(address)
            await round_trip(conn)
            await conn.aclose()
            await mine.wait_until(lambda: len(mine.lost) == 2)
    # Only this pool's two connections (its client and its listener's accepted one).
    assert mine.made_ids == mine.lost_ids == sorted([id(conn), id(handled[0])])


async def test_per_listener_plugins_see_that_listeners_connections_only() -> None:
    pool_rec, listener_rec = Recorder(), Recorder()
    async with conduit.open_pool(plugins=[pool_rec]) as pool:
        async with (
            serving(pool, echo_once, plugins=[listener_rec]) as (address, handled),
            serving(pool, echo_once) as (plain_address, plain_handled),
        ):
            client = await pool.connect(address)
            await round_trip(client)
            other_client = await pool.connect(plain_address)
            await round_trip(other_client)
            await client.aclose()
            await other_client.aclose()
            await listener_rec.wait_until(lambda: len(listener_rec.lost) == 1)
            await pool_rec.wait_until(lambda: len(pool_rec.lost) == 4)
        # The listener's plugin: its accepted connection only (not the client, not the other listener's).
        assert [id(c) for c in listener_rec.made] == [id(handled[0])]
        assert [id(c) for c, _ in listener_rec.lost] == [id(handled[0])]
        # The pool's plugin: everything in the pool, listener scopes included.
        assert pool_rec.made_ids == sorted(
            [id(client), id(other_client), id(handled[0]), id(plain_handled[0])]
        )


async def test_pool_listen_takes_plugins_too() -> None:
    listener_rec = Recorder()
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0", plugins=[listener_rec])
        client = await pool.connect(listener.address)
        server = await listener.accept()
        assert listener_rec.made == [server]  # run before accept() returned
        await server.aclose()
        assert [c for c, _ in listener_rec.lost] == [server]
        await client.aclose()
        assert len(listener_rec.lost) == 1
        await listener.aclose()


async def test_global_plugins_reach_every_pool() -> None:
    rec = Recorder()
    conduit.register_plugin(rec, name="test-global-recorder")
    try:
        async with conduit.open_pool() as pool:
            assert pool.scope.pm.get_plugin("test-global-recorder") is rec
            listener = await pool.listen("tcp://127.0.0.1:0")
            client = await pool.connect(listener.address)
            server = await listener.accept()
            assert rec.made_ids == sorted([id(client), id(server)])
    finally:
        conduit.unregister_plugin(rec)
    async with conduit.open_pool() as pool:
        assert pool.scope.pm.get_plugin("test-global-recorder") is None
        listener = await pool.listen("tcp://127.0.0.1:0")
        await pool.connect(listener.address)
        await listener.accept()
    assert len(rec.made) == 2


# ---------------------------------------------------------------------------
# transports from plugins
# ---------------------------------------------------------------------------


@final
class MemoryStream(HalfCloseableStreamConnection):
    """One end of an in-memory stream pair, as a conduit connection."""

    def __init__(
        self, inner: trio.StapledStream[Any, Any], conn_id: int, address: Address, side: str
    ) -> None:
        super().__init__(conn_id, address)
        self._inner = inner
        self._info = CommunicationInfo("mem", None, None, 0, local=side, remote=address.hostport)

    @property
    def info(self) -> CommunicationInfo:
        return self._info

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self._inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._closed()


class MemoryListener(Listener):
    def __init__(self, transport: MemoryTransport, ctx: Context) -> None:
        self._ctx = ctx
        self._transport = transport
        self._send, self._receive = trio.open_memory_channel[trio.StapledStream[Any, Any]](16)

    @property
    def address(self) -> Address:
        return self._ctx.address

    def deliver(self, stream: trio.StapledStream[Any, Any]) -> None:
        self._send.send_nowait(stream)

    async def accept(self) -> Connection:
        stream = await self._receive.receive()
        return MemoryStream(stream, self._ctx.new_conn_id(), self.address, "server")

    async def aclose(self) -> None:
        self._transport.listeners.pop(self.address.host or "", None)
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryTransport(Transport):
    """``mem://name``: streams within one process, no kernel involved."""

    schemes = ("mem",)
    name = "MEM"
    kind = Kind.STREAM

    def __init__(self) -> None:
        self.listeners: dict[str, MemoryListener] = {}

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        if not parts.authority or parts.path:
            raise parts.error("expected mem://name")
        return Address(parts.scheme, host=parts.authority, query=parts.query)

    async def connect(self, ctx: Context) -> Connection:
        await trio.lowlevel.checkpoint()
        listener = self.listeners.get(ctx.address.host or "")
        if listener is None:
            raise ConnectionRefused(
                errno.ECONNREFUSED, f"nothing listens on {ctx.address}", address=str(ctx.address)
            )
        client, server = trio.testing.memory_stream_pair()
        listener.deliver(server)
        return MemoryStream(client, ctx.conn_id, ctx.address, "client")

    async def listen(self, ctx: Context) -> Listener:
        await trio.lowlevel.checkpoint()
        listener = self.listeners[ctx.address.host or ""] = MemoryListener(self, ctx)
        return listener


class MemoryPlugin:
    def __init__(self) -> None:
        self.made: list[MemoryTransport] = []

    @hookimpl
    def conduit_transports(self) -> Sequence[Transport]:
        self.made.append(MemoryTransport())
        return self.made[-1:]


async def test_a_plugin_adds_a_scheme_to_a_pool() -> None:
    rec = Recorder()
    plugin = MemoryPlugin()
    async with conduit.open_pool(plugins=[plugin, rec]) as pool:
        transport, address = pool.parse("mem://echo")
        assert isinstance(transport, MemoryTransport)
        assert transport.plugin_name == pool.scope.pm.get_name(plugin)
        assert "MemoryPlugin" in transport.plugin_name
        assert address == Address("mem", host="echo")
        async with serving(pool, echo_once, "mem://echo") as (bound, handled):
            assert bound == address
            conn = await pool.connect("mem://echo")
            assert conn.info.transport == "mem"
            await round_trip(conn, b"in memory")
            with pytest.raises(ConnectionRefused, match="nothing listens on mem://elsewhere"):
                await pool.connect("mem://elsewhere")
            await conn.aclose()
            await rec.wait_until(lambda: len(rec.lost) == 2)
            assert rec.made_ids == rec.lost_ids == sorted([id(conn), id(handled[0])])
            assert conn.id != handled[0].id
        with pytest.raises(AddressError, match="expected mem://name"):
            pool.parse("mem:///path")
    # Another pool, and the global registry, know nothing of it.
    assert "mem" not in global_scope().transports
    async with conduit.open_pool() as other:
        with pytest.raises(AddressError, match=r"unknown scheme 'mem' \(registered: .*tcp"):
            await other.connect("mem://echo")


async def test_a_listener_plugin_adds_a_scheme_to_that_listener() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("mem://x", plugins=[MemoryPlugin()])
        assert isinstance(listener.transport, MemoryTransport)
        with pytest.raises(AddressError, match="unknown scheme 'mem'"):
            await pool.connect("mem://x")  # the pool itself does not know it
        await listener.aclose()


async def test_each_listener_scope_parses_with_its_own_transports() -> None:
    # Regression: the pool's parse cache was keyed by id(scope); a dead
    # listener's scope id reused by a new one returned the old transport.
    async with conduit.open_pool() as pool:
        for _ in range(30):
            plugin = MemoryPlugin()
            listener = await pool.listen("mem://cached", plugins=[plugin])
            assert plugin.made == [listener.transport]
            await listener.aclose()
            del listener, plugin
            gc.collect()


class DuplicateScheme:
    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    @hookimpl
    def conduit_transports(self) -> Sequence[Transport]:
        transport = MemoryTransport()
        transport.schemes = (self.scheme,)
        return [transport]


async def plugin_error(plugins: list[object], url: str) -> str:
    """The PluginError's message, whether the pool finds it when it opens or when it parses ``url``."""
    try:
        async with conduit.open_pool(plugins=plugins) as pool:
            try:
                pool.parse(url)
            except PluginError as exc:
                return str(exc)
    except PluginError as exc:
        return str(exc)
    raise AssertionError("no PluginError")


async def test_duplicate_scheme_names_both_plugins() -> None:
    first, second = DuplicateScheme("dup"), DuplicateScheme("dup")
    message = await plugin_error([first, second], "dup://x")
    assert "scheme 'dup' registered twice" in message
    assert f"DuplicateScheme@{id(first):#x}" in message
    assert f"DuplicateScheme@{id(second):#x}" in message


async def test_duplicate_of_a_global_scheme_names_both_plugins() -> None:
    message = await plugin_error([DuplicateScheme("tcp")], "tcp://h:1")
    assert "scheme 'tcp' registered twice" in message
    assert "'tcp'" in message  # the first-party plugin's entry-point name
    assert "DuplicateScheme@" in message


async def test_plugin_names_in_a_pool() -> None:
    class Named:
        __name__ = "my-plugin"

        @hookimpl
        def conduit_connection_made(self) -> None:
            raise AssertionError("not called")  # pragma: no cover

    named, anonymous = Named(), Recorder()
    async with conduit.open_pool(plugins=[named, anonymous]) as pool:
        assert pool.scope.pm.get_name(named) == "my-plugin"
        name = pool.scope.pm.get_name(anonymous)
        assert name == f"{__name__}.Recorder@{id(anonymous):#x}"


async def test_no_fd_leak_from_plugins_scopes(no_fd_leak: dict[int, str]) -> None:
    async with (
        conduit.open_pool(plugins=[Recorder(), KeepAlive()]) as pool,
        serving(pool, echo_once, plugins=[Recorder()]) as (address, _),
    ):
        conn = await pool.connect(address)
        await round_trip(conn)
