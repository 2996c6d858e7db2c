"""The sans-IO engines, without sockets: exact bytes, every reply code, round trips, and fuzzing.

The fuzz invariant (h11's): whatever bytes arrive, in whatever pieces,
``next_event()`` returns an event or raises a ``ProxyError`` subclass —
never anything else. Round trips pair each client engine with its server
engine in memory over generated targets, credentials and chunkings.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_conduit as conduit
from trio_conduit.proxy import (
    NEED_DATA,
    ClientEngine,
    Command,
    Established,
    HTTPConnectClient,
    HTTPConnectServer,
    ReplyCode,
    Request,
    ServerEngine,
    Socks4Client,
    Socks4Server,
    Socks5Client,
    Socks5Server,
    Target,
    pack_udp_header,
    unpack_udp_datagram_untrusted,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drain(engine: ClientEngine | ServerEngine) -> list[object]:
    """Events until NEED_DATA (or the end of the handshake)."""
    events: list[object] = []
    while True:
        event = engine.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        return events


# ---------------------------------------------------------------------------
# SOCKS5, exact bytes
# ---------------------------------------------------------------------------


def test_socks5_no_auth_connect_bytes() -> None:
    client = Socks5Client(Target("127.0.0.1", 8080))
    assert client.data_to_send() == b"\x05\x01\x00"
    assert client.next_event() is NEED_DATA
    client.receive_data(b"\x05\x00")
    assert client.next_event() is NEED_DATA
    assert client.data_to_send() == b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"
    client.receive_data(b"\x05\x00\x00\x01\x0a\x00\x00\x02\x04\xd2BANNER")
    event = client.next_event()
    assert event == Established("SOCKS5 reply 0: succeeded", Target("10.0.0.2", 1234))
    assert client.trailing_data == b"BANNER"


def test_socks5_userpass_and_names_and_ipv6() -> None:
    client = Socks5Client(Target("example.test", 443), username="u", password="pw")
    assert client.data_to_send() == b"\x05\x02\x00\x02"
    client.receive_data(b"\x05\x02")
    assert client.next_event() is NEED_DATA
    assert client.data_to_send() == b"\x01\x01u\x02pw"
    client.receive_data(b"\x01\x00")
    assert client.next_event() is NEED_DATA
    assert client.data_to_send() == b"\x05\x01\x00\x03\x0cexample.test\x01\xbb"
    # A reply with an IPv6 bound address, in single bytes.
    reply = b"\x05\x00\x00\x04" + bytes(15) + b"\x01" + b"\x00\x50"
    for i in range(len(reply) - 1):
        client.receive_data(reply[i : i + 1])
        assert client.next_event() is NEED_DATA
    client.receive_data(reply[-1:])
    assert client.next_event() == Established("SOCKS5 reply 0: succeeded", Target("::1", 80))
    assert client.trailing_data == b""
    v6 = Socks5Client(Target("2001:db8::7", 22))
    v6.data_to_send()
    v6.receive_data(b"\x05\x00")
    v6.next_event()
    assert (
        v6.data_to_send()
        == b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000007") + b"\x00\x16"
    )


def test_socks5_udp_associate_request() -> None:
    client = Socks5Client(Target("0.0.0.0", 0), command=Command.UDP_ASSOCIATE)
    client.data_to_send()
    client.receive_data(b"\x05\x00")
    client.next_event()
    assert client.data_to_send() == b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"


REPLY_ERRORS = [
    (1, conduit.ProxyRejected, errno.ECONNREFUSED, "general SOCKS server failure"),
    (2, conduit.ProxyRejected, errno.EACCES, "connection not allowed by ruleset"),
    (3, conduit.ProxyTargetUnreachable, errno.ENETUNREACH, "network unreachable"),
    (4, conduit.ProxyTargetUnreachable, errno.EHOSTUNREACH, "host unreachable"),
    (5, conduit.ProxyTargetRefused, errno.ECONNREFUSED, "connection refused"),
    (6, conduit.ProxyTimeout, errno.ETIMEDOUT, "TTL expired"),
    (7, conduit.ProxyRejected, errno.EOPNOTSUPP, "command not supported"),
    (8, conduit.ProxyRejected, errno.EAFNOSUPPORT, "address type not supported"),
    (0x42, conduit.ProxyRejected, errno.ECONNREFUSED, "unassigned reply code"),
]


@pytest.mark.parametrize(("code", "cls", "err", "words"), REPLY_ERRORS)
def test_socks5_reply_codes_in_words(code: int, cls: type[conduit.ProxyError], err: int, words: str) -> None:
    client = Socks5Client(Target("127.0.0.1", 1))
    client.data_to_send()
    client.receive_data(b"\x05\x00")
    client.next_event()
    client.receive_data(bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0)))
    with pytest.raises(cls) as info:
        client.next_event()
    assert type(info.value) is cls
    assert info.value.errno == err
    assert words in info.value.reply
    assert f"SOCKS5 reply {code if code < 9 else hex(code)}" in info.value.reply
    # The engine stays failed.
    with pytest.raises(cls):
        client.next_event()


def test_socks5_typed_errors_are_also_builtin_ones() -> None:
    assert issubclass(conduit.ProxyTargetRefused, ConnectionRefusedError)
    assert issubclass(conduit.ProxyTargetRefused, conduit.ConnectionRefused)
    assert issubclass(conduit.ProxyTimeout, TimeoutError)
    assert issubclass(conduit.ProxyTimeout, conduit.ConnectTimeout)
    assert issubclass(conduit.ProxyTargetUnreachable, conduit.HostUnreachable)
    assert issubclass(conduit.ProxyError, conduit.ConnectError)


def test_socks5_auth_failures() -> None:
    client = Socks5Client(Target("127.0.0.1", 1))
    client.data_to_send()
    client.receive_data(b"\x05\xff")
    with pytest.raises(conduit.ProxyAuthenticationError, match="it wants credentials"):
        client.next_event()
    client = Socks5Client(Target("127.0.0.1", 1), username="u", password="secret-pw")
    client.data_to_send()
    client.receive_data(b"\x05\x02\x01\x01")
    with pytest.raises(conduit.ProxyAuthenticationError, match=r"status 0x01") as info:
        client.next_event()
    assert "secret-pw" not in str(info.value)
    # A method we did not offer is a protocol error.
    client = Socks5Client(Target("127.0.0.1", 1))
    client.data_to_send()
    client.receive_data(b"\x05\x02")
    with pytest.raises(conduit.ProxyProtocolError, match="not offered"):
        client.next_event()


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"HTTP/1.1 200 OK\r\n", "starts with 0x48"),
        (b"\x05\x00\x00\x09", "unknown address type"),
        (b"\x05\x00\x00\x03\x00", "empty host name"),
        (b"\x05\x00\x00\x01\x01", "in the middle of"),
    ],
)
def test_socks5_garbage_replies(reply: bytes, match: str) -> None:
    client = Socks5Client(Target("127.0.0.1", 1))
    client.data_to_send()
    client.receive_data(b"\x05\x00")
    client.next_event()
    client.receive_data(reply)
    client.receive_data(b"")
    with pytest.raises(conduit.ProxyProtocolError, match=match):
        client.next_event()


def test_socks5_eof_before_anything() -> None:
    client = Socks5Client(Target("127.0.0.1", 1))
    client.receive_data(b"")
    with pytest.raises(conduit.ProxyProtocolError, match="closed the connection instead of sending"):
        client.next_event()


def test_socks5_client_rejects_bad_arguments() -> None:
    with pytest.raises(conduit.AddressError, match="1 to 255 bytes"):
        Socks5Client(Target("127.0.0.1", 1), username="")
    with pytest.raises(conduit.AddressError, match="at most 255 bytes"):
        Socks5Client(Target("127.0.0.1", 1), username="u", password="p" * 256)
    with pytest.raises(conduit.AddressError, match="255 bytes"):
        Socks5Client(Target("a" * 256, 1))


def test_socks5_server_flow_and_refusals() -> None:
    server = Socks5Server(check_credentials=lambda u, p: (u, p) == ("bob", "pw"))
    server.receive_data(b"\x05\x01\x00")
    with pytest.raises(conduit.ProxyAuthenticationError, match="does not offer username/password"):
        server.next_event()
    assert server.data_to_send() == b"\x05\xff"

    server = Socks5Server(check_credentials=lambda u, p: (u, p) == ("bob", "pw"))
    server.receive_data(b"\x05\x02\x00\x02\x01\x03bob\x03bad")
    with pytest.raises(conduit.ProxyAuthenticationError):
        server.next_event()
    assert server.data_to_send() == b"\x05\x02\x01\x01"

    server = Socks5Server()
    server.receive_data(b"\x05\x01\x00\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
    with pytest.raises(conduit.ProxyRejected, match="unknown command"):
        server.next_event()
    assert server.data_to_send() == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)

    server = Socks5Server()
    server.receive_data(b"\x05\x01\x00\x05\x01\x00\x03\x04a\xffcd\x00\x50")
    with pytest.raises(conduit.ProxyProtocolError, match="not ASCII"):
        server.next_event()
    assert server.data_to_send()[-10:-8] == b"\x05\x08"

    server = Socks5Server()
    server.receive_data(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50early")
    assert server.next_event() == Request("SOCKS5", Command.CONNECT, Target("127.0.0.1", 80))
    assert server.next_event() is NEED_DATA
    server.reply(ReplyCode.SUCCEEDED, Target("127.0.0.1", 5555))
    assert server.data_to_send() == b"\x05\x00" + b"\x05\x00\x00\x01\x7f\x00\x00\x01\x15\xb3"
    assert server.trailing_data == b"early"
    with pytest.raises(RuntimeError):
        server.reply(ReplyCode.SUCCEEDED)


# ---------------------------------------------------------------------------
# SOCKS4 / 4a
# ---------------------------------------------------------------------------


def test_socks4_bytes() -> None:
    client = Socks4Client(Target("127.0.0.1", 80), userid="me")
    assert client.data_to_send() == b"\x04\x01\x00\x50\x7f\x00\x00\x01me\x00"
    client.receive_data(b"\x00\x5a\x00\x00\x00\x00\x00\x00BANNER\n")
    assert client.next_event() == Established("SOCKS4 reply 90: request granted", Target("0.0.0.0", 0))
    assert client.trailing_data == b"BANNER\n"  # nmap#2534's reproduction, in bytes
    client = Socks4Client(Target("example.test", 22), socks4a=True)
    assert client.data_to_send() == b"\x04\x01\x00\x16\x00\x00\x00\x01\x00example.test\x00"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (91, conduit.ProxyRejected),
        (92, conduit.ProxyAuthenticationError),
        (93, conduit.ProxyAuthenticationError),
    ],
)
def test_socks4_refusals(code: int, cls: type[conduit.ProxyError]) -> None:
    client = Socks4Client(Target("127.0.0.1", 80))
    client.receive_data(bytes((0, code)) + bytes(6))
    with pytest.raises(cls, match=f"SOCKS4 reply {code}"):
        client.next_event()


def test_socks4_arguments() -> None:
    with pytest.raises(conduit.AddressError, match="use socks4a"):
        Socks4Client(Target("example.test", 1))
    with pytest.raises(conduit.AddressError, match="IPv4 addresses only"):
        Socks4Client(Target("::1", 1), socks4a=True)
    with pytest.raises(conduit.AddressError, match="NUL"):
        Socks4Client(Target("127.0.0.1", 1), userid="a\0b")
    client = Socks4Client(Target("127.0.0.1", 1))
    client.receive_data(b"\x07\x5a" + bytes(6))
    with pytest.raises(conduit.ProxyProtocolError):
        client.next_event()


def test_socks4_server() -> None:
    server = Socks4Server()
    server.receive_data(b"\x04\x01\x00\x16\x00\x00\x00\x01joe\x00example.test\x00extra")
    assert server.next_event() == Request("SOCKS4a", Command.CONNECT, Target("example.test", 22), "joe")
    server.reply(ReplyCode.SUCCEEDED, Target("10.1.2.3", 7))
    assert server.data_to_send() == b"\x00\x5a\x00\x07\x0a\x01\x02\x03"
    assert server.trailing_data == b"extra"

    server = Socks4Server(socks4a=False)
    server.receive_data(b"\x04\x01\x00\x16\x00\x00\x00\x01\x00example.test\x00")
    with pytest.raises(conduit.ProxyRejected, match="host names are not accepted"):
        server.next_event()
    assert server.data_to_send() == b"\x00\x5b" + bytes(6)

    server = Socks4Server()
    server.receive_data(b"\x04\x01\x00\x16\x7f\x00\x00\x01" + b"x" * 300)
    with pytest.raises(conduit.ProxyProtocolError, match="no NUL within 255 bytes"):
        server.next_event()

    server = Socks4Server(check_userid=lambda u: u == "ok")
    server.receive_data(b"\x04\x01\x00\x16\x7f\x00\x00\x01nope\x00")
    with pytest.raises(conduit.ProxyAuthenticationError):
        server.next_event()


# ---------------------------------------------------------------------------
# HTTP CONNECT
# ---------------------------------------------------------------------------


def test_http_request_bytes() -> None:
    client = HTTPConnectClient(Target("example.test", 443), username="alice", password="s3cret")
    assert client.data_to_send() == (
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n"
    )
    v6 = HTTPConnectClient(Target("2001:db8::1", 8443))
    assert v6.data_to_send() == b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n"


def test_http_established_keeps_the_bytes_after_the_header() -> None:
    client = HTTPConnectClient(Target("127.0.0.1", 22))
    client.data_to_send()
    client.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 Connection established\r\nX: y\r\n")
    assert client.next_event() is NEED_DATA
    client.receive_data(b"\r\nSSH-2.0-banner\r\n")
    assert client.next_event() == Established("HTTP/1.0 200 Connection established")
    assert client.trailing_data == b"SSH-2.0-banner\r\n"
    # Bare LF line ends are understood too.
    client = HTTPConnectClient(Target("127.0.0.1", 22))
    client.receive_data(b"HTTP/1.1 200\n\nX")
    assert client.next_event() == Established("HTTP/1.1 200")
    assert client.trailing_data == b"X"


HTTP_ERRORS = [
    (b"HTTP/1.1 407 Proxy Authentication Required\r\n", conduit.ProxyAuthenticationError, errno.EACCES),
    (b"HTTP/1.0 401 Unauthorized\r\n", conduit.ProxyAuthenticationError, errno.EACCES),
    (b"HTTP/1.1 403 Forbidden\r\n", conduit.ProxyRejected, errno.EACCES),
    (b"HTTP/1.1 502 Bad Gateway\r\n", conduit.ProxyTargetUnreachable, errno.EHOSTUNREACH),
    (b"HTTP/1.1 504 Gateway Timeout\r\n", conduit.ProxyTimeout, errno.ETIMEDOUT),
    (b"HTTP/1.1 500 Unable to connect\r\n", conduit.ProxyRejected, errno.ECONNREFUSED),
    (
        b"HTTP/1.1 502 Bad Gateway\r\nProxy-Status: edge; error=connection_refused\r\n",
        conduit.ProxyTargetRefused,
        errno.ECONNREFUSED,
    ),
    (
        b'HTTP/1.1 502 Bad Gateway\r\nProxy-Status: edge; error="destination_ip_unroutable"\r\n',
        conduit.ProxyTargetUnreachable,
        errno.ENETUNREACH,
    ),
    (
        b"HTTP/1.1 503 Service Unavailable\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\n",
        conduit.ProxyTargetRefused,
        errno.ECONNREFUSED,
    ),
    (
        b"HTTP/1.1 503 Service Unavailable\r\nX-Squid-Error: ERR_CONNECT_FAIL 113\r\n",
        conduit.ProxyTargetUnreachable,
        errno.EHOSTUNREACH,
    ),
]


@pytest.mark.parametrize(("head", "cls", "err"), HTTP_ERRORS)
def test_http_status_errors(head: bytes, cls: type[conduit.ProxyError], err: int) -> None:
    client = HTTPConnectClient(Target("127.0.0.1", 22), username="u", password="pw-123")
    client.data_to_send()
    client.receive_data(head + b"Content-Length: 5\r\n\r\nhello")
    with pytest.raises(cls) as info:
        client.next_event()
    assert type(info.value) is cls
    assert info.value.errno == err
    status_line = head.split(b"\r\n")[0].decode()
    assert info.value.reply.startswith(status_line)
    assert "pw-123" not in str(info.value)


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"],
)
def test_http_garbage(reply: bytes) -> None:
    client = HTTPConnectClient(Target("127.0.0.1", 22))
    client.receive_data(reply)
    with pytest.raises(conduit.ProxyProtocolError):
        client.next_event()


def test_http_header_limit() -> None:
    client = HTTPConnectClient(Target("127.0.0.1", 22))
    client.receive_data(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70000)
    with pytest.raises(conduit.ProxyProtocolError, match="longer than 65536 bytes"):
        client.next_event()


def test_http_client_arguments() -> None:
    with pytest.raises(conduit.AddressError, match="cannot contain ':'"):
        HTTPConnectClient(Target("127.0.0.1", 1), username="a:b")
    with pytest.raises(conduit.AddressError, match="bad extra header"):
        HTTPConnectClient(Target("127.0.0.1", 1), headers=(("X", "a\r\nInjected: 1"),))


def test_http_server() -> None:
    check: Callable[[str, str], bool] = lambda u, p: (u, p) == ("alice", "s3cret")  # noqa: E731
    server = HTTPConnectServer(check_credentials=check)
    server.receive_data(b"CONNECT [::1]:22 HTTP/1.1\r\nHost: [::1]:22\r\n\r\n")
    with pytest.raises(conduit.ProxyAuthenticationError, match="no credentials"):
        server.next_event()
    assert server.data_to_send().startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")

    server = HTTPConnectServer(check_credentials=check)
    server.receive_data(
        b"\r\nCONNECT [::1]:22 HTTP/1.1\r\nProxy-Authorization: basic YWxpY2U6czNjcmV0\r\n\r\nearly"
    )
    assert server.next_event() == Request("HTTP", Command.CONNECT, Target("::1", 22), "alice")
    server.reply(ReplyCode.SUCCEEDED)
    assert server.data_to_send() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert server.trailing_data == b"early"

    server = HTTPConnectServer()
    server.receive_data(b"GET http://x/ HTTP/1.1\r\n\r\n")
    with pytest.raises(conduit.ProxyRejected, match="only CONNECT"):
        server.next_event()
    assert server.data_to_send().startswith(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n")

    for bad in (b"CONNECT host HTTP/1.1", b"CONNECT host:99999 HTTP/1.1", b"CONNECT [zz]:1 HTTP/1.1"):
        server = HTTPConnectServer()
        server.receive_data(bad + b"\r\n\r\n")
        with pytest.raises(conduit.ProxyProtocolError):
            server.next_event()
        assert server.data_to_send().startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.parametrize("code", list(ReplyCode))
def test_every_reply_code_survives_each_protocol(code: ReplyCode) -> None:
    """A server's reply code read by the matching client: success, or the error class SOCKS5 maps it to."""
    socks5_cls = {e[0]: e[1] for e in REPLY_ERRORS}
    for client, server in [
        (Socks5Client(Target("127.0.0.1", 80)), Socks5Server()),
        (HTTPConnectClient(Target("127.0.0.1", 80)), HTTPConnectServer()),
        (Socks4Client(Target("127.0.0.1", 80)), Socks4Server()),
    ]:
        request = exchange_until_request(client, server)
        assert request.target == Target("127.0.0.1", 80)
        server.reply(code)
        client.receive_data(server.data_to_send())
        if code is ReplyCode.SUCCEEDED:
            assert isinstance(client.next_event(), Established)
            continue
        with pytest.raises(conduit.ProxyError) as info:
            client.next_event()
        if isinstance(client, Socks4Client):
            assert type(info.value) is conduit.ProxyRejected
        elif isinstance(client, HTTPConnectClient) and code in (
            ReplyCode.COMMAND_NOT_SUPPORTED,
            ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
            ReplyCode.GENERAL_FAILURE,
        ):
            assert isinstance(info.value, (conduit.ProxyRejected, conduit.ProxyTargetUnreachable))
        else:
            assert type(info.value) is socks5_cls[code]


