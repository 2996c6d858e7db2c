"""The plugin-author API: everything a transport plugin needs, in one module.

First-party and third-party plugins alike import from here (and from
``trio_conduit`` for the names users see too: addresses, errors, connections,
``hookimpl``), never from a private module. A kernel-socket transport needs
little more than these: parse the URL with :func:`parse_host_port` or
:func:`parse_unix_path`; make, connect and bind sockets through the
:class:`Context` (``ctx.make_socket``, ``ctx.connect_inet``,
``ctx.listen_inet``, ``ctx.connect_socket``, ``ctx.bind_socket``), which close
the socket and raise a typed error on failure; and make connections of them
with ``ctx.stream``, ``ctx.channel``, ``ctx.message_channel``,
``ctx.stream_listener`` and ``ctx.datagram_listener``. The classes those
return are here too, for subclassing (SCTP's channel adds stream ids).
"""

import typing

from ._address import Address as Address
from ._address import Option as Option
from ._address import URLParts as URLParts
from ._address import parse_bool as parse_bool
from ._address import parse_host_port as parse_host_port
from ._address import parse_unix_path as parse_unix_path
from ._connection import Buffer as Buffer
from ._connection import Listener as Listener
from ._connection import SockAddr as SockAddr
from ._errors import SocketErrors as SocketErrors
from ._errors import connect_error_from_oserror as connect_error_from_oserror
from ._errors import unavailable_reason as unavailable_reason
from ._lazy import lazy_exports as _lazy_exports
from ._plugins import HookScope as HookScope
from ._plugins import hookimpl as hookimpl
from ._socket_channel import DEFAULT_DATAGRAM_SIZE as DEFAULT_DATAGRAM_SIZE
from ._socket_channel import DatagramEndpoint as DatagramEndpoint
from ._socket_channel import DatagramListener as DatagramListener
from ._socket_channel import MessageSocketChannel as MessageSocketChannel
from ._socket_channel import PeerChannel as PeerChannel
from ._socket_channel import SocketChannel as SocketChannel
from ._socket_stream import DEFAULT_RECEIVE_SIZE as DEFAULT_RECEIVE_SIZE
from ._socket_stream import HalfCloseableSocketStream as HalfCloseableSocketStream
from ._socket_stream import SocketListener as SocketListener
from ._socket_stream import SocketStream as SocketStream
from ._sockets import ErrorExplainer as ErrorExplainer
from ._sockets import SocketHolder as SocketHolder
from ._sockets import SocketOptions as SocketOptions
from ._sockets import SocketPreparer as SocketPreparer
from ._sockets import SocketRole as SocketRole
from ._sockets import local_sockaddr as local_sockaddr
from ._sockets import peer_credentials as peer_credentials
from ._sockets import socket_info as socket_info
from ._sockets import socket_kind as socket_kind
from ._sockets import sockname as sockname
from ._transport import Availability as Availability
from ._transport import Capabilities as Capabilities
from ._transport import Context as Context
from ._transport import Transport as Transport
from ._transport import probe_socket as probe_socket
from ._util import ConflictDetector as ConflictDetector

if typing.TYPE_CHECKING:
    from trio_conduit._access import AccessGate as AccessGate

#: Loaded on first use (``trio_conduit._lazy``): a listener without access rules never needs them.
#: (Absolute: this is a module, not a package, so a relative name has nothing to hang on.)
_EXPORTS: dict[str, tuple[str, ...]] = {"trio_conduit._access": ("AccessGate",)}
if not typing.TYPE_CHECKING:
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
