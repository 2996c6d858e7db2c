"""``conduit connect|listen dtls://``: flags, the ephemeral certificate, many peers, openssl."""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

import pytest

from ..test_cli import CONDUIT, Proc, conduit, one_line_error, run_conduit, sha, spawn, together
from .conftest import PKI

FINGERPRINT = re.compile(r"SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})$", re.MULTILINE)
OPENSSL = shutil.which("openssl")


def lines(n: int) -> bytes:
    return b"".join(secrets.token_hex(20).encode() + b"\n" for _ in range(n))


def test_listen_makes_a_certificate_and_echoes_to_many_pinned_peers(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "-k", "--echo", "dtls://127.0.0.1:0") as listener:
        fingerprint = listener.wait_stderr(FINGERPRINT).group(1)
        url = listener.bound_url().split("?")[0]
        assert url.startswith("dtls://127.0.0.1:")
        payloads = [lines(20) for _ in range(4)]
        argv = [*CONDUIT, "connect", "--lines", url, "--insecure", "--pin", fingerprint]
        clients = [Proc(argv, tmp_path) for _ in payloads]
        try:
            outputs = together(*zip(clients, payloads, strict=True))
            codes = [c.wait() for c in clients]
        finally:
            for c in clients:
                c.close()
        assert codes == [0] * len(payloads), [c.stderr for c in clients]
        assert [sha(o) for o in outputs] == [sha(p) for p in payloads]
        assert listener.popen.poll() is None, "--keep-open must outlive its clients"


def test_connect_verifies_by_default(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "-k", "dtls://127.0.0.1:0") as listener:
        url = listener.bound_url().split("?")[0]
        result = run_conduit("connect", url, input=b"x\n")
        line = one_line_error(result.stderr)
        assert result.returncode == 1
        assert "certificate verify failed" in line
        assert "self-signed certificate" in line
        result = run_conduit("connect", url, "--insecure", "--pin", "00" * 32, input=b"x\n")
        assert result.returncode == 1
        assert "is not pinned" in one_line_error(result.stderr)


def test_cert_key_cafile_sni_alpn_and_udp_with_tls(tmp_path: Path, pki: PKI) -> None:
    args = ["--cert", pki.server.certfile, "--key", pki.server.keyfile, "--alpn", "coap", "--echo", "-k"]
    with conduit(tmp_path, "listen", "--tls", "udp://127.0.0.1:0", *args) as listener:
        url = listener.bound_url().split("?")[0]
        assert url.startswith("dtls://")
        port = url.rsplit(":", 1)[1]
        payload = lines(5)
        result = run_conduit(
            "connect", "--lines", f"udp://127.0.0.1:{port}", "--tls", "--cafile", pki.cafile,
            "--sni", "a.test", "--alpn", "coap", input=payload,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == payload


@pytest.mark.interop
@pytest.mark.skipif(
    OPENSSL is None, reason="openssl not installed: run the nox tests session, which installs it"
)
def test_openssl_s_client_to_conduit_listen(tmp_path: Path, pki: PKI) -> None:
    assert OPENSSL is not None
    args = ["--cert", pki.server.certfile, "--key", pki.server.keyfile, "--echo"]
    with conduit(tmp_path, "listen", "dtls://127.0.0.1:0", *args) as listener:
        port = listener.bound_url().split("?")[0].rsplit(":", 1)[1]
        argv = [
            OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.cafile,
            "-servername", "localhost", "-mtu", "300", "-quiet",
        ]  # fmt: skip
        with spawn(argv, tmp_path) as client:
            assert client.popen.stdin is not None
            assert client.popen.stdout is not None
            client.popen.stdin.write(b"from s_client\n")
            client.popen.stdin.flush()
            out = b""
            while b"from s_client" not in out:  # (the echo; spawn's DEADLINE kills a hung peer)
                chunk = client.popen.stdout.read1(4096)
                assert chunk, client.stderr
                out += chunk


def test_check_round_trips_dtls_and_says_which_versions() -> None:
    import json

    from trio_conduit.tls import dtls_versions

    result = run_conduit("check", "--json")
    assert result.returncode == 0, result.stderr
    (dtls,) = [t for t in json.loads(result.stdout)["transports"] if t["schemes"] == ["dtls"]]
    assert dtls["available"] is True
    assert dtls["round_trip"]["ok"] is True, dtls
    versions = dtls_versions()
    assert dtls["reason"] == versions.reason
    assert ("has DTLS 1.2 and 1.3" in versions.reason) == versions.dtls13
    text = run_conduit("check")
    line = next(
        x for x in text.stdout.decode().splitlines() if x.strip().startswith("dtls ") and "datagram" in x
    )
    assert versions.openssl in line
    assert "EndOfChannel" not in text.stderr.decode()  # the close_notify ended the echo cleanly


def test_bench_only_dtls_reports_both_figures_against_raw_trio() -> None:
    import json
    import statistics

    from trio_conduit.bench.dtls import BLOCKS

    result = run_conduit(
        "bench", "--only", "dtls", "--repeat", "1", "--tls-connections", "3", "--connections", "20", "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    for name in ("dtls_handshakes_per_s", "dtls_ping_pong_per_s"):
        figure = doc[name] if name in doc else doc["dtls"][name]
        assert figure["raw_trio"] > 0
        assert figure["pool"] > 0
        assert figure["ratio_of_medians"] == figure["pool"] / figure["raw_trio"]
        # Raw trio and the pool alternate block by block in one run: the ratio is the median of
        # the per-block ratios, each block against its neighbour in time.
        runs = figure["runs"]
        assert len(runs["raw"]) == len(runs["pool"]) == len(figure["ratios"]) == BLOCKS
        assert figure["ratios"] == [p / r for r, p in zip(runs["raw"], runs["pool"], strict=True)]
        assert figure["ratio"] == statistics.median(figure["ratios"])
