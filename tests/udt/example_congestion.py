"""A congestion-control plugin for udt://: a rate cap, registered by name (shown in docs/udt.rst)."""

from collections.abc import Mapping
from typing import Any

import trio
from trio_conduit_plugins.udt import CongestionControl

import trio_conduit as conduit


class Capped(CongestionControl):
    """At most ``packets`` packets a second; as large a window as the peer allows."""

    def __init__(self, packets: str = "2000") -> None:  # arguments come from the URL, as text
        self.limit = float(packets)

    def init(self) -> None:
        self.pkt_send_period = 1_000_000 / self.limit  # microseconds between two packets
        self.cwnd = self.max_cwnd

    def on_ack(self, ack: int) -> None:
        self.cwnd = self.max_cwnd  # the peer's flow window may have changed


class CappedPlugin:
    @conduit.hookimpl
    def conduit_congestion_controls(self) -> Mapping[str, Any]:
        return {"capped": Capped}


async def main() -> None:
    async with conduit.open_pool(plugins=[CappedPlugin()]) as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        conn = await pool.connect(f"{listener.address}?congestion=capped:packets=5000")
        peer = await listener.accept()
        await conn.send_all(b"x" * 1_000_000)
        got = 0
        while got < 1_000_000:
            got += len(await peer.receive_some())
        print(conn.stats.congestion, round(conn.stats.us_pkt_snd_period), got)


trio.run(main)
