"""The sans-IO engine on a virtual-time network: handshake, rendezvous, data, timers, congestion control."""

from __future__ import annotations

import itertools
import math
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from trio_conduit_plugins.udt._congestion import BBRLikeCC, CongestionControl, FixedRateCC
from trio_conduit_plugins.udt._cookie import COOKIE_PERIOD, CookieJar
from trio_conduit_plugins.udt._engine import (
    SYN,
    Accepted,
    Closed,
    CloseReason,
    Config,
    ConnectFailed,
    FailReason,
    LocalProtocolError,
    State,
)
from trio_conduit_plugins.udt._losslist import LossList
from trio_conduit_plugins.udt._packet import (
    HEADER,
    Ack,
    Ack2,
    Boundary,
    DataPacket,
    DropRequest,
    Handshake,
    KeepAlive,
    Nak,
    RequestType,
    Shutdown,
    SocketType,
    UserDefined,
    ip_to_wire,
    parse_packet_untrusted,
)
from trio_conduit_plugins.udt._receiver import RATE_CAP, WINDOW_ROOM
from trio_conduit_plugins.udt._session import Session

from .udt_harness import Net, Wire

A = ("10.0.0.1", 5000)
B = ("10.0.0.2", 9000)
C = ("10.0.0.3", 7000)
STREAM = Config()
MESSAGE = Config(socket_type=SocketType.DGRAM)


def connect_pair(
    net: Net, client: Config = STREAM, server: Config | None = None, backlog: int = 8
) -> tuple[Session, Session]:
    a = net.endpoint(A)
    b = net.endpoint(B)
    b.listen(server or client, backlog)
    c = a.connect(B, client, net.now)
    net.run_until(lambda: c.connected and b.pending_accepts > 0, 10)
    s = b.accept()
    assert s is not None
    return c, s


def handshakes(net: Net, src: Any = None, dst: Any = None) -> list[Handshake]:
    out = []
    for w in net.packets(src, dst):
        p = w.packet
        if isinstance(p, Handshake):
            out.append(p)
    return out


def transfer(net: Net, sender: Session, receiver: Session, data: bytes, timeout: float = 120) -> bytes:
    got = bytearray()
    sent = 0

    def between() -> None:
        nonlocal sent
        if sent < len(data):
            sent += sender.send(memoryview(data)[sent : sent + 100_000], net.now)
        got.extend(receiver.receive(1 << 20))

    net.run_until(lambda: len(got) >= len(data), timeout, between=between)
    return bytes(got)


def fake_request(**changes: Any) -> Handshake:
    fields: dict[str, Any] = {
        "version": 4,
        "socket_type": 1,
        "isn": 1000,
        "mss": 1500,
        "flight_flag_size": 8192,
        "request_type": int(RequestType.CONNECT),
        "socket_id": 4242,
        "cookie": 0,
        "peer_ip": ip_to_wire(B[0]),
    }
    fields.update(changes)
    return Handshake(**fields)


# ---------------------------------------------------------------------------
# the handshake, as the reference does it
# ---------------------------------------------------------------------------


def test_handshake_on_the_wire() -> None:
    net = Net()
    c, s = connect_pair(net)
    to_server = handshakes(net, A, B)
    to_client = handshakes(net, B, A)
    first, second = to_server[0], to_server[1]
    # request type 1, addressed to socket id 0, our id, ISN, MSS, window, the server's IP
    assert (first.request_type, first.dest, first.cookie) == (1, 0, 0)
    assert (first.version, first.socket_type, first.mss) == (4, 1, 1500)
    assert first.flight_flag_size == min(STREAM.rcv_buf, STREAM.flight_flag_size) == 8192
    assert first.socket_id == c.socket_id
    assert first.peer_ip == ip_to_wire(B[0])
    # the listener echoes it with a cookie, to our socket id
    challenge = to_client[0]
    assert challenge.request_type == 1
    assert challenge.dest == c.socket_id
    assert challenge.cookie != 0
    # the client repeats with the cookie, request type -1
    assert (second.request_type, second.cookie, second.dest) == (-1, challenge.cookie, 0)
    # the response: type -1, the client's own ISN back, the server's socket id
    response = to_client[1]
    assert response.request_type == -1
    assert response.isn == c.isn == s.isn == s.peer_isn
    assert response.socket_id == s.socket_id == c.peer_id
    assert s.peer_id == c.socket_id
    assert response.dest == c.socket_id
    assert response.peer_ip == ip_to_wire(A[0])
    assert len(to_server) == 2
    assert len(to_client) == 2


def test_cookie_challenge_allocates_nothing_for_spoofed_sources() -> None:
    net = Net()
    b = net.endpoint(B)
    b.listen(STREAM, 8)
    rng = random.Random(7)
    spoofed = [
        (f"10.{i // 250}.{i % 250}.{rng.randint(1, 254)}", rng.randint(1024, 65535)) for i in range(2000)
    ]
    for i, src in enumerate(spoofed):
        net.inject(src, B, fake_request(socket_id=i + 1, isn=i).encode())
        # and a second step with a made-up cookie, as a flooder would
        net.inject(
            src, B, fake_request(socket_id=i + 1, isn=i, request_type=-1, cookie=rng.getrandbits(31)).encode()
        )
    net.run_for(1.0)
    # every request type 1 got its cookie answer; no forged second step was answered
    answers = handshakes(net, B)
    assert len(answers) == len(spoofed)
    assert all(h.request_type == 1 and h.cookie != 0 for h in answers)
    assert b.state_size == 0
    assert b.sessions == []
    assert not any(isinstance(ev, Accepted) for _, ev in net.events)
    assert b.dropped == len(spoofed)


def test_cookie_is_bound_to_the_client_address() -> None:
    net = Net()
    b = net.endpoint(B)
    b.listen(STREAM, 8)
    net.inject(A, B, fake_request().encode())
    net.run_for(0.1)
    cookie = handshakes(net, B, A)[0].cookie
    # the same cookie from another address (or port) is worthless
    net.inject(C, B, fake_request(request_type=-1, cookie=cookie).encode())
    net.inject((A[0], A[1] + 1), B, fake_request(request_type=-1, cookie=cookie).encode())
    net.run_for(0.1)
    assert b.state_size == 0
    net.inject(A, B, fake_request(request_type=-1, cookie=cookie).encode())
    net.run_for(0.1)
    assert len(b.sessions) == 1
    assert handshakes(net, B, A)[-1].request_type == -1


def test_cookie_periods_current_and_previous_only() -> None:
    jar = CookieJar(0.0, b"k" * 32)
    cookie = jar.make("10.0.0.1", 5000, 10.0)
    assert jar.check(cookie, "10.0.0.1", 5000, 10.0)
    assert jar.check(cookie, "10.0.0.1", 5000, COOKIE_PERIOD + 10.0)  # the previous period
    assert not jar.check(cookie, "10.0.0.1", 5000, 2 * COOKIE_PERIOD + 10.0)
    assert not jar.check(cookie, "10.0.0.1", 5001, 10.0)
    assert CookieJar(0.0, b"j" * 32).make("10.0.0.1", 5000, 10.0) != cookie  # keyed


