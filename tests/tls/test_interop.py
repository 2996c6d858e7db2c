"""TLS against real peers: openssl s_server / s_client, gnutls-serv / gnutls-cli, ncat --ssl.

Each peer is started by the test on a port it chose (loopback only) and
killed and reaped on the way out. The peers' own output is checked (what
they verified, negotiated, resumed), not only ours.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_conduit as conduit
from trio_conduit.tls import TLSConnection, TLSError, TLSHandshake

from ..conftest import free_tcp_port
from ..interop.test_api_peers import read_exactly, wait_ready
from .conftest import PKI
from .test_tls import echo, exchange, serving

pytestmark = pytest.mark.interop

OPENSSL = shutil.which("openssl")
GNUTLS_SERV = shutil.which("gnutls-serv")
GNUTLS_CLI = shutil.which("gnutls-cli")
NCAT = shutil.which("ncat")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="openssl not installed: run the nox tests session, which installs it"
)
needs_gnutls = pytest.mark.skipif(
    GNUTLS_SERV is None or GNUTLS_CLI is None,
    reason="gnutls-bin not installed: run the nox tests session, which installs it",
)
needs_ncat = pytest.mark.skipif(
    NCAT is None, reason="ncat not installed: run the nox tests session, which installs it"
)


async def run_client(
    argv: list[str], stdin: bytes, *, timeout: float = 20
) -> subprocess.CompletedProcess[bytes]:
    """Run a client tool to completion with ``stdin``; its output (stdout and stderr together)."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            argv, stdin=stdin, capture_stdout=True, stderr=subprocess.STDOUT, check=False
        )


