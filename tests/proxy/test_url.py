"""Proxy URLs: the grammar, defaults, what each scheme refuses, and the password kept out of sight."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_conduit as conduit
from trio_conduit._plugins import global_scope
from trio_conduit.proxy import ProxyURL, Socks4Client, Target, parse_proxy

SECRET = "Pa55-w0rd"


def parse(text: str) -> ProxyURL:
    return parse_proxy(text, global_scope())[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socks5://127.0.0.1:1080", ProxyURL("socks5", "127.0.0.1", 1080)),
        ("socks5h://u:p@host.example:9050", ProxyURL("socks5h", "host.example", 9050, "u", "p")),
        ("http://[::1]:3128", ProxyURL("http", "::1", 3128)),
        ("http://proxy", ProxyURL("http", "proxy", 8080)),
        ("socks4://10.0.0.1", ProxyURL("socks4", "10.0.0.1", 1080)),
        ("socks4a://me@10.0.0.1:1081", ProxyURL("socks4a", "10.0.0.1", 1081, "me")),
        ("SOCKS5://h:1", ProxyURL("socks5", "h", 1)),
        ("socks5://us%40er:p%3Ass%2F@h:1/", ProxyURL("socks5", "h", 1, "us@er", "p:ss/")),
        ("socks5://u:@h:1", ProxyURL("socks5", "h", 1, "u", "")),
        ("socks5://u:pa@ss@h:1", ProxyURL("socks5", "h", 1, "u", "pa@ss")),
    ],
)
def test_parse(text: str, expected: ProxyURL) -> None:
    url = parse(text)
    assert url == expected
    assert url.password == expected.password


def test_types_come_from_the_hook() -> None:
    from trio_conduit.proxy import proxy_types

    table = proxy_types(global_scope())
    assert set(table) >= {"http", "socks4", "socks4a", "socks5", "socks5h"}
    assert table["socks5"] is table["socks5h"]
    assert table["socks5"].plugin_name == "proxy"  # the default plugin's entry point


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://h:1", "unknown proxy scheme 'ftp'"),
        ("socks5//h:1", "no scheme"),
        ("socks5://h:99999", "out of range"),
        ("socks5://:1", "missing host"),
        ("socks5://h:1/path", "unexpected path"),
        ("socks4://u:pw@h:1", "SOCKS4 has no passwords"),
        ("http://a:b:c@h:1", None),  # a password may contain ':' (only the first one splits)
        ("http://a%3Ab:c@h:1", "cannot contain ':'"),
        ("socks5://" + "u" * 256 + ":p@h:1", "1 to 255 bytes"),
        ("socks5://u:" + "p" * 256 + "@h:1", "at most 255 bytes"),
        ("socks5://u:p%ff@h:1", "not valid UTF-8"),
        ("socks5://u\t:p@h:1", "control character"),
    ],
)
def test_bad_urls(text: str, message: str | None) -> None:
    if message is None:
        assert parse(text).password == "b:c"
        return
    with pytest.raises(conduit.AddressError, match=message):
        parse(text)


def test_password_is_never_shown() -> None:
    url = parse(f"socks5h://alice:{SECRET}@127.0.0.1:1080")
    for text in (str(url), repr(url), url.redacted, repr([url]), str(url.address), str(url.target)):
        assert SECRET not in text
    assert str(url) == "socks5h://alice:***@127.0.0.1:1080"
    assert repr(url) == "ProxyURL('socks5h://alice:***@127.0.0.1:1080')"
    # Errors about a URL with a password quote it redacted.
    for bad in (
        f"socks5://alice:{SECRET}@h:99999",
        f"socks4://alice:{SECRET}@h:1",
        f"nope://alice:{SECRET}@h:1",
    ):
        with pytest.raises(conduit.AddressError) as info:
            parse(bad)
        assert SECRET not in str(info.value)
        assert "***" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["socks5", "socks5h", "socks4", "socks4a", "http", "bogus"]),
    user=st.text(min_size=0, max_size=20),
    rest=st.text(min_size=0, max_size=30),
)
def test_fuzz_password_never_in_errors(scheme: str, user: str, rest: str) -> None:
    """Any junk after the '@': parse or AddressError, and the password never appears in either."""
    text = f"{scheme}://{user}:{SECRET}@{rest}"
    try:
        url = parse(text)
    except conduit.AddressError as exc:
        message = str(exc)
    else:
        message = str(url) + repr(url)
    assert SECRET not in message


def test_target_forms() -> None:
    assert Target("::1", 80).hostport == "[::1]:80"
    assert Target("fe80::1%eth0", 80).hostport == "[fe80::1%25eth0]:80"
    assert Target("example.test", 80).ip is None
    assert str(Target("10.0.0.1", 1)) == "10.0.0.1:1"


def test_socks4a_marker_address() -> None:
    """0.0.0.x is SOCKS4a's marker: SOCKS4 refuses it, SOCKS4a sends it as a name."""
    with pytest.raises(conduit.AddressError, match=r"0\.0\.0\.x"):
        Socks4Client(Target("0.0.0.7", 1))
    client = Socks4Client(Target("0.0.0.7", 1), socks4a=True)
    assert client.data_to_send() == b"\x04\x01\x00\x01\x00\x00\x00\x01\x000.0.0.7\x00"