def test_repeated_request_is_answered_from_the_existing_connection() -> None:
    net = Net()
    c, s = connect_pair(net)
    b = net.endpoints[B]
    cookie = handshakes(net, B, A)[0].cookie
    before = len(handshakes(net, B, A))
    # the client's -1 again (its first response was "lost")
    net.inject(A, B, fake_request(request_type=-1, socket_id=c.socket_id, isn=c.isn, cookie=cookie).encode())
    net.run_for(0.05)
    again = handshakes(net, B, A)[before:]
    assert len(again) == 1
    assert again[0].request_type == -1
    assert again[0].socket_id == s.socket_id
    assert again[0].isn == s.isn
    assert len(b.sessions) == 1
    assert c.connected
    assert s.connected


def test_backlog_full_rejects_with_1002() -> None:
    net = Net()
    b = net.endpoint(B)
    b.listen(STREAM, 1)
    first = net.endpoint(A).connect(B, STREAM, net.now)
    second = net.endpoint(C).connect(B, STREAM, net.now)
    net.run_until(lambda: second.state is State.CLOSED, 5)
    assert first.connected
    assert second.fail_reason is FailReason.REJECTED
    assert any(h.request_type == RequestType.REJECTED for h in handshakes(net, B, C))
    assert b.pending_accepts == 1


@pytest.mark.parametrize("change", [{"version": 5}, {"socket_type": 2}])
def test_version_or_type_mismatch_rejects_with_1002(change: dict[str, int]) -> None:
    net = Net()
    b = net.endpoint(B)
    b.listen(STREAM, 8)
    net.inject(A, B, fake_request(**change).encode())
    net.run_for(0.1)
    cookie = handshakes(net, B, A)[0].cookie
    net.inject(A, B, fake_request(request_type=-1, cookie=cookie, **change).encode())
    net.run_for(0.1)
    assert handshakes(net, B, A)[-1].request_type == 1002
    assert b.state_size == 0


def test_message_client_to_stream_listener_is_rejected() -> None:
    net = Net()
    net.endpoint(B).listen(STREAM, 8)
    c = net.endpoint(A).connect(B, MESSAGE, net.now)
    net.run_until(lambda: c.state is State.CLOSED, 5)
    assert c.fail_reason is FailReason.REJECTED


def test_request_retransmitted_every_250_ms_then_3_s_timeout() -> None:
    net = Net()
    start = net.now
    c = net.endpoint(A).connect(B, STREAM, net.now)  # nobody at B
    net.run_until(lambda: c.state is State.CLOSED, 10)
    sent = [w.time - start for w in net.packets(A, B)]
    assert sent == pytest.approx([0.25 * i + 0.005 for i in range(12)])  # the 5 ms link delay
    failed = [ev for _, ev in net.events if isinstance(ev, ConnectFailed)]
    assert failed == [ConnectFailed(c, FailReason.TIMEOUT)]
    assert net.now - start == pytest.approx(3.0)
    assert net.endpoints[A].state_size == 0


def test_rendezvous_timeout_is_30_s() -> None:
    net = Net()
    start = net.now
    c = net.endpoint(A).connect(B, Config(rendezvous=True), net.now)
    net.run_until(lambda: c.state is State.CLOSED, 40)
    assert c.fail_reason is FailReason.TIMEOUT
    assert net.now - start == pytest.approx(30.0)
    assert all(isinstance(w.packet, Handshake) and w.packet.request_type == 0 for w in net.packets(A, B))


def test_response_with_another_isn_fails_the_security_check() -> None:
    net = Net()
    c = net.endpoint(A).connect(B, STREAM, net.now)
    net.run_for(0.01)
    req = handshakes(net, A, B)[0]
    bad = fake_request(request_type=-1, isn=(req.isn + 1) % (1 << 31), socket_id=77, dest=c.socket_id)
    net.inject(B, A, bad.encode())
    net.run_for(0.01)
    assert c.fail_reason is FailReason.SECURITY


@pytest.mark.parametrize(("client_mss", "server_mss"), [(1400, 1500), (1500, 1200)])
def test_smaller_mss_wins(client_mss: int, server_mss: int) -> None:
    net = Net()
    c, s = connect_pair(net, Config(mss=client_mss), Config(mss=server_mss))
    mss = min(client_mss, server_mss)
    assert c.mss == s.mss == mss
    data = random.Random(1).randbytes(50_000)
    assert transfer(net, c, s, data) == data
    sizes = {len(w.data) for w in net.packets(A, B) if isinstance(w.packet, DataPacket)}
    assert max(sizes) == mss - 28


def test_flow_window_is_the_peers_advertised_window() -> None:
    net = Net()
    c, s = connect_pair(net, Config(rcv_buf=100), Config(rcv_buf=300))
    assert c.flow_window == 300
    assert s.flow_window == 100


# ---------------------------------------------------------------------------
# rendezvous
# ---------------------------------------------------------------------------


def test_rendezvous_connects_both_ways() -> None:
    net = Net()
    a = net.endpoint(A)
    b = net.endpoint(B)
    ra = a.connect(B, Config(rendezvous=True), net.now)
    rb = b.connect(A, Config(rendezvous=True), net.now)
    net.run_until(lambda: ra.connected and rb.connected, 5)
    assert ra.peer_id == rb.socket_id
    assert rb.peer_id == ra.socket_id
    assert ra.peer_isn == rb.isn
    assert rb.peer_isn == ra.isn
    types = [h.request_type for h in handshakes(net, A, B)]
    assert types[0] == 0
    assert -1 in types
    data = random.Random(2).randbytes(30_000)
    assert transfer(net, ra, rb, data) == data
    assert transfer(net, rb, ra, data[::-1]) == data[::-1]


def test_rendezvous_holds_data_until_the_peer_is_connected() -> None:
    """The reference drops packets reaching a rendezvous socket before it connected: wait for proof."""
    net = Net()
    a = net.endpoint(A)
    b = net.endpoint(B)
    ra = a.connect(B, Config(rendezvous=True), net.now)
    rb = b.connect(A, Config(rendezvous=True), net.now)
    early: list[Wire] = []
    lost_first_response: list[Wire] = []
    rb_ready: list[float] = []

    def blackhole(w: Wire) -> bool:
        p = w.packet
        if w.src == A and isinstance(p, Handshake) and p.request_type == -1 and not lost_first_response:
            lost_first_response.append(w)  # so A connects (on B's -1) before B does
            return True
        # the reference's receive thread registers a new connection a little after it connected
        if w.src == A and isinstance(p, DataPacket) and (not rb_ready or net.now < rb_ready[0] + 0.02):
            early.append(w)
            return True
        return False

    net.blackhole = blackhole
    ra_data = bytes(20 * 1456)

    def send_once() -> None:
        if rb.connected and not rb_ready:
            rb_ready.append(net.now)
        if ra.connected and ra.stats.pkt_sent == 0 and not ra.send_buffered:
            ra.send(ra_data, net.now)

    net.run_until(lambda: rb.readable_bytes == len(ra_data), 5, between=send_once)
    assert lost_first_response
    assert early == []  # nothing was sent into B's not-yet-connected socket
    assert ra.stats.pkt_retrans == 0
    assert rb.receive(1 << 20) == ra_data


def test_rendezvous_ignores_regular_requests() -> None:
    net = Net()
    a = net.endpoint(A)
    ra = a.connect(B, Config(rendezvous=True), net.now)
    net.inject(B, A, fake_request(request_type=1).encode())
    net.run_for(0.5)
    assert ra.state is State.CONNECTING