def exchange_until_request(client: ClientEngine, server: ServerEngine) -> Request:
    for _ in range(10):
        if out := client.data_to_send():
            server.receive_data(out)
        event = server.next_event()
        if out := server.data_to_send():
            client.receive_data(out)
        if isinstance(event, Request):
            return event
        assert client.next_event() is NEED_DATA
    raise AssertionError("no request after 10 exchanges")


# ---------------------------------------------------------------------------
# UDP header
# ---------------------------------------------------------------------------


def test_udp_header() -> None:
    datagram = pack_udp_header(Target("127.0.0.1", 53)) + b"payload"
    assert datagram == b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x35payload"
    assert unpack_udp_datagram_untrusted(datagram) == (Target("127.0.0.1", 53), 0, b"payload")
    named = pack_udp_header(Target("localhost", 9)) + b""
    assert unpack_udp_datagram_untrusted(named) == (Target("localhost", 9), 0, b"")
    for bad in (
        b"",
        b"\x00\x00",
        b"\x01\x00\x00\x01" + bytes(6),
        b"\x00\x00\x00\x07",
        b"\x00\x00\x00\x01\x7f",
    ):
        with pytest.raises(conduit.ProxyProtocolError):
            unpack_udp_datagram_untrusted(bad)


# ---------------------------------------------------------------------------
# round trips and fuzzing
# ---------------------------------------------------------------------------

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hostnames = (
    st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda h: not h.replace(".", "").isdigit())
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(1, 65535)
secrets_ = st.text(st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=40)
users = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters=":\0"), min_size=1, max_size=40
)


