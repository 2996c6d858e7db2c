"""The transport API: what a plugin's ``conduit_transports`` hook returns.

A :class:`Transport` parses its URLs, says whether the running kernel has it,
and connects/listens. It gets a :class:`Context` from the pool: the parsed
address, resolved options, the ids to use, and the shared socket-making path
(:meth:`Context.make_socket`, :meth:`Context.connect_inet`) so kernel-socket
transports stay a screenful.
"""

from __future__ import annotations

import abc
import errno
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio

from . import _sockets
from ._address import Address, Option, URLParts
from ._connection import Connection, Kind, Listener, SockAddr
from ._errors import unavailable_reason
from ._record import Record
from ._record import set_field as _set
from ._socket_channel import DEFAULT_DATAGRAM_SIZE, DatagramListener, MessageSocketChannel, SocketChannel
from ._socket_stream import HalfCloseableSocketStream, SocketListener
from ._sockets import ErrorExplainer, SocketOptions, SocketPreparer, SocketRole

if TYPE_CHECKING:
    from ._access import AccessGate
    from ._peer import PeerCredentials
    from ._plugins import HookScope
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


class Capabilities(Record):
    """What a transport can do; ``conduit check`` and the docs list these."""

    __slots__ = (
        "half_close",
        "message_boundaries",
        "broadcast",
        "unconnected",
        "local_bind",
        "device",
        "ip_options",
    )
    half_close: bool
    message_boundaries: bool
    broadcast: bool
    unconnected: bool
    local_bind: bool
    device: bool
    ip_options: bool

    def __init__(
        self,
        half_close: bool = False,
        message_boundaries: bool = False,
        broadcast: bool = False,
        unconnected: bool = False,
        local_bind: bool = True,
        device: bool = False,
        ip_options: bool = False,
    ) -> None:
        _set(self, "half_close", half_close)
        _set(self, "message_boundaries", message_boundaries)
        _set(self, "broadcast", broadcast)
        _set(self, "unconnected", unconnected)
        _set(self, "local_bind", local_bind)
        _set(self, "device", device)
        _set(self, "ip_options", ip_options)

    def names(self) -> list[str]:
        return [name for name in self.__slots__ if getattr(self, name)]


class Availability(Record):
    """Whether the running kernel has a transport, and if not, why (errno and a sentence)."""

    __slots__ = ("available", "reason", "errno")
    available: bool
    reason: str
    errno: int | None

    def __init__(self, available: bool, reason: str = "", errno: int | None = None) -> None:
        _set(self, "available", available)
        _set(self, "reason", reason)
        _set(self, "errno", errno)


def probe_socket(family: int, type: int, proto: int = 0) -> Availability:
    """Availability of a kernel socket kind: try to create one and say why not.

    Errors are reported with the errno name and a sentence
    (``EPROTONOSUPPORT``: "the kernel does not support this protocol ...").
    """
    try:
        socket.socket(family, type, proto).close()
    except OSError as exc:
        err = exc.errno or 0
        name = errno.errorcode.get(err, str(err))
        return Availability(False, f"{name}: {unavailable_reason(err)}", err)
    return Availability(True)


