"""The default plugin that registers trio-conduit's own proxy types through ``conduit_proxy_types``.

Registered as the ``proxy`` entry point of the ``trio_conduit`` group, the
same way a third-party package registers its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._plugins import hookimpl
from ._types import HTTPProxy, HTTPSProxy, ProxyType, Socks4Proxy, Socks5Proxy


@hookimpl
def conduit_proxy_types() -> Sequence[ProxyType]:
    return [HTTPProxy(), HTTPSProxy(), Socks4Proxy(), Socks5Proxy()]
