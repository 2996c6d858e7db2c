"""The ``conduit`` command line: argument parsing, running a command, reporting its failure.

Exit status: 0 success; 1 a failure at run time (refused, timed out,
unreachable, a broken connection, a failed ``check``), reported as one line
``conduit: <message>`` on stderr; 2 a usage error — bad arguments, and a URL
or option the transport rejects (:class:`~trio_conduit.AddressError`); 128 + N
when signal N (SIGINT, SIGTERM, SIGHUP) ended the command, which then closes
its connections and listeners (removing unix socket files) before it exits,
quietly. ``conduit listen`` is the exception for SIGTERM: it drains (stops
accepting at once, lets live connections finish within ``--drain-timeout``)
and exits 0; SIGINT stays immediate.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Container, Sequence
from functools import partial
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

from .._version import __version__
from ._access import add_access_arguments
from ._exec_args import add_exec_arguments, check_modes
from ._startup import parse_linger, parse_seconds, reserve_standard_fds
from ._tls import add_tls_arguments, tls_url

if TYPE_CHECKING:
    from .._benchmark import Benchmark

# Start-up: ``--version`` and ``--help`` build the parser and stop, so this module imports
# no Trio and no transport at the top; each command's modules (``_relay``, ``_check``,
# ``_bench``, ...) are imported by :func:`_prepare` when that command runs (the docs'
# architecture page, "Start-up").

__all__ = ["build_parser", "command", "main"]

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: ``conduit listen --drain-timeout``'s default, seconds.
DRAIN_TIMEOUT: Final = 10.0


class OnTerm(Protocol):
    """What SIGTERM does instead of cancelling the command (``conduit listen``: a drain)."""

    requested: bool

    async def start(self) -> None: ...


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def with_options(url: str, options: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``-o key=value`` options in its query string (replacing the same keys).

    The transport parses query values with its options' own parsers, so
    ``-o nodelay=0`` means what ``?nodelay=0`` means.
    """
    if not options:
        return url
    base, _, query = url.partition("?")
    given = dict(options)
    pairs = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k not in given]
    pairs.extend(given.items())
    return f"{base}?{urllib.parse.urlencode(pairs)}"


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line: ``conduit: connect: <what> (-h for help)``."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("conduit").strip()
        prefix = f"{where}: " if where else ""
        _say(f"{prefix}{message} (-h for help)")
        raise SystemExit(EXIT_USAGE)


