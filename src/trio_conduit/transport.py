"""Building blocks for transport plugins (first-party and third-party alike).

A kernel-socket transport needs little more than these: parse the URL with
:func:`parse_host_port` or :func:`parse_unix_path`, make sockets through the
:class:`~trio_conduit.Context` (``ctx.make_socket``, ``ctx.connect_inet``,
``ctx.listen_inet``), and wrap them in the stream/channel/listener classes here.
"""

from ._address import parse_bool as parse_bool
from ._address import parse_host_port as parse_host_port
from ._address import parse_unix_path as parse_unix_path
from ._connection import SockAddr as SockAddr
from ._errors import connect_error_from_oserror as connect_error_from_oserror
from ._errors import unavailable_reason as unavailable_reason
from ._plugins import HookScope as HookScope
from ._sockets import DEFAULT_DATAGRAM_SIZE as DEFAULT_DATAGRAM_SIZE
from ._sockets import DEFAULT_RECEIVE_SIZE as DEFAULT_RECEIVE_SIZE
from ._sockets import DatagramListener as DatagramListener
from ._sockets import HalfCloseableSocketStream as HalfCloseableSocketStream
from ._sockets import MessageSocketChannel as MessageSocketChannel
from ._sockets import PeerChannel as PeerChannel
from ._sockets import SocketChannel as SocketChannel
from ._sockets import SocketListener as SocketListener
from ._sockets import SocketPreparer as SocketPreparer
from ._sockets import SocketStream as SocketStream
from ._sockets import local_sockaddr as local_sockaddr
from ._sockets import peer_credentials as peer_credentials
from ._sockets import socket_kind as socket_kind
from ._transport import probe_socket as probe_socket
from ._util import ConflictDetector as ConflictDetector
