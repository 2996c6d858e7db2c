"""The chain driver: connect to the first proxy, then tunnel hop by hop to the target.

``pool.connect(url, proxies=[...])`` builds a :class:`ProxyChain` (every URL
parsed and checked before anything is connected) and calls
:meth:`ProxyChain.connect` where it would have called the transport's
``connect``, inside the caller's timeout: the timeout covers the whole chain,
and when it runs out :meth:`ProxyChain.timeout_error` names the hop and what
it was waiting for. Any failure, or a cancel at any checkpoint, closes what
was opened.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import trio

from .._address import Address
from .._connection import CommunicationInfo, Connection, Kind, StreamConnection
from .._errors import (
    AddressError,
    ConnectError,
    ConnectTimeout,
    NameResolutionError,
    PluginError,
    ProxyError,
    ProxyProtocolError,
    ProxyTimeout,
)
from ._stream import HalfCloseableProxiedStream, ProxiedStream, with_prefix
from ._types import Hop, ProxyType, proxy_types
from ._udp import Socks5DatagramChannel
from ._url import ProxyURL, Target, split_proxy_url

if TYPE_CHECKING:
    from .._plugins import HookScope
    from .._transport import Context, Transport

__all__ = ["ProxyChain"]

Hops = tuple[tuple[ProxyType, ProxyURL], ...]

#: Target schemes a chain can carry: byte streams over TCP, and datagrams through a relay.
STREAM_SCHEMES: Final = frozenset({"tcp"})
DATAGRAM_SCHEMES: Final = frozenset({"udp"})


#: Parsed and checked chains, per hook scope: (proxies as given, target address) → hops.
_CACHE: weakref.WeakKeyDictionary[HookScope, dict[tuple[object, Address], ProxyChain]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_MAX: Final = 256


def parse_proxy(text: str | ProxyURL, scope: HookScope) -> tuple[ProxyType, ProxyURL]:
    """One proxy URL with the proxy type registered for its scheme; AddressError if none."""
    types = proxy_types(scope)
    if isinstance(text, ProxyURL):
        ptype = types.get(text.scheme)
        if ptype is None:
            raise AddressError(f"{text.redacted!r}: unknown proxy scheme {text.scheme!r}")
        return ptype, text
    parts, username, password = split_proxy_url(text)
    ptype = types.get(parts.scheme)
    if ptype is None:
        known = ", ".join(sorted(types)) or "none"
        raise AddressError(f"{parts.text!r}: unknown proxy scheme {parts.scheme!r} (registered: {known})")
    return ptype, ptype.parse(parts, username, password)


class ProxyChain:
    """A parsed chain of proxies for one connect (see :meth:`build`)."""

    def __init__(self, hops: Hops, transport: Transport, address: Address) -> None:
        self.hops = hops
        self.transport = transport
        self.address = address
        assert address.host is not None
        assert address.port is not None
        self.target = Target(address.host, address.port)
        self.datagram = transport.kind is Kind.DATAGRAM
        self.via = tuple(url.redacted for _, url in hops)
        self._hop: Hop | None = None

    @classmethod
    def build(
        cls,
        proxies: Iterable[str | ProxyURL],
        transport: Transport,
        address: Address,
        scope: HookScope,
    ) -> ProxyChain:
        """Parse and check a chain for ``address``; AddressError for anything it cannot do."""
        if isinstance(proxies, (str, bytes)):
            raise TypeError("proxies must be a list of proxy URLs, not one string")
        given = tuple(proxies)
        cache = _CACHE.get(scope)
        if cache is None:
            cache = _CACHE[scope] = {}
        try:
            hit = cache.get((given, address))
        except TypeError:  # something unhashable: parse_proxy() says what is wrong with it
            hit = None
        if hit is not None and hit.transport is transport:
            return hit._fresh()
        hops = tuple(parse_proxy(p, scope) for p in given)
        if not hops:
            raise AddressError("an empty proxy chain")
        scheme = address.scheme
        if scheme in DATAGRAM_SCHEMES and transport.kind is Kind.DATAGRAM:
            ptype, url = hops[-1]
            if len(hops) != 1 or not ptype.datagrams:
                raise AddressError(
                    f"{address}: udp:// goes through exactly one proxy that relays datagrams "
                    f"(socks5:// or socks5h://), not {', '.join(u.redacted for _, u in hops)}"
                )
        elif scheme not in STREAM_SCHEMES or transport.kind is not Kind.STREAM:
            raise AddressError(
                f"{address}: proxies carry tcp:// connections (and udp:// through SOCKS5), not {scheme}://"
            )
        chain = cls(hops, transport, address)
        for i, (ptype, url) in enumerate(hops):
            ptype.check_target(url, hops[i + 1][1].target if i + 1 < len(hops) else chain.target)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[(given, address)] = chain
        return chain._fresh()

    def _fresh(self) -> ProxyChain:
        """A copy for one connect: only ``_hop`` (``None`` here) changes while connecting."""
        chain = ProxyChain.__new__(ProxyChain)
        chain.__dict__.update(self.__dict__)
        return chain

    # -- timeouts ---------------------------------------------------------------
    def timeout_error(self, timeout: float) -> ProxyTimeout:
        """The error for the caller's timeout running out: which hop, waiting for what."""
        hop = self._hop
        index, url = (hop.index, hop.proxy) if hop is not None else (1, self.hops[0][1])
        waiting = hop.waiting_for if hop is not None else "the connection to the proxy"
        return ProxyTimeout(
            errno.ETIMEDOUT,
            f"no answer within {timeout:g} s while connecting to {self.address} (waiting for {waiting})",
            hop=index,
            proxy=url.redacted,
            address=str(self.address),
        )

    # -- connecting -------------------------------------------------------------
    def _hop_for(self, index: int, ctx: Context) -> Hop:
        hop = self._hop
        if hop is None or hop.index != index:  # (the first hop's is made when connecting to it)
            hop = Hop(index, len(self.hops), self.hops[index - 1][1], ctx.tracer, ctx.conn_id, context=ctx)
            self._hop = hop
        return hop

    async def _connect_first(self, ctx: Context) -> StreamConnection:
        """A TCP connection to the first proxy, with the caller's socket options."""
        tcp = ctx.scope.transport_for("tcp")
        if tcp is None:
            raise AddressError("proxies need the tcp:// transport, and no plugin registers it")
        hop = self._hop_for(1, ctx)
        if ctx.transport is tcp:
            options = ctx.options
        else:
            options = {o.name: o.default for o in tcp.options}
        pctx = ctx.retarget(tcp, hop.proxy.address, options)
        if ctx.tracer.log.isEnabledFor(logging.DEBUG):
            ctx.tracer.debug("proxy %s: connecting (conn #%d)", hop.name, ctx.conn_id)
        try:
            conn = await tcp.connect(pctx)
        except ConnectError as exc:
            cls = ProxyTimeout if isinstance(exc, ConnectTimeout) else ProxyError
            err = exc.errno or 0
            why = os.strerror(err) if err > 0 and not isinstance(exc, NameResolutionError) else exc.strerror
            raise cls(
                err,
                f"cannot connect to the proxy: {why}",
                hop=1,
                proxy=hop.proxy.redacted,
                address=str(self.address),
            ) from exc
        if not isinstance(conn, StreamConnection):
            await trio.aclose_forcefully(conn)
            raise PluginError(f"the tcp:// transport ({tcp!r}) did not return a stream connection")
        return conn

    def _locate(self, exc: ProxyError, hop: Hop) -> ProxyError:
        exc.locate(hop.index, hop.proxy.redacted, str(self.address))
        return exc

    async def connect(self, ctx: Context) -> Connection:
        """Connect through every hop to ``ctx.address``; the stream (or datagram channel)."""
        if self.datagram:
            return await self._connect_datagrams(ctx)
        first = await self._connect_first(ctx)
        stream: trio.abc.Stream = first
        trailing = b""
        try:
            for index, (ptype, url) in enumerate(self.hops, 1):
                last = index == len(self.hops)
                target = self.target if last else self.hops[index][1].target
                stream = with_prefix(stream, trailing)
                hop = self._hop_for(index, ctx)
                hop.waiting_for = f"the {ptype.name} handshake"
                try:
                    tunnel = await ptype.open(stream, url, target, hop)
                except ProxyError as exc:
                    self._locate(exc, hop)
                    raise
                stream, trailing = tunnel.stream, tunnel.trailing
                if ctx.tracer.log.isEnabledFor(logging.INFO):
                    ctx.tracer.info(
                        "proxy %s: tunnel to %s open (%s) (conn #%d)",
                        hop.name,
                        target,
                        tunnel.reply,
                        ctx.conn_id,
                    )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        first_info = first.info
        info = CommunicationInfo(
            transport=self.address.scheme,
            family=first_info.family,
            socktype=first_info.socktype,
            protocol=first_info.protocol,
            local=first_info.local,
            remote=(self.target.host, self.target.port),
            via=self.via,
        )
        cls = (
            HalfCloseableProxiedStream if isinstance(stream, trio.abc.HalfCloseableStream) else ProxiedStream
        )
        return cls(stream, ctx.conn_id, info=info, address=ctx.address, prefix=trailing)

    async def _connect_datagrams(self, ctx: Context) -> Connection:
        ptype, url = self.hops[0]
        control = await self._connect_first(ctx)
        hop = self._hop_for(1, ctx)
        sock: trio.socket.SocketType | None = None
        try:
            local = control.info.local
            family = control.info.family
            assert isinstance(local, tuple)
            assert family is not None
            sock = await ctx.make_socket(family, socket.SOCK_DGRAM)
            if ctx.socket_options.local is None:
                await sock.bind((local[0], 0))
            client = Target(*sock.getsockname()[:2])
            hop.waiting_for = "its reply to UDP ASSOCIATE"
            try:
                tunnel = await ptype.open_datagrams(control, url, client, hop)
            except ProxyError as exc:
                self._locate(exc, hop)
                raise
            relay = tunnel.bound
            if relay is None:
                raise self._locate(ProxyProtocolError(errno.EPROTO, "no relay address in the reply"), hop)
            relay_ip = relay.ip
            if relay_ip is None:
                relay = await hop.resolve(relay, family=family)
                relay_ip = relay.ip
            assert relay_ip is not None
            if relay_ip.is_unspecified:
                # "Send to the address you reached me at": the control connection's peer.
                peer = control.info.remote
                assert isinstance(peer, tuple)
                relay = Target(str(peer[0]), relay.port)
                relay_ip = relay.ip
                assert relay_ip is not None
            if (relay_ip.version == 4) != (family == socket.AF_INET):
                raise self._locate(
                    ProxyProtocolError(
                        errno.EPROTO,
                        f"the UDP relay {relay} is not of the control connection's address family",
                    ),
                    hop,
                )
            await sock.connect((relay.host, relay.port))
            target = self.target
            if url.scheme == "socks5":
                target = await hop.resolve(target)
            if ctx.tracer.log.isEnabledFor(logging.INFO):
                ctx.tracer.info(
                    "proxy %s: UDP relay %s for %s (%s) (conn #%d)",
                    hop.name,
                    relay,
                    target,
                    tunnel.reply,
                    ctx.conn_id,
                )
            max_size = ctx.options.get("max_size", 65536)
            assert ctx.nursery is not None
            return Socks5DatagramChannel(
                sock,
                control,
                ctx.conn_id,
                target=target,
                relay=(relay.host, relay.port),
                via=self.via,
                tracer=ctx.tracer,
                nursery=ctx.nursery,
                address=ctx.address,
                max_size=max_size if isinstance(max_size, int) else 65536,
                asked=self.target,
            )
        except BaseException:
            if sock is not None:
                sock.close()
            await trio.aclose_forcefully(control)
            raise
