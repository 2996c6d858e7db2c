"""``conduit scan URL... -p PORTS``: nmap's connect (and UDP) scan over trio-conduit's scanner."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import aclosing
from pathlib import Path

from .._scan._ports import PortSpecError, parse_ports

__all__ = ["add_arguments", "run_scan"]

#: nmap's default for a connect scan is its top 1000 ports; ours is the first 1000.
DEFAULT_PORTS = "1-1000"


def _ports(text: str) -> str:
    try:
        parse_ports(text)
    except PortSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "urls",
        metavar="URL",
        nargs="+",
        help="tcp://host, udp://host, sctp://host; a host may be a CIDR block (tcp://10.0.0.0/24)",
    )
    sub.add_argument(
        "-p",
        dest="ports",
        metavar="PORTS",
        type=_ports,
        default=DEFAULT_PORTS,
        help=f"ports as nmap writes them: 22,80,1000-2000; - (or -p-) for all (default {DEFAULT_PORTS})",
    )
    sub.add_argument(
        "--json", action="store_true", help="JSON lines on stdout: host, port, protocol, state, reason"
    )
    sub.add_argument(
        "-oX", dest="xml_file", metavar="FILE", help="write nmap's XML format to FILE (- for stdout)"
    )
    sub.add_argument(
        "-oG", dest="grep_file", metavar="FILE", help="write nmap's grepable format to FILE (- for stdout)"
    )
    sub.add_argument("--retries", type=int, default=1, help="extra probes for a silent port (default 1)")
    sub.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="N",
        help="at most N probes in flight (default: the fd limit)",
    )
    sub.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def _write(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(target).write_text(text)


async def run_scan(args: argparse.Namespace, argv: list[str]) -> int:
    """Scan, then print the table (or JSON lines as results come), and write -oX/-oG files."""
    # Imported here: the parser (add_arguments) is built for every command, --help included.
    import shlex

    import trio

    from .._scan._driver import ScanStats, expand_hosts, scan, split_target
    from .._scan._report import ScanReport, json_line

    split = [split_target(url) for url in args.urls]
    ports = parse_ports(args.ports)
    scheme = split[0][0]
    report = ScanReport(scheme, ports, "conduit " + shlex.join(argv))
    for _, address in await expand_hosts(host for _, host in split):
        report.add_host(address)
    total = len(report.hosts) * len(ports)
    stats = ScanStats()
    progress = not args.no_progress and sys.stderr.isatty()
    started = last = time.monotonic()
    done = 0
    write = sys.stdout.write
    async with aclosing(
        scan(args.urls, ports, retries=args.retries, max_parallel=args.max_parallel, stats=stats)
    ) as results:
        async for result in results:
            report.add(result)
            done += 1
            if args.json:
                write(json_line(result) + "\n")
            if progress and time.monotonic() - last > 0.2:
                last = time.monotonic()
                rate = done / max(last - started, 1e-9)
                eta = (total - done) / rate if rate else 0.0
                print(
                    f"\rscanned {done}/{total} ports ({100 * done / total:.0f}%), "
                    f"{rate:,.0f} ports/s, ETA {eta:.0f} s ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    report.finish()
    if progress:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    if args.json:
        sys.stdout.flush()
    elif not (args.xml_file == "-" or args.grep_file == "-"):
        sys.stdout.write(report.human())
        sys.stdout.flush()
    if args.xml_file:
        _write(args.xml_file, report.xml())
    if args.grep_file:
        _write(args.grep_file, report.grepable())
    await trio.lowlevel.checkpoint()
    return 0
