"""Proxy types: what a plugin's ``conduit_proxy_types`` hook returns, and the first-party ones.

A :class:`ProxyType` turns a stream connected to a proxy into a tunnel to a
target (:meth:`ProxyType.open`). The chain driver connects to the first proxy,
then asks each hop in turn to open a tunnel to the next proxy, and the last
one to the target. HTTP CONNECT, SOCKS4/4a and SOCKS5 register through the
same hook as a third-party ``haproxy://`` would.
"""

from __future__ import annotations

import abc
import dataclasses
import errno
import socket
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import trio

from .._address import URLParts
from .._errors import AddressError, NameResolutionError, PluginError, ProxyError
from ._engine import NEED_DATA, ClientEngine, Command, Established
from ._http import HTTPConnectClient, basic_credentials
from ._socks4 import Socks4Client
from ._socks5 import Socks5Client
from ._url import ProxyURL, Target, parse_proxy_parts

if TYPE_CHECKING:
    from .._plugins import HookScope
    from .._trace import Tracer
    from .._transport import Context
    from ..tls import TLSConfig

__all__ = [
    "HTTPProxy",
    "HTTPSProxy",
    "Hop",
    "ProxyType",
    "Socks4Proxy",
    "Socks5Proxy",
    "Tunnel",
    "proxy_types",
    "run_client_engine",
]

#: How much one read during a handshake asks for; what the reply does not use is kept.
HANDSHAKE_READ = 4096


