"""``conduit connect`` and ``conduit listen``: a connection on standard input and output.

Streams
    Both directions run at once. The relay ends when **both** have ended:
    stdin reached its end (then the connection's sending side is closed with
    ``send_eof`` where the stream is half-closeable) *and* the peer ended its
    side. So a peer that half-closes still gets everything stdin has to say,
    and a listener that sees the client's EOF can still answer. On a stream
    that cannot half-close, stdin's end cannot be signalled without closing:
    the relay keeps reading until the peer closes. It also ends when the
    connection breaks (exit status 1) or when stdout is closed (quietly,
    exit status 0).

One way (``--send-only``, ``--recv-only``, as ncat's)
    ``--send-only``: stdin is sent; what arrives is read and dropped (so the
    peer never blocks on us, and closing sends no RST for unread data); at
    stdin's end the sending side is closed and the command ends, without
    waiting for the peer. With ``listen -k``, stdin goes to every client and
    at its end every client gets the end of stream and the command exits 0.
    ``--recv-only``: stdin is never read and nothing is sent (not even an
    end of stream); the peer's data goes to stdout until it closes.

Datagrams
    One datagram per stdin read (at most 65507 bytes), or per line with
    ``--lines`` (the newline is part of the datagram). Received datagrams go to
    stdout as they are; with ``--lines`` a newline is added to those that lack
    one. There is no end of stream in datagrams: after stdin's end the relay
    keeps printing replies until none has come for ``--linger`` seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Literal

import trio

from .._address import Address
from .._connection import Connection, DatagramConnection, Kind, StreamConnection
from .._errors import AddressError
from .._pool import Pool, open_pool
from .._util import peer_text
from ._access import access_keywords
from ._report import BROKEN
from ._stdio import (
    CHUNK,
    DATAGRAM_CHUNK,
    FdKind,
    Output,
    OutputClosed,
    StdFd,
    copy_socket_to_output,
    kernel_socket,
    open_input,
    probe,
    read_pieces,
    sendfile_to_socket,
    splice_from_socket,
    splice_from_socket_via_pipe,
    splice_to_socket,
)

__all__ = ["Drain", "announce", "run_connect", "run_listen"]

#: Which ways data moves: both, or one (``--send-only``, ``--recv-only``).
Direction = Literal["both", "send", "recv"]

_log = logging.getLogger("trio_conduit.cli")


def _say(line: str) -> None:
    try:
        print(f"conduit: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr is closed: nobody to tell


def announce(requested: Address, bound: Address, verbose: int) -> None:
    """``conduit: listening on URL`` on stderr: always at ``-v``, for port 0, and for socket paths."""
    if verbose > 0 or requested.port == 0 or requested.path is not None:
        _say(f"listening on {bound}")


# ---------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------


async def _stdin_to_stream(conn: StreamConnection, stdin: StdFd, *, zero_copy: bool) -> None:
    sock = kernel_socket(conn, zero_copy=zero_copy)
    moved: int | None = None
    if sock is not None and stdin.kind is FdKind.PIPE:
        moved = await splice_to_socket(stdin.fd, sock)
    elif sock is not None and stdin.kind is FdKind.FILE:
        moved = await sendfile_to_socket(stdin.fd, sock)
    if moved is None:
        inp = open_input(stdin)
        try:
            while data := await inp.receive_some(CHUNK):
                await conn.send_all(data)
        finally:
            await inp.aclose()
    if isinstance(conn, trio.abc.HalfCloseableStream):
        await conn.send_eof()


async def _stream_to_output(conn: StreamConnection, output: Output, *, zero_copy: bool) -> None:
    sock = kernel_socket(conn, zero_copy=zero_copy)
    if sock is not None:
        kind = output.std.kind
        if kind is FdKind.PIPE and await splice_from_socket(sock, output.std.fd) is not None:
            return
        if kind in (FdKind.FILE, FdKind.NULL) and await splice_from_socket_via_pipe(sock, output) is not None:
            return
        await copy_socket_to_output(sock, output)
        return
    while data := await conn.receive_some(CHUNK):
        await output.write(data)


async def relay_stream(
    conn: StreamConnection, stdin: StdFd, output: Output, *, zero_copy: bool, direction: Direction = "both"
) -> None:
    """Run stdin → ``conn`` and ``conn`` → stdout until both have ended (see the module doc);
    ``direction`` ``"send"`` or ``"recv"``: one way only."""
    if direction == "recv":
        await _stream_to_output(conn, output, zero_copy=zero_copy)
        return
    async with trio.open_nursery() as nursery:
        if direction == "send":
            nursery.start_soon(_discard, conn)
            await _stdin_to_stream(conn, stdin, zero_copy=zero_copy)
            nursery.cancel_scope.cancel()
            return
        nursery.start_soon(partial(_stdin_to_stream, conn, stdin, zero_copy=zero_copy))
        await _stream_to_output(conn, output, zero_copy=zero_copy)


async def _discard(conn: Connection) -> None:
    """Read and drop what ``conn`` receives until its end (``--send-only``)."""
    if isinstance(conn, DatagramConnection):
        async for _ in conn:
            pass
    elif isinstance(conn, StreamConnection):
        while await conn.receive_some(CHUNK):
            pass


# ---------------------------------------------------------------------------
# datagrams
# ---------------------------------------------------------------------------


async def _read_input(
    stdin: StdFd, send: Callable[[bytes], Awaitable[None]], *, lines: bool, chunk: int
) -> None:
    """Call ``send`` with each piece of stdin (see :func:`._stdio.read_pieces`)."""
    inp = open_input(stdin)
    try:
        await read_pieces(inp, send, lines=lines, chunk=chunk)
    finally:
        await inp.aclose()


def _as_line(data: bytes, lines: bool) -> bytes:
    return data + b"\n" if lines and not data.endswith(b"\n") else data


async def relay_datagrams(
    chan: DatagramConnection,
    stdin: StdFd,
    output: Output,
    *,
    lines: bool,
    linger: float,
    direction: Direction = "both",
) -> None:
    """stdin → datagrams to the peer, the peer's datagrams → stdout; ends ``linger`` s after stdin's end.

    ``direction`` ``"send"``: stdin only, ending with it; ``"recv"``: the peer's datagrams only."""
    if direction == "send":
        await _read_input(stdin, chan.send, lines=lines, chunk=DATAGRAM_CHUNK)
        return
    if direction == "recv":
        async for data in chan:
            await output.write(_as_line(data, lines))
        return
    receiving = trio.CancelScope()
    stdin_done = False

    async def sender() -> None:
        nonlocal stdin_done
        await _read_input(stdin, chan.send, lines=lines, chunk=DATAGRAM_CHUNK)
        stdin_done = True
        receiving.deadline = trio.current_time() + linger

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        with receiving:
            # Iterating ends at EndOfChannel: a message-mode peer (seqpacket) closed.
            async for data in chan:
                await output.write(_as_line(data, lines))
                if stdin_done:
                    receiving.deadline = trio.current_time() + linger
        nursery.cancel_scope.cancel()  # the peer is gone, or stdin ended and replies stopped


