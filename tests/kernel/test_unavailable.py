"""The unavailable paths: what a kernel without SCTP, vsock loopback or vsock datagrams says.

These run where the capability is absent — our development and CI machines —
and are skipped where it is present. Nothing here sends a packet: the vsock
guard refuses CID 1 before any socket is made (a per-pool hook fails the test
if one were), and SCTP fails at ``socket()``.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess

import pytest
import trio
from trio_conduit_plugins.sctp import SCTPTransport
from trio_conduit_plugins.vsock import VsockDatagramTransport, VsockTransport

import trio_conduit as conduit

from ._lane import conduit_command, needs_vsock_loopback, sctp_absent, vsock_loopback_absent


class NoVsockConnects:
    """A pool plugin: a vsock socket made to connect means the guard did not hold."""

    @conduit.hookimpl
    async def conduit_socket_created(self, sock: trio.socket.SocketType, role: conduit.SocketRole) -> None:
        if sock.family == socket.AF_VSOCK and role is conduit.SocketRole.CONNECT:
            raise AssertionError("a vsock socket was made to connect without a loopback transport")


@sctp_absent
def test_sctp_availability_says_why() -> None:
    availability = SCTPTransport().availability()
    assert not availability.available
    assert availability.errno == errno.EPROTONOSUPPORT
    assert availability.reason.startswith("EPROTONOSUPPORT: ")
    assert "SCTP" in availability.reason


@sctp_absent
@pytest.mark.parametrize("mode", ["stream", "message"])
async def test_sctp_connect_and_listen_raise_transport_unavailable(mode: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.TransportUnavailable) as connecting:
            await pool.connect(f"sctp://127.0.0.1:9?mode={mode}")
        with pytest.raises(conduit.TransportUnavailable) as listening:
            await pool.listen(f"sctp://127.0.0.1:0?mode={mode}")
    expected = errno.EPROTONOSUPPORT if mode == "stream" else (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT)
    for exc in (connecting.value, listening.value):
        assert exc.errno in (expected if isinstance(expected, tuple) else (expected,))
        assert "the kernel does not support" in str(exc)
        assert "sctp://127.0.0.1:" in str(exc)


@vsock_loopback_absent
def test_vsock_availability_names_the_missing_loopback() -> None:
    availability = VsockTransport().availability()
    assert not availability.available
    assert availability.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    if availability.errno == errno.EADDRNOTAVAIL:
        assert availability.reason.startswith("EADDRNOTAVAIL: ")
        assert "loopback" in availability.reason


@vsock_loopback_absent
@pytest.mark.parametrize(
    "url", ["vsock://local:5000", "vsock://1:5000?mode=message", "vsock+dgram://local:5000"]
)
async def test_vsock_connect_to_cid_1_without_loopback_is_refused_before_any_socket(url: str) -> None:
    async with conduit.open_pool(plugins=[NoVsockConnects()]) as pool:
        with pytest.raises(conduit.TransportUnavailable) as info:
            await pool.connect(url)
    if info.value.errno == errno.EADDRNOTAVAIL:
        assert "no vsock loopback transport" in str(info.value)
    assert url.split("?")[0] in str(info.value)


@vsock_loopback_absent
async def test_vsock_listen_on_cid_1_without_loopback_says_so() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.TransportUnavailable) as info:
            await pool.listen("vsock://local:0")
    if info.value.errno == errno.EADDRNOTAVAIL:
        assert "no vsock loopback transport" in str(info.value)


@needs_vsock_loopback
async def test_vsock_datagram_connect_raises_enodev_even_with_loopback() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.TransportUnavailable) as info:
            await pool.connect("vsock+dgram://local:5000")
    assert info.value.errno == errno.ENODEV
    assert "no vsock datagram transport" in str(info.value)


def test_vsock_datagrams_are_unavailable_with_enodev() -> None:
    # No kernel we test on has a vsock datagram transport: socket() (6.18) or bind() (6.1) says ENODEV.
    availability = VsockDatagramTransport().availability()
    assert not availability.available
    assert availability.errno in (errno.ENODEV, errno.EAFNOSUPPORT)
    if availability.errno == errno.ENODEV:
        assert availability.reason == (
            "ENODEV: the kernel has no vsock datagram transport "
            "(only VMCI provides one; virtio and loopback do not)"
        )


async def test_vsock_datagram_listen_raises_enodev() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.TransportUnavailable) as info:
            await pool.listen("vsock+dgram://any:0")
    if info.value.errno == errno.ENODEV:
        assert "no vsock datagram transport" in str(info.value)


@sctp_absent
@vsock_loopback_absent
def test_conduit_check_lists_them_unavailable_without_a_traceback() -> None:
    result = subprocess.run(
        conduit_command("check", "--json"), capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in result.stderr
    transports = {t["schemes"][0]: t for t in json.loads(result.stdout)["transports"]}
    expected = {"sctp": "EPROTONOSUPPORT", "vsock": "EADDRNOTAVAIL", "vsock+dgram": "ENODEV"}
    for scheme, name in expected.items():
        entry = transports[scheme]
        assert entry["available"] is False
        assert entry["errno"] == getattr(errno, name)
        assert entry["reason"].startswith(f"{name}: "), entry["reason"]
        assert entry["round_trip"] is None
