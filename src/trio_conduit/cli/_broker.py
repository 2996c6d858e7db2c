"""``conduit listen --broker`` and ``--chat``: clients joined together through one hub.

Broker
    Every byte one client sends goes to every other client, not back to the
    sender, in the order it came; what this command reads on its standard
    input goes to every client too (standard output is not used, as in
    ncat). A client's end of stream is its leave: it gets nothing more and
    its connection is closed (as ncat does), so ``ncat HOST PORT <file``
    exits once its file is sent.

Slow clients
    Each client has an outbox, and what it should receive is queued there
    while a task of its own sends it. Up to :data:`OUTBOX_LIMIT` bytes may
    wait for one client (beyond what the kernel's socket buffers hold); a
    sender whose bytes do not fit waits for that client to make room, so a
    fast sender is slowed to the pace of the clients (no byte is lost for a
    client that keeps up). A client that makes no room for the next piece
    within :data:`PATIENCE` seconds (it reads slower than 64 KiB in that time,
    or not at all) is dropped: one warning line, its connection closed, and
    the senders go on. So one stalled client costs the others at most that
    long a pause and that much memory, never more.

Chat (``--chat``, a broker for people)
    Each line is sent as ``<userN> line``, ``N`` being the connection's id
    (the ``#N`` of the trace lines); a partial line waits for its newline (up
    to :data:`LINE_LIMIT` bytes, then it goes as it is; at the sender's end
    what is left goes too). Control characters are escaped as ``\\ooo`` octal
    (the tab is kept; a ``\\r\\n`` line end counts as ``\\n``), and so are
    bytes that are not UTF-8 and the Unicode control and format characters
    (such as the bidirectional overrides), so that nobody can move another
    user's cursor, clear their screen or disguise a line. Notices, as
    ncat's: ``<announce> ADDR is connected as <userN>.`` to everyone when a
    client joins, ``<announce> already connected: ADDR as <userM>, ....``
    (or ``nobody.``) to the newcomer, ``<announce> <userN> is disconnected.``
    when one leaves. Standard input is sent as lines from ``<conduit>``.

    Where this differs from ncat 7.93: ncat tags each *read* (a line cut in
    two reads shows as two, two lines in one read as one tag), we tag each
    line; ncat names users by its file descriptor numbers, we by connection
    ids; ncat sends the already-connected list to everyone, we to the
    newcomer; ``ADDR`` includes the port (two users from one host are told
    apart); ncat escapes every byte above 126, we keep UTF-8 text readable.

Not on datagram transports (neither is ncat's broker): a clear usage error.

This is the command's, not the library's: the framing (bytes or lines), the
tags and the drop policy are the command's choices. The hub needs nothing
but :class:`~trio_conduit.Connection`, so it can move down a layer when a
library user needs one.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import trio

from .._connection import Connection, StreamConnection
from ._report import BROKEN

__all__ = ["LINE_LIMIT", "OUTBOX_LIMIT", "PATIENCE", "ChatLines", "Hub", "escape"]

_log = logging.getLogger("trio_conduit.cli")

#: Bytes waiting for one client beyond which senders wait for it (see the module doc).
OUTBOX_LIMIT: Final = 4 << 20
#: Seconds senders wait for a full outbox to make room before its client is dropped.
PATIENCE: Final = 5.0
#: Chat: the longest partial line kept waiting for its newline.
LINE_LIMIT: Final = 16 << 10
#: Bytes per read of a client.
READ_SIZE: Final = 64 << 10


# ---------------------------------------------------------------------------
# chat lines (no I/O)
# ---------------------------------------------------------------------------


def _keep(char: str) -> bool:
    if char == "\t":
        return True
    if "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8 (surrogateescape)
        return False
    return unicodedata.category(char) not in ("Cc", "Cf")


def escape(line: bytes) -> bytes:
    """``line`` (without its newline) with control characters escaped as ``\\ooo`` (see the module doc)."""
    text = line.decode("utf-8", "surrogateescape")
    if all(" " <= c < "\x7f" or c == "\t" for c in text):
        return line
    out: list[str] = []
    for char in text:
        if _keep(char):
            out.append(char)
        else:
            raw = char.encode("utf-8", "surrogateescape")
            out.append("".join(f"\\{b:03o}" for b in raw))
    return "".join(out).encode("utf-8", "surrogateescape")


class ChatLines:
    """One sender's bytes as tagged, escaped lines: ``feed`` bytes, get ``<name> line\\n`` bytes."""

    def __init__(self, name: str, limit: int = LINE_LIMIT) -> None:
        self.tag = f"<{name}> ".encode()
        self.limit = limit
        self._pending = bytearray()

    def _line(self, line: bytes | bytearray) -> bytes:
        if line.endswith(b"\r"):
            line = line[:-1]
        return self.tag + escape(bytes(line)) + b"\n"

    def feed(self, data: bytes | bytearray) -> bytes:
        """The complete lines ``data`` ends (a partial line longer than the limit counts as one)."""
        self._pending += data
        out: list[bytes] = []
        start = 0
        while (end := self._pending.find(b"\n", start)) >= 0:
            out.append(self._line(self._pending[start:end]))
            start = end + 1
        del self._pending[:start]
        while len(self._pending) >= self.limit:
            out.append(self._line(self._pending[: self.limit]))
            del self._pending[: self.limit]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left (a last line without its newline), tagged; empty if nothing is."""
        rest, self._pending = self._pending, bytearray()
        return self._line(rest) if rest else b""


# ---------------------------------------------------------------------------
# the hub
# ---------------------------------------------------------------------------


class _Member:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = f"user{conn.id}"
        #: Bytes in the outbox, not yet handed to the connection.
        self.queued = 0
        self.scope = trio.CancelScope()
        self._send, self._receive = trio.open_memory_channel[bytes](float("inf"))
        self._drained: trio.Event | None = None
        self.left = False

    def put(self, data: bytes) -> None:
        self.queued += len(data)
        self._send.send_nowait(data)

    async def room_for(self, size: int, limit: int) -> None:
        """Return once ``size`` more bytes fit under ``limit`` (or the outbox is empty, or it left)."""
        while not self.left and self.queued and self.queued + size > limit:
            if self._drained is None or self._drained.is_set():
                self._drained = trio.Event()
            await self._drained.wait()
        await trio.lowlevel.checkpoint()

    def gone(self) -> bool:
        return self.left

    def leave(self) -> None:
        """It is gone: senders waiting for room stop waiting."""
        self.left = True
        if self._drained is not None:
            self._drained.set()

    async def write_out(self, conn: StreamConnection) -> None:
        async for data in self._receive:
            await conn.send_all(data)
            self.queued -= len(data)
            if self._drained is not None:
                self._drained.set()


class Hub:
    """The clients of one broker; what one sends goes to the others' outboxes."""

    def __init__(
        self,
        *,
        chat: bool,
        describe: Callable[[Connection], str],
        limit: int = OUTBOX_LIMIT,
        patience: float = PATIENCE,
    ) -> None:
        self.chat = chat
        #: A client's address as the notices and log lines show it.
        self.describe = describe
        self.limit = limit
        self.patience = patience
        self.members: dict[int, _Member] = {}
        self._stdin_lines = ChatLines("conduit")

    async def from_stdin(self, data: bytes) -> None:
        """What our standard input says, to everyone (chat: ``data`` is one line, or the last piece)."""
        await self.send(self._stdin_lines.feed(data) + self._stdin_lines.flush() if self.chat else data)

    async def send(self, data: bytes, sender: _Member | None = None) -> None:
        """Queue ``data`` for every member but ``sender``, waiting (within patience) for full outboxes."""
        if not data:
            await trio.lowlevel.checkpoint()
            return
        for member in list(self.members.values()):
            if member is sender or member.left:
                continue  # the sender, or a member that left while we waited for another
            with trio.move_on_after(self.patience) as waiting:
                await member.room_for(len(data), self.limit)
            if member.gone():
                continue
            if waiting.cancelled_caught:
                self._drop(member)
            else:
                member.put(data)

    def _drop(self, member: _Member) -> None:
        _log.warning(
            "conn #%d from %s: dropped from the broker: %d bytes waiting for it and no room made for %g s",
            member.conn.id,
            self.describe(member.conn),
            member.queued,
            self.patience,
        )
        self.members.pop(member.conn.id, None)
        member.leave()
        member.scope.cancel()

    def _notice(self, text: str, to: _Member | None = None) -> None:
        """An ``<announce>`` line to ``to``, or to all: never waits (notices are few and short)."""
        line = f"<announce> {text}\n".encode()
        for member in [to] if to is not None else list(self.members.values()):
            member.put(line)

    async def serve(self, conn: Connection) -> None:
        """A client's life in the hub: join, relay what it sends, leave at its end (the handler)."""
        member = _Member(conn)
        lines = ChatLines(member.name) if self.chat else None
        others = [f"{self.describe(m.conn)} as <{m.name}>" for m in self.members.values()]
        self.members[conn.id] = member
        _log.info("conn #%d from %s: joined (%d clients)", conn.id, self.describe(conn), len(self.members))
        if self.chat:
            self._notice(f"{self.describe(conn)} is connected as <{member.name}>.")
            self._notice(f"already connected: {', '.join(others) or 'nobody'}.", to=member)
        assert isinstance(conn, StreamConnection)

        async def read_in() -> None:
            while data := await conn.receive_some(READ_SIZE):
                await self.send(lines.feed(data) if lines else bytes(data), member)
            if lines:
                await self.send(lines.flush(), member)

        async def part(run: Callable[[], Awaitable[None]]) -> None:
            # Either way's end, or its failure, is the client's leave.
            try:
                await run()
            except BROKEN as exc:
                _log.info("conn #%d from %s: %s", conn.id, self.describe(conn), exc)
            member.scope.cancel()

        try:
            with member.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(part, partial(member.write_out, conn))
                    nursery.start_soon(part, read_in)
        finally:
            self.members.pop(conn.id, None)
            member.leave()
            if self.chat:
                self._notice(f"<{member.name}> is disconnected.")