@dataclass(eq=False)
class Hop:
    """One hop of a chain being set up: where it is, and what it is waiting for.

    ``index`` counts from 1; ``waiting_for`` is kept up to date by
    :func:`run_client_engine` (a plugin that drives its own protocol sets it)
    so that a timeout can say what the hop was waiting for.
    """

    index: int
    count: int
    proxy: ProxyURL
    tracer: Tracer
    conn_id: int = 0
    waiting_for: str = "the connection to the proxy"
    #: The pool's context for the connect being made (hooks scope, tracer, nursery, options).
    context: Context | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``"hop 2/3 (socks5://127.0.0.1:1080)"``, password hidden."""
        return f"hop {self.index}/{self.count} ({self.proxy.redacted})"

    async def resolve(self, target: Target, *, family: int = 0) -> Target:
        """``target`` with its name resolved here, locally (an IP literal is returned as it is).

        ``family``: ``socket.AF_INET`` for protocols that carry IPv4 only.
        Raises :class:`~trio_conduit.NameResolutionError` naming this hop.
        """
        if target.ip is not None:
            return target
        self.waiting_for = f"the local resolution of {target.host!r}"
        try:
            infos = await trio.socket.getaddrinfo(target.host, target.port, family, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(
                exc.errno or 0, f"cannot resolve {target.host!r} for proxy {self.name}: {exc.strerror}"
            ) from exc
        for fam, _type, _proto, _name, sockaddr in infos:
            if fam in (socket.AF_INET, socket.AF_INET6):
                return Target(str(sockaddr[0]), target.port)
        version = " IPv4" if family == socket.AF_INET else ""
        raise NameResolutionError(
            socket.EAI_NONAME, f"{target.host!r} has no{version} address (for proxy {self.name})"
        )


@dataclass(frozen=True, slots=True)
class Tunnel:
    """What :meth:`ProxyType.open` returns.

    ``stream``: the tunnel (often the stream it was given); ``reply``: the
    proxy's answer in words, for the trace; ``bound``: the address the proxy
    reports, if any; ``trailing``: bytes that came after the reply — the
    tunnel's first bytes, which the chain serves before reading ``stream``.
    """

    stream: trio.abc.Stream
    reply: str
    bound: Target | None = None
    trailing: bytes = b""


async def run_client_engine(
    engine: ClientEngine, stream: trio.abc.Stream, hop: Hop | None = None
) -> tuple[Established, bytes]:
    """Drive a client engine over ``stream`` to its :class:`Established`: (event, trailing bytes).

    The engine's errors propagate as they are. The peer closing or breaking the
    stream mid-handshake is a protocol error or a :class:`~trio_conduit.ProxyError`
    with ``ECONNRESET``.
    """
    while True:
        event = engine.next_event()
        out = engine.data_to_send()
        if out:
            try:
                await stream.send_all(out)
            except trio.BrokenResourceError as exc:
                raise ProxyError(
                    errno.ECONNRESET, f"the proxy broke the connection ({engine.waiting_for} was next)"
                ) from exc
        if event is NEED_DATA:
            if hop is not None:
                hop.waiting_for = engine.waiting_for
            try:
                data = await stream.receive_some(HANDSHAKE_READ)
            except trio.BrokenResourceError as exc:
                raise ProxyError(
                    errno.ECONNRESET,
                    f"the proxy reset the connection while we waited for {engine.waiting_for}",
                ) from exc
            engine.receive_data(data)
            continue
        if isinstance(event, Established):
            return event, engine.trailing_data
        raise ProxyError(errno.EPROTO, f"unexpected event {event!r} from a client engine")


class ProxyType(abc.ABC):
    """A kind of proxy: its URL schemes and how to open a tunnel through one.

    Subclasses set the class attributes and implement :meth:`open`. The
    default :meth:`parse` takes ``scheme://[user[:password]@]host[:port]``.
    """

    #: URL schemes served (``("socks5", "socks5h")``).
    schemes: tuple[str, ...]
    #: Display name for trace lines (``"SOCKS5"``).
    name: str
    #: The port when the URL gives none.
    default_port: int
    #: One line for ``conduit plugins`` and the docs.
    description: str = ""
    #: Can carry ``udp://`` targets (implement :meth:`open_datagrams`).
    datagrams: bool = False
    #: Set by the registry: the plugin that registered this proxy type.
    plugin_name: str = "?"
    #: Query parameters mean something to this type (it checks them in :meth:`parse`);
    #: when false, a URL with any is refused.
    takes_query: bool = False

    def parse(self, parts: URLParts, username: str | None, password: str | None) -> ProxyURL:
        """Turn a proxy URL's parts into a :class:`ProxyURL`, or raise AddressError.

        ``parts.text`` shows the password as ``***``; never put the password in a message.
        """
        if parts.query and not self.takes_query:
            names = ", ".join(repr(k) for k, _ in parts.query)
            raise parts.error(f"unknown option {names}: {self.name} proxy URLs take no query parameters")
        return parse_proxy_parts(parts, username, password, default_port=self.default_port)

    def check_target(self, proxy: ProxyURL, target: Target) -> None:
        """Raise AddressError if this hop cannot carry a connection to ``target``
        (checked before anything is connected). Accepts anything by default."""

    @abc.abstractmethod
    async def open(self, stream: trio.abc.Stream, proxy: ProxyURL, target: Target, hop: Hop) -> Tunnel:
        """Make ``stream``, connected to ``proxy``, a tunnel to ``target``.

        Raise :class:`~trio_conduit.ProxyError` subclasses (the chain names the
        hop); leave closing ``stream`` on failure to the chain.
        """

    async def open_datagrams(
        self, control: trio.abc.Stream, proxy: ProxyURL, client: Target, hop: Hop
    ) -> Tunnel:
        """For ``datagrams`` types: set up a datagram relay over the control stream.

        ``client`` is the local address datagrams will come from; the returned
        tunnel's ``bound`` is the relay's address.
        """
        raise NotImplementedError(f"{self.name} proxies do not carry datagrams")

    def __repr__(self) -> str:
        return f"<ProxyType {'/'.join(self.schemes)} from {self.plugin_name}>"


# ---------------------------------------------------------------------------
# the first-party types
# ---------------------------------------------------------------------------


class HTTPProxy(ProxyType):
    """``http://[user:pass@]host[:port]``: HTTP CONNECT with Basic authentication."""

    schemes = ("http",)
    name = "HTTP"
    default_port = 8080
    description = "HTTP CONNECT (RFC 9110), Basic authentication; names are resolved by the proxy"

    def parse(self, parts: URLParts, username: str | None, password: str | None) -> ProxyURL:
        url = super().parse(parts, username, password)
        if username is not None:
            basic_credentials(username, password)  # ':' in the user name fails here
        return url

    async def open(self, stream: trio.abc.Stream, proxy: ProxyURL, target: Target, hop: Hop) -> Tunnel:
        engine = HTTPConnectClient(target, username=proxy.username, password=proxy.password)
        event, trailing = await run_client_engine(engine, stream, hop)
        return Tunnel(stream, event.reply, event.bound, trailing)


