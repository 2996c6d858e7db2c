"""What each ``conduit`` command imports: only what the command and the URL's transport need.

The command runs as a real process (``conduit``'s ``main`` in a fresh
interpreter), which writes the names in ``sys.modules`` to a file at its end.
Not timed: the times are ``conduit bench --only startup``'s business;
here, which modules load. (``ssl`` is not in the lists: ``import trio``
imports it itself.)
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from trio_conduit.bench import startup
from trio_conduit.bench._runner import certificate_files

#: Loaded by no command that does not need it: TLS, DTLS, proxies, scanning, the bench, UDT's engine.
HEAVY = (
    "trio_conduit.tls",
    "OpenSSL",
    "cryptography",
    "trio_conduit.proxy._types",
    "trio_conduit.proxy._chain",
    "trio_conduit.proxy._socks5",
    "trio_conduit._scan._driver",
    "trio_conduit._scan._report",
    "trio_conduit.bench",
    "trio_conduit.cli._check",
    "trio_conduit.cli._bench",
    "trio_conduit._access",
    "trio_conduit_plugins.udt._driver",
    "trio_conduit_plugins.udt._session",
    "importlib.metadata",
    "email",
)


#: ``python -c RUNNER FILE ARGV...``: ``conduit ARGV`` (the program, as its console script runs
#: it), then the names in ``sys.modules`` written to FILE.
RUNNER = """\
import sys
out = sys.argv.pop(1)
code = 1
try:
    from trio_conduit.cli import command
    command()
except SystemExit as exc:
    code = exc.code
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sys.modules))
sys.exit(code)
"""


def imported(argv: Sequence[str], stdin: bytes = b"", status: int = 0) -> tuple[set[str], str]:
    """The modules ``conduit ARGV`` imports, and its stderr; it must exit with ``status``."""
    with tempfile.NamedTemporaryFile("r") as out:
        done = subprocess.run(
            [sys.executable, "-c", RUNNER, out.name, *argv], input=stdin, capture_output=True, timeout=60
        )
        found = set(out.read().split())
    stderr = done.stderr.decode()
    assert done.returncode == status, stderr[-2000:]
    assert "trio_conduit.cli._main" in found  # the list was written
    return found, stderr


def loaded(found: set[str], name: str) -> bool:
    """Whether ``name`` or one of its submodules is in ``found``."""
    return any(module == name or module.startswith(name + ".") for module in found)


@contextmanager
def tcp_sink() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback listener in a thread: each connection read to its end, then closed."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(10)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["connect", "--help"], ["scan", "--help"]])
def test_version_and_help_import_no_trio(argv: list[str]) -> None:
    found, _ = imported(argv)
    assert not loaded(found, "trio")
    assert not loaded(found, "pluggy")
    assert not loaded(found, "trio_conduit._pool")
    assert not [name for name in HEAVY if loaded(found, name)]
    assert not loaded(found, "dataclasses")  # nothing defined before the command runs is one


@pytest.mark.parametrize("argv", [["--help"], ["connect", "--help"], ["listen", "--help"]])
def test_only_the_command_run_gets_its_arguments(argv: list[str]) -> None:
    """The scan's port-set parser loads only for ``conduit scan``; ``--help`` shows every command."""
    found, _ = imported(argv)
    assert not loaded(found, "trio_conduit.cli._scan")
    assert not loaded(found, "trio_conduit._scan")
    with tempfile.TemporaryFile() as out:
        subprocess.run([sys.executable, "-m", "trio_conduit", *argv], stdout=out, timeout=60, check=True)
        out.seek(0)
        text = out.read().decode()
    if argv == ["--help"]:
        assert all(
            f"    {name}" in text for name in ("check", "connect", "listen", "scan", "plugins", "bench")
        )
    else:
        assert "--exec" in text
        assert "--cafile" in text


def test_a_tcp_connect_imports_no_tls_proxy_scan_or_bench() -> None:
    with tcp_sink() as (port, received):
        found, _ = imported(["connect", f"tcp://127.0.0.1:{port}"], stdin=b"x")
    assert received == [b"x"]
    assert loaded(found, "trio")
    assert "trio_conduit._pool" in found
    assert "trio_conduit_plugins.tcp" in found  # every plugin registers, cheaply
    assert "trio_conduit_plugins.udt" in found
    assert [name for name in HEAVY if loaded(found, name)] == []
    assert not loaded(found, "trio_conduit._scan")
    assert "dataclasses" not in found  # the value classes on this path are records (_record.py)
    assert "shlex" not in found  # only --exec splits a command line


