"""``conduit connect``/``conduit listen`` with TLS: URLs, flags, the ephemeral certificate, real peers."""

from __future__ import annotations

import re
import secrets
import shutil
import time
from pathlib import Path

import pytest

from ..conftest import free_tcp_port
from ..interop.test_api_peers import _proc_net_has
from ..test_cli import conduit, one_line_error, run_conduit, sha, spawn, together
from .conftest import PKI

FINGERPRINT = re.compile(r"SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})$", re.MULTILINE)
OPENSSL = shutil.which("openssl")
NCAT = shutil.which("ncat")


def test_listen_makes_a_certificate_and_connect_pins_it(tmp_path: Path) -> None:
    payload = secrets.token_bytes(300_000)
    reply = secrets.token_bytes(70_000)
    with conduit(tmp_path, "listen", "tls://127.0.0.1:0") as listener:
        fingerprint = listener.wait_stderr(FINGERPRINT).group(1)
        url = listener.bound_url().split("?")[0]
        assert url.startswith("tls://127.0.0.1:")
        with conduit(tmp_path, "connect", url, "--insecure", "--pin", fingerprint) as client:
            got_by_listener, got_by_client = together((listener, reply), (client, payload))
            assert client.wait() == 0, client.stderr
        assert listener.wait() == 0, listener.stderr
    assert sha(got_by_listener) == sha(payload)
    assert sha(got_by_client) == sha(reply)


def test_end_of_input_is_a_half_close_over_tls(tmp_path: Path) -> None:
    """The end of connect's stdin is TLS's close_notify, and only that: the listener reads the
    end of stream, and answers from its own stdin afterwards over the same connection."""
    with conduit(tmp_path, "listen", "tls://127.0.0.1:0") as listener:
        url = listener.bound_url().split("?")[0]
        with conduit(tmp_path, "connect", url, "--insecure") as client:
            assert client.popen.stdin is not None
            assert listener.popen.stdin is not None
            assert listener.popen.stdout is not None
            client.popen.stdin.write(b"question?")
            client.popen.stdin.close()  # close_notify: the client sends no more
            assert listener.popen.stdout.read(9) == b"question?"
            listener.popen.stdin.write(b"late answer")
            listener.popen.stdin.close()
            assert client.popen.stdout is not None
            assert client.popen.stdout.read() == b"late answer"  # the connection was still open for it
            assert client.wait() == 0, client.stderr
        assert listener.wait() == 0, listener.stderr  # it ended: it had seen the client's end
        assert listener.popen.stdout.read() == b""


def test_connect_verifies_by_default(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "tls://127.0.0.1:0") as listener:
        url = listener.bound_url().split("?")[0]
        result = run_conduit("connect", url, input=b"x")
        line = one_line_error(result.stderr)
        assert result.returncode == 1
        assert "certificate verify failed" in line
        assert "self-signed certificate" in line
        # a wrong pin is refused even without verification
        result = run_conduit("connect", url, "--insecure", "--pin", "00" * 32, input=b"x")
        assert result.returncode == 1
        assert "is not pinned" in one_line_error(result.stderr)


def test_cert_key_cafile_sni_alpn(tmp_path: Path, pki: PKI) -> None:
    args = ["--cert", pki.server.certfile, "--key", pki.server.keyfile, "--alpn", "h2", "--echo"]
    with conduit(tmp_path, "listen", "--tls", "tcp://127.0.0.1:0", *args) as listener:
        url = listener.bound_url().split("?")[0]
        assert url.startswith("tls://")
        port = url.rsplit(":", 1)[1]
        result = run_conduit(
            "-vv", "connect", f"tcp://127.0.0.1:{port}", "--tls", "--cafile", pki.cafile,
            "--sni", "a.test", "--alpn", "h2", input=b"echo this",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"echo this"
        assert b"ALPN h2, SNI a.test" in result.stderr  # the handshake's trace line


def test_mutual_tls_from_the_command_line(tmp_path: Path, pki: PKI) -> None:
    server = [
        "--cert",
        pki.server.certfile,
        "--key",
        pki.server.keyfile,
        "--cafile",
        pki.cafile,
        "--echo",
        "-k",
    ]
    with conduit(tmp_path, "listen", "tls://127.0.0.1:0", *server) as listener:
        url = listener.bound_url().split("?")[0]
        client = ["--cafile", pki.cafile, "--sni", "localhost"]
        ok = run_conduit(
            "connect", url, *client, "--cert", pki.client.certfile, "--key", pki.client.keyfile, input=b"hi"
        )
        assert (ok.returncode, ok.stdout) == (0, b"hi"), ok.stderr
        refused = run_conduit("connect", url, *client, input=b"hi")
        assert refused.returncode == 1
        assert one_line_error(refused.stderr) == (
            "conduit: TLS connection broken: the peer sent a fatal alert: certificate required "
            "(TLSV13_ALERT_CERTIFICATE_REQUIRED)"
        )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["connect", "tcp://127.0.0.1:9", "--cafile", "x.pem"], "need a tls:// or dtls:// URL or --tls"),
        (["connect", "unix:///tmp/x.sock", "--tls"], "--tls works with tcp://, sctp:// and udp:// URLs"),
        (["listen", "tls://127.0.0.1:0", "--key", "k.pem"], "--key needs --cert"),
        (["connect", "tls://127.0.0.1:9?record_size=huge"], "record_size"),
    ],
)
def test_usage_errors(args: list[str], words: str) -> None:
    result = run_conduit(*args)
    assert result.returncode == 2
    assert words in one_line_error(result.stderr)


@pytest.mark.interop
@pytest.mark.skipif(
    OPENSSL is None, reason="openssl not installed: run the nox tests session, which installs it"
)
def test_openssl_s_client_to_conduit_listen(tmp_path: Path, pki: PKI) -> None:
    assert OPENSSL is not None
    with conduit(
        tmp_path, "listen", "tls://127.0.0.1:0", "--cert", pki.server.certfile, "--key", pki.server.keyfile
    ) as listener:
        port = listener.bound_url().split("?")[0].rsplit(":", 1)[1]
        with spawn(
            [
                OPENSSL,
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-CAfile",
                pki.cafile,
                "-quiet",
                "-verify_return_error",
            ],
            tmp_path,
        ) as client:
            got, _ = together((listener, b""), (client, b"from openssl\n"))
        assert got == b"from openssl\n"


@pytest.mark.interop
@pytest.mark.skipif(NCAT is None, reason="ncat not installed: run the nox tests session, which installs it")
def test_conduit_connect_to_ncat_ssl(tmp_path: Path, pki: PKI) -> None:
    assert NCAT is not None
    port = free_tcp_port()
    argv = [NCAT, "--ssl", "--ssl-cert", pki.server.certfile, "--ssl-key", pki.server.keyfile]
    with spawn([*argv, "-l", "127.0.0.1", str(port)], tmp_path) as ncat:
        deadline = time.monotonic() + 20
        while not _proc_net_has("tcp", port, listening=True):
            assert ncat.popen.poll() is None, ncat.stderr
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with conduit(tmp_path, "connect", f"tls://localhost:{port}", "--cafile", pki.cafile) as client:
            from_ncat, from_conduit = together((ncat, b"ncat speaking\n"), (client, b"conduit speaking\n"))
    assert from_ncat == b"conduit speaking\n"
    assert from_conduit == b"ncat speaking\n"
