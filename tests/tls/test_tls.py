"""TLS through the pool: tls://, tls= on other stream transports, start_tls, options and facts."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import trio_conduit as conduit
from trio_conduit import DEBUG_ALL
from trio_conduit.tls import (
    TLSConfig,
    TLSConnection,
    TLSError,
    TLSVerifyError,
    build_context,
    session_cache,
)

from .conftest import PKI


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def exchange(conn: Any, payload: bytes = b"ping") -> bytes:
    await conn.send_all(payload)
    got = b""
    while len(got) < len(payload):
        data = await conn.receive_some()
        if not data:
            break
        got += data
    return got


@asynccontextmanager
async def serving(
    pool: conduit.Pool, url: str, handler: Callable[[Any], Awaitable[object]] = echo, **kw: Any
) -> AsyncIterator[conduit.Address]:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: pool.serve(url, handler, task_status=task_status, **kw)
        )
        yield address
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# basics and facts
# ---------------------------------------------------------------------------


async def test_tls_url_round_trip_and_facts(pki: PKI) -> None:
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn)
        await echo(conn)

    async with (
        conduit.open_pool() as pool,
        serving(pool, pki.server_url() + "&alpn=h2,http/1.1", handler) as addr,
    ):
        conn = await pool.connect(
            f"tls://localhost:{addr.port}", cafile=pki.cafile, alpn=["h2"], local="127.0.0.1"
        )
        assert isinstance(conn, TLSConnection)
        assert await exchange(conn, b"hello tls") == b"hello tls"
        info = conn.info
        assert info.transport == "tls"
        assert isinstance(info.remote, tuple)
        assert info.remote[1] == addr.port
        assert conn.id == conn.transport.id
        facts = info.tls
        assert facts is conn.tls
        assert facts.side == "client"
        assert facts.version == "TLSv1.3"
        assert facts.cipher.startswith("TLS_")
        assert facts.cipher_bits >= 128
        assert facts.alpn == "h2"
        assert facts.server_name == "localhost"
        assert not facts.session_reused
        assert 0 < facts.handshake_seconds < 5
        assert isinstance(facts.peer_certificate, x509.Certificate)
        assert facts.peer_certificate.subject.rfc4514_string() == "CN=localhost"
        assert [c.subject.rfc4514_string() for c in facts.peer_chain] == [
            "CN=localhost",
            "CN=conduit test CA",
        ]
        server = seen[0]
        assert server.info.tls.side == "server"
        assert server.info.tls.server_name == "localhost"
        assert server.info.tls.alpn == "h2"
        assert server.info.tls.peer_certificate is None  # no client certificate asked
        assert server.info.tls.client_hello.server_name == "localhost"
        assert server.info.tls.client_hello.alpn_protocols == ("h2",)
        # parsed when first asked for (no hook wanted it), then kept
        assert server.info.tls.client_hello is server.handshake.hello
        assert facts.client_hello is None
        # The fast constructors fill every field, as the dataclass's own would.
        for made in (facts, server.info.tls):
            rebuilt = dataclasses.replace(made)
            assert {f.name: getattr(made, f.name) for f in dataclasses.fields(made)} == {
                f.name: getattr(rebuilt, f.name) for f in dataclasses.fields(rebuilt)
            }
            with pytest.raises(dataclasses.FrozenInstanceError):
                made.version = "TLSv1.0"  # type: ignore[misc]
        assert server.info == dataclasses.replace(server.transport.info, transport="tls", tls=server.tls)
        assert info == dataclasses.replace(conn.transport.info, transport="tls", tls=facts)
        assert conn in pool.connections
        await conn.aclose()
        assert conn not in pool.connections


async def test_tls_option_on_tcp(pki: PKI) -> None:
    async with (
        conduit.open_pool() as pool,
        serving(pool, "tcp://127.0.0.1:0", tls=pki.server_config()) as addr,
    ):
        conn = await pool.connect(f"tcp://127.0.0.1:{addr.port}", tls=pki.client_config(), timeout=10)
        assert conn.info.transport == "tcp"
        assert conn.info.tls.server_name is None  # an IP address: no SNI, but the IP is verified
        assert await exchange(conn) == b"ping"
        await conn.aclose()
        # a dict of options and an ssl.SSLContext are accepted too
        conn = await pool.connect(f"tcp://127.0.0.1:{addr.port}", tls={"cafile": pki.cafile})
        assert await exchange(conn) == b"ping"
        await conn.aclose()
        ctx = ssl.create_default_context(cafile=pki.cafile)
        conn = await pool.connect(f"tcp://127.0.0.1:{addr.port}", tls=ctx)
        assert conn.tls.version == "TLSv1.3"
        await conn.aclose()


async def test_connect_stream_takes_tls_urls_and_the_tls_option(pki: PKI) -> None:
    async with (
        conduit.open_pool() as pool,
        serving(pool, pki.server_url()) as addr,
    ):
        conn = await pool.connect_stream(f"tls://localhost:{addr.port}", cafile=pki.cafile, timeout=10)
        assert isinstance(conn, TLSConnection)
        assert conn.info.tls is conn.tls
        assert await exchange(conn) == b"ping"
        await conn.aclose()
        conn = await pool.connect_stream(
            f"tcp://localhost:{addr.port}", tls={"cafile": pki.cafile}, timeout=10
        )
        assert isinstance(conn, TLSConnection)
        assert conn.info.transport == "tcp"
        assert await exchange(conn) == b"ping"
        await conn.aclose()


async def test_tls_over_a_datagram_transport_is_refused(pki: PKI) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(TypeError, match="stream transport"):
            await pool.connect("udp://127.0.0.1:9", tls=True)


async def test_tls_config_validation() -> None:
    assert TLSConfig(alpn="h2, http/1.1").alpn == ("h2", "http/1.1")  # type: ignore[arg-type]
    assert TLSConfig(min_version="1.3").min_version is ssl.TLSVersion.TLSv1_3  # type: ignore[arg-type]
    assert TLSConfig(record_size="1300").record_size == 1300  # type: ignore[arg-type]
    assert TLSConfig(pin_sha256="AB:" * 31 + "AB").pin_sha256 == frozenset({"ab" * 32})  # type: ignore[arg-type]
    for bad in (
        {"record_size": 10},
        {"client_auth": "sometimes"},
        {"min_version": "2.0"},
        {"trace": "bad host!"},
    ):
        with pytest.raises(ValueError):
            TLSConfig().replace(**bad)
    with pytest.raises(TypeError, match="unknown TLS option"):
        TLSConfig().replace(colour="blue")
    with pytest.raises(TypeError, match="tls= takes"):
        TLSConfig.coerce(42)


async def test_url_query_options(pki: PKI) -> None:
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        conn = await pool.connect(
            f"tls://127.0.0.1:{addr.port}?cafile={pki.cafile}&max_version=1.2&nodelay=1"
        )
        assert conn.tls.version == "TLSv1.2"
        await conn.aclose()
        with pytest.raises(conduit.AddressError, match="record_size"):
            await pool.connect(f"tls://127.0.0.1:{addr.port}?record_size=huge")
        with pytest.raises(conduit.AddressError, match="keyword argument"):
            await pool.connect(f"tls://127.0.0.1:{addr.port}?context=x")


# ---------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------


async def test_verification_is_on_by_default(pki: PKI) -> None:
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        with pytest.raises(TLSVerifyError) as info:
            await pool.connect(f"tls://localhost:{addr.port}")  # system CAs do not know our CA
        assert info.value.verify_code == 20
        assert "unable to get local issuer certificate" in str(info.value)
        assert info.value.peer == f"localhost:{addr.port}"
        assert pool.connections == []
        # only an explicit verify=False skips it
        conn = await pool.connect(f"tls://localhost:{addr.port}", verify=False)
        assert conn.tls.peer_certificate.subject.rfc4514_string() == "CN=localhost"
        await conn.aclose()


async def test_hostname_mismatch(pki: PKI) -> None:
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        with pytest.raises(TLSVerifyError) as info:
            await pool.connect(
                f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile, server_hostname="wrong.test"
            )
        assert info.value.verify_code == 62
        assert "Hostname mismatch" in str(info.value)
        assert "wrong.test" in str(info.value)


async def test_expired_certificate(pki: PKI) -> None:
    url = f"tls://127.0.0.1:0?certfile={pki.expired.certfile}&keyfile={pki.expired.keyfile}"
    async with conduit.open_pool() as pool, serving(pool, url) as addr:
        with pytest.raises(TLSVerifyError) as info:
            await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
        assert info.value.verify_code == 10
        assert "certificate has expired" in str(info.value)


async def test_unknown_ca(pki: PKI) -> None:
    url = f"tls://127.0.0.1:0?certfile={pki.stranger.certfile}&keyfile={pki.stranger.keyfile}"
    async with conduit.open_pool() as pool, serving(pool, url) as addr:
        with pytest.raises(TLSVerifyError) as info:
            await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
        assert info.value.verify_code == 20
        assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"


async def test_verification_needs_a_name(pki: PKI, sock_dir: Path) -> None:
    url = f"unix://{sock_dir}/s.sock"
    async with conduit.open_pool() as pool, serving(pool, url, tls=pki.server_config()):
        with pytest.raises(TLSError, match="server_hostname") as info:
            await pool.connect(url, tls=pki.client_config())
        assert info.value.reason == "NO_SERVER_NAME"


async def test_pinning(pki: PKI) -> None:
    good = hashlib.sha256(pki.server.cert.leaf.public_bytes(ssl_der())).hexdigest()
    assert pki.server.cert.sha256.replace(":", "").lower() == good
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        url = f"tls://127.0.0.1:{addr.port}"
        conn = await pool.connect(url, verify=False, pin_sha256=[pki.server.cert.sha256])
        await conn.aclose()
        conn = await pool.connect(url, cafile=pki.cafile, pin_sha256=good)  # both: CA and pin
        await conn.aclose()
        with pytest.raises(TLSVerifyError, match="is not pinned") as info:
            await pool.connect(url, verify=False, pin_sha256=["00" * 32])
        assert info.value.reason == "PIN_MISMATCH"


def ssl_der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


async def test_mutual_tls(pki: PKI) -> None:
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn.info.tls.peer_certificate)
        await echo(conn)

    config = pki.server_config(client_auth="required", cafile=pki.cafile)
    async with conduit.open_pool() as pool, serving(pool, "tcp://127.0.0.1:0", handler, tls=config) as addr:
        url = f"tcp://127.0.0.1:{addr.port}"
        conn = await pool.connect(
            url, tls=pki.client_config(certfile=pki.client.certfile, keyfile=pki.client.keyfile)
        )
        assert await exchange(conn) == b"ping"
        await conn.aclose()
        assert seen[0].subject.rfc4514_string() == "CN=alice"
        # Without a client certificate: TLS 1.3 finishes the client's handshake first; the
        # server's refusal (an alert) arrives with the first read. No handler runs.
        conn = await pool.connect(url, tls=pki.client_config())
        with pytest.raises(trio.BrokenResourceError) as info:
            await exchange(conn)
        assert "CERTIFICATE_REQUIRED" in repr(info.value.__cause__)
        await conn.aclose()
        # TLS 1.2: the handshake itself fails
        with pytest.raises(TLSError, match="handshake failure"):
            await pool.connect(url, tls=pki.client_config(max_version="1.2"))
    assert len(seen) == 1


async def test_versions_and_ciphers(pki: PKI) -> None:
    assert build_context(pki.server_config(), "server").minimum_version is ssl.TLSVersion.TLSv1_2
    assert build_context(pki.client_config(), "client").minimum_version is ssl.TLSVersion.TLSv1_2
    assert build_context(pki.server_config(), "server").options & ssl.OP_NO_RENEGOTIATION
    async with conduit.open_pool() as pool, serving(pool, pki.server_url() + "&max_version=1.2") as addr:
        url = f"tls://127.0.0.1:{addr.port}"
        conn = await pool.connect(url, cafile=pki.cafile, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        assert (conn.tls.version, conn.tls.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
        await conn.aclose()
        with pytest.raises(TLSError, match=r"protocol version|unsupported protocol") as info:
            await pool.connect(url, cafile=pki.cafile, min_version="1.3")
        assert "PROTOCOL" in info.value.reason


async def test_keylog_file(pki: PKI, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile, keylog_file=str(keylog))
        await exchange(conn)
        await conn.aclose()
    labels = {
        line.split()[0] for line in keylog.read_text().splitlines() if line and not line.startswith("#")
    }
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"} <= labels


async def test_replaced_certificate_files_are_picked_up(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener built from files serves new ones once they change on disk (renewal), within
    the file-check interval (1 s; 0 here), without a restart."""
    from trio_conduit.tls import _config

    monkeypatch.setattr(_config, "_STAT_EVERY", 0.0)
    first = pki.issue("renew-a", "localhost", "127.0.0.1")
    second = pki.issue("renew-b", "localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"

    def install(pair: Any, mtime: int) -> None:
        certfile.write_bytes(Path(pair.certfile).read_bytes())
        keyfile.write_bytes(Path(pair.keyfile).read_bytes())
        for path in (certfile, keyfile):
            os.utime(path, ns=(mtime, mtime))  # a distinct mtime, however coarse the clock

    def fingerprint(pair: Any) -> bytes:
        return hashlib.sha256(pair.cert.leaf.public_bytes(serialization.Encoding.DER)).digest()

    async def served_fingerprint(port: int) -> bytes:
        conn = await pool.connect(f"tls://127.0.0.1:{port}", cafile=pki.cafile, session_cache=False)
        der = conn.tls.peer_certificate_der
        await conn.aclose()
        return hashlib.sha256(der).digest()

    install(first, 1_000_000_000_000_000_000)
    url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
    async with conduit.open_pool() as pool, serving(pool, url) as addr:
        assert await served_fingerprint(addr.port) == fingerprint(first)
        assert await served_fingerprint(addr.port) == fingerprint(first)
        install(second, 2_000_000_000_000_000_000)
        assert await served_fingerprint(addr.port) == fingerprint(second)


# ---------------------------------------------------------------------------
# per-peer wire trace
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trace", "shown"),
    [
        ("127.0.0.1", True),
        ("127.0.0.0/8", True),
        ("localhost", True),
        ("*.test", False),
        ("10.0.0.0/8", False),
    ],
)
async def test_wire_trace_only_for_matching_peers(
    pki: PKI, caplog: pytest.LogCaptureFixture, trace: str, shown: bool
) -> None:
    caplog.set_level(DEBUG_ALL, logger="trio_conduit")
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        conn = await pool.connect(
            f"tls://localhost:{addr.port}", cafile=pki.cafile, trace=[trace], local="127.0.0.1"
        )
        await exchange(conn, b"secret payload")
        await conn.aclose()
    wire = [r.getMessage() for r in caplog.records if r.name == "trio_conduit.tls.wire"]
    assert any("b'secret payload'" in m and "write 14 bytes" in m for m in wire) is shown
    assert any("b'secret payload'" in m and "read 14 bytes" in m for m in wire) is shown
    assert all(r.levelno == DEBUG_ALL for r in caplog.records if r.name == "trio_conduit.tls.wire")


