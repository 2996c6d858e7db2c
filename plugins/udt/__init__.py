"""``udt://host:port`` — UDT4, a reliable congestion-controlled transport over UDP, in pure Python.

Wire-compatible with the reference implementation (UDT 4.11, Debian's
``libudt``): handshake with SYN cookies, stream and message modes,
rendezvous connections, one UDP port multiplexed across a listener and its
connections. Stream mode (the default) gives a ``trio.abc.Stream``;
``?mode=message`` a channel of whole messages with per-message TTL and
ordering; ``?rendezvous=1`` (with ``local=``) connects two peers that both
connect. ``?congestion=NAME`` picks a congestion-control algorithm
registered through the ``conduit_congestion_controls`` hook (``udt``, the
native DAIMD, by default; ``bbr``; ``fixed:rate=50M``).

Layers: :mod:`._packet` (the codec), the sans-IO protocol (:mod:`._engine`,
its vocabulary; :mod:`._endpoint`, :mod:`._session`, :mod:`._sender`,
:mod:`._receiver`), :mod:`._congestion` (the ``CCC`` interface and
algorithms), :mod:`._driver` (the trio side and the multiplexer).
"""

from __future__ import annotations

import importlib
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy
import trio

from trio_conduit import (
    Address,
    AddressError,
    Availability,
    Capabilities,
    Connection,
    Context,
    Kind,
    Listener,
    Option,
    PluginError,
    Transport,
    URLParts,
    hookimpl,
)
from trio_conduit.transport import parse_host_port, probe_socket

if TYPE_CHECKING:
    from ._congestion import BBRLikeCC, CongestionControl, CongestionControlFactory, FixedRateCC, NativeCC
    from ._driver import Multiplexer, UDTListener, UDTMessageChannel, UDTStream, UDTTimeout
    from ._endpoint import Endpoint
    from ._engine import Config, Snapshot
    from ._packet import BadPacket
    from ._session import Session

# The engine and the driver load on first use (or first attribute access): a program
# that only has this plugin registered does not pay for importing them.
_LAZY: dict[str, str] = {
    "BBRLikeCC": "_congestion",
    "CongestionControl": "_congestion",
    "CongestionControlFactory": "_congestion",
    "FixedRateCC": "_congestion",
    "NativeCC": "_congestion",
    "Multiplexer": "_driver",
    "UDTListener": "_driver",
    "UDTMessageChannel": "_driver",
    "UDTStream": "_driver",
    "UDTTimeout": "_driver",
    "Config": "_engine",
    "Endpoint": "_endpoint",
    "Session": "_session",
    "Snapshot": "_engine",
    "BadPacket": "_packet",
    "SocketType": "_packet",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BBRLikeCC",
    "BadPacket",
    "CongestionControl",
    "CongestionControlFactory",
    "Endpoint",
    "FixedRateCC",
    "NativeCC",
    "Session",
    "Snapshot",
    "UDTListener",
    "UDTMessageChannel",
    "UDTStream",
    "UDTTimeout",
    "UDTTransport",
    "conduit_addhooks",
    "conduit_congestion_controls",
    "conduit_transports",
]

_PAYLOAD_OVERHEAD = 28  # the reference sizes buffers in (mss - 28)-byte units


def _mode(text: str) -> str:
    if text not in ("stream", "message"):
        raise ValueError(f"mode must be 'stream' or 'message', not {text!r}")
    return text


def _optional_seconds(text: str) -> float | None:
    value = float(text)
    if math.isnan(value) or value < 0:
        raise ValueError(f"expected seconds >= 0, got {text!r}")
    return None if math.isinf(value) else value


def _optional_rate(text: str) -> float | None:
    if text.lower() in ("", "-1", "none", "unlimited"):
        return None
    from ._congestion import parse_rate

    return parse_rate(text)