def _add_common_relay(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("url", metavar="URL", help="tcp://host:port, udp://host:port, unix:///path, ...")
    sub.add_argument(
        "-i",
        "--idle-timeout",
        metavar="TIME",
        type=parse_seconds,
        default=None,
        help="close a connection when no data has moved either way for TIME (as ncat -i; "
        "seconds, or with a unit: 500ms, 30s, 2m, 1h)",
    )
    sub.add_argument(
        "-o",
        "--option",
        dest="options",
        metavar="KEY=VALUE",
        type=_option,
        action="append",
        default=[],
        help="a transport option, as if in the URL's query string (repeatable)",
    )
    sub.add_argument(
        "--lines",
        action="store_true",
        help="datagrams: one datagram per stdin line; received datagrams end with a newline",
    )
    sub.add_argument(
        "--linger",
        metavar="S",
        type=parse_linger,
        default=1.0,
        help="datagrams: after stdin's end, keep printing replies until none came for S "
        "seconds (default 1; inf: until interrupted)",
    )
    direction = sub.add_mutually_exclusive_group()
    direction.add_argument(
        "--send-only",
        action="store_true",
        help="only send stdin; what arrives is read and dropped. At stdin's end: close and exit",
    )
    direction.add_argument(
        "--recv-only",
        action="store_true",
        help="only receive; stdin is never read and nothing is sent",
    )
    sub.add_argument(
        "--no-splice",
        action="store_true",
        help="streams: plain reads and writes only (no splice(2)/sendfile(2) fast path)",
    )


def _check_arguments(check: argparse.ArgumentParser) -> None:
    check.description = (
        "List plugins and transports, say which transports this kernel "
        "has, and run a loopback round trip over each available one."
    )
    check.add_argument("--json", action="store_true", help="print one JSON document")


def _connect_arguments(connect: argparse.ArgumentParser) -> None:
    connect.description = (
        "Connect to URL and relay standard input to it and it to "
        "standard output. On stdin's end the sending side is closed "
        "(half-close) and the peer's data is read until it closes."
    )
    _add_common_relay(connect)
    add_tls_arguments(connect, listening=False)
    add_exec_arguments(connect, listening=False)
    connect.add_argument(
        "-w",
        "--wait",
        "--timeout",
        dest="timeout",
        metavar="TIME",
        type=parse_seconds,
        help="give up connecting after TIME (ncat's -w/--wait; seconds, or 500ms, 2m, ...)",
    )
    connect.add_argument(
        "-z",
        dest="zero_io",
        action="store_true",
        help="connect (TLS: and handshake), then close: exit 0 if it connected, 1 if not; no data sent",
    )
    connect.add_argument("--local", metavar="ADDR", help="bind to this local address (host:port, or a path)")
    connect.add_argument(
        "--proxy",
        metavar="URL",
        action="append",
        default=[],
        help="reach URL through this proxy; repeat for a chain, first hop first "
        "(http://, https://, socks4://, socks4a://, socks5://, socks5h://, [user:pass@]host:port)",
    )


def _listen_arguments(listen: argparse.ArgumentParser) -> None:
    listen.description = (
        "Listen on URL. Without --keep-open: relay the first "
        "connection (datagrams: the first peer) to stdin/stdout, then "
        "exit. With --keep-open: serve connections until interrupted, "
        "their data to stdout, stdin to all of them."
    )
    _add_common_relay(listen)
    add_tls_arguments(listen, listening=True)
    add_exec_arguments(listen, listening=True)
    listen.add_argument(
        "-k", "--keep-open", action="store_true", help="serve many connections, each its own task"
    )
    listen.add_argument("--echo", action="store_true", help="echo each connection's data back (no stdio)")
    listen.add_argument(
        "--socks5",
        action="store_true",
        help="be a proxy server on URL: SOCKS5 (CONNECT, UDP ASSOCIATE), SOCKS4/4a and HTTP CONNECT",
    )
    listen.add_argument(
        "--drain-timeout",
        metavar="S",
        type=parse_linger,
        default=DRAIN_TIMEOUT,
        help="on SIGTERM: stop accepting, give live connections S seconds to finish, then exit 0 "
        f"(default {DRAIN_TIMEOUT:g}; 0: at once). SIGINT stops at once",
    )
    listen.add_argument(
        "--workers",
        metavar="N",
        type=_count,
        help="with --keep-open or --socks5: N worker processes sharing the port (SO_REUSEPORT), "
        "restarted when one dies",
    )
    add_access_arguments(listen)
    listen.add_argument(
        "--max-conns",
        metavar="N",
        type=_count,
        help="with --keep-open: serve at most N connections at once (others wait)",
    )


def _scan_arguments(scan: argparse.ArgumentParser) -> None:
    from ._scan import add_arguments as add_scan_arguments  # the port-set parser: scan's alone

    scan.description = (
        "Scan PORTS on each URL's host and print nmap's table of interesting ports; "
        "--json, -oX (nmap XML, read by ndiff) and -oG (grepable) for machines. "
        "Exit status 0 when the scan ran, whatever it found."
    )
    add_scan_arguments(scan)


def _plugins_arguments(plugins: argparse.ArgumentParser) -> None:
    plugins.add_argument("--json", action="store_true", help="print one JSON document")


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    bench.set_defaults(bench_error=None)


#: Each command: its line in ``conduit --help``, and what adds its description and arguments.
_COMMANDS: Final[dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]]] = {
    "check": ("plugins, transports, availability and a loopback round trip each", _check_arguments),
    "connect": ("connect to URL; stdin to it, it to stdout (like ncat)", _connect_arguments),
    "listen": ("accept on URL; one connection to stdio, or many (like ncat -l)", _listen_arguments),
    "scan": ("port scan: open, closed, filtered per port (like nmap -sT / -sU)", _scan_arguments),
    "plugins": ("plugins, transports and their options, hook implementations", _plugins_arguments),
    "bench": ("benchmarks (trio_conduit.bench)", _bench_arguments),
}