async def test_wire_trace_off_below_debug_all(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_conduit")
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile, trace=["127.0.0.1"])
        await exchange(conn, b"secret payload")
        await conn.aclose()
    assert not [r for r in caplog.records if "secret payload" in r.getMessage()]
    assert any("TLS client handshake with" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# sessions
# ---------------------------------------------------------------------------


async def test_session_reuse_through_the_cache(pki: PKI) -> None:
    server_reused: list[bool] = []

    async def handler(conn: Any) -> None:
        server_reused.append(conn.info.tls.session_reused)
        await echo(conn)

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), handler) as addr:
        url = f"tls://localhost:{addr.port}"
        first = await pool.connect(url, cafile=pki.cafile)
        assert not first.tls.session_reused
        assert len(session_cache) == 0  # TLS 1.3: the ticket comes with data
        await exchange(first)
        assert len(session_cache) == 1
        session = first.session
        assert session is not None
        assert session.has_ticket
        await first.aclose()
        second = await pool.connect(url, cafile=pki.cafile)
        assert second.tls.session_reused
        await exchange(second)
        await second.aclose()
        third = await pool.connect(url, cafile=pki.cafile, session_cache=False)
        assert not third.tls.session_reused
        await exchange(third)
        await third.aclose()
        # a session passed in explicitly
        fourth = await pool.connect(url, cafile=pki.cafile, session=session, session_cache=False)
        assert fourth.tls.session_reused
        await fourth.aclose()
    assert server_reused[:3] == [False, True, False]


