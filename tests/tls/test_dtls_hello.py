"""The DTLS ClientHello reader and the stateless cookie exchange (sans-IO), and openssl as a peer."""

from __future__ import annotations

import itertools
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_conduit.tls import ClientHelloError
from trio_conduit.tls._dtls_hello import (
    COOKIE_SIZE,
    CookieJar,
    DTLSClientHello,
    DTLSClientHelloReader,
    hello_verify_request,
)

from .test_hello import build_message


def dtls_body(tls_message: bytes, cookie: bytes = b"") -> bytes:
    """A DTLS 1.2 ClientHello body from a TLS one: version 0xFEFD, a cookie after the session id."""
    body = tls_message[4:]
    at = 35 + body[34]
    return b"\xfe\xfd" + body[2:at] + bytes([len(cookie)]) + cookie + body[at:]


def fragments(body: bytes, cuts: Sequence[int], message_seq: int = 0) -> list[bytes]:
    """The handshake message as fragments split at ``cuts`` (each with its 12-byte header)."""
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    out = []
    for start, stop in itertools.pairwise(points):
        out.append(
            bytes([1])
            + len(body).to_bytes(3, "big")
            + message_seq.to_bytes(2, "big")
            + start.to_bytes(3, "big")
            + (stop - start).to_bytes(3, "big")
            + body[start:stop]
        )
    return out


def record(payload: bytes, seq: int = 0, *, kind: int = 22, epoch: int = 0, version: int = 0xFEFD) -> bytes:
    return (
        bytes([kind])
        + version.to_bytes(2, "big")
        + epoch.to_bytes(2, "big")
        + seq.to_bytes(6, "big")
        + len(payload).to_bytes(2, "big")
        + payload
    )


def feed(datagrams: Sequence[bytes], **kw: int) -> DTLSClientHello | None:
    reader = DTLSClientHelloReader(**kw)
    hello = None
    for datagram in datagrams:
        hello = reader.feed_datagram_untrusted(datagram)
    return hello


MESSAGE = build_message(server_name="dtls.test", alpn=["coap", "h2"], groups=[29, 23])


def test_one_datagram_hello() -> None:
    body = dtls_body(MESSAGE)
    hello = feed([record(fragments(body, [])[0], seq=7)])
    assert hello is not None
    assert hello.hello.server_name == "dtls.test"
    assert hello.hello.alpn_protocols == ("coap", "h2")
    assert hello.hello.supported_groups == (29, 23)
    assert hello.hello.legacy_version == 0xFEFD
    assert hello.cookie == b""
    assert hello.message_seq == 0
    assert hello.record_seq == 7


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 400), max_size=12),
    order=st.randoms(use_true_random=False),
    duplicates=st.integers(0, 5),
    per_datagram=st.integers(1, 4),
)
def test_fragments_in_any_order_with_duplicates(
    cuts: list[int], order: random.Random, duplicates: int, per_datagram: int
) -> None:
    """However the hello is cut, shuffled, repeated and packed into datagrams, the same hello comes out."""
    body = dtls_body(MESSAGE, cookie=b"c" * 16)
    pieces = fragments(body, cuts)
    pieces += [order.choice(pieces) for _ in range(duplicates)]
    order.shuffle(pieces)
    recs = [record(p, seq=i) for i, p in enumerate(pieces)]
    datagrams = [b"".join(recs[i : i + per_datagram]) for i in range(0, len(recs), per_datagram)]
    hello = feed(datagrams)
    assert hello is not None
    assert hello.cookie == b"c" * 16
    assert hello.hello.server_name == "dtls.test"
    assert hello.message[12:] == body  # reassembled exactly


def test_incomplete_hello_waits() -> None:
    body = dtls_body(MESSAGE)
    first, _second = fragments(body, [50])
    assert feed([record(first)]) is None


def test_a_later_message_seq_starts_over_and_an_earlier_one_is_ignored() -> None:
    first = dtls_body(MESSAGE)
    second = dtls_body(MESSAGE, cookie=b"k" * COOKIE_SIZE)
    reader = DTLSClientHelloReader()
    assert reader.feed_datagram_untrusted(record(fragments(first, [40])[0])) is None
    a, b = fragments(second, [60], message_seq=1)
    assert reader.feed_datagram_untrusted(record(a, seq=3)) is None
    assert reader.feed_datagram_untrusted(record(fragments(first, [40])[1])) is None  # seq 0: stale
    hello = reader.feed_datagram_untrusted(record(b, seq=4))
    assert hello is not None
    assert hello.message_seq == 1
    assert hello.cookie == b"k" * COOKIE_SIZE
    assert len(reader.datagrams) == 4


@pytest.mark.parametrize(
    ("datagram", "words"),
    [
        (b"", "empty datagram"),
        (b"GET / HTTP/1.1\r\n", "not DTLS"),
        (record(b"x", kind=23), "not DTLS: first byte 0x17"),
        (record(b"\x01", version=0x0303), "is not DTLS"),
        (record(fragments(dtls_body(MESSAGE), [])[0], epoch=1), "epoch 1"),
        (record(fragments(dtls_body(MESSAGE), [])[0])[:20], "runs past the end"),
        (record(b"\x02" + bytes(11)), "type 2, expected 1"),
        (record(fragments(dtls_body(MESSAGE), [])[0])[:-1] + b"", "runs past the end"),
        (record(bytes([1, 0, 0, 5, 0, 0, 0, 0, 9, 0, 0, 1]) + b"x"), "past the message's length"),
    ],
)
def test_bad_datagrams_refused(datagram: bytes, words: str) -> None:
    with pytest.raises(ClientHelloError, match=words):
        feed([datagram])