# ---------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------


def _direction(args: argparse.Namespace) -> Direction:
    return "send" if args.send_only else "recv" if args.recv_only else "both"


def _zero_copy(args: argparse.Namespace) -> bool:
    # splice(2) (or a socket handed to --exec's child) moves data past the connection's
    # methods, where idle_timeout counts it
    return not args.no_splice and args.idle_timeout is None


async def _relay(conn: Connection, args: argparse.Namespace, output: Output) -> int | None:
    """stdin/stdout (or ``--exec``'s child, whose exit status is returned) ↔ ``conn``."""
    if args.exec is not None:
        from ._exec import run_exec

        return await run_exec(conn, args.exec, zero_copy=_zero_copy(args), lines=args.lines)
    stdin = probe(0)
    direction = _direction(args)
    if isinstance(conn, DatagramConnection):
        await relay_datagrams(conn, stdin, output, lines=args.lines, linger=args.linger, direction=direction)
    elif isinstance(conn, StreamConnection):
        await relay_stream(conn, stdin, output, zero_copy=_zero_copy(args), direction=direction)
    else:  # pragma: no cover - a plugin handing out something else
        raise TypeError(f"{conn!r} is neither a stream nor a datagram connection")
    return None


async def run_connect(args: argparse.Namespace, url: str) -> int:
    """``conduit connect``: connect to ``url`` and relay it to stdin/stdout.

    Errors propagate (the caller turns them into one line and an exit
    status); :class:`OutputClosed` among them means stdout went away.
    """
    async with open_pool() as pool, Output(probe(1)) as output:
        conn: Connection = await pool.connect(
            url, timeout=args.timeout, local=args.local, proxies=args.proxy or None
        )
        if args.zero_io:  # -z: it connected; nothing is sent
            peer = _peer(conn)  # (not the URL: it may hold a key's password)
            await _close_politely(conn)
            if args.verbose:
                _say(f"connected to {peer}")
            return 0
        try:
            return await _until_idle(pool, conn, args, _relay(conn, args, output))
        finally:
            await conn.aclose()