async def test_tls12_session_cached_at_handshake(pki: PKI) -> None:
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        url = f"tls://localhost:{addr.port}"
        first = await pool.connect(url, cafile=pki.cafile, max_version="1.2")
        assert len(session_cache) == 1
        await first.aclose()
        second = await pool.connect(url, cafile=pki.cafile, max_version="1.2")
        assert second.tls.session_reused
        assert second.tls.version == "TLSv1.2"
        await second.aclose()


async def test_session_hooks(pki: PKI) -> None:
    class Store:
        def __init__(self) -> None:
            self.sessions: dict[str, ssl.SSLSession] = {}
            self.calls: list[str] = []

        @conduit.hookimpl
        async def conduit_tls_session_get(self, key: Any) -> ssl.SSLSession | None:
            await trio.sleep(0)
            self.calls.append(f"get {key}")
            return self.sessions.get(str(key))

        @conduit.hookimpl
        def conduit_tls_session_put(self, key: Any, session: ssl.SSLSession) -> None:
            self.calls.append(f"put {key}")
            self.sessions[str(key)] = session

        @conduit.hookimpl
        def conduit_tls_session_remove(self, key: Any) -> None:
            self.calls.append(f"remove {key}")
            self.sessions.pop(str(key), None)

    store = Store()
    async with (
        conduit.open_pool() as server_pool,
        serving(server_pool, pki.server_url() + "&max_version=1.2") as addr,
        conduit.open_pool(plugins=[store]) as pool,
    ):
        url = f"tls://localhost:{addr.port}"
        conn = await pool.connect(url, cafile=pki.cafile)
        await conn.aclose()
        session_cache.clear()  # only the plugin's store has it now
        conn = await pool.connect(url, cafile=pki.cafile)
        assert conn.tls.session_reused
        await conn.aclose()
        key = f"localhost:{addr.port}/localhost"
        assert store.calls[:3] == [f"get {key}", f"put {key}", f"get {key}"]
    # A handshake that fails while offering a session removes it (here: the server wants a
    # client certificate and gets none; the session, from another server, is not resumed).
    strict = pki.server_url() + f"&max_version=1.2&client_auth=required&cafile={pki.cafile}"
    async with (
        conduit.open_pool() as server_pool,
        serving(server_pool, strict) as addr2,
        conduit.open_pool(plugins=[store]) as pool,
    ):
        key2 = f"localhost:{addr2.port}/localhost"
        store.sessions[key2] = next(iter(store.sessions.values()))
        with pytest.raises(TLSError, match="handshake failure"):
            await pool.connect(f"tls://localhost:{addr2.port}", cafile=pki.cafile)
    assert store.calls[-2:] == [f"get {key2}", f"remove {key2}"]
    assert key2 not in store.sessions


