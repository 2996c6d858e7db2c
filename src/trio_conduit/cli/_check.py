"""``conduit check`` and ``conduit plugins``: what is installed, what works here.

``check`` lists the plugins (distribution and version), every registered
transport with its availability on this kernel (the reason and errno when
not), then runs a loopback round trip over each available transport that
names a loopback URL: serve an echo handler, connect, send
``b"conduit-check"``, read it back. It never shows a traceback: a failing
probe or round trip is one line.
"""

from __future__ import annotations

import errno as _errno
import inspect
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Final

import trio

from .. import hookspecs
from .._connection import Connection, DatagramConnection, StreamConnection
from .._plugins import HookScope, global_scope, load_errors, plugin_distributions
from .._pool import Pool, open_pool
from .._pool_options import CORE_OPTIONS
from .._transport import Transport
from .._version import __version__
from ._report import error_line, leaves

__all__ = ["PAYLOAD", "ROUND_TRIP_TIMEOUT", "error_line", "leaves", "round_trip", "run_check", "run_plugins"]

#: What the round trip sends and expects back.
PAYLOAD: Final = b"conduit-check"
#: Seconds a round trip (listen, connect, echo) may take before it counts as failed.
ROUND_TRIP_TIMEOUT: Final = 5.0


# ---------------------------------------------------------------------------
# facts
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class PluginFacts:
    name: str
    distribution: str | None
    version: str | None
    module: str
    #: Why an entry-point plugin could not be loaded (its transports are missing), if it could not.
    error: str | None = None


@dataclass(slots=True)
class RoundTrip:
    url: str
    ok: bool
    bound: str | None = None
    ms: float | None = None
    connect_ms: float | None = None
    error: str | None = None


@dataclass(slots=True)
class TransportFacts:
    schemes: list[str]
    name: str
    kind: str
    capabilities: list[str]
    plugin: str
    description: str
    available: bool
    reason: str | None = None
    errno: int | None = None
    errno_name: str | None = None
    round_trip: RoundTrip | None = None
    options: list[dict[str, str]] = field(default_factory=list)


def _plugins(scope: HookScope) -> list[PluginFacts]:
    dists = {name: (dist, version) for name, dist, version in plugin_distributions()}
    out = []
    for name, plugin in sorted(scope.pm.list_name_plugin(), key=lambda item: item[0]):
        dist, version = dists.get(name, (None, None))
        module = getattr(plugin, "__name__", None) or type(plugin).__qualname__
        out.append(PluginFacts(name, dist, version, module))
    for name, error in sorted(load_errors().items()):
        out.append(PluginFacts(name, None, None, error.split(":", 1)[0], error=error))
    return out


def _plugin_line(p: PluginFacts, width: int) -> str:
    if p.error is not None:
        return f"  {p.name:<{width}}  FAILED TO LOAD: {p.error}"
    where = f"{p.distribution} {p.version}" if p.distribution else "(registered in-process)"
    return f"  {p.name:<{width}}  {where:<24} {p.module}"


def _distinct(transports: dict[str, Transport]) -> list[Transport]:
    seen: dict[int, Transport] = {}
    for scheme in sorted(transports):
        seen.setdefault(id(transports[scheme]), transports[scheme])
    return list(seen.values())


def _facts(transport: Transport) -> TransportFacts:
    facts = TransportFacts(
        schemes=list(transport.schemes),
        name=transport.name,
        kind=transport.kind.value,
        capabilities=transport.capabilities.names(),
        plugin=transport.plugin_name,
        description=transport.description,
        available=False,
        options=[{"name": o.name, "default": _show(o.default), "doc": o.doc} for o in transport.options],
    )
    try:
        availability = transport.availability()
    except Exception as exc:
        facts.reason = f"the availability probe raised {error_line(exc)}"
        return facts
    facts.available = availability.available
    if availability.available and availability.reason:
        facts.reason = availability.reason  # what an available transport says of itself (DTLS: its versions)
    if not availability.available:
        facts.reason = availability.reason or "unavailable (no reason given)"
        facts.errno = availability.errno
        if availability.errno is not None:
            facts.errno_name = _errno.errorcode.get(availability.errno, str(availability.errno))
    return facts


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _echo(conn: Connection) -> None:
    if isinstance(conn, DatagramConnection):
        try:
            while True:
                await conn.send(await conn.receive())
        except trio.EndOfChannel:  # (DTLS: the peer's close_notify)
            return
    elif isinstance(conn, StreamConnection):
        while data := await conn.receive_some():
            await conn.send_all(data)


