"""``check_datagram_channel``: a conformance check for channels of whole messages.

In the spirit of ``trio.testing.check_two_way_stream``: give it a function
that makes two connected channels, and it runs every check on fresh pairs,
raising ``AssertionError`` (with what was expected) at the first failure.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

import trio
import trio.testing

from .._errors import MessageTooLarge

__all__ = ["ChannelPair", "check_datagram_channel"]

#: What ``make_pair`` returns: two channels, each the other's peer.
ChannelPair: TypeAlias = tuple[trio.abc.Channel[bytes], trio.abc.Channel[bytes]]

PairMaker = Callable[[], Awaitable[ChannelPair]]


@contextmanager
def _raises(*expected: type[BaseException], what: str) -> Iterator[None]:
    try:
        yield
    except expected:
        return
    except BaseException as exc:
        names = " or ".join(e.__name__ for e in expected)
        raise AssertionError(f"{what}: expected {names}, got {type(exc).__name__}: {exc}") from exc
    names = " or ".join(e.__name__ for e in expected)
    raise AssertionError(f"{what}: expected {names}, nothing was raised")


async def _close_both(pair: ChannelPair) -> None:
    for channel in pair:
        await trio.aclose_forcefully(channel)


def _payloads(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"x", rng.randbytes(100), rng.randbytes(1200), bytes(range(256)) * 4]


async def check_datagram_channel(
    make_pair: PairMaker,
    *,
    reliable: bool,
    empty_messages: bool = True,
    max_size: int | None = None,
    closed_peer: tuple[type[BaseException], ...] | None = None,
    seed: int = 0,
) -> None:
    """Check that the channels ``make_pair()`` returns behave as trio-conduit's datagram connections.

    ``make_pair``: an async function returning two connected channels
    (``trio.abc.Channel[bytes]``); it is called once per check, and every
    pair is closed by the check. What it checks:

    * whole messages, both ways, each received exactly as it was sent
      (sizes from 1 byte to 1 KiB; one message at a time, in lockstep);
    * ``reliable=True`` (a reliable ordered transport: UDT in message mode,
      SEQPACKET, DTLS is *not* one): a burst of 200 messages arrives complete
      and in order. ``reliable=False`` (best effort: UDP, unix datagrams,
      SOCKS5 UDP) asserts no order and no completeness of bursts, only that
      what arrives is what was sent, once; the lockstep checks still need
      ``make_pair`` to give a path that loses nothing at that pace (loopback);
    * ``empty_messages``: an empty message arrives as ``b""``;
    * two tasks sending at once on one channel: allowed (no
      ``BusyResourceError``), every message arrives whole;
    * ``max_size``: a message of ``max_size + 1`` bytes raises
      :class:`~trio_conduit.MessageTooLarge` on ``send`` (or on the peer's
      ``receive``), and the channel stays usable;
    * cancellation: a ``receive`` cancelled before or while a message arrives
      neither loses nor duplicates it (the next ``receive`` gets it, once);
    * closing: after ``aclose()`` both ``send`` and ``receive`` raise
      ``trio.ClosedResourceError``, and ``aclose()`` again is fine; a
      ``receive`` blocked in another task when the channel is closed raises
      ``ClosedResourceError``; ``closed_peer`` (what the transport documents
      for a receive once the peer has closed, e.g. ``(trio.EndOfChannel,)``
      or ``(trio.EndOfChannel, trio.BrokenResourceError)``; ``None``: the
      transport does not signal it, as UDP does not) is raised by ``receive``
      on the other end.

    ``seed`` makes the payloads and the cancellation points reproducible.
    """
    await _check_whole_messages(make_pair, seed)
    if reliable:
        await _check_ordered_burst(make_pair, seed)
    if empty_messages:
        await _check_empty_message(make_pair)
    await _check_concurrent_senders(make_pair, seed)
    if max_size is not None:
        await _check_too_large(make_pair, max_size)
    await _check_cancelled_receive(make_pair, seed)
    await _check_close(make_pair, closed_peer)


async def _roundtrip(
    sender: trio.abc.SendChannel[bytes], receiver: trio.abc.ReceiveChannel[bytes], data: bytes
) -> None:
    await sender.send(data)
    got = await receiver.receive()
    if got != data:
        raise AssertionError(
            f"sent a message of {len(data)} bytes, received {len(got)} bytes: {got[:32]!r}..."
        )


async def _check_whole_messages(make_pair: PairMaker, seed: int) -> None:
    pair = await make_pair()
    a, b = pair
    try:
        for data in _payloads(seed):
            await _roundtrip(a, b, data)
            await _roundtrip(b, a, data[::-1])
    finally:
        await _close_both(pair)


async def _check_ordered_burst(make_pair: PairMaker, seed: int) -> None:
    pair = await make_pair()
    a, b = pair
    sent = [b"%d:" % i + random.Random(seed + i).randbytes(i % 50) for i in range(200)]
    got: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:

            async def send_all() -> None:
                for message in sent:
                    await a.send(message)

            nursery.start_soon(send_all)
            while len(got) < len(sent):
                got.append(await b.receive())
        if got != sent:
            first = next(i for i, (x, y) in enumerate(zip(got, sent, strict=True)) if x != y)
            raise AssertionError(f"a reliable channel reordered or lost messages: #{first} differs")
    finally:
        await _close_both(pair)


async def _check_empty_message(make_pair: PairMaker) -> None:
    pair = await make_pair()
    a, b = pair
    try:
        await _roundtrip(a, b, b"")
        await _roundtrip(b, a, b"")
        await _roundtrip(a, b, b"after")  # and the channel goes on
    finally:
        await _close_both(pair)


async def _check_concurrent_senders(make_pair: PairMaker, seed: int) -> None:
    pair = await make_pair()
    a, b = pair
    per_task = 5
    try:
        async with trio.open_nursery() as nursery:

            async def sender(tag: bytes) -> None:
                for i in range(per_task):
                    await a.send(tag + b"%d" % i + b"." * (i * 37 % 200))

            nursery.start_soon(sender, b"A")
            nursery.start_soon(sender, b"B")
            got = [await b.receive() for _ in range(2 * per_task)]
        expected = {tag + b"%d" % i + b"." * (i * 37 % 200) for tag in (b"A", b"B") for i in range(per_task)}
        if sorted(got) != sorted(expected):
            raise AssertionError(
                f"two concurrent senders: received {sorted(got)!r}, sent {sorted(expected)!r}"
            )
    finally:
        await _close_both(pair)


async def _check_too_large(make_pair: PairMaker, max_size: int) -> None:
    pair = await make_pair()
    a, b = pair
    try:
        with _raises(MessageTooLarge, what=f"a message of max_size + 1 = {max_size + 1} bytes"):
            await a.send(b"\0" * (max_size + 1))
            await b.receive()  # cut short by the receiver instead: raises there
        await _roundtrip(a, b, b"still usable")
    finally:
        await _close_both(pair)


async def _check_cancelled_receive(make_pair: PairMaker, seed: int) -> None:
    pair = await make_pair()
    a, b = pair
    rng = random.Random(seed)
    try:
        # cancelled before anything arrives: the message sent afterwards is not lost
        for i in range(5):
            with trio.CancelScope() as scope:
                scope.cancel()
                await b.receive()
            await _roundtrip(a, b, b"after cancel %d" % i)
        # cancelled while a message may be arriving: it is received once, by one of the two receives
        for i in range(20):
            message = b"race %d" % i
            got: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def receive_once(scope: trio.CancelScope, into: list[bytes]) -> None:
                    with scope:
                        into.append(await b.receive())

                scope = trio.CancelScope()
                nursery.start_soon(receive_once, scope, got)
                await a.send(message)
                for _ in range(rng.randrange(4)):
                    await trio.lowlevel.checkpoint()
                scope.cancel()
            if not got:
                # Not received by the cancelled task: the next receive must get it. A marker
                # sent after it tells a lost message from a late one without any timeout.
                await a.send(b"marker")
                got.append(await b.receive())
                if got[-1] == b"marker":
                    raise AssertionError(f"a cancelled receive lost a message: {message!r}")
                if (marker := await b.receive()) != b"marker":
                    raise AssertionError(f"after a cancelled receive, expected the marker, got {marker!r}")
            if got[:1] != [message]:
                raise AssertionError(
                    f"a cancelled receive lost or changed a message: {got!r}, sent {message!r}"
                )
        await a.send(b"last")
        if (last := await b.receive()) != b"last":  # no duplicate of an earlier one came in between
            raise AssertionError(f"a message came twice after a cancelled receive: {last!r}")
    finally:
        await _close_both(pair)


async def _check_close(make_pair: PairMaker, closed_peer: tuple[type[BaseException], ...] | None) -> None:
    pair = await make_pair()
    a, b = pair
    try:
        await a.aclose()
        with _raises(trio.ClosedResourceError, what="send after aclose"):
            await a.send(b"x")
        with _raises(trio.ClosedResourceError, what="receive after aclose"):
            await a.receive()
        await a.aclose()  # idempotent
        if closed_peer is not None:
            with _raises(*closed_peer, what="receive once the peer closed"):
                await b.receive()
    finally:
        await _close_both(pair)
    pair = await make_pair()
    a, b = pair
    try:
        async with trio.open_nursery() as nursery:

            async def blocked_receive() -> None:
                with _raises(trio.ClosedResourceError, what="a receive blocked while its channel was closed"):
                    await a.receive()

            nursery.start_soon(blocked_receive)
            await trio.testing.wait_all_tasks_blocked()
            await a.aclose()
    finally:
        await _close_both(pair)