class HTTPSProxy(HTTPProxy):
    """``https://[user:pass@]host[:port][?tls options]``: TLS to the proxy itself, then CONNECT inside it.

    The proxy's certificate is verified against the system's CAs and the
    proxy's host name by default; query parameters are TLS options as on a
    ``tls://`` URL (``?cafile=/path/ca.pem``, ``?server_hostname=...``,
    ``?verify=0``...).
    """

    schemes = ("https",)
    name = "HTTPS"
    default_port = 443
    takes_query = True
    description = "HTTP CONNECT inside TLS to the proxy (TLS options as query parameters)"

    def parse(self, parts: URLParts, username: str | None, password: str | None) -> ProxyURL:
        url = super().parse(parts, username, password)
        self.tls_config(url)  # bad TLS options fail here, before anything connects
        return url

    def tls_config(self, proxy: ProxyURL) -> TLSConfig:
        """The TLS options from the URL's query string."""
        from ..tls import TLSConfig

        try:
            return TLSConfig().replace(**dict(proxy.query))
        except (TypeError, ValueError) as exc:
            raise AddressError(f"{proxy.redacted!r}: {exc}") from None

    async def open(self, stream: trio.abc.Stream, proxy: ProxyURL, target: Target, hop: Hop) -> Tunnel:
        from .._address import Address
        from .._connection import CommunicationInfo, Connection, StreamConnection
        from .._plugins import global_scope
        from ..tls._errors import TLSError
        from ..tls._handshake import client_handshake
        from ._stream import ProxiedStream

        # The TLS layer works on connections: name this hop's peer as the proxy.
        base = (
            stream.info
            if isinstance(stream, Connection)
            else CommunicationInfo("tcp", None, None, 0, None, None)
        )
        info = dataclasses.replace(base, remote=(proxy.host, proxy.port))
        conn: StreamConnection = ProxiedStream(stream, hop.conn_id, info=info, address=proxy.address)
        hop.waiting_for = "the TLS handshake with the proxy"
        try:
            tls = await client_handshake(
                conn,
                self.tls_config(proxy),
                scope=hop.context.scope if hop.context is not None else global_scope(),
                tracer=hop.tracer,
                address=Address("tls", host=proxy.host, port=proxy.port),
                transport_name="HTTPS proxy",
            )
        except TLSError as exc:
            raise ProxyError(errno.EPROTO, f"TLS with the proxy failed: {exc}") from exc
        event, trailing = await run_client_engine(
            HTTPConnectClient(target, username=proxy.username, password=proxy.password), tls, hop
        )
        return Tunnel(tls, event.reply, event.bound, trailing)


class Socks4Proxy(ProxyType):
    """``socks4://[userid@]host[:port]`` (IPv4, resolved here) and ``socks4a://`` (names sent as names)."""

    schemes = ("socks4", "socks4a")
    name = "SOCKS4"
    default_port = 1080
    description = "SOCKS4 (IPv4, names resolved locally) and SOCKS4a (names resolved by the proxy)"

    def parse(self, parts: URLParts, username: str | None, password: str | None) -> ProxyURL:
        if password is not None:
            raise parts.error("SOCKS4 has no passwords (a user name is sent as the USERID)")
        if username is not None and "\0" in username:
            raise parts.error("a SOCKS4 user id cannot contain a NUL byte")
        return super().parse(parts, username, password)

    def check_target(self, proxy: ProxyURL, target: Target) -> None:
        ip = target.ip
        if ip is not None and ip.version == 6:
            raise AddressError(f"{proxy.redacted} cannot carry IPv6 ({target}): SOCKS4 is IPv4 only")

    async def open(self, stream: trio.abc.Stream, proxy: ProxyURL, target: Target, hop: Hop) -> Tunnel:
        socks4a = proxy.scheme == "socks4a"
        if not socks4a:
            target = await hop.resolve(target, family=socket.AF_INET)
        engine = Socks4Client(target, userid=proxy.username or "", socks4a=socks4a)
        event, trailing = await run_client_engine(engine, stream, hop)
        return Tunnel(stream, event.reply, event.bound, trailing)