def split_points(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


def pump(src: ClientEngine | ServerEngine, dst: ClientEngine | ServerEngine, cuts: list[int]) -> None:
    for chunk in split_points(src.data_to_send(), cuts):
        dst.receive_data(chunk)


@st.composite
def round_trip_cases(draw: st.DrawFn) -> tuple[str, Target, str | None, str | None, list[int], bytes, bytes]:
    protocol = draw(st.sampled_from(["socks5", "socks4", "socks4a", "http"]))
    if protocol == "socks4":
        host = draw(ipv4.filter(lambda h: not h.startswith("0.0.0.") or h == "0.0.0.0"))
    elif protocol == "socks4a":
        host = draw(st.one_of(ipv4, hostnames))
    else:
        host = draw(st.one_of(ipv4, ipv6, hostnames))
    target = Target(host, draw(ports))
    user = draw(st.none() | users)
    password = draw(secrets_) if user is not None and protocol in ("socks5", "http") else None
    if protocol == "socks5" and user is not None:
        user = user.encode()[:255].decode(errors="ignore") or "u"
        password = (password or "").encode()[:255].decode(errors="ignore")
    cuts = draw(st.lists(st.integers(0, 2000), max_size=6))
    return protocol, target, user, password, cuts, draw(st.binary(max_size=64)), draw(st.binary(max_size=64))


@FUZZ
@given(round_trip_cases())
def test_round_trip(case: tuple[str, Target, str | None, str | None, list[int], bytes, bytes]) -> None:
    """Client and server engines agree on the target and credentials; early bytes survive both ways."""
    protocol, target, user, password, cuts, early_up, early_down = case
    seen: list[tuple[str, str]] = []

    def check(u: str, p: str) -> bool:
        seen.append((u, p))
        return True

    client: ClientEngine
    server: ServerEngine
    if protocol == "socks5":
        client = Socks5Client(target, username=user, password=password)
        server = Socks5Server(check_credentials=check if user is not None else None)
    elif protocol == "http":
        client = HTTPConnectClient(target, username=user, password=password)
        server = HTTPConnectServer(check_credentials=check if user is not None else None)
    else:
        client = Socks4Client(target, userid=user or "", socks4a=protocol == "socks4a")
        server = Socks4Server()
    request = None
    for _ in range(10):
        pump(client, server, cuts)
        while (event := server.next_event()) is not NEED_DATA:
            assert isinstance(event, Request)
            request = event
            break
        if request is not None:
            break
        pump(server, client, cuts)
        assert client.next_event() is NEED_DATA
    assert request is not None
    assert request.command is Command.CONNECT
    assert request.target == Target(
        target.host.lower() if protocol == "http" else target.host, target.port
    ) or (request.target.ip == target.ip and request.target.port == target.port)
    if user is not None and protocol in ("socks5", "http"):
        assert seen == [(user, password or "")]
        assert request.username == user
    elif protocol.startswith("socks4"):
        assert request.username == (user or None)
    server.reply(ReplyCode.SUCCEEDED, Target("127.0.0.1", 4242))
    data = server.data_to_send() + early_down
    for chunk in split_points(data, cuts):
        client.receive_data(chunk)
    event = client.next_event()
    while event is NEED_DATA:  # every byte was fed: only possible if the reply was split oddly
        raise AssertionError("the client needs more data after the whole reply")
    assert isinstance(event, Established)
    assert client.trailing_data == early_down
    if protocol != "http":
        assert event.bound == Target("127.0.0.1", 4242)
    server.receive_data(early_up)
    assert server.trailing_data == early_up


def feed_and_drive(engine: ClientEngine | ServerEngine, chunks: list[bytes], eof: bool) -> None:
    """Feed chunks, calling next_event after each; only ProxyError may come out."""
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            engine.receive_data(chunk)  # b"" is the end of the stream: nothing may follow it
            event = engine.next_event()
            if isinstance(event, Request):
                engine.next_event()
                assert isinstance(engine, ServerEngine)
                engine.reply(ReplyCode.SUCCEEDED)
                return
            if isinstance(event, Established) or not chunk:
                return
    except conduit.ProxyError as exc:
        failure = exc
    else:
        return
    assert failure.errno  # every error carries an errno, and says something
    assert str(failure)


junk = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"\x05\x00",
                b"\x05\x02",
                b"\x01\x00",
                b"\x05\x00\x00\x03",
                b"\x00\x5a",
                b"HTTP/1.1 200 OK\r\n",
                b"\r\n\r\n",
                b"\n\n",
                b"\x04\x01\x00\x50\x00\x00\x00\x01",
                b"\x00",
                b"CONNECT a:1 HTTP/1.1\r\n",
                b"Proxy-Authorization: Basic Ym9iOnB3\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"\x05\x01\x02",
            ]
        ),
    ),
    max_size=12,
)


