"""trio-conduit: open, accept and run network connections on Trio, over pluggable transports.

>>> import trio, trio_conduit as conduit
>>> async def main():
...     async with conduit.open_pool() as pool:
...         conn = await pool.connect("tcp://127.0.0.1:8000", timeout=5)

The names are imported from their private modules when first used
(:mod:`trio_conduit._lazy`, PEP 562): ``import trio_conduit`` alone imports
neither Trio nor any transport, so ``conduit --version`` starts at once and
``conduit connect tcp://...`` loads only what a TCP connection needs. The same
re-exports are written out under ``if typing.TYPE_CHECKING:`` for type
checkers (``tests/test_exports.py`` holds them equal to ``_EXPORTS``).
"""

import typing

from ._lazy import lazy_exports as _lazy_exports
from ._version import __version__ as __version__

if typing.TYPE_CHECKING:
    from ._access import AccessRules as AccessRules
    from ._access import AccessSource as AccessSource
    from ._address import Address as Address
    from ._address import Option as Option
    from ._address import URLParts as URLParts
    from ._benchmark import Benchmark as Benchmark
    from ._connection import CommunicationInfo as CommunicationInfo
    from ._connection import Connection as Connection
    from ._connection import DatagramConnection as DatagramConnection
    from ._connection import HalfCloseableStreamConnection as HalfCloseableStreamConnection
    from ._connection import Kind as Kind
    from ._connection import Listener as Listener
    from ._connection import StreamConnection as StreamConnection
    from ._errors import AddressError as AddressError
    from ._errors import AddressInUse as AddressInUse
    from ._errors import ConduitError as ConduitError
    from ._errors import ConnectError as ConnectError
    from ._errors import ConnectionRefused as ConnectionRefused
    from ._errors import ConnectTimeout as ConnectTimeout
    from ._errors import HostUnreachable as HostUnreachable
    from ._errors import MessageTooLarge as MessageTooLarge
    from ._errors import NameResolutionError as NameResolutionError
    from ._errors import NetworkUnreachable as NetworkUnreachable
    from ._errors import PermissionDenied as PermissionDenied
    from ._errors import PluginError as PluginError
    from ._errors import ProxyAuthenticationError as ProxyAuthenticationError
    from ._errors import ProxyError as ProxyError
    from ._errors import ProxyProtocolError as ProxyProtocolError
    from ._errors import ProxyRejected as ProxyRejected
    from ._errors import ProxyTargetRefused as ProxyTargetRefused
    from ._errors import ProxyTargetUnreachable as ProxyTargetUnreachable
    from ._errors import ProxyTimeout as ProxyTimeout
    from ._errors import TransportUnavailable as TransportUnavailable
    from ._peer import PeerCredentials as PeerCredentials
    from ._plugins import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
    from ._plugins import HookScope as HookScope
    from ._plugins import hookimpl as hookimpl
    from ._plugins import register_plugin as register_plugin
    from ._plugins import unregister_plugin as unregister_plugin
    from ._pool import Pool as Pool
    from ._pool import PoolListener as PoolListener
    from ._pool import open_pool as open_pool
    from ._scan._driver import ScanStats as ScanStats
    from ._scan._driver import scan as scan
    from ._scan._engine import PortState as PortState
    from ._scan._engine import ScanReason as ScanReason
    from ._scan._engine import ScanResult as ScanResult
    from ._scan._ports import PortSpecError as PortSpecError
    from ._scan._ports import parse_ports as parse_ports
    from ._sockets import SocketOptions as SocketOptions
    from ._sockets import SocketRole as SocketRole
    from ._trace import DEBUG_ALL as DEBUG_ALL
    from ._transport import Availability as Availability
    from ._transport import Capabilities as Capabilities
    from ._transport import Context as Context
    from ._transport import Transport as Transport

#: Relative module → the public names it gives this package.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "._access": (
        "AccessRules",
        "AccessSource",
    ),
    "._address": (
        "Address",
        "Option",
        "URLParts",
    ),
    "._benchmark": ("Benchmark",),
    "._connection": (
        "CommunicationInfo",
        "Connection",
        "DatagramConnection",
        "HalfCloseableStreamConnection",
        "Kind",
        "Listener",
        "StreamConnection",
    ),
    "._errors": (
        "AddressError",
        "AddressInUse",
        "ConduitError",
        "ConnectError",
        "ConnectionRefused",
        "ConnectTimeout",
        "HostUnreachable",
        "MessageTooLarge",
        "NameResolutionError",
        "NetworkUnreachable",
        "PermissionDenied",
        "PluginError",
        "ProxyAuthenticationError",
        "ProxyError",
        "ProxyProtocolError",
        "ProxyRejected",
        "ProxyTargetRefused",
        "ProxyTargetUnreachable",
        "ProxyTimeout",
        "TransportUnavailable",
    ),
    "._peer": ("PeerCredentials",),
    "._plugins": (
        "ENTRY_POINT_GROUP",
        "HookScope",
        "hookimpl",
        "register_plugin",
        "unregister_plugin",
    ),
    "._pool": (
        "Pool",
        "PoolListener",
        "open_pool",
    ),
    "._scan._driver": (
        "ScanStats",
        "scan",
    ),
    "._scan._engine": (
        "PortState",
        "ScanReason",
        "ScanResult",
    ),
    "._scan._ports": (
        "PortSpecError",
        "parse_ports",
    ),
    "._sockets": (
        "SocketOptions",
        "SocketRole",
    ),
    "._trace": ("DEBUG_ALL",),
    "._transport": (
        "Availability",
        "Capabilities",
        "Context",
        "Transport",
    ),
}
if not typing.TYPE_CHECKING:  # type checkers see the imports above, not a catch-all __getattr__
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