async def _exchange(conn: Connection) -> bytes:
    if isinstance(conn, DatagramConnection):
        await conn.send(PAYLOAD)
        return await conn.receive()
    if isinstance(conn, StreamConnection):
        await conn.send_all(PAYLOAD)
        got = b""
        while len(got) < len(PAYLOAD):
            data = await conn.receive_some()
            if not data:
                break
            got += data
        return got
    raise TypeError(f"{conn!r} is neither a stream nor a datagram connection")


async def round_trip(pool: Pool, url: str) -> RoundTrip:
    """Serve an echo handler on ``url``, connect to it, send :data:`PAYLOAD` and read it back."""
    result = RoundTrip(url, ok=False)
    try:
        with trio.fail_after(ROUND_TRIP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(pool.serve, url, _echo)
                result.bound = str(bound)
                start = time.perf_counter()
                conn: Connection = await pool.connect(bound)
                connected = time.perf_counter()
                try:
                    got = await _exchange(conn)
                finally:
                    await conn.aclose()
                done = time.perf_counter()
                nursery.cancel_scope.cancel()
        if got == PAYLOAD:
            result.ok = True
            result.ms = round((done - start) * 1000, 3)
            result.connect_ms = round((connected - start) * 1000, 3)
        else:
            result.error = f"echo mismatch: sent {PAYLOAD!r}, got {got!r}"
    except trio.TooSlowError:
        result.error = f"no echo within {ROUND_TRIP_TIMEOUT:g} s"
    except Exception as exc:
        result.error = error_line(exc)
    return result


# ---------------------------------------------------------------------------
# conduit check
# ---------------------------------------------------------------------------


def _header() -> dict[str, str]:
    return {
        "version": __version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "platform": platform.platform(),
    }


def _print(line: str = "") -> None:
    print(line, flush=True)


def _label(f: TransportFacts) -> str:
    return ", ".join(f.schemes)


def _print_inventory(plugins: list[PluginFacts], transports: list[TransportFacts]) -> None:
    header = _header()
    _print(
        f"trio-conduit {header['version']} (Python {header['python']}, trio {header['trio']}, "
        f"{header['platform']})"
    )
    _print("plugins:")
    width = max((len(p.name) for p in plugins), default=0)
    for p in plugins:
        _print(_plugin_line(p, width))
    _print("transports:")
    width = max((len(_label(f)) for f in transports), default=0)
    pwidth = max((len(f.plugin) for f in transports), default=0)
    for f in transports:
        if f.available:
            state = f"available    {', '.join(f.capabilities) or '-'}"
            if f.reason:
                state += f"; {f.reason}"
        else:
            state = f"unavailable  {f.reason}"
            if f.errno_name and f.errno_name not in state:
                state += f" [{f.errno_name}]"
        _print(f"  {_label(f):<{width}}  {f.kind:<8}  plugin {f.plugin:<{pwidth}}  {state}")


def _print_round_trip(f: TransportFacts, width: int) -> None:
    rt = f.round_trip
    if rt is None:
        _print(f"  {_label(f):<{width}}  -     no loopback self-test")
    elif rt.ok:
        _print(f"  {_label(f):<{width}}  ok    {rt.ms:8.3f} ms  (connect {rt.connect_ms:.3f} ms)  {rt.bound}")
    else:
        _print(f"  {_label(f):<{width}}  FAIL  {rt.error}")


async def run_check(as_json: bool) -> int:
    """``conduit check``: 0 if every available transport's round trip passed, else 1.

    It is 1 too when an entry-point plugin failed to load (its transports are
    missing) or when no transport is registered at all. Transports that name
    no loopback URL are listed but not tried.
    """
    async with open_pool() as pool:
        plugins = _plugins(pool.scope)
        pairs = [(t, _facts(t)) for t in _distinct(dict(pool.transports))]
        transports = [f for _, f in pairs]
        width = max((len(_label(f)) for f in transports), default=0)
        if not as_json:
            _print_inventory(plugins, transports)
            _print("round trips:")
        with tempfile.TemporaryDirectory(prefix="conduit-check-") as tmpdir:
            for transport, f in pairs:
                if not f.available:
                    continue
                try:
                    url = transport.loopback_url(tmpdir)
                except Exception as exc:
                    f.round_trip = RoundTrip("?", ok=False, error=f"loopback_url() raised {error_line(exc)}")
                else:
                    if url is not None:
                        f.round_trip = await round_trip(pool, url)
                if not as_json:
                    _print_round_trip(f, width)
    tried = [f.round_trip for f in transports if f.round_trip is not None]
    passed = sum(1 for rt in tried if rt.ok)
    broken = [p for p in plugins if p.error is not None]
    ok = bool(transports) and passed == len(tried) and not broken
    if as_json:
        doc = {
            **_header(),
            "plugins": [asdict(p) for p in plugins],
            "transports": [asdict(f) for f in transports],
            "round_trips": {"passed": passed, "failed": len(tried) - passed},
            "ok": ok,
        }
        _print(json.dumps(doc, indent=2))
    elif not transports:
        _print("no transports registered: are trio-conduit's entry points installed?")
    else:
        available = sum(1 for f in transports if f.available)
        _print(
            f"{len(transports)} transports, {available} available; "
            f"{passed} of {len(tried)} round trips passed"
            + (f"; {len(broken)} plugin(s) failed to load" if broken else "")
        )
    return 0 if ok else 1


# ---------------------------------------------------------------------------
# conduit plugins
# ---------------------------------------------------------------------------


def _hooks(scope: HookScope) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name, spec in vars(hookspecs).items():
        if not name.startswith("conduit_") or not callable(spec):
            continue
        impls = getattr(scope.pm.hook, name).get_hookimpls()
        doc = inspect.getdoc(spec) or ""
        out.append(
            {
                "hook": name,
                "awaited": inspect.iscoroutinefunction(spec),
                "summary": doc.splitlines()[0] if doc else "",
                # pluggy calls the last-registered implementation first
                "implementations": [impl.plugin_name for impl in reversed(impls)],
            }
        )
    return out


def _opt(option: dict[str, str]) -> str:
    return f"?{option['name']}={option['default']}"


def run_plugins(as_json: bool) -> int:
    """``conduit plugins``: plugins, their transports and options, and each hook's implementations."""
    scope = global_scope()
    plugins = _plugins(scope)
    transports = [_facts(t) for t in _distinct(dict(scope.transports))]
    common = [{"name": o.name, "default": _show(o.default), "doc": o.doc} for o in CORE_OPTIONS.values()]
    hooks = _hooks(scope)
    if as_json:
        doc = {
            "plugins": [asdict(p) for p in plugins],
            "transports": [
                {k: v for k, v in asdict(f).items() if k not in ("round_trip",)} for f in transports
            ],
            "common_options": common,
            "hooks": hooks,
        }
        _print(json.dumps(doc, indent=2))
        return 0
    _print("plugins:")
    for p in plugins:
        _print(_plugin_line(p, 14))
    _print("transports:")
    for f in transports:
        _print(f"  {', '.join(s + '://' for s in f.schemes)}  ({f.name}, {f.kind}, plugin {f.plugin})")
        if f.description:
            _print(f"      {f.description}")
        _print(f"      capabilities: {', '.join(f.capabilities) or '-'}")
        if not f.available:
            reason = f.reason or ""
            if f.errno_name and f.errno_name not in reason:
                reason += f" [{f.errno_name}]"
            _print(f"      unavailable here: {reason}")
        for o in f.options:
            _print(f"      {_opt(o):<24} {o['doc']}")
    _print("options every transport takes (URL query or keyword):")
    for o in common:
        _print(f"      {_opt(o):<24} {o['doc']}")
    _print("hooks (implementations in call order):")
    for h in hooks:
        impls = h["implementations"]
        assert isinstance(impls, list)
        kind = "awaited" if h["awaited"] else "sync"
        _print(f"  {h['hook']:<26} {kind:<8} {', '.join(impls) or '(none)'}")
        _print(f"      {h['summary']}")
    return 0