#: ``-z``: how long the peer gets to answer our end of stream before we close.
Z_GRACE = 1.0


async def _close_politely(conn: Connection) -> None:
    """Close ``conn`` without a reset: on a half-closeable stream, send the end of stream and read
    (and drop) what the peer still sends until it closes, for at most :data:`Z_GRACE` seconds.
    (A TLS 1.3 server's session tickets would otherwise be unread at close, which makes the
    kernel send a reset: ``-z`` must not look like an error to the server.)"""
    try:
        if isinstance(conn, trio.abc.HalfCloseableStream):
            with trio.move_on_after(Z_GRACE):
                await conn.send_eof()
                while await conn.receive_some(CHUNK):
                    pass
    except BROKEN:
        pass  # the peer went first: nothing more to be polite about
    finally:
        await conn.aclose()


async def _until_idle(
    pool: Pool, conn: Connection, args: argparse.Namespace, work: Coroutine[Any, Any, object]
) -> int:
    """Run ``work`` on ``conn``; with ``--idle-timeout`` stop it when ``conn`` has been idle
    that long (then say so; exit status 1, as ncat's ``-i``). The status: ``work``'s if it
    returns a number (``--exec``: the child's), else 0."""
    if args.idle_timeout is None:
        status = await work
        return status if isinstance(status, int) else 0
    watch = pool._idle.watch(conn, args.idle_timeout, handled=True)
    try:
        with watch.scope:
            status = await work
    finally:
        watch.done = True
    if watch.scope.cancelled_caught:
        _say(f"idle timeout: no data either way for {args.idle_timeout:g} s")
        return 1
    return status if isinstance(status, int) else 0


async def _echo(conn: Connection) -> None:
    if isinstance(conn, DatagramConnection):
        async for message in conn:  # ends when a message-mode peer closes
            await conn.send(message)
    elif isinstance(conn, StreamConnection):
        while data := await conn.receive_some(CHUNK):
            await conn.send_all(data)
        if isinstance(conn, trio.abc.HalfCloseableStream):
            await conn.send_eof()


