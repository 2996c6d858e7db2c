"""``conduit`` under issue 16: secrets never printed, certificates checked before "listening",
no key left behind by a signal at start-up, ``--idle-timeout``."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from trio_conduit.tls import EphemeralCA

from .test_cli import CONDUIT, DEADLINE, conduit, one_line_error, run_conduit

SECRET = "Hunter2-s3cret-Key-Pw"


def _encrypted_pair(tmp_path: Path) -> tuple[str, str]:
    cert = EphemeralCA().issue("127.0.0.1", "localhost")
    certfile, keyfile = cert.write(tmp_path, "server")
    key = serialization.load_pem_private_key(Path(keyfile).read_bytes(), password=None)
    Path(keyfile).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(SECRET.encode()),
        )
    )
    return str(certfile), str(keyfile)


def test_a_key_password_is_never_printed_even_at_vvv(tmp_path: Path) -> None:
    certfile, keyfile = _encrypted_pair(tmp_path)
    url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}&password={SECRET}"
    with conduit(tmp_path, "-vvv", "listen", "-k", "--echo", url) as server:
        bound = server.bound_url()
        port = int(re.search(r":(\d+)", bound.split("://", 1)[1]).group(1))  # type: ignore[union-attr]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
        server.wait_stderr(re.compile(r"closed conn #\d+"))
        stderr = server.stderr
    assert "listening on" in stderr
    assert "password=" in stderr  # the option is named...
    assert SECRET not in stderr  # ...its value never
    assert SECRET not in bound


def test_an_error_with_the_password_in_the_url_does_not_print_it() -> None:
    result = run_conduit("connect", f"tls://127.0.0.1:1?password={SECRET}&nosuch=1")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "nosuch" in line
    assert SECRET not in line


@pytest.mark.parametrize("problem", ["missing certificate", "wrong password"])
def test_a_listener_whose_certificate_does_not_load_never_starts(tmp_path: Path, problem: str) -> None:
    certfile, keyfile = _encrypted_pair(tmp_path)
    if problem == "missing certificate":
        url = f"tls://127.0.0.1:0?certfile={tmp_path}/nosuch.pem&keyfile={keyfile}&password={SECRET}"
    else:
        url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}&password=wrong-{SECRET}"
    result = run_conduit("-v", "listen", url)
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert "listening" not in line
    assert "TLS" in line
    assert SECRET not in line


def _shm_dirs() -> set[str]:
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith("conduit-listen-")}
    except FileNotFoundError:
        return set()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_sigterm_during_start_up_leaves_no_ephemeral_key() -> None:
    """The fingerprint line is written right after the key: with stderr a full pipe, that write
    blocks, so the SIGTERM lands exactly between writing the key and serving."""
    before = _shm_dirs()
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    proc = subprocess.Popen(
        [*CONDUIT, "listen", "--tls", "tcp://127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    try:
        end = time.monotonic() + DEADLINE
        while not (_shm_dirs() - before):  # the key is written: the process is blocked on stderr
            assert proc.poll() is None, "conduit exited before writing its key"
            assert time.monotonic() < end, "no ephemeral key directory appeared"
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        with os.fdopen(read_end, "rb") as drain:
            drain.read()  # let the blocked write finish, so the signal is acted on
        status = proc.wait(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == 128 + signal.SIGTERM
    assert not (_shm_dirs() - before), "the ephemeral private key was left in /dev/shm"


def test_listen_idle_timeout_closes_a_silent_client(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "-i", "0.5", "tcp://127.0.0.1:0", stdin=subprocess.PIPE) as server:
        found = server.wait_stderr(re.compile(r"listening on tcp://127\.0\.0\.1:(\d+)"))
        port = int(found.group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            client.sendall(b"hello")
            status = server.wait()
            client.settimeout(DEADLINE)
            assert client.recv(10) == b""  # closed by the listener
        assert status == 1
        assert "idle timeout" in one_line_error(server.stderr.replace(found.group(0) + "\n", "", 1))


def test_connect_idle_timeout(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        result = run_conduit(
            "connect", "--idle-timeout", "0.3", f"tcp://127.0.0.1:{port}", stdin=subprocess.PIPE
        )
    assert result.returncode == 1
    assert "idle timeout" in one_line_error(result.stderr)
