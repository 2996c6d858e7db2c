"""Real proxies for the tests: Dante, tinyproxy, squid, microsocks, and our own server in a process.

Each is started by a fixture with its configuration written into a private
temporary directory, listening on 127.0.0.1 only and connecting out from
127.0.0.1 only, and is stopped (and reaped) when the fixture ends. A proxy
that is not installed is skipped with the reason; the nox ``tests`` session
installs them (dante-server, tinyproxy, squid, microsocks).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import FORBIDDEN_PORT, free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP = 15.0


@dataclass
class RealProxy:
    """A proxy process: its URL (with credentials, if any) and where its files are."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path
    user: str | None = None
    password: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def url_with(self, scheme: str, user: str | None = None, password: str | None = None) -> str:
        auth = ""
        if user is not None:
            auth = user + (f":{password}" if password is not None else "") + "@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str, directory: Path) -> None:
    assert port != FORBIDDEN_PORT
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            logs = "".join(p.read_text(errors="replace")[-2000:] for p in directory.glob("*.log"))
            pytest.fail(f"{what} exited with status {process.returncode} at startup:\n{logs}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within {STARTUP} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _popen(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdin closed and stdout/stderr to ``log`` (our copy of it closed at once)."""
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def _need(program: str, package: str) -> str:
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.path.exists(p)), None
    )
    if path is None:
        pytest.skip(
            f"{program} is not installed (Debian package {package}; the nox tests session installs it)"
        )
    return path


