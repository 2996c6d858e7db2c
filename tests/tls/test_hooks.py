"""The TLS hook points: order, scopes, decisions (reject, context, certificate, ALPN, tunnel), pauses."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest
import trio
from cryptography import x509

import trio_conduit as conduit
from trio_conduit.tls import (
    Certificate,
    ClientHello,
    ClientHelloError,
    StashKey,
    TLSError,
    TLSHandshake,
    TLSHandshakeTimeout,
    TLSRejected,
    build_context,
)

from .conftest import PKI
from .test_tls import echo, exchange, serving

SERVER_HOOKS = [
    "start",
    "client_hello",
    "servername",
    "certificate",
    "alpn",
    "verify_peer",
    "handshake_done",
    "close",
]
CLIENT_HOOKS = ["outbound_start", "session_get", "verify_peer", "handshake_done", "close"]


class Recorder:
    """Implements every TLS hook; records (side, hook) in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.chains: dict[str, list[x509.Certificate]] = {}
        self.close_exc: list[BaseException | None] = []

    def _add(self, hs: TLSHandshake, name: str) -> None:
        self.calls.append((hs.side, name))

    @conduit.hookimpl
    async def conduit_tls_start(self, handshake: TLSHandshake) -> None:
        self._add(handshake, "start")

    @conduit.hookimpl
    async def conduit_tls_client_hello(self, handshake: TLSHandshake, hello: ClientHello) -> None:
        assert handshake.hello is hello
        self._add(handshake, "client_hello")

    @conduit.hookimpl
    async def conduit_tls_servername(self, handshake: TLSHandshake, server_name: str) -> None:
        self._add(handshake, "servername")

    @conduit.hookimpl
    async def conduit_tls_certificate(self, handshake: TLSHandshake) -> None:
        self._add(handshake, "certificate")

    @conduit.hookimpl
    async def conduit_tls_alpn(self, handshake: TLSHandshake, offered: list[str]) -> None:
        self._add(handshake, "alpn")

    @conduit.hookimpl
    async def conduit_tls_outbound_start(self, handshake: TLSHandshake) -> None:
        self._add(handshake, "outbound_start")

    @conduit.hookimpl
    async def conduit_tls_session_get(self, handshake: TLSHandshake) -> None:
        self._add(handshake, "session_get")

    @conduit.hookimpl
    async def conduit_tls_verify_peer(self, handshake: TLSHandshake, chain: list[x509.Certificate]) -> None:
        self._add(handshake, "verify_peer")
        self.chains[handshake.side] = chain

    @conduit.hookimpl
    async def conduit_tls_handshake_done(self, handshake: TLSHandshake, conn: Any) -> None:
        assert handshake.connection is conn
        self._add(handshake, "handshake_done")

    @conduit.hookimpl
    def conduit_tls_close(self, handshake: TLSHandshake, exc: BaseException | None) -> None:
        self._add(handshake, "close")
        self.close_exc.append(exc)


async def test_every_hook_in_order(pki: PKI) -> None:
    rec = Recorder()
    server = pki.server_config(client_auth="required", cafile=pki.cafile)
    client = pki.client_config(certfile=pki.client.certfile, keyfile=pki.client.keyfile, alpn=["h2"])
    async with (
        conduit.open_pool(plugins=[rec]) as pool,
        serving(pool, "tcp://127.0.0.1:0", tls=server) as addr,
    ):
        conn = await pool.connect(f"tcp://localhost:{addr.port}", tls=client)
        assert await exchange(conn) == b"ping"
        await conn.aclose()
        with trio.fail_after(5):
            while ("server", "close") not in rec.calls:
                await trio.sleep(0.01)
    assert [name for side, name in rec.calls if side == "server"] == SERVER_HOOKS
    assert [name for side, name in rec.calls if side == "client"] == CLIENT_HOOKS
    assert [c.subject.rfc4514_string() for c in rec.chains["client"]] == [
        "CN=localhost",
        "CN=conduit test CA",
    ]
    assert [c.subject.rfc4514_string() for c in rec.chains["server"]] == ["CN=alice", "CN=conduit test CA"]
    assert rec.close_exc == [None, None]


