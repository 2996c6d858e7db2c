"""``conduit`` against ``ncat``: ``head -c | conduit connect`` into ``conduit listen > /dev/null``.

* ``cli_pipe`` (``cli``, or ``--cli``): over TCP, the sender's wall time,
  its start-up included; ``ncat`` doing the same when it is installed.
* ``tls_cli_pipe`` (part of ``tls`` with ``--cli``): over TLS against
  ``ncat --ssl``; also "once running", each tool's fixed cost (start,
  handshake, close: a 0-byte run) taken out.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from typing import Any

import trio_conduit

from ._runner import CONDUIT, free_port, pipe_seconds

__all__ = ["CLI", "pipe_line", "run_tls_pipe"]

_TOOLS = ("conduit", "ncat")


def _seconds(tool: str, ncat: str, size: int, files: dict[str, str] | None) -> float:
    """One pipe of ``size`` bytes through ``tool``: plain TCP, or TLS with ``files`` (cert, key, ca)."""
    port = free_port()
    if files is None and tool == "conduit":
        url = f"tcp://127.0.0.1:{port}"
        listen, connect = [*CONDUIT, "listen", "--keep-open", url], [*CONDUIT, "connect", url]
    elif files is None:
        listen = [ncat, "-l", "--keep-open", "127.0.0.1", str(port)]
        connect = [ncat, "--send-only", "127.0.0.1", str(port)]
    elif tool == "conduit":
        listen = [
            *CONDUIT,
            "listen",
            f"tls://127.0.0.1:{port}",
            "--cert",
            files["cert"],
            "--key",
            files["key"],
        ]
        connect = [*CONDUIT, "connect", f"tls://localhost:{port}", "--cafile", files["ca"]]
    else:
        listen = [ncat, "--ssl", "--ssl-cert", files["cert"], "--ssl-key", files["key"], "-l"]
        listen += ["127.0.0.1", str(port)]
        connect = [ncat, "--ssl", "--ssl-verify", "--ssl-trustfile", files["ca"], "--send-only"]
        connect += ["localhost", str(port)]  # ncat checks DNS names only, not IP addresses
    return pipe_seconds(listen, connect, port, size)


def _tools() -> tuple[str, list[str]]:
    """ncat's path ("" if not installed) and the tools to run."""
    ncat = shutil.which("ncat") or ""
    return ncat, [tool for tool in _TOOLS if tool == "conduit" or ncat]


def run_pipe(mib: int, repeat: int) -> dict[str, Any]:
    """``conduit connect | conduit listen`` against ``ncat`` doing the same, alternating."""
    ncat, tools = _tools()
    size = mib * 1024 * 1024
    runs: dict[str, list[float]] = {tool: [] for tool in _TOOLS}
    for _ in range(repeat):
        for tool in tools:
            runs[tool].append(_seconds(tool, ncat, size, None))
    out: dict[str, Any] = {"bytes": size, "runs_seconds": runs}
    out["conduit_mb_per_s"] = size / statistics.median(runs["conduit"]) / 1e6
    if runs["ncat"]:
        out["ncat_mb_per_s"] = size / statistics.median(runs["ncat"]) / 1e6
        out["ratio"] = out["conduit_mb_per_s"] / out["ncat_mb_per_s"]
    return out


def run_tls_pipe(mib: int, repeat: int, files: dict[str, str]) -> dict[str, Any]:
    """Each tool pipes ``mib`` MiB over TLS, and 0 MiB (its fixed cost: start, handshake, close), alternately.

    ``*_mb_per_s`` is end to end; ``*_bulk_mb_per_s`` the rate once running:
    the bytes over the difference of the two medians.
    """
    ncat, tools = _tools()
    size = mib * 1024 * 1024
    full: dict[str, list[float]] = {tool: [] for tool in _TOOLS}
    empty: dict[str, list[float]] = {tool: [] for tool in _TOOLS}
    for i in range(repeat):
        for amount in (size, 0) if i % 2 == 0 else (0, size):
            for tool in tools:
                (full if amount else empty)[tool].append(_seconds(tool, ncat, amount, files))
    out: dict[str, Any] = {"bytes": size, "runs_seconds": full, "runs_seconds_0_bytes": empty}
    for tool in _TOOLS:
        if full[tool]:
            t, t0 = statistics.median(full[tool]), statistics.median(empty[tool])
            out[f"{tool}_mb_per_s"] = size / t / 1e6
            out[f"{tool}_fixed_seconds"] = t0
            out[f"{tool}_bulk_mb_per_s"] = size / max(t - t0, 1e-9) / 1e6
    if full["ncat"]:
        out["ratio"] = out["conduit_mb_per_s"] / out["ncat_mb_per_s"]
        out["ratio_bulk"] = out["conduit_bulk_mb_per_s"] / out["ncat_bulk_mb_per_s"]
    return out


def pipe_line(name: str, r: dict[str, Any]) -> str:
    """A pipe's report: end to end, and (TLS) once running."""
    line = f"{name:24} conduit {r['conduit_mb_per_s']:9.1f} MB/s"
    if "ncat_mb_per_s" in r:
        line += f"   ncat {r['ncat_mb_per_s']:9.1f} MB/s   ratio {r['ratio']:.2f}"
    if "ratio_bulk" in r:
        line += (
            f"\n{'':24} once running (fixed cost {r['conduit_fixed_seconds']:.2f} s vs"
            f" {r['ncat_fixed_seconds']:.2f} s taken out): conduit"
            f" {r['conduit_bulk_mb_per_s']:.1f} MB/s   ncat {r['ncat_bulk_mb_per_s']:.1f} MB/s"
            f"   ratio {r['ratio_bulk']:.2f}"
        )
    return line


def _run(options: argparse.Namespace) -> dict[str, Any]:
    return {"cli_pipe": run_pipe(options.cli_mib, options.repeat)}


CLI = trio_conduit.Benchmark(
    "cli",
    "conduit connect | conduit listen against ncat (--cli-mib)",
    _run,
    lambda results: [pipe_line(name, r) for name, r in results.items()],
    default=False,
)