# ---------------------------------------------------------------------------
# ALPN handlers
# ---------------------------------------------------------------------------


async def test_alpn_selects_the_handler(pki: PKI) -> None:
    ran: list[str] = []

    def make(name: str) -> Callable[[Any], Awaitable[None]]:
        async def handler(conn: Any) -> None:
            ran.append(name)
            await conn.send_all(name.encode())

        return handler

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        addr = await nursery.start(
            lambda task_status: pool.serve(
                "tcp://127.0.0.1:0",
                handlers={"h2": make("h2"), "http/1.1": make("h1")},
                tls=pki.server_config(),
                task_status=task_status,
            )
        )
        url = f"tcp://localhost:{addr.port}"
        for offer, expected in [(["http/1.1"], "h1"), (["h2", "http/1.1"], "h2"), (["http/1.1", "h2"], "h2")]:
            conn = await pool.connect(url, tls=pki.client_config(alpn=offer))
            assert await conn.receive_some() == expected.encode()
            assert conn.tls.alpn == ("h2" if expected == "h2" else "http/1.1")
            await conn.aclose()
        # no ALPN offered and no default handler: closed without a word
        conn = await pool.connect(url, tls=pki.client_config())
        assert await conn.receive_some() == b""
        await conn.aclose()
        nursery.cancel_scope.cancel()
    assert ran == ["h1", "h2", "h2"]


