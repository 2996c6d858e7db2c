"""``conduit listen --workers N``: N worker processes sharing one port, and their supervisor.

Each worker is an ordinary ``conduit listen`` (its own process, its own
pool) with ``-o reuse_port=1``: every listening socket sets ``SO_REUSEPORT``
and the kernel spreads new connections across them by a hash of the
addresses. The supervisor

* resolves port 0 first: it binds a socket of its own with ``SO_REUSEPORT``
  (bound, never listening, so it takes no connections) and gives every worker
  that port, for as long as it runs;
* restarts a worker that dies (a worker that fails at start-up — a usage
  error, or twice within a second of starting — ends the command with its
  status instead, so a port that is taken does not make it spin);
* on SIGTERM passes SIGTERM on to every worker, which drains (see
  :class:`~trio_conduit.cli._relay.Drain`), and exits 0 once all have; on
  SIGINT (or a second SIGTERM) stops them at once.

Standard input goes to no worker (``/dev/null``); their output and errors are
the supervisor's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Final

import trio

from .._address import Address, split_url
from .._connection import Kind
from .._errors import AddressError
from .._plugins import global_scope
from ._relay import announce

__all__ = ["Supervisor"]

_log = logging.getLogger("trio_conduit.cli")

#: A worker that ends sooner than this after it started failed at start-up.
QUICK_EXIT: Final = 1.0
#: How long a worker stopped at once (SIGINT) may take before it is killed.
STOP_GRACE: Final = 5.0


def _say(line: str) -> None:
    try:
        print(f"conduit: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class Supervisor:
    """Runs ``args.workers`` copies of the ``conduit listen`` in ``argv`` on one port."""

    def __init__(self, args: argparse.Namespace, url: str, argv: Sequence[str]) -> None:
        self.args = args
        self.url = url
        self.argv = list(argv)
        self.requested = False  # SIGTERM seen: draining
        self.status = 0
        self._procs: dict[int, trio.Process] = {}
        self._nursery: trio.Nursery | None = None

    def _address(self) -> tuple[Address, Kind]:
        parts = split_url(self.url)
        transport = global_scope().transport_for(parts.scheme)
        if transport is None:
            raise AddressError(f"{parts.text!r}: unknown scheme {parts.scheme!r}")
        address = transport.parse_address(parts, listening=True)
        if address.port is None or address.host is None:
            raise AddressError(f"{address}: --workers shares a port: it needs a host:port URL")
        return address, transport.kind

    def _reserve(self, address: Address, kind: Kind) -> socket.socket:
        """A bound (not listening) SO_REUSEPORT socket holding the port for the workers."""
        socktype = socket.SOCK_DGRAM if kind is Kind.DATAGRAM else socket.SOCK_STREAM
        host = address.host or None
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, address.port, type=socktype, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socktype)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    def worker_argv(self, port: int) -> list[str]:
        """The worker's ``conduit`` arguments: ours without ``--workers``, on ``port``, reuse_port on."""
        argv: list[str] = []
        skip = False
        replaced = False
        for arg in self.argv:
            if skip:
                skip = False
                continue
            if arg == "--workers":
                skip = True
                continue
            if arg.startswith("--workers="):
                continue
            if arg == self.args.url and not replaced:
                arg = _with_port(arg, port)
                replaced = True
            argv.append(arg)
        return [*argv, "-o", "reuse_port=1"]

    async def run(self) -> int:
        address, kind = self._address()
        reserved = self._reserve(address, kind)
        with reserved:
            port = reserved.getsockname()[1]
            announce(address, dataclasses.replace(address, port=port), self.args.verbose)
            command = [sys.executable, "-m", "trio_conduit", *self.worker_argv(port)]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for number in range(1, self.args.workers + 1):
                    nursery.start_soon(self._keep, number, command)
        return self.status

    async def start(self) -> None:
        """SIGTERM: every worker drains; the supervisor then exits 0."""
        self.requested = True
        for proc in list(self._procs.values()):
            proc.send_signal(signal.SIGTERM)

    def _draining(self) -> bool:
        return self.requested

    async def _keep(self, number: int, command: list[str]) -> None:
        quick = 0
        while not self._draining():
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL)
            self._procs[number] = proc
            if self.args.verbose:
                _say(f"worker {number} started (pid {proc.pid})")
            if self._draining():
                proc.send_signal(signal.SIGTERM)
            try:
                status = await proc.wait()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await _stop(proc)
                raise
            finally:
                del self._procs[number]
            if self._draining():
                return
            quick = quick + 1 if trio.current_time() - started < QUICK_EXIT else 0
            if status == 2 or quick >= 2:
                _say(f"worker {number} failed at start-up (status {status}): stopping")
                self.status = status if status > 0 else 1
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                return
            _say(f"worker {number} (pid {proc.pid}) ended with status {status}: restarting it")
            await trio.sleep(0.1 * quick)


async def _stop(proc: trio.Process) -> None:
    """Stop ``proc`` at once (SIGINT, then SIGKILL after :data:`STOP_GRACE`)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        with trio.move_on_after(STOP_GRACE):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _with_port(url: str, port: int) -> str:
    """``url`` with its port replaced by ``port``."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