def make_engine(kind: str) -> ClientEngine | ServerEngine:
    check: Callable[[str, str], bool] = lambda u, p: u == "bob"  # noqa: E731
    return {
        "socks5": lambda: Socks5Client(Target("example.test", 80), username="u", password="p"),
        "socks5-noauth": lambda: Socks5Client(Target("10.0.0.1", 80)),
        "socks4": lambda: Socks4Client(Target("10.0.0.1", 80)),
        "socks4a": lambda: Socks4Client(Target("example.test", 80), socks4a=True),
        "http": lambda: HTTPConnectClient(Target("::1", 80), username="u", password="p"),
        "socks5-server": lambda: Socks5Server(check_credentials=check),
        "socks5-server-noauth": lambda: Socks5Server(),
        "socks4-server": lambda: Socks4Server(),
        "http-server": lambda: HTTPConnectServer(check_credentials=check),
    }[kind]()


ENGINE_KINDS = [
    "socks5",
    "socks5-noauth",
    "socks4",
    "socks4a",
    "http",
    "socks5-server",
    "socks5-server-noauth",
    "socks4-server",
    "http-server",
]


@pytest.mark.parametrize("kind", ENGINE_KINDS)
@FUZZ
@given(chunks=junk, eof=st.booleans())
def test_fuzz_parse_or_raise_our_error(kind: str, chunks: list[bytes], eof: bool) -> None:
    feed_and_drive(make_engine(kind), chunks, eof)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_udp_header(data: bytes) -> None:
    try:
        target, frag, payload = unpack_udp_datagram_untrusted(data)
    except conduit.ProxyProtocolError:
        return
    assert 0 <= frag <= 255
    assert data.endswith(payload)
    assert 0 <= target.port <= 65535


def test_struct_sanity() -> None:
    """The port fields are network order (a cheap guard against a struct format slip)."""
    assert struct.pack("!H", 0x1F90) == b"\x1f\x90"