async def test_alpn_handlers_with_a_default_on_tls_url(pki: PKI) -> None:
    async def h2(conn: Any) -> None:
        await conn.send_all(b"h2")

    async def fallback(conn: Any) -> None:
        await conn.send_all(b"default")

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        addr = await nursery.start(
            lambda task_status: pool.serve(
                pki.server_url(), fallback, handlers={"h2": h2}, task_status=task_status
            )
        )
        for offer, expected in [(["h2"], b"h2"), (None, b"default")]:
            conn = await pool.connect(f"tls://localhost:{addr.port}", cafile=pki.cafile, alpn=offer)
            assert await conn.receive_some() == expected
            await conn.aclose()
        nursery.cancel_scope.cancel()
    with pytest.raises(TypeError, match="needs a handler"):
        async with conduit.open_pool() as pool:
            await pool.serve("tcp://127.0.0.1:0")


# ---------------------------------------------------------------------------
# STARTTLS, other transports, TLS over TLS
# ---------------------------------------------------------------------------


async def test_start_tls_both_sides(pki: PKI) -> None:
    server_ids: list[tuple[int, int, bool]] = []

    async def smtpish(conn: Any) -> None:
        assert await conn.receive_some() == b"STARTTLS\n"
        await conn.send_all(b"GO\n")
        tls = await conn.start_tls(server_side=True, certfile=pki.server.certfile, keyfile=pki.server.keyfile)
        server_ids.append((conn.id, tls.id, tls in pool.connections and conn not in pool.connections))
        await echo(tls)

    async with conduit.open_pool() as pool, serving(pool, "tcp://127.0.0.1:0", smtpish) as addr:
        plain = await pool.connect(f"tcp://localhost:{addr.port}")
        await plain.send_all(b"STARTTLS\n")
        assert await plain.receive_some() == b"GO\n"
        tls = await plain.start_tls(cafile=pki.cafile)
        assert tls.id == plain.id
        assert tls.tls.server_name == "localhost"  # the host it connected to
        assert tls in pool.connections
        assert plain not in pool.connections
        assert await exchange(tls, b"secret") == b"secret"
        await tls.aclose()
        assert all(c.id != tls.id for c in pool.connections)
    assert server_ids
    assert server_ids[0][0] == server_ids[0][1]
    assert server_ids[0][2]


