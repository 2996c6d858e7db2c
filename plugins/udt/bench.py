"""UDT benchmarks: this implementation against the reference library, in the same run.

    python -m trio_conduit_plugins.udt.bench [--repeat 5] [--mib 1024] [--link] [--json]
    conduit bench --only udt [--only udt-link]   (through benchmarks(), the conduit_benchmarks hook)

* **loopback**: bulk transfer over 127.0.0.1, two CPU-pinned processes
  (receiver on one core, sender on the other), throughput measured at the
  receiver from its first byte to its last; every pairing of ours (stream
  mode, default options) and libudt's (``udtpeer``, the C++ peer of the
  interop tests) -- ours to ours, ours to libudt, libudt to ours, libudt to
  libudt -- in turn, the order rotated run by run; medians, and each
  pairing's ratio to the libudt pair.
* **link** (``--link``, root only): a 50 ms RTT, 1 % loss link built from
  two network namespaces joined by a TUN forwarder (``tunlink``), set up as
  ``netem delay 50ms loss 1%`` on the sender's egress would be: the data
  direction delayed 50 ms with Bernoulli loss and a 1000-packet queue
  (netem's default, which caps the link near 30 MB/s), the way back
  undelayed and lossless. Each
  contender sends for ``--link-seconds``; throughput at the receiver: the
  four pairings as on loopback (ours with its native control), our
  ``congestion=bbr`` to ours and to libudt, TCP cubic and TCP bbr.

* **rx-cost** (``python -m trio_conduit_plugins.udt.bench rx-cost ROUNDS BURST``): our
  receive path alone, on packets made in-process, with a mock clock -- deterministic, for
  ``valgrind --tool=callgrind`` (two runs: instructions per packet from the difference).

The C++ programs are built with g++ from ``tests/udt/peer/`` (``--peer-dir``;
by default looked up from the current directory, as nox runs from the
checkout) against Debian's libudt-dev. Contenders that cannot run are
reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_conduit import Benchmark

__all__ = ["benchmarks", "main", "run_udt_bench"]

_ME = [sys.executable, "-m", "trio_conduit_plugins.udt.bench"]
# Named after this process: two benchmarks running at once keep to their own namespaces
# and devices (a device name has at most 15 characters).
_NS_A, _NS_B = f"conduit-udt-a{os.getpid()}", f"conduit-udt-b{os.getpid()}"
_TUN_A, _TUN_B = f"cdua{os.getpid()}", f"cdub{os.getpid()}"
_ADDR_A, _ADDR_B = "10.77.0.1", "10.77.0.2"
#: The link's contenders, in the order they run.
LINK_CONTENDERS: tuple[str, ...] = (
    "conduit_udt",
    "conduit_to_libudt",
    "libudt_to_conduit",
    "libudt",
    "conduit_bbr",
    "conduit_bbr_to_libudt",
    "tcp_cubic",
    "tcp_bbr",
)


# ---------------------------------------------------------------------------
# workers (run as subprocesses)
# ---------------------------------------------------------------------------


async def _rx_cost(rounds: int, burst: int, clock: Any) -> None:
    """Our receiver's work, deterministically: ``rounds`` bursts of ``burst`` full-size data packets.

    A connection over loopback; then packets made here (not by our sender) are put into the
    listener's socket ``burst`` at a time from the client's socket, and each burst is read by
    the receiver's task and by the application before the next is sent. Run it twice under
    ``valgrind --tool=callgrind`` with different ``rounds``: the difference of the instruction
    counts over the difference of the packets is the receive path's cost per packet (socket
    reads, engine, ACKs, the application's reads), free of start-up and of the machine's load.
    trio's clock is a ``MockClock`` that moves 6 us per packet (the pace of the libudt pair),
    so timers (ACKs every 10 ms) fire per packet as they would at that speed, however slow
    the run.
    """
    import socket

    import trio

    import trio_conduit as conduit

    from ._driver import UDTStream
    from ._endpoint import Endpoint
    from ._engine import Config, State
    from ._packet import HEADER, MSG_FIRST, MSG_LAST

    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        where = (listener.address.host, listener.address.port)
        # the sending side: a sans-IO endpoint that only shakes hands, then raw packets
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        client = Endpoint(trio.current_time())
        session = client.connect(where, Config(), trio.current_time())
        with trio.fail_after(5):
            while session.state is State.CONNECTING:
                for data, addr, _seg in client.datagrams_to_send():
                    sock.sendto(data if not isinstance(data, list) else b"".join(data), addr)
                await trio.lowlevel.wait_readable(sock)
                data, addr = sock.recvfrom(65536)
                client.receive_datagram(data, addr, trio.current_time())
        for data, addr, _seg in client.datagrams_to_send():
            sock.sendto(data if not isinstance(data, list) else b"".join(data), addr)
        server = await listener.accept()
        assert isinstance(server, UDTStream)
        receiver = server.session.receiver
        dest = server.session.socket_id
        payload = bytes(server.session.payload_size)
        seq = receiver.next31
        got = 0
        for _ in range(rounds):
            clock.jump(burst * 6e-6)
            for _ in range(burst):
                sock.sendto(HEADER.pack(seq, MSG_FIRST | MSG_LAST, 0, dest) + payload, where)
                seq = (seq + 1) & 0x7FFFFFFF
            want = got + burst * len(payload)
            while got < want:
                got += len(await server.receive_some())
        print(json.dumps({"packets": rounds * burst, "bytes": got}))
        sock.close()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(server)


def _pin(cpu: int) -> None:
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})


def _worker(argv: list[str]) -> int:
    kind, role = argv[0], argv[1]
    cpu = int(argv[2])
    _pin(cpu)
    if kind == "udt":
        import trio

        if role == "server":
            trio.run(_udt_server, argv[3], argv[4])
        else:
            trio.run(_udt_client, argv[3], int(argv[4]), float(argv[5]), argv[6])
    elif kind == "tcp":
        if role == "server":
            _tcp_server(argv[3])
        else:
            _tcp_client(argv[3], int(argv[4]), float(argv[5]), argv[6])
    return 0


async def _udt_server(host: str, query: str) -> None:
    import trio_conduit as conduit

    async with conduit.open_pool() as pool:
        listener = await pool.listen(f"udt://{host}:0{query}")
        print(listener.address.port, flush=True)
        conn = await listener.accept()
        assert isinstance(conn, conduit.StreamConnection)  # udt:// without mode=message
        got, first, last = 0, 0.0, 0.0
        while True:
            try:
                chunk = await conn.receive_some()
            except Exception:  # a broken connection ends the measurement too
                break
            if not chunk:
                break
            last = time.perf_counter()
            if not got:
                first = last
            got += len(chunk)
        seconds = last - first
        print(
            json.dumps(
                {"bytes": got, "seconds": seconds, "mb_per_s": got / seconds / 1e6 if seconds else 0.0}
            )
        )


async def _udt_client(host: str, port: int, amount: float, query: str) -> None:
    """Send ``amount`` bytes (> 0) or for ``-amount`` seconds."""
    import trio

    import trio_conduit as conduit

    block = bytes(1 << 20)
    async with conduit.open_pool() as pool:
        conn = await pool.connect_stream(f"udt://{host}:{port}{query}")
        if amount > 0:
            left = int(amount)
            while left > 0:
                n = min(left, len(block))
                await conn.send_all(block if n == len(block) else block[:n])
                left -= n
        else:
            with trio.move_on_after(-amount):
                while True:
                    await conn.send_all(block)
        with trio.move_on_after(30):
            await conn.aclose()


def _tcp_server(host: str) -> None:
    import socket

    with socket.socket() as ls:
        ls.bind((host, 0))
        ls.listen()
        print(ls.getsockname()[1], flush=True)
        conn, _ = ls.accept()
        got, first, last = 0, 0.0, 0.0
        with conn:
            while chunk := conn.recv(1 << 20):
                last = time.perf_counter()
                if not got:
                    first = last
                got += len(chunk)
        seconds = last - first
        print(
            json.dumps(
                {"bytes": got, "seconds": seconds, "mb_per_s": got / seconds / 1e6 if seconds else 0.0}
            )
        )


def _tcp_client(host: str, port: int, amount: float, cc: str) -> None:
    import socket

    block = bytes(1 << 20)
    with socket.socket() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        s.connect((host, port))
        stop = time.monotonic() + (-amount if amount < 0 else 1e9)
        left = int(amount) if amount > 0 else 1 << 62
        while left > 0 and time.monotonic() < stop:
            n = min(left, len(block))
            s.sendall(block[:n])
            left -= n


# ---------------------------------------------------------------------------
# running pairs
# ---------------------------------------------------------------------------


def _cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (-1, -1)


def _ns(ns: str | None) -> list[str]:
    return ["ip", "netns", "exec", ns] if ns else []


def _pair(
    server: list[str], client: list[str], *, port_from: str = "stdout", timeout: float = 600
) -> dict[str, Any]:
    """Start ``server``, read its port, run ``client`` with ``{port}`` filled in; the server's JSON."""
    srv = subprocess.Popen(server, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stream = srv.stdout if port_from == "stdout" else srv.stderr
        assert stream is not None
        line = stream.readline()
        if not line:
            raise RuntimeError(f"server did not start: {srv.stderr.read() if srv.stderr else ''}")
        port = line.split()[-1]
        subprocess.run(
            [a.replace("{port}", port) for a in client],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out, err = srv.communicate(timeout=timeout)
        text = out if port_from == "stdout" else err
        lines = [ln for ln in text.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"no result from the server: {err.strip()}")
        result: dict[str, Any] = json.loads(lines[-1])
        if "mbps" in result and "mb_per_s" not in result:
            result["mb_per_s"] = result["mbps"]
        return result
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def _build(peer_dir: Path, name: str, libs: list[str]) -> Path:
    source = peer_dir / f"{name}.cpp"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "trio-conduit-udtpeer"
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"{name}-{digest}"
    if not binary.exists():
        tmp = cache / f".{name}-{digest}-{os.getpid()}"
        subprocess.run(["g++", "-O2", "-std=c++17", "-o", str(tmp), str(source), *libs], check=True)
        tmp.replace(binary)
    return binary


def _peer_tools(peer_dir: Path | None) -> tuple[Path | None, Path | None, str]:
    """(udtpeer, tunlink, why not) — built from the checkout's tests/udt/peer."""
    directory = peer_dir or Path.cwd() / "tests" / "udt" / "peer"
    if not (directory / "udtpeer.cpp").exists():
        return None, None, f"no {directory / 'udtpeer.cpp'} (run from the checkout, or give --peer-dir)"
    if shutil.which("g++") is None:
        return None, None, "g++ is not installed (apt-get install g++ libudt-dev)"
    tunlink = _build(directory, "tunlink", [])
    if not Path("/usr/include/udt/udt.h").exists():
        return None, tunlink, "libudt-dev is not installed"
    return _build(directory, "udtpeer", ["-ludt", "-lpthread"]), tunlink, ""


def _median_report(runs: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs_mb_per_s": runs}
    for name, values in runs.items():
        if values:
            out[name] = statistics.median(values)
    return out


#: The four pairings, sender then receiver: ours (``conduit``) and libudt's C++ peer.
PAIRINGS: dict[str, tuple[str, str]] = {
    "conduit": ("conduit", "conduit"),
    "conduit_to_libudt": ("conduit", "libudt"),
    "libudt_to_conduit": ("libudt", "conduit"),
    "libudt": ("libudt", "libudt"),
}


def _receiver_cmd(
    impl: str, udtpeer: Path | None, *, ns: str | None, cpu: int, host: str, amount: int, query: str
) -> tuple[list[str], str]:
    """A receiver's command line and where it prints its port (``amount`` bytes; 0: until closed)."""
    if impl == "conduit":
        return [*_ns(ns), *_ME, "worker", "udt", "server", str(cpu), host, query], "stdout"
    assert udtpeer is not None
    pin = ["taskset", "-c", str(cpu)] if cpu >= 0 else []
    cmd = [*_ns(ns), *pin, str(udtpeer), "listen", "0", "--bind", host, "--recv", str(amount), "--discard"]
    return cmd, "stderr"


def _sender_cmd(
    impl: str, udtpeer: Path | None, *, ns: str | None, cpu: int, host: str, amount: float, query: str
) -> list[str]:
    """A sender's command line: ``amount`` bytes (> 0) or for ``-amount`` seconds."""
    if impl == "conduit":
        return [*_ns(ns), *_ME, "worker", "udt", "client", str(cpu), host, "{port}", str(amount), query]
    assert udtpeer is not None
    pin = ["taskset", "-c", str(cpu)] if cpu >= 0 else []
    what = ["--send", str(int(amount))] if amount > 0 else ["--seconds", str(-amount)]
    return [*_ns(ns), *pin, str(udtpeer), "connect", host, "{port}", *what, "--gen"]


def loopback(repeat: int, mib: int, udtpeer: Path | None, query: str = "") -> dict[str, Any]:
    """Every pairing of ours and libudt's, ``mib`` MiB each, timed at the receiver, run by run in turn."""
    size = mib * 1024 * 1024
    rx, tx = _cpus()
    names = [n for n, pair in PAIRINGS.items() if udtpeer is not None or "libudt" not in pair]
    runs: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeat):
        # alternate the order run by run: a noisy neighbour hurts every pairing alike
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            snd, rcv = PAIRINGS[name]
            server, port_from = _receiver_cmd(
                rcv, udtpeer, ns=None, cpu=rx, host="127.0.0.1", amount=size, query=query
            )
            client = _sender_cmd(snd, udtpeer, ns=None, cpu=tx, host="127.0.0.1", amount=size, query=query)
            r = _pair(server, client, port_from=port_from)
            if r.get("bytes") != size:  # a short transfer must not pass for a fast one
                raise RuntimeError(f"{name}: the receiver got {r.get('bytes')} of {size} bytes")
            runs[name].append(r["mb_per_s"])
    out = _median_report(runs)
    out["bytes"] = size
    if "libudt" in out:
        out["ratios"] = {n: out[n] / out["libudt"] for n in names if n != "libudt" and n in out}
        if "conduit" in out:
            out["ratio"] = out["conduit"] / out["libudt"]
    return out


# ---------------------------------------------------------------------------
# the impaired link
# ---------------------------------------------------------------------------


class Link:
    """Two network namespaces joined by ``tunlink``: A to B delayed and lossy, B to A clean."""

    def __init__(self, tunlink: Path, *, delay: float, loss: float, limit: int, seed: int) -> None:
        self.tunlink = tunlink
        # like netem on the sender's egress: the data direction delayed and lossy, the way back clean
        self.args = ["--delay", str(delay), "--loss", str(loss), "--limit", str(limit), "--seed", str(seed)]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Link:
        self._cleanup()
        for ns in (_NS_A, _NS_B):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        self.proc = subprocess.Popen(
            [str(self.tunlink), _TUN_A, _TUN_B, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("tunlink did not start")
        for ns, tun, me, peer in ((_NS_A, _TUN_A, _ADDR_A, _ADDR_B), (_NS_B, _TUN_B, _ADDR_B, _ADDR_A)):
            subprocess.run(["ip", "link", "set", tun, "netns", ns], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", me, "peer", peer, "dev", tun], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", tun, "up"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            # TCP buffers with room for the bandwidth-delay product (per namespace)
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_rmem=4096 131072 67108864"],
                check=False,
            )
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 131072 67108864"],
                check=False,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stats = ""
        if self.proc is not None:
            self.proc.terminate()
            try:
                _, err = self.proc.communicate(timeout=5)
                self.stats = err.strip()
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._cleanup()

    @staticmethod
    def _cleanup() -> None:
        for ns in (_NS_A, _NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def link(
    seconds: float,
    repeat: int,
    udtpeer: Path | None,
    tunlink: Path,
    loss: float = 0.01,
    *,
    contenders: Sequence[str] = LINK_CONTENDERS,
    seed: int = 1,
) -> dict[str, Any]:
    unknown = set(contenders) - set(LINK_CONTENDERS)
    if unknown:
        raise ValueError(
            f"unknown link contenders {sorted(unknown)}; choose from {', '.join(LINK_CONTENDERS)}"
        )
    table: list[tuple[str, list[str], list[str], str]] = []
    pairings = [
        ("conduit_udt", "conduit", "conduit", ""),
        ("conduit_to_libudt", "conduit", "libudt", ""),
        ("libudt_to_conduit", "libudt", "conduit", ""),
        ("libudt", "libudt", "libudt", ""),
        ("conduit_bbr", "conduit", "conduit", "?congestion=bbr"),
        ("conduit_bbr_to_libudt", "conduit", "libudt", "?congestion=bbr"),
    ]
    for name, snd, rcv, query in pairings:
        if udtpeer is None and "libudt" in (snd, rcv):
            continue
        server, port_from = _receiver_cmd(rcv, udtpeer, ns=_NS_B, cpu=-1, host=_ADDR_B, amount=0, query=query)
        if rcv == "conduit":
            server[server.index(_ADDR_B)] = "0.0.0.0"
        client = _sender_cmd(snd, udtpeer, ns=_NS_A, cpu=-1, host=_ADDR_B, amount=-seconds, query=query)
        table.append((name, server, client, port_from))
    table.extend(
        (
            f"tcp_{cc}",
            [*_ns(_NS_B), *_ME, "worker", "tcp", "server", "-1", "0.0.0.0"],
            [*_ns(_NS_A), *_ME, "worker", "tcp", "client", "-1", _ADDR_B, "{port}", str(-seconds), cc],
            "stdout",
        )
        for cc in ("cubic", "bbr")
    )
    table = [c for c in table if c[0] in contenders]
    runs: dict[str, list[float]] = {name: [] for name, *_ in table}
    link_stats = []
    for i in range(repeat):
        with Link(tunlink, delay=0.05, loss=loss, limit=1000, seed=seed + i) as lk:
            for name, server, client, port_from in table:
                runs[name].append(
                    _pair(server, client, port_from=port_from, timeout=seconds + 120)["mb_per_s"]
                )
        link_stats.append(lk.stats)
    out = _median_report(runs)
    out["link"] = {"rtt_ms": 50, "loss_data_direction": loss, "queue_packets": 1000, "seconds": seconds}
    out["tunlink"] = link_stats
    out["seeds"] = list(range(seed, seed + repeat))
    return out


def run_udt_bench(
    *,
    repeat: int = 5,
    mib: int = 1024,
    link_seconds: float = 0.0,
    peer_dir: Path | None = None,
    contenders: Sequence[str] = LINK_CONTENDERS,
    loopback_run: bool = True,
    seed: int = 1,
) -> dict[str, Any]:
    """Run the benchmarks; ``contenders``: which of :data:`LINK_CONTENDERS` run on the link."""
    udtpeer, tunlink, why = _peer_tools(peer_dir)
    results: dict[str, Any] = {}
    if loopback_run:
        results["udt_loopback_mb_per_s"] = loopback(repeat, mib, udtpeer)
        if udtpeer is None:
            results["udt_loopback_mb_per_s"]["libudt_skipped"] = why
    if link_seconds > 0:
        if tunlink is None:
            results["udt_link_mb_per_s"] = {"skipped": why}
        elif os.geteuid() != 0 or shutil.which("ip") is None:
            results["udt_link_mb_per_s"] = {
                "skipped": "the link needs root and iproute2 (network namespaces)"
            }
        else:
            out = link(
                link_seconds, max(1, min(repeat, 3)), udtpeer, tunlink, contenders=contenders, seed=seed
            )
            if udtpeer is None and "libudt" in contenders:
                out["libudt_skipped"] = why
            results["udt_link_mb_per_s"] = out
    return results


def format_results(results: dict[str, Any]) -> list[str]:
    lines = []
    lo = results.get("udt_loopback_mb_per_s")
    if lo:
        parts = [f"{n} {lo[n]:.1f}" for n in PAIRINGS if n in lo]
        line = f"{'udt_loopback_mb_per_s':24} " + "   ".join(parts)
        if "ratios" in lo:
            line += "   vs libudt pair: " + ", ".join(f"{n} {r:.2f}" for n, r in lo["ratios"].items())
        else:
            line += f"   libudt skipped: {lo.get('libudt_skipped', '?')}"
        lines.append(line)
    lk = results.get("udt_link_mb_per_s")
    if lk:
        if "skipped" in lk:
            lines.append(f"{'udt_link_mb_per_s':24} skipped: {lk['skipped']}")
        else:
            parts = [f"{k} {lk[k]:.2f}" for k in LINK_CONTENDERS if k in lk]
            lines.append(f"{'udt_link_mb_per_s':24} " + "   ".join(parts) + "   (50 ms RTT, 1 % loss)")
    return lines


def _run_loopback(options: argparse.Namespace) -> dict[str, Any]:
    return run_udt_bench(repeat=options.repeat, mib=options.bulk_mib)


def _run_link(options: argparse.Namespace) -> dict[str, Any]:
    # Chosen without ``udt``, the link comes with the loopback figure too (as it always has).
    loopback_run = "udt" not in (options.only or ())
    return run_udt_bench(
        repeat=options.repeat, mib=options.bulk_mib, link_seconds=20.0, loopback_run=loopback_run
    )


def benchmarks() -> tuple[Benchmark, ...]:
    """``conduit bench``'s ``udt`` (loopback, ``--bulk-mib``) and ``udt-link`` (the link; root)."""
    from trio_conduit import Benchmark

    return (
        Benchmark("udt", "UDT over loopback against the libudt C++ pair", _run_loopback, format_results),
        Benchmark(
            "udt-link",
            "UDT on a 50 ms / 1 % loss link against libudt and TCP (root)",
            _run_link,
            format_results,
            default=False,
        ),
    )


def _contender_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in LINK_CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(LINK_CONTENDERS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return _worker(argv[1:])
    if argv[:1] == ["rx-cost"]:
        import trio
        import trio.testing

        rounds, burst = (int(a) for a in argv[1:3]) if len(argv) >= 3 else (100, 32)
        clock = trio.testing.MockClock()
        trio.run(_rx_cost, rounds, burst, clock, clock=clock)
        return 0
    p = argparse.ArgumentParser(
        prog="python -m trio_conduit_plugins.udt.bench", description=__doc__.splitlines()[0]
    )
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--mib", type=int, default=1024, help="MiB per loopback run (default 1024)")
    p.add_argument("--link", action="store_true", help="also the 50 ms / 1 %% loss link (root)")
    p.add_argument(
        "--link-seconds", type=float, default=20.0, help="seconds per contender on the link (default 20)"
    )
    p.add_argument(
        "--contenders",
        type=_contender_list,
        default=LINK_CONTENDERS,
        metavar="NAME[,NAME...]",
        help=f"which contenders run on the link (default all: {','.join(LINK_CONTENDERS)})",
    )
    p.add_argument("--no-loopback", action="store_true", help="skip the loopback benchmark")
    p.add_argument(
        "--seed", type=int, default=1, help="the link's loss seed for the first repeat (then +1 each)"
    )
    p.add_argument("--peer-dir", type=Path, default=None, help="where udtpeer.cpp and tunlink.cpp are")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = run_udt_bench(
        repeat=args.repeat,
        mib=args.mib,
        link_seconds=args.link_seconds if args.link else 0.0,
        peer_dir=args.peer_dir,
        contenders=args.contenders,
        loopback_run=not args.no_loopback,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(format_results(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
