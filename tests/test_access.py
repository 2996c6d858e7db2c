"""Access rules (``allow=``/``deny=``, ``conduit listen --allow``): the spec parser, its fuzzing,
the strict keyword checks, and enforcement at accept over tcp, tls, udp (ncat's CLI peers are in
tests/interop/test_cli_access.py)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_conduit as conduit
from trio_conduit import AccessRules, AddressError
from trio_conduit.testing import TestPKI
from trio_conduit.tls import TLSHandshake

from .conftest import open_fds

V4 = [f"192.168.0.{n}" for n in range(256)]


def matching(spec: str | list[str], candidates: list[str]) -> list[str]:
    rules = AccessRules.build(allow=spec)
    return [c for c in candidates if rules.admits(c)]


# ---------------------------------------------------------------------------
# the grammar (cases after ncat's addrset tests, with commas separating specs)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("192.168.0.0", ["192.168.0.0"]),
        ("192.168.0.1-5", [f"192.168.0.{n}" for n in range(1, 6)]),
        ("192.168.1.1-5", []),
        ("192.168-168.0.1", ["192.168.0.1"]),
        ("192.168.0.-3", [f"192.168.0.{n}" for n in range(4)]),
        ("192.168.0.252-", [f"192.168.0.{n}" for n in range(252, 256)]),
        ("192.168.0.-", V4),
        ("192.168.0.*", V4),
        ("192.168.0.0/30", [f"192.168.0.{n}" for n in range(4)]),
        ("192.168.0.5-6/31", [f"192.168.0.{n}" for n in range(4, 8)]),
        ("192.168.0.2,192.168.0.7", ["192.168.0.2", "192.168.0.7"]),
        ("5.5.5.5/0", V4),
    ],
)
def test_ipv4_specs_match_as_ncat(spec: str, expected: list[str]) -> None:
    assert matching(spec, V4) == expected


def test_ranges_in_several_parts_and_a_prefix() -> None:
    candidates = ["1.2.3.4", "1.2.3.5", "6.1.2.3", "1.2.3.7", "1.2.3.0", "1.2.3.15", "1.2.3.16"]
    assert matching("1-5.1-5.1-5.1-5/28", candidates) == [
        "1.2.3.4",
        "1.2.3.5",
        "1.2.3.7",
        "1.2.3.0",
        "1.2.3.15",
    ]
    assert matching("*.1-10.*.4-7", ["1.2.3.4", "4.5.6.7", "70.11.4.4", "70.10.4.4"]) == [
        "1.2.3.4",
        "4.5.6.7",
        "70.10.4.4",
    ]


def test_ipv6_specs_and_mapped_ipv4_peers() -> None:
    assert matching("1:2::3:4:5/95", ["1:2::3:4:5", "1:2::1:ffff:ffff", "1:2::2:0:0", "1:2::4:0:0"]) == [
        "1:2::3:4:5",
        "1:2::2:0:0",
    ]
    assert matching("::1", ["::1", "::2", "127.0.0.1"]) == ["::1"]
    # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: the IPv4 specs apply
    assert matching("10.0.0.0/8", ["::ffff:10.1.2.3", "::ffff:11.1.2.3"]) == ["::ffff:10.1.2.3"]
    # sockaddr tuples, with a zone id
    rules = AccessRules.build(allow="fe80::/10")
    assert rules.admits(("fe80::1%lo", 5, 0, 1))
    assert not rules.admits(("2001:db8::1", 5, 0, 0))


def test_deny_wins_over_allow_and_an_empty_allow_admits_nobody(tmp_path: Path) -> None:
    rules = AccessRules.build(allow="10.0.0.0/8", deny="10.1.2.3")
    assert rules.admits("10.9.9.9")
    assert not rules.admits("10.1.2.3")
    assert not rules.admits("11.0.0.1")
    only_deny = AccessRules.build(deny=["10.1.2.3"])
    assert only_deny.admits("11.0.0.1")
    assert not only_deny.admits("10.1.2.3")
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n\n")
    nobody = AccessRules.build(allow=empty)
    assert not nobody.admits("127.0.0.1")
    assert str(nobody) == "allow nobody; deny nobody"


def test_peers_without_an_ip_address_are_not_admitted() -> None:
    rules = AccessRules.build(deny="10.0.0.1")
    assert not rules.admits("/tmp/some.sock")
    assert not rules.admits(b"\0abstract")
    assert not rules.admits((3, 1024))  # a vsock (cid, port)


def test_files_with_comments_blank_lines_and_several_specs_a_line(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    path.write_text("# trusted\n\n127.0.0.1   # me\n10.0.0.1 10.0.0.2,10.0.0.3\n  ::1\n")
    rules = AccessRules.build(allow=[path, "192.168.0.1"])
    assert all(
        rules.admits(a) for a in ["127.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3", "::1", "192.168.0.1"]
    )
    assert not rules.admits("10.0.0.4")


def test_a_bad_spec_in_a_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "deny.txt"
    path.write_text("# comment\n10.0.0.1\n\n10.0.0.300\n")
    with pytest.raises(AddressError, match=rf"^{path}:4: '10.0.0.300': '300': .* at most 255$"):
        AccessRules.build(deny=path)
    with pytest.raises(AddressError, match=r"deny file .*missing.*No such file"):
        AccessRules.build(deny=tmp_path / "missing")
    path.write_bytes(b"10.0.0.1\n\xff\xfe\n")
    with pytest.raises(AddressError, match="not UTF-8"):
        AccessRules.build(deny=path)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        ".",
        "-",
        ",",
        "1.2.3.4,",
        ",1.2.3.4",
        "1.2.3.4.5",
        "1:2:3:4:5:6:7:8:9",
        "11::22::33",
        "256.256.256.256",
        "FFFFF::FFFFF",
        "10-5.2.3.4",
        "*10.10.10.10",
        "5-10-15.10.10.10",
        "-10-15.10.10.10",
        "10-15-.10.10.10",
        "+1.2.3.4",
        "1.2.3.4/",
        "1.2.3.4/33",
        "1.2.3.4/+24",
        "1.2.3.4/24abc",
        "1.2.3.4//24",
        "1.2.3.4/-0",
        "FF::FF/129",
        "fe80::1%eth0",
        "3",  # ncat reads 0.0.0.3; a comma-split "192.168.0.2,3" must not silently mean that
        "1.2.3",
        "host.example/24",
        "bad..name",
        "-bad.example",
        "ünï.example",
    ],
)
def test_bad_specs_are_address_errors(spec: str) -> None:
    with pytest.raises(AddressError):
        AccessRules.build(allow=spec)


@pytest.mark.parametrize(
    ("allow", "deny"),
    [(5, None), (None, 5), (b"10.0.0.1", None), ([b"10.0.0.1"], None), ([["10.0.0.1"]], None), (1.5, None)],
)
def test_wrong_types_are_type_errors(allow: Any, deny: Any) -> None:
    with pytest.raises(TypeError):
        AccessRules.build(allow, deny)


async def test_host_names_resolve_when_the_rules_are_put_to_use() -> None:
    rules = AccessRules.build(allow="localhost", deny="10.0.0.1")
    assert rules.names == ["localhost"]
    with pytest.raises(ValueError, match="not resolved"):
        rules.admits("127.0.0.1")
    ready = await rules.resolved()
    assert ready.names == []
    assert ready.admits("127.0.0.1")
    assert not ready.admits("127.0.0.2")
    with pytest.raises(AddressError, match=r"cannot resolve host name 'no-such-host\.invalid'"):
        await AccessRules.build(deny="no-such-host.invalid").resolved()


# ---------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------

_spec_chars = st.sampled_from([*"0123456789.*-/,:abcfx% #\n\t[]", "255", "256", "::", "/32", "/128"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(_spec_chars, max_size=30).map("".join)))
def test_fuzzed_specs_parse_or_raise_address_error(text: str) -> None:
    try:
        rules = AccessRules.build(allow=text, deny=text)
    except AddressError:
        return
    for peer in ("127.0.0.1", "::1", ("10.0.0.1", 80)):
        if not rules.names:
            assert isinstance(rules.admits(peer), bool)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_files_parse_or_raise_address_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "specs"
    path.write_bytes(data)
    try:
        AccessRules.build(allow=path)
    except AddressError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_cidr_agrees_with_ipaddress(network: int, peer: int, prefix: int) -> None:
    net = ipaddress.IPv4Network((network, prefix), strict=False)
    spec = f"{ipaddress.IPv4Address(network)}/{prefix}"
    address = ipaddress.IPv4Address(peer)
    assert AccessRules.build(allow=spec).admits(str(address)) == (address in net)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
)
def test_ipv4_ranges_agree_with_a_plain_reading(bounds: list[tuple[int, int]], peer: bytes) -> None:
    parts = [(min(a, b), max(a, b)) for a, b in bounds]
    spec = ".".join(f"{lo}-{hi}" for lo, hi in parts)
    expected = all(lo <= octet <= hi for (lo, hi), octet in zip(parts, peer, strict=True))
    assert AccessRules.build(allow=spec).admits(str(ipaddress.IPv4Address(peer))) == expected


_v4_net = st.builds(
    lambda n, p: ipaddress.IPv4Network((n, p), strict=False), st.integers(0, 2**32 - 1), st.integers(8, 32)
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.none(), st.lists(_v4_net, max_size=4)),
    st.lists(_v4_net, max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_allow_then_deny_as_sets(
    allow: list[ipaddress.IPv4Network] | None, deny: list[ipaddress.IPv4Network], peer: int
) -> None:
    """Admitted exactly when in the allow list (if there is one) and in no deny block."""
    rules = AccessRules.build(
        allow=None if allow is None else [str(n) for n in allow], deny=[str(n) for n in deny]
    )
    address = ipaddress.IPv4Address(peer)
    allowed = allow is None or any(address in n for n in allow)
    assert rules.admits(str(address)) == (allowed and not any(address in n for n in deny))


# ---------------------------------------------------------------------------
# the pool: strict keywords, enforcement at accept
# ---------------------------------------------------------------------------


async def test_serve_and_listen_check_their_keywords_before_binding() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(TypeError, match="allow="):
            await pool.listen("tcp://127.0.0.1:0", allow=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="deny="):
            await pool.serve("tcp://127.0.0.1:0", _noop, deny=[b"10.0.0.1"])  # type: ignore[list-item]
        with pytest.raises(AddressError, match=r"'10\.0\.0\.1/33'"):
            await pool.serve("tcp://127.0.0.1:0", _noop, allow="10.0.0.1/33")
        assert pool.listeners == []


async def _noop(conn: Any) -> None:
    pass


async def test_unix_listeners_refuse_access_rules(sock_dir: Path) -> None:
    path = sock_dir / "refused.sock"
    async with conduit.open_pool() as pool:
        with pytest.raises(AddressError, match="socket file's permissions"):
            await pool.listen(f"unix://{path}", allow="127.0.0.1")
        assert not path.exists()
        assert pool.listeners == []


def _connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def _tls_receive(sock: socket.socket, context: ssl.SSLContext) -> bytes:
    """A TLS client over ``sock`` through memory BIOs (``wrap_socket`` can leak its socket when the
    peer resets it at once): the handshake, then the first application bytes (b"" at EOF)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    handshaking = True
    while True:
        try:
            if handshaking:
                tls.do_handshake()
                handshaking = False
                sock.sendall(outgoing.read())
            return tls.read(100)
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                return b""
            incoming.write(data)