async def test_async_servername_hook_pauses_only_its_handshake(pki: PKI) -> None:
    """A servername hook that waits (then loads a certificate from disk) holds up its own
    handshake only: others complete meanwhile."""
    slow_cert = pki.issue("slow", "slow.test")
    release = trio.Event()
    waiting = trio.Event()

    class SlowStore:
        @conduit.hookimpl
        async def conduit_tls_servername(
            self, handshake: TLSHandshake, server_name: str
        ) -> Certificate | None:
            if server_name != "slow.test":
                return None
            waiting.set()
            await release.wait()
            return await trio.to_thread.run_sync(
                Certificate.from_files, slow_cert.certfile, slow_cert.keyfile
            )

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), plugins=[SlowStore()]) as addr:
        url = f"tls://127.0.0.1:{addr.port}"
        results: list[str] = []

        async def slow() -> None:
            conn = await pool.connect(url, cafile=pki.cafile, server_hostname="slow.test")
            results.append(conn.tls.peer_certificate.subject.rfc4514_string())
            await conn.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            with trio.fail_after(10):
                await waiting.wait()
                for name in ("a.test", "b.test", "localhost"):  # would hang if handshakes were serial
                    conn = await pool.connect(url, cafile=pki.cafile, server_hostname=name)
                    assert await exchange(conn) == b"ping"
                    results.append(name)
                    await conn.aclose()
            assert results == ["a.test", "b.test", "localhost"]
            release.set()
    assert results[-1] == "CN=slow.test"


async def test_certificate_hook_per_server_name(pki: PKI) -> None:
    certs = {name: pki.issue(name.split(".")[0], name).cert for name in ("one.test", "two.test")}

    class PerName:
        @conduit.hookimpl
        def conduit_tls_certificate(self, server_name: str | None) -> Certificate | None:
            return certs.get(server_name or "")

    url = "tls://127.0.0.1:0"  # no certificate of its own: only the hook's
    async with conduit.open_pool() as pool, serving(pool, url, plugins=[PerName()]) as addr:
        for name in certs:
            conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile, server_hostname=name)
            assert conn.tls.peer_certificate.subject.rfc4514_string() == f"CN={name}"
            await conn.aclose()
        with pytest.raises(TLSError, match="unrecognized name"):
            await pool.connect(
                f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile, server_hostname="three.test"
            )


async def test_servername_hook_returns_a_context(pki: PKI) -> None:
    other = pki.issue("ctx", "ctx.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(other.certfile, other.keyfile)

    class ByName:
        @conduit.hookimpl
        def conduit_tls_servername(self, server_name: str) -> ssl.SSLContext | None:
            return context if server_name == "ctx.test" else None

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), plugins=[ByName()]) as addr:
        url = f"tls://127.0.0.1:{addr.port}"
        conn = await pool.connect(url, cafile=pki.cafile, server_hostname="ctx.test")
        assert conn.tls.peer_certificate.subject.rfc4514_string() == "CN=ctx.test"
        await conn.aclose()
        conn = await pool.connect(url, cafile=pki.cafile, server_hostname="a.test")  # the listener's own
        assert conn.tls.peer_certificate.subject.rfc4514_string() == "CN=localhost"
        await conn.aclose()


async def test_start_hook_rejects_before_reading(pki: PKI) -> None:
    rec = Recorder()

    class Gate:
        @conduit.hookimpl
        async def conduit_tls_start(self, handshake: TLSHandshake) -> None:
            await trio.sleep(0.01)  # a delay (ATS: not re-enabling yet), then a verdict
            handshake.reject("no entry from this address")

    handled: list[Any] = []

    async def handler(conn: Any) -> None:
        handled.append(conn)

    async with (
        conduit.open_pool() as pool,
        serving(pool, pki.server_url(), handler, plugins=[Gate(), rec]) as addr,
    ):
        with pytest.raises(TLSError) as info:
            await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
        assert info.value.reason == "TLSV1_ALERT_ACCESS_DENIED"
        assert "access denied" in str(info.value)
        with trio.fail_after(5):
            while ("server", "close") not in rec.calls:
                await trio.sleep(0.01)
    assert handled == []
    exc = rec.close_exc[-1]
    assert isinstance(exc, TLSRejected)
    assert "no entry from this address" in str(exc)