class Context:
    """What the pool hands a transport for one connect or listen."""

    # A plain class, not a dataclass: making a dataclass costs start-up time (_record.py).
    transport: Transport
    address: Address
    options: Mapping[str, object]
    socket_options: SocketOptions
    scope: HookScope
    tracer: Tracer
    role: SocketRole
    #: The id of the connection being made (connect), or ``0`` for a listener.
    conn_id: int
    #: The event id of the connect request.
    event_id: int
    #: The pool's nursery: for tasks a listener needs (a datagram reader). They must
    #: end when the listener closes.
    nursery: trio.Nursery | None
    extra: dict[str, object]
    #: A listener's access rules at work (``allow=``/``deny=``): the listener a transport
    #: makes calls ``access.install(family)``, and ``access.admits(peer)`` for each new
    #: peer before reading from it (see :class:`~trio_conduit.transport.AccessGate`).
    #: ``ctx.stream_listener`` and ``ctx.datagram_listener`` do both.
    access: AccessGate | None
    #: Set by :meth:`connect_inet`: the socket it returned, its kind and its peer, which
    #: :meth:`stream` takes instead of asking that socket again.
    connected: _sockets.ConnectedSocket | None

    def __init__(
        self,
        transport: Transport,
        address: Address,
        options: Mapping[str, object],
        socket_options: SocketOptions,
        scope: HookScope,
        tracer: Tracer,
        role: SocketRole,
        conn_id: int = 0,
        event_id: int = 0,
        nursery: trio.Nursery | None = None,
        extra: dict[str, object] | None = None,
        access: AccessGate | None = None,
        connected: _sockets.ConnectedSocket | None = None,
    ) -> None:
        self.transport = transport
        self.address = address
        self.options = options
        self.socket_options = socket_options
        self.scope = scope
        self.tracer = tracer
        self.role = role
        self.conn_id = conn_id
        self.event_id = event_id
        self.nursery = nursery
        self.extra = {} if extra is None else extra
        self.access = access
        self.connected = connected

    def int_option(self, name: str) -> int:
        """A resolved option that must be an integer (``TypeError`` otherwise)."""
        value = self.options[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self.address}: option {name!r} must be an int, not {value!r}")
        return value

    def retarget(self, transport: Transport, address: Address, options: Mapping[str, object]) -> Context:
        """This connect's context for another transport and address, everything else the same
        (ids, scope, tracer, role, socket options, nursery, ``extra``, access rules): what a layer
        hands the transport beneath it, or a proxy chain the connection to its first proxy."""
        return Context(
            transport,
            address,
            options,
            self.socket_options,
            self.scope,
            self.tracer,
            self.role,
            self.conn_id,
            self.event_id,
            nursery=self.nursery,
            extra=self.extra,
            access=self.access,
        )

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
        return await _sockets.make_socket(self, family, type, proto, role=role or self.role, prepare=prepare)

    async def connect_inet(
        self, type: int, proto: int = 0, *, prepare: SocketPreparer | None = None
    ) -> trio.socket.SocketType:
        """Resolve ``address.host`` and connect with happy eyeballs; a connected socket.

        ``prepare`` is applied to every socket made for an attempt (see :meth:`make_socket`).
        """
        return await _sockets.connect_inet(self, type, proto, prepare=prepare)

    async def resolve_inet(self, type: int) -> list[tuple[socket.AddressFamily, SockAddr]]:
        """Resolve ``address`` to (family, sockaddr) pairs, in resolver order; typed errors."""
        return await _sockets.resolve_inet(self, type)

    async def listen_inet(
        self, type: int, proto: int = 0, *, prepare: SocketPreparer | None = None
    ) -> trio.socket.SocketType:
        """Resolve ``address.host`` (empty: all interfaces) and bind; ``listen()`` for streams
        and ``SOCK_SEQPACKET``. ``prepare`` is applied before the bind (see :meth:`make_socket`)."""
        return await _sockets.listen_inet(self, type, proto, prepare=prepare)

    async def connect_socket(
        self, sock: trio.socket.SocketType, sockaddr: SockAddr, *, explain: ErrorExplainer | None = None
    ) -> None:
        """Connect ``sock``; on failure close it and raise a typed error naming this address.

        ``explain(exc)``: the transport's own reading of an ``OSError`` (a typed error),
        or ``None`` for the core's.
        """
        await _sockets.connect_socket(self, sock, sockaddr, explain=explain)

    async def bind_socket(
        self,
        sock: trio.socket.SocketType,
        sockaddr: SockAddr,
        *,
        listen: bool = False,
        action: str = "listen on",
        explain: ErrorExplainer | None = None,
    ) -> None:
        """Bind ``sock`` and, with ``listen``, ``listen()`` with the ``backlog`` option; on failure
        close it and raise a typed error ("cannot ``action`` ADDRESS: ...")."""
        await _sockets.bind_socket(self, sock, sockaddr, listen=listen, action=action, explain=explain)

    async def socket_accepted(self, sock: trio.socket.SocketType) -> None:
        """For a listener that accepts sockets its own way (not :meth:`stream_listener`): run
        the ``conduit_socket_created`` hooks with ``role=ACCEPTED``; close ``sock`` if this raises."""
        await _sockets.socket_created(self, sock, SocketRole.ACCEPTED)

    # -- wrapping sockets as connections ---------------------------------------
    # Each takes this context's transport scheme, tracer, address and connection id;
    # ``conn_id``/``address`` override the last two (a listener's accepted connections).

    def stream(
        self,
        sock: trio.socket.SocketType,
        *,
        conn_id: int | None = None,
        address: Address | None = None,
        remote: SockAddr | None = None,
        peer_credentials: PeerCredentials | None = None,
        kind: _sockets.SocketKind | None = None,
        local: SockAddr | None = None,
    ) -> HalfCloseableSocketStream:
        """A connected stream socket as a half-closeable connection (a transport that cannot
        half-close subclasses :class:`SocketStream` instead, as SCTP's does)."""
        connected = self.connected
        if connected is not None and connected.sock is sock:  # what connect_inet connected
            remote = connected.remote if remote is None else remote
            kind = connected.kind if kind is None else kind
        return HalfCloseableSocketStream(
            sock,
            self.conn_id if conn_id is None else conn_id,
            transport=self.address.scheme,
            tracer=self.tracer,
            address=self.address if address is None else address,
            remote=remote,
            peer_credentials=peer_credentials,
            kind=kind,
            local=local,
        )

    def channel(
        self,
        sock: trio.socket.SocketType,
        *,
        remote: SockAddr | None = None,
        connected: bool = True,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
        on_close: Callable[[], None] | None = None,
    ) -> SocketChannel:
        """A datagram socket as a channel (:class:`SocketChannel`); ``remote`` its default peer."""
        return SocketChannel(
            sock,
            self.conn_id,
            transport=self.address.scheme,
            tracer=self.tracer,
            address=self.address,
            remote=remote,
            max_size=max_size,
            on_close=on_close,
            connected=connected,
        )

    def message_channel(
        self,
        sock: trio.socket.SocketType,
        *,
        conn_id: int | None = None,
        address: Address | None = None,
        remote: SockAddr | None = None,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
    ) -> MessageSocketChannel:
        """A connected ``SOCK_SEQPACKET`` socket as a channel of whole messages."""
        return MessageSocketChannel(
            sock,
            self.conn_id if conn_id is None else conn_id,
            transport=self.address.scheme,
            tracer=self.tracer,
            address=self.address if address is None else address,
            remote=remote,
            max_size=max_size,
        )

    def stream_listener(
        self,
        sock: trio.socket.SocketType,
        address: Address,
        wrap: Callable[[trio.socket.SocketType, SockAddr, int], Connection] | None = None,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> SocketListener:
        """A listener accepting on ``sock`` (bound to ``address``); ``wrap(sock, remote, conn_id)``
        makes each connection (default: :meth:`stream`, half-closeable)."""
        if wrap is None:
            kind = _sockets.socket_kind(sock)

            def wrap(s: trio.socket.SocketType, remote: SockAddr, conn_id: int) -> Connection:
                return self.stream(s, conn_id=conn_id, address=address, remote=remote, kind=kind)

        return SocketListener(sock, self, wrap, address, on_close)

    def datagram_listener(
        self,
        sock: trio.socket.SocketType,
        address: Address,
        *,
        queue: int = 256,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
        on_close: Callable[[], None] | None = None,
    ) -> DatagramListener:
        """A datagram listener on the bound ``sock``: each new peer becomes a channel."""
        if self.nursery is None:
            raise RuntimeError(f"{address}: a datagram listener needs the pool's nursery")
        return DatagramListener(
            sock, self, address, nursery=self.nursery, queue=queue, max_size=max_size, on_close=on_close
        )


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
    #: Set by the registry: the scope (global, a pool's, a listener's) whose registry holds
    #: this transport. A layer finds the transport beneath it here, never in another scope:
    #: return new transport objects from each ``conduit_transports`` call.
    scope: HookScope | None = None
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