class Socks5Proxy(ProxyType):
    """``socks5://`` (names resolved here) and ``socks5h://`` (names resolved by the proxy),
    with RFC 1929 user name and password; UDP ASSOCIATE for ``udp://`` targets."""

    schemes = ("socks5", "socks5h")
    name = "SOCKS5"
    default_port = 1080
    description = "SOCKS5 (RFC 1928/1929): user/password, remote names with socks5h, UDP ASSOCIATE"
    datagrams = True

    def parse(self, parts: URLParts, username: str | None, password: str | None) -> ProxyURL:
        if username is not None and not 1 <= len(username.encode()) <= 255:
            raise parts.error("a SOCKS5 user name must be 1 to 255 bytes (RFC 1929)")
        if password is not None and len(password.encode()) > 255:
            raise parts.error("a SOCKS5 password must be at most 255 bytes (RFC 1929)")
        return super().parse(parts, username, password)

    def check_target(self, proxy: ProxyURL, target: Target) -> None:
        if target.ip is None and len(target.host.encode()) > 255:
            raise AddressError(f"{target.host[:60]!r}...: longer than SOCKS5's 255-byte host names")

    async def open(self, stream: trio.abc.Stream, proxy: ProxyURL, target: Target, hop: Hop) -> Tunnel:
        if proxy.scheme == "socks5":
            target = await hop.resolve(target)
        engine = Socks5Client(target, username=proxy.username, password=proxy.password)
        event, trailing = await run_client_engine(engine, stream, hop)
        return Tunnel(stream, event.reply, event.bound, trailing)

    async def open_datagrams(
        self, control: trio.abc.Stream, proxy: ProxyURL, client: Target, hop: Hop
    ) -> Tunnel:
        engine = Socks5Client(
            client, username=proxy.username, password=proxy.password, command=Command.UDP_ASSOCIATE
        )
        event, trailing = await run_client_engine(engine, control, hop)
        return Tunnel(control, event.reply, event.bound, trailing)


# ---------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------

_REGISTRIES: weakref.WeakKeyDictionary[HookScope, dict[str, ProxyType]] = weakref.WeakKeyDictionary()


def proxy_types(scope: HookScope) -> Mapping[str, ProxyType]:
    """scheme → proxy type, from every plugin's ``conduit_proxy_types`` in ``scope``."""
    table = _REGISTRIES.get(scope)
    if table is None:
        table = _REGISTRIES[scope] = _collect(scope)
    return table


def _collect(scope: HookScope) -> dict[str, ProxyType]:
    table: dict[str, ProxyType] = {}
    hook = getattr(scope.pm.hook, "conduit_proxy_types", None)
    impls = hook.get_hookimpls() if hook is not None else []
    for impl in reversed(impls):
        function = cast("Callable[[], Iterable[ProxyType] | None]", impl.function)
        for ptype in function() or ():
            if not isinstance(ptype, ProxyType):
                raise PluginError(f"plugin {impl.plugin_name!r}: conduit_proxy_types returned {ptype!r}")
            ptype.plugin_name = impl.plugin_name
            for scheme in ptype.schemes:
                other = table.get(scheme)
                if other is not None and other is not ptype:
                    raise PluginError(
                        f"proxy scheme {scheme!r} registered twice: by plugin "
                        f"{other.plugin_name!r} and by {impl.plugin_name!r}"
                    )
                table[scheme] = ptype
    return table
