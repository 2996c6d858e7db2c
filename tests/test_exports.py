"""Every public name, pinned: a name that appears or disappears by accident fails here.

As Trio's ``_tests/test_exports.py`` does: for each public module, the set of
its public names (not starting with ``_``; modules and ``annotations`` left
out) is compared with the list below. Adding a public name on purpose means
adding it here too (and documenting it: the names of :mod:`trio_conduit` must
have an entry in ``docs/api.rst``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

PUBLIC: dict[str, frozenset[str]] = {
    "trio_conduit": frozenset(
        {
            # the pool
            "open_pool",
            "Pool",
            "PoolListener",
            # access control
            "AccessRules",
            "AccessSource",
            # scanning
            "scan",
            "ScanResult",
            "ScanStats",
            "ScanReason",
            "PortState",
            "PortSpecError",
            "parse_ports",
            # connections
            "Connection",
            "StreamConnection",
            "HalfCloseableStreamConnection",
            "DatagramConnection",
            "Listener",
            "CommunicationInfo",
            "PeerCredentials",
            "Kind",
            # addresses
            "Address",
            "URLParts",
            "Option",
            # errors
            "ConduitError",
            "AddressError",
            "PluginError",
            "ConnectError",
            "ConnectionRefused",
            "ConnectTimeout",
            "HostUnreachable",
            "NetworkUnreachable",
            "PermissionDenied",
            "AddressInUse",
            "NameResolutionError",
            "TransportUnavailable",
            "MessageTooLarge",
            "ProxyError",
            "ProxyProtocolError",
            "ProxyAuthenticationError",
            "ProxyRejected",
            "ProxyTargetRefused",
            "ProxyTargetUnreachable",
            "ProxyTimeout",
            # plugins
            "ENTRY_POINT_GROUP",
            "hookimpl",
            "register_plugin",
            "unregister_plugin",
            "HookScope",
            # transports
            "Transport",
            "Context",
            "Capabilities",
            "Availability",
            "SocketOptions",
            "SocketRole",
            # tracing
            "DEBUG_ALL",
            # benchmarks (conduit bench; plugins contribute theirs through a hook)
            "Benchmark",
        }
    ),
    "trio_conduit.transport": frozenset(
        {
            # what a transport is and is handed
            "Transport",
            "Context",
            "Capabilities",
            "Availability",
            "Option",
            "Address",
            "URLParts",
            "Listener",
            "hookimpl",
            "SocketOptions",
            "SocketRole",
            "AccessGate",
            # errors, the guard, the socket facts
            "SocketErrors",
            "ErrorExplainer",
            "SocketHolder",
            "Buffer",
            "socket_info",
            "sockname",
            "parse_bool",
            "parse_host_port",
            "parse_unix_path",
            "ConflictDetector",
            "SockAddr",
            "connect_error_from_oserror",
            "unavailable_reason",
            "HookScope",
            "DEFAULT_DATAGRAM_SIZE",
            "DEFAULT_RECEIVE_SIZE",
            "DatagramEndpoint",
            "DatagramListener",
            "HalfCloseableSocketStream",
            "MessageSocketChannel",
            "PeerChannel",
            "SocketChannel",
            "SocketListener",
            "SocketPreparer",
            "SocketStream",
            "local_sockaddr",
            "peer_credentials",
            "socket_kind",
            "probe_socket",
        }
    ),
    "trio_conduit.tls": frozenset(
        {
            "start_tls",
            "tls_client",
            "tls_listener",
            "dtls_client",
            "dtls_listener",
            "dtls_versions",
            "DTLSConnection",
            "DTLSListener",
            "DTLSVersions",
            "CookieJar",
            "TLS_OPTIONS",
            "TLS_OPTION_NAMES",
            "TLSConfigCache",
            "layered_options",
            "Certificate",
            "EphemeralCA",
            "fingerprint",
            "self_signed_certificate",
            "DEFAULT_HANDSHAKE_TIMEOUT",
            "DYNAMIC",
            "TLSConfig",
            "build_context",
            "clear_context_cache",
            "ClientHelloError",
            "TLSError",
            "TLSHandshakeTimeout",
            "TLSRejected",
            "TLSVerifyError",
            "Stash",
            "StashKey",
            "TLSHandshake",
            "DEFAULT_MAX_HELLO_SIZE",
            "ClientHello",
            "ClientHelloReader",
            "Extension",
            "ExtensionType",
            "is_grease",
            "parse_client_hello_untrusted",
            "TLSListener",
            "BURST_THRESHOLD",
            "IDLE_RESET",
            "SMALL_RECORD",
            "RecordHeader",
            "RecordSizer",
            "iter_records",
            "SessionCache",
            "SessionKey",
            "session_cache",
            "TLSConnection",
            "TLSInfo",
            "splice",
        }
    ),
    "trio_conduit.testing": frozenset(
        {
            "check_datagram_channel",
            "ChannelPair",
            "impairment_relay",
            "Impairment",
            "ImpairmentRelay",
            "TestPKI",
            "CertificateFiles",
        }
    ),
    "trio_conduit.proxy": frozenset(
        {
            "ProxyChain",
            "parse_proxy",
            "NEED_DATA",
            "ClientEngine",
            "Command",
            "Established",
            "Event",
            "NeedData",
            "ReplyCode",
            "Request",
            "ServerEngine",
            "HTTPConnectClient",
            "HTTPConnectServer",
            "ProxyServer",
            "relay",
            "Socks4Client",
            "Socks4Server",
            "Socks5Client",
            "Socks5Server",
            "pack_udp_header",
            "unpack_udp_datagram_untrusted",
            "HalfCloseableProxiedStream",
            "ProxiedStream",
            "Hop",
            "HTTPProxy",
            "HTTPSProxy",
            "ProxyType",
            "Socks4Proxy",
            "Socks5Proxy",
            "Tunnel",
            "proxy_types",
            "run_client_engine",
            "Socks5DatagramChannel",
            "ProxyURL",
            "Target",
        }
    ),
    # The hook catalogue: its conduit_* hooks, and the helpers it is written with.
    "trio_conduit.hookspecs": frozenset(
        {
            "conduit_addhooks",
            "conduit_transports",
            "conduit_benchmarks",
            "conduit_proxy_types",
            "conduit_socket_created",
            "conduit_connection_made",
            "conduit_connection_lost",
            "conduit_handler_error",
            "conduit_tls_start",
            "conduit_tls_client_hello",
            "conduit_tls_servername",
            "conduit_tls_certificate",
            "conduit_tls_alpn",
            "conduit_tls_verify_peer",
            "conduit_tls_session_get",
            "conduit_tls_session_put",
            "conduit_tls_session_remove",
            "conduit_tls_outbound_start",
            "conduit_tls_handshake_done",
            "conduit_tls_close",
            # not hooks: the spec marker, and what the annotations import
            "hookspec",
            "Sequence",
            "TYPE_CHECKING",
        }
    ),
}

#: Names of trio_conduit documented on another page than docs/api.rst: name -> that page.
DOCUMENTED_ELSEWHERE: dict[str, str] = {
    # The proxy errors are documented with the proxies, whose behaviour they describe.
    **dict.fromkeys(
        [
            "ProxyError",
            "ProxyProtocolError",
            "ProxyAuthenticationError",
            "ProxyRejected",
            "ProxyTargetRefused",
            "ProxyTargetUnreachable",
            "ProxyTimeout",
        ],
        "proxies.rst",
    ),
}


def public_names(module: types.ModuleType) -> set[str]:
    """The module's public names, the lazy ones (PEP 562 ``__dir__``, ``trio_conduit._lazy``) included."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and name != "annotations"
    }


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_public_names_are_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = public_names(module)
    assert sorted(names - PUBLIC[module_name]) == [], (
        "new public names: add them to PUBLIC (and document them)"
    )
    assert sorted(PUBLIC[module_name] - names) == [], "public names gone: users may rely on them"


