r"""Kernel sockets as datagram connections (``trio.abc.Channel[bytes]``), and the datagram listener.

* :class:`SocketChannel` — a datagram socket, connected or not (WSAConnect / nsock semantics).
* :class:`MessageSocketChannel` — whole messages over a connected ``SOCK_SEQPACKET`` socket.
* :class:`DatagramEndpoint` — one bound socket as a source of (datagram, peer) pairs.
* :class:`DatagramListener` and its :class:`PeerChannel`\ s — an endpoint, a channel per peer.

OS errors are translated by :class:`~trio_conduit._errors.SocketErrors`, the
same boundary streams use.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

import trio

from ._connection import Buffer, CommunicationInfo, Connection, DatagramConnection, Listener, SockAddr
from ._errors import MessageTooLarge, SocketErrors
from ._sockets import SocketHolder, socket_info, sockname
from ._trace import DEBUG_ALL

if TYPE_CHECKING:
    from ._access import AccessGate
    from ._address import Address
    from ._trace import Tracer
    from ._transport import Context

__all__ = [
    "DEFAULT_DATAGRAM_SIZE",
    "DatagramEndpoint",
    "DatagramListener",
    "MessageSocketChannel",
    "PeerChannel",
    "SocketChannel",
]

DEFAULT_DATAGRAM_SIZE: Final = 65536


class SocketChannel(SocketHolder, DatagramConnection):
    """A datagram channel over a kernel socket (WSAConnect / nsock semantics).

    Connected (the usual case): ``send``/``receive`` talk to the default peer,
    the kernel drops datagrams from anyone else, and an ICMP port unreachable
    for an earlier datagram surfaces as :class:`ConnectionRefused` on the next
    call (the channel stays usable). :meth:`set_peer` changes the peer.
    Unconnected (``connected=False``): ``send`` goes to the default peer,
    ``receive`` takes datagrams from anyone, and ``send_to``/``receive_from``
    name the peer.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        conn_id: int,
        *,
        transport: str,
        tracer: Tracer,
        address: Address | None = None,
        remote: SockAddr | None = None,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
        on_close: Callable[[], None] | None = None,
        connected: bool = True,
    ) -> None:
        super().__init__(conn_id, address)
        self._sock = sock
        self._tracer = tracer
        self._transport = transport
        self._remote = remote
        self._connected = connected
        self._max_size = max_size
        self._on_close = on_close
        self._is_closed = False

    @property
    def info(self) -> CommunicationInfo:
        return CommunicationInfo(
            transport=self._transport,
            family=self._sock.family,
            socktype=self._sock.type,
            protocol=self._sock.proto,
            local=sockname(self._sock),
            remote=self._remote,
        )

    @property
    def peer(self) -> SockAddr | None:
        """The current default peer (``None`` when unconnected)."""
        return self._remote

    def _check_open(self) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")

    def _trace(self, what: str, n: int, peer: object) -> None:
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "%s datagram of %d bytes %s %s on conn #%d event #%d",
                what,
                n,
                "to" if what == "sent" else "from",
                peer,
                self.id,
                self._tracer.next_event_id(),
            )

    async def set_peer(self, peer: SockAddr) -> None:
        """Connect to another peer (a sockaddr); datagrams from the old one are no longer accepted."""
        self._check_open()
        with SocketErrors(peer, datagram=True):
            await self._sock.connect(peer)
        self._remote = peer
        self._connected = True

    async def send(self, value: Buffer) -> None:
        self._check_open()
        if self._remote is None:
            raise trio.BrokenResourceError("this channel has no default peer: use send_to()")
        with SocketErrors(self._remote, datagram=True):
            if self._connected:
                n = await self._sock.send(value)
            else:
                n = await self._sock.sendto(value, self._remote)
        self._trace("sent", n, self._remote)

    async def receive(self) -> bytes:
        self._check_open()
        with SocketErrors(self._remote, datagram=True):
            data: bytes
            if self._connected:
                data = await self._sock.recv(self._max_size)
                peer = self._remote
            else:
                data, peer = await self._sock.recvfrom(self._max_size)
        self._trace("received", len(data), peer)
        return data

    async def send_to(self, value: Buffer, peer: SockAddr) -> None:
        """Send one datagram to ``peer`` (a sockaddr)."""
        self._check_open()
        with SocketErrors(peer, datagram=True):
            n = await self._sock.sendto(value, peer)
        self._trace("sent", n, peer)

    async def receive_from(self) -> tuple[bytes, SockAddr]:
        """Receive one datagram and the address it came from."""
        self._check_open()
        with SocketErrors(self._remote, datagram=True):
            data, peer = await self._sock.recvfrom(self._max_size)
        self._trace("received", len(data), peer)
        return data, peer

    async def aclose(self) -> None:
        if self._close_socket():
            await self._closed()
        await trio.lowlevel.checkpoint()


