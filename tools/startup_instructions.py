"""Instructions each start-up figure costs, by ``valgrind --tool=callgrind``: deterministic.

``conduit bench --only startup`` times the commands (wall clock, medians);
on a loaded machine those are noise, while instruction counts are not. This
runs the same commands (:func:`trio_conduit.bench.startup.commands`, without
ncat's) against the same listeners, each once to write bytecode caches and
then once under callgrind, and prints the instructions and each one's ratio
to ``python -c "import trio"``::

    python tools/startup_instructions.py              # all of them
    python tools/startup_instructions.py conduit_tcp  # the names given

Run it with the interpreter of the environment ``conduit`` is installed in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from trio_conduit.bench import startup


def instructions(argv: list[str], env: dict[str, str]) -> int:
    """The instructions ``argv`` executes (stdin ``x``, as the benchmark gives it)."""
    subprocess.run(argv, input=b"x", capture_output=True, env=env, check=True, timeout=60)
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--dump-instr=no", "--callgrind-out-file=/dev/null", *argv],
        input=b"x",
        capture_output=True,
        env=env,
        check=True,
        timeout=600,
    )
    found = re.search(rb"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind: {done.stderr[-500:]!r}")
    return int(found.group(1))


def main(names: list[str]) -> int:
    if not shutil.which("valgrind"):
        print("valgrind is not installed", file=sys.stderr)
        return 1
    env = startup.environment()
    with startup.listeners() as (tcp_port, tls_port, ca):
        cmds = startup.commands(tcp_port, tls_port, ca, "")
        unknown = set(names) - set(cmds)
        if unknown:
            print(f"unknown: {', '.join(sorted(unknown))}; known: {', '.join(cmds)}", file=sys.stderr)
            return 2
        wanted = ["python_import_trio", *[n for n in names or cmds if n != "python_import_trio"]]
        counts = {name: instructions(cmds[name], env) for name in wanted}
    base = counts["python_import_trio"]
    for name, count in counts.items():
        print(f"{name:20} {count / 1e6:8.1f}M  x{count / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