def test_every_hook_is_pinned() -> None:
    hookspecs = importlib.import_module("trio_conduit.hookspecs")
    hooks = {name for name in vars(hookspecs) if name.startswith("conduit_")}
    assert hooks == {name for name in PUBLIC["trio_conduit.hookspecs"] if name.startswith("conduit_")}
    assert all(callable(getattr(hookspecs, name)) for name in hooks)


def _documented(page: str, module: str) -> set[str]:
    """The names a page documents for ``module`` (autodoc and plain object directives)."""
    current: str | None = None
    found: set[str] = set()
    directive = re.compile(
        r"^\.\. (?:auto)?(?:class|exception|function|data|attribute|method|decorator)::\s+([\w.]+)"
    )
    for line in (DOCS / page).read_text().splitlines():
        where = re.match(r"^\.\. (?:module|currentmodule|automodule)::\s+([\w.]+)", line)
        if where and not line.startswith(".. automodule::"):
            current = where.group(1)
            continue
        hit = directive.match(line)
        if hit and current == module:
            found.add(hit.group(1))
    return found


def test_every_name_of_the_package_is_in_the_api_reference() -> None:
    documented = _documented("api.rst", "trio_conduit")
    names = PUBLIC["trio_conduit"] - set(DOCUMENTED_ELSEWHERE)
    assert sorted(names - documented) == []
    for name, page in DOCUMENTED_ELSEWHERE.items():
        assert name in _documented(page, "trio_conduit"), f"{name} is not documented in docs/{page} either"


def test_the_api_reference_documents_no_name_the_package_lacks() -> None:
    assert sorted(_documented("api.rst", "trio_conduit") - PUBLIC["trio_conduit"] - {"__version__"}) == []


@pytest.mark.parametrize(
    "module_name",
    [
        "trio_conduit",
        "trio_conduit.transport",
        "trio_conduit.tls",
        "trio_conduit.proxy",
        "trio_conduit.testing",
    ],
)
def test_classes_and_functions_are_defined_in_private_modules(module_name: str) -> None:
    """What a public module offers is re-exported from a private module on purpose
    (so its ``__module__`` names where it lives), never defined in the public one by accident."""
    module = importlib.import_module(module_name)
    for name in public_names(module):
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        home = value.__module__
        assert home.startswith("trio_conduit."), (name, home)
        assert any(part.startswith("_") for part in home.split(".")), (name, home)


@pytest.mark.parametrize(
    "module_name", ["trio_conduit", "trio_conduit.proxy", "trio_conduit.tls", "trio_conduit.transport"]
)
def test_lazy_exports_match_what_type_checkers_see(module_name: str) -> None:
    """A lazy package (``trio_conduit._lazy``) writes its names twice: ``_EXPORTS`` for run time and
    ``from .x import Name as Name`` under ``if typing.TYPE_CHECKING:`` for type checkers. Both agree."""
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    seen: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "typing.TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                for alias in statement.names:
                    assert alias.asname == alias.name, ast.unparse(statement)
                    seen[alias.name] = "." * statement.level + (statement.module or "")
    lazy = {name: where for where, names in module._EXPORTS.items() for name in names}
    assert seen == lazy
    for name, where in lazy.items():
        assert getattr(module, name) is getattr(importlib.import_module(where, module_name), name)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name
