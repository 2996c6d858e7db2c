"""The UDT packet codec: exact wire bytes (as the reference lays them out), round trips, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_conduit_plugins.udt._packet import (
    HEADER_SIZE,
    Ack,
    Ack2,
    BadPacket,
    Boundary,
    CongestionWarning,
    ControlType,
    DataPacket,
    DropRequest,
    ErrorSignal,
    Handshake,
    KeepAlive,
    Nak,
    RequestType,
    Shutdown,
    SocketType,
    UserDefined,
    decode_loss_list_untrusted,
    encode_loss_list,
    ip_from_wire,
    ip_to_wire,
    parse_packet_untrusted,
)
from trio_conduit_plugins.udt._seq import next_msgno, seqcmp, seqlen, seqoff, unwrap, wire

from trio_conduit import ConduitError

seqs = st.integers(0, 0x7FFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-0x80000000, 0x7FFFFFFF)


# ---------------------------------------------------------------------------
# exact layouts
# ---------------------------------------------------------------------------


def test_data_packet_layout() -> None:
    pkt = DataPacket(
        seq=0x01020304,
        msgno=5,
        boundary=Boundary.FIRST,
        in_order=True,
        timestamp=0xAABBCCDD,
        dest=0x11223344,
        payload=b"xyz",
    )
    raw = pkt.encode()
    # bit 0 clear, seq; FF=10, O=1, msgno; timestamp; destination socket id; payload
    assert raw == bytes.fromhex("01020304a0000005aabbccdd11223344") + b"xyz"
    assert parse_packet_untrusted(raw) == pkt


def test_handshake_layout_and_peer_ip_word_order() -> None:
    hs = Handshake(
        version=4,
        socket_type=SocketType.STREAM,
        isn=0x12345678,
        mss=1500,
        flight_flag_size=8192,
        request_type=RequestType.RESPONSE,
        socket_id=0x0BADBEEF,
        cookie=-2,
        peer_ip=ip_to_wire("127.0.0.1"),
        timestamp=7,
        dest=9,
    )
    raw = hs.encode()
    assert len(raw) == HEADER_SIZE + 48
    assert raw[:16] == bytes.fromhex("80000000000000000000000700000009")
    body = raw[16:]
    assert struct.unpack("!iiiiiiii", body[:32]) == (4, 1, 0x12345678, 1500, 8192, -1, 0x0BADBEEF, -2)
    # in_addr.s_addr read as a little-endian word, then sent big-endian: 127.0.0.1 -> 01 00 00 7f
    assert body[32:48] == bytes.fromhex("0100007f" + "00" * 12)
    assert parse_packet_untrusted(raw) == hs
    assert ip_from_wire(hs.peer_ip, ipv6=False) == "127.0.0.1"


def test_peer_ip_ipv6_round_trip() -> None:
    raw = ip_to_wire("2001:db8::1")
    assert raw[:4] == bytes.fromhex("b80d0120")  # each 4-byte group reversed
    assert ip_from_wire(raw, ipv6=True) == "2001:db8::1"


def test_control_header_words() -> None:
    ack = Ack(ack_seqno=3, ack=100, rtt=20000, rtt_var=5000, available=8000, rate=1000, bandwidth=5000)
    raw = ack.encode()
    w0, w1 = struct.unpack_from("!II", raw)
    assert w0 == 0x80000000 | (ControlType.ACK << 16)
    assert w1 == 3
    assert struct.unpack("!Iiiiii", raw[16:]) == (100, 20000, 5000, 8000, 1000, 5000)
    assert parse_packet_untrusted(raw) == ack


def test_ack_sizes_light_regular_full() -> None:
    light = Ack(0, 77)
    assert len(light.encode()) == 20
    assert light.light
    regular = Ack(1, 77, 1, 2, 3)
    assert len(regular.encode()) == 32
    full = Ack(1, 77, 1, 2, 3, 4, 5)
    assert len(full.encode()) == 40
    for pkt in (light, regular, full):
        assert parse_packet_untrusted(pkt.encode()) == pkt


@pytest.mark.parametrize(
    ("packet", "ctype"),
    [
        (KeepAlive(), ControlType.KEEPALIVE),
        (Shutdown(), ControlType.SHUTDOWN),
        (CongestionWarning(), ControlType.CONGESTION_WARNING),
        (Ack2(42), ControlType.ACK2),
        (ErrorSignal(4000), ControlType.ERROR_SIGNAL),
    ],
)
def test_empty_control_packets_carry_the_reference_pad_word(packet: object, ctype: ControlType) -> None:
    raw = packet.encode()  # type: ignore[attr-defined]
    assert len(raw) == 20  # the reference sends one zero word rather than nothing
    assert raw[16:] == b"\0\0\0\0"
    assert (struct.unpack_from("!I", raw)[0] >> 16) & 0x7FFF == ctype
    assert parse_packet_untrusted(raw) == packet
    # and a peer sending no control information at all is accepted too
    assert parse_packet_untrusted(raw[:16]) == packet


def test_nak_compression() -> None:
    # single losses as the number; runs of two or more as first|0x80000000, last
    body = encode_loss_list([(5, 5), (7, 8), (100, 200)])
    assert struct.unpack("!5I", body) == (5, 7 | 0x80000000, 8, 100 | 0x80000000, 200)
    nak = Nak(((5, 5), (7, 8), (100, 200)), timestamp=1, dest=2)
    assert parse_packet_untrusted(nak.encode()) == nak


def test_drop_request_and_user_defined() -> None:
    drop = DropRequest(msgno=9, first=10, last=12)
    raw = drop.encode()
    assert struct.unpack_from("!I", raw, 4)[0] == 9
    assert raw[16:] == struct.pack("!II", 10, 12)
    assert parse_packet_untrusted(raw) == drop
    user = UserDefined(subtype=0x1234, data=b"abcd" * 2, additional=5)
    raw = user.encode()
    assert struct.unpack_from("!I", raw)[0] == 0x80000000 | (0x7FFF << 16) | 0x1234
    assert parse_packet_untrusted(raw) == user


# ---------------------------------------------------------------------------
# untrusted input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "shorter than the 16-byte"),
        (b"\x80" + b"\0" * 14, "shorter than the 16-byte"),
        (struct.pack("!IIII", 0x80000000, 0, 0, 0) + b"\0" * 47, "handshake of 47 bytes"),
        (struct.pack("!IIII", 0x80020000, 0, 0, 0), "ACK without"),
        (struct.pack("!IIII", 0x80020000, 0, 0, 0) + b"\0" * 8, "neither light"),
        (struct.pack("!IIII", 0x80020000, 0, 0, 0) + struct.pack("!I", 0x80000001), "not a sequence"),
        (struct.pack("!IIII", 0x80030000, 0, 0, 0), "empty loss list"),
        (struct.pack("!IIII", 0x80030000, 0, 0, 0) + struct.pack("!I", 0x80000005), "middle of a range"),
        (struct.pack("!IIII", 0x80030000, 0, 0, 0) + struct.pack("!II", 0x80000005, 0x80000006), "range end"),
        (struct.pack("!IIII", 0x80070000, 0, 0, 0) + b"\0" * 4, "drop request without"),
        (struct.pack("!IIII", 0x80090000, 0, 0, 0), "unknown control packet type 9"),
        (struct.pack("!IIII", 0x80010000, 0, 0, 0) + b"\0\0", "not whole 32-bit words"),
        (
            struct.pack("!IIII", 0x80000000, 0, 0, 0)
            + struct.pack("!iiiiiiii16s", 4, 1, -5, 0, 0, 1, 1, 0, b""),
            "ISN -5",
        ),
    ],
)
def test_malformed_packets_raise_bad_packet(raw: bytes, why: str) -> None:
    with pytest.raises(BadPacket, match=why) as info:
        parse_packet_untrusted(raw)
    assert isinstance(info.value, ConduitError)


@settings(max_examples=3000)
@given(st.binary(max_size=120))
def test_fuzz_parse_raises_only_bad_packet(raw: bytes) -> None:
    try:
        pkt = parse_packet_untrusted(raw)
    except BadPacket:
        return
    # whatever parses is a known packet type and re-encodes to something that parses to it
    again = parse_packet_untrusted(pkt.encode())
    assert again == pkt


@settings(max_examples=1500)
@given(
    header=st.tuples(u32, u32, u32, u32),
    ctype=st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 0x7FFF, 9, 0x7FFE]),
    body=st.binary(max_size=64),
)
def test_fuzz_control_packets(header: tuple[int, int, int, int], ctype: int, body: bytes) -> None:
    w0 = 0x80000000 | (ctype << 16) | (header[0] & 0xFFFF)
    raw = struct.pack("!IIII", w0, *header[1:]) + body
    try:
        pkt = parse_packet_untrusted(raw)
    except BadPacket:
        return
    assert parse_packet_untrusted(pkt.encode()) == pkt


@given(
    seq=seqs,
    msgno=st.integers(0, 0x1FFFFFFF),
    boundary=st.sampled_from(list(Boundary)),
    in_order=st.booleans(),
    ts=u32,
    dest=u32,
    payload=st.binary(max_size=64),
)
def test_data_round_trip(
    seq: int, msgno: int, boundary: Boundary, in_order: bool, ts: int, dest: int, payload: bytes
) -> None:
    pkt = DataPacket(seq, msgno, boundary, in_order, ts, dest, payload)
    assert parse_packet_untrusted(pkt.encode()) == pkt


@given(st.lists(st.tuples(seqs, st.integers(0, 1000)), min_size=1, max_size=20))
def test_loss_list_round_trip(runs: list[tuple[int, int]]) -> None:
    losses = tuple((a, min(a + n, 0x7FFFFFFF)) for a, n in runs)
    assert decode_loss_list_untrusted(encode_loss_list(losses)) == losses


@given(st.tuples(i32, i32, seqs, i32, i32, i32, i32, i32), st.binary(min_size=16, max_size=16), u32, u32)
def test_handshake_round_trip(fields: tuple[int, ...], peer_ip: bytes, ts: int, dest: int) -> None:
    hs = Handshake(*fields, peer_ip=peer_ip, timestamp=ts, dest=dest)
    assert parse_packet_untrusted(hs.encode()) == hs


def test_encode_checks_ranges() -> None:
    with pytest.raises(ValueError, match="31-bit"):
        DataPacket(1 << 31, 0, Boundary.SOLO, False, 0, 0, b"").encode()
    with pytest.raises(ValueError, match="29-bit"):
        DataPacket(0, 1 << 29, Boundary.SOLO, False, 0, 0, b"").encode()
    with pytest.raises(ValueError, match="needs rtt_var"):
        Ack(0, 1, rtt=5).encode()
    with pytest.raises(ValueError, match="at least one loss"):
        Nak(()).encode()


# ---------------------------------------------------------------------------
# sequence arithmetic
# ---------------------------------------------------------------------------


def test_sequence_wrap() -> None:
    top = 0x7FFFFFFF
    assert seqoff(top, 0) == 1
    assert seqoff(0, top) == -1
    assert seqcmp(0, top) > 0
    assert seqlen(top - 1, 1) == 4
    assert wire(top + 1) == 0
    assert unwrap(3, top) == top + 4
    assert unwrap(top, top + 10) == top
    assert next_msgno(0x1FFFFFFE) == 1


@given(st.integers(0, 1 << 40), st.integers(-(1 << 29), 1 << 29))
def test_unwrap_inverts_wire(near: int, delta: int) -> None:
    ext = max(0, near + delta)
    assert unwrap(wire(ext), near) == ext
