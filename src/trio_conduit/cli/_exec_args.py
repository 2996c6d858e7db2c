"""The flags of ``--exec``, ``--sh-exec``, ``--broker`` and ``--chat``, checked at parse time.

Kept apart from :mod:`._exec` and :mod:`._broker` (which import trio and run
the sessions) so that building the parser stays cheap: this module imports
only the standard library's light modules.
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import NamedTuple

__all__ = ["ExecSpec", "add_exec_arguments", "check_modes", "parse_exec", "parse_sh_exec"]

#: The shell ``--sh-exec`` runs its command with, as ``SHELL -c CMD``.
SHELL = "/bin/sh"


class ExecSpec(NamedTuple):  # not a dataclass: making one costs start-up time
    """What ``--exec``/``--sh-exec`` runs for each connection: the argument vector, no shell."""

    argv: tuple[str, ...]
    #: The flag's text, for log lines.
    text: str

    def __str__(self) -> str:
        return self.text


def _program_error(program: str) -> str | None:
    """Why ``program`` cannot be run (``None`` when it can, as far as we can tell now)."""
    if "\0" in program:
        return "a program name cannot hold a NUL character"
    if "/" not in program:
        return None if shutil.which(program) else f"{program!r} is not a program on PATH"
    if not os.path.isfile(program):
        return f"{program!r} does not exist"
    if not os.access(program, os.X_OK):
        return f"{program!r} is not executable"
    return None


def parse_exec(text: str) -> ExecSpec:
    """``--exec "PROG ARGS"``: split as a POSIX shell would (quotes, backslashes), run without one."""
    import shlex  # here, not at the top: only --exec needs it (start-up time)

    try:
        argv = shlex.split(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise argparse.ArgumentTypeError(f"cannot split {text!r}: {exc}") from None
    if not argv:
        raise argparse.ArgumentTypeError("an empty command (give a program and its arguments)")
    if any("\0" in arg for arg in argv[1:]):
        raise argparse.ArgumentTypeError("an argument cannot hold a NUL character")
    error = _program_error(argv[0])
    if error:
        raise argparse.ArgumentTypeError(error)
    return ExecSpec(tuple(argv), text)


def parse_sh_exec(text: str) -> ExecSpec:
    """``--sh-exec "CMD"``: ``/bin/sh -c CMD``."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty command")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a command cannot hold a NUL character")
    return ExecSpec((SHELL, "-c", text), text)


def add_exec_arguments(parser: argparse.ArgumentParser, *, listening: bool) -> None:
    """``-e/--exec`` and ``-c/--sh-exec`` (and, listening, ``--broker`` and ``--chat``)."""
    what = "run a program per connection" + (", or join clients together" if listening else "")
    group = parser.add_argument_group("programs and hubs", what)
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "-e",
        "--exec",
        dest="exec",
        metavar="'PROG ARGS'",
        type=parse_exec,
        help="run PROG for each connection, its stdin and stdout the connection (split like a shell "
        "would, but no shell runs); CONDUIT_REMOTE_ADDR etc. in its environment (as ncat -e)",
    )
    which.add_argument(
        "-c",
        "--sh-exec",
        dest="exec",
        metavar="'CMD'",
        type=parse_sh_exec,
        help=f"the same through {SHELL} -c CMD (as ncat -c)",
    )
    if listening:
        group.add_argument(
            "--broker",
            action="store_true",
            help="a hub: what one client sends goes to every other client (implies --keep-open)",
        )
        group.add_argument(
            "--chat",
            action="store_true",
            help="a broker for people: lines tagged <userN>, control characters escaped, "
            "join and leave notices (implies --broker)",
        )


def check_modes(args: argparse.Namespace) -> str | None:
    """The usage error in the mode flags, or ``None``.

    ``--chat`` sets ``broker``; ``--broker`` sets ``keep_open``.
    """
    listening = args.command == "listen"
    if listening and args.chat:
        args.broker = True
    chosen = [
        flag
        for flag, on in (
            ("--exec/--sh-exec", args.exec is not None),
            ("--broker/--chat", listening and args.broker),
            ("--echo", listening and args.echo),
            ("--socks5", listening and args.socks5),
        )
        if on
    ]
    if len(chosen) > 1:
        return f"{' and '.join(chosen)} cannot be used together"
    if listening and args.broker:
        if args.workers is not None:
            return "--broker/--chat cannot be split across --workers (a worker's clients see only its own)"
        args.keep_open = True
    return None