class _TLSCounter:
    """Counts the TLS handshakes that reached the ``start`` hook, by peer address."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.hellos = 0

    @conduit.hookimpl
    async def conduit_tls_start(self, handshake: TLSHandshake) -> None:
        remote = handshake.conn.info.remote
        assert isinstance(remote, tuple)
        self.started.append(str(remote[0]))

    @conduit.hookimpl
    async def conduit_tls_client_hello(self, handshake: TLSHandshake, hello: Any) -> None:
        self.hellos += 1


class _Made:
    def __init__(self) -> None:
        self.made: list[str] = []

    @conduit.hookimpl
    async def conduit_connection_made(self, conn: Any) -> None:
        self.made.append(str(conn.info.remote[0]))


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_denied_peers_never_reach_a_hook_a_handshake_or_a_handler(
    scheme: str, conduit_pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    counter, made = _TLSCounter(), _Made()
    handled: list[str] = []

    async def handler(conn: Any) -> None:
        handled.append(str(conn.info.remote[0]))
        await conn.send_all(b"welcome")

    url = conduit_pki.server_url() if scheme == "tls" else "tcp://127.0.0.1:0"
    caplog.set_level("INFO", logger="trio_conduit")
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: pool.serve(
                url,
                handler,
                plugins=[counter, made],
                allow="127.0.0.0/30",
                deny="127.0.0.3",
                task_status=task_status,
            )
        )
        (listener,) = pool.listeners

        def client(source: str) -> bytes:
            # a denied client may see the reset as soon as connect() (it comes right after the SYN-ACK)
            try:
                with _connect_from(source, bound.port) as sock:
                    if scheme == "tls":
                        return _tls_receive(sock, ssl.create_default_context(cafile=conduit_pki.cafile))
                    return sock.recv(100)
            except OSError as exc:
                return repr(exc).encode()

        assert await trio.to_thread.run_sync(client, "127.0.0.1") == b"welcome"
        for source in ("127.0.0.3", "127.0.0.9"):
            got = await trio.to_thread.run_sync(client, source)
            assert b"ConnectionResetError" in got or b"EOF" in got or got == b"", got
        assert listener.denied == 2
        assert handled == ["127.0.0.1"]
        assert made.made == ["127.0.0.1"]
        if scheme == "tls":
            assert counter.started == ["127.0.0.1"]
            assert counter.hellos == 1
        nursery.cancel_scope.cancel()
    denials = [r.getMessage() for r in caplog.records if "denied by the access rules" in r.getMessage()]
    assert len(denials) == 2, denials
    assert "127.0.0.3" in denials[0]
    assert "127.0.0.9" in denials[1]


async def test_a_denied_tcp_peer_gets_a_reset_before_anything_is_read() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0", deny="127.0.0.2")
        port = listener.address.port
        assert port is not None
        accepted: list[Any] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)

            def denied_client() -> str:
                try:  # the reset may come as soon as connect(), or at the send
                    with _connect_from("127.0.0.2", port) as sock:
                        sock.sendall(b"secret payload")
                        return repr(sock.recv(10))
                except (ConnectionResetError, BrokenPipeError):
                    return "reset"

            assert await trio.to_thread.run_sync(denied_client) == "reset"
            assert listener.denied == 1
            assert accepted == []
            with _connect_from("127.0.0.1", port):
                with trio.fail_after(30):
                    while not accepted:
                        await trio.sleep(0.01)
        assert accepted[0].info.remote[0] == "127.0.0.1"


async def test_udp_datagrams_from_denied_peers_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="trio_conduit")
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udp://127.0.0.1:0", allow="127.0.0.1")
        port = listener.address.port
        for source in ("127.0.0.2", "127.0.0.2", "127.0.0.1"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((source, 0))
                s.sendto(source.encode(), ("127.0.0.1", port))
        with trio.fail_after(30):
            chan = await listener.accept()
            assert isinstance(chan, conduit.DatagramConnection)
            assert await chan.receive() == b"127.0.0.1"
        assert listener.denied == 2
    lines = [r.getMessage() for r in caplog.records if "denied by the access rules" in r.getMessage()]
    assert len(lines) == 2  # two peers (two source ports), one line each


async def test_a_listener_that_hands_its_socket_on_unenforced_refuses_the_rules() -> None:
    """A transport whose listener gives its socket away and withdraws the gate (nobody
    enforces the rules any more) gets an AddressError, never silently open doors."""
    from trio_conduit._trace import Tracer
    from trio_conduit.transport import AccessGate

    gate = AccessGate(await AccessRules.build("127.0.0.1", None).resolved(), Tracer())
    gate.install(socket.AF_INET)
    gate.check_installed("udp://127.0.0.1:0")
    gate.withdraw(socket.AF_INET)
    with pytest.raises(AddressError, match="does not enforce allow/deny"):
        gate.check_installed("udp://127.0.0.1:0")


async def test_udt_requests_from_denied_peers_are_dropped_before_the_cookie(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="trio_conduit")
    handled: list[str] = []

    async def handler(conn: Any) -> None:
        handled.append(str(conn.info.remote[0]))
        await conn.send_all(b"udt welcome")

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        if "udt" not in pool.transports:
            pytest.skip("no udt:// transport registered")
        bound = await nursery.start(
            lambda task_status: pool.serve(
                "udt://127.0.0.1:0", handler, deny="127.0.0.2", task_status=task_status
            )
        )
        with pytest.raises(conduit.ConnectTimeout):  # no answer at all, not even the SYN cookie
            await pool.connect(bound, local="127.0.0.2", timeout=0.6)
        conn = await pool.connect_stream(bound, local="127.0.0.1", timeout=30)
        assert await conn.receive_some() == b"udt welcome"
        (listener,) = pool.listeners
        assert listener.denied >= 1  # each request datagram the denied peer sent
        assert handled == ["127.0.0.1"]
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "denied by the access rules" in r.getMessage()]
    assert len(lines) == 1, lines  # one line for the peer, however many times it asked
    assert "127.0.0.2" in lines[0]


async def test_a_flood_of_denied_clients_leaves_no_descriptor_and_no_task(no_fd_leak: dict[int, str]) -> None:
    """200 refused clients: none reaches the handler, each is counted, and
    the server holds no descriptor for any of them (its own count stays where it was)."""
    handled = 0

    async def handler(conn: Any) -> None:
        nonlocal handled
        handled += 1

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: pool.serve(
                "tcp://127.0.0.1:0", handler, allow="127.0.0.1", task_status=task_status
            )
        )
        port = bound.port
        assert port is not None
        before = len(open_fds())

        def flood() -> None:
            for _ in range(200):
                try:
                    with _connect_from("127.0.0.2", port) as sock:
                        sock.sendall(b"x" * 1000)
                        sock.recv(10)
                except OSError:
                    pass

        await trio.to_thread.run_sync(flood)
        (listener,) = pool.listeners
        with trio.fail_after(30):
            while listener.denied < 200:
                await trio.sleep(0.01)
        assert handled == 0
        assert pool.connections == []
        assert len(open_fds()) == before
        nursery.cancel_scope.cancel()