def build_parser(
    bench_wanted: bool = False, commands: Container[str] | None = None
) -> argparse.ArgumentParser:
    """The argument parser; ``bench_wanted`` finds the benchmarks (trio_conduit.bench's, plugins').

    ``commands``: the commands whose arguments are wanted (default: all). When they are
    known commands, the parser has those alone: ``conduit CMD ...`` builds CMD's parser
    and no other (start-up time). Otherwise every command gets its name and line of help
    only, which is all that ``conduit --help`` and an unknown command's error show.
    """
    parser = _Parser(
        prog="conduit",
        description="Open, accept and test network connections over trio-conduit's transports.",
        epilog="Exit status: 0 ok, 1 failure (one line on stderr), 2 usage error or bad URL, "
        "128+N ended by signal N.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="trace to stderr: -v connects/accepts/closes, -vv sockets and hooks, -vvv every read and write",
    )
    parser.add_argument("--version", action="version", version=f"conduit (trio-conduit) {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    known = [name for name in _COMMANDS if commands is not None and name in commands]
    for name, (line, add_arguments) in _COMMANDS.items():
        if known and name not in known:
            continue
        sub = subs.add_parser(name, help=line)
        if commands is None or name in commands:
            add_arguments(sub)
    if bench_wanted:
        from .._errors import PluginError
        from . import _bench

        bench = subs.choices["bench"]
        found: list[Benchmark]
        try:
            found = _bench.benchmarks()
        except ModuleNotFoundError as exc:
            if exc.name != "trio_conduit.bench":
                raise
            bench.set_defaults(
                bench_error="the benchmark package trio_conduit.bench is not part of this installation"
            )
        except PluginError as exc:
            bench.set_defaults(bench_error=str(exc))
        else:
            _bench.add_arguments(bench, found)
            bench.set_defaults(benchmarks=found)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand word: the first argument that is not an option (global options take no
    value), or the one after ``--``."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if not arg.startswith("-"):
            return arg
    return None


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


def _say(line: str) -> None:
    try:
        print(f"conduit: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_trio(command: Callable[[], Awaitable[int]], on_term: OnTerm | None = None) -> int:
    """Run ``command`` under trio; SIGINT/SIGTERM/SIGHUP cancel it cleanly (exit 128 + signal).

    With ``on_term``, a first SIGTERM starts ``on_term`` instead (which ends the command
    its own way, with its own status); a second SIGTERM, or SIGINT, cancels at once.
    """
    import trio

    result = EXIT_FAILURE
    caught: int | None = None

    async def runner() -> None:
        nonlocal result, caught
        with trio.open_signal_receiver(*_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal caught
                    async for signum in signals:
                        if signum == signal.SIGTERM and on_term is not None and not on_term.requested:
                            nursery.start_soon(on_term.start)
                            continue
                        caught = signum
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)
                result = await command()
                nursery.cancel_scope.cancel()

    try:
        trio.run(runner)
    except BaseException:
        if caught is None:
            raise
        # Whatever went wrong while winding down, the signal is the reason we stopped.
    return 128 + caught if caught is not None else result


def _report(exc: BaseException, verbose: int) -> int:
    """Print the one-line error for ``exc`` (a group: its first leaf); the exit status."""
    import traceback

    import trio

    from .._errors import AddressError
    from ._report import BROKEN, error_line, leaves
    from ._stdio import OutputClosed

    found = [e for e in leaves(exc) if not isinstance(e, trio.Cancelled)]
    first = found[0] if found else exc
    if isinstance(first, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(first, OutputClosed):
        return 0  # stdout went away (``| head``): stop quietly, as a SIGPIPE'd filter would, but with 0
    if isinstance(first, AddressError):
        _say(str(first))
        return EXIT_USAGE
    if isinstance(first, BROKEN):
        _say(error_line(first))
        if verbose >= 2:
            traceback.print_exception(first)
        return EXIT_FAILURE
    _say(f"internal error: {error_line(first)}" + ("" if verbose >= 2 else " (-vv shows the traceback)"))
    if verbose >= 2:
        traceback.print_exception(exc)
    return EXIT_FAILURE


def _prepare(args: argparse.Namespace, argv: Sequence[str]) -> Callable[[], int]:
    """Import what the command needs and check what can be checked before it runs; the
    command, to run (it returns the exit status)."""
    if args.command == "check":
        from ._check import run_check

        return partial(_run_trio, lambda: run_check(args.json))
    if args.command == "plugins":
        from ._check import run_plugins

        return partial(run_plugins, args.json)
    if args.command in ("connect", "listen"):
        from ._relay import Drain, run_connect, run_listen

        if args.command == "listen":
            from .._access import AccessRules
            from ._access import access_keywords

            AccessRules.build(**access_keywords(args))  # bad specs: a usage error before anything runs
        url = tls_url(args, with_options(args.url, args.options), listening=args.command == "listen")
        if args.command == "connect":
            return partial(_run_trio, lambda: run_connect(args, url))
        if args.workers is not None:
            from ._workers import Supervisor

            supervisor = Supervisor(args, url, argv)
            return partial(_run_trio, supervisor.run, supervisor)
        drain = Drain(args.drain_timeout)
        return partial(_run_trio, lambda: run_listen(args, url, drain), drain)
    if args.command == "scan":
        from ._scan import run_scan

        return partial(_run_trio, lambda: run_scan(args, list(argv)))
    if args.command == "bench":
        if args.bench_error:
            error: str = args.bench_error
            return partial(_fail, f"bench: {error}")
        from . import _bench

        return partial(_bench.run, args, args.benchmarks)
    raise AssertionError(args.command)  # pragma: no cover


def _fail(line: str) -> int:
    _say(line)
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``conduit`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return _run(list(sys.argv[1:] if argv is None else argv), settle=None)


def command() -> NoReturn:
    """The ``conduit`` program: its console script and ``python -m trio_conduit``.

    :func:`main` for a whole process, which owns its garbage collector. Starting a
    command makes many long-lived objects and almost no garbage: the modules, classes
    and functions of Trio, pluggy, the plugins and this package. Every collection of
    the oldest generation walks all of them, and so does the one at exit. So the
    collector is off while the command starts, and just before it runs, what start-up
    made is frozen (:func:`gc.freeze`: kept out of all later collections) and the
    collector turned on again. Collections from then on, in a long ``listen -k`` too,
    walk only what the command makes. ``conduit connect`` of one byte runs about 10 %
    fewer instructions so (``python tools/startup_instructions.py``). A caller of
    :func:`main` keeps its collector as it is.
    """
    gc.disable()
    raise SystemExit(_run(sys.argv[1:], settle=_settle))


def _settle() -> None:
    gc.freeze()
    gc.enable()


def _run(argv: list[str], settle: Callable[[], None] | None) -> int:
    reserve_standard_fds()
    # Until trio's signal handling takes over, SIGTERM and SIGHUP unwind (atexit runs: an
    # ephemeral TLS key written at start-up is removed) rather than kill the process outright.
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    for signum, handler in previous.items():
        if handler is signal.SIG_DFL:
            signal.signal(signum, _exit_on_signal)
    try:
        return _main(argv, settle)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv: list[str], settle: Callable[[], None] | None) -> int:
    command = _command_of(argv)
    parser = build_parser(bench_wanted=command == "bench", commands=() if command is None else (command,))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        _say("a command is needed: check, connect, listen, scan, plugins or bench (-h for help)")
        return EXIT_USAGE
    if args.command in ("connect", "listen") and (mode_error := check_modes(args)):
        _say(f"{args.command}: {mode_error}")
        return EXIT_USAGE
    if args.command == "listen" and args.max_conns is not None and not (args.keep_open or args.socks5):
        _say("listen: --max-conns needs --keep-open")
        return EXIT_USAGE
    if args.command == "listen" and args.workers is not None and not (args.keep_open or args.socks5):
        _say("listen: --workers needs --keep-open or --socks5")
        return EXIT_USAGE
    if args.command == "connect" and args.zero_io and (args.send_only or args.recv_only):
        _say("connect: -z sends and receives nothing: no --send-only/--recv-only with it")
        return EXIT_USAGE
    if (
        args.command in ("connect", "listen")
        and (args.send_only or args.recv_only)
        and (
            args.exec is not None or (args.command == "listen" and (args.broker or args.echo or args.socks5))
        )
    ):
        _say(
            f"{args.command}: --send-only/--recv-only are for standard input and output; "
            "not with --exec, --sh-exec, --broker, --chat, --echo or --socks5"
        )
        return EXIT_USAGE
    from .._trace import configure_cli_logging, verbosity_level
    from .._trace import logger as trace_logger

    if trace_logger.handlers:  # main() called again in this process: do not stack handlers
        trace_logger.setLevel(verbosity_level(args.verbose))
    else:
        configure_cli_logging(args.verbose)
    try:
        run = _prepare(args, argv)
        if settle is not None:
            settle()
        return run()
    except (Exception, KeyboardInterrupt) as exc:
        return _report(exc, args.verbose)
