"""The default plugin that registers trio-conduit's own proxy types through ``conduit_proxy_types``.

Registered as the ``proxy`` entry point of the ``trio_conduit`` group, the
same way a third-party package registers its own. It is loaded at every
start, so the proxy types (and their engines) are imported only when the
hook is called: when a connection goes through proxies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._plugins import hookimpl

if TYPE_CHECKING:
    from ._types import ProxyType


@hookimpl
def conduit_proxy_types() -> Sequence[ProxyType]:
    from ._types import HTTPProxy, HTTPSProxy, Socks4Proxy, Socks5Proxy

    return [HTTPProxy(), HTTPSProxy(), Socks4Proxy(), Socks5Proxy()]
