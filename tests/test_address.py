"""The URL parser: ``split_url``, the shared grammars, options, and ``pool.parse``.

Every bad URL must raise :class:`~trio_conduit.AddressError` whose message
says what is wrong; any text at all either parses or raises that error (the
"parse, or raise our error" invariant, fuzzed with hypothesis); a parsed
address prints as a URL that parses back to the same address.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_conduit as conduit
from trio_conduit import Address, AddressError, Option, URLParts
from trio_conduit._address import (
    UNIX_PATH_MAX,
    parse_bool,
    parse_host_port,
    parse_unix_path,
    resolve_options,
    split_url,
)

from .conftest import free_tcp_port

T = TypeVar("T")


def host_port(url: str, *, listening: bool = False, default_port: int | None = None) -> Address:
    return parse_host_port(split_url(url), listening=listening, default_port=default_port)


def unix(url: str) -> Address:
    return parse_unix_path(split_url(url))


def parsed_or_none(fn: Callable[[], T]) -> T | None:
    """``fn()``, or ``None`` if it raised AddressError with a message. Anything else propagates."""
    try:
        return fn()
    except AddressError as exc:
        if not str(exc):
            raise AssertionError("an AddressError that says nothing") from exc
        return None


def error_of(fn: Callable[[], object]) -> str:
    """The message of the AddressError ``fn`` raises (fails if it returns or raises anything else)."""
    with pytest.raises(AddressError) as info:
        fn()
    return str(info.value)


# ---------------------------------------------------------------------------
# split_url: the grammar every scheme shares
# ---------------------------------------------------------------------------


def test_split_url_cuts_scheme_authority_path_and_query() -> None:
    parts = split_url("tcp://example.org:80/some/path?a=1&b=two")
    assert parts == URLParts(
        text="tcp://example.org:80/some/path?a=1&b=two",
        scheme="tcp",
        authority="example.org:80",
        path="/some/path",
        query=(("a", "1"), ("b", "two")),
    )


def test_split_url_without_path_or_query() -> None:
    parts = split_url("udp://h:1")
    assert (parts.scheme, parts.authority, parts.path, parts.query) == ("udp", "h:1", "", ())


@pytest.mark.parametrize("scheme", ["TCP", "Tcp", "unix+DGRAM"])
def test_scheme_is_lower_cased(scheme: str) -> None:
    assert split_url(f"{scheme}://h:1").scheme == scheme.lower()


@pytest.mark.parametrize("scheme", ["a", "tls+sctp", "x.y-z+w", "v2", "unix+dgram"])
def test_scheme_may_use_letters_digits_plus_dot_and_dash(scheme: str) -> None:
    assert split_url(f"{scheme}://h:1").scheme == scheme


@pytest.mark.parametrize("scheme", ["1tcp", "+tcp", "tc_p", "tc%70", "tc!p", ""])
def test_bad_scheme_name(scheme: str) -> None:
    message = error_of(lambda: split_url(f"{scheme}://h:1"))
    assert "not a valid scheme name" in message
    assert repr(scheme.lower()) in message


@pytest.mark.parametrize("text", ["example.org:80", "tcp:/h:1", "tcp:h:1", "h", "[::1]:80", "/tmp/s.sock"])
def test_no_scheme(text: str) -> None:
    message = error_of(lambda: split_url(text))
    assert "no scheme" in message
    assert repr(text) in message


def test_empty_address() -> None:
    assert "empty address" in error_of(lambda: split_url(""))


@pytest.mark.parametrize("value", [None, b"tcp://h:1", 80, ("127.0.0.1", 80)])
def test_not_a_string(value: object) -> None:
    message = error_of(lambda: split_url(value))
    assert "must be a str" in message
    assert type(value).__name__ in message


def test_too_long() -> None:
    url = "unix:///" + "a" * 5000
    message = error_of(lambda: split_url(url))
    assert "longer than 4096 characters" in message
    # The message quotes the URL, shortened.
    assert "..." in message
    assert len(message) < 400


@pytest.mark.parametrize(
    "text",
    [
        "tcp://h :1",
        " tcp://h:1",
        "tcp://h:1 ",
        "tcp://h:1\n",
        "tcp://h\t:1",
        "tcp://h:1\r\n",
        "tcp://h:\x001",
        "tcp://h:1\x1b[0m",
        "tcp://h:1\x7f",
        "unix:///tmp/a b",
        "tcp://h:1\u2003",  # an em space
        "tcp://h:1\x85",  # NEL
    ],
)
def test_whitespace_and_control_characters(text: str) -> None:
    message = error_of(lambda: split_url(text))
    assert "whitespace or a control character" in message


def test_whitespace_message_names_the_character() -> None:
    assert repr("\t") in error_of(lambda: split_url("tcp://h\t:1"))


@pytest.mark.parametrize("text", ["tcp://h:1#frag", "tcp://h:1#", "unix:///tmp/s#x", "tcp://h:1?a=1#x"])
def test_fragment_refused(text: str) -> None:
    assert "fragments" in error_of(lambda: split_url(text))


def test_query_keeps_order_and_blank_values() -> None:
    parts = split_url("tcp://h:1?z=1&a=&m=x")
    assert parts.query == (("z", "1"), ("a", ""), ("m", "x"))


def test_query_is_percent_and_plus_decoded() -> None:
    parts = split_url("tcp://h:1?local=%5B%3A%3A1%5D%3A0&congestion=a+b&name=%C3%A9")
    assert parts.query == (("local", "[::1]:0"), ("congestion", "a b"), ("name", "é"))


def test_semicolon_does_not_separate_query_fields() -> None:
    assert split_url("tcp://h:1?a=1;b=2").query == (("a", "1;b=2"),)


def test_empty_query_is_no_query() -> None:
    assert split_url("tcp://h:1?").query == ()


@pytest.mark.parametrize("text", ["tcp://h:1?a=1&a=2", "tcp://h:1?a=1&b=2&a=1", "tcp://h:1?a=&a="])
def test_repeated_query_key(text: str) -> None:
    assert "option 'a' given twice" in error_of(lambda: split_url(text))


def test_repeated_query_key_after_decoding() -> None:
    # %61 is "a": the same option, spelled twice.
    assert "option 'a' given twice" in error_of(lambda: split_url("tcp://h:1?a=1&%61=2"))


def test_empty_option_name() -> None:
    assert "empty option name" in error_of(lambda: split_url("tcp://h:1?=x"))


@pytest.mark.parametrize("text", ["tcp://h:1?a", "tcp://h:1?a=1&&b=2", "tcp://h:1?&"])
def test_malformed_query(text: str) -> None:
    assert "malformed query string" in error_of(lambda: split_url(text))


def test_query_not_utf8_after_decoding() -> None:
    message = error_of(lambda: split_url("tcp://h:1?a=%ff"))
    assert "malformed query string" in message
    assert "utf-8" in message


# ---------------------------------------------------------------------------
# host:port
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("tcp://example.org:80", "example.org", 80),
        ("tcp://Example.ORG:80", "example.org", 80),
        ("tcp://example.org.:443", "example.org.", 443),
        ("tcp://localhost:1", "localhost", 1),
        ("tcp://my_host-1:65535", "my_host-1", 65535),
        ("tcp://xn--bcher-kva.example:8080", "xn--bcher-kva.example", 8080),
        ("tcp://127.0.0.1:8000", "127.0.0.1", 8000),
        ("tcp://0.0.0.0:8000", "0.0.0.0", 8000),
        ("tcp://h:00080", "h", 80),
        ("tcp://h:1/", "h", 1),
    ],
)
def test_host_port(url: str, host: str, port: int) -> None:
    address = host_port(url)
    assert (address.scheme, address.host, address.port, address.path) == ("tcp", host, port, None)


def test_query_is_carried_to_the_address() -> None:
    address = host_port("udp://h:1?connected=0&max_size=9000")
    assert address.query == (("connected", "0"), ("max_size", "9000"))
    assert address.params == {"connected": "0", "max_size": "9000"}


def test_missing_port() -> None:
    message = error_of(lambda: host_port("tcp://example.org"))
    assert "missing port" in message
    assert "host:port" in message


def test_missing_port_after_colon() -> None:
    assert "missing port number after ':'" in error_of(lambda: host_port("tcp://example.org:"))


def test_missing_port_after_ipv6() -> None:
    assert "missing port" in error_of(lambda: host_port("tcp://[::1]"))


def test_default_port_fills_a_missing_port() -> None:
    assert host_port("tls://example.org", default_port=443).port == 443
    assert host_port("tls://[::1]", default_port=443).port == 443
    # An explicit port wins.
    assert host_port("tls://example.org:8443", default_port=443).port == 8443


@pytest.mark.parametrize("port", ["http", "8o", "-1", "+1", "1.5", "0x50", "٣", "²", "1;x"])
def test_port_not_a_number(port: str) -> None:
    message = error_of(lambda: host_port(f"tcp://h:{port}"))
    assert f"port {port!r} is not a number" in message


@pytest.mark.parametrize("port", ["65536", "99999", "100000", "123456789012345678901234567890"])
def test_port_out_of_range(port: str) -> None:
    message = error_of(lambda: host_port(f"tcp://h:{port}"))
    assert "out of range" in message
    assert "1-65535" in message


@pytest.mark.parametrize("listening", [False, True])
def test_port_65535_is_the_largest(listening: bool) -> None:
    assert host_port("tcp://h:65535", listening=listening).port == 65535
    assert "out of range" in error_of(lambda: host_port("tcp://h:65536", listening=listening))


def test_port_0_cannot_connect() -> None:
    message = error_of(lambda: host_port("tcp://127.0.0.1:0"))
    assert "port 0" in message
    assert "listen" in message


def test_port_0_can_listen() -> None:
    assert host_port("tcp://127.0.0.1:0", listening=True).port == 0
    assert host_port("tcp://[::1]:000", listening=True).port == 0


def test_missing_host_to_connect() -> None:
    assert "missing host" in error_of(lambda: host_port("tcp://:80"))


def test_empty_host_listens_on_all_interfaces() -> None:
    address = host_port("tcp://:80", listening=True)
    assert (address.host, address.port) == ("", 80)


@pytest.mark.parametrize(
    "host",
    [
        "-bad.example",
        "bad-.example",
        "a..b",
        "a" * 64 + ".example",
        "é.example",
        "ex%61mple",
        "exa!mple",
        ".",
    ],
)
def test_bad_host_name(host: str) -> None:
    assert "is not a valid host name or IP address" in error_of(lambda: host_port(f"tcp://{host}:1"))


def test_host_label_of_63_characters_is_fine() -> None:
    host = "a" * 63 + ".example"
    assert host_port(f"tcp://{host}:1").host == host


def test_host_name_too_long() -> None:
    host = ".".join(["a" * 50] * 5) + ".ex"  # 258 characters
    assert "longer than 253 characters" in error_of(lambda: host_port(f"tcp://{host}:1"))


@pytest.mark.parametrize("host", ["1.2.3", "256.1.1.1", "1.2.3.4.5", "01.2.3.4", "1234"])
def test_bad_ipv4(host: str) -> None:
    assert f"{host!r} is not a valid IPv4 address" in error_of(lambda: host_port(f"tcp://{host}:1"))


def test_unexpected_path_after_host_port() -> None:
    assert "unexpected path '/index.html'" in error_of(lambda: host_port("tcp://h:80/index.html"))


@pytest.mark.parametrize("url", ["tcp://user@h:80", "tcp://user:pw@h:80", "tcp://@h:80", "tcp://u@[::1]:80"])
def test_userinfo_refused(url: str) -> None:
    assert "user information" in error_of(lambda: host_port(url))


# -- IPv6 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "host"),
    [
        ("::1", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::", "::"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("::ffff:192.0.2.1", "::ffff:c000:201"),
    ],
)
def test_ipv6_in_brackets(literal: str, host: str) -> None:
    address = host_port(f"tcp://[{literal}]:443")
    assert (address.host, address.port) == (host, 443)
    assert address.hostport == f"[{host}]:443"


@pytest.mark.parametrize(
    "url", ["tcp://::1:80", "tcp://::1", "tcp://2001:db8::1:443", "tcp://fe80::1%eth0:80"]
)
def test_ipv6_without_brackets(url: str) -> None:
    message = error_of(lambda: host_port(url))
    assert "IPv6 addresses must be written in brackets" in message
    assert "[::1]:80" in message


@pytest.mark.parametrize("literal", ["::g", "1:2:3:4:5:6:7:8:9", "12345::1", "1.2.3.4", "", ":::", "h"])
def test_bad_ipv6(literal: str) -> None:
    message = error_of(lambda: host_port(f"tcp://[{literal}]:80"))
    assert f"{literal!r} is not a valid IPv6 address" in message


def test_ipv6_without_closing_bracket() -> None:
    assert "without a closing ']'" in error_of(lambda: host_port("tcp://[::1:80"))


@pytest.mark.parametrize("after", ["x", "80", "]:80", "%eth0:80"])
def test_junk_after_ipv6(after: str) -> None:
    assert f"unexpected {after!r} after the IPv6 address" in error_of(
        lambda: host_port(f"tcp://[::1]{after}")
    )


@pytest.mark.parametrize(
    ("literal", "host"),
    [
        ("fe80::1%25eth0", "fe80::1%eth0"),  # RFC 6874: '%' written %25
        ("fe80::1%eth0", "fe80::1%eth0"),  # as people type it
        ("FE80::1%25eth0", "fe80::1%eth0"),
        ("fe80::1%253", "fe80::1%3"),
        ("fe80::1%25en%2Fx", "fe80::1%en/x"),  # the zone id is percent-decoded
    ],
)
def test_ipv6_zone_id(literal: str, host: str) -> None:
    assert host_port(f"tcp://[{literal}]:80").host == host


@pytest.mark.parametrize("literal", ["fe80::1%25", "fe80::1%"])
def test_empty_ipv6_zone_id(literal: str) -> None:
    assert "empty IPv6 zone id" in error_of(lambda: host_port(f"tcp://[{literal}]:80"))


def test_ipv6_zone_id_prints_as_rfc_6874() -> None:
    address = host_port("tcp://[fe80::1%eth0]:80")
    assert str(address) == "tcp://[fe80::1%25eth0]:80"


# ---------------------------------------------------------------------------
# unix paths
# ---------------------------------------------------------------------------


def test_unix_absolute_path() -> None:
    address = unix("unix:///tmp/conduit.sock")
    assert (address.scheme, address.path, address.host, address.port) == (
        "unix",
        "/tmp/conduit.sock",
        None,
        None,
    )
    assert address.hostport == "/tmp/conduit.sock"


def test_unix_abstract_name() -> None:
    assert unix("unix://@conduit").path == "@conduit"
    assert unix("unix://@conduit/with/slashes").path == "@conduit/with/slashes"


def test_unix_query() -> None:
    address = unix("unix+dgram:///tmp/d.sock?bind=0")
    assert (address.scheme, address.path, address.query) == ("unix+dgram", "/tmp/d.sock", (("bind", "0"),))


@pytest.mark.parametrize(
    "url", ["unix://tmp/s.sock", "unix://s.sock", "unix://localhost/tmp/s.sock", "unix://./s"]
)
def test_unix_relative_path_refused(url: str) -> None:
    message = error_of(lambda: unix(url))
    assert "absolute path" in message
    assert "unix:///tmp/s.sock" in message
    assert "abstract name" in message


@pytest.mark.parametrize("url", ["unix://", "unix://@"])
def test_unix_missing_path(url: str) -> None:
    assert "missing socket path" in error_of(lambda: unix(url))


def test_unix_path_is_percent_decoded() -> None:
    assert unix("unix:///tmp/a%20b%3Fc%23d").path == "/tmp/a b?c#d"
    assert unix("unix:///tmp/%C3%A9t%C3%A9.sock").path == "/tmp/été.sock"
    assert unix("unix://@a%40b").path == "@a@b"


def test_unix_path_not_utf8_after_decoding() -> None:
    assert "not valid UTF-8" in error_of(lambda: unix("unix:///tmp/%ff.sock"))


def test_unix_path_with_nul() -> None:
    assert "NUL byte" in error_of(lambda: unix("unix:///tmp/a%00b"))


def test_unix_path_length_limit() -> None:
    assert UNIX_PATH_MAX == 107
    longest = "/" + "a" * 106
    assert unix(f"unix://{longest}").path == longest
    message = error_of(lambda: unix(f"unix://{longest}a"))
    assert "longer than 107 bytes" in message


def test_unix_path_length_counts_bytes_not_characters() -> None:
    # 53 two-byte characters + "/" = 107 bytes: fits. One more byte does not.
    fits = "/" + "é" * 53
    assert unix("unix://" + urllib.parse.quote(fits)).path == fits
    assert "longer than 107 bytes" in error_of(lambda: unix("unix://" + urllib.parse.quote(fits + "a")))


def test_unix_abstract_name_length_limit() -> None:
    # An abstract name fills all 108 bytes of sun_path (its leading NUL included, no terminator):
    # the kernel binds "\0" + 107 characters and refuses 108.
    assert unix("unix://@" + "a" * 107).path == "@" + "a" * 107
    assert "longer than 108 bytes" in error_of(lambda: unix("unix://@" + "a" * 108))


# ---------------------------------------------------------------------------
# Address
# ---------------------------------------------------------------------------


def test_address_str_and_hostport() -> None:
    assert str(Address("tcp", host="h", port=1)) == "tcp://h:1"
    assert str(Address("tcp", host="::1", port=1)) == "tcp://[::1]:1"
    assert str(Address("udp", host="h", port=1, query=(("connected", "0"),))) == "udp://h:1?connected=0"
    assert str(Address("unix", path="/tmp/a b")) == "unix:///tmp/a%20b"
    assert str(Address("unix", path="@name")) == "unix://@name"
    assert Address("tcp", host="", port=80).hostport == ":80"


def test_address_is_frozen_and_hashable() -> None:
    address = host_port("tcp://h:1")
    with pytest.raises(AttributeError):
        address.port = 2  # type: ignore[misc]
    assert {address: 1}[host_port("tcp://H:1")] == 1


ROUND_TRIP = [
    "tcp://example.org:80",
    "tcp://127.0.0.1:8000",
    "tcp://[::1]:443",
    "tcp://[2001:db8::1]:1?nodelay=0&keepalive=1",
    "tcp://[fe80::1%25eth0]:80",
    "tcp://[fe80::1%2525]:80",  # zone id "25"
    "tcp://[fe80::1%2541]:80",  # zone id "41", not the letter A
    "tcp://[fe80::1%252F]:80",
    "udp://h:9?max_size=1&connected=false",
    "tcp://h:1?congestion=a+b",
    "tcp://h:1?local=%5B%3A%3A1%5D%3A0",
    "unix:///tmp/conduit.sock",
    "unix:///tmp/a%20b%3Fc%23d%25e",
    "unix:///tmp/%C3%A9t%C3%A9",
    "unix://@abstract",
    "unix://@with/slash",
    "unix+dgram:///tmp/d.sock?bind=0",
]


@pytest.mark.parametrize("url", ROUND_TRIP)
async def test_round_trip_through_a_pool(url: str) -> None:
    async with conduit.open_pool() as pool:
        transport, address = pool.parse(url)
        again_transport, again = pool.parse(str(address))
        assert again == address
        assert again_transport is transport


@pytest.mark.parametrize("url", ["tcp://:0", "tcp://127.0.0.1:0", "tcp://[::]:0", "udp://:5353"])
async def test_round_trip_of_listening_addresses(url: str) -> None:
    async with conduit.open_pool() as pool:
        _, address = pool.parse(url, listening=True)
        assert pool.parse(str(address), listening=True)[1] == address


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------

OPTIONS = {
    o.name: o
    for o in (
        Option.boolean("nodelay", True, "TCP_NODELAY"),
        Option.seconds("linger", None, "seconds"),
        Option.count("max_size", 65536, "bytes"),
        Option.text("congestion", None, "algorithm"),
        Option("ip_options", bytes.fromhex, None, "hex"),
    )
}


def test_options_defaults() -> None:
    assert resolve_options("tcp://h:1", OPTIONS, (), {}) == {
        "nodelay": True,
        "linger": None,
        "max_size": 65536,
        "congestion": None,
        "ip_options": None,
    }


def test_options_from_the_query_are_parsed() -> None:
    query = (
        ("nodelay", "off"),
        ("linger", "1.5"),
        ("max_size", "9000"),
        ("congestion", "bbr"),
        ("ip_options", "0102"),
    )
    assert resolve_options("tcp://h:1", OPTIONS, query, {}) == {
        "nodelay": False,
        "linger": 1.5,
        "max_size": 9000,
        "congestion": "bbr",
        "ip_options": b"\x01\x02",
    }


def test_keyword_options_win_over_the_query() -> None:
    out = resolve_options("tcp://h:1", OPTIONS, (("max_size", "9000"),), {"max_size": 10})
    assert out["max_size"] == 10


def test_unknown_query_option_names_the_known_ones() -> None:
    message = error_of(lambda: resolve_options("tcp://h:1", OPTIONS, (("nodelya", "1"),), {}))
    assert "tcp://h:1" in message
    assert "unknown option 'nodelya'" in message
    assert "known: congestion, ip_options, linger, max_size, nodelay" in message


def test_unknown_query_option_when_none_are_known() -> None:
    message = error_of(lambda: resolve_options("x://h:1", {}, (("a", "1"),), {}))
    assert "unknown option 'a' (known: none)" in message


def test_unknown_keyword_option_is_a_type_error() -> None:
    # A keyword is the programmer's mistake, not the URL's.
    with pytest.raises(TypeError, match=r"unknown option 'nodelya' \(known: congestion, "):
        resolve_options("tcp://h:1", OPTIONS, (), {"nodelya": True})


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("nodelay", "maybe", "expected a boolean"),
        ("nodelay", "", "expected a boolean"),
        ("linger", "-1", "finite number of seconds >= 0"),
        ("linger", "nan", "finite number of seconds >= 0"),
        ("linger", "inf", "finite number of seconds >= 0"),
        ("linger", "soon", "expected a number of seconds"),
        ("max_size", "-5", "expected a whole number >= 0"),
        ("max_size", "1.5", "expected a whole number"),
        ("max_size", "lots", "expected a whole number"),
        ("max_size", "99999999999999999999999", "expected a count from 0 to 2147483647"),
        ("ip_options", "zz", "non-hexadecimal"),
    ],
)
def test_bad_option_value(key: str, value: str, why: str) -> None:
    message = error_of(lambda: resolve_options("tcp://h:1", OPTIONS, ((key, value),), {}))
    assert f"bad value for option {key!r}" in message
    assert why in message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "2", "y", "enabled", "truee"])
def test_parse_bool_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a boolean"):
        parse_bool(text)


# ---------------------------------------------------------------------------
# through a pool
# ---------------------------------------------------------------------------


async def test_pool_parse_picks_the_schemes_transport() -> None:
    async with conduit.open_pool() as pool:
        for url, scheme in [
            ("tcp://h:1", "tcp"),
            ("udp://h:1", "udp"),
            ("unix:///tmp/s", "unix"),
            ("unix+dgram:///tmp/s", "unix+dgram"),
            ("UDP://h:1", "udp"),
        ]:
            transport, address = pool.parse(url)
            assert scheme in transport.schemes
            assert transport is pool.transports[scheme]
            assert address.scheme == scheme


async def test_pool_parse_accepts_an_address() -> None:
    async with conduit.open_pool() as pool:
        address = Address("tcp", host="::1", port=80)
        assert pool.parse(address)[1] == address


@pytest.mark.parametrize("url", ["foo://h:1", "http://example.org:80", "tcpp://h:1", "unix+stream:///tmp/s"])
async def test_unknown_scheme_lists_the_registered_ones(url: str) -> None:
    async with conduit.open_pool() as pool:
        message = error_of(lambda: pool.parse(url))
        scheme = url.split("://")[0]
        assert f"unknown scheme {scheme!r}" in message
        registered = message.split("registered: ", 1)[1].rstrip(")").split(", ")
        assert registered == sorted(pool.transports)
        assert {"tcp", "udp", "unix", "unix+dgram"} <= set(registered)


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("tcp://127.0.0.1", "missing port"),
        ("tcp://127.0.0.1:0", "port 0"),
        ("tcp://127.0.0.1:65536", "out of range"),
        ("nope://127.0.0.1:1", "unknown scheme 'nope'"),
        ("tcp://::1:80", "brackets"),
        ("tcp://u@127.0.0.1:1", "user information"),
        ("unix://tmp/relative.sock", "absolute path"),
        ("tcp://127.0.0.1:1#x", "fragments"),
        ("not a url", "whitespace"),
        ("junk", "no scheme"),
    ],
)
async def test_connect_raises_address_error(url: str, what: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError, match=what):
            await pool.connect(url, timeout=1)
        if "port 0" not in what:  # port 0 is fine to listen on
            with pytest.raises(AddressError, match=what):
                await pool.listen(url)
        assert pool.connections == []


async def test_port_0_listens_but_does_not_connect() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        async with listener:
            assert listener.address.port not in (None, 0)
        with pytest.raises(AddressError, match="port 0 can only be used to listen"):
            await pool.connect("tcp://127.0.0.1:0")


async def test_unknown_query_option_on_connect_names_the_known_ones() -> None:
    port = free_tcp_port()
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError) as info:
            await pool.connect(f"tcp://127.0.0.1:{port}?nodelya=1")
    message = str(info.value)
    assert "unknown option 'nodelya'" in message
    # The transport's own options and the core's ones.
    for name in (
        "nodelay",
        "keepalive",
        "congestion",
        "local",
        "device",
        "broadcast",
        "backlog",
        "ip_options",
    ):
        assert name in message


async def test_unknown_query_option_on_listen() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError, match="unknown option 'bogus'"):
            await pool.listen("tcp://127.0.0.1:0?bogus=1")


@pytest.mark.parametrize(
    ("query", "what"),
    [
        ("nodelay=maybe", "bad value for option 'nodelay'"),
        ("backlog=-1", "bad value for option 'backlog'"),
        ("ip_options=xyz", "bad value for option 'ip_options'"),
    ],
)
async def test_bad_option_value_on_connect(query: str, what: str) -> None:
    port = free_tcp_port()
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError, match=what):
            await pool.connect(f"tcp://127.0.0.1:{port}?{query}")
        assert pool.connections == []


async def test_unknown_keyword_option_on_connect() -> None:
    port = free_tcp_port()
    async with conduit.open_pool() as pool:
        with pytest.raises(TypeError, match="unknown option 'nodelya'"):
            await pool.connect(f"tcp://127.0.0.1:{port}", nodelya=True)


async def test_options_from_the_url_reach_the_transport() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        async with listener:
            port = listener.address.port
            conn = await pool.connect(f"tcp://127.0.0.1:{port}?keepalive=yes&nodelay=no")
            async with conn:
                assert conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
                assert conn.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            # A keyword wins over the URL.
            conn = await pool.connect(f"tcp://127.0.0.1:{port}?keepalive=yes", keepalive=False)
            async with conn:
                assert conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


# ---------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that steer random text into the parser's interesting corners.
_PIECES = st.sampled_from(
    [
        "tcp://",
        "udp://",
        "unix://",
        "unix:///",
        "unix+dgram://",
        "nope://",
        "://",
        "[",
        "]",
        "::",
        ":",
        "@",
        "%",
        "%25",
        "%2F",
        "%00",
        "%ff",
        "?",
        "&",
        "=",
        "#",
        "/",
        ".",
        "-",
        "_",
        "a",
        "Z",
        "0",
        "1",
        "65535",
        "65536",
        "127.0.0.1",
        "::1",
        "fe80::1",
        "é",
        " ",
        "\x00",
        "\t",
        "+",
    ]
)
URLISH = st.one_of(
    st.text(max_size=60),
    st.lists(_PIECES, max_size=16).map("".join),
    st.tuples(
        st.sampled_from(["tcp://", "udp://", "unix://", "unix+dgram://", "tcp://["]),
        st.lists(st.one_of(_PIECES, st.text(max_size=3)), max_size=12).map("".join),
    ).map("".join),
)


@FUZZ
@given(URLISH)
def test_split_url_parses_or_raises_address_error(text: str) -> None:
    parts = parsed_or_none(lambda: split_url(text))
    if parts is None:
        return
    assert parts.scheme == parts.scheme.lower()
    assert len({key for key, _ in parts.query}) == len(parts.query)


@FUZZ
@given(URLISH, st.booleans())
def test_grammars_parse_or_raise_address_error_and_round_trip(text: str, listening: bool) -> None:
    parts = parsed_or_none(lambda: split_url(text))
    if parts is None:
        return
    grammars: list[Callable[[URLParts], Address]] = [
        lambda p: parse_host_port(p, listening=listening),
        parse_unix_path,
    ]
    for grammar in grammars:
        address = parsed_or_none(lambda: grammar(parts))  # noqa: B023 (called at once)
        if address is None:
            continue
        assert grammar(split_url(str(address))) == address


@FUZZ
@given(st.one_of(URLISH, st.binary(max_size=10), st.integers(), st.none()), st.booleans())
async def test_pool_parse_parses_or_raises_address_error(text: object, listening: bool) -> None:
    async with conduit.open_pool() as pool:
        parsed = parsed_or_none(lambda: pool.parse(text, listening=listening))  # type: ignore[arg-type]
        if parsed is None:
            return
        transport, address = parsed
        assert address.scheme in transport.schemes
        assert pool.parse(str(address), listening=listening) == (transport, address)


_LABEL = st.from_regex(r"[a-z0-9_]([a-z0-9_\-]{0,61}[a-z0-9_])?", fullmatch=True)
HOST_NAMES = (
    st.lists(_LABEL, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not all(label.isdigit() for label in h.split(".")))
)
PORTS = st.integers(1, 65535)
QUERIES = st.dictionaries(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
    st.text(st.characters(codec="utf-8"), max_size=8),
    max_size=3,
).map(lambda d: tuple(d.items()))
ZONES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)


def _with_query(url: str, query: tuple[tuple[str, str], ...]) -> str:
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


@given(
    st.sampled_from(["tcp", "udp", "TCP", "x+y"]),
    st.one_of(HOST_NAMES, HOST_NAMES.map(str.upper)),
    PORTS,
    QUERIES,
)
def test_generated_host_names_parse_to_their_fields(
    scheme: str, host: str, port: int, query: tuple[tuple[str, str], ...]
) -> None:
    address = host_port(_with_query(f"{scheme}://{host}:{port}", query))
    assert address == Address(scheme.lower(), host=host.lower(), port=port, query=query)
    assert host_port(str(address)) == address


@given(st.ip_addresses(v=4), PORTS, st.booleans())
def test_generated_ipv4_parse_to_their_fields(ip: ipaddress.IPv4Address, port: int, listening: bool) -> None:
    address = host_port(f"udp://{ip}:{port}", listening=listening)
    assert (address.host, address.port) == (str(ip), port)
    assert host_port(str(address), listening=listening) == address


@given(st.ip_addresses(v=6), PORTS, st.booleans(), st.sampled_from([str, lambda ip: ip.exploded]))
def test_generated_ipv6_parse_to_their_fields(
    ip: ipaddress.IPv6Address, port: int, listening: bool, spell: Callable[[ipaddress.IPv6Address], str]
) -> None:
    address = host_port(f"tcp://[{spell(ip)}]:{port}", listening=listening)
    assert (address.host, address.port) == (str(ip), port)
    assert host_port(str(address), listening=listening) == address


@given(st.ip_addresses(v=6), ZONES, PORTS)
def test_generated_ipv6_zone_ids_parse_and_round_trip(
    ip: ipaddress.IPv6Address, zone: str, port: int
) -> None:
    address = host_port(f"tcp://[{ip}%25{urllib.parse.quote(zone, safe='')}]:{port}")
    assert (address.host, address.port) == (f"{ip}%{zone}", port)
    assert host_port(str(address)) == address


@given(st.integers(0, 65535))
def test_any_port_can_listen_and_only_port_0_cannot_connect(port: int) -> None:
    assert host_port(f"tcp://h:{port}", listening=True).port == port
    if port:
        assert host_port(f"tcp://h:{port}").port == port
    else:
        assert "port 0" in error_of(lambda: host_port("tcp://h:0"))


@pytest.mark.parametrize("listening", [False, True])
@given(st.integers(65536, 10**30))
def test_ports_beyond_65535_never_parse(listening: bool, port: int) -> None:
    assert "out of range" in error_of(lambda: host_port(f"tcp://h:{port}", listening=listening))


_PATH_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=60)


@given(_PATH_TEXT, QUERIES)
def test_generated_unix_paths_parse_to_their_fields(name: str, query: tuple[tuple[str, str], ...]) -> None:
    path = "/" + name
    url = _with_query("unix://" + urllib.parse.quote(path, safe="/"), query)
    if len(path.encode()) > UNIX_PATH_MAX:
        assert "longer than 107 bytes" in error_of(lambda: unix(url))
        return
    address = unix(url)
    assert address == Address("unix", path=path, query=query)
    assert unix(str(address)) == address


@given(_PATH_TEXT)
def test_generated_abstract_names_parse_to_their_fields(name: str) -> None:
    url = "unix://@" + urllib.parse.quote(name, safe="")
    if len(name.encode()) + 1 > UNIX_PATH_MAX + 1:  # abstract: all 108 bytes, no terminating NUL
        assert "longer than 108 bytes" in error_of(lambda: unix(url))
        return
    address = unix(url)
    assert address.path == "@" + name
    assert unix(str(address)) == address


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.text(max_size=12), max_size=5))
def test_option_values_parse_or_raise_address_error(values: dict[str, str]) -> None:
    query = tuple(values.items())
    out = parsed_or_none(lambda: resolve_options("tcp://h:1", OPTIONS, query, {}))
    if out is None:
        assert "bad value for option" in error_of(lambda: resolve_options("tcp://h:1", OPTIONS, query, {}))
        return
    for key in values:
        assert out[key] is not None
    if "linger" in values:
        linger = out["linger"]
        assert isinstance(linger, float)
        assert math.isfinite(linger)
        assert linger >= 0
