"""``--exec`` / ``--sh-exec``: one program per connection, its stdin and stdout bound to it.

How the bytes move
    **The socket itself** when the connection is a plain kernel socket (tcp,
    unix, sctp, vsock streams: what :func:`._stdio.kernel_socket` hands out,
    so not with ``-i``, ``-vvv`` or ``--no-splice``): it becomes the child's
    stdin and stdout, as under inetd. No byte passes through this process,
    no task runs per connection but the one that waits for the child, and
    the child sees the peer's end of stream and half-closes itself. The
    socket's ``O_NONBLOCK`` flag belongs to the open file description we
    share with the child, and programs expect blocking descriptors: it is
    cleared for the child's lifetime and set again before the connection is
    closed. We watch the socket only for a hang-up (reset, or closed both
    ways) through an epoll registration of our own that reports nothing
    else, so the child's data never wakes us.

    **Two pipes** otherwise (TLS, UDT, a connection with buffered bytes, a
    datagram channel, ``-i`` which must see the data to count it): one task
    copies the connection into the child's stdin, one the child's stdout into
    the connection. The peer's end of stream closes the child's stdin; the
    end of the child's stdout half-closes the connection (``send_eof``) where
    the transport can. If the child closes its stdin early, what the peer
    sends next is left unread.

    **Datagrams** (pipes): each datagram received is written to the child's
    stdin as it is; each read of the child's stdout (at most 65507 bytes), or
    with ``--lines`` each line, is sent as one datagram (as ``ncat -u -e``).
    There is no end of input on a datagram channel (but a message-mode
    peer's close): the child runs until it exits, or ``-i`` stops it.

When a session ends and what happens to the child
    A session ends when the child's output has ended and either the peer's
    has too or the child has exited; or when the connection breaks; with the
    socket passed, when the child exits or the socket hangs up. Then the
    child's stdin and stdout are closed; a child still running gets
    :data:`GRACE` seconds to exit, then ``SIGTERM``, then after
    :data:`KILL_AFTER` seconds ``SIGKILL``. When the command stops (Ctrl-C,
    a signal, the end of a ``SIGTERM`` drain, ``-i``) the same ``SIGTERM``
    then ``SIGKILL`` come at once. Both go to the child's process group: the
    child leads one of its own, so a shell's pipeline goes with it, and a
    terminal's Ctrl-C reaches only us (we then stop the children). The child
    is always waited for (no zombie); it inherits no descriptor of ours but
    its stdin, stdout and stderr (``close_fds``), so no listener or other
    connection leaks into it.

What is logged
    The child's end: one line at ``-v``, always (a warning) when it exited
    with a non-zero status or a signal on its own or was killed after its
    session ended; a child stopped because the command stopped is noted at
    ``-v`` only. Its stderr is ours.

The environment (see :func:`child_environment`)
    ``CONDUIT_REMOTE_ADDR``, ``CONDUIT_REMOTE_PORT``, ``CONDUIT_LOCAL_ADDR``,
    ``CONDUIT_LOCAL_PORT``, ``CONDUIT_PROTO`` and the same under ncat's
    ``NCAT_`` names, plus ``CONDUIT_TRANSPORT`` (the URL scheme) and, for unix
    sockets, ``CONDUIT_PEER_PID``/``_UID``/``_GID`` when the kernel gave them.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from functools import partial
from typing import Final

import trio

from .._connection import CommunicationInfo, Connection, DatagramConnection, StreamConnection
from ._exec_args import ExecSpec
from ._report import BROKEN
from ._stdio import CHUNK, DATAGRAM_CHUNK, kernel_socket, read_pieces

__all__ = ["CANNOT_RUN", "GRACE", "KILL_AFTER", "child_environment", "exit_status", "first_of", "run_exec"]

_log = logging.getLogger("trio_conduit.cli")

#: Seconds a child still running when its session ended gets before ``SIGTERM``.
GRACE: Final = 2.0
#: Seconds between ``SIGTERM`` and ``SIGKILL``.
KILL_AFTER: Final = 2.0
#: The status when the program could not be started at all (as a shell's 127).
CANNOT_RUN: Final = 127

#: ncat's NCAT_PROTO values for the transports that have one; others get their scheme upper-cased.
_PROTO: Final = {"tcp": "TCP", "tls": "TCP", "udp": "UDP", "dtls": "UDP", "sctp": "SCTP", "tls+sctp": "SCTP"}
_ADDRESS_NAMES: Final = ("REMOTE_ADDR", "REMOTE_PORT", "LOCAL_ADDR", "LOCAL_PORT", "PROTO")
_OURS: Final = frozenset(
    [f"{prefix}_{name}" for prefix in ("CONDUIT", "NCAT") for name in _ADDRESS_NAMES]
    + ["CONDUIT_TRANSPORT", "CONDUIT_PEER_PID", "CONDUIT_PEER_UID", "CONDUIT_PEER_GID"]
)


# ---------------------------------------------------------------------------
# the environment
# ---------------------------------------------------------------------------


def _host_port(address: object) -> tuple[str, str | None]:
    """An address as the (ADDR, PORT) pair of the environment; a path has no port."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), str(address[1])
    if isinstance(address, bytes):  # an abstract unix name, as the kernel gives it
        return "@" + address.lstrip(b"\0").decode(errors="replace"), None
    if isinstance(address, str):
        return ("@" + address[1:] if address.startswith("\0") else address), None
    return "", None


