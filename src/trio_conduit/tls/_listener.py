"""A TLS listener: accepts on another listener and hands out connections whose handshake is done.

Handshakes run concurrently, each its own task, so a client that stalls
halfway (or a hook that takes its time) delays no one else; at most
``max_handshakes`` run at once. A client has ``hello_timeout`` to send its
whole ClientHello; and when every slot is taken and another client arrives,
the handshake that has waited longest for its ClientHello is dropped to make
room (a slowloris's stalled hellos are the oldest; a real client's hello
arrives within a round trip). Only when every slot holds a handshake past its
ClientHello does accepting wait (the kernel's backlog holds new clients).
``accept()`` returns the next connection whose handshake succeeded; failed
handshakes are traced and dropped; blind tunnels run in the listener's own
tasks until they end.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, final

import trio

from .._connection import Connection, Listener, StreamConnection
from ._config import TLSConfig
from ._errors import TLSError
from ._handshake import TunnelPlan, server_handshake
from ._tunnel import run_tunnel

if TYPE_CHECKING:
    from .._address import Address
    from .._plugins import HookScope
    from .._trace import Tracer

__all__ = ["TLSListener"]

_log = logging.getLogger("trio_conduit.tls")


@final
class TLSListener(Listener):
    """TLS over the stream connections ``inner`` accepts (see the module docstring).

    ``address`` is the inner listener's. The background accept loop starts
    with the first ``accept()`` and runs in ``nursery`` (the pool's) until
    :meth:`aclose`.
    """

    def __init__(
        self,
        inner: Listener,
        config: TLSConfig,
        *,
        scope: HookScope,
        tracer: Tracer,
        nursery: trio.Nursery | None,
        transport_name: str | None = None,
        address: Address | None = None,
    ) -> None:
        self._inner = inner
        self.config = config
        self._address = address if address is not None else inner.address
        self._scope = scope
        self._tracer = tracer
        self._nursery = nursery
        self._transport_name = transport_name
        self._send, self._receive = trio.open_memory_channel[Connection](0)
        self._cancel = trio.CancelScope()
        self._done = trio.Event()
        self._started = False
        self._closed = False
        self._error: BaseException | None = None
        self._limit = trio.Semaphore(config.max_handshakes)
        # handshakes still waiting for their whole ClientHello, oldest first: conn id → its scope
        self._awaiting_hello: dict[int, trio.CancelScope] = {}
        #: How many handshakes were dropped to make room for newer clients.
        self.evicted = 0

    @property
    def inner(self) -> Listener:
        return self._inner

    @property
    def address(self) -> Address:
        return self._address

    async def accept(self) -> Connection:
        if self._closed:
            raise trio.ClosedResourceError("this listener was closed")
        if self._nursery is None:
            return await self._accept_inline()
        if not self._started:
            self._started = True
            self._nursery.start_soon(self._run, name=f"conduit TLS accept loop {self.address}")
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._closed:
                raise trio.ClosedResourceError("this listener was closed") from None
            if self._error is not None:
                raise trio.BrokenResourceError(f"the listener failed: {self._error!r}") from self._error
        # The background loop was cancelled from outside (its nursery, the pool's, is
        # closing) while this listener is still in use: go on, one handshake at a time.
        return await self._accept_inline()

    async def accept_unfinished(self) -> tuple[Connection, Callable[[], Awaitable[Connection | None]]]:
        """The next accepted connection, before its handshake, and ``finish()`` to run it.

        For a server that runs each connection in its own task anyway
        (``pool.serve``): the handshake then runs in that task, as
        ``trio.serve_ssl_over_tcp`` does, with no hand-over between tasks.
        ``finish()`` returns the :class:`TLSConnection`, or ``None`` when the
        handshake failed (traced; the connection is closed) or became a blind
        tunnel (relayed by then). It counts against ``max_handshakes`` until it
        returns; call it exactly once.
        """
        if self._closed:
            raise trio.ClosedResourceError("this listener was closed")
        try:
            self._limit.acquire_nowait()  # a free slot: no trip through the scheduler (accept checkpoints)
        except trio.WouldBlock:
            conn = await self._accept_when_full()
        else:
            try:
                conn = await self._inner.accept()
            except BaseException:
                self._limit.release()
                raise
        evict = trio.CancelScope()
        awaiting = self._awaiting_hello
        awaiting[conn.id] = evict

        def hello_arrived() -> None:
            awaiting.pop(conn.id, None)

        async def finish() -> Connection | None:
            try:
                if not isinstance(conn, StreamConnection):
                    await trio.aclose_forcefully(conn)
                    _log.error("TLS needs a stream transport; %r is not one: dropped", conn)
                    return None
                with evict:
                    result = await server_handshake(
                        conn,
                        self.config,
                        scope=self._scope,
                        tracer=self._tracer,
                        address=self.address,
                        transport_name=self._transport_name,
                        on_hello=hello_arrived,
                    )
                if evict.cancelled_caught:
                    self._tracer.info(
                        "TLS handshake dropped (conn #%d): no complete ClientHello yet, and every "
                        "handshake slot (max_handshakes %d) was wanted for newer clients",
                        conn.id,
                        self.config.max_handshakes,
                    )
                    return None
            except TLSError as exc:
                self._tracer.info("TLS handshake failed (conn #%d): %s", conn.id, exc)
                return None
            except Exception:
                _log.exception("TLS handshake for conn #%d raised; connection dropped", conn.id)
                return None
            finally:
                awaiting.pop(conn.id, None)
                self._limit.release()
            if isinstance(result, TunnelPlan):
                await self._tunnel(result)
                return None
            return result

        return conn, finish

    async def _accept_when_full(self) -> Connection:
        """Every handshake slot is taken: accept the next client, then make room for it by
        dropping the handshake that has waited longest for its ClientHello (when none is
        still waiting for one, wait for a slot to free up)."""
        conn = await self._inner.accept()
        try:
            if self._awaiting_hello:
                oldest = next(iter(self._awaiting_hello))
                self._awaiting_hello.pop(oldest).cancel()
                self.evicted += 1
            await self._limit.acquire()
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(conn)
            raise
        return conn

    async def _accept_inline(self) -> Connection:
        while True:
            _, finish = await self.accept_unfinished()
            if (result := await finish()) is not None:
                return result

    async def _tunnel(self, plan: TunnelPlan) -> None:
        try:
            await run_tunnel(
                plan.handshake, plan.target, plan.buffered, tracer=self._tracer, nursery=self._nursery
            )
        except Exception as exc:
            self._tracer.info("TLS blind tunnel conn #%d failed: %s", plan.handshake.conn.id, exc)

    async def _run(self) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    while True:
                        conn, finish = await self.accept_unfinished()
                        nursery.start_soon(self._one, finish, name=f"conduit TLS handshake #{conn.id}")
        except trio.ClosedResourceError:
            pass
        except Exception as exc:
            if not self._closed:
                _log.error("TLS listener on %s: accepting failed: %r", self.address, exc)
                self._error = exc
        finally:
            self._send.close()
            self._done.set()

    async def _one(self, finish: Callable[[], Awaitable[Connection | None]]) -> None:
        result = await finish()
        if result is not None:
            try:
                await self._send.send(result)
            except BaseException:
                # Nobody will accept it (the listener closed, or we are cancelled).
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(result)
                raise

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._cancel.cancel()
        with trio.CancelScope(shield=True):
            await self._inner.aclose()
            if self._started:
                await self._done.wait()
            self._receive.close()
