"""Standard input and output for ``conduit connect`` / ``conduit listen``.

What kind of file each standard stream is decides how it is read or written:

* a **pipe**: its buffer is grown to 1 MiB (``F_SETPIPE_SZ``; failure is
  ignored) and, when the connection is a plain kernel socket, data moves with
  ``splice(2)`` between the pipe and the socket without passing through
  Python; otherwise a :class:`trio.lowlevel.FdStream` on a duplicate of the fd;
* a **regular file**: as stdin, ``sendfile(2)`` into a plain kernel socket,
  else an ``FdStream`` (reads and writes of regular files never block);
* a **terminal**: blocking reads and writes in a worker thread, so that the
  terminal's open file description (shared with the shell, and with stdout
  and stderr) is never switched to non-blocking mode;
* ``/dev/null`` as stdout: ``splice(2)`` through a pipe of our own (nothing
  is copied at all), as for regular files;
* anything else (a socket, a character device): an ``FdStream``.

A closed standard descriptor is reopened on ``/dev/null`` before anything
else runs (:func:`trio_conduit.cli._startup.reserve_standard_fds`), so that no socket takes its number.

The zero-copy paths are used only when the connection is exactly the core's
kernel-socket stream (a subclass may transform the bytes, a TLS layer surely
does), when ``DEBUG_ALL`` tracing is off (it traces every read and write
through the connection), and not with ``--no-splice``. When the kernel
refuses ``splice``/``sendfile`` on the first call, nothing has moved and the
plain path takes over.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

import trio

from .._connection import Connection
from .._socket_stream import HalfCloseableSocketStream, SocketStream
from .._trace import DEBUG_ALL
from .._trace import logger as _trace_logger

__all__ = [
    "CHUNK",
    "DATAGRAM_CHUNK",
    "FdKind",
    "Output",
    "OutputClosed",
    "StdFd",
    "copy_socket_to_output",
    "kernel_socket",
    "open_input",
    "probe",
    "read_pieces",
    "sendfile_to_socket",
    "splice_from_socket",
    "splice_from_socket_via_pipe",
    "splice_to_socket",
]

#: Bytes per read of stdin or of a stream connection.
CHUNK: Final = 1 << 20
#: Bytes per stdin read that becomes one datagram: the largest UDP/IPv4 payload.
DATAGRAM_CHUNK: Final = 65507
#: What pipes on stdin/stdout are grown to (the default ``pipe-max-size``).
PIPE_SIZE: Final = 1 << 20
_SENDFILE_CHUNK: Final = 8 << 20
# errnos that mean "splice/sendfile cannot be used between these two files".
_NO_ZERO_COPY: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV})
_SPLICE_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class OutputClosed(Exception):
    """Standard output went away (``EPIPE``): the command stops quietly."""


class FdKind(enum.Enum):
    """What a standard stream's file descriptor refers to."""

    PIPE = "pipe"
    FILE = "file"
    TTY = "tty"
    NULL = "null"
    OTHER = "other"


class StdFd(NamedTuple):  # not a dataclass: making one costs start-up time
    """A standard stream: its descriptor number and what kind of file it is."""

    fd: int
    kind: FdKind


def probe(fd: int) -> StdFd:
    """Classify ``fd`` (0 or 1); a pipe's buffer is grown to :data:`PIPE_SIZE`."""
    st = os.fstat(fd)
    mode = st.st_mode
    if stat.S_ISFIFO(mode):
        _grow_pipe(fd)
        return StdFd(fd, FdKind.PIPE)
    if stat.S_ISREG(mode):
        return StdFd(fd, FdKind.FILE)
    if os.isatty(fd):
        return StdFd(fd, FdKind.TTY)
    if stat.S_ISCHR(mode) and st.st_rdev == _devnull_rdev():
        return StdFd(fd, FdKind.NULL)
    return StdFd(fd, FdKind.OTHER)


def _devnull_rdev() -> int | None:
    try:
        return os.stat(os.devnull).st_rdev
    except OSError:
        return None


def _grow_pipe(fd: int) -> None:
    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # EPERM above pipe-max-size for unprivileged users, EBUSY: keep what we have