def child_environment(info: CommunicationInfo, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ``base`` (default ours) with the connection's addresses.

    ``*_ADDR``: the host (IPv6 without brackets), the vsock CID, or the unix
    socket's path (``@name`` for an abstract one; empty for an unnamed
    client socket, the usual case for the peer). ``*_PORT``: the port, or
    the vsock port; unset for unix sockets. ``*_PROTO``: ``TCP``, ``UDP`` or
    ``SCTP`` as ncat sets it (TLS over tcp is ``TCP``), else the scheme
    upper-cased (``UNIX``, ``VSOCK``, ``UDT``). Any of these names already in
    ``base`` is dropped first, so a child never sees a stale value (conduit
    itself run by ``ncat -e``).
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _OURS}
    facts: dict[str, str | None] = {}
    facts["REMOTE_ADDR"], facts["REMOTE_PORT"] = _host_port(info.remote)
    facts["LOCAL_ADDR"], facts["LOCAL_PORT"] = _host_port(info.local)
    facts["PROTO"] = _PROTO.get(info.transport, info.transport.upper())
    for name, value in facts.items():
        if value is not None:
            env[f"CONDUIT_{name}"] = env[f"NCAT_{name}"] = value
    env["CONDUIT_TRANSPORT"] = info.transport
    if info.peer_credentials is not None:
        creds = info.peer_credentials
        env |= {
            "CONDUIT_PEER_PID": str(creds.pid),
            "CONDUIT_PEER_UID": str(creds.uid),
            "CONDUIT_PEER_GID": str(creds.gid),
        }
    return env


# ---------------------------------------------------------------------------
# the child's end
# ---------------------------------------------------------------------------


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: the status, or 128 + N for signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def _describe(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


def _signal_group(process: trio.Process, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signum)


async def _stop(process: trio.Process) -> None:
    """``run_process``'s ``deliver_cancel``: ``SIGTERM`` to the child's process group, then
    ``SIGKILL`` after :data:`KILL_AFTER` s if the child is still there."""
    _signal_group(process, signal.SIGTERM)
    with trio.move_on_after(KILL_AFTER):
        await process.wait()
        return
    _signal_group(process, signal.SIGKILL)


@contextmanager
def _lent(sock: trio.socket.SocketType) -> Iterator[int]:
    """The socket's descriptor in blocking mode while the child has it; non-blocking again after."""
    fd = sock.fileno()
    os.set_blocking(fd, True)
    try:
        yield fd
    finally:
        with suppress(OSError):  # already closed (the pool closed it): nothing to restore
            os.set_blocking(fd, False)


async def _hang_up(fd: int) -> None:
    """Return when the socket ``fd`` is reset or closed both ways (``EPOLLHUP``/``EPOLLERR``).

    An epoll set of our own with an empty event mask reports only those two,
    so the data the child reads and writes never wakes us.
    """
    ep = select.epoll(1)
    try:
        ep.register(fd, 0)
        await trio.lowlevel.wait_readable(ep)
    finally:
        ep.close()


# ---------------------------------------------------------------------------
# pipes
# ---------------------------------------------------------------------------


class _Session:
    """The pipe relay between a connection and a child (see the module doc for when it ends).

    Errors of the connection end the session (``broken`` says which); they are not raised.
    """

    def __init__(self, conn: Connection, process: trio.Process, *, lines: bool) -> None:
        self.conn = conn
        self.process = process
        self.lines = lines
        self.peer_done = trio.Event()
        self.broken: BaseException | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._guarded, self._input)
            await self._guarded(self._output)
            # The output ended: the session is over once the peer's input is too, or the child exited.
            await first_of(self.peer_done.wait, self.process.wait)
            nursery.cancel_scope.cancel()

    async def _guarded(self, part: Callable[[], Awaitable[None]]) -> None:
        try:
            await part()
        except BROKEN as exc:
            self.broken = exc
            self._scope.cancel()

    async def _input(self) -> None:
        """The connection into the child's stdin; its end closes the child's stdin."""
        stdin = self.process.stdin
        assert stdin is not None
        async with stdin:
            conn = self.conn
            try:
                if isinstance(conn, DatagramConnection):
                    async for message in conn:
                        await _to_child(stdin, message)
                elif isinstance(conn, StreamConnection):
                    while data := await conn.receive_some(CHUNK):
                        await _to_child(stdin, data)
            except _ChildClosedStdin:
                await trio.sleep_forever()  # leave the peer's bytes unread; the other way goes on
        self.peer_done.set()

    async def _output(self) -> None:
        """The child's stdout into the connection; its end half-closes the connection where it can."""
        stdout = self.process.stdout
        assert stdout is not None
        async with stdout:
            conn = self.conn
            if isinstance(conn, DatagramConnection):
                await read_pieces(stdout, conn.send, lines=self.lines, chunk=DATAGRAM_CHUNK)
            elif isinstance(conn, StreamConnection):
                while data := await stdout.receive_some(CHUNK):
                    await conn.send_all(data)
                if isinstance(conn, trio.abc.HalfCloseableStream):
                    await conn.send_eof()