# ---------------------------------------------------------------------------
# data transfer
# ---------------------------------------------------------------------------


def test_bulk_transfer_both_directions_lossless() -> None:
    net = Net()
    c, s = connect_pair(net)
    data = random.Random(3).randbytes(2_000_000)
    assert transfer(net, c, s, data) == data
    assert transfer(net, s, c, data[:500_000]) == data[:500_000]
    assert c.stats.pkt_retrans == 0
    sent = [w for w in net.packets(A, B) if isinstance(w.packet, DataPacket)]
    assert s.stats.pkt_recv == len(sent) == c.stats.pkt_sent
    assert len(sent) >= math.ceil(len(data) / c.payload_size)
    # unpaced bulk: more than 64 packets between timer ACKs, so light ACKs go out too
    assert any(isinstance(w.packet, Ack) and w.packet.light for w in net.packets(B, A))


def test_transfer_through_loss_duplication_and_reordering() -> None:
    net = Net(seed=11, loss=0.05, dup=0.02, reorder=0.05, jitter=0.002)
    c, s = connect_pair(net, Config(congestion=lambda: FixedRateCC("5M")))
    data = random.Random(4).randbytes(1_500_000)
    assert transfer(net, c, s, data, timeout=300) == data
    assert c.stats.pkt_retrans > 0
    assert c.stats.pkt_recv_nak > 0
    assert s.stats.pkt_sent_nak > 0
    assert s.stats.pkt_recv_dup > 0
    assert s.stats.pkt_rcv_loss > 0


def test_native_cc_survives_loss() -> None:
    net = Net(seed=5, loss=0.02, reorder=0.02)
    c, s = connect_pair(net)
    data = random.Random(5).randbytes(400_000)
    assert transfer(net, c, s, data, timeout=300) == data


def test_sequence_numbers_wrap_at_31_bits() -> None:
    net = Net()
    a = net.endpoint(A)
    b = net.endpoint(B)
    b.listen(STREAM, 8)

    class NearTop(random.Random):
        def randint(self, lo: int, hi: int) -> int:
            return hi - 50 if hi == 0x7FFFFFFF else super().randint(lo, hi)

    a._rng = NearTop(1)
    c = a.connect(B, STREAM, net.now)
    net.run_until(lambda: c.connected and b.pending_accepts > 0)
    s = b.accept()
    assert s is not None
    assert c.isn == 0x7FFFFFFF - 50
    data = random.Random(6).randbytes(200 * c.payload_size)
    assert transfer(net, c, s, data) == data
    seqs = [w.packet.seq for w in net.packets(A, B) if isinstance(w.packet, DataPacket)]
    assert max(seqs) == 0x7FFFFFFF
    assert min(seqs) == 0
    assert seqs.index(0) == seqs.index(0x7FFFFFFF) + 1


def test_send_buffer_limits_and_flow_control() -> None:
    net = Net()
    c, s = connect_pair(net, Config(snd_buf=40, rcv_buf=32))
    blob = bytes(200 * c.payload_size)
    accepted = 0
    for _ in range(50):
        n = c.send(blob[accepted:], net.now)
        accepted += n
        net.run_for(0.05)
    # nobody reads: the receiver holds at most its buffer, the sender at most its own
    assert accepted <= (32 + 40) * c.payload_size
    assert c.send(blob, net.now) == 0
    assert s.readable_bytes <= 32 * s.payload_size
    got = bytearray()
    net.run_until(lambda: len(got) >= accepted, 30, between=lambda: got.extend(s.receive(1 << 20)))
    assert bytes(got) == blob[:accepted]


def test_receive_sizes() -> None:
    net = Net()
    c, s = connect_pair(net)
    data = bytes(range(256)) * 40
    c.send(data, net.now)
    net.run_until(lambda: s.readable_bytes == len(data))
    out = [s.receive(1), s.receive(7), s.receive(3000), s.receive(100_000)]
    assert [len(x) for x in out] == [1, 7, 3000, len(data) - 3008]
    assert b"".join(out) == data
    assert s.receive(10) == b""


# ---------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------


def test_message_boundaries_and_numbers() -> None:
    net = Net()
    c, s = connect_pair(net, MESSAGE)
    p = c.payload_size
    sizes = [1, p, p + 1, 3 * p + 5, 0, 10]
    msgs = [bytes([i]) * n for i, n in enumerate(sizes)]
    for m in msgs:
        assert c.send_message(m, net.now)
    got: list[bytes] = []

    def pull() -> None:
        while (m := s.receive_message()) is not None:
            got.append(m)

    net.run_until(lambda: len(got) == len(msgs), between=pull)
    assert got == msgs
    data = [w.packet for w in net.packets(A, B) if isinstance(w.packet, DataPacket)]
    by_msg: dict[int, list[DataPacket]] = {}
    for pkt in data:
        by_msg.setdefault(pkt.msgno, []).append(pkt)
    assert sorted(by_msg) == list(range(1, len(msgs) + 1))
    three = by_msg[4]  # the message of 3 packets + 5 bytes: four packets
    assert [int(x.boundary) for x in three] == [2, 0, 0, 1]
    assert [int(x.boundary) for x in by_msg[1]] == [3]
    assert all(x.in_order for x in data)


def test_message_too_large_and_wrong_mode() -> None:
    net = Net()
    c, _s = connect_pair(net, Config(socket_type=SocketType.DGRAM, snd_buf=10))
    with pytest.raises(LocalProtocolError, match="larger than the send buffer"):
        c.send_message(bytes(11 * c.payload_size), net.now)
    with pytest.raises(LocalProtocolError, match="send_message"):
        c.send(b"x", net.now)


def _data_of(w: Wire, msgno: int) -> bool:
    p = w.packet
    return isinstance(p, DataPacket) and p.msgno == msgno


def test_ttl_expired_message_is_dropped_with_a_drop_request() -> None:
    net = Net()
    c, s = connect_pair(net, MESSAGE)
    cut = True
    net.blackhole = lambda w: cut and _data_of(w, 1)
    assert c.send_message(b"old" * 1000, net.now, ttl=0.5)
    net.run_for(0.2)
    assert c.send_message(b"new", net.now)
    net.run_for(1.0)
    cut = False
    got: list[bytes] = []
    net.run_until(
        lambda: bool(got), 10, between=lambda: (m := s.receive_message()) is not None and got.append(m)
    )
    assert got == [b"new"]
    drops = [w.packet for w in net.packets(A, B) if isinstance(w.packet, DropRequest)]
    assert drops
    assert drops[0].msgno == 1
    assert (drops[0].first, drops[0].last) == (c.isn, c.isn + 2)  # the whole 3-packet message
    assert c.stats.msg_dropped == 1
    net.run_for(1.0)
    assert s.receive_message() is None


@pytest.mark.parametrize("in_order", [False, True])
def test_unordered_messages_can_overtake(in_order: bool) -> None:
    net = Net()
    c, s = connect_pair(net, MESSAGE)
    cut = True
    net.blackhole = lambda w: cut and _data_of(w, 1)
    assert c.send_message(b"first", net.now, in_order=in_order)
    assert c.send_message(b"second", net.now, in_order=in_order)
    net.run_for(0.1)
    early = s.receive_message()
    cut = False
    got = [early] if early is not None else []
    net.run_until(
        lambda: len(got) == 2, 10, between=lambda: (m := s.receive_message()) is not None and got.append(m)
    )
    if in_order:
        assert early is None
        assert got == [b"first", b"second"]
    else:
        assert got == [b"second", b"first"]


