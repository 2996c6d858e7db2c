"""``conduit bench``: its options, which benchmarks run, and the report.

The benchmarks are trio-conduit's own (:data:`trio_conduit.bench.BENCHMARKS`)
and then every plugin's (the ``conduit_benchmarks`` hook), each a
:class:`trio_conduit.Benchmark`. Without ``--only``, those marked ``default``
run (and ``cli`` with ``--cli``). Each prints its lines once all have run;
``--json`` prints all figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import cast

from .._benchmark import Benchmark
from .._errors import PluginError
from .._plugins import global_scope

__all__ = ["add_arguments", "benchmarks", "run"]


def benchmarks() -> list[Benchmark]:
    """trio-conduit's benchmarks, then the plugins' in registration order.

    Raises :exc:`ModuleNotFoundError` if ``trio_conduit.bench`` is not
    installed; :class:`~trio_conduit.PluginError` if a plugin returns
    something else or a name already taken.
    """
    from ..bench import BENCHMARKS

    found = list(BENCHMARKS)
    hook = global_scope().pm.hook.conduit_benchmarks
    for impl in reversed(hook.get_hookimpls()):  # pluggy calls the last registered first
        for bench in cast("Iterable[object] | None", impl.function()) or ():
            if not isinstance(bench, Benchmark):
                raise PluginError(f"plugin {impl.plugin_name!r}: conduit_benchmarks returned {bench!r}")
            if any(bench.name == other.name for other in found):
                raise PluginError(f"plugin {impl.plugin_name!r}: a benchmark {bench.name!r} exists already")
            found.append(bench)
    return found


def add_arguments(parser: argparse.ArgumentParser, found: list[Benchmark]) -> None:
    parser.add_argument("--repeat", type=int, default=5, help="runs per implementation (default 5)")
    parser.add_argument("--bulk-mib", type=int, default=1024, help="MiB per bulk run (default 1024)")
    parser.add_argument(
        "--connections", type=int, default=2000, help="connections per rate run (default 2000)"
    )
    parser.add_argument(
        "--cli-mib", type=int, default=1024, help="MiB for the --cli pipe test (default 1024)"
    )
    parser.add_argument(
        "--proxy-connections",
        type=int,
        default=300,
        help="connects per implementation and run for socks5 (default 300)",
    )
    parser.add_argument(
        "--only",
        choices=[bench.name for bench in found],
        action="append",
        help="run only these (repeatable)",
    )
    parser.add_argument(
        "--tls-connections", type=int, default=500, help="full TLS handshakes per rate run (default 500)"
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=10_000,
        help="idle connections held open for the memory benchmark (default 10000)",
    )
    parser.add_argument("--cli", action="store_true", help="also pipe data through conduit vs ncat")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "benchmarks:\n" + "\n".join(
        f"  {bench.name:10} {bench.help}" + ("" if bench.default else "; not by default") for bench in found
    )


def run(args: argparse.Namespace, found: list[Benchmark]) -> int:
    """Run the chosen benchmarks (``args.only``, or the default ones), then print their figures."""
    only = set(args.only or [b.name for b in found if b.default] + (["cli"] if args.cli else []))
    done = [(bench, bench.run(args)) for bench in found if bench.name in only]
    if args.json:
        print(json.dumps({name: r for _, results in done for name, r in results.items()}, indent=2))
        return 0
    for bench, results in done:
        for line in bench.format(results):
            print(line)
    return 0