@pytest.fixture(scope="session")
def proxy_dir() -> Iterator[Path]:
    """A private directory for proxy configurations and logs, world-traversable (squid drops to `proxy`)."""
    path = Path(tempfile.mkdtemp(prefix="conduit-px-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _subdir(base: Path, name: str) -> Path:
    path = base / f"{name}-{secrets.token_hex(3)}"
    path.mkdir()
    path.chmod(0o777)
    return path


# ---------------------------------------------------------------------------
# Dante
# ---------------------------------------------------------------------------

_DANTE_CONF = """\
logoutput: {dir}/danted.log
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
socksmethod: {method}
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks block {{ from: 0.0.0.0/0 to: 127.0.0.0/8 port = 1 log: error }}
socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 command: connect udpassociate udpreply }}
socks block {{ from: 0.0.0.0/0 to: 0.0.0.0/0 log: error }}
"""


def start_dante(base: Path, *, method: str = "none", conf: str = _DANTE_CONF, **fmt: object) -> RealProxy:
    danted = _need("danted", "dante-server")
    if os.geteuid() != 0:
        pytest.skip("Dante (danted) runs as root here (user.privileged: root); run the suite as root")
    directory = _subdir(base, "dante")
    port = free_tcp_port()
    (directory / "danted.conf").write_text(conf.format(dir=directory, port=port, method=method, **fmt))
    process = _popen(
        [danted, "-f", str(directory / "danted.conf"), "-p", str(directory / "danted.pid"), "-N", "1"],
        directory / "stderr.log",
    )
    _wait_listening(port, process, "danted", directory)
    return RealProxy("dante", f"socks5://127.0.0.1:{port}", port, process, directory)


@pytest.fixture(scope="module")
def dante(proxy_dir: Path) -> Iterator[RealProxy]:
    """Dante without authentication: SOCKS4 and SOCKS5, CONNECT and UDP ASSOCIATE, to 127.0.0.0/8 only."""
    proxy = start_dante(proxy_dir)
    try:
        yield proxy
    finally:
        _stop(proxy.process)


@pytest.fixture(scope="module")
def system_user() -> Iterator[tuple[str, str]]:
    """A throwaway system user (no home, no shell) for Dante's username method; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("Dante's username method checks system users: creating one needs root")
    if shutil.which("useradd") is None or shutil.which("chpasswd") is None:
        pytest.skip("useradd/chpasswd are not available")
    name = f"cdtpx{os.getpid() % 100000}{secrets.token_hex(2)}"
    password = "pw-" + secrets.token_hex(8)
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
        yield name, password
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def dante_auth(proxy_dir: Path, system_user: tuple[str, str]) -> Iterator[RealProxy]:
    """Dante requiring RFC 1929 username/password (checked against the system user)."""
    proxy = start_dante(proxy_dir, method="username")
    proxy.user, proxy.password = system_user
    try:
        yield proxy
    finally:
        _stop(proxy.process)


# ---------------------------------------------------------------------------
# tinyproxy, squid, microsocks
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tinyproxy(proxy_dir: Path) -> Iterator[RealProxy]:
    """tinyproxy with Basic authentication (alice / a random password), CONNECT to any port."""
    program = _need("tinyproxy", "tinyproxy")
    directory = _subdir(proxy_dir, "tinyproxy")
    port = free_tcp_port()
    password = "tp-" + secrets.token_hex(6)
    user_line = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
    (directory / "tinyproxy.conf").write_text(
        f"Port {port}\nListen 127.0.0.1\nBind 127.0.0.1\nTimeout 30\nMaxClients 100\n"
        f'LogLevel Info\nLogFile "{directory}/tinyproxy.log"\nPidFile "{directory}/tinyproxy.pid"\n'
        f"Allow 127.0.0.1\nBasicAuth alice {password}\n{user_line}"
    )
    process = _popen([program, "-d", "-c", str(directory / "tinyproxy.conf")], directory / "stderr.log")
    try:
        _wait_listening(port, process, "tinyproxy", directory)
        yield RealProxy(
            "tinyproxy",
            f"http://alice:{password}@127.0.0.1:{port}",
            port,
            process,
            directory,
            "alice",
            password,
        )
    finally:
        _stop(process)


def _apr1(password: str) -> str:
    """An Apache ``$apr1$`` hash for squid's basic_ncsa_auth (made by openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to write squid's password file")
    proc = subprocess.run([openssl, "passwd", "-apr1", password], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


_SQUID_CONF = """\
http_port 127.0.0.1:{port}
{auth}
acl localnet src 127.0.0.1/32
http_access allow localnet{authed}
http_access deny all
cache deny all
access_log stdio:{dir}/access.log
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
tcp_outgoing_address 127.0.0.1
dns_nameservers 127.0.0.1
pinger_enable off
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
"""


def _start_squid(base: Path, users: dict[str, str] | None) -> RealProxy:
    program = _need("squid", "squid")
    directory = _subdir(base, "squid")
    port = free_tcp_port()
    auth, authed = "", ""
    if users:
        helper = Path("/usr/lib/squid/basic_ncsa_auth")
        if not helper.exists():
            pytest.skip("squid's basic_ncsa_auth helper is missing")
        (directory / "passwd").write_text("".join(f"{u}:{_apr1(p)}\n" for u, p in users.items()))
        (directory / "passwd").chmod(0o644)
        auth = (
            f"auth_param basic program {helper} {directory}/passwd\n"
            "auth_param basic realm conduit\nacl authed proxy_auth REQUIRED"
        )
        authed = " authed"
    (directory / "squid.conf").write_text(
        _SQUID_CONF.format(port=port, dir=directory, auth=auth, authed=authed)
    )
    if os.geteuid() == 0:
        shutil.chown(directory, user="proxy")
    process = _popen([program, "-N", "-f", str(directory / "squid.conf")], directory / "stderr.log")
    _wait_listening(port, process, "squid", directory)
    user, password = next(iter(users.items())) if users else (None, None)
    auth_part = f"{user}:{password}@" if user else ""
    return RealProxy("squid", f"http://{auth_part}127.0.0.1:{port}", port, process, directory, user, password)


@pytest.fixture(scope="module")
def squid(proxy_dir: Path) -> Iterator[RealProxy]:
    """squid with Basic authentication through basic_ncsa_auth (bob / a random password)."""
    proxy = _start_squid(proxy_dir, {"bob": "sq-" + secrets.token_hex(6)})
    try:
        yield proxy
    finally:
        _stop(proxy.process)


@pytest.fixture(scope="module")
def microsocks(proxy_dir: Path) -> Iterator[RealProxy]:
    """microsocks (SOCKS5 only) requiring user/password, connecting out from 127.0.0.1."""
    program = _need("microsocks", "microsocks")
    directory = _subdir(proxy_dir, "microsocks")
    port = free_tcp_port()
    password = "ms-" + secrets.token_hex(6)
    process = _popen(
        [program, "-i", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1", "-u", "carol", "-P", password],
        directory / "microsocks.log",
    )
    try:
        _wait_listening(port, process, "microsocks", directory)
        yield RealProxy(
            "microsocks",
            f"socks5://carol:{password}@127.0.0.1:{port}",
            port,
            process,
            directory,
            "carol",
            password,
        )
    finally:
        _stop(process)


# ---------------------------------------------------------------------------
# our own server, in a process of its own
# ---------------------------------------------------------------------------


@dataclass
class OwnServer:
    """``tests/proxy/_serve.py`` running: its proxy port, a TCP echo port and a UDP echo port."""

    process: subprocess.Popen[bytes]
    proxy: int
    echo: int
    udp_echo: int


def start_own_server(*users: str) -> OwnServer:
    argv = [sys.executable, "-m", "tests.proxy._serve"]
    if users:
        argv += ["--users", *users]
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        _stop(process)
        pytest.fail("tests/proxy/_serve.py did not start")
    ports = json.loads(line)
    return OwnServer(process, ports["proxy"], ports["echo"], ports["udp_echo"])


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    """trio-conduit's ProxyServer (no authentication) and echo servers, in another process."""
    server = start_own_server()
    try:
        yield server
    finally:
        assert server.process.stdin is not None
        server.process.stdin.close()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _stop(server.process)
        if server.process.stdout is not None:
            server.process.stdout.close()