def kernel_socket(conn: Connection, *, zero_copy: bool) -> trio.socket.SocketType | None:
    """The kernel socket under ``conn`` if bytes may bypass the connection object, else ``None``."""
    if not zero_copy or _trace_logger.isEnabledFor(DEBUG_ALL):
        return None
    if type(conn) is HalfCloseableSocketStream or type(conn) is SocketStream:
        return conn.socket
    return None


# ---------------------------------------------------------------------------
# plain streams over the standard descriptors
# ---------------------------------------------------------------------------


class _ThreadReader(trio.abc.ReceiveStream):
    """Blocking reads in a worker thread (terminals); EIO (hang-up) reads as end of input."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await trio.to_thread.run_sync(
                os.read, self._fd, max_bytes or CHUNK, abandon_on_cancel=True
            )
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise trio.BrokenResourceError(f"cannot read standard input: {exc}") from exc

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _ThreadWriter(trio.abc.SendStream):
    """Blocking writes in a worker thread (terminals)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await trio.to_thread.run_sync(self._write_all, bytes(data))
        except OSError as exc:
            raise trio.BrokenResourceError(f"cannot write standard output: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def open_input(std: StdFd) -> trio.abc.ReceiveStream:
    """A stream that reads ``std`` (stdin); closing it leaves fd 0 open."""
    if std.kind is FdKind.TTY:
        return _ThreadReader(std.fd)
    return trio.lowlevel.FdStream(os.dup(std.fd))


async def read_pieces(
    inp: trio.abc.ReceiveStream, send: Callable[[bytes], Awaitable[None]], *, lines: bool, chunk: int
) -> None:
    """Call ``send`` with each piece of ``inp`` until its end: what one read gives (up to ``chunk``),
    or each line (stdin; ``--exec``'s child's output to datagrams)."""
    if not lines:
        while data := await inp.receive_some(chunk):
            await send(bytes(data))
        return
    pending = bytearray()  # a line's start, from earlier reads: each byte is looked at once
    while data := await inp.receive_some(CHUNK):
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            pending += data[start : end + 1]
            await send(bytes(pending))
            pending.clear()
            start = end + 1
        pending += data[start:]
    if pending:
        await send(bytes(pending))


def _open_output(std: StdFd) -> trio.abc.SendStream:
    if std.kind is FdKind.TTY:
        return _ThreadWriter(std.fd)
    return trio.lowlevel.FdStream(os.dup(std.fd))


class Output:
    """Standard output shared by every task that writes to it.

    Writes are serialized (one connection's chunk is never cut by another's);
    a closed pipe raises :class:`OutputClosed`. The stream is opened on first
    use, so a command that never writes leaves fd 1 untouched.
    """

    def __init__(self, std: StdFd) -> None:
        self.std = std
        self._stream: trio.abc.SendStream | None = None
        self._lock = trio.Lock()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``; :class:`OutputClosed` if stdout is gone."""
        async with self._lock:
            if self._stream is None:
                self._stream = _open_output(self.std)
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise OutputClosed(str(exc)) from exc

    async def aclose(self) -> None:
        """Close our duplicate of fd 1 (fd 1 itself stays open)."""
        if self._stream is not None:
            await self._stream.aclose()

    async def __aenter__(self) -> Output:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------
# zero-copy paths
# ---------------------------------------------------------------------------


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """An OS error on the connection's socket, as the connection itself would report it."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("this connection was closed")
    return trio.BrokenResourceError(f"connection broken: {exc}")


async def _zero_copy(
    move: Callable[[], int], wait: Callable[[], Awaitable[None]], *, epipe_closes_output: bool = False
) -> int | None:
    """Call ``move`` (one ``splice(2)`` or ``sendfile(2)``: the bytes moved, 0 at the end) until the end.

    Returns the total, or ``None`` if the kernel cannot do it between these
    two (refused on the first call: nothing was moved). ``BlockingIOError``
    awaits ``wait`` and tries again. With ``epipe_closes_output``, ``EPIPE``
    (nobody reads standard output any more) raises :class:`OutputClosed`;
    other errors are the socket's: ``trio.BrokenResourceError`` (see :func:`_broken`).
    """
    total = 0
    while True:
        try:
            n = move()
        except BlockingIOError:
            await wait()
            continue
        except OSError as exc:
            if epipe_closes_output and exc.errno == errno.EPIPE:
                raise OutputClosed("standard output is closed") from exc
            if total == 0 and exc.errno in _NO_ZERO_COPY:
                return None
            raise _broken(exc) from exc
        if n == 0:
            await trio.lowlevel.checkpoint()
            return total
        total += n
        await trio.lowlevel.checkpoint()


async def splice_to_socket(in_fd: int, sock: trio.socket.SocketType) -> int | None:
    """Move a pipe's bytes into ``sock`` with ``splice(2)`` until the pipe's end of file.

    Returns the number of bytes moved, or ``None`` if the kernel cannot splice
    between these two (nothing was moved). Socket errors raise
    ``trio.BrokenResourceError``.
    """
    out_fd = sock.fileno()

    async def wait() -> None:
        # Either the pipe is empty or the socket's buffer is full: wait for both to be ready.
        await trio.lowlevel.wait_readable(in_fd)
        await trio.lowlevel.wait_writable(sock)

    return await _zero_copy(lambda: os.splice(in_fd, out_fd, CHUNK, flags=_SPLICE_FLAGS), wait)


async def sendfile_to_socket(in_fd: int, sock: trio.socket.SocketType) -> int | None:
    """Send a regular file from its current offset into ``sock`` with ``sendfile(2)``.

    Returns the number of bytes sent, or ``None`` if the kernel refused on the
    first call (nothing was sent).
    """
    out_fd = sock.fileno()

    async def wait() -> None:
        await trio.lowlevel.wait_writable(sock)

    return await _zero_copy(lambda: os.sendfile(out_fd, in_fd, None, _SENDFILE_CHUNK), wait)


async def splice_from_socket(sock: trio.socket.SocketType, out_fd: int) -> int | None:
    """Move ``sock``'s bytes into a pipe with ``splice(2)`` until the peer's end of stream.

    Returns the number of bytes moved, or ``None`` if the kernel cannot splice
    between these two (nothing was moved). ``EPIPE`` (nobody reads the pipe
    any more) raises :class:`OutputClosed`; socket errors
    ``trio.BrokenResourceError``.
    """
    in_fd = sock.fileno()

    async def wait() -> None:
        await trio.lowlevel.wait_readable(sock)
        await trio.lowlevel.wait_writable(out_fd)

    return await _zero_copy(
        lambda: os.splice(in_fd, out_fd, CHUNK, flags=_SPLICE_FLAGS), wait, epipe_closes_output=True
    )


async def splice_from_socket_via_pipe(sock: trio.socket.SocketType, output: Output) -> int | None:
    """Move ``sock``'s bytes to a regular file or ``/dev/null`` through a pipe of our own.

    ``splice(2)`` needs a pipe at one end: socket → our pipe → stdout, with no
    copy through user space (none at all for ``/dev/null``). Writes to these
    files do not wait on a reader, so the second splice is a plain blocking
    call. If the kernel refuses the first time, what was already taken from
    the socket is written out the plain way and ``None`` returned: the caller
    goes on with :func:`copy_socket_to_output`.
    """
    in_fd, out_fd = sock.fileno(), output.std.fd
    rd, wr = os.pipe2(os.O_CLOEXEC)
    try:
        _grow_pipe(wr)
        total = 0
        while True:
            try:
                n = os.splice(in_fd, wr, CHUNK, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if total == 0 and exc.errno in _NO_ZERO_COPY:
                    return None
                raise _broken(exc) from exc
            if n == 0:
                await trio.lowlevel.checkpoint()
                return total
            left = n
            while left:
                try:
                    left -= os.splice(rd, out_fd, left, flags=os.SPLICE_F_MOVE)
                except OSError as exc:
                    if exc.errno == errno.EPIPE:
                        raise OutputClosed("standard output is closed") from exc
                    if total == 0 and exc.errno in _NO_ZERO_COPY:
                        while left:
                            data = os.read(rd, left)
                            left -= len(data)
                            await output.write(data)
                        return None
                    raise
            total += n
            await trio.lowlevel.checkpoint()
    finally:
        os.close(rd)
        os.close(wr)


async def copy_socket_to_output(sock: trio.socket.SocketType, output: Output) -> int:
    """Read ``sock`` into one reused buffer and write it out, until the peer's end of stream."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        try:
            n = await sock.recv_into(buf)
        except OSError as exc:
            raise _broken(exc) from exc
        if n == 0:
            return total
        total += n
        await output.write(view[:n])
