"""Proxy chains: HTTP CONNECT, SOCKS4, SOCKS4a, SOCKS5 — the engines, the types, a server.

``pool.connect(url, proxies=[...])`` is the way in (see the docs' proxies
page). This package holds what plugin authors and tests need beyond that:

* the sans-IO engines, client and server side of each protocol
  (:class:`Socks5Client`, :class:`Socks5Server`, :class:`Socks4Client`,
  :class:`Socks4Server`, :class:`HTTPConnectClient`, :class:`HTTPConnectServer`)
  and their events;
* :class:`ProxyType`, what a ``conduit_proxy_types`` hook returns, with
  :class:`Hop`, :class:`Tunnel` and :func:`run_client_engine` to write one;
* :class:`ProxyServer`, a SOCKS5/SOCKS4/HTTP CONNECT server as a ``pool.serve`` handler;
* :class:`ProxyURL` and :class:`Target`.

Like :mod:`trio_conduit`, the names are imported when first used
(:mod:`trio_conduit._lazy`): the ``proxy`` plugin module
(:mod:`trio_conduit.proxy._plugin`), loaded at every start, does not pull in
the engines, and a connection without ``proxies=`` never imports them.
"""

import typing

from .._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from ._chain import ProxyChain as ProxyChain
    from ._chain import parse_proxy as parse_proxy
    from ._engine import NEED_DATA as NEED_DATA
    from ._engine import ClientEngine as ClientEngine
    from ._engine import Command as Command
    from ._engine import Established as Established
    from ._engine import Event as Event
    from ._engine import NeedData as NeedData
    from ._engine import ReplyCode as ReplyCode
    from ._engine import Request as Request
    from ._engine import ServerEngine as ServerEngine
    from ._http import HTTPConnectClient as HTTPConnectClient
    from ._http import HTTPConnectServer as HTTPConnectServer
    from ._server import ProxyServer as ProxyServer
    from ._server import relay as relay
    from ._socks4 import Socks4Client as Socks4Client
    from ._socks4 import Socks4Server as Socks4Server
    from ._socks5 import Socks5Client as Socks5Client
    from ._socks5 import Socks5Server as Socks5Server
    from ._socks5 import pack_udp_header as pack_udp_header
    from ._socks5 import unpack_udp_datagram_untrusted as unpack_udp_datagram_untrusted
    from ._stream import HalfCloseableProxiedStream as HalfCloseableProxiedStream
    from ._stream import ProxiedStream as ProxiedStream
    from ._types import Hop as Hop
    from ._types import HTTPProxy as HTTPProxy
    from ._types import HTTPSProxy as HTTPSProxy
    from ._types import ProxyType as ProxyType
    from ._types import Socks4Proxy as Socks4Proxy
    from ._types import Socks5Proxy as Socks5Proxy
    from ._types import Tunnel as Tunnel
    from ._types import proxy_types as proxy_types
    from ._types import run_client_engine as run_client_engine
    from ._udp import Socks5DatagramChannel as Socks5DatagramChannel
    from ._url import ProxyURL as ProxyURL
    from ._url import Target as Target

#: Relative module → the public names it gives this package.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "._chain": (
        "ProxyChain",
        "parse_proxy",
    ),
    "._engine": (
        "NEED_DATA",
        "ClientEngine",
        "Command",
        "Established",
        "Event",
        "NeedData",
        "ReplyCode",
        "Request",
        "ServerEngine",
    ),
    "._http": (
        "HTTPConnectClient",
        "HTTPConnectServer",
    ),
    "._server": (
        "ProxyServer",
        "relay",
    ),
    "._socks4": (
        "Socks4Client",
        "Socks4Server",
    ),
    "._socks5": (
        "Socks5Client",
        "Socks5Server",
        "pack_udp_header",
        "unpack_udp_datagram_untrusted",
    ),
    "._stream": (
        "HalfCloseableProxiedStream",
        "ProxiedStream",
    ),
    "._types": (
        "Hop",
        "HTTPProxy",
        "HTTPSProxy",
        "ProxyType",
        "Socks4Proxy",
        "Socks5Proxy",
        "Tunnel",
        "proxy_types",
        "run_client_engine",
    ),
    "._udp": ("Socks5DatagramChannel",),
    "._url": (
        "ProxyURL",
        "Target",
    ),
}
if not typing.TYPE_CHECKING:  # type checkers see the imports above, not a catch-all __getattr__
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