class Tool:
    """A peer process with stderr merged into stdout; :meth:`until` waits for its output."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.output = b""

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(data)

    async def until(self, marker: bytes, *, timeout: float = 10) -> bytes:
        """All output so far, once ``marker`` has appeared in it (after what was already read)."""
        assert self.proc.stdout is not None
        start = max(0, len(self.output) - len(marker))
        with trio.fail_after(timeout):
            while marker not in self.output[start:]:
                chunk = await self.proc.stdout.receive_some()
                assert chunk, f"{self.proc.args!r} ended before printing {marker!r}: {self.output[-2000:]!r}"
                self.output += chunk
        return self.output


@asynccontextmanager
async def tool(argv: list[str]) -> AsyncIterator[Tool]:
    """Start ``argv`` (stdin piped, stdout and stderr together); kill and reap it on the way out."""
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield Tool(proc)
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    await pipe.aclose()


# ---------------------------------------------------------------------------
# openssl s_server: our client
# ---------------------------------------------------------------------------


@needs_openssl
async def test_our_client_to_openssl_s_server_sni_alpn(pki: PKI) -> None:
    assert OPENSSL is not None
    other = pki.issue("sni-other", "other.test")
    port = free_tcp_port()
    argv = [
        OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "2", "-rev",
        "-cert", pki.server.certfile, "-key", pki.server.keyfile,
        "-servername", "other.test", "-cert2", other.certfile, "-key2", other.keyfile,
        "-alpn", "h2,http/1.1",
    ]  # fmt: skip
    async with tool(argv) as peer, conduit.open_pool() as pool:
        await wait_ready("tcp", port, "", peer.proc)
        conn = await pool.connect(f"tls://127.0.0.1:{port}", cafile=pki.cafile, server_hostname="other.test")
        assert conn.tls.peer_certificate.subject.rfc4514_string() == "CN=other.test"  # chosen by our SNI
        await conn.send_all(b"hello openssl\n")
        assert await read_exactly(conn, 14) == b"lssnepo olleh\n"  # s_server -rev: each line reversed
        await conn.aclose()
        conn = await pool.connect(f"tls://localhost:{port}", cafile=pki.cafile, alpn=["http/1.1"])
        assert conn.tls.peer_certificate.subject.rfc4514_string() == "CN=localhost"
        assert conn.tls.alpn == "http/1.1"  # (s_server sets ALPN on its default context only)
        await conn.aclose()


@needs_openssl
async def test_openssl_s_server_demanding_a_client_certificate(pki: PKI) -> None:
    assert OPENSSL is not None
    port = free_tcp_port()
    argv = [
        OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "2", "-rev", "-tls1_2",
        "-cert", pki.server.certfile, "-key", pki.server.keyfile,
        "-Verify", "1", "-CAfile", pki.cafile, "-verify_return_error",
    ]  # fmt: skip
    async with tool(argv) as peer, conduit.open_pool() as pool:
        await wait_ready("tcp", port, "", peer.proc)
        conn = await pool.connect(
            f"tls://localhost:{port}",
            cafile=pki.cafile,
            certfile=pki.client.certfile,
            keyfile=pki.client.keyfile,
        )
        await conn.send_all(b"abc\n")
        assert await read_exactly(conn, 3) == b"cba"
        await conn.aclose()
        with pytest.raises(TLSError) as info:
            await pool.connect(f"tls://localhost:{port}", cafile=pki.cafile)
        assert info.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
        output = await peer.until(b"peer did not return a certificate")
    assert b"CN = alice" in output


# ---------------------------------------------------------------------------
# openssl s_client: our server
# ---------------------------------------------------------------------------


@needs_openssl
async def test_openssl_s_client_sni_alpn_to_our_server(pki: PKI) -> None:
    assert OPENSSL is not None
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn.info.tls)
        await echo(conn)

    url = pki.server_url() + "&alpn=h2,http/1.1"
    async with conduit.open_pool() as pool, serving(pool, url, handler) as addr:
        out = await run_client(
            [
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{addr.port}", "-servername", "a.test",
                "-alpn", "http/1.1", "-CAfile", pki.cafile, "-verify_return_error",
                "-verify_hostname", "a.test",
            ],
            b"",
        )  # fmt: skip
    text = out.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text
    assert "ALPN protocol: http/1.1" in text
    assert seen[0].server_name == "a.test"
    assert seen[0].alpn == "http/1.1"
    assert seen[0].client_hello.alpn_protocols == ("http/1.1",)


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_openssl_s_client_resumes_a_session(pki: PKI, tmp_path: Path, version: str) -> None:
    assert OPENSSL is not None
    reused: list[bool] = []

    async def handler(conn: Any) -> None:
        reused.append(conn.info.tls.session_reused)
        await echo(conn)

    session = tmp_path / "session.pem"
    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), handler) as addr:
        base = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{addr.port}", "-CAfile", pki.cafile, version]
        for flag in ("-sess_out", "-sess_in"):
            async with tool([*base, flag, str(session), "-ign_eof"]) as peer:
                await peer.send(b"echo me\n")
                text = await peer.until(b"echo me\n", timeout=10)
                if flag == "-sess_out":
                    assert b"New, TLSv1." in text
                else:
                    assert b"Reused, TLSv1." in text
    assert reused == [False, True]


@needs_openssl
async def test_client_renegotiation_is_refused(pki: PKI) -> None:
    """``openssl s_client -tls1_2`` sending ``R`` asks for a renegotiation: refused, and the
    data after it never reaches the handler."""
    assert OPENSSL is not None
    got: list[bytes] = []
    failure: list[BaseException] = []

    async def handler(conn: Any) -> None:
        try:
            while data := await conn.receive_some():
                got.append(data)
        except trio.BrokenResourceError as exc:
            failure.append(exc)

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), handler) as addr:
        argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{addr.port}", "-CAfile", pki.cafile, "-tls1_2"]
        async with tool(argv) as peer:
            await peer.until(b"Verify return code: 0 (ok)")
            await peer.send(b"before\n")
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.01)
            await peer.send(b"R\n")
            text = await peer.until(b"no renegotiation")
            with trio.fail_after(5):
                await peer.proc.wait()
        with trio.fail_after(5):
            while not failure:
                await trio.sleep(0.01)
    assert b"RENEGOTIATING" in text
    assert got == [b"before\n"]
    assert "HANDSHAKE_FAILURE" in repr(failure[0].__cause__)


@needs_openssl
async def test_tls_1_1_is_refused_by_default(pki: PKI) -> None:
    assert OPENSSL is not None
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        base = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{addr.port}", "-CAfile", pki.cafile]
        old = await run_client([*base, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], b"")
        ok = await run_client([*base, "-tls1_2"], b"")
    assert old.returncode != 0
    assert b"protocol version" in old.stdout or b"unsupported protocol" in old.stdout
    assert b"Protocol  : TLSv1.2" in ok.stdout


@needs_openssl
async def test_blind_tunnel_between_openssl_peers(pki: PKI) -> None:
    """openssl s_client reaches openssl s_server through our listener, which tunnels by SNI:
    the certificate the client sees is the origin's, and data flows both ways."""
    assert OPENSSL is not None
    origin_cert = pki.issue("tunnel-origin", "origin.test")
    origin_port = free_tcp_port()
    origin = [
        OPENSSL, "s_server", "-accept", f"127.0.0.1:{origin_port}", "-naccept", "1", "-rev",
        "-cert", origin_cert.certfile, "-key", origin_cert.keyfile,
    ]  # fmt: skip
    tunnelled: list[str] = []

    class Router:
        @conduit.hookimpl
        def conduit_tls_client_hello(self, handshake: TLSHandshake) -> None:
            if handshake.server_name == "origin.test":
                tunnelled.append(handshake.peer)
                handshake.tunnel(f"tcp://127.0.0.1:{origin_port}")

    async with tool(origin) as origin_peer, conduit.open_pool() as pool:
        await wait_ready("tcp", origin_port, "", origin_peer.proc)
        async with serving(pool, pki.server_url(), plugins=[Router()]) as front:
            argv = [
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{front.port}", "-servername", "origin.test",
                "-CAfile", pki.cafile, "-verify_return_error", "-ign_eof",
            ]  # fmt: skip
            async with tool(argv) as client:
                await client.until(b"Verify return code: 0 (ok)")
                await client.send(b"through\n")
                text = await client.until(b"hguorht")
    assert b"CN = origin.test" in text or b"CN=origin.test" in text
    assert len(tunnelled) == 1