async def test_start_tls_failure_closes_the_connection(pki: PKI) -> None:
    async def refuse(conn: Any) -> None:
        await conn.send_all(b"this is not TLS at all\n")
        await trio.sleep(1)

    async with conduit.open_pool() as pool, serving(pool, "tcp://127.0.0.1:0", refuse) as addr:
        plain = await pool.connect(f"tcp://localhost:{addr.port}")
        with pytest.raises(TLSError, match="TLS handshake with localhost"):
            await plain.start_tls(cafile=pki.cafile)
        with pytest.raises(trio.ClosedResourceError):
            await plain.send_all(b"x")
        assert plain not in pool.connections


async def test_tls_over_unix_stream(pki: PKI, sock_dir: Path) -> None:
    url = f"unix://{sock_dir}/tls.sock"
    async with conduit.open_pool() as pool, serving(pool, url, tls=pki.server_config()):
        conn = await pool.connect(url, tls=pki.client_config(server_hostname="localhost"))
        assert conn.info.transport == "unix"
        assert conn.tls.version == "TLSv1.3"
        assert await exchange(conn, b"over unix") == b"over unix"
        await conn.aclose()


async def test_tls_over_tls(pki: PKI) -> None:
    async def inner_server(conn: Any) -> None:
        inner = await conn.start_tls(
            server_side=True, certfile=pki.server.certfile, keyfile=pki.server.keyfile
        )
        await echo(inner)

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), inner_server) as addr:
        outer = await pool.connect(f"tls://localhost:{addr.port}", cafile=pki.cafile)
        inner = await outer.start_tls(cafile=pki.cafile, server_hostname="a.test")
        assert isinstance(inner.transport, TLSConnection)
        assert inner.transport is outer
        assert inner.tls.server_name == "a.test"
        assert await exchange(inner, b"twice wrapped") == b"twice wrapped"
        await inner.aclose()


