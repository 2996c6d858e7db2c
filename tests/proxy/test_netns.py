"""Unreachable targets, for real: Dante and our own server inside a network namespace of our own.

The namespace has a veth pair of its own (10.1.1.1/24), an ``unreachable`` route
for 10.9.9.0/24 (connect gives ``EHOSTUNREACH``) and no route at all for
anything else (``ENETUNREACH``). Dante listens on the namespace's 127.0.0.1
and connects out from 10.1.1.1; the client runs in the namespace too. No
packet leaves it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import NetNS
from .conftest import _need

pytestmark = [pytest.mark.netns, pytest.mark.interop]

DANTE_PORT = 1080

_DANTE_CONF = """\
logoutput: {dir}/danted.log
internal: 127.0.0.1 port = {port}
external: 10.1.1.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks pass {{ from: 127.0.0.0/8 to: 10.0.0.0/8 command: connect }}
socks block {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
"""

CLIENT = r"""
import json, sys, trio, trio_conduit as conduit
from trio_conduit.proxy import ProxyServer

async def attempt(pool, url, proxies):
    try:
        conn = await pool.connect(url, proxies=proxies, timeout=10)
    except conduit.ProxyError as exc:
        return [type(exc).__name__, exc.hop, exc.errno, str(exc)]
    await conn.aclose()
    return ["connected"]

async def main():
    dante = f"socks5://127.0.0.1:{sys.argv[1]}"
    out = {}
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        ours = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        for name, url in [("host", "tcp://10.9.9.1:80"), ("net", "tcp://10.7.7.7:80")]:
            out["dante-" + name] = await attempt(pool, url, [dante])
            for scheme in ("socks5", "http"):
                out[f"{scheme}-{name}"] = await attempt(pool, url, [f"{scheme}://{ours.hostport}"])
            out["chain-" + name] = await attempt(pool, url, [f"http://{ours.hostport}", dante])
        nursery.cancel_scope.cancel()
    print(json.dumps(out))

trio.run(main)
"""


@pytest.fixture(scope="module")
def dante_in_netns(netns: NetNS, proxy_dir: Path) -> Iterator[int]:
    danted = _need("danted", "dante-server")
    # A veth pair with both ends in the namespace (this kernel has no dummy device).
    netns.ip("link", "add", "px0", "type", "veth", "peer", "name", "px1")
    netns.ip("addr", "add", "10.1.1.1/24", "dev", "px0")
    netns.ip("link", "set", "px0", "up")
    netns.ip("link", "set", "px1", "up")
    netns.ip("route", "add", "unreachable", "10.9.9.0/24")
    directory = proxy_dir / f"dante-netns-{os.getpid()}"
    directory.mkdir()
    (directory / "danted.conf").write_text(_DANTE_CONF.format(dir=directory, port=DANTE_PORT))
    with open(directory / "stderr.log", "wb") as log:
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns.name,
                danted,
                "-f",
                str(directory / "danted.conf"),
                "-N",
                "1",
                "-p",
                str(directory / "danted.pid"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 15
        while netns.run("ss", "-ltn", check=False).stdout.count(f"127.0.0.1:{DANTE_PORT}") == 0:
            assert process.poll() is None, (directory / "danted.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "danted did not start in the namespace"
            time.sleep(0.05)
        yield DANTE_PORT
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_unreachable_targets_named_by_the_proxy(netns: NetNS, dante_in_netns: int) -> None:
    result = netns.python_json(CLIENT, str(dante_in_netns), timeout=60)
    host, net = 113, 101  # EHOSTUNREACH, ENETUNREACH
    assert result["dante-host"][:3] == ["ProxyTargetUnreachable", 1, host]
    assert "SOCKS5 reply 4: host unreachable" in result["dante-host"][3]
    assert result["dante-net"][:3] == ["ProxyTargetUnreachable", 1, net]
    assert "SOCKS5 reply 3: network unreachable" in result["dante-net"][3]
    assert result["socks5-host"][:3] == ["ProxyTargetUnreachable", 1, host]
    assert result["socks5-net"][:3] == ["ProxyTargetUnreachable", 1, net]
    assert result["http-host"][:3] == ["ProxyTargetUnreachable", 1, host]
    assert (
        "502 Host Unreachable (Proxy-Status: conduit; error=destination_unavailable)"
        in result["http-host"][3]
    )
    assert result["http-net"][:3] == ["ProxyTargetUnreachable", 1, net]
    # Through a chain, the hop that could not reach it is named.
    assert result["chain-host"][:3] == ["ProxyTargetUnreachable", 2, host]
    assert result["chain-host"][3].startswith(f"proxy hop 2 (socks5://127.0.0.1:{dante_in_netns})")