async def test_client_hello_hook_decides_from_the_hello(pki: PKI) -> None:
    class Policy:
        @conduit.hookimpl
        async def conduit_tls_client_hello(self, handshake: TLSHandshake, hello: ClientHello) -> None:
            if not hello.alpn_protocols:
                handshake.reject("ALPN required")
            if "h2" in hello.alpn_protocols:
                handshake.restrict_alpn(["h2"])

    url = pki.server_url() + "&alpn=http/1.1,h2"
    async with conduit.open_pool() as pool, serving(pool, url, plugins=[Policy()]) as addr:
        target = f"tls://127.0.0.1:{addr.port}"
        with pytest.raises(TLSError, match="access denied"):
            await pool.connect(target, cafile=pki.cafile)
        conn = await pool.connect(target, cafile=pki.cafile, alpn=["http/1.1", "h2"])
        assert conn.tls.alpn == "h2"  # the listener prefers http/1.1; the hook narrowed it
        await conn.aclose()
        conn = await pool.connect(target, cafile=pki.cafile, alpn=["http/1.1"])
        assert conn.tls.alpn == "http/1.1"
        await conn.aclose()


async def test_alpn_hook_chooses(pki: PKI) -> None:
    class Choose:
        @conduit.hookimpl
        async def conduit_tls_alpn(self, offered: list[str]) -> str | None:
            return offered[-1]  # the client's least preferred, to show it is ours to choose

    url = pki.server_url() + "&alpn=h2,http/1.1,spdy/3"
    async with conduit.open_pool() as pool, serving(pool, url, plugins=[Choose()]) as addr:
        conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile, alpn=["h2", "spdy/3"])
        assert conn.tls.alpn == "spdy/3"
        await conn.aclose()


async def test_a_raising_hook_refuses_with_its_name(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    class Buggy:
        @conduit.hookimpl
        def conduit_tls_client_hello(self) -> None:
            raise ValueError("policy service down")

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), plugins=[Buggy()]) as addr:
        with pytest.raises(TLSError, match="access denied"):
            await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
    assert any(
        "conduit_tls_client_hello hook" in r.getMessage() and "policy service down" in r.getMessage()
        for r in caplog.records
    )


async def test_verify_peer_hook_can_refuse_the_server(pki: PKI) -> None:
    class OnlyCA:
        @conduit.hookimpl
        def conduit_tls_verify_peer(self, handshake: TLSHandshake, chain: list[x509.Certificate]) -> None:
            if chain[-1].subject.rfc4514_string() != "CN=conduit test CA":
                handshake.reject("wrong root")
            if handshake.server_name == "b.test":
                handshake.reject("b.test is not allowed today")

    async with (
        conduit.open_pool() as server_pool,
        serving(server_pool, pki.server_url()) as addr,
        conduit.open_pool(plugins=[OnlyCA()]) as pool,
    ):
        url = f"tls://127.0.0.1:{addr.port}"
        conn = await pool.connect(url, cafile=pki.cafile, server_hostname="a.test")
        await conn.aclose()
        with pytest.raises(TLSRejected, match=r"b\.test is not allowed today"):
            await pool.connect(url, cafile=pki.cafile, server_hostname="b.test")
        assert pool.connections == []


async def test_outbound_start_overrides_options(pki: PKI) -> None:
    class Override:
        @conduit.hookimpl
        async def conduit_tls_outbound_start(self, handshake: TLSHandshake) -> None:
            handshake.config = handshake.config.replace(alpn=["http/1.1"], cafile=pki.cafile)
            handshake.server_name = "b.test"

    url = pki.server_url() + "&alpn=h2,http/1.1"
    async with (
        conduit.open_pool() as server_pool,
        serving(server_pool, url) as addr,
        conduit.open_pool(plugins=[Override()]) as pool,
    ):
        conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", alpn=["h2"])
        assert (conn.tls.alpn, conn.tls.server_name) == ("http/1.1", "b.test")
        await conn.aclose()


