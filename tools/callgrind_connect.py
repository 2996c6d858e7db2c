"""Instructions per connect, counted by callgrind: deterministic where wall time is noise.

``python tools/callgrind_connect.py [N]`` runs, each under ``valgrind --tool=callgrind``
in a process of its own, N connects + closes of:

* ``raw``: a bare trio socket straight to a local listener (close, then a checkpoint);
* ``pool``: ``pool.connect("tcp://...")`` to the same listener, then ``aclose()``;
* with ``--socks5`` (needs microsocks and python-socks), through one microsocks hop:
  ``python-socks`` (``Proxy.connect``) and ``conduit`` (``pool.connect(..., proxies=[...])``).

Each figure is (instructions with N connects - instructions with 0) / N: start-up, imports
and a warm-up of every kind cancel out. The listener (accept and close) and microsocks
run in processes callgrind does not follow. Ratios are printed against ``raw`` and
``python-socks``. Needs valgrind; a few minutes for the default N.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCEPT = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept(); c.close()
"""


async def _work(kind: str, n: int, port: int, proxy_port: int) -> None:
    import trio

    import trio_conduit

    url = f"tcp://127.0.0.1:{port}"
    proxies = [f"socks5://127.0.0.1:{proxy_port}"]
    async with trio_conduit.open_pool() as pool:

        async def raw() -> None:
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            sock.close()
            await trio.lowlevel.checkpoint()

        async def direct() -> None:
            await (await pool.connect(url)).aclose()

        async def conduit() -> None:
            await (await pool.connect(url, proxies=proxies)).aclose()

        runs = {"raw": raw, "pool": direct, "conduit": conduit}
        if proxy_port:
            from python_socks.async_.trio import Proxy

            proxy = Proxy.from_url(proxies[0])

            async def python_socks() -> None:
                sock = await proxy.connect("127.0.0.1", port)
                sock.close()
                await trio.lowlevel.checkpoint()

            runs["python-socks"] = python_socks
        for run in runs.values():  # the same warm-up whatever is measured
            if run is not conduit or proxy_port:
                for _ in range(5):
                    await run()
        for _ in range(n):
            await runs[kind]()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(kind: str, n: int, proxy: bool) -> None:
    """In the measured process: the listener and proxy as helpers, then the connects."""
    import trio

    helpers = [subprocess.Popen([sys.executable, "-c", ACCEPT], stdout=subprocess.PIPE, text=True)]
    try:
        assert helpers[0].stdout is not None
        port = int(helpers[0].stdout.readline())
        proxy_port = 0
        if proxy:
            proxy_port = _free_port()
            helpers.append(
                subprocess.Popen(
                    ["microsocks", "-i", "127.0.0.1", "-p", str(proxy_port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", proxy_port)).close()
                    break
                except OSError:
                    time.sleep(0.05)
        trio.run(_work, kind, n, port, proxy_port)
    finally:
        for helper in helpers:
            helper.kill()
            helper.wait()


def _instructions(kind: str, n: int, proxy: bool, tmp: Path) -> int:
    argv = [sys.executable, __file__, "--worker", kind, str(n), *(["--socks5"] if proxy else [])]
    out = tmp / f"{kind}.{n}.out"
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise SystemExit(f"no callgrind total for {kind}:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=1000, help="connects per kind (default 1000)")
    parser.add_argument("--socks5", action="store_true", help="also through one microsocks hop")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.socks5)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind")
    if args.socks5 and shutil.which("microsocks") is None:
        raise SystemExit("--socks5 needs microsocks")
    kinds = ["raw", "pool", *(["python-socks", "conduit"] if args.socks5 else [])]
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            n = args.n // 2 if kind in ("python-socks", "conduit") else args.n
            base = _instructions(kind, 0, args.socks5, Path(tmp))
            per[kind] = (_instructions(kind, n, args.socks5, Path(tmp)) - base) / n
            print(f"{kind:13} {per[kind] / 1000:8.1f} k instructions per connect + close", flush=True)
    print(f"pool / raw: {per['pool'] / per['raw']:.2f}")
    if args.socks5:
        print(f"conduit / python-socks: {per['conduit'] / per['python-socks']:.2f}")


if __name__ == "__main__":
    main()