# ---------------------------------------------------------------------------
# gnutls
# ---------------------------------------------------------------------------


@needs_gnutls
async def test_our_client_to_gnutls_serv(pki: PKI) -> None:
    assert GNUTLS_SERV is not None
    port = free_tcp_port()
    argv = [
        GNUTLS_SERV, "--echo", "-p", str(port), "-a",
        "--x509certfile", pki.server.certfile, "--x509keyfile", pki.server.keyfile, "--alpn", "h2",
    ]  # fmt: skip
    async with tool(argv) as peer, conduit.open_pool() as pool:
        await wait_ready("tcp", port, "", peer.proc)
        for version in ("1.3", "1.2"):
            conn = await pool.connect(
                f"tls://localhost:{port}", cafile=pki.cafile, alpn=["h2"], max_version=version
            )
            assert conn.tls.version == f"TLSv{version}"
            assert conn.tls.alpn == "h2"
            assert await exchange(conn, b"hello gnutls\n") == b"hello gnutls\n"
            await conn.aclose()


@needs_gnutls
async def test_gnutls_cli_to_our_server(pki: PKI) -> None:
    assert GNUTLS_CLI is not None
    seen: list[Any] = []

    async def handler(conn: TLSConnection) -> None:
        seen.append(conn.tls)
        await echo(conn)

    async with conduit.open_pool() as pool, serving(pool, pki.server_url() + "&alpn=h2", handler) as addr:
        argv = [
            GNUTLS_CLI, "-p", str(addr.port), "--x509cafile", pki.cafile, "--sni-hostname", "b.test",
            "--verify-hostname", "b.test", "--alpn", "h2", "127.0.0.1",
        ]  # fmt: skip
        async with tool(argv) as peer:
            await peer.until(b"Handshake was completed")
            await peer.send(b"gnutls says hi\n")
            text = await peer.until(b"gnutls says hi\n")
    assert b"Status: The certificate is trusted" in text
    assert seen[0].server_name == "b.test"
    assert seen[0].alpn == "h2"


@needs_gnutls
async def test_gnutls_cli_resumes(pki: PKI) -> None:
    assert GNUTLS_CLI is not None
    reused: list[bool] = []

    async def handler(conn: Any) -> None:
        reused.append(conn.info.tls.session_reused)
        await echo(conn)

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), handler) as addr:
        # TLS 1.2: gnutls-cli 3.7 cannot wait for a TLS 1.3 ticket without data to read
        argv = [GNUTLS_CLI, "-p", str(addr.port), "--x509cafile", pki.cafile, "--resume"]
        out = await run_client([*argv, "--priority", "NORMAL:-VERS-TLS1.3", "localhost"], b"")
    assert b"*** This is a resumed session" in out.stdout
    assert reused == [False, True]


# ---------------------------------------------------------------------------
# ncat --ssl
# ---------------------------------------------------------------------------


@needs_ncat
async def test_our_client_to_ncat_ssl_listener(pki: PKI) -> None:
    assert NCAT is not None
    port = free_tcp_port()
    argv = [
        NCAT,
        "--ssl",
        "--ssl-cert",
        pki.server.certfile,
        "--ssl-key",
        pki.server.keyfile,
        "-l",
        "127.0.0.1",
        str(port),
    ]
    async with tool(argv) as peer, conduit.open_pool() as pool:
        await wait_ready("tcp", port, "", peer.proc)
        conn = await pool.connect(f"tls://localhost:{port}", cafile=pki.cafile, ragged_eof=True)
        await conn.send_all(b"to ncat\n")
        assert b"to ncat\n" in await peer.until(b"to ncat\n")
        await peer.send(b"from ncat\n")
        assert await read_exactly(conn, 10) == b"from ncat\n"
        await conn.aclose()


@needs_ncat
async def test_ncat_ssl_client_to_our_server(pki: PKI) -> None:
    assert NCAT is not None
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        argv = [NCAT, "--ssl", "--ssl-verify", "--ssl-trustfile", pki.cafile, "localhost", str(addr.port)]
        async with tool(argv) as peer:
            await peer.send(b"ncat over tls\n")
            assert b"ncat over tls\n" in await peer.until(b"ncat over tls\n")


@needs_openssl
async def test_openssl_s_client_sees_our_alert_for_an_unknown_name(pki: PKI) -> None:
    """No certificate for the name asked: the client gets an unrecognized_name alert, not silence."""
    assert OPENSSL is not None

    class OnlyKnown:
        @conduit.hookimpl
        def conduit_tls_client_hello(self, handshake: TLSHandshake) -> None:
            if handshake.server_name != "a.test":
                handshake.reject("unknown name")

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), plugins=[OnlyKnown()]) as addr:
        out = await run_client(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{addr.port}", "-servername", "z.test"], b""
        )
    assert out.returncode != 0
    assert b"alert access denied" in out.stdout
