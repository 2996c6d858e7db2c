"""The transport API: what a plugin's ``conduit_transports`` hook returns.

A :class:`Transport` parses its URLs, says whether the running kernel has it,
and connects/listens. It gets a :class:`Context` from the pool: the parsed
address, resolved options, the ids to use, and the shared socket-making path
(:meth:`Context.make_socket`, :meth:`Context.connect_inet`) so kernel-socket
transports stay a screenful.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ._address import Address, Option, URLParts
from ._connection import Connection, Kind, Listener, SockAddr

if TYPE_CHECKING:
    from ._plugins import HookScope
    from ._sockets import SocketPreparer
    from ._trace import Tracer

__all__ = [
    "Availability",
    "Capabilities",
    "Context",
    "SocketOptions",
    "SocketRole",
    "Transport",
    "probe_socket",
]


class SocketRole(enum.Enum):
    """What a socket made by the shared path is for."""

    CONNECT = "connect"
    LISTEN = "listen"
    ACCEPTED = "accepted"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can do; ``conduit check`` and the docs list these."""

    half_close: bool = False
    message_boundaries: bool = False
    broadcast: bool = False
    unconnected: bool = False
    local_bind: bool = True
    device: bool = False
    ip_options: bool = False

    def names(self) -> list[str]:
        return [name for name in self.__slots__ if getattr(self, name)]


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether the running kernel has a transport, and if not, why (errno and a sentence)."""

    available: bool
    reason: str = ""
    errno: int | None = None


def probe_socket(family: int, type: int, proto: int = 0) -> Availability:
    """Availability of a kernel socket kind: try to create one and say why not.

    Errors are reported with the errno name and a sentence
    (``EPROTONOSUPPORT``: "the kernel does not support this protocol ...").
    """
    import errno as _errno
    import socket as _socket

    from ._errors import unavailable_reason

    try:
        _socket.socket(family, type, proto).close()
    except OSError as exc:
        err = exc.errno or 0
        name = _errno.errorcode.get(err, str(err))
        return Availability(False, f"{name}: {unavailable_reason(err)}", err)
    return Availability(True)


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """The options every kernel-socket transport honours (nsock's ``nsock_make_socket``).

    ``local``: bind here before connecting (``"host:port"``, ``"host"``, a
    sockaddr tuple, or a path for unix sockets). ``device``: ``SO_BINDTODEVICE``.
    ``ip_options``: raw IPv4 options (``IP_OPTIONS``). ``broadcast``:
    ``SO_BROADCAST`` (datagram sockets only; sending to a broadcast address
    without it is ``EACCES``). ``backlog``: for listeners.
    """

    local: object | None = None
    device: str | None = None
    ip_options: bytes | None = None
    broadcast: bool = False
    backlog: int | None = None


@dataclass(eq=False)
class Context:
    """What the pool hands a transport for one connect or listen."""

    transport: Transport
    address: Address
    options: Mapping[str, object]
    socket_options: SocketOptions
    scope: HookScope
    tracer: Tracer
    role: SocketRole
    #: The id of the connection being made (connect), or ``0`` for a listener.
    conn_id: int = 0
    #: The event id of the connect request.
    event_id: int = 0
    #: The pool's nursery: for tasks a listener needs (a datagram reader). They must
    #: end when the listener closes.
    nursery: trio.Nursery | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def int_option(self, name: str) -> int:
        """A resolved option that must be an integer (``TypeError`` otherwise)."""
        value = self.options[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self.address}: option {name!r} must be an int, not {value!r}")
        return value

    def new_conn_id(self) -> int:
        """An id for a connection a listener accepted."""
        return self.tracer.next_conn_id()

    async def make_socket(
        self,
        family: int,
        type: int,
        proto: int = 0,
        *,
        role: SocketRole | None = None,
        prepare: SocketPreparer | None = None,
    ) -> trio.socket.SocketType:
        """The one socket-making path; see :func:`trio_conduit._sockets.make_socket`.

        ``prepare(sock)``: the transport's own socket options, applied after the
        core's and before the ``conduit_socket_created`` hooks (and so before
        connect/bind). ``OSError`` from it becomes a typed error.
        """
        from ._sockets import make_socket

        return await make_socket(self, family, type, proto, role=role or self.role, prepare=prepare)

    async def connect_inet(
        self, type: int, proto: int = 0, *, prepare: SocketPreparer | None = None
    ) -> trio.socket.SocketType:
        """Resolve ``address.host`` and connect with happy eyeballs; a connected socket.

        ``prepare`` is applied to every socket made for an attempt (see :meth:`make_socket`).
        """
        from ._sockets import connect_inet

        return await connect_inet(self, type, proto, prepare=prepare)

    async def resolve_inet(self, type: int) -> list[tuple[int, SockAddr]]:
        """Resolve ``address`` to (family, sockaddr) pairs, in resolver order; typed errors."""
        from ._sockets import resolve_inet

        return await resolve_inet(self, type)

    async def listen_inet(
        self, type: int, proto: int = 0, *, prepare: SocketPreparer | None = None
    ) -> trio.socket.SocketType:
        """Resolve ``address.host`` (empty: all interfaces) and bind; ``listen()`` for streams
        and ``SOCK_SEQPACKET``. ``prepare`` is applied before the bind (see :meth:`make_socket`)."""
        from ._sockets import listen_inet

        return await listen_inet(self, type, proto, prepare=prepare)


class Transport(abc.ABC):
    """A URL scheme's worth of connecting and listening.

    Subclasses set the class attributes and implement :meth:`parse_address`,
    :meth:`connect` and :meth:`listen`. ``connect`` returns a
    :class:`~trio_conduit.Connection` whose ``id`` is ``ctx.conn_id``;
    ``listen`` returns a :class:`~trio_conduit.Listener` whose ``accept`` gives
    connections with ids from ``ctx.new_conn_id()`` and whose ``address``
    is the bound :class:`~trio_conduit.Address`.
    """

    #: URL schemes served (``("tcp",)``).
    schemes: tuple[str, ...]
    #: Short display name for trace lines ("TCP").
    name: str
    kind: Kind
    capabilities: Capabilities = Capabilities()
    #: Options accepted as keyword arguments or URL query parameters.
    options: tuple[Option, ...] = ()
    #: One line for ``conduit plugins`` and the docs.
    description: str = ""
    #: Set by the registry: the plugin that registered this transport.
    plugin_name: str = "?"
    #: A layer over another stream transport (TLS over ``"tcp"``): that transport's
    #: scheme. The pool can then put a proxy chain under the layer: it connects the
    #: chain with :meth:`inner_context` and finishes with :meth:`connect_over`.
    layered_over: str | None = None

    @abc.abstractmethod
    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        """Turn the URL's parts into an :class:`~trio_conduit.Address` or raise AddressError."""

    def connection_kind(self, options: Mapping[str, object]) -> Kind:
        """What a connection made with these (resolved) options carries.

        :attr:`kind`, except that a ``mode`` option set to ``"message"`` (the
        message mode of a stream transport: SCTP, UDT, vsock) makes channels
        (``Kind.DATAGRAM``). ``pool.connect_stream``/``connect_channel`` ask
        this before connecting; override it if the kind depends on other options.
        """
        if self.kind is Kind.STREAM and options.get("mode") == "message":
            return Kind.DATAGRAM
        return self.kind

    def availability(self) -> Availability:
        """Probe whether the running kernel has this transport. Cheap; may be cached."""
        return Availability(True)

    @abc.abstractmethod
    async def connect(self, ctx: Context) -> Connection:
        """Connect to ``ctx.address``. Raise :class:`~trio_conduit.ConnectError` subclasses."""

    @abc.abstractmethod
    async def listen(self, ctx: Context) -> Listener:
        """Bind and listen on ``ctx.address``; ``address`` of the result is where it is bound."""

    def loopback_url(self, tmpdir: str) -> str | None:
        """A URL to listen on for ``conduit check``'s round trip (``None``: no self test)."""
        return None

    def inner_context(self, ctx: Context) -> Context:
        """A layered transport (:attr:`layered_over`): the context for the transport beneath."""
        raise NotImplementedError(f"{self!r} is not a layer over another transport")

    async def connect_over(self, conn: Connection, ctx: Context) -> Connection:
        """A layered transport: finish connecting over ``conn`` (made by the pool, e.g. through
        proxies); close ``conn`` if that fails."""
        raise NotImplementedError(f"{self!r} is not a layer over another transport")

    def __repr__(self) -> str:
        return f"<Transport {'/'.join(self.schemes)} from {self.plugin_name}>"