#: Ancillary data as ``socket.sendmsg``/``recvmsg`` give it: (level, type, data).
AncData = list[tuple[int, int, bytes]]


class MessageSocketChannel(SocketHolder, DatagramConnection):
    """Whole messages over a connected ``SOCK_SEQPACKET`` socket (vsock, SCTP, unix).

    ``send`` sends one message, all of it (too big for the transport:
    :class:`MessageTooLarge`, the channel stays usable). ``receive`` returns
    one whole message; a message longer than ``max_size`` was cut by the
    kernel (``MSG_TRUNC``) and raises :class:`MessageTooLarge`. Once the peer
    has closed, ``receive`` raises ``trio.EndOfChannel``. A broken
    connection is ``trio.BrokenResourceError``. Subclasses that need
    ancillary data (SCTP's stream ids) use :meth:`_sendmsg` and :meth:`_recvmsg`.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        conn_id: int,
        *,
        transport: str,
        tracer: Tracer,
        address: Address | None = None,
        remote: SockAddr | None = None,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
    ) -> None:
        super().__init__(conn_id, address)
        self._sock = sock
        self._tracer = tracer
        self._max_size = max_size
        self._is_closed = False
        self._info = socket_info(sock, transport, remote)
        self._errors = SocketErrors(self._info.remote, messages=True)

    @property
    def info(self) -> CommunicationInfo:
        return self._info

    def _check_open(self) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")

    @property
    def max_size(self) -> int:
        """The largest message :meth:`receive` returns whole."""
        return self._max_size

    def _trace(self, what: str, n: int) -> None:
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "%s message of %d bytes on conn #%d event #%d",
                what,
                n,
                self.id,
                self._tracer.next_event_id(),
            )

    async def _sendmsg(self, value: Buffer, ancdata: AncData | None = None) -> None:
        """Send ``value`` as one message, with ``ancdata`` (a list of (level, type, bytes))."""
        self._check_open()
        with self._errors:
            n = await self._sock.sendmsg([value], ancdata or [])
        self._trace("sent", n)

    async def _recvmsg(self, bufsize: int, ancbufsize: int = 0) -> tuple[bytes, AncData, int]:
        """One ``recvmsg``: (data, ancillary data, msg_flags). Errors translated, nothing interpreted."""
        self._check_open()
        with self._errors:
            data, ancdata, flags, _addr = await self._sock.recvmsg(bufsize, ancbufsize)
        self._trace("received", len(data))
        return data, ancdata, flags

    async def send(self, value: Buffer) -> None:
        await self._sendmsg(value)

    async def receive(self) -> bytes:
        data, _, flags = await self._recvmsg(self._max_size)
        if flags & socket.MSG_TRUNC:
            raise MessageTooLarge(f"a message longer than max_size={self._max_size} was cut short")
        if not data:
            raise trio.EndOfChannel
        return data

    async def aclose(self) -> None:
        if self._close_socket():
            await self._closed()
        await trio.lowlevel.checkpoint()


@final
class DatagramEndpoint(SocketHolder):
    """A bound datagram socket as a source of ``(datagram, peer)`` pairs, and a way to answer any peer.

    What a server reads when it routes peers itself: the :class:`DatagramListener` (a
    channel per peer) and the DTLS listener (stateless cookies first) both stand on one.
    :meth:`receive_from` skips what is not fatal to a listener (an ICMP error for an
    earlier reply, a truncated datagram) and raises ``trio.ClosedResourceError`` once
    the socket is closed. A peer that sent from an unbound unix socket has no address:
    ``peer`` is ``""`` and nothing can be sent back to it.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        *,
        transport: str,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
        queue: int = 256,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._sock = sock
        self.transport = transport
        self.max_size = max_size
        #: Datagrams a reader should hold per peer (the transport's ``queue`` option).
        self.queue = queue
        self._on_close = on_close
        #: The listener's access rules at work, if it has any: a datagram from a peer they
        #: refuse is dropped here, before whoever reads the endpoint sees it (it travels
        #: with the endpoint when a layer such as DTLS takes the socket over).
        self.gate: AccessGate | None = None

    def info(self, peer: SockAddr | None) -> CommunicationInfo:
        """The facts of a connection to ``peer`` over this socket."""
        sock = self._sock
        return CommunicationInfo(
            transport=self.transport,
            family=sock.family,
            socktype=sock.type,
            protocol=sock.proto,
            local=sockname(sock),
            remote=peer,
        )

    async def receive_from(self) -> tuple[bytes, SockAddr]:
        while True:
            if self._is_closed:
                raise trio.ClosedResourceError("this endpoint was closed")
            try:
                data, addr = await self._sock.recvfrom(self.max_size)
            except OSError as exc:
                if exc.errno == errno.EBADF or self._is_closed:
                    raise trio.ClosedResourceError("this endpoint was closed") from None
                continue  # ICMP errors for earlier replies, truncation: not fatal to a listener
            if self.gate is not None and not self.gate.admits(addr, datagram=True):
                continue
            return data, addr if addr else ""

    async def send_to(self, value: Buffer, peer: SockAddr) -> None:
        """Send one datagram to ``peer``; errors as on a datagram channel (:class:`SocketErrors`)."""
        if self._is_closed:
            raise trio.ClosedResourceError("this endpoint was closed")
        if not peer:
            raise trio.BrokenResourceError("this peer has no address (an unbound unix socket): cannot reply")
        with SocketErrors(peer, datagram=True):
            await self._sock.sendto(value, peer)

    def close(self) -> None:
        """Close the socket (and run ``on_close``: a unix listener removes its file); idempotent."""
        self._close_socket()