async def test_handshake_done_hook_can_drop_a_connection(pki: PKI) -> None:
    class Quota:
        def __init__(self) -> None:
            self.seen = 0

        @conduit.hookimpl
        def conduit_tls_handshake_done(self, handshake: TLSHandshake) -> None:
            if handshake.side == "server":
                self.seen += 1
                if self.seen == 2:
                    raise RuntimeError("over quota")

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), plugins=[Quota()]) as addr:
        url = f"tls://127.0.0.1:{addr.port}"
        first = await pool.connect(url, cafile=pki.cafile)
        assert await exchange(first) == b"ping"
        second = await pool.connect(url, cafile=pki.cafile)
        with pytest.raises(trio.BrokenResourceError):
            await exchange(second)  # the server closed it without close_notify
        third = await pool.connect(url, cafile=pki.cafile)
        assert await exchange(third) == b"ping"
        for conn in (first, second, third):
            await conn.aclose()


async def test_hook_scopes_and_stash(pki: PKI) -> None:
    TENANT = StashKey[str]("tenant")
    pool_rec, listener_rec = Recorder(), Recorder()
    tenants: list[str] = []

    class Tag:
        @conduit.hookimpl
        def conduit_tls_start(self, handshake: TLSHandshake) -> None:
            handshake.stash[TENANT] = f"conn-{handshake.conn.id}"

        @conduit.hookimpl
        def conduit_tls_close(self, handshake: TLSHandshake) -> None:
            tenants.append(handshake.stash[TENANT])

    async with (
        conduit.open_pool(plugins=[pool_rec]) as pool,
        serving(pool, pki.server_url(), plugins=[listener_rec, Tag()]) as tagged,
        serving(pool, pki.server_url()) as plain,
    ):
        for port in (tagged.port, plain.port):
            conn = await pool.connect(f"tls://127.0.0.1:{port}", cafile=pki.cafile)
            await exchange(conn)
            await conn.aclose()
        with trio.fail_after(5):
            while len([c for c in pool_rec.calls if c == ("server", "close")]) < 2:
                await trio.sleep(0.01)
    # the listener's plugins saw only their listener; the pool's saw both listeners and the clients
    assert listener_rec.calls.count(("server", "start")) == 1
    assert pool_rec.calls.count(("server", "start")) == 2
    assert pool_rec.calls.count(("client", "outbound_start")) == 2
    assert len(tenants) == 1
    assert tenants[0].startswith("conn-")


