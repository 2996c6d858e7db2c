"""What a connection is: the abstract classes users and plugins see, and its facts.

Every connection has an ``id`` (unique within its pool, nsock's IOD number)
and ``info``, a :class:`CommunicationInfo`. Streams are ``trio.abc.Stream``
(``HalfCloseableStream`` where the transport can half-close); datagram
connections are ``trio.abc.Channel[bytes]`` of whole messages. A transport's
listener is a :class:`Listener`: a ``trio.abc.Listener`` of connections that
knows the address it is bound to.
"""

from __future__ import annotations

import abc
import enum
import socket
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._record import Record
from ._record import set_field as _set

if TYPE_CHECKING:
    from ._address import Address
    from ._peer import PeerCredentials
    from .tls import TLSConnection, TLSInfo

__all__ = [
    "Buffer",
    "CommunicationInfo",
    "Connection",
    "DatagramConnection",
    "HalfCloseableStreamConnection",
    "Kind",
    "Listener",
    "SockAddr",
    "StreamConnection",
]

#: What trio's ``send_all``/``send`` accept.
Buffer = bytes | bytearray | memoryview

#: A socket address as Python's ``socket`` module gives it: ``(host, port)``,
#: ``(host, port, flowinfo, scope_id)``, a unix path (``str``), an abstract
#: name (``bytes`` starting with NUL) or ``(cid, port)`` for vsock.
SockAddr = str | bytes | tuple[Any, ...]


class Kind(enum.Enum):
    """What a transport carries."""

    STREAM = "stream"
    DATAGRAM = "datagram"


class CommunicationInfo(Record):
    """Who a connection talks to and how (nsock's ``nsock_iod_get_communication_info``).

    ``transport`` is the URL scheme; ``family``/``socktype``/``protocol`` the
    kernel socket's, when there is one. ``local``/``remote`` are socket
    addresses; for a datagram channel ``remote`` is its *current* peer (``None``
    when unconnected). ``tls`` (a :class:`~trio_conduit.tls.TLSInfo`) is filled by
    the TLS layer, ``peer_credentials`` by unix sockets. ``via`` lists the
    proxies a connection goes through, first hop first, as URLs with passwords
    shown as ``***``; ``remote`` is then the target, ``(host, port)`` as it was
    asked for.
    """

    __slots__ = (
        "transport",
        "family",
        "socktype",
        "protocol",
        "local",
        "remote",
        "peer_credentials",
        "tls",
        "via",
    )
    transport: str
    family: socket.AddressFamily | None
    socktype: socket.SocketKind | None
    protocol: int
    local: SockAddr | None
    remote: SockAddr | None
    peer_credentials: PeerCredentials | None
    tls: TLSInfo | None
    via: tuple[str, ...]

    def __init__(
        self,
        transport: str,
        family: socket.AddressFamily | None,
        socktype: socket.SocketKind | None,
        protocol: int,
        local: SockAddr | None,
        remote: SockAddr | None,
        peer_credentials: PeerCredentials | None = None,
        tls: TLSInfo | None = None,
        via: tuple[str, ...] = (),
    ) -> None:
        _set(self, "transport", transport)
        _set(self, "family", family)
        _set(self, "socktype", socktype)
        _set(self, "protocol", protocol)
        _set(self, "local", local)
        _set(self, "remote", remote)
        _set(self, "peer_credentials", peer_credentials)
        _set(self, "tls", tls)
        _set(self, "via", via)

    def _with_tls(self, tls: TLSInfo, transport: str | None = None) -> CommunicationInfo:
        """``dataclasses.replace(self, tls=tls)`` (and ``transport=``, when given), without
        its walk over the fields on each call: a TLS layer makes one per connection."""
        return CommunicationInfo(
            transport if transport is not None else self.transport,
            self.family,
            self.socktype,
            self.protocol,
            self.local,
            self.remote,
            self.peer_credentials,
            tls,
            self.via,
        )