# ---------------------------------------------------------------------------
# ACK, ACK2, NAK, EXP
# ---------------------------------------------------------------------------


def test_ack_every_syn_with_rtt_and_ack2() -> None:
    net = Net(delay=0.02)
    c, s = connect_pair(net, Config(max_bandwidth=3e6))  # a second and a half of sending
    data = random.Random(8).randbytes(4_500_000)
    assert transfer(net, c, s, data) == data
    acks = [(w.time, w.packet) for w in net.packets(B, A) if isinstance(w.packet, Ack)]
    full = [(t, p) for t, p in acks if not p.light]
    assert len(full) > 10
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(full)]
    # one regular ACK per 10 ms SYN, plus one at once after each short packet (the end of a send)
    short = sum(1 for w in net.packets(A, B) if isinstance(w.packet, DataPacket) and len(w.data) < c.mss - 28)
    assert sum(1 for g in gaps if g < 0.0099) <= short
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.01, abs=0.0011)
    assert any(p.rate is not None for _, p in full)  # full ACKs with rates
    ack2 = [w.packet for w in net.packets(A, B) if isinstance(w.packet, Ack2)]
    assert ack2
    assert {p.ack_seqno for p in ack2} <= {p.ack_seqno for _, p in full}
    # RTT converges to the link's 40 ms
    assert s.rtt == pytest.approx(0.04, abs=0.01)
    assert c.rtt == pytest.approx(0.04, abs=0.015)


def test_nak_ranges_and_periodic_nak() -> None:
    net = Net()
    c, s = connect_pair(net, Config(congestion=lambda: FixedRateCC("1M")))
    p = c.payload_size
    lost = {c.isn + 3, c.isn + 4, c.isn + 5, c.isn + 9}
    retransmitted = False

    def drop(w: Wire) -> bool:
        pk = w.packet
        return isinstance(pk, DataPacket) and pk.seq in lost and not retransmitted

    net.blackhole = drop
    c.send(bytes(15 * p), net.now)
    net.run_for(1.0)
    naks = [(w.time, w.packet) for w in net.packets(B, A) if isinstance(w.packet, Nak)]
    assert naks[0][1].losses == ((c.isn + 3, c.isn + 5),)
    assert naks[1][1].losses == ((c.isn + 9, c.isn + 9),)
    # Each run is reported again periodically: not sooner than a NAK period (RTT + 4 RTTVar + SYN,
    # at least 20 ms) after its last report, and at most about two periods later (a period is at
    # most 150 ms, half the sender's shortest EXP period).
    for run in ((c.isn + 3, c.isn + 5), (c.isn + 9, c.isn + 9)):
        times = [t for t, n in naks if run in n.losses]
        assert len(times) > 4
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.0199 <= g <= 0.3001 for g in gaps), gaps
    assert any(len(n.losses) == 2 for _, n in naks[2:])  # both runs in one NAK, compressed
    retransmitted = True
    net.run_until(lambda: s.readable_bytes == 15 * p, 5)
    assert s.receive(1 << 20) == bytes(15 * p)


def test_keepalive_when_idle_and_broken_connection_detection() -> None:
    net = Net()
    c, s = connect_pair(net)
    start = net.now
    net.run_for(3.0)
    kas = [w for w in net.packets(A, B) if isinstance(w.packet, KeepAlive)]
    kas += [w for w in net.packets(B, A) if isinstance(w.packet, KeepAlive)]
    assert len(kas) >= 4
    assert c.connected
    assert s.connected
    # the server vanishes
    net.blackhole = lambda w: w.src == B
    cut = net.now
    net.run_until(lambda: c.state is State.CLOSED, 120)
    assert c.close_reason is CloseReason.TIMEOUT
    # 17 EXP periods growing from 0.3 s: about 46 s of silence
    assert 40 < net.now - cut < 60
    assert net.now - start > 40
    closed = [ev for addr, ev in net.events if isinstance(ev, Closed) and ev.session is c]
    assert closed == [Closed(c, CloseReason.TIMEOUT)]


def test_exp_timeout_retransmits_unacknowledged_data() -> None:
    net = Net()
    c, _s = connect_pair(net)
    net.blackhole = lambda w: w.src == B and isinstance(w.packet, (Ack, Nak))
    c.send(bytes(5 * c.payload_size), net.now)
    net.run_for(2.0)
    assert c.stats.pkt_retrans >= 5  # everything resent on EXP, more than once
    net.blackhole = None
    net.run_until(lambda: c.send_buffered == 0, 10)


def test_shutdown_then_reads_drain() -> None:
    net = Net()
    c, s = connect_pair(net)
    c.send(b"last words", net.now)
    net.run_until(lambda: s.readable_bytes == 10)
    c.close(net.now)
    net.run_until(lambda: s.state is State.CLOSED)
    assert any(isinstance(w.packet, Shutdown) for w in net.packets(A, B))
    assert s.close_reason is CloseReason.PEER_SHUTDOWN
    assert s.at_eof
    assert s.receive(100) == b"last words"
    assert net.endpoints[A].state_size == 0
    assert net.endpoints[B].state_size == 0
    with pytest.raises(LocalProtocolError):
        s.send(b"x", net.now)


def test_linger_waits_for_acknowledgement() -> None:
    net = Net()
    c, s = connect_pair(net, Config(linger=5.0))
    net.blackhole = lambda w: isinstance(w.packet, DataPacket)
    c.send(bytes(10_000), net.now)
    c.close(net.now)
    net.run_for(1.0)
    assert c.state is State.CLOSING
    assert not any(isinstance(w.packet, Shutdown) for w in net.packets(A, B))
    net.blackhole = None
    net.run_until(lambda: c.state is State.CLOSED, 10)
    assert c.close_reason is CloseReason.LOCAL
    assert s.readable_bytes == 10_000
    net.run_for(0.1)
    shutdown_at = [w.time for w in net.packets(A, B) if isinstance(w.packet, Shutdown)]
    assert len(shutdown_at) == 3  # sent a few times at once: nothing acknowledges it
    assert len(set(shutdown_at)) == 1


def test_linger_gives_up_after_its_time() -> None:
    net = Net()
    c, _s = connect_pair(net, Config(linger=1.0))
    net.blackhole = lambda w: isinstance(w.packet, DataPacket)
    c.send(bytes(10_000), net.now)
    t0 = net.now
    c.close(net.now)
    net.run_until(lambda: c.state is State.CLOSED, 5)
    assert net.now - t0 == pytest.approx(1.0, abs=0.011)


def test_abort_is_immediate() -> None:
    net = Net()
    c, s = connect_pair(net)
    c.send(bytes(100_000), net.now)
    c.abort(net.now)
    assert c.state is State.CLOSED
    net.run_until(lambda: s.state is State.CLOSED)
    assert s.close_reason is CloseReason.PEER_SHUTDOWN


def test_ack_beyond_what_was_sent_breaks_the_connection() -> None:
    net = Net()
    c, _s = connect_pair(net)
    bogus = Ack(1, (c.isn + 1000) % (1 << 31), 1000, 100, 8000, timestamp=0, dest=c.socket_id)
    net.inject(B, A, bogus.encode())
    net.run_for(0.01)
    assert c.close_reason is CloseReason.PROTOCOL