def test_tls_version_in_the_hello_refused() -> None:
    body = b"\x03\x03" + dtls_body(MESSAGE)[2:]
    with pytest.raises(ClientHelloError, match="is not DTLS"):
        feed([record(fragments(body, [])[0])])


def test_oversized_hello_refused_from_its_first_fragment() -> None:
    body = dtls_body(build_message(server_name="x", extra=[(21, bytes(3000))]))
    first = fragments(body, [100])[0]
    with pytest.raises(ClientHelloError, match="larger than the limit") as info:
        feed([record(first)], max_size=1000)
    assert info.value.reason == "CLIENT_HELLO_TOO_LARGE"


def test_too_many_fragments_refused() -> None:
    first = fragments(dtls_body(MESSAGE), [1])[0]
    with pytest.raises(ClientHelloError, match="more than 256 fragments"):
        feed([record(first)] * 300)  # the same first byte, over and over: never complete


@settings(max_examples=300, deadline=None)
@given(datagrams=st.lists(st.binary(max_size=300), min_size=1, max_size=6))
def test_arbitrary_datagrams_give_only_our_error(datagrams: list[bytes]) -> None:
    try:
        feed(datagrams)
    except ClientHelloError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_mutated_hellos_give_only_our_error(flips: list[tuple[int, int]], cuts: list[int]) -> None:
    datagrams = [bytearray(record(p, seq=i)) for i, p in enumerate(fragments(dtls_body(MESSAGE), cuts))]
    for where, value in flips:
        datagram = datagrams[where % len(datagrams)]
        datagram[where % len(datagram)] = value
    try:
        feed([bytes(d) for d in datagrams])
    except ClientHelloError:
        pass


# -- cookies ------------------------------------------------------------------------


def hello_with(cookie: bytes, *, sni: str = "dtls.test") -> DTLSClientHello:
    body = dtls_body(build_message(server_name=sni), cookie=cookie)
    hello = feed([record(fragments(body, [])[0], seq=2)])
    assert hello is not None
    return hello


def test_cookie_round_trip_binds_the_peer_and_the_hello() -> None:
    jar = CookieJar(b"s" * 32)
    peer = ("192.0.2.1", 5684)
    first = hello_with(b"")
    cookie = jar.cookie(peer, first)
    assert len(cookie) == COOKIE_SIZE
    again = hello_with(cookie)
    assert jar.valid(peer, again)
    assert not jar.valid(("192.0.2.2", 5684), again)  # another address
    assert not jar.valid(peer, hello_with(cookie, sni="other.test"))  # another hello
    assert not jar.valid(peer, first)  # no cookie
    assert not CookieJar(b"t" * 32).valid(peer, again)  # another secret


def test_rotation_keeps_the_previous_secret_only() -> None:
    jar = CookieJar(b"a" * 32)
    peer = ("192.0.2.1", 1)
    old = hello_with(jar.cookie(peer, hello_with(b"")))
    jar.rotate(b"b" * 32)
    assert jar.valid(peer, old)
    jar.rotate(b"c" * 32)
    assert not jar.valid(peer, old)


def test_hello_verify_request_layout() -> None:
    hello = hello_with(b"")
    datagram = hello_verify_request(hello, b"\x01" * 16)
    assert datagram[0] == 22  # handshake record
    assert datagram[1:3] == b"\xfe\xff"  # DTLS 1.0, as RFC 6347 asks
    assert int.from_bytes(datagram[5:11], "big") == hello.record_seq
    assert datagram[13] == 3  # hello_verify_request
    assert datagram[-17] == 16
    assert datagram[-16:] == b"\x01" * 16
    with pytest.raises(ValueError, match="255"):
        hello_verify_request(hello, bytes(256))


# -- a real client ----------------------------------------------------------------------


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


def read_hello(sock: socket.socket) -> tuple[DTLSClientHello, object]:
    reader = DTLSClientHelloReader()
    while True:
        data, peer = sock.recvfrom(65536)
        hello = reader.feed_datagram_untrusted(data)
        if hello is not None:
            return hello, peer


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (Debian: openssl)")
@pytest.mark.parametrize("mtu", [None, 256])
def test_openssl_s_client_hello_and_cookie_exchange(udp_socket: socket.socket, mtu: int | None) -> None:
    """openssl s_client's hello is read (in fragments with a small MTU), our HelloVerifyRequest is
    accepted, and its second hello carries the cookie we made, valid for its address only."""
    port = udp_socket.getsockname()[1]
    command = ["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}"]
    command += ["-servername", "dtls.test", "-alpn", "coap,h2"]
    if mtu is not None:
        command += ["-mtu", str(mtu)]
    client = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        first, peer = read_hello(udp_socket)
        assert first.hello.server_name == "dtls.test"
        assert first.hello.alpn_protocols == ("coap", "h2")
        assert first.hello.legacy_version == 0xFEFD
        assert first.cookie == b""
        jar = CookieJar()
        udp_socket.sendto(hello_verify_request(first, jar.cookie(peer, first)), peer)
        second, peer2 = read_hello(udp_socket)
        while second.message_seq == 0:  # a retransmission of the first that crossed our reply
            second, peer2 = read_hello(udp_socket)
        assert peer2 == peer
        assert second.message_seq == 1
        assert jar.valid(peer, second)
        assert not jar.valid(("127.0.0.2", 9), second)
        assert second.hello.random == first.hello.random
    finally:
        client.kill()
        client.wait()
        assert client.stdin is not None
        client.stdin.close()