class _Owner(Protocol):
    """What owns a connection (the pool): told when it closes, and the way to the TLS layer."""

    async def connection_closed(self, conn: Connection, exc: BaseException | None) -> None: ...

    async def start_tls(
        self, conn: StreamConnection, tls: object, server_side: bool, options: dict[str, object]
    ) -> TLSConnection: ...


class Connection(trio.abc.AsyncResource):
    """Base of every connection a pool hands out.

    Plugin authors subclass :class:`StreamConnection`,
    :class:`HalfCloseableStreamConnection` or :class:`DatagramConnection` and
    call :meth:`_closed` from ``aclose`` once their resources are released, so
    the owning pool can trace the close and run the ``conduit_connection_lost``
    hooks.
    """

    id: int
    address: Address | None
    _owner: _Owner | None
    _lost: bool
    #: The connection that took this one over (``start_tls``), if any.
    _upgraded: Connection | None = None

    def __init__(self, conn_id: int, address: Address | None = None) -> None:
        self.id = conn_id
        self.address = address
        self._owner = None
        self._lost = False

    @property
    @abc.abstractmethod
    def info(self) -> CommunicationInfo:
        """Facts about this connection (see :class:`CommunicationInfo`)."""

    async def _closed(self, exc: BaseException | None = None) -> None:
        """Tell the owner (once) that this connection is gone."""
        if self._lost:
            return
        self._lost = True
        owner = self._owner
        if owner is not None:
            await owner.connection_closed(self, exc)

    def __repr__(self) -> str:
        where = f" {self.address}" if self.address is not None else ""
        return f"<{type(self).__name__} #{self.id}{where}>"


class StreamConnection(Connection, trio.abc.Stream):
    """A byte stream connection (``trio.abc.Stream``)."""

    async def start_tls(
        self, tls: object = None, *, server_side: bool = False, **options: object
    ) -> TLSConnection:
        """Upgrade this connection to TLS (STARTTLS) and return the TLS connection
        (a :class:`~trio_conduit.tls.TLSConnection`).

        ``tls`` is ``None``/``True`` (defaults), a :class:`~trio_conduit.tls.TLSConfig`,
        an ``ssl.SSLContext`` or a dict of TLS options; keywords amend it
        (``server_hostname=``, ``cafile=``, ``certfile=``, ...). A client
        (``server_side=False``) sends SNI for, and verifies, ``server_hostname``
        (default: the host it connected to); a server runs the TLS hooks of the
        listener that accepted it. The result has this connection's id and
        takes its place in the pool; use it, not this one, from now on (closing
        it closes this one). On failure this connection is closed and a
        :class:`~trio_conduit.tls.TLSError` says why.
        """
        # The TLS layer sits above this one: the owner (the pool) reaches it.
        owner = self._owner
        if owner is None:
            raise RuntimeError(
                f"{self!r} belongs to no pool: upgrade it with trio_conduit.tls.start_tls(conn, ...)"
            )
        return await owner.start_tls(self, tls, server_side, options)


class HalfCloseableStreamConnection(StreamConnection, trio.abc.HalfCloseableStream):
    """A byte stream connection that can close its sending side alone (``send_eof``)."""


class DatagramConnection(Connection, trio.abc.Channel[bytes]):
    """A connection of whole messages (``trio.abc.Channel[bytes]``)."""


class Listener(trio.abc.Listener[Connection]):
    """What a transport's :meth:`~trio_conduit.Transport.listen` returns: a
    ``trio.abc.Listener`` whose ``accept()`` gives connections, and that knows
    its :attr:`address`.

    Subclasses implement ``accept``, ``aclose`` and the :attr:`address` property.
    """

    @property
    @abc.abstractmethod
    def address(self) -> Address:
        """The bound :class:`~trio_conduit.Address` (with the real port when 0 was asked for)."""
