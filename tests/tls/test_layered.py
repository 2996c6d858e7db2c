"""A TLS layer finds the transport beneath it in the scope that registered it, not globally."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from trio_conduit_plugins.tls import TLSTransport

import trio_conduit as conduit
from trio_conduit.transport import (
    Availability,
    Context,
    Listener,
    Option,
    Transport,
    URLParts,
    hookimpl,
    parse_host_port,
)


class MineTransport(Transport):
    """A stream transport only one pool has, with an option of its own and no kernel support."""

    schemes = ("mine",)
    name = "MINE"
    kind = conduit.Kind.STREAM
    options = (Option.text("flavour", "plain", "an option only this transport has"),)

    def parse_address(self, parts: URLParts, *, listening: bool) -> conduit.Address:
        return parse_host_port(parts, listening=listening)

    def availability(self) -> Availability:
        return Availability(False, "mine is never available", 0)

    async def connect(self, ctx: Context) -> conduit.Connection:
        raise AssertionError("not called")

    async def listen(self, ctx: Context) -> Listener:
        raise AssertionError("not called")


class MinePlugin:
    @hookimpl
    def conduit_transports(self) -> Sequence[Transport]:
        return [MineTransport(), TLSTransport("tls+mine", "mine", "TLS/MINE", "TLS over mine://")]


async def test_a_layer_takes_options_and_availability_from_its_own_scope() -> None:
    async with conduit.open_pool(plugins=[MinePlugin()]) as pool:
        layer = pool.scope.transport_for("tls+mine")
        assert layer is not None
        assert layer.scope is pool.scope
        assert "flavour" in {o.name for o in layer.options}  # the pool's inner transport's option
        assert "cafile" in {o.name for o in layer.options}
        assert layer.availability() == Availability(False, "mine is never available", 0)
        transport, address = pool.parse("tls+mine://127.0.0.1:1?flavour=spicy")
        assert transport is layer
        assert address.query == (("flavour", "spicy"),)
        # the global tls:// sees the global tcp://, whose options it offers
        tls = pool.scope.transport_for("tls")
        assert tls is not None
        assert "nodelay" in {o.name for o in tls.options}
        assert "flavour" not in {o.name for o in tls.options}
        with pytest.raises(conduit.AddressError):
            pool.parse("tls://127.0.0.1:1?flavour=spicy")