class Drain:
    """SIGTERM for ``conduit listen``: stop accepting at once, let live connections finish.

    :meth:`start` stops every ``serve`` of the pool (their handlers get
    ``timeout`` seconds, then are cancelled), then ends the command, which
    exits 0. Without ``--keep-open``, a connection already accepted gets the
    same ``timeout`` to finish its relay.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.scope = trio.CancelScope()
        self.pool: Pool | None = None
        #: False while a single (not --keep-open) connection is being relayed.
        self.stop_at_once = True
        self.requested = False

    async def start(self) -> None:
        self.requested = True
        _log.info("SIGTERM: draining (up to %g s)", self.timeout)
        if self.pool is not None:
            await self.pool.drain()
        if self.stop_at_once:
            self.scope.cancel()
        else:
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + self.timeout)


async def _listen_once(
    pool: Pool, url: str, args: argparse.Namespace, output: Output, drain: Drain | None = None
) -> int:
    requested = pool.parse(url, listening=True)[1]
    listener = await pool.listen(url, **access_keywords(args))
    try:
        announce(requested, listener.address, args.verbose)
        conn = await listener.accept()
    except BaseException:
        await trio.aclose_forcefully(listener)
        raise
    if drain is not None:
        drain.stop_at_once = False
    if not isinstance(conn, DatagramConnection):
        # One stream connection: stop listening, later clients are refused (as ``ncat -l``).
        # A datagram listener must stay open: it reads the socket for the peer's channel.
        await listener.aclose()
    try:
        work = _echo(conn) if args.echo else _relay(conn, args, output)
        return await _until_idle(pool, conn, args, work)
    finally:
        await conn.aclose()
        await listener.aclose()


async def _broadcast_stdin(
    live: set[Connection], *, lines: bool, chunk: int, then_close: trio.CancelScope | None = None
) -> None:
    """Send what stdin says to every connection open at the time (``ncat -l -k``); stop at its end.

    ``then_close`` (``--send-only``): at stdin's end, end every live stream (``send_eof``) and
    cancel this scope (the command ends; serving stops and closes every connection)."""

    async def send(data: bytes) -> None:
        for conn in list(live):
            try:
                if isinstance(conn, DatagramConnection):
                    await conn.send(data)
                elif isinstance(conn, StreamConnection):
                    await conn.send_all(data)
            except BROKEN as exc:
                _log.info("conn #%d: not sent (%s)", conn.id, exc)

    await _read_input(probe(0), send, lines=lines, chunk=chunk)
    if then_close is not None:
        for conn in list(live):
            try:
                if isinstance(conn, trio.abc.HalfCloseableStream):
                    await conn.send_eof()
            except BROKEN as exc:
                _log.info("conn #%d: no end of stream sent (%s)", conn.id, exc)
        then_close.cancel()  # the handlers are cancelled; serve() closes their connections


async def _listen_keep_open(pool: Pool, url: str, args: argparse.Namespace, output: Output) -> int:
    transport, requested = pool.parse(url, listening=True)
    datagram = transport.kind is Kind.DATAGRAM
    live: set[Connection] = set()
    hub = None
    if args.broker:
        from ._broker import Hub

        if datagram:
            raise AddressError(f"--broker and --chat need a stream transport, not {requested.scheme}://")
        hub = Hub(chat=args.chat, describe=_peer)

    async with trio.open_nursery() as nursery:

        async def handler(conn: Connection) -> None:
            try:
                if args.echo:
                    await _echo(conn)
                    return
                if args.exec is not None:
                    from ._exec import run_exec

                    await run_exec(conn, args.exec, zero_copy=_zero_copy(args), lines=args.lines)
                    return
                if hub is not None:
                    await hub.serve(conn)
                    return
                live.add(conn)
                if args.send_only:
                    await _discard(conn)
                elif isinstance(conn, DatagramConnection):
                    async for message in conn:  # ends when a message-mode peer closes
                        await output.write(_as_line(message, args.lines))
                elif isinstance(conn, StreamConnection):
                    while data := await conn.receive_some(CHUNK):
                        await output.write(data)
            except OutputClosed:
                nursery.cancel_scope.cancel()
            except BROKEN as exc:
                # One client's trouble is not the listener's: note it at -v, serve the next.
                _log.info("connection #%d from %s: %s", conn.id, _peer(conn), exc)
            finally:
                live.discard(conn)

        bound: Address = await nursery.start(_serve, pool, url, handler, args, nursery.cancel_scope)
        announce(requested, bound, args.verbose)
        if hub is not None:
            nursery.start_soon(partial(_read_input, probe(0), hub.from_stdin, lines=args.chat, chunk=CHUNK))
        elif not (args.echo or args.recv_only) and args.exec is None:
            nursery.start_soon(
                partial(
                    _broadcast_stdin,
                    live,
                    lines=args.lines and datagram,
                    chunk=DATAGRAM_CHUNK if datagram else CHUNK,
                    then_close=nursery.cancel_scope if args.send_only else None,
                )
            )
    # Only a closed stdout (or a signal, handled by the caller) ends --keep-open.
    return 0


async def _serve(
    pool: Pool,
    url: str,
    handler: Callable[[Connection], Awaitable[None]],
    args: argparse.Namespace,
    done: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``pool.serve`` with the command's options; once it returns (a drain is over), ``done`` is
    cancelled."""
    await pool.serve(
        url,
        handler,
        max_connections=args.max_conns,
        idle_timeout=args.idle_timeout,
        task_status=task_status,
        **access_keywords(args),
    )
    done.cancel()


async def _listen_socks5(pool: Pool, url: str, args: argparse.Namespace) -> int:
    """``--socks5``: a proxy server (SOCKS5, SOCKS4/4a, HTTP CONNECT) on ``url`` until interrupted."""
    from ..proxy import ProxyServer

    requested = pool.parse(url, listening=True)[1]
    async with trio.open_nursery() as nursery:
        bound: Address = await nursery.start(_serve, pool, url, ProxyServer(pool), args, nursery.cancel_scope)
        announce(requested, bound, args.verbose)
    return 0


def _peer(conn: Connection) -> str:
    return peer_text(conn.info.remote)


async def run_listen(args: argparse.Namespace, url: str, drain: Drain | None = None) -> int:
    """``conduit listen``: accept one connection (or many with ``--keep-open``) and relay it.

    ``drain``: how SIGTERM stops it (see :class:`Drain`); the status is then 0.
    """
    scope = drain.scope if drain is not None else trio.CancelScope()
    timeout = drain.timeout if drain is not None else None
    with scope:
        async with open_pool(drain_timeout=timeout) as pool, Output(probe(1)) as output:
            if drain is not None:
                drain.pool = pool
            if args.socks5:
                return await _listen_socks5(pool, url, args)
            if args.keep_open:
                return await _listen_keep_open(pool, url, args, output)
            return await _listen_once(pool, url, args, output, drain)
    return 0  # drained
