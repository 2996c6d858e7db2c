"""The sans-IO DTLS engine: two engines wired by hand, time passed in, datagrams dropped on purpose."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from OpenSSL import SSL

from trio_conduit.tls import TLSConfig, TLSError, TLSHandshakeTimeout
from trio_conduit.tls._dtls_config import build_dtls_context, dtls_versions
from trio_conduit.tls._dtls_engine import (
    INITIAL_RTO,
    MTU_STEPS,
    DTLSEngine,
    DTLSState,
    pack_records,
    split_records,
)

from .conftest import PKI


def engines(pki: PKI, *, mtu: int = 1472, deadline: float | None = None) -> tuple[DTLSEngine, DTLSEngine]:
    server = SSL.Connection(build_dtls_context(pki.server_config(), "server"))
    server.set_accept_state()
    server.set_app_data({})
    client = SSL.Connection(build_dtls_context(pki.client_config(), "client"))
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    client.set_app_data({})
    return (
        DTLSEngine(client, mtu=mtu, now=0.0, handshake_deadline=deadline),
        DTLSEngine(server, mtu=mtu, now=0.0, handshake_deadline=deadline),
    )


Drop = Callable[[str, bytes], bool]


def exchange(client: DTLSEngine, server: DTLSEngine, now: float, drop: Drop | None = None) -> int:
    """Deliver datagrams both ways until none are left; how many were delivered."""
    moved = 0
    while True:
        progress = False
        for name, src, dst in (("c", client, server), ("s", server, client)):
            for datagram in src.datagrams_to_send():
                progress = True
                if drop is not None and drop(name, datagram):
                    continue
                moved += 1
                dst.receive_datagram(datagram, now)
        if not progress:
            return moved


def test_handshake_message_and_close_notify(pki: PKI) -> None:
    client, server = engines(pki)
    client.start(0.0)
    exchange(client, server, 0.0)
    assert client.state is DTLSState.OPEN
    assert server.state is DTLSState.OPEN
    assert client.ssl.get_protocol_version_name() == "DTLSv1.2"
    client.send(b"ping")
    server.send(b"pong")
    exchange(client, server, 0.0)
    assert server.next_message() == b"ping"
    assert client.next_message() == b"pong"
    assert server.next_message() is None
    client.close()
    exchange(client, server, 0.0)
    assert server.peer_closed
    assert server.state is DTLSState.CLOSED
    assert client.state is DTLSState.CLOSED


def test_datagrams_fit_the_mtu(pki: PKI) -> None:
    client, server = engines(pki, mtu=300)
    seen: list[int] = []
    client.start(0.0)
    exchange(client, server, 0.0, lambda _, d: bool(seen.append(len(d))))
    assert client.handshake_done
    assert server.handshake_done
    assert max(seen) <= 300
    assert len(seen) > 4
    assert client.cleartext_mtu < 300
    with pytest.raises(ValueError, match="cleartext MTU"):
        client.send(b"x" * (client.cleartext_mtu + 1))
    client.send(b"y" * client.cleartext_mtu)
    exchange(client, server, 0.0)
    assert server.next_message() == b"y" * client.cleartext_mtu


def test_records_split_and_pack() -> None:
    rec = bytes([23, 0xFE, 0xFD]) + b"\0" * 8 + (3).to_bytes(2, "big") + b"abc"
    assert split_records(rec * 3) == [rec] * 3
    assert pack_records([rec] * 3, len(rec) * 2) == [rec * 2, rec]
    assert pack_records([rec * 5], 10) == [rec * 5]  # a record larger than the MTU goes alone


def test_lost_flight_is_retransmitted(pki: PKI) -> None:
    client, server = engines(pki)
    client.start(0.0)
    lost = {"s": 1}

    def drop_first_server_flight(name: str, datagram: bytes) -> bool:
        if name == "s" and lost["s"]:
            lost["s"] -= 1
            return True
        return False

    exchange(client, server, 0.0, drop_first_server_flight)
    assert not client.handshake_done
    deadline = client.next_deadline()
    assert deadline is not None
    assert deadline > INITIAL_RTO
    client.handle_timeout(deadline - 0.5)
    assert client.datagrams_to_send() == []  # not yet
    now = max(deadline, server.next_deadline() or 0.0)
    client.handle_timeout(now)
    server.handle_timeout(now)
    exchange(client, server, now)
    assert client.handshake_done
    assert server.handshake_done
    assert client.retransmits == 1
    assert server.retransmits == 1


def test_backoff_doubles_and_the_mtu_steps_down(pki: PKI) -> None:
    client, server = engines(pki)
    client.start(0.0)
    exchange(client, server, 0.0, lambda name, _: name == "s")  # the server's answers never arrive
    gaps, last = [], 0.0
    for _ in range(4):
        deadline = server.next_deadline()
        assert deadline is not None
        gaps.append(round(deadline - last, 2))
        last = deadline
        server.handle_timeout(deadline)
        assert server.datagrams_to_send()  # the flight again
    assert gaps == [1.01, 2.01, 4.01, 8.01]
    assert server.retransmits == 4
    assert server.mtu == MTU_STEPS[3]
    assert server.mtu_fallbacks == 3
    assert server.ssl.get_cleartext_mtu() < MTU_STEPS[3]


def test_handshake_deadline(pki: PKI) -> None:
    client, _server = engines(pki, deadline=5.0)
    client.start(0.0)
    with pytest.raises(TLSHandshakeTimeout):
        for now in (1.01, 3.02, 5.0):
            client.handle_timeout(now)
    assert client.state is DTLSState.CLOSED


def test_verification_failure_is_an_error_with_an_alert(pki: PKI) -> None:
    server = SSL.Connection(
        build_dtls_context(TLSConfig(certfile=pki.stranger.certfile, keyfile=pki.stranger.keyfile), "server")
    )
    server.set_accept_state()
    client_ssl = SSL.Connection(build_dtls_context(pki.client_config(), "client"))
    client_ssl.set_connect_state()
    holder: dict[str, object] = {}
    client_ssl.set_app_data(holder)
    client, srv = DTLSEngine(client_ssl, now=0.0), DTLSEngine(server, now=0.0)
    client.start(0.0)
    with pytest.raises(TLSError) as caught:
        exchange(client, srv, 0.0)
    assert holder["verify_error"] == (20, 0)  # unable to get local issuer certificate
    assert client.state is DTLSState.CLOSED
    assert caught.value.reason == "CERTIFICATE_VERIFY_FAILED"
    with pytest.raises(TLSError):
        exchange(client, srv, 0.0)  # the alert reached the server, whose handshake failed too


def test_versions_are_reported() -> None:
    versions = dtls_versions()
    assert "DTLSv1.2" in versions.versions
    assert versions.openssl in versions.reason
    assert versions.dtls13 == ("DTLSv1.3" in versions.versions)
