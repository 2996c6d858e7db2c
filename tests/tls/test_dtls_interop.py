"""DTLS against real peers: openssl s_server / s_client, gnutls-serv / gnutls-cli, ncat --ssl -u.

Each peer is started by the test on a loopback port and killed and reaped on
the way out; the peers' own output is checked (what they negotiated, resumed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import trio_conduit as conduit
from trio_conduit.tls import DTLSConnection

from ..conftest import free_udp_port
from ..interop.test_api_peers import wait_ready
from .conftest import PKI
from .test_dtls import server_url, serving
from .test_interop import (
    GNUTLS_CLI,
    GNUTLS_SERV,
    NCAT,
    OPENSSL,
    needs_gnutls,
    needs_ncat,
    needs_openssl,
    tool,
)

pytestmark = pytest.mark.interop


async def receive_until(conn: Any, marker: bytes) -> bytes:
    got = b""
    with trio.fail_after(10):
        while marker not in got:
            got += await conn.receive()
    return got


# ---------------------------------------------------------------------------
# our client
# ---------------------------------------------------------------------------


@needs_openssl
async def test_our_client_to_openssl_s_server(pki: PKI) -> None:
    assert OPENSSL is not None
    port = free_udp_port()
    argv = [
        OPENSSL, "s_server", "-dtls1_2", "-listen", "-accept", f"127.0.0.1:{port}",
        "-cert", pki.server.certfile, "-key", pki.server.keyfile, "-alpn", "coap",
    ]  # fmt: skip
    async with tool(argv) as peer, conduit.open_pool() as pool:
        await wait_ready("udp", port, "", peer.proc)
        conn = await pool.connect(f"dtls://localhost:{port}", cafile=pki.cafile, alpn=["coap"])
        assert isinstance(conn, DTLSConnection)
        assert conn.tls.version == "DTLSv1.2"
        assert conn.tls.alpn == "coap"
        await conn.send(b"hello s_server\n")
        await peer.until(b"hello s_server")  # s_server prints what it receives
        await peer.send(b"hello conduit\n")  # ... and sends what it reads
        assert b"hello conduit" in await receive_until(conn, b"\n")
        await conn.aclose()
        output = await peer.until(b"DONE")  # our close_notify ended its session
        assert b"ALPN protocols selected: coap" in output


@needs_gnutls
async def test_our_client_to_gnutls_serv(pki: PKI) -> None:
    assert GNUTLS_SERV is not None
    port = free_udp_port()
    argv = [
        GNUTLS_SERV, "--udp", "--echo", "-p", str(port),
        "--x509certfile", pki.server.certfile, "--x509keyfile", pki.server.keyfile,
    ]  # fmt: skip
    async with tool(argv) as peer, conduit.open_pool() as pool:
        await wait_ready("udp", port, "", peer.proc)
        conn = await pool.connect(f"dtls://localhost:{port}", cafile=pki.cafile)
        for message in (b"one", b"two" * 30):
            await conn.send(message)
            with trio.fail_after(10):
                assert await conn.receive() == message  # --echo: each message back
        await conn.aclose()


# ---------------------------------------------------------------------------
# our server
# ---------------------------------------------------------------------------


async def upper_echo(conn: Any) -> None:
    async for message in conn:
        await conn.send(message.upper())


@needs_openssl
@pytest.mark.parametrize("mtu", [None, 256])
async def test_openssl_s_client_to_our_server(pki: PKI, mtu: int | None) -> None:
    """With ``-mtu 256`` s_client's handshake messages come in fragments (its hello too)."""
    assert OPENSSL is not None
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn.info.tls)
        await upper_echo(conn)

    async with conduit.open_pool() as pool, serving(pool, server_url(pki), handler) as addr:
        argv = [
            OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{addr.port}",
            "-CAfile", pki.cafile, "-servername", "localhost", "-verify_return_error",
        ]  # fmt: skip
        if mtu is not None:
            argv += ["-mtu", str(mtu)]
        async with tool(argv) as peer:
            await peer.until(b"Verify return code: 0 (ok)")
            await peer.send(b"shout please\n")
            await peer.until(b"SHOUT PLEASE")
    (tls,) = seen
    assert tls.version == "DTLSv1.2"
    assert tls.server_name == "localhost"


@needs_openssl
async def test_openssl_s_client_resumes_a_session(pki: PKI, tmp_path: Path) -> None:
    assert OPENSSL is not None
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn.info.tls.session_reused)
        await upper_echo(conn)

    session = tmp_path / "session.pem"
    async with conduit.open_pool() as pool, serving(pool, server_url(pki), handler) as addr:
        base = [
            OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{addr.port}",
            "-CAfile", pki.cafile, "-servername", "localhost",
        ]  # fmt: skip
        async with tool([*base, "-sess_out", str(session)]) as peer:
            await peer.until(b"Verify return code")
            await peer.send(b"first\n")
            await peer.until(b"FIRST")
        async with tool([*base, "-sess_in", str(session)]) as peer:
            output = await peer.until(b"Verify return code")
            await peer.send(b"second\n")
            await peer.until(b"SECOND")
            assert b"Reused," in output
    assert seen == [False, True]


@needs_gnutls
async def test_gnutls_cli_to_our_server(pki: PKI) -> None:
    assert GNUTLS_CLI is not None
    async with conduit.open_pool() as pool, serving(pool, server_url(pki), upper_echo) as addr:
        argv = [GNUTLS_CLI, "--udp", "-p", str(addr.port), "--x509cafile", pki.cafile, "localhost"]
        async with tool(argv) as peer:
            await peer.until(b"Handshake was completed")
            await peer.send(b"gnutls here\n")
            await peer.until(b"GNUTLS HERE")


@needs_ncat
async def test_ncat_dtls_client_to_our_server(pki: PKI) -> None:
    assert NCAT is not None
    async with conduit.open_pool() as pool, serving(pool, server_url(pki), upper_echo) as addr:
        argv = [
            NCAT,
            "--ssl",
            "-u",
            "--ssl-trustfile",
            pki.cafile,
            "--ssl-verify",
            "localhost",
            str(addr.port),
        ]
        async with tool(argv) as peer:
            await peer.send(b"ncat over dtls\n")
            await peer.until(b"NCAT OVER DTLS")
