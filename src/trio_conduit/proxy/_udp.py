"""``udp://`` through a SOCKS5 proxy: a datagram channel over a UDP ASSOCIATE relay (RFC 1928 §7).

The TCP control connection that asked for the association is held as long as
the channel is open (the relay ends the association when it closes); a task
in the pool watches it, and when the proxy closes it the channel breaks.
Every datagram goes to the relay with the SOCKS5 UDP header in front
(``RSV FRAG ATYP DST.ADDR DST.PORT``); datagrams from the relay are
unwrapped. As a connected UDP channel does, :meth:`receive` keeps only what
comes from the target (when the target is an address); fragments (FRAG ≠ 0)
and malformed headers are dropped and counted in ``dropped``.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, final

import trio

from .._connection import CommunicationInfo, DatagramConnection, SockAddr
from .._errors import ProxyProtocolError, SocketErrors
from .._sockets import sockname
from .._trace import DEBUG_ALL
from ._socks5 import pack_udp_header, unpack_udp_datagram_untrusted
from ._url import Target

if TYPE_CHECKING:
    from .._address import Address
    from .._connection import Buffer
    from .._trace import Tracer

__all__ = ["Socks5DatagramChannel"]

#: The largest SOCKS5 UDP header: RSV(2) FRAG(1) ATYP(1) LEN(1) NAME(255) PORT(2).
MAX_HEADER = 262


def _same_host(a: str, b: str) -> bool:
    try:
        x, y = ipaddress.ip_address(a.split("%")[0]), ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return a.lower() == b.lower()
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
        x = x.ipv4_mapped
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped is not None:
        y = y.ipv4_mapped
    return x == y


@final
class Socks5DatagramChannel(DatagramConnection):
    """A datagram channel to ``target`` through a SOCKS5 UDP relay.

    ``send``/``receive`` talk to ``target`` (resolved already, for
    ``socks5://``); ``send_to``/``receive_from`` reach any ``(host, port)``
    through the same relay. ``info.remote`` is the target as it was ``asked``
    for; ``relay`` the relay's address; ``control`` the TCP control connection.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        control: trio.abc.Stream,
        conn_id: int,
        *,
        target: Target,
        relay: SockAddr,
        via: tuple[str, ...],
        tracer: Tracer,
        nursery: trio.Nursery,
        address: Address | None = None,
        max_size: int = 65536,
        asked: Target | None = None,
    ) -> None:
        super().__init__(conn_id, address)
        self._asked = asked or target
        self._sock = sock
        self.control = control
        self.relay = relay
        self._target = target
        self._header = pack_udp_header(target)
        self._where = f"{target} through the SOCKS5 UDP relay at {Target(str(relay[0]), int(relay[1]))}"
        self._via = via
        self._tracer = tracer
        self._max_size = max_size
        self._is_closed = False
        self._broken: str | None = None
        self._watcher = trio.CancelScope()
        self.dropped = 0
        nursery.start_soon(self._watch_control, name=f"conduit socks5 udp control #{conn_id}")

    @property
    def info(self) -> CommunicationInfo:
        return CommunicationInfo(
            transport="udp",
            family=self._sock.family,
            socktype=self._sock.type,
            protocol=self._sock.proto,
            local=sockname(self._sock),
            remote=(self._asked.host, self._asked.port),
            via=self._via,
        )

    @property
    def socket(self) -> trio.socket.SocketType:
        """The UDP socket (connected to the relay)."""
        return self._sock

    async def _watch_control(self) -> None:
        with self._watcher:
            try:
                while await self.control.receive_some(4096):
                    pass  # nothing is expected on the control connection once associated
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            if not self._is_closed:
                self._broken = "the SOCKS5 proxy closed the control connection: the UDP association is over"
                self._tracer.info("conn #%d: %s", self.id, self._broken)
                self._sock.close()  # wakes a task blocked in receive()

    def _check(self) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this channel was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    def _trace(self, what: str, n: int, peer: object) -> None:
        if self._tracer.log.isEnabledFor(DEBUG_ALL):
            self._tracer.log.log(
                DEBUG_ALL,
                "%s datagram of %d bytes %s %s via the SOCKS5 relay on conn #%d event #%d",
                what,
                n,
                "to" if what == "sent" else "from",
                peer,
                self.id,
                self._tracer.next_event_id(),
            )

    async def _send(self, header: bytes, value: Buffer, peer: Target) -> None:
        self._check()
        with SocketErrors(self._where, datagram=True):
            await self._sock.send(header + bytes(value))
        self._trace("sent", len(value), peer)

    async def _receive(self) -> tuple[bytes, Target]:
        while True:
            self._check()
            try:
                with SocketErrors(self._where, datagram=True):
                    data = await self._sock.recv(self._max_size + MAX_HEADER)
            except trio.ClosedResourceError:
                self._check()
                raise
            try:
                source, frag, payload = unpack_udp_datagram_untrusted(data)
            except ProxyProtocolError:
                self.dropped += 1
                continue
            if frag != 0:
                self.dropped += 1
                continue
            self._trace("received", len(payload), source)
            return payload, source

    async def send(self, value: Buffer) -> None:
        """Send one datagram to the target through the relay."""
        await self._send(self._header, value, self._target)

    async def receive(self) -> bytes:
        """The next datagram from the target (others are dropped when the target is an address)."""
        while True:
            payload, source = await self._receive()
            if self._target.ip is None or (
                _same_host(source.host, self._target.host) and source.port == self._target.port
            ):
                return payload
            self.dropped += 1

    async def send_to(self, value: Buffer, peer: tuple[str, int]) -> None:
        """Send one datagram to ``peer`` (``(host, port)``; a name is resolved by the proxy)."""
        target = Target(peer[0], peer[1])
        await self._send(pack_udp_header(target), value, target)

    async def receive_from(self) -> tuple[bytes, tuple[str, int]]:
        """The next datagram from anyone, and who sent it (as the relay reports it)."""
        payload, source = await self._receive()
        return payload, (source.host, source.port)

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._watcher.cancel()
            self._sock.close()
            try:
                await trio.aclose_forcefully(self.control)
            finally:
                await self._closed()
        await trio.lowlevel.checkpoint()
