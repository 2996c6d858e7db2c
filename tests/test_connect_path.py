"""The lean connect path keeps every fact: ``conn.info`` of a connected stream is what the
kernel says about its socket, whether it is read at once, late, or only after the close;
an address literal is resolved without the resolver exactly as ``getaddrinfo`` would."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trio_conduit as conduit
from trio_conduit._sockets import _literal


def _kernel_facts(sock: trio.socket.SocketType) -> tuple[object, ...]:
    return (sock.family, sock.type, sock.proto, sock.getsockname(), sock.getpeername())


def _info_facts(info: conduit.CommunicationInfo) -> tuple[object, ...]:
    return (info.family, info.socktype, info.protocol, info.local, info.remote)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost"])
async def test_connected_info_is_the_kernels(host: str) -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen(f"tcp://{host}:0")
        conn = await pool.connect(f"tcp://{host}:{listener.address.port}")
        accepted = await listener.accept()
        kernel = _kernel_facts(conn.socket)  # type: ignore[attr-defined]
        assert _info_facts(conn.info) == kernel
        assert conn.info.transport == "tcp"
        assert isinstance(conn.info.family, socket.AddressFamily)
        assert isinstance(conn.info.socktype, socket.SocketKind)
        # the accepted side sees the same connection from the other end
        assert accepted.info.remote == kernel[3]
        assert accepted.info.local == kernel[4]
        assert conn.info is conn.info  # made once
        await conn.aclose()
        await accepted.aclose()


async def test_info_first_read_after_close_still_has_both_addresses() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        conn = await pool.connect(listener.address)
        kernel = _kernel_facts(conn.socket)  # type: ignore[attr-defined]
        accepted = await listener.accept()
        await accepted.aclose()  # the peer is gone: getpeername() would fail now
        await conn.aclose()
        assert _info_facts(conn.info) == kernel


async def test_info_read_in_a_connection_lost_hook() -> None:
    seen: list[conduit.CommunicationInfo] = []

    class Plugin:
        @conduit.hookimpl
        def conduit_connection_lost(self, conn: conduit.Connection, exc: BaseException | None) -> None:
            seen.append(conn.info)

    async with conduit.open_pool(plugins=[Plugin()]) as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        conn = await pool.connect(listener.address)
        local = conn.socket.getsockname()  # type: ignore[attr-defined]
        await conn.aclose()
    assert len(seen) == 1
    assert seen[0].local == local
    assert seen[0].remote == ("127.0.0.1", listener.address.port)


async def test_happy_eyeballs_winner_gives_its_own_address() -> None:
    """With two addresses to race (localhost: ::1 and 127.0.0.1, where both resolve), the
    connection's remote is the one its socket connected to."""
    infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    if len({i[0] for i in infos}) < 2:
        pytest.skip("localhost has only one address family here")
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")  # only IPv4 answers: ::1 is refused
        conn = await pool.connect(f"tcp://localhost:{listener.address.port}")
        assert _info_facts(conn.info) == _kernel_facts(conn.socket)  # type: ignore[attr-defined]
        assert conn.info.remote == ("127.0.0.1", listener.address.port)
        await conn.aclose()


def _getaddrinfo(host: str, port: int) -> tuple[object, ...] | None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return (infos[0][0], infos[0][4])


@given(st.ip_addresses(), st.integers(0, 65535))
def test_literal_addresses_as_getaddrinfo_gives_them(ip: ipaddress._BaseAddress, port: int) -> None:
    for text in {str(ip), ip.exploded}:
        assert _literal(text, port) == _getaddrinfo(text, port)


@given(st.text(alphabet="0123456789abcdef.:%x \x00é", max_size=45), st.integers(0, 65535))
def test_literal_is_none_or_what_getaddrinfo_gives(text: str, port: int) -> None:
    literal = _literal(text, port)
    if literal is not None:
        assert literal == _getaddrinfo(text, port)
