"""Issue 16: bad keywords fail at the call, bad values at parse time, secrets never shown."""

from __future__ import annotations

import logging
import string
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_conduit as conduit
from trio_conduit import DEBUG_ALL, AddressError

SECRET = "s3cr3t-Pa55w0rd"


async def _never(conn: Any) -> None:
    raise AssertionError("the handler must not run")


# ---------------------------------------------------------------------------
# spawn() refuses bad keywords at the call
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"no_such_option": 1}, TypeError),
        ({"nodelay": "maybe"}, ValueError),
        ({"keepalive": []}, TypeError),
        ({"timeout": "soon"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"local": ("127.0.0.1", "x")}, TypeError),
        ({"ip_options": b"\x01" * 41}, ValueError),
        ({"idle_timeout": "x"}, TypeError),
    ],
)
async def test_spawn_raises_at_the_call_and_the_pool_lives_on(kwargs: dict[str, Any], error: type) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(error):
            pool.spawn("tcp://127.0.0.1:9", _never, **kwargs)
        await trio.testing.wait_all_tasks_blocked()
        # the pool is still usable
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _echo)
            conn = await pool.connect(f"tcp://127.0.0.1:{addr.port}")
            await conn.send_all(b"x")
            assert await conn.receive_some() == b"x"
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def _echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


# ---------------------------------------------------------------------------
# keyword values checked as strictly as URL text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"nodelay": "maybe"}, ValueError, "expected a boolean"),
        ({"keepalive": []}, TypeError, "expected a bool"),
        ({"backlog": -1}, ValueError, "count from 0"),
        ({"local": ("127.0.0.1", "x")}, TypeError, "port must be an int"),
        ({"ip_options": b"\x01" * 44}, ValueError, "at most 40 bytes"),
        ({"keepalive_idle": 0.5}, TypeError, "expected an int"),
        ({"user_timeout": "soon"}, ValueError, "seconds"),
    ],
)
async def test_keyword_values_are_checked(kwargs: dict[str, Any], error: type, words: str) -> None:
    async with conduit.open_pool() as pool:
        method = pool.listen if "backlog" in kwargs else pool.connect
        with pytest.raises(error, match=words):
            await method("tcp://127.0.0.1:0" if method == pool.listen else "tcp://127.0.0.1:9", **kwargs)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("udp://127.0.0.1:9?max_size=99999999999999999999999", "count from 0 to"),
        ("tcp://127.0.0.1:9?ip_options=" + "01" * 41, "at most 40 bytes"),
        ("tcp://127.0.0.1:9?backlog=-1", "whole number"),
        ("tls://127.0.0.1:9?ciphers=NOSUCH", "ciphers"),
        ("tcp://127.0.0.1:9?keepalive_count=x", "whole number"),
    ],
)
async def test_bad_url_values_fail_at_parse_time(url: str, words: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError, match=words):
            pool.parse(url)


async def test_bad_ciphers_keyword_fail_before_connecting() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises((ValueError, AddressError), match="ciphers"):
            await pool.connect("tls://127.0.0.1:9", ciphers="NOSUCH")


@pytest.mark.parametrize(
    ("proxy", "words"),
    [
        ("socks5://127.0.0.1:1080?foo=1", "foo"),
        ("socks5://u:p%zz@127.0.0.1:1080", "%zz|escape|percent"),
        ("http://127.0.0.1:3128/?foo=1", "foo"),
    ],
)
async def test_bad_proxy_urls_are_refused(proxy: str, words: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError, match=words):
            await pool.connect("tcp://127.0.0.1:9", proxies=[proxy])


_TEXT = st.text(alphabet=string.printable + "é\u2028%", max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    scheme=st.sampled_from(["tcp", "udp", "tls", "unix"]),
    key=st.sampled_from(
        [
            "nodelay",
            "keepalive",
            "keepalive_idle",
            "keepalive_interval",
            "keepalive_count",
            "user_timeout",
            "backlog",
            "max_size",
            "ip_options",
            "local",
            "ciphers",
            "handshake_timeout",
            "hello_timeout",
            "max_handshakes",
            "min_version",
            "alpn",
            "record_size",
            "idle",
        ]
    )
    | _TEXT,
    value=_TEXT,
)
def test_option_parsing_fuzz(scheme: str, key: str, value: str) -> None:
    """Any query parses or raises AddressError: never anything else."""
    import urllib.parse

    host = "/tmp/x.sock" if scheme == "unix" else "127.0.0.1:1"
    url = f"{scheme}://{host}?{urllib.parse.quote(key)}={urllib.parse.quote(value)}"

    async def parse() -> None:
        async with conduit.open_pool() as pool:
            try:
                pool.parse(url)
            except AddressError:
                pass

    trio.run(parse)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["nodelay", "keepalive", "keepalive_idle", "user_timeout", "local", "ip_options"]),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True),
        _TEXT,
        st.binary(max_size=50),
        st.lists(st.integers(), max_size=3),
        st.tuples(_TEXT, st.integers(min_value=-5, max_value=70000)),
    ),
)
def test_keyword_option_fuzz(key: str, value: object) -> None:
    """Any keyword value resolves or raises TypeError/ValueError/AddressError."""

    async def resolve() -> None:
        async with conduit.open_pool() as pool:
            try:
                pool.spawn("tcp://127.0.0.1:9", _never, **{key: value})
            except (TypeError, ValueError, AddressError):
                return
            pool._nursery.cancel_scope.cancel()

    trio.run(resolve)


# ---------------------------------------------------------------------------
# secrets are never shown
# ---------------------------------------------------------------------------


async def test_address_display_redacts_the_password() -> None:
    async with conduit.open_pool() as pool:
        _, address = pool.parse(f"tls://127.0.0.1:443?keyfile=/k.pem&password={SECRET}")
        for shown in (str(address), repr(address), f"{address}"):
            assert SECRET not in shown
            assert "password=***" in shown
        assert SECRET in address.url()  # the whole URL, for parsing again
        assert pool.parse(address)[1] == address


async def test_errors_about_a_url_with_a_password_do_not_show_it() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError) as info:
            pool.parse(f"tls://127.0.0.1:443?password={SECRET}&bogus=1")
        assert SECRET not in str(info.value)
        with pytest.raises(AddressError) as info:
            pool.parse(f"nosuch://127.0.0.1:443?password={SECRET}")
        assert SECRET not in str(info.value)
        with pytest.raises(Exception) as caught:
            await pool.connect("tls://127.0.0.1:9", password=12345)
        assert "12345" not in str(caught.value)


async def test_trace_lines_at_debug_all_do_not_show_the_password(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from trio_conduit.tls import EphemeralCA

    cert = EphemeralCA().issue("127.0.0.1")
    certfile, keyfile = cert.write(tmp_path, "server")
    caplog.set_level(DEBUG_ALL)
    logging.getLogger("trio_conduit").setLevel(DEBUG_ALL)
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}&password={SECRET}"
        addr = await nursery.start(pool.serve, url, _echo)
        conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", verify=False)
        await conn.send_all(b"x")
        assert await conn.receive_some() == b"x"
        await conn.aclose()
        nursery.cancel_scope.cancel()
    assert caplog.text  # something was logged
    assert SECRET not in caplog.text