def test_nak_beyond_what_was_sent_breaks_the_connection() -> None:
    net = Net()
    c, _s = connect_pair(net)
    net.inject(B, A, Nak(((c.isn + 5, c.isn + 5),), dest=c.socket_id).encode())
    net.run_for(0.01)
    assert c.close_reason is CloseReason.PROTOCOL


def test_packets_from_other_addresses_are_ignored() -> None:
    net = Net()
    c, _s = connect_pair(net)
    net.inject(C, A, Shutdown(dest=c.socket_id).encode())
    net.inject(C, A, b"short")
    net.run_for(0.05)
    assert c.connected
    assert net.endpoints[A].dropped == 2


# ---------------------------------------------------------------------------
# congestion control hook
# ---------------------------------------------------------------------------


class Recorder(CongestionControl):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.custom: list[UserDefined] = []

    def init(self) -> None:
        self.calls.append("init")
        self.pkt_send_period = 100.0
        self.cwnd = 1000.0

    def on_ack(self, ack: int) -> None:
        self.calls.append("ack")

    def on_loss(self, losses: Any) -> None:
        self.calls.append(f"loss {list(losses)}")

    def on_pkt_sent(self, seq: int, count: int) -> None:
        self.calls.append("sent")

    def process_custom_msg(self, packet: UserDefined) -> None:
        self.custom.append(packet)

    def close(self) -> None:
        self.calls.append("close")


def test_congestion_control_hook_receives_events_and_sets_the_rate() -> None:
    net = Net()
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    cfg = Config(congestion=factory)
    c, s = connect_pair(net, cfg)
    client_cc = next(r for r in made if r is c.cc)
    server_cc = next(r for r in made if r is s.cc)
    assert client_cc.calls[0] == "init"
    lost = c.isn + 2
    once = {"done": False}

    def drop(w: Wire) -> bool:
        pk = w.packet
        if isinstance(pk, DataPacket) and pk.seq == lost and not once["done"]:
            once["done"] = True
            return True
        return False

    net.blackhole = drop
    c.send(bytes(50 * c.payload_size), net.now)
    t0 = net.now
    net.run_until(lambda: s.readable_bytes == 50 * c.payload_size)
    # 100 us per packet: 50 packets take at least ~5 ms
    assert net.now - t0 >= 0.004
    assert "ack" in client_cc.calls
    assert "sent" in client_cc.calls
    assert f"loss {[(lost, lost)]}" in client_cc.calls
    client_cc.send_custom_msg(7, b"ping")
    net.run_for(0.05)
    assert [(u.subtype, u.data) for u in server_cc.custom] == [(7, b"ping")]
    c.abort(net.now)
    assert client_cc.calls[-1] == "close"


def test_fixed_rate_paces_packets() -> None:
    net = Net()
    c, s = connect_pair(net, Config(congestion=lambda: FixedRateCC(str(1500 * 1000))))  # 1000 pkt/s
    c.send(bytes(200 * c.payload_size), net.now)
    t0 = net.now
    net.run_until(lambda: s.readable_bytes == 200 * c.payload_size, 5)
    assert net.now - t0 == pytest.approx(0.2, abs=0.02)
    assert c.snapshot(net.now).us_pkt_snd_period == pytest.approx(1000.0)


def test_max_bandwidth_caps_the_rate() -> None:
    net = Net()
    c, s = connect_pair(net, Config(max_bandwidth=1500 * 500))  # 500 packets/s
    c.send(bytes(100 * c.payload_size), net.now)
    t0 = net.now
    net.run_until(lambda: s.readable_bytes == 100 * c.payload_size, 5)
    assert net.now - t0 >= 0.19


# ---------------------------------------------------------------------------
# the loss list
# ---------------------------------------------------------------------------


def test_loss_list_against_a_set() -> None:
    rng = random.Random(9)
    for _ in range(200):
        ll = LossList()
        model: set[int] = set()
        for _ in range(60):
            op = rng.random()
            a = rng.randint(0, 300)
            b = a + rng.randint(0, 20)
            if op < 0.5:
                added = ll.insert(a, b)
                new = set(range(a, b + 1)) - model
                assert added == len(new)
                model |= new
            elif op < 0.7:
                assert ll.remove(a) == (a in model)
                model.discard(a)
            elif op < 0.85:
                removed = ll.remove_range(a, b)
                gone = model & set(range(a, b + 1))
                assert removed == len(gone)
                model -= gone
            elif model:
                assert ll.pop_first() == min(model)
                model.remove(min(model))
            assert len(ll) == len(model)
            assert [s for f, last in ll for s in range(f, last + 1)] == sorted(model)
            runs = list(ll)
            assert all(r1[1] + 1 < r2[0] for r1, r2 in itertools.pairwise(runs))  # merged
        assert ll.remove_below(150) == len({s for s in model if s < 150})


def test_loss_list_ages_runs_for_periodic_reports() -> None:
    ll = LossList()
    ll.insert(10, 12, 1.0)
    ll.insert(20, 20, 1.5)
    assert ll.due(1.6, 0.5, 10) == [(10, 12)]  # reported at 1.0: due; 20 only 0.1 s ago
    assert ll.due(1.7, 0.5, 10) == []  # 10-12 was just re-reported
    ll.insert(13, 14, 1.7)  # merges with 10-12: due when its oldest part is
    ll.remove(11)  # a split keeps the time
    assert list(ll) == [(10, 10), (12, 14), (20, 20)]
    assert ll.due(2.2, 0.5, 10) == [(10, 10), (12, 14), (20, 20)]
    assert ll.due(2.8, 0.5, 2) == [(10, 10), (12, 14)]  # at most `limit` runs


def test_header_fields_on_data_packets() -> None:
    net = Net()
    c, s = connect_pair(net)
    c.send(b"hello", net.now)
    net.run_until(lambda: s.readable_bytes == 5)
    data = [w for w in net.packets(A, B) if isinstance(w.packet, DataPacket)]
    raw = data[0].data
    seq, word, _ts, dest = struct.unpack_from("!IIII", raw)
    assert seq == c.isn
    assert dest == s.socket_id
    assert word >> 30 == 3  # a one-packet message
    assert raw[16:] == b"hello"


# ---------------------------------------------------------------------------
# the BBR-like algorithm, driven directly
# ---------------------------------------------------------------------------


def _bbr(**kwargs: Any) -> tuple[BBRLikeCC, list[tuple[int, bytes]]]:
    cc = BBRLikeCC(**kwargs)
    sent: list[tuple[int, bytes]] = []
    cc._send_custom = lambda subtype, data: sent.append((subtype, data))
    cc.now, cc.rtt, cc.snd_curr_seq, cc.max_cwnd = 1_000_000, 50_000, 99, 25600.0
    cc.init()
    return cc, sent