@final
class PeerChannel(DatagramConnection):
    """One peer of a datagram listener: its datagrams in, replies out through the shared socket."""

    def __init__(self, listener: DatagramListener, peer: SockAddr, conn_id: int, queue: int) -> None:
        super().__init__(conn_id, listener.address)
        self._listener = listener
        self._peer = peer
        self._send_q, self._recv_q = trio.open_memory_channel[bytes](queue)
        self._is_closed = False
        self.dropped = 0

    @property
    def info(self) -> CommunicationInfo:
        return self._listener.endpoint.info(self._peer)

    @property
    def peer(self) -> SockAddr:
        return self._peer

    def _deliver(self, data: bytes) -> None:
        try:
            self._send_q.send_nowait(data)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1

    async def send(self, value: Buffer) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")
        await self._listener.endpoint.send_to(value, self._peer)

    async def receive(self) -> bytes:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")
        try:
            return await self._recv_q.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("the listener was closed") from None

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._recv_q.close()
            self._send_q.close()
            self._listener._forget(self)
            await self._closed()
        await trio.lowlevel.checkpoint()


@final
class DatagramListener(Listener):
    """Server side of a datagram transport: each new peer address becomes a channel.

    A reader task (in the pool's nursery, ended with the listener) receives on
    the one bound socket (its :attr:`endpoint`) and routes each datagram to its
    peer's channel; a new peer is queued for :meth:`accept` (``backlog`` of them
    at most; beyond, its datagrams are dropped until there is room). A peer's
    channel holds up to ``queue`` datagrams; more are dropped and counted.
    Closing a peer's channel forgets it: its next datagram makes a new one.

    A layer that routes peers itself (DTLS: no state for a stranger before its
    cookie) takes the socket over with :meth:`take_endpoint`.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        ctx: Context,
        address: Address,
        *,
        nursery: trio.Nursery,
        queue: int = 256,
        max_size: int = DEFAULT_DATAGRAM_SIZE,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint = DatagramEndpoint(
            sock, transport=ctx.address.scheme, max_size=max_size, queue=queue, on_close=on_close
        )
        self._ctx = ctx
        self._address = address
        self._peers: dict[SockAddr, PeerChannel] = {}
        backlog = ctx.socket_options.backlog
        self._new_send, self._new_recv = trio.open_memory_channel[PeerChannel](
            128 if backlog is None else max(1, backlog)
        )
        self._is_closed = False
        self._taken = False
        self._cancel = trio.CancelScope()
        self.dropped = 0
        if ctx.access is not None:
            ctx.access.install(sock.family)
            self.endpoint.gate = ctx.access
        nursery.start_soon(self._reader)

    @property
    def address(self) -> Address:
        return self._address

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.endpoint.socket

    def take_endpoint(self) -> DatagramEndpoint:
        """Hand the bound socket over: this listener's reader stops (it accepts nothing more) and
        the endpoint's owner reads and closes the socket from now on. Take it before the first
        checkpoint after the listener is made, or datagrams already read here are lost."""
        if self._taken or self._is_closed:
            raise trio.ClosedResourceError("this listener's socket was taken or closed")
        self._taken = True
        self._cancel.cancel()
        self._new_send.close()
        return self.endpoint  # its gate goes with it: the new owner reads only admitted peers

    def _forget(self, peer: PeerChannel) -> None:
        if self._peers.get(peer.peer) is peer:
            del self._peers[peer.peer]

    async def _reader(self) -> None:
        with self._cancel:
            while not self._taken:
                try:
                    data, key = await self.endpoint.receive_from()
                except trio.ClosedResourceError:
                    return
                peer = self._peers.get(key)
                if peer is None:
                    peer = PeerChannel(self, key, self._ctx.new_conn_id(), self.endpoint.queue)
                    try:
                        self._new_send.send_nowait(peer)
                    except trio.WouldBlock:
                        self.dropped += 1
                        continue
                    self._peers[key] = peer
                peer._deliver(data)

    async def accept(self) -> Connection:
        try:
            return await self._new_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("this listener was closed") from None

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._cancel.cancel()
            self._new_send.close()
            self._new_recv.close()
            for peer in list(self._peers.values()):
                peer._send_q.close()
            if not self._taken:
                self.endpoint.close()
        await trio.lowlevel.checkpoint()
