"""trio-conduit: open, accept and run network connections on Trio, over pluggable transports.

>>> import trio, trio_conduit as conduit
>>> async def main():
...     async with conduit.open_pool() as pool:
...         conn = await pool.connect("tcp://127.0.0.1:8000", timeout=5)
"""

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
from ._connection import PeerCredentials as PeerCredentials
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
from ._plugins import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._plugins import HookScope as HookScope
from ._plugins import hookimpl as hookimpl
from ._plugins import register_plugin as register_plugin
from ._plugins import unregister_plugin as unregister_plugin
from ._pool import Pool as Pool
from ._pool import PoolListener as PoolListener
from ._pool import open_pool as open_pool
from ._sockets import SocketOptions as SocketOptions
from ._sockets import SocketRole as SocketRole
from ._trace import DEBUG_ALL as DEBUG_ALL
from ._transport import Availability as Availability
from ._transport import Capabilities as Capabilities
from ._transport import Context as Context
from ._transport import Transport as Transport
from ._version import __version__ as __version__