class _Link:
    """Drive a BBRLikeCC sender over a link that delivers at most ``capacity`` packets/s.

    Every 10 ms: what pacing allows is sent, the link keeps at most its capacity (the rest
    overflows, and ``loss`` of what it keeps is lost at random), the receiver's report and
    the ACK come back (the cumulative ACK just behind the newest packet), the losses as a NAK.
    """

    def __init__(self, cc: BBRLikeCC, seed: int = 1) -> None:
        self.cc = cc
        self.rng = random.Random(seed)
        self.rx = BBRLikeCC()
        self.reports: list[tuple[int, bytes]] = []
        self.rx._send_custom = lambda subtype, data: self.reports.append((subtype, data))
        self.sent = self.lost = 0

    def run(self, seconds: float, capacity: float, loss: float = 0.0) -> None:
        cc, rx, rng = self.cc, self.rx, self.rng
        for _ in range(round(seconds * 100)):
            cc.now += 10_000
            rx.now = cc.now
            n = int(10_000 / cc.pkt_send_period)
            first = cc.snd_curr_seq + 1
            cc.snd_curr_seq += n
            cc.on_pkt_sent(first, n)
            kept = min(n, int(capacity / 100))
            dropped = [first + i for i in range(kept) if rng.random() < loss]
            runs = [(seq, seq) for seq in dropped]
            if kept < n:
                runs.append((first + kept, first + n - 1))  # a queue overflowing drops a run
            self.sent += n
            self.lost += n - kept + len(dropped)
            if kept > len(dropped):
                rx.on_pkt_received(first + kept - 1, kept - len(dropped))
            for subtype, data in self.reports:
                cc.process_custom_msg(UserDefined(subtype, data))
            self.reports.clear()
            if runs:
                cc.on_loss(runs)
            cc.on_ack(first)


def test_bbr_receiver_reports_what_arrived_every_10_ms() -> None:
    cc, sent = _bbr()
    cc.on_pkt_received(150, 30)
    cc.now += 4_000
    cc.on_pkt_received(170, 20)  # within 10 ms of the last report: none
    cc.now += 6_000
    cc.on_pkt_received(171, 1)
    assert [s for s, _ in sent] == [BBRLikeCC.REPORT_SUBTYPE] * 2
    assert struct.unpack("!III", sent[-1][1]) == (51, 1_010_000, 171)


def test_bbr_paces_at_the_delivery_rate_the_receiver_reports() -> None:
    cc, _ = _bbr()
    _Link(cc).run(3.0, capacity=10_000, loss=0.01)
    assert cc._reported
    # the estimate is the link's rate; random loss does not bring it down
    assert cc._btl_bw == pytest.approx(10_000 * 0.99, rel=0.05)
    assert 1e6 / cc.pkt_send_period <= 1.25 * 10_000 * 1.05


def test_bbr_sender_far_above_the_link_converges() -> None:
    cc, _ = _bbr(initial_rate="200M")  # about 137,000 packets/s to start with
    link = _Link(cc)
    link.run(0.5, capacity=10_000)
    assert 1e6 / cc.pkt_send_period <= 1.25 * 10_000 * 1.05
    link.sent = link.lost = 0
    link.run(2.0, capacity=10_000)
    # after that, what overflows is BBR's probing (a quarter of one round in eight), not half
    assert link.lost / link.sent < 0.06


def test_bbr_caps_the_estimate_when_a_round_at_gain_1_overflows() -> None:
    cc, _ = _bbr()
    link = _Link(cc)
    link.run(2.0, capacity=10_000)
    assert cc._state == "probe"
    # the bottleneck halves: rounds at gain 1 lose about half their packets
    link.run(0.3, capacity=5_000)
    assert cc._cap
    assert cc._cap < 0.7 * 10_000
    assert 1e6 / cc.pkt_send_period < 0.7 * 1.25 * 10_000


def test_bbr_window_counts_out_packets_waiting_behind_a_hole() -> None:
    cc, _ = _bbr()
    link = _Link(cc)
    link.run(2.0, capacity=10_000)
    # a hole: the cumulative ACK stays while 2000 more packets go out and arrive
    ack = cc._last_ack
    cc.snd_curr_seq += 2000
    cc.now += 10_000
    cc.on_ack(ack)
    base = cc.cwnd
    cc.now += 10_000
    link.rx.now = cc.now
    link.rx.on_pkt_received(cc.snd_curr_seq, 2000)
    for subtype, data in link.reports:
        cc.process_custom_msg(UserDefined(subtype, data))
    assert cc.cwnd >= base + 1500


def test_bbr_on_both_sides_exchanges_reports() -> None:
    net = Net(seed=6, loss=0.01)
    c, s = connect_pair(net, Config(congestion=BBRLikeCC))
    data = random.Random(6).randbytes(2_000_000)
    assert transfer(net, c, s, data, timeout=120) == data
    assert isinstance(c.cc, BBRLikeCC)
    assert c.cc._reported


# ---------------------------------------------------------------------------
# what the receiver reports: RTT by arrival stamps, the receive rate per read pass
# ---------------------------------------------------------------------------


def _full_ack_sent(net: Net, receiver: Session) -> int:
    """Give ``receiver`` a packet to acknowledge and make it send a full ACK now; its ACK number."""
    r = receiver.receiver
    receiver.endpoint.receive_datagram(_data(receiver, r.next, receiver.payload_size), A, net.now)
    r.send_ack(net.now)
    seqno, _ack, sent = r._ack_window[-1]
    assert sent == net.now
    return seqno


def test_ack2_read_late_is_timed_by_its_arrival_stamp() -> None:
    net = Net()
    _c, s = connect_pair(net)
    s.rtt, s.rtt_var = 0.1, 0.05
    sent = net.now
    seqno = _full_ack_sent(net, s)
    ack2 = Ack2(seqno, dest=s.socket_id).encode()
    # read half a second after it arrived (it waited in the socket behind data)
    s.endpoint.receive_datagram(ack2, A, sent + 0.5, arrival=sent + 0.0002)
    # one sample of 0.2 ms into the EWMA from 100 ms: 7/8 of the way stays
    assert s.rtt == pytest.approx(0.1 * 7 / 8 + 0.0002 / 8)
    seqno = _full_ack_sent(net, s)
    # no stamp: the time it was handed over is the arrival
    s.endpoint.receive_datagram(Ack2(seqno, dest=s.socket_id).encode(), A, net.now + 0.5)
    assert s.rtt > 0.1 * 7 / 8 * 7 / 8 + 0.5 / 8 - 1e-9


def _data(s: Session, seq: int, size: int) -> bytes:
    return DataPacket(seq & 0x7FFFFFFF, 1, Boundary.SOLO, True, 0, s.socket_id, b"x" * size).encode()


#: A receiver that announces a flow window of 32 packets: a sender's slow start ends after 32.
SHORT_SLOW_START = Config(flight_flag_size=32)


