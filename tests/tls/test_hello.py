"""The sans-IO ClientHello reader: real hellos, hand-built ones, hostile input (hypothesis)."""

from __future__ import annotations

import ssl
import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_conduit.tls import (
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    ExtensionType,
    is_grease,
    parse_client_hello_untrusted,
)
from trio_conduit.tls._hello import _fixed_fields, _fixed_fields_checked, server_name_untrusted

# ---------------------------------------------------------------------------
# making hellos
# ---------------------------------------------------------------------------


def openssl_hello(
    server_hostname: str | None = "example.test", alpn: Sequence[str] | None = None, tls13: bool = True
) -> bytes:
    """The first flight OpenSSL (through Python's ssl) sends as a client: record bytes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _vec(length_bytes: int, body: bytes) -> bytes:
    return len(body).to_bytes(length_bytes, "big") + body


def _u16s(values: Sequence[int]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def build_message(
    *,
    server_name: str | None = None,
    alpn: Sequence[str] = (),
    versions: Sequence[int] = (),
    groups: Sequence[int] = (),
    ciphers: Sequence[int] = (0x1301, 0xC02F),
    extra: Sequence[tuple[int, bytes]] = (),
    session_id: bytes = b"",
) -> bytes:
    """A ClientHello handshake message (header included) from the given parts."""
    exts: list[tuple[int, bytes]] = []
    if server_name is not None:
        name = server_name.encode()
        exts.append((0, _vec(2, b"\x00" + _vec(2, name))))
    if alpn:
        exts.append((16, _vec(2, b"".join(_vec(1, p.encode()) for p in alpn))))
    if versions:
        exts.append((43, _vec(1, _u16s(versions))))
    if groups:
        exts.append((10, _vec(2, _u16s(groups))))
    exts.extend(extra)
    ext_block = b"".join(struct.pack("!H", t) + _vec(2, d) for t, d in exts)
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + _vec(1, session_id)
        + _vec(2, _u16s(ciphers))
        + _vec(1, b"\x00")
        + _vec(2, ext_block)
    )
    return b"\x01" + _vec(3, body)


def records(message: bytes, sizes: Sequence[int] = ()) -> bytes:
    """``message`` in handshake records of the given fragment sizes (the rest in one record)."""
    out = bytearray()
    pos = 0
    for size in sizes:
        if pos >= len(message):
            break
        chunk = message[pos : pos + size]
        out += b"\x16\x03\x01" + _vec(2, chunk)
        pos += len(chunk)
    while pos < len(message):
        chunk = message[pos : pos + 16384]
        out += b"\x16\x03\x01" + _vec(2, chunk)
        pos += len(chunk)
    return bytes(out)


def feed_all(data: bytes, cuts: Sequence[int] = (), max_size: int | None = None) -> ClientHello | None:
    reader = ClientHelloReader() if max_size is None else ClientHelloReader(max_size)
    result = None
    pos = 0
    for cut in [*sorted(c for c in cuts if 0 < c < len(data)), len(data)]:
        result = reader.feed_untrusted(data[pos:cut])
        pos = cut
    return result


def same_hello(a: ClientHello, b: ClientHello) -> bool:
    """Equal but for ``raw`` (how it was cut into records)."""
    return a.message == b.message and a.server_name == b.server_name and a.extensions == b.extensions


# ---------------------------------------------------------------------------
# real hellos
# ---------------------------------------------------------------------------


def test_openssl_hello_parsed() -> None:
    raw = openssl_hello("Example.Test", alpn=["h2", "http/1.1"])
    hello = feed_all(raw)
    assert hello is not None
    assert hello.server_name == "example.test"  # lower-cased
    assert hello.alpn_protocols == ("h2", "http/1.1")
    assert hello.offers_tls13
    assert hello.max_version == 0x0304
    assert 0x0303 in hello.supported_versions
    assert 0x1301 in hello.cipher_suites or 0x1302 in hello.cipher_suites
    assert hello.supported_groups
    assert hello.key_share_groups
    assert hello.signature_algorithms
    assert ExtensionType.SERVER_NAME in hello.extension_types
    assert hello.extension(ExtensionType.ALPN) is not None
    assert hello.extension(0x1234) is None
    assert hello.raw == raw
    assert hello.message[0] == 1
    assert len(hello.message) == int.from_bytes(hello.message[1:4], "big") + 4
    assert not hello.grease
    version, ciphers, exts, groups, formats = hello.ja3.split(",")
    assert version == "771"
    assert {"4865", "4866"} & set(ciphers.split("-"))
    assert exts.split("-")[0] == "0"  # server_name first, as OpenSSL sends it
    assert groups
    assert formats == "0-1-2"
    assert len(hello.ja3_hash) == 32


def test_tls12_only_hello_has_no_supported_versions() -> None:
    hello = feed_all(openssl_hello(None, tls13=False))
    assert hello is not None
    assert hello.server_name is None
    assert hello.supported_versions == ()
    assert hello.versions == (0x0303,)
    assert not hello.offers_tls13


def test_byte_by_byte() -> None:
    raw = openssl_hello()
    reader = ClientHelloReader()
    for i in range(len(raw) - 1):
        assert reader.feed_untrusted(raw[i : i + 1]) is None
    hello = reader.feed_untrusted(raw[-1:])
    assert hello is not None
    assert hello.server_name == "example.test"
    assert reader.buffered == raw
    assert reader.feed_untrusted(b"more") is hello  # later bytes are kept, not parsed
    assert reader.buffered == raw + b"more"


def test_hello_split_across_records() -> None:
    message = build_message(server_name="split.test", alpn=["h2"])
    raw = records(message, [1, 3, 5, 50])
    hello = feed_all(raw, cuts=[2, 7, 8, 60])
    assert hello is not None
    assert hello.server_name == "split.test"
    assert hello.alpn_protocols == ("h2",)
    assert hello.raw == raw
    assert hello.message == message


def test_bytes_after_the_hello_are_buffered() -> None:
    raw = openssl_hello()
    early = b"\x17\x03\x03\x00\x05hello"  # e.g. early data after the hello, in the same read
    reader = ClientHelloReader()
    hello = reader.feed_untrusted(raw + early)
    assert hello is not None
    assert hello.raw == raw
    assert reader.buffered == raw + early


def test_grease_values_are_recognised_and_set_aside() -> None:
    assert is_grease(0x0A0A)
    assert is_grease(0xFAFA)
    assert is_grease(0x3A3A)
    assert not is_grease(0x0A1A)
    assert not is_grease(0x1301)
    assert not is_grease(0x0B0B)
    message = build_message(
        server_name="g.test",
        ciphers=(0x2A2A, 0x1301),
        versions=(0x5A5A, 0x0304, 0x0303),
        groups=(0x6A6A, 0x001D),
        extra=[(0x7A7A, b""), (0xDADA, b"\x00")],
    )
    hello = feed_all(records(message))
    assert hello is not None
    assert hello.grease
    assert hello.cipher_suites == (0x2A2A, 0x1301)  # as sent
    assert hello.supported_versions == (0x0304, 0x0303)
    assert hello.supported_groups == (0x001D,)
    assert [e.type for e in hello.extensions if e.grease] == [0x7A7A, 0xDADA]
    assert "10794" not in hello.ja3
    assert "31354" not in hello.ja3


def test_hello_without_extensions() -> None:
    body = b"\x03\x01" + bytes(32) + b"\x00" + _vec(2, b"\x00\x2f") + b"\x01\x00"
    hello = feed_all(records(b"\x01" + _vec(3, body)))
    assert hello is not None
    assert hello.extensions == ()
    assert hello.server_name is None
    assert hello.versions == (0x0301,)


# ---------------------------------------------------------------------------
# refused input
# ---------------------------------------------------------------------------


def error_for(data: bytes, **kw: int) -> ClientHelloError:
    with pytest.raises(ClientHelloError) as info:
        feed_all(data, **kw)  # type: ignore[arg-type]
    return info.value


def test_sslv2_hello_refused_cleanly() -> None:
    # An SSLv2-compatible ClientHello: 2-byte header with the high bit set, then MSG-CLIENT-HELLO.
    v2 = b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(21) + bytes(16)
    exc = error_for(v2)
    assert exc.reason == "SSLV2_HELLO"
    assert "SSLv2" in str(exc)


def test_plain_http_refused() -> None:
    exc = error_for(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert exc.reason == "NOT_TLS"
    assert "plain text" in str(exc)


def test_alert_before_hello_refused() -> None:
    assert error_for(b"\x15\x03\x03\x00\x02\x02\x28").reason == "NOT_TLS"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x16\x03\x01\x00\x00", "empty handshake record"),
        (b"\x16\x03\x01\x40\x01" + bytes(16385), "16385-byte record"),
        (b"\x16\x02\x00\x00\x04\x01\x00\x00\x00", "record version"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "handshake message type 2"),
        (records(build_message()) + b"", ""),  # valid, as a control: see below
    ],
)
def test_bad_records(data: bytes, words: str) -> None:
    if not words:
        assert feed_all(data) is not None
        return
    assert words in str(error_for(data))


def test_record_of_another_type_midway_refused() -> None:
    message = build_message(server_name="x.test")
    first = records(message[:10])
    exc = error_for(first + b"\x17\x03\x03\x00\x01\x00")
    assert "record type 23" in str(exc)


def test_oversized_hello_refused_from_its_header() -> None:
    # The header alone announces 40000 bytes: refused before they arrive.
    data = b"\x16\x03\x01\x00\x04\x01" + (40000).to_bytes(3, "big")
    exc = error_for(data)
    assert exc.reason == "CLIENT_HELLO_TOO_LARGE"
    assert (
        error_for(records(build_message(server_name="a" * 50)), max_size=60).reason
        == "CLIENT_HELLO_TOO_LARGE"
    )


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (build_message(extra=[(5, b""), (5, b"")]), "appears twice"),
        (build_message(extra=[(0, _vec(2, b"\x00" + _vec(2, b"bad\xffname")))]), "not printable ASCII"),
        (build_message(extra=[(0, _vec(2, b"\x00" + _vec(2, b"a") + b"\x00" + _vec(2, b"b")))]), "two host"),
        (build_message(extra=[(16, _vec(2, b"\x00"))]), "ALPN"),
        (build_message(extra=[(43, b"\x03\x03\x04")]), "supported_versions"),
        (build_message(extra=[(10, _vec(2, b"\x00\x1d\x00"))]), "odd length"),
        (build_message(ciphers=()), "cipher_suites"),
        (build_message(session_id=bytes(33)), "legacy_session_id"),
        (build_message() + b"\x00", ""),  # trailing byte after the message: ignored (next message)
    ],
)
def test_bad_hello_bodies(message: bytes, words: str) -> None:
    data = records(message)
    if not words:
        assert feed_all(data) is not None
        return
    exc = error_for(data)
    assert words in str(exc)
    assert exc.reason == "BAD_CLIENT_HELLO"


def test_truncated_body_refused() -> None:
    message = build_message(server_name="t.test")
    # Claim the full length in the header but stop early inside the body's own vectors.
    body = message[4:]
    short = b"\x01" + _vec(3, body[:40])
    assert "ends early" in str(error_for(records(short)))


def test_eof_before_the_hello() -> None:
    reader = ClientHelloReader()
    with pytest.raises(ClientHelloError, match="without sending anything"):
        reader.feed_eof()
    reader = ClientHelloReader()
    assert reader.feed_untrusted(openssl_hello()[:30]) is None
    with pytest.raises(ClientHelloError, match="after 30 bytes") as info:
        reader.feed_eof()
    assert info.value.reason == "EOF"


def test_parse_function_directly() -> None:
    message = build_message(server_name="direct.test")
    hello = parse_client_hello_untrusted(message)
    assert hello.server_name == "direct.test"
    assert hello.raw == b""
    with pytest.raises(ClientHelloError, match="unexpected bytes"):
        parse_client_hello_untrusted(message + b"\x00")


# ---------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------

_HOSTS = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
_PROTOS = st.lists(st.text("abcdefghijklmnopqrstuvwxyz0-9/.", min_size=1, max_size=20), max_size=5)
_GREASE = st.sampled_from([0x0A0A + 0x1010 * i for i in range(16)])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_arbitrary_bytes_give_only_our_error(data: bytes, cuts: list[int]) -> None:
    try:
        result = feed_all(data, cuts)
    except ClientHelloError:
        return
    assert result is None or isinstance(result, ClientHello)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03"]),
    body=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 420), max_size=6),
)
def test_arbitrary_handshake_records_give_only_our_error(prefix: bytes, body: bytes, cuts: list[int]) -> None:
    # Valid record framing around junk: reaches the ClientHello parser itself.
    message = b"\x01" + _vec(3, body)
    data = prefix + _vec(2, message)
    try:
        result = feed_all(data, cuts)
    except ClientHelloError:
        return
    assert result is None or isinstance(result, ClientHello)


_REAL = [openssl_hello(), openssl_hello("x.test", alpn=["h2"]), openssl_hello(None, tls13=False)]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(_REAL) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10_000),
)
def test_mutated_real_hellos_give_only_our_error(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_REAL[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(1, cut % (len(data) + 1))]
    try:
        result = feed_all(bytes(data))
    except ClientHelloError:
        return
    assert result is None or isinstance(result, ClientHello)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    host=st.none() | _HOSTS,
    alpn=_PROTOS,
    grease=st.lists(_GREASE, max_size=3),
    sizes=st.lists(st.integers(1, 300), max_size=10),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_round_trip_through_any_fragmentation(
    host: str | None, alpn: list[str], grease: list[int], sizes: list[int], cuts: list[int]
) -> None:
    message = build_message(
        server_name=host, alpn=alpn, ciphers=(*grease, 0x1301), versions=(*grease, 0x0304), groups=(0x1D,)
    )
    data = records(message, sizes)
    hello = feed_all(data, cuts)
    assert hello is not None
    assert hello.server_name == host
    assert hello.alpn_protocols == tuple(alpn)
    assert hello.supported_versions == (0x0304,)
    assert hello.grease == bool(grease)
    assert hello.message == message
    assert hello.raw == data
    assert same_hello(hello, parse_client_hello_untrusted(message))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 200), min_size=1, max_size=12), cuts=st.lists(st.integers(0, 3000)))
def test_real_hello_through_any_fragmentation(sizes: list[int], cuts: list[int]) -> None:
    original = feed_all(_REAL[1])
    assert original is not None
    data = records(original.message, sizes)
    hello = feed_all(data, cuts)
    assert hello is not None
    assert same_hello(hello, original)
    assert hello.raw == data


# ---------------------------------------------------------------------------
# the quick path: records only, then the server name
# ---------------------------------------------------------------------------


def _quick_agrees_with_full(message: bytes) -> None:
    """The SNI scan refuses only what the full parse refuses, and agrees with it otherwise."""
    try:
        full = parse_client_hello_untrusted(message)
    except ClientHelloError:
        full = None
    try:
        quick = server_name_untrusted(message)
    except ClientHelloError:
        assert full is None, "the quick scan refused a hello the full parse accepts"
        return
    if full is not None:
        assert quick == full.server_name


def test_message_without_parsing_then_server_name() -> None:
    data = openssl_hello("Quick.Test", alpn=["h2"])
    reader = ClientHelloReader()
    assert reader.feed_message_untrusted(data[:30]) is None
    message = reader.feed_message_untrusted(data[30:] + b"after")
    assert message is not None
    assert reader.hello is None  # not parsed
    assert reader.raw == data
    assert reader.buffered == data + b"after"
    assert server_name_untrusted(message) == "quick.test"
    assert server_name_untrusted(records_message(openssl_hello(None))) is None
    parsed = parse_client_hello_untrusted(message, reader.raw)
    assert parsed.server_name == "quick.test"
    assert parsed.alpn_protocols == ("h2",)


def records_message(data: bytes) -> bytes:
    message = ClientHelloReader().feed_message_untrusted(data)
    assert message is not None
    return message


@pytest.mark.parametrize(
    "message",
    [
        build_message(server_name="a b.test"),  # not printable
        build_message(extra=[(0, _vec(2, b"\x00" + _vec(2, b"x") + b"\x00" + _vec(2, b"y")))]),  # two names
        build_message(extra=[(0, b"\x00\x05\x00")]),  # the name list overruns
        build_message(ciphers=()),
        build_message()[:-3],
    ],
)
def test_quick_scan_refuses_what_the_parse_refuses(message: bytes) -> None:
    with pytest.raises(ClientHelloError):
        parse_client_hello_untrusted(message)
    _quick_agrees_with_full(message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(_REAL) - 1),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10_000),
)
def test_quick_scan_of_mutated_hellos(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    message = bytearray(records_message(_REAL[which]))
    for pos, value in flips:
        message[pos % len(message)] = value
    _quick_agrees_with_full(bytes(message[: max(1, cut % (len(message) + 1))]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=400), host=st.none() | _HOSTS)
def test_quick_scan_of_arbitrary_bodies(body: bytes, host: str | None) -> None:
    _quick_agrees_with_full(b"\x01" + _vec(3, body))
    _quick_agrees_with_full(build_message(server_name=host, extra=[(0xFE, body[:100])]))


def _same_fixed_fields(message: bytes) -> None:
    """The quick check of the fixed fields gives what the checked one gives, error for error."""
    try:
        expected: object = _fixed_fields_checked(message)
    except ClientHelloError as exc:
        expected = str(exc)
    try:
        got: object = _fixed_fields(message)
    except ClientHelloError as exc:
        got = str(exc)
    assert got == expected


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(_REAL) - 1),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10_000),
)
def test_fixed_fields_quick_path_of_mutated_hellos(
    which: int, flips: list[tuple[int, int]], cut: int
) -> None:
    message = bytearray(records_message(_REAL[which]))
    for pos, value in flips:  # the fixed fields are in the first 200 bytes or so
        message[pos % len(message)] = value
    _same_fixed_fields(bytes(message[: max(1, cut % (len(message) + 1))]))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    session_id=st.binary(max_size=40),
    ciphers=st.binary(max_size=8),
    compression=st.binary(max_size=3),
    declared=st.none() | st.integers(0, 300),
    tail=st.binary(max_size=4),
)
def test_fixed_fields_quick_path_of_built_bodies(
    session_id: bytes, ciphers: bytes, compression: bytes, declared: int | None, tail: bytes
) -> None:
    body = b"\x03\x03" + bytes(32) + _vec(1, session_id) + _vec(2, ciphers) + _vec(1, compression) + tail
    size = len(body) if declared is None else declared
    _same_fixed_fields(b"\x01" + size.to_bytes(3, "big") + body)
    _same_fixed_fields(b"\x01" + len(body).to_bytes(3, "big") + body)


def test_fixed_fields_quick_path_takes_real_hellos(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [_fixed_fields_checked(records_message(data)) for data in _REAL]

    def not_called(message: bytes) -> tuple[int, int, int]:
        raise AssertionError("a well-formed hello went the slow way")

    monkeypatch.setattr("trio_conduit.tls._hello._fixed_fields_checked", not_called)
    assert [_fixed_fields(records_message(data)) for data in _REAL] == expected
