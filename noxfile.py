"""Developer and CI sessions for trio-conduit.

Needs nothing but ``python3 -m pip install nox`` (Python 3.11). Sessions:

* ``check``     -- install the project and run ``conduit check`` (the README's main job)
* ``tests``     -- the whole test suite, interop with real peers included
* ``interop``   -- only the tests that talk to real peers (``pytest -m interop``)
* ``lint``      -- ``ruff check`` and ``ruff format --check``
* ``typecheck`` -- ``mypy --strict`` on the core and the first-party plugins
* ``docs``      -- ``sphinx-build -W`` (warnings are errors)
* ``bench``     -- ``conduit bench`` (arguments after ``--`` go to it)

``tests`` and ``interop`` install the system tools the interop tests drive
(ncat, socat, iptables, iproute2, nmap, ndiff; the proxies dante-server, tinyproxy,
squid and microsocks) with apt when they are missing and the
session runs as root; otherwise they warn and go on (those tests then skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

# Run on the interpreter nox runs on when it is 3.11 (a fresh machine's pyenv
# python3), else look for python3.11 on PATH.
PYTHON = None if sys.version_info[:2] == (3, 11) else "3.11"

LINT_PATHS = ["src", "plugins", "tests", "docs", "tools", "noxfile.py"]
ROT13_PLUGIN = "./docs/examples/conduit-rot13"

#: Debian packages the interop and network-namespace tests use: package -> a program it provides.
APT_PACKAGES = {
    "ncat": "ncat",
    "socat": "socat",
    "iptables": "iptables",
    "iproute2": "ip",
    "nmap": "nmap",
    "ndiff": "ndiff",  # compares our -oX with nmap's (scan interop)
    "dante-server": "danted",
    "tinyproxy": "tinyproxy",
    "squid": "squid",
    "microsocks": "microsocks",
    "g++": "g++",  # builds the UDT interop peer against libudt
    "libudt-dev": "libudt-dev",  # no program: found by dpkg-query
    "openssl": "openssl",  # s_server / s_client: TLS interop
    "gnutls-bin": "gnutls-cli",  # gnutls-serv / gnutls-cli: TLS interop
}

_apt_updated = False


def install_project(
    session: nox.Session, *extras: str, rot13: bool = False, also: tuple[str, ...] = ()
) -> None:
    """Install trio-conduit (not editable) with ``extras``, plus extra requirements.

    ``rot13=True`` also installs the example third-party plugin package as a real
    distribution, so the tests prove discovery through the ``trio_conduit`` entry
    point group. Everything goes in one pip call: the plugin's dependency on
    trio-conduit is satisfied by the checkout, never looked up elsewhere.
    """
    project = f".[{','.join(extras)}]" if extras else "."
    requirements = [project, *also]
    if rot13:
        requirements.append(ROT13_PLUGIN)
    # Local directories are always rebuilt and reinstalled, so a reused venv runs current code.
    session.install(*requirements)


def _missing_apt_packages() -> list[str]:
    missing = []
    for package, program in APT_PACKAGES.items():
        if shutil.which(program) is not None:
            continue
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


def install_system_tools(session: nox.Session) -> None:
    """apt-get install the interop peers that are missing (root only; ``apt-get update`` once)."""
    global _apt_updated
    if not sys.platform.startswith("linux") or shutil.which("apt-get") is None:
        session.warn("not a Debian-like system: install ncat, socat, iptables, iproute2, nmap yourself")
        return
    missing = _missing_apt_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        session.warn(
            f"missing {' '.join(missing)} and not root: not installing them; "
            "the tests that need them will be skipped"
        )
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        session.run("apt-get", "update", "-q", external=True, env=env)
        _apt_updated = True
    # Never let the packages start their services (squid and danted would listen on every
    # interface with their default configuration): the tests start their own, on loopback.
    guard = "/usr/sbin/policy-rc.d"
    made_guard = not os.path.exists(guard)
    if made_guard:
        with open(guard, "w") as f:
            f.write(
                "#!/bin/sh\n# trio-conduit's noxfile: do not start services during this install\nexit 101\n"
            )
        os.chmod(guard, 0o755)
    try:
        session.run(
            "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, external=True, env=env
        )
    finally:
        if made_guard:
            os.unlink(guard)


@nox.session(python=PYTHON)
def check(session: nox.Session) -> None:
    """Install trio-conduit and run ``conduit check``: transports, availability, loopback round trips."""
    install_project(session)
    session.run("conduit", "check", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite, interop with real peers (ncat, socat) included."""
    install_system_tools(session)
    install_project(session, "test", rot13=True)
    # With a selection of our own (-k, a path) an empty result is not a failure.
    codes = [0, 5] if session.posargs else [0]
    session.run("pytest", *session.posargs, success_codes=codes)


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Only the tests against real peers (``-m interop``)."""
    install_system_tools(session)
    install_project(session, "test", rot13=True)
    session.run("pytest", "-m", "interop", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict (configured in pyproject.toml) on the core, the first-party plugins and tools."""
    install_project(session, "test", also=("mypy>=1.11",))  # the pytest plugin is typed against pytest
    session.run("mypy", "src/trio_conduit", "plugins", "tools/kernel/run.py", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML docs; any Sphinx warning fails the build."""
    install_project(session, "docs")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", *session.posargs
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """``conduit bench``: the pool against raw trio (arguments after ``--`` go to it)."""
    install_project(session, also=("python-socks[trio]>=2.4",))  # the SOCKS5 connect comparison
    session.run("conduit", "bench", *session.posargs)


@nox.session(python=PYTHON)
def kernel(session: nox.Session) -> None:
    """The kernel lane: ``tests/kernel`` (SCTP, vsock) in a Debian kernel under QEMU.

    ``tools/kernel/run.py`` fetches and caches the kernel and boots it with the
    host's / read-only; the guest runs this session's interpreter on
    ``tests/kernel`` (arguments after ``--`` go to pytest). Python is 10-20x
    slower in the guest, so the bytecode is made here first: compileall, and a
    collection pass that writes pytest's assertion-rewritten modules.
    """
    if shutil.which("socat") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        apt = ("apt-get", "install", "-y", "-q", "--no-install-recommends")
        session.run(*apt, "socat", external=True, env={"DEBIAN_FRONTEND": "noninteractive"})
    # The test extra without hypothesis: pytest-trio imports it when present (~15 s in the guest).
    install_project(session, also=("pytest>=8", "pytest-trio>=0.8", "pytest-timeout>=2.3"))
    session.run("python", "-m", "pip", "uninstall", "-y", "-q", "hypothesis", silent=True)
    session.run("python", "-m", "compileall", "-q", "tests", silent=True)
    # tests/kernel, plus the TLS-over-SCTP test that lives with the TLS tests.
    pytest_args = ["tests/kernel", "tests/tls/test_sctp.py", "-p", "no:cacheprovider"]
    session.run("python", "-m", "pytest", "--collect-only", "-q", *pytest_args, silent=True)
    python = os.path.join(session.bin, "python")
    session.run("python", "tools/kernel/run.py", "--", python, "-m", "pytest", *pytest_args, *session.posargs)
