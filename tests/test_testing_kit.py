"""trio_conduit.testing's pytest plugin (loaded through its ``pytest11`` entry point), TestPKI, the relay."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_conduit as conduit
from trio_conduit.testing import ImpairmentRelay, TestPKI


def test_the_plugin_is_loaded_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("trio_conduit")
    assert plugin is not None
    assert plugin.__name__ == "trio_conduit.testing.pytest_plugin"


async def test_conduit_pool_is_an_open_pool(conduit_pool: conduit.Pool) -> None:
    async with trio.open_nursery() as nursery:

        async def hello(conn: Any) -> None:
            await conn.send_all(b"hi")

        bound = await nursery.start(conduit_pool.serve, "tcp://127.0.0.1:0", hello)
        conn = await conduit_pool.connect_stream(f"tcp://127.0.0.1:{bound.port}")
        assert await conn.receive_some() == b"hi"
        assert conn in conduit_pool.connections
        nursery.cancel_scope.cancel()


async def test_conduit_pki_serves_tls_with_a_client_certificate(
    conduit_pool: conduit.Pool, conduit_pki: TestPKI
) -> None:
    assert Path(conduit_pki.cafile).read_bytes() == conduit_pki.ca.cert_pem
    for files in (conduit_pki.server, conduit_pki.client):
        assert Path(files.certfile).read_bytes() == files.cert.cert_pem
        assert Path(files.keyfile).read_bytes() == files.cert.key_pem
    seen: list[str] = []

    async def handler(conn: Any) -> None:
        seen.append(conn.info.tls.peer_certificate.subject.rfc4514_string())
        await conn.send_all(b"ok")

    server = conduit_pki.server_config(cafile=conduit_pki.cafile, client_auth="required")
    client = conduit_pki.client_config(
        certfile=conduit_pki.client.certfile, keyfile=conduit_pki.client.keyfile
    )
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            functools.partial(conduit_pool.serve, tls=server), "tcp://127.0.0.1:0", handler
        )
        conn = await conduit_pool.connect_stream(f"tcp://localhost:{bound.port}", tls=client)
        assert await conn.receive_some() == b"ok"
        nursery.cancel_scope.cancel()
    assert seen == ["CN=alice"]
    assert "BEGIN" not in repr(conduit_pki)
    assert "BEGIN" not in repr(conduit_pki.server)


async def test_conduit_relay_duplicates_what_it_is_told_to(
    conduit_pool: conduit.Pool, conduit_relay: Any
) -> None:
    echo = await conduit_pool.listen("udp://127.0.0.1:0")
    relay: ImpairmentRelay = await conduit_relay(echo.address.port, seed=5, dup=1.0, delay=0.001)
    channel = await conduit_pool.connect_channel(f"udp://127.0.0.1:{relay.port}")
    for i in range(5):
        await channel.send(b"%d" % i)
    peer = await echo.accept()
    assert isinstance(peer, conduit.DatagramConnection)
    got = [await peer.receive() for _ in range(10)]
    assert sorted(got) == sorted([b"%d" % i for i in range(5)] * 2)  # each one twice


async def test_the_relay_reports_what_it_dropped(conduit_pool: conduit.Pool, conduit_relay: Any) -> None:
    """Whatever the relay did not drop arrives (once, or twice when duplicated): its record of
    drops per direction is exact. What is queued when it stops is delivered first."""
    sink = await conduit_pool.listen("udp://127.0.0.1:0")
    relay: ImpairmentRelay = await conduit_relay(
        sink.address.port, seed=3, loss=0.3, dup=0.2, reorder=0.2, delay=0.05
    )
    channel = await conduit_pool.connect_channel(f"udp://127.0.0.1:{relay.port}")
    sent = [b"datagram %03d" % i for i in range(100)]
    for datagram in sent:
        await channel.send(datagram)
    await relay.stop()  # (the delay is 50 ms: most are still queued now)
    kept = [d for d in sent if not relay.dropped(d)]
    assert relay.drop_counts == {"to_target": len(sent) - len(kept), "to_client": 0}
    assert 10 < len(kept) < 90  # the seed did drop some, not all
    peer = await sink.accept()
    assert isinstance(peer, conduit.DatagramConnection)
    expected = len(kept) + relay.stats["duplicated"]  # (no queue overflow: every copy was sent)
    assert relay.stats["overflow"] == 0
    with trio.fail_after(10):
        got = [await peer.receive() for _ in range(expected)]
    assert set(got) == set(kept)
