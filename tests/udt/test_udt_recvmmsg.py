"""recvmmsg through ctypes: many datagrams per call, laid out for the engine's batch path."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from trio_conduit_plugins.udt._recvmmsg import MSG_TRUNC, STAMP_ONLY, BatchReader

SLOT = 1456


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, BatchReader]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        rx.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMPNS", 35), 1)
        reader = BatchReader.open(rx, 8, SLOT)
        if reader is None:
            pytest.skip("no recvmmsg in this libc")
        yield rx, tx, reader


def _read_all(reader: BatchReader, want: int) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        k = reader.read(reader.count)
        if k:
            assert k == want
            return k
        time.sleep(0.001)
    raise AssertionError("nothing arrived")


def test_datagrams_land_in_header_and_payload_slots_with_stamps_and_source(
    pair: tuple[socket.socket, socket.socket, BatchReader],
) -> None:
    rx, tx, reader = pair
    sent = [bytes([i]) * 16 + bytes([100 + i]) * SLOT for i in range(5)] + [b"h" * 16 + b"short"]
    before = time.time()
    for d in sent:
        tx.sendto(d, rx.getsockname())
    k = _read_all(reader, len(sent))
    meta = reader.meta(k)
    lengths, flags, controls = meta[2::3], meta[1::3], meta[0::3]
    assert list(lengths) == [len(d) for d in sent]
    assert not any(f & MSG_TRUNC for f in flags)
    assert list(controls) == [STAMP_ONLY] * k
    stamps = reader.stamps(k)
    for i in range(k):
        stamp = stamps[2 * i] + stamps[2 * i + 1] * 1e-9
        assert before - 1 < stamp < time.time() + 1
        assert reader.control(i, controls[i]) == (pytest.approx(stamp), 0)
        assert reader.datagram(i, lengths[i]) == sent[i]
    # the fast layout: headers back to back, payloads in their slots
    assert bytes(reader.headers[16:32]) == bytes([1]) * 16
    assert bytes(reader.payloads[SLOT : 2 * SLOT]) == bytes([101]) * SLOT
    assert reader.same_source(k)
    assert reader.source(0) == tx.getsockname()
    assert reader.read(reader.count) == 0  # nothing waits: 0, not an error


def test_a_coalesced_batch_spills_whole_and_says_its_segment_size(
    pair: tuple[socket.socket, socket.socket, BatchReader],
) -> None:
    rx, tx, reader = pair
    try:
        rx.setsockopt(17, getattr(socket, "UDP_GRO", 104), 1)
    except OSError:
        pytest.skip("no UDP_GRO")
    data = bytes(range(256)) * 23  # 5888 bytes: four segments of 1472
    try:
        tx.sendmsg(
            [data],
            [(17, getattr(socket, "UDP_SEGMENT", 103), (1472).to_bytes(2, "little"))],
            0,
            rx.getsockname(),
        )
    except OSError:
        pytest.skip("no UDP_SEGMENT")
    k = _read_all(reader, 1)
    length = reader.meta(k)[2]
    control = reader.meta(k)[0]
    assert length == len(data)
    stamp, segment = reader.control(0, control)
    assert stamp is not None
    assert segment == 1472
    assert reader.datagram(0, length) == data


def test_an_error_queued_on_the_socket_is_raised(
    pair: tuple[socket.socket, socket.socket, BatchReader],
) -> None:
    rx, tx, reader = pair
    # a send to a closed port: the ICMP error comes back as ECONNREFUSED on the next read
    tx.close()
    rx.connect(("127.0.0.1", _closed_port()))
    rx.send(b"x")
    time.sleep(0.05)  # the ICMP answer is queued at once on loopback
    with pytest.raises(ConnectionRefusedError):
        reader.read(reader.count)
    assert reader.read(reader.count) == 0  # reported once


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_not_for_ipv6() -> None:
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        pytest.skip("no IPv6")
    with s:
        assert BatchReader.open(s, 4, SLOT) is None


def test_rx_cost_runs_the_receive_path_on_made_packets(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_conduit_plugins.udt.bench import main

    assert main(["rx-cost", "3", "8"]) == 0
    out = capsys.readouterr().out
    assert '"packets": 24' in out
    assert f'"bytes": {24 * SLOT}' in out