# ---------------------------------------------------------------------------
# trio's stream conformance checks
# ---------------------------------------------------------------------------


async def _check_pairs(pool: conduit.Pool, listener: Any, connect: Callable[[], Awaitable[Any]]) -> None:
    async def maker() -> tuple[Any, Any]:
        accepted: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def accept() -> None:
                accepted.append(await listener.accept())

            nursery.start_soon(accept)
            client = await connect()
        return client, accepted[0]

    await trio.testing.check_half_closeable_stream(maker, None)


async def test_conformance_tls_over_tcp(pki: PKI) -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen(pki.server_url())
        port = listener.address.port

        async def connect() -> Any:
            return await pool.connect(f"tls://localhost:{port}", cafile=pki.cafile)

        await _check_pairs(pool, listener, connect)


async def test_conformance_tls_over_unix(pki: PKI, sock_dir: Path) -> None:
    url = f"unix://{sock_dir}/conf.sock"
    async with conduit.open_pool() as pool:
        listener = await pool.listen(url, tls=pki.server_config())

        async def connect() -> Any:
            return await pool.connect(url, tls=pki.client_config(server_hostname="localhost"))

        await _check_pairs(pool, listener, connect)


async def test_conformance_tls_over_tls(pki: PKI) -> None:
    async with conduit.open_pool() as pool:
        outer_listener = await pool.listen(pki.server_url())
        port = outer_listener.address.port

        class Inner:
            async def accept(self) -> Any:
                outer = await outer_listener.accept()
                return await outer.start_tls(server_side=True, tls=pki.server_config())

        async def connect() -> Any:
            outer = await pool.connect(f"tls://localhost:{port}", cafile=pki.cafile)
            return await outer.start_tls(tls=pki.client_config(server_hostname="b.test"))

        await _check_pairs(pool, Inner(), connect)


async def test_tls_over_a_proxy_chain(pki: PKI) -> None:
    """TLS goes on top of whatever the connect produced: here a SOCKS5 tunnel."""
    from trio_conduit.proxy import ProxyServer

    async with (
        conduit.open_pool() as pool,
        serving(pool, pki.server_url()) as target,
        serving(pool, "tcp://127.0.0.1:0", ProxyServer(pool)) as proxy,
    ):
        conn = await pool.connect(
            f"tcp://localhost:{target.port}",
            proxies=[f"socks5://127.0.0.1:{proxy.port}"],
            tls=pki.client_config(),
            timeout=10,
        )
        assert conn.info.via == (f"socks5://127.0.0.1:{proxy.port}",)
        assert conn.tls.server_name == "localhost"
        assert await exchange(conn, b"through socks") == b"through socks"
        await conn.aclose()


async def test_spawn_with_tls(pki: PKI) -> None:
    got: list[tuple[str, bytes]] = []
    done = trio.Event()

    async def client(conn: Any) -> None:
        got.append((conn.tls.version, await exchange(conn, b"spawned")))
        done.set()

    async with (
        conduit.open_pool() as pool,
        serving(pool, "tcp://127.0.0.1:0", tls=pki.server_config()) as addr,
    ):
        pool.spawn(f"tcp://localhost:{addr.port}", client, tls=pki.client_config())
        with trio.fail_after(10):
            await done.wait()
    assert got == [("TLSv1.3", b"spawned")]
