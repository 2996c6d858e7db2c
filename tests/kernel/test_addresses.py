"""The sctp:// and vsock:// URL grammars and options: no kernel support needed, they run everywhere."""

from __future__ import annotations

import socket

import pytest

import trio_conduit as conduit


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("vsock://local:5000", "local", 5000),
        ("vsock://LOCAL:5000", "local", 5000),
        ("vsock://host:22", "host", 22),
        ("vsock://hypervisor:1", "hypervisor", 1),
        ("vsock://3:4294967294", "3", 4294967294),
        ("vsock+dgram://1:7", "1", 7),
    ],
)
async def test_vsock_urls(url: str, host: str, port: int) -> None:
    async with conduit.open_pool() as pool:
        transport, address = pool.parse(url)
    assert transport.schemes[0] == url.split("://")[0]
    assert (address.host, address.port) == (host, port)
    assert str(address) == url.replace("LOCAL", "local")


async def test_vsock_listening_urls() -> None:
    async with conduit.open_pool() as pool:
        _, address = pool.parse("vsock://any:0", listening=True)
        assert (address.host, address.port) == ("any", 0)
        _, address = pool.parse(f"vsock://{socket.VMADDR_CID_ANY}:5", listening=True)
        assert address.host == str(socket.VMADDR_CID_ANY)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("vsock://any:5000", "CID 'any' can only be used to listen"),
        ("vsock://local:0", "port 0 can only be used to listen"),
        ("vsock://local", "missing port"),
        ("vsock://:5000", "missing CID"),
        ("vsock://loopback:5000", "CID 'loopback' is not a number"),
        ("vsock://4294967296:1", "CID 4294967296 is out of range"),
        ("vsock://local:4294967295", "port 4294967295 is out of range"),
        ("vsock://local:5000/x", "unexpected path"),
    ],
)
async def test_vsock_bad_urls(url: str, message: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match=message):
            pool.parse(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sctp://127.0.0.1:9?mode=messages", "bad value for option 'mode'"),
        ("sctp://127.0.0.1:9?streams=0", "bad value for option 'streams'"),
        ("sctp://127.0.0.1:9?streams=65536", "bad value for option 'streams'"),
        ("vsock://local:9?mode=datagram", "bad value for option 'mode'"),
        ("sctp://127.0.0.1", "missing port"),
    ],
)
async def test_bad_options_are_address_errors_before_any_socket(url: str, message: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match=message):
            await pool.connect(url)


@pytest.mark.parametrize("url", ["sctp://127.0.0.1:9", "vsock://local:9"])
async def test_a_bad_mode_keyword_is_an_address_error(url: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match="mode must be 'stream' or 'message'"):
            await pool.connect(url, mode="messages")