class _ChildClosedStdin(Exception):
    pass


async def _to_child(stdin: trio.abc.SendStream, data: bytes | bytearray) -> None:
    try:
        await stdin.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _ChildClosedStdin from exc


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns (the others are cancelled)."""
    async with trio.open_nursery() as nursery:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)


async def _reap(process: trio.Process, run_scope: trio.CancelScope) -> bool:
    """Give a child whose session ended :data:`GRACE` seconds, then stop it (``run_scope``'s cancel).

    True if it had to be stopped.
    """
    with trio.move_on_after(GRACE):
        await process.wait()
        return False
    run_scope.cancel()  # run_process delivers SIGTERM, then SIGKILL, and waits
    return True


# ---------------------------------------------------------------------------
# a session
# ---------------------------------------------------------------------------


async def run_exec(conn: Connection, spec: ExecSpec, *, zero_copy: bool = True, lines: bool = False) -> int:
    """Run ``spec`` for ``conn`` until the session ends (see the module doc); the child's exit status.

    The status is as a shell gives it: 0-255, or 128 + N when signal N
    ended the child; :data:`CANNOT_RUN` (127) if it could not be started.
    Errors of the connection end the session and are not raised; a
    cancellation stops the child (``SIGTERM``, then ``SIGKILL``) before it
    propagates.
    """
    sock = kernel_socket(conn, zero_copy=zero_copy) if isinstance(conn, StreamConnection) else None
    start = partial(
        trio.run_process,
        spec.argv,
        check=False,
        env=child_environment(conn.info),
        close_fds=True,
        process_group=0,
        deliver_cancel=_stop,
    )
    process: trio.Process | None = None
    stopped = False
    try:
        with _lent(sock) if sock is not None else nullcontext(-1) as fd:
            async with trio.open_nursery() as nursery:
                bound = subprocess.PIPE if fd < 0 else fd
                try:
                    process = await nursery.start(partial(start, stdin=bound, stdout=bound))
                except OSError as exc:
                    _log.warning("conn #%d: cannot run %s: %s", conn.id, spec, exc)
                    return CANNOT_RUN
                assert process is not None
                if fd >= 0:
                    await first_of(process.wait, partial(_hang_up, fd))
                else:
                    session = _Session(conn, process, lines=lines)
                    await session.run()
                    if session.broken is not None:
                        why = str(session.broken) or type(session.broken).__name__
                        _log.info("conn #%d: %s: the connection ended: %s", conn.id, spec, why)
                stopped = await _reap(process, nursery.cancel_scope)
    except BaseException:
        if process is not None and process.returncode is not None:
            _log.info(
                "conn #%d: %s (pid %d) %s as the command stopped",
                conn.id,
                spec,
                process.pid,
                _describe(process.returncode),
            )
        raise
    code = process.returncode
    assert code is not None
    level = logging.INFO if code == 0 else logging.WARNING
    how = f" ({GRACE:g} s after its session ended)" if stopped else ""
    _log.log(level, "conn #%d: %s (pid %d) %s%s", conn.id, spec, process.pid, _describe(code), how)
    return exit_status(code)