def test_receive_rate_is_the_arrival_pace_unless_the_reader_falls_behind() -> None:
    net = Net()
    _c, s = connect_pair(net, STREAM, SHORT_SLOW_START)
    s.rtt = 0.001  # the rate cap looks back 2 SYN
    ep = s.endpoint
    ep.read_passes = True
    payload = s.payload_size
    seq = s.receiver.next
    t = net.now

    def passes(n: int, waited: float, *, spacing: float = 1e-5, per_pass: int = 10) -> None:
        # passes of ``per_pass`` packets that arrived ``spacing`` apart and are read ``waited``
        # later, one pass every 2 ms
        nonlocal seq, t
        for _ in range(n):
            for i in range(per_pass):
                arrival = t + i * spacing
                ep.receive_datagram(_data(s, seq, payload), A, arrival + waited, arrival=arrival)
                seq += 1
                s.receive(1 << 20)
            ep.end_of_pass(t + waited + per_pass * spacing + 100e-6)
            ep.handle_timeout(t + waited + per_pass * spacing + 100e-6)  # full ACKs, every SYN
            t += 0.002

    # the sender's slow start (its window, 16 + what full ACKs acknowledged, within the 32 we
    # announced): bursts of 10 packets 10 us apart every 2 ms are reported at their pace, as
    # the reference does, even while this reader is behind
    passes(1, 50e-6)
    assert s.receiver.peer_in_slow_start()
    assert s.receiver.arrival_rate() == pytest.approx(100_000, rel=0.05)
    passes(1, 0.003)
    assert s.receiver.peer_in_slow_start()
    assert s.receiver.arrival_rate() == pytest.approx(100_000, rel=0.05)
    # keeping up (read 50 us after arrival), packets paced 200 us apart: their pace
    passes(20, 50e-6, spacing=2e-4)
    assert not s.receiver.peer_in_slow_start()
    assert s.receiver.arrival_rate() == pytest.approx(5000, rel=0.05)
    # the same bursts after slow start: at most RATE_CAP times the 5000 packets/s that arrive,
    # not the 100,000 packets/s between two packets of a burst
    passes(20, 50e-6)
    assert s.receiver.arrival_rate() == pytest.approx(RATE_CAP * 5000, rel=0.1)
    # a steady 40 us apart, without pause: 25,000 packets/s
    passes(20, 50e-6, spacing=4e-5, per_pass=50)
    assert s.receiver.arrival_rate() == pytest.approx(25_000, rel=0.05)
    # behind (each waited 3 ms in the socket, longer than a pass): the rate this reader takes
    # them in at, over its passes
    passes(20, 0.003, spacing=4e-5, per_pass=50)
    assert s.receiver.arrival_rate() == pytest.approx(25_000, rel=0.05)
    passes(20, 0.003)
    assert s.receiver.arrival_rate() == pytest.approx(5000, rel=0.05)


def _receiving() -> tuple[Session, int, float]:
    """A connected receiving session, the next sequence number it expects, and the time."""
    net = Net()
    _c, s = connect_pair(net)
    return s, s.receiver.next, net.now


def test_the_peers_slow_start_ends_at_our_first_nak() -> None:
    s, seq, t = _receiving()
    r = s.receiver
    for k in range(20):
        s.endpoint.receive_datagram(_data(s, seq + k, s.payload_size), A, t + k * 1e-5)
    assert r.peer_in_slow_start()
    # a gap: packet seq + 20 is missing, and the NAK that says so ends the sender's slow start
    s.endpoint.receive_datagram(_data(s, seq + 21, s.payload_size), A, t + 1e-3)
    assert s.stats.pkt_sent_nak == 1
    assert not r.peer_in_slow_start()


def _acks(ep: Any) -> list[Ack]:
    """The ACKs among the datagrams ``ep`` has to send."""
    packets = (parse_packet_untrusted(d) for d, _a, _s in ep.datagrams_to_send())
    return [p for p in packets if isinstance(p, Ack)]


def test_an_ack_is_repeated_every_syn_until_the_peer_confirms_one() -> None:
    # libudt's sender drops what comes before its receiving thread took the connection in:
    # our first ACK may be lost that way, and the sender then waits with nothing in flight
    s, seq, t = _receiving()
    ep = s.endpoint
    ep.datagrams_to_send()
    for k in range(16):
        ep.receive_datagram(_data(s, seq + k, s.payload_size), A, t + k * 5e-6)
    s.receive(1 << 24)
    first = []
    for i in range(1, 4):
        ep.handle_timeout(t + i * SYN)
        first += _acks(ep)
    # the same ACK again within 3 SYN while no ACK2 came back (the initial RTT + 4 RTTVar
    # would have made it 300 ms)
    assert len(first) >= 2
    assert {a.ack for a in first} == {seq + 16}
    ep.receive_datagram(Ack2(first[-1].ack_seqno, dest=s.socket_id).encode(), A, t + 3.5 * SYN)
    # confirmed: the same ACK again only after RTT + 4 RTTVar, as the reference
    ep.handle_timeout(t + 4 * SYN)
    ep.handle_timeout(t + 5 * SYN)
    assert _acks(ep) == []


def test_a_sender_in_slow_start_is_told_what_brings_its_smoothed_rate_to_the_pace() -> None:
    s, seq, t = _receiving()
    r = s.receiver
    ep = s.endpoint
    ep.datagrams_to_send()
    smoothed = 16  # the reference's sender: 7/8 of what it had, 1/8 of each report, from 16
    for _ in range(5):
        # 64 packets 5 us apart (200,000 packets/s) every SYN, and a full ACK after each burst
        for k in range(64):
            ep.receive_datagram(_data(s, seq, s.payload_size), A, t + k * 5e-6)
            seq += 1
        s.receive(1 << 24)
        t += SYN
        ep.handle_timeout(t)
        assert r.peer_in_slow_start()
        rates = [a.rate for a in _acks(ep) if a.rate]
        assert len(rates) == 1
        smoothed = (smoothed * 7 + rates[0]) >> 3
        # one report is enough: the smoothed rate is the pace (or just under, as its filter goes)
        assert smoothed == pytest.approx(200_000, rel=0.05)
        assert rates[0] >= r.arrival_rate()


def test_packet_pairs_are_timed_by_arrival_not_by_reading() -> None:
    net = Net()
    _c, s = connect_pair(net)
    ep = s.endpoint
    payload = s.payload_size
    r = s.receiver
    seq = r.next
    seq += (-seq) % 16  # the first of a pair: 16n
    # catch up to the pair with in-order packets
    t = net.now
    while r.next < seq:
        ep.receive_datagram(_data(s, r.next, payload), A, t)
        s.receive(1 << 20)
    for _ in range(64):
        # each pair arrives 100 us apart (a link of 10,000 packets/s) but is read 1 ms apart
        ep.receive_datagram(_data(s, seq, payload), A, t + 0.01, arrival=t)
        ep.receive_datagram(_data(s, seq + 1, payload), A, t + 0.011, arrival=t + 1e-4)
        for k in range(seq + 2, seq + 16):
            ep.receive_datagram(_data(s, k, payload), A, t + 0.011)
        s.receive(1 << 20)
        seq += 16
        t += 0.02
    assert r._probe.rate(need_half=False) == pytest.approx(10_000, rel=0.01)


def _stamped_batch(s: Session, first: int, arrivals: list[float], now: float) -> bytes:
    """``len(arrivals)`` full-size data packets from ``first``, handed over as the driver does
    after ``recvmmsg`` (headers and payloads in slots, one arrival stamp each); their payloads."""
    n = len(arrivals)
    slot = s.payload_size
    headers = b"".join(HEADER.pack((first + i) & 0x7FFFFFFF, 0xC0000000, 0, s.socket_id) for i in range(n))
    payloads = bytes(random.Random(first).randbytes(slot * n))
    assert s.endpoint.receive_batch(
        bytearray(headers), bytearray(payloads), slot, n, slot, A, now, arrivals=arrivals
    )
    return payloads