async def test_hooks_count_against_the_handshake_timeout(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_conduit")

    class Stuck:
        @conduit.hookimpl
        async def conduit_tls_client_hello(self) -> None:
            await trio.sleep_forever()

    url = pki.server_url() + "&handshake_timeout=0.2"
    async with conduit.open_pool() as pool, serving(pool, url, plugins=[Stuck()]) as addr:
        with trio.fail_after(10), pytest.raises(TLSError, match="peer closed"):
            await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
    assert any("did not finish within 0.2 s" in r.getMessage() for r in caplog.records)
    assert TLSHandshakeTimeout.__mro__[1] is TLSError


async def test_blind_tunnel_by_sni(pki: PKI) -> None:
    origin_cert = pki.issue("origin", "origin.test")
    origin_url = f"tls://127.0.0.1:0?certfile={origin_cert.certfile}&keyfile={origin_cert.keyfile}"
    rec = Recorder()
    fronted: list[Any] = []

    async def front_handler(conn: Any) -> None:
        fronted.append(conn)
        await echo(conn)

    async with conduit.open_pool() as pool, serving(pool, origin_url) as origin:

        class Router:
            @conduit.hookimpl
            def conduit_tls_client_hello(self, handshake: TLSHandshake, hello: ClientHello) -> None:
                if hello.server_name == "origin.test":
                    handshake.tunnel(f"tcp://127.0.0.1:{origin.port}")

        async with serving(pool, pki.server_url(), front_handler, plugins=[Router(), rec]) as front:
            url = f"tls://127.0.0.1:{front.port}"
            conn = await pool.connect(url, cafile=pki.cafile, server_hostname="origin.test")
            assert conn.tls.peer_certificate.subject.rfc4514_string() == "CN=origin.test"  # the origin's
            assert await exchange(conn, b"through the tunnel") == b"through the tunnel"
            await conn.aclose()
            conn = await pool.connect(url, cafile=pki.cafile, server_hostname="a.test")  # terminated here
            assert conn.tls.peer_certificate.subject.rfc4514_string() == "CN=localhost"
            await conn.aclose()
            with trio.fail_after(5):
                while rec.calls.count(("server", "close")) < 2:
                    await trio.sleep(0.01)
    assert len(fronted) == 1
    # the tunnelled connection never reached the handshake with us
    assert rec.calls.count(("server", "handshake_done")) == 1


async def test_tunnel_from_the_start_hook(pki: PKI) -> None:
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as origin:

        class All:
            @conduit.hookimpl
            def conduit_tls_start(self, handshake: TLSHandshake) -> None:
                handshake.tunnel(f"tcp://127.0.0.1:{origin.port}")

        # The front has no certificate at all: it never terminates TLS.
        async with serving(pool, "tcp://127.0.0.1:0", tls=True, plugins=[All()]) as front:
            conn = await pool.connect(f"tcp://localhost:{front.port}", tls=pki.client_config())
            assert await exchange(conn, b"raw relay") == b"raw relay"
            await conn.aclose()


async def test_start_tls_cannot_tunnel(pki: PKI) -> None:
    class All:
        @conduit.hookimpl
        def conduit_tls_start(self, handshake: TLSHandshake) -> None:
            handshake.tunnel("tcp://127.0.0.1:9")

    errors: list[BaseException] = []

    async def handler(conn: Any) -> None:
        try:
            await conn.start_tls(server_side=True, tls=pki.server_config())
        except TLSError as exc:
            errors.append(exc)

    async with (
        conduit.open_pool(plugins=[All()]) as pool,
        serving(pool, "tcp://127.0.0.1:0", handler) as addr,
    ):
        plain = await pool.connect(f"tcp://127.0.0.1:{addr.port}")
        assert await plain.receive_some() == b""
        await plain.aclose()
    assert len(errors) == 1
    assert "blind tunnel" in str(errors[0])


def test_contexts_are_cached(pki: PKI) -> None:
    a = build_context(pki.client_config(), "client")
    assert build_context(pki.client_config(), "client") is a
    assert build_context(pki.client_config(alpn=["h2"]), "client") is not a
    assert build_context(pki.client_config(), "server") is not a


async def _hello_with_name(port: int, name: str) -> trio.SSLStream[trio.SocketStream]:
    """A raw trio TLS client that sends ``name`` as its SNI, unverified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname=name)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream.transport_stream)
        raise
    return stream


async def test_server_name_our_parser_refuses(pki: PKI) -> None:
    """A name OpenSSL takes but our parser refuses ("a b.test": a space): with no hook that
    needs the hello, it is reported where it is asked for; a servername hook has the
    handshake refused before OpenSSL runs."""
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn)
        await echo(conn)

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), handler) as addr:
        stream = await _hello_with_name(addr.port, "a b.test")
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await stream.aclose()
        conn = seen[0]
        with pytest.raises(ClientHelloError, match="not printable ASCII"):
            conn.tls.server_name  # noqa: B018
        with pytest.raises(ClientHelloError, match="not printable ASCII"):
            conn.handshake.hello  # noqa: B018
        assert "server_name=None" in repr(conn.tls)  # a repr does not raise
        assert conn.tls.alpn is None
        assert conn.tls.version == "TLSv1.3"
        # a good name is decoded when asked for, lower-cased
        stream = await _hello_with_name(addr.port, "Good.Test")
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await stream.aclose()
        assert seen[1].tls.server_name == "good.test"
        assert "server_name='good.test'" in repr(seen[1].tls)

    names: list[str] = []

    class Names:
        @conduit.hookimpl
        async def conduit_tls_servername(self, handshake: TLSHandshake, server_name: str) -> None:
            names.append(server_name)

    async with (
        conduit.open_pool() as pool,
        serving(pool, pki.server_url(), handler, plugins=[Names()]) as addr,
    ):
        with pytest.raises(trio.BrokenResourceError) as info:
            await _hello_with_name(addr.port, "a b.test")
        assert "DECODE_ERROR" in str(info.value.__cause__).upper()
        stream = await _hello_with_name(addr.port, "Good.Test")
        await stream.aclose()
    assert names == ["good.test"]
    assert len(seen) == 3  # the refused one never reached the handler
    assert seen[2].tls.server_name == "good.test"