class UDTTransport(Transport):
    schemes = ("udt",)
    name = "UDT"
    kind = Kind.STREAM
    capabilities = Capabilities(message_boundaries=True, device=True, ip_options=True)
    options = (
        Option("mode", _mode, "stream", "stream (a byte stream) or message (a channel of whole messages)"),
        Option.boolean(
            "rendezvous", False, "rendezvous connect: both peers connect to each other (use local=)"
        ),
        Option.count("mss", 1500, "maximum packet size, IP and UDP headers included (UDT_MSS)"),
        Option.count("window", 25600, "maximum flow window, packets (UDT_FC)"),
        Option.count("sndbuf", 8192 * (1500 - 28), "send buffer, bytes (UDT_SNDBUF)"),
        Option.count("rcvbuf", 8192 * (1500 - 28), "receive buffer, bytes (UDT_RCVBUF)"),
        Option.count("udp_sndbuf", 4 * 1024 * 1024, "kernel UDP send buffer, bytes (UDP_SNDBUF)"),
        Option.count("udp_rcvbuf", 8192 * 1500, "kernel UDP receive buffer, bytes (UDP_RCVBUF)"),
        Option.seconds("linger", 180.0, "close waits this long for unacknowledged data (UDT_LINGER; 0: off)"),
        Option("max_bandwidth", _optional_rate, None, "bytes per second the connection may use (UDT_MAXBW)"),
        Option(
            "send_timeout", _optional_seconds, None, "seconds a send may wait for buffer space (UDT_SNDTIMEO)"
        ),
        Option(
            "receive_timeout", _optional_seconds, None, "seconds a receive may wait for data (UDT_RCVTIMEO)"
        ),
        Option("ttl", _optional_seconds, None, "message mode: seconds a message may wait to be delivered"),
        Option.boolean("in_order", True, "message mode: deliver messages in the order sent"),
        Option("congestion", str, "udt", "congestion control: NAME or NAME:key=value,... (udt, bbr, fixed)"),
        Option.boolean("periodic_nak", True, "resend loss reports periodically (the draft's NAK timer)"),
        Option.seconds(
            "connect_timeout", 3.0, "seconds to wait for the handshake (a rendezvous waits ten times as long)"
        ),
        Option.boolean("gso", True, "send packet batches with UDP_SEGMENT where the kernel can"),
        Option.boolean("gro", True, "receive coalesced packet batches (UDP_GRO) where the kernel can"),
    )
    description = "UDT4 over UDP (reliable, congestion controlled); stream or message mode, rendezvous"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    def availability(self) -> Availability:
        return probe_socket(socket.AF_INET, socket.SOCK_DGRAM)

    def loopback_url(self, tmpdir: str) -> str:
        return "udt://127.0.0.1:0"

    # -- options ------------------------------------------------------------------
    def _config(self, ctx: Context) -> Config:
        from ._engine import Config
        from ._packet import SocketType

        o = ctx.options
        where = str(ctx.address)
        try:
            mode = _mode(str(o["mode"]))
            mss = ctx.int_option("mss")
            window = max(32, ctx.int_option("window"))
            unit = mss - _PAYLOAD_OVERHEAD
            if unit <= 16:
                raise ValueError(f"mss {mss} is too small")
            snd_buf = max(1, ctx.int_option("sndbuf") // unit)
            rcv_buf = min(max(32, ctx.int_option("rcvbuf") // unit), window)
            linger = o["linger"]
            if linger is not None and not isinstance(linger, (int, float)):
                raise TypeError(f"{where}: linger must be seconds, not {linger!r}")
            max_bw = o["max_bandwidth"]
            if isinstance(max_bw, str):
                max_bw = _optional_rate(max_bw)
            if max_bw is not None and not isinstance(max_bw, (int, float)):
                raise TypeError(f"{where}: max_bandwidth must be bytes per second, not {max_bw!r}")
            connect_timeout = o["connect_timeout"]
            if not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
                raise TypeError(f"{where}: connect_timeout must be seconds > 0, not {connect_timeout!r}")
            timeout = float(connect_timeout)
            rendezvous = bool(o["rendezvous"])
            return Config(
                socket_type=SocketType.DGRAM if mode == "message" else SocketType.STREAM,
                mss=mss,
                flight_flag_size=window,
                snd_buf=snd_buf,
                rcv_buf=rcv_buf,
                linger=float(linger) if linger else None,
                max_bandwidth=float(max_bw) if max_bw else None,
                rendezvous=rendezvous,
                congestion=self._congestion(ctx),
                periodic_nak=bool(o["periodic_nak"]),
                connect_timeout=timeout,
                rendezvous_timeout=10 * timeout,  # the reference waits ten times longer for a rendezvous
            )
        except ValueError as exc:
            raise AddressError(f"{where}: {exc}") from None

    def _congestion(self, ctx: Context) -> Callable[[], CongestionControl]:
        from ._congestion import CongestionControl

        value = ctx.options["congestion"]
        where = str(ctx.address)
        if callable(value):
            factory: Callable[..., Any] = value
            params: dict[str, str] = {}
            label = getattr(value, "__name__", repr(value))
        else:
            name, _, args = str(value).partition(":")
            params = {}
            for item in filter(None, args.split(",")):
                key, eq, val = item.partition("=")
                if not eq or not key:
                    raise AddressError(f"{where}: congestion argument {item!r} is not key=value")
                params[key.strip()] = val.strip()
            table = congestion_controls(ctx)
            if name not in table:
                raise AddressError(
                    f"{where}: unknown congestion control {name!r} (registered: {', '.join(sorted(table))})"
                )
            factory = table[name]
            label = name

        def make() -> CongestionControl:
            cc = factory(**params)
            if not isinstance(cc, CongestionControl):
                raise TypeError(f"congestion control {label!r} made {cc!r}, not a CongestionControl")
            return cc

        try:
            make()  # fail at connect/listen time, not in the middle of a handshake
        except (TypeError, ValueError) as exc:
            raise AddressError(f"{where}: congestion control {label!r}: {exc}") from None
        return make

    def _wrap(
        self,
        ctx: Context,
        mux: Multiplexer,
        session: Session,
        conn_id: int,
        address: Address,
    ) -> Connection:
        from ._driver import UDTMessageChannel, UDTStream
        from ._packet import SocketType

        o = ctx.options
        send_timeout = _seconds_or_none(o["send_timeout"])
        receive_timeout = _seconds_or_none(o["receive_timeout"])
        if session.config.socket_type is SocketType.DGRAM:
            return UDTMessageChannel(
                mux,
                session,
                conn_id,
                address=address,
                ttl=_seconds_or_none(o["ttl"]),
                in_order=bool(o["in_order"]),
                send_timeout=send_timeout,
                receive_timeout=receive_timeout,
            )
        return UDTStream(
            mux,
            session,
            conn_id,
            address=address,
            send_timeout=send_timeout,
            receive_timeout=receive_timeout,
        )

    async def _make_mux(self, ctx: Context, family: int, *, listen: bool, payload_size: int) -> Multiplexer:
        from ._driver import Multiplexer

        nursery = ctx.nursery
        assert nursery is not None, "the pool gives transports its nursery"
        o = ctx.options
        if listen:
            tsock = await ctx.listen_inet(socket.SOCK_DGRAM)
        else:
            tsock = await ctx.make_socket(family, socket.SOCK_DGRAM)
        try:
            if not listen and ctx.socket_options.local is None:
                await tsock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            fam, proto = tsock.family, tsock.proto
            fd = tsock.detach()
        except BaseException:
            tsock.close()
            raise
        sock = socket.socket(fam, socket.SOCK_DGRAM, proto, fileno=fd)
        try:
            mux = Multiplexer(
                sock,
                nursery,
                gso=bool(o["gso"]),
                gro=bool(o["gro"]),
                udp_sndbuf=ctx.int_option("udp_sndbuf"),
                udp_rcvbuf=ctx.int_option("udp_rcvbuf"),
                payload_size=payload_size,
            )
        except BaseException:
            sock.close()
            raise
        mux.register(nursery)
        return mux

    # -- connect / listen -------------------------------------------------------------
    async def connect(self, ctx: Context) -> Connection:
        from ._driver import Multiplexer, wait_connected

        config = self._config(ctx)
        host, port = ctx.address.host, ctx.address.port
        assert host is not None
        assert port is not None
        where = str(ctx.address)
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            from trio_conduit import NameResolutionError

            raise NameResolutionError(
                exc.errno or 0, f"cannot resolve {host!r} for {where}: {exc.strerror}", address=where
            ) from exc
        local = ctx.socket_options.local
        pinned = _family_of(local)
        candidates = [i for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]
        if pinned is not None:
            candidates = [i for i in candidates if i[0] == pinned]
        if not candidates:
            raise AddressError(f"{where}: no usable address for {host!r} (of the local address's family)")
        family, _, _, _, peer = candidates[0]
        peer = _normalize(peer)
        mux = None
        local_port = _port_of(local)
        if local_port:
            assert ctx.nursery is not None
            mux = Multiplexer.shared(ctx.nursery, int(family), local_port)
        if mux is None:
            mux = await self._make_mux(ctx, family, listen=False, payload_size=config.mss - 44)
        mux.acquire()
        try:
            session = mux.endpoint.connect(peer, config, trio.current_time())
        except BaseException:
            mux.release()
            raise
        conn = self._wrap(ctx, mux, session, ctx.conn_id, ctx.address)
        owner: Any = conn
        try:
            mux.kick()
            await wait_connected(mux, session, owner, where)
        except BaseException:
            mux.disown(session)
            mux.release()
            raise
        ctx.tracer.debug(
            "UDT conn #%d: socket %d connected to socket %d at %s (mss %d, isn %d)",
            ctx.conn_id,
            session.socket_id,
            session.peer_id,
            peer,
            session.mss,
            session.isn,
        )
        return conn

    async def listen(self, ctx: Context) -> Listener:
        from ._driver import UDTListener

        config = self._config(ctx)
        if config.rendezvous:
            raise AddressError(f"{ctx.address}: a rendezvous socket connects; it cannot listen")
        backlog = ctx.socket_options.backlog
        mux = await self._make_mux(ctx, 0, listen=True, payload_size=config.mss - 44)
        mux.acquire()
        gate = ctx.access
        admit = None
        if gate is not None:
            gate.install(socket.AF_INET6 if len(mux.local) == 4 else socket.AF_INET)

            def admit(addr: tuple[Any, ...]) -> bool:
                return gate.admits(addr, datagram=True)

        try:
            mux.endpoint.listen(config, 1024 if backlog is None else max(1, backlog), admit)
        except BaseException:
            mux.release()
            raise
        host, port = mux.local[:2]
        bound = Address(ctx.address.scheme, host=host, port=port, query=ctx.address.query)

        def make(m: Multiplexer, session: Session) -> Connection:
            return self._wrap(ctx, m, session, ctx.new_conn_id(), bound)

        return UDTListener(mux, bound, make)


def _seconds_or_none(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isinf(value) else float(value)
    raise TypeError(f"expected seconds or None, not {value!r}")


def _normalize(addr: tuple[Any, ...]) -> tuple[Any, ...]:
    # The form recvfrom() reports, so the engine can compare addresses as tuples.
    if len(addr) == 4:
        return (addr[0].split("%", 1)[0], addr[1], 0, addr[3])
    return (addr[0], addr[1])


def _family_of(local: object) -> int | None:
    host: object = local[0] if isinstance(local, tuple) and local else local
    if not isinstance(host, str):
        return None
    text = host
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    if not text:
        return None
    return socket.AF_INET6 if ":" in text else socket.AF_INET


def _port_of(local: object) -> int:
    if isinstance(local, tuple) and len(local) >= 2 and isinstance(local[1], int):
        return local[1]
    if isinstance(local, int) and not isinstance(local, bool):
        return local
    if isinstance(local, str):
        tail = local.rsplit("]", 1)[-1] if local.startswith("[") else local
        if tail.count(":") == 1:
            port = tail.split(":")[1]
            if port.isdigit():
                return int(port)
    return 0


def congestion_controls(ctx: Context) -> dict[str, CongestionControlFactory]:
    """Every congestion-control algorithm the plugins in ``ctx``'s scope register, by name."""
    table: dict[str, CongestionControlFactory] = {}
    owner: dict[str, str] = {}
    hook = ctx.scope.pm.hook.conduit_congestion_controls
    for impl in reversed(hook.get_hookimpls()):
        result = impl.function()
        if not isinstance(result, Mapping):
            continue
        for name, factory in result.items():
            if name in table and table[name] is not factory:
                raise PluginError(
                    f"congestion control {name!r} registered twice: "
                    f"by {owner[name]!r} and {impl.plugin_name!r}"
                )
            table[name] = factory
            owner[name] = impl.plugin_name
    return table


@hookimpl
def conduit_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [UDTTransport()]


@hookimpl
def conduit_congestion_controls() -> Mapping[str, Callable[..., object]]:
    from ._congestion import builtin_congestion_controls

    return builtin_congestion_controls()


if TYPE_CHECKING:
    from trio_conduit import Benchmark


@hookimpl
def conduit_benchmarks() -> Sequence[Benchmark]:
    """``udt`` and ``udt-link`` for ``conduit bench`` (the benchmark code is imported only then)."""
    from .bench import benchmarks

    return benchmarks()
