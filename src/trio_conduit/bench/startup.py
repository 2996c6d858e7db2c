"""How long ``conduit`` takes to start and do one small thing: ``startup``.

Each figure is one short command, run as a fresh process, timed from spawn
to exit (wall clock):

* ``version``: ``conduit --version``, against ``ncat --version``;
* ``tcp``: ``conduit connect tcp://127.0.0.1:PORT`` sending one byte (stdin
  holds ``x``; the listener reads to the end and closes), against ``ncat
  127.0.0.1 PORT`` doing the same;
* ``tls``: ``conduit connect tls://localhost:PORT --cafile CA`` likewise
  (verified handshake, one byte, close), against ``ncat --ssl --ssl-verify
  --ssl-trustfile CA --send-only localhost PORT``;
* ``python_import_trio``: ``python -c "import trio"`` with the same
  interpreter, the floor any Trio program pays.

Every figure is compared with ``python -c "import trio"`` and with ncat's
(when ncat is installed). The commands run in turn, the order rotating each
round, so a noisy machine slows all alike; the medians of at least 7 rounds
(``--repeat``, if larger) are reported. One untimed round comes first, so
that Python has written its bytecode caches (``PYTHONDONTWRITEBYTECODE`` is
removed from the commands' environment: an installed package has its
bytecode, and compiling our sources at every start is not what users pay).

The listeners live in this process, in threads: a TCP one that reads each
connection to its end and closes it, and a TLS one (Python's :mod:`ssl`)
that does the same after the handshake. ``conduit`` is the console script
next to this interpreter (``python -m trio_conduit`` if there is none).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio_conduit

from ._runner import certificate_files

__all__ = ["STARTUP"]

#: The fewest rounds the medians come from.
MIN_ROUNDS = 7
#: How long a listener waits for a client's next bytes before it gives up on it.
_CLIENT_TIMEOUT = 10.0


def conduit_command() -> list[str]:
    """``conduit`` as users run it: the console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("conduit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trio_conduit"]


def _drain(conn: socket.socket) -> None:
    """Read ``conn`` to its end (TLS: the client's close_notify, then ours), then close it."""
    with conn:
        conn.settimeout(_CLIENT_TIMEOUT)
        try:
            while conn.recv(65536):
                pass
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()
        except (OSError, ssl.SSLError):
            pass  # a reset or a TLS error: the client is gone either way


@contextmanager
def _listener(context: ssl.SSLContext | None) -> Iterator[int]:
    """A loopback listener in a thread (TLS with ``context``); yields its port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    port: int = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the benchmark is over
            if context is None:
                _drain(conn)
                continue
            conn.settimeout(_CLIENT_TIMEOUT)
            try:
                tls = context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                continue
            _drain(tls)

    thread = threading.Thread(target=serve, name="startup listener", daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=_CLIENT_TIMEOUT)


def _seconds(argv: list[str], env: dict[str, str]) -> float:
    """Run ``argv`` with ``x`` on stdin and output discarded; its wall time. A failure raises."""
    start = time.perf_counter()
    done = subprocess.run(
        argv, input=b"x", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=60
    )
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{argv!r} exited with {done.returncode}: {done.stderr.decode(errors='replace')}")
    return elapsed


def commands(tcp_port: int, tls_port: int, ca: str, ncat: str) -> dict[str, list[str]]:
    """Figure name → the command it times (ncat's only when ``ncat`` is a path)."""
    conduit = conduit_command()
    found = {
        "python_import_trio": [sys.executable, "-c", "import trio"],
        "conduit_version": [*conduit, "--version"],
        "conduit_tcp": [*conduit, "connect", f"tcp://127.0.0.1:{tcp_port}"],
        "conduit_tls": [*conduit, "connect", f"tls://localhost:{tls_port}", "--cafile", ca],
    }
    if ncat:
        found["ncat_version"] = [ncat, "--version"]
        found["ncat_tcp"] = [ncat, "127.0.0.1", str(tcp_port)]
        # ncat checks DNS names only, not IP addresses; --send-only: it would not close after stdin
        found["ncat_tls"] = [ncat, "--ssl", "--ssl-verify", "--ssl-trustfile", ca, "--send-only"]
        found["ncat_tls"] += ["localhost", str(tls_port)]
    return found


def rounds(
    run: Callable[[list[str]], float], cmds: dict[str, list[str]], repeat: int
) -> dict[str, list[float]]:
    """``repeat`` timed rounds of every command, the order rotating each round, after one untimed round."""
    names = list(cmds)
    for name in names:
        run(cmds[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(run(cmds[name]))
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    """Medians, and each conduit figure's ratios to ``import trio`` and to ncat's same figure."""
    medians = {name: statistics.median(runs) for name, runs in times.items()}
    out: dict[str, Any] = {"median_seconds": medians, "runs_seconds": times}
    base = medians["python_import_trio"]
    ratios: dict[str, float] = {}
    for what in ("version", "tcp", "tls"):
        mine = medians[f"conduit_{what}"]
        ratios[f"{what}_vs_import_trio"] = mine / base
        if f"ncat_{what}" in medians:
            ratios[f"{what}_vs_ncat"] = mine / medians[f"ncat_{what}"]
    out["ratios"] = ratios
    return out


def run_startup(repeat: int) -> dict[str, Any]:
    """The ``startup`` figures (see the module docstring)."""
    ncat = shutil.which("ncat") or ""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="conduit-bench-") as tmp:
        files = certificate_files(tmp)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files["cert"], files["key"])
        with _listener(None) as tcp_port, _listener(context) as tls_port:
            cmds = commands(tcp_port, tls_port, files["ca"], ncat)
            times = rounds(lambda argv: _seconds(argv, env), cmds, max(repeat, MIN_ROUNDS))
    out = summarize(times)
    out["conduit"] = conduit_command()
    return out


def _run(options: argparse.Namespace) -> dict[str, Any]:
    return {"startup": run_startup(options.repeat)}


def _format(results: dict[str, Any]) -> list[str]:
    r = results["startup"]
    medians, ratios = r["median_seconds"], r["ratios"]
    lines = [f"{'startup':24} python -c 'import trio' {medians['python_import_trio'] * 1e3:7.1f} ms"]
    for what in ("version", "tcp", "tls"):
        line = (
            f"{'':24} conduit {what:8} {medians[f'conduit_{what}'] * 1e3:7.1f} ms"
            f"   x{ratios[f'{what}_vs_import_trio']:.2f} import trio"
        )
        if f"{what}_vs_ncat" in ratios:
            line += f"   ncat {medians[f'ncat_{what}'] * 1e3:7.1f} ms   x{ratios[f'{what}_vs_ncat']:.2f} ncat"
        lines.append(line)
    return lines


STARTUP = trio_conduit.Benchmark(
    "startup",
    "conduit --version / connect 1 byte over tcp and tls, vs python -c 'import trio' and ncat "
    f"(medians of at least {MIN_ROUNDS} rounds)",
    _run,
    _format,
)