def test_datagrams_read_together_are_timed_by_their_own_stamps() -> None:
    net = Net()
    _c, s = connect_pair(net)
    r = s.receiver
    seq = r.next
    t = net.now
    sent = b""
    for _ in range(64):
        # 16 datagrams read at once, read 5 ms after the last arrived; they arrived 100 us
        # apart (a link of 10,000 packets/s), and the pair (16n, 16n+1) inside is timed too
        arrivals = [t + i * 1e-4 for i in range(16)]
        sent += _stamped_batch(s, seq, arrivals, t + 0.0065)
        seq += 16
        t += 0.0016
    got = s.receive(1 << 24)
    assert got == sent
    assert r.next == seq
    assert r._probe.rate(need_half=False) == pytest.approx(10_000, rel=0.01)
    assert r.arrival_rate() == pytest.approx(10_000, rel=0.01)


def test_a_pass_that_left_datagrams_waiting_reports_the_intake_rate() -> None:
    net = Net()
    _c, s = connect_pair(net, STREAM, SHORT_SLOW_START)
    s.rtt = 0.001
    ep = s.endpoint
    ep.read_passes = True
    r = s.receiver
    seq = r.next
    t = net.now

    def passes(n: int, *, backlog: bool) -> None:
        # 100 packets 12 us apart every 2 ms (clumps longer than a burst), each pass read
        # 50 us after its last arrival: never a datagram that waited longer than a pass
        nonlocal seq, t
        for _ in range(n):
            arrivals = [t + i * 12e-6 for i in range(100)]
            for k in range(0, 100, 20):
                _stamped_batch(s, seq + k, arrivals[k : k + 20], arrivals[-1] + 50e-6)
            seq += 100
            s.receive(1 << 24)
            ep.end_of_pass(arrivals[-1] + 60e-6, backlog=backlog)
            ep.handle_timeout(arrivals[-1] + 60e-6)
            t += 0.002

    passes(20, backlog=False)
    # keeping up: the pace (83,000 packets/s), capped at RATE_CAP times what arrives
    assert r.arrival_rate() == pytest.approx(RATE_CAP * 50_000, rel=0.05)
    # the same arrivals, but each pass stopped at its limit: the 50,000 packets/s taken in
    passes(20, backlog=True)
    assert r.arrival_rate() == pytest.approx(50_000, rel=0.02)


def test_a_window_limited_sender_is_told_more_than_gets_through_so_its_window_grows() -> None:
    net = Net()
    _c, s = connect_pair(net, STREAM, SHORT_SLOW_START)
    s.rtt, s.rtt_var = 0.05, 0.001  # a 50 ms link
    r = s.receiver
    seq = r.next
    t = net.now

    def rounds(n: int, silence: float) -> None:
        # 25 packets 50 us apart (the window), then silence until the next round
        nonlocal seq, t
        for _ in range(n):
            arrivals = [t + i * 50e-6 for i in range(25)]
            _stamped_batch(s, seq, arrivals, arrivals[-1] + 1e-4)
            s.receive(1 << 24)
            s.endpoint.handle_timeout(arrivals[-1] + 1e-4)
            seq += 25
            t = arrivals[-1] + silence

    # waiting a round trip for ACKs: the pace is 20,000 packets/s, 25 per 51.2 ms get through,
    # and the sender has that much in flight; it is told enough for a window (rate x
    # (RTT + SYN) + 16) WINDOW_ROOM times that: its rate control, not its window, sets its pace
    rounds(20, 0.05)
    flight = 25 / 0.0512 * s.rtt
    assert r.arrival_rate() == pytest.approx(WINDOW_ROOM * flight / (s.rtt + 0.01), rel=0.02)
    assert r.arrival_rate() * (s.rtt + 0.01) + 16 > WINDOW_ROOM * 25
    # silent far longer than a round trip (a stall): what gets through is what counts
    rounds(20, 1.0)
    assert r.arrival_rate() < 100


def _lose_twice(
    net: Net, seqs: list[int], *, also: Callable[[int], bool] = lambda seq: False
) -> tuple[Session, Session, dict[int, list[float]]]:
    """A pair at 2 MB/s, 50 ms RTT, its receiver reporting each loss once (the
    reference's: no periodic NAK); the packets ``seqs`` (offsets from the ISN) lose
    their first two sends, those ``also`` picks their first. Returns the send times."""
    net.delay = 0.025
    c, s = connect_pair(net, Config(congestion=lambda: FixedRateCC("2M")), Config(periodic_nak=False))
    sends: dict[int, list[float]] = {c.isn + seq: [] for seq in seqs}
    once: set[int] = set()

    def drop(w: Wire) -> bool:
        pk = w.packet
        if not isinstance(pk, DataPacket):
            return False
        if pk.seq in sends:
            sends[pk.seq].append(w.time)
            return len(sends[pk.seq]) <= 2
        if also(pk.seq - c.isn) and pk.seq not in once:
            once.add(pk.seq)
            return True
        return False

    net.blackhole = drop
    return c, s, sends


def _stream(net: Net, c: Session, s: Session, packets: int) -> None:
    data = bytes(range(256)) * (packets * c.payload_size // 256)
    assert transfer(net, c, s, data, timeout=30) == data


def test_a_lost_retransmission_is_resent_without_waiting_for_exp() -> None:
    # Data keeps flowing: the receiver's other reports keep the sender's EXP timer from
    # firing. The packet the cumulative ACK waits for is resent once the ACK has not
    # moved for two round trips.
    net = Net()
    # once the RTT estimate has settled; other losses, lost once, keep reports coming
    c, s, sends = _lose_twice(net, [1000], also=lambda seq: seq % 50 == 0)
    _stream(net, c, s, 3000)
    (times,) = sends.values()
    assert len(times) == 3
    lost = c.isn + 1000
    naks = [w for w in net.packets(B, A) if isinstance(w.packet, Nak) and lost in _nak_seqs(w.packet)]
    assert len(naks) == 1  # reported once: the third send is the sender's own doing
    # within a few round trips of the lost retransmission, while the transfer went on
    assert times[2] - times[1] < 4 * (2 * net.delay + 0.01)
    assert max(w.time for w in net.packets(A, B)) > times[2] + 0.5
    assert c.stats.pkt_timeout_loss == 0


def _nak_seqs(nak: Nak) -> set[int]:
    return {seq for first, last in nak.losses for seq in range(first, last + 1)}


def test_a_lost_retransmission_at_the_end_is_resent_before_exp() -> None:
    # The last packets, one lost twice: nothing more arrives to report anything, and a
    # receiver that reports each loss once goes quiet. The stuck packet is resent two
    # round trips on, before EXP (at least 300 ms) would resend all that is unacknowledged.
    net = Net()
    c, s, sends = _lose_twice(net, [1995])
    _stream(net, c, s, 2000)
    (times,) = sends.values()
    assert len(times) == 3
    assert times[2] - times[1] < 0.3
    assert c.stats.pkt_timeout_loss == 0
    assert c.stats.pkt_retrans == 2  # that packet alone


def test_reported_losses_whose_retransmissions_were_lost_are_resent_together() -> None:
    # A burst of losses, each retransmission lost too, near the end: one timer resends
    # them all, not one hole per timer, and not the whole window (EXP).
    net = Net()
    c, s, sends = _lose_twice(net, [1960 + 3 * i for i in range(8)])
    _stream(net, c, s, 2000)
    assert all(len(times) == 3 for times in sends.values())
    thirds = [times[2] for times in sends.values()]
    assert max(thirds) - min(thirds) < 0.01  # one round
    assert c.stats.pkt_timeout_loss == 0
    assert c.stats.pkt_retrans == 2 * len(sends)
