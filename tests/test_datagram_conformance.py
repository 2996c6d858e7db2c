"""``trio_conduit.testing.check_datagram_channel`` on every datagram transport, and on broken channels.

udp:// (a connected client and the listener's peer channel), unix+dgram://,
udt:// in message mode (reliable and ordered), and udp:// through our SOCKS5
server (UDP ASSOCIATE). DTLS will run the same check when it lands
(``reliable=False``; see docs/testing.rst).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer
from trio_conduit.testing import ChannelPair, check_datagram_channel

PairMaker = Callable[[], Awaitable[ChannelPair]]


def accepted_pair(pool: conduit.Pool, listener: conduit.PoolListener, url: str, **kw: object) -> PairMaker:
    """Connect to ``url``; the first message makes the listener accept the peer's channel."""

    async def make_pair() -> ChannelPair:
        client = await pool.connect_channel(url, **kw)  # type: ignore[arg-type]
        await client.send(b"hello")
        server = await listener.accept()
        assert isinstance(server, conduit.DatagramConnection)
        assert await server.receive() == b"hello"
        return client, server

    return make_pair


async def test_udp() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udp://127.0.0.1:0")
        await check_datagram_channel(
            accepted_pair(pool, listener, f"udp://127.0.0.1:{listener.address.port}"),
            reliable=False,
            max_size=65507,
        )


async def test_unix_dgram(sock_dir: Path) -> None:
    count = 0
    async with conduit.open_pool() as pool:
        listener = await pool.listen(f"unix+dgram://{sock_dir}/server")

        async def make_pair() -> ChannelPair:
            nonlocal count
            count += 1  # a unix datagram client needs an address of its own to be answered
            client = await pool.connect_channel(
                f"unix+dgram://{sock_dir}/server", local=f"{sock_dir}/client{count}"
            )
            await client.send(b"hello")
            server = await listener.accept()
            assert isinstance(server, conduit.DatagramConnection)
            assert await server.receive() == b"hello"
            return client, server

        await check_datagram_channel(make_pair, reliable=False)


async def test_udt_message_mode() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0?mode=message")
        make_pair = accepted_pair(pool, listener, f"udt://127.0.0.1:{listener.address.port}?mode=message")
        probe, other = await make_pair()
        max_size = probe.max_message_size  # type: ignore[attr-defined]
        await probe.aclose()
        await other.aclose()
        await check_datagram_channel(
            make_pair,
            reliable=True,
            max_size=max_size,
            closed_peer=(trio.EndOfChannel, trio.BrokenResourceError),
        )


async def test_udp_through_socks5() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        listener = await pool.listen("udp://127.0.0.1:0")
        await check_datagram_channel(
            accepted_pair(
                pool,
                listener,
                f"udp://127.0.0.1:{listener.address.port}",
                proxies=[f"socks5://127.0.0.1:{proxy.port}"],
            ),
            reliable=False,
        )
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# the check finds broken channels
# ---------------------------------------------------------------------------


class _Memory(trio.abc.Channel[bytes]):
    """A reliable in-memory channel end, with a fault switched on by the test."""

    def __init__(
        self, send: trio.MemorySendChannel[bytes], receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        self._send, self._receive = send, receive
        self.fault = ""
        self.closes = 0

    async def send(self, value: bytes) -> None:
        value = bytes(value)
        if self.fault == "truncate" and len(value) > 100:
            value = value[:100]
        await self._send.send(value)
        if self.fault == "duplicate":
            await self._send.send(value)

    async def receive(self) -> bytes:
        if self.fault == "lose-on-cancel":
            message = await self._receive.receive()
            await trio.lowlevel.checkpoint()  # cancelled here: the message is gone
            return message
        return await self._receive.receive()

    async def aclose(self) -> None:
        self.closes += 1
        if self.fault == "close-not-idempotent" and self.closes > 1:
            raise RuntimeError("closed twice")
        await self._send.aclose()
        await self._receive.aclose()


@asynccontextmanager
async def _memory(fault: str) -> AsyncIterator[PairMaker]:
    async def make_pair() -> ChannelPair:
        a_send, b_receive = trio.open_memory_channel[bytes](1000)
        b_send, a_receive = trio.open_memory_channel[bytes](1000)
        a, b = _Memory(a_send, a_receive), _Memory(b_send, b_receive)
        a.fault = b.fault = fault
        return a, b

    yield make_pair


async def test_a_correct_memory_channel_passes() -> None:
    async with _memory("") as make_pair:
        await check_datagram_channel(make_pair, reliable=True, closed_peer=(trio.EndOfChannel,))


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("truncate", "received 100 bytes"),
        ("duplicate", "received 1 bytes"),
        ("lose-on-cancel", "cancelled receive lost a message"),
        ("close-not-idempotent", "closed twice"),
    ],
)
async def test_a_broken_channel_fails(fault: str, message: str) -> None:
    async with _memory(fault) as make_pair:
        with pytest.raises((AssertionError, RuntimeError), match=message):
            await check_datagram_channel(make_pair, reliable=False, closed_peer=(trio.EndOfChannel,))


async def test_dtls(tmp_path: Path) -> None:
    from trio_conduit.testing import TestPKI

    pki = TestPKI(tmp_path, server_names=("localhost",))
    async with conduit.open_pool() as pool:
        listener = await pool.listen(pki.server_url("dtls"))
        url = f"dtls://127.0.0.1:{listener.address.port}?cafile={pki.cafile}&server_hostname=localhost"
        make_pair = accepted_pair(pool, listener, url)
        probe, other = await make_pair()
        max_size = probe.max_message_size  # type: ignore[attr-defined]
        await probe.aclose()
        await other.aclose()
        # DTLS carries no empty application record (OpenSSL sends none); a close_notify ends
        # the peer's channel
        await check_datagram_channel(
            make_pair,
            reliable=False,
            empty_messages=False,
            max_size=max_size,
            closed_peer=(trio.EndOfChannel,),
        )