def test_a_tls_connect_imports_tls_but_not_dtls_proxy_scan_or_bench(tmp_path: Path) -> None:
    """The TLS layer loads when the URL asks for it; pyOpenSSL and cryptography (DTLS's) do not."""
    files = certificate_files(str(tmp_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files["cert"], files["key"])
    with startup._listener(context) as port:
        found, _ = imported(["connect", f"tls://localhost:{port}", "--cafile", files["ca"]], stdin=b"x")
    assert "trio_conduit.tls._handshake" in found
    assert "trio_conduit.tls._dtls" not in found
    assert [name for name in HEAVY if name != "trio_conduit.tls" and loaded(found, name)] == []


def test_the_package_imports_lazily() -> None:
    """``import trio_conduit`` loads no Trio; a name loads its module when first used."""
    code = (
        "import sys, trio_conduit\n"
        "assert 'trio' not in sys.modules, 'trio'\n"
        "trio_conduit.AddressError\n"
        "assert 'trio_conduit._errors' in sys.modules\n"
        "assert 'trio_conduit._pool' not in sys.modules\n"
        "import trio_conduit.proxy._plugin\n"
        "assert 'trio_conduit.proxy._types' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "ok\n", done.stderr


def test_the_startup_benchmark_compares_medians_of_rotating_rounds() -> None:
    """The benchmark's arithmetic, with a fake clock: every command is run once untimed, then
    in rotating order, and the ratios come from the medians."""
    order: list[str] = []
    fake = {"python_import_trio": 0.2, "conduit_version": 0.1, "conduit_tcp": 0.22, "conduit_tls": 0.3}
    fake |= {"ncat_version": 0.01, "ncat_tcp": 0.05, "ncat_tls": 0.06}
    cmds = startup.commands(1, 2, "ca.pem", "/usr/bin/ncat")
    assert set(cmds) == set(fake)
    by_argv = {tuple(argv): name for name, argv in cmds.items()}

    def run(argv: list[str]) -> float:
        name = by_argv[tuple(argv)]
        order.append(name)
        return fake[name] * (1 + 0.01 * order.count(name))

    times = startup.rounds(run, cmds, startup.MIN_ROUNDS)
    assert all(len(runs) == startup.MIN_ROUNDS for runs in times.values())
    assert order[len(cmds)] != order[2 * len(cmds)]  # the order rotates
    result = startup.summarize(times)
    assert result["ratios"]["tcp_vs_import_trio"] == pytest.approx(0.22 / 0.2, rel=0.02)
    assert result["ratios"]["tls_vs_ncat"] == pytest.approx(0.3 / 0.06, rel=0.02)
    assert "ncat_tcp" not in startup.commands(1, 2, "ca.pem", "")


@pytest.mark.skipif(not os.access(sys.executable, os.X_OK), reason="no interpreter to run")
def test_the_startup_benchmark_runs_its_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """One real round (``MIN_ROUNDS`` = 1 here): every command exits 0 against the listeners."""
    monkeypatch.setattr(startup, "MIN_ROUNDS", 1)
    result = startup.run_startup(1)
    assert set(result["median_seconds"]) >= {"python_import_trio", "conduit_tcp", "conduit_tls"}
    assert all(t > 0 for t in result["median_seconds"].values())
    lines = startup.STARTUP.format({"startup": result})
    assert any("conduit tcp" in line for line in lines)


def test_an_address_literal_is_resolved_without_the_idna_codec() -> None:
    """The numeric fast path hands the C resolver bytes (a str would load ``encodings.idna``);
    names, non-ASCII ones included, go on to trio's resolver."""
    from trio_conduit._sockets import _numeric_getaddrinfo

    [(family, *_, sockaddr)] = _numeric_getaddrinfo("127.0.0.1", 80, socket.SOCK_STREAM, 0) or [()]
    assert (family, sockaddr) == (socket.AF_INET, ("127.0.0.1", 80))
    [(family, *_, sockaddr)] = _numeric_getaddrinfo("::1", 80, socket.SOCK_STREAM, 0) or [()]
    assert family == socket.AF_INET6
    assert sockaddr[:2] == ("::1", 80)
    for name in ("localhost", "bücher.example", "a..b", "x" * 300):
        assert _numeric_getaddrinfo(name, 80, socket.SOCK_STREAM, 0) is None
    with tcp_sink() as (port, received):
        found, _ = imported(["connect", f"tcp://127.0.0.1:{port}"], stdin=b"y")
    assert received == [b"y"]
    assert "encodings.idna" not in found


def test_a_refused_connect_reports_without_loading_conduit_check() -> None:
    """A failing command (a health check's usual answer) says so in one line, and loads no more."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once it is closed
    found, stderr = imported(["connect", f"tcp://127.0.0.1:{port}"], status=1)
    assert stderr.startswith("conduit: cannot connect to")
    assert "Traceback" not in stderr
    assert "trio_conduit.cli._report" in found
    assert [name for name in HEAVY if loaded(found, name)] == []


SPY = """\
import gc, sys
from trio_conduit.cli import _main
settle = _main._settle
def spy():
    print("settling", gc.isenabled(), gc.get_freeze_count() > 0, "trio" in sys.modules, file=sys.stderr)
    settle()
    print("settled", gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
_main._settle = spy
sys.argv[1:] = ["plugins"]
_main.command()
"""


def test_the_program_freezes_what_start_up_made_then_collects_as_usual() -> None:
    """``conduit`` (the process) runs its start-up with the collector off, and freezes what
    start-up made once the command's modules are loaded, just before it runs; then collects."""
    done = subprocess.run([sys.executable, "-c", SPY], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("settl")]
    assert lines == ["settling False False True", "settled True True"]
    assert "tcp" in done.stdout  # and then the command ran


def test_main_leaves_the_callers_collector_alone(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_conduit.cli import main

    frozen = gc.get_freeze_count()
    assert main(["plugins"]) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
    assert "tcp" in capsys.readouterr().out
