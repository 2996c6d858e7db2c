"""What a finished scan looks like: nmap's human table, its XML (``-oX``, read by
``ndiff``), its grepable lines (``-oG``), and JSON lines.

Like nmap, a host's report lists every port of a state with at most
:data:`MAX_SHOWN_PER_STATE` ports (open ports always), and counts the rest
("Not shown: 65531 closed tcp ports (conn-refused)"; ``<extraports>`` in XML).
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from xml.sax.saxutils import quoteattr

from .._version import __version__
from ._engine import PortState, ScanReason, ScanResult

__all__ = ["HostReport", "ScanReport", "format_ports", "json_line", "service_name"]

#: nmap's threshold at verbosity 0: a state with more ports than this is counted, not listed.
MAX_SHOWN_PER_STATE: Final = 25
#: Where nmap keeps its service table (nmap-services), first found wins; else /etc/services.
SERVICE_FILES: Final = ("/usr/share/nmap/nmap-services", "/usr/local/share/nmap/nmap-services")
XML_VERSION: Final = "1.05"


@functools.cache
def _services() -> dict[tuple[int, str], str]:
    table: dict[tuple[int, str], str] = {}
    for path in SERVICE_FILES:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 2 or line.startswith("#") or "/" not in fields[1]:
                continue
            number, _, proto = fields[1].partition("/")
            if number.isdigit():
                table.setdefault((int(number), proto), fields[0])
        return table
    return table


def service_name(port: int, protocol: str) -> str:
    """The service nmap would name for ``port``/``protocol`` (its table), else ``unknown``."""
    name = _services().get((port, protocol))
    if name is None and not _services():
        import socket

        try:
            name = socket.getservbyport(port, protocol)
        except (OSError, OverflowError):
            name = None
    return name or "unknown"


@functools.lru_cache(maxsize=1024)
def _json_around_port(host: str, protocol: str, state: PortState, reason: ScanReason) -> tuple[str, str]:
    before = json.dumps({"host": host})[:-1] + ', "port": '
    after = ", " + json.dumps({"protocol": protocol, "state": str(state), "reason": str(reason)})[1:]
    return before, after


def json_line(result: ScanResult) -> str:
    """``json.dumps(result.as_dict())``, from the text around the port number, which is the
    same for every port of a host with one state and reason (a full scan's many closed ones)."""
    before, after = _json_around_port(result.host, result.protocol, result.state, result.reason)
    return f"{before}{result.port}{after}"


def format_ports(ports: Iterable[int]) -> str:
    """``[1, 2, 3, 80]`` -> ``"1-3,80"`` (what :func:`parse_ports` reads back)."""
    out: list[str] = []
    run: list[int] = []
    for port in sorted(set(ports)):
        if run and port == run[-1] + 1:
            run.append(port)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [port]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


@dataclass
class HostReport:
    """One host's results, by port."""

    address: str
    protocol: str
    results: dict[int, ScanResult] = field(default_factory=dict)

    def counts(self) -> Counter[PortState]:
        return Counter(r.state for r in self.results.values())

    def hidden_states(self) -> list[PortState]:
        """The states that are counted rather than listed (nmap's rule)."""
        counts = self.counts()
        return [
            state
            for state in PortState
            if state is not PortState.OPEN and counts[state] > MAX_SHOWN_PER_STATE
        ]

    def shown(self) -> list[ScanResult]:
        hidden = set(self.hidden_states())
        return [self.results[p] for p in sorted(self.results) if self.results[p].state not in hidden]

    def hidden_reasons(self, state: PortState) -> Counter[str]:
        return Counter(str(r.reason) for r in self.results.values() if r.state is state)

    def not_shown_text(self) -> str:
        """``65531 closed tcp ports (conn-refused)``, states joined by commas; empty if none."""
        parts = []
        counts = self.counts()
        for state in sorted(self.hidden_states(), key=lambda s: -counts[s]):
            reasons = self.hidden_reasons(state)
            why = ", ".join(
                f"{n} {reason}" if len(reasons) > 1 else reason for reason, n in reasons.most_common()
            )
            parts.append(f"{counts[state]} {state} {self.protocol} ports ({why})")
        return ", ".join(parts)


@dataclass
class ScanReport:
    """A finished scan: its hosts in order, the ports asked for, the command line, the times."""

    protocol: str
    ports: Sequence[int]
    args: str
    start: float = field(default_factory=time.time)
    end: float = 0.0
    hosts: dict[str, HostReport] = field(default_factory=dict)

    def add_host(self, address: str) -> None:
        self.hosts.setdefault(address, HostReport(address, self.protocol))

    def add(self, result: ScanResult) -> None:
        host = self.hosts.get(result.host)
        if host is None:
            host = self.hosts[result.host] = HostReport(result.host, self.protocol)
        host.results[result.port] = result

    def finish(self) -> None:
        self.end = time.time()

    @property
    def elapsed(self) -> float:
        return max(0.0, self.end - self.start)

    # -- the human table ---------------------------------------------------------------
    def human(self) -> str:
        lines = [f"Starting conduit scan at {_stamp(self.start)}"]
        for host in self.hosts.values():
            lines.append(f"conduit scan report for {host.address}")
            hidden = host.not_shown_text()
            if hidden:
                lines.append(f"Not shown: {hidden}")
            shown = host.shown()
            if shown:
                rows = [("PORT", "STATE", "SERVICE", "REASON")]
                rows += [
                    (f"{r.port}/{r.protocol}", str(r.state), service_name(r.port, r.protocol), str(r.reason))
                    for r in shown
                ]
                widths = [max(len(row[i]) for row in rows) for i in range(3)]
                lines += [
                    f"{row[0]:<{widths[0]}} {row[1]:<{widths[1]}} {row[2]:<{widths[2]}} {row[3]}".rstrip()
                    for row in rows
                ]
            elif not hidden:
                lines.append("(no ports scanned)")
            lines.append("")
        count = len(self.hosts)
        addresses = "address" if count == 1 else "addresses"
        lines.append(f"conduit done: {count} IP {addresses} scanned in {self.elapsed:.2f} seconds")
        return "\n".join(lines) + "\n"

    # -- nmap's XML ------------------------------------------------------------------------
    def xml(self) -> str:
        start, end = int(self.start), int(self.end)
        scan_type = (
            "udp" if self.protocol == "udp" else ("sctpinit" if self.protocol == "sctp" else "connect")
        )
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            "<!DOCTYPE nmaprun>",
            f'<nmaprun scanner="conduit" args={quoteattr(self.args)} start="{start}" '
            f"startstr={quoteattr(_stamp(self.start))} version={quoteattr(_version())} "
            f'xmloutputversion="{XML_VERSION}">',
            f'<scaninfo type="{scan_type}" protocol="{self.protocol}" numservices="{len(self.ports)}" '
            f'services="{format_ports(self.ports)}"/>',
            '<verbose level="0"/>',
            '<debugging level="0"/>',
        ]
        for host in self.hosts.values():
            family = "ipv6" if ":" in host.address else "ipv4"
            out.append(f'<host starttime="{start}" endtime="{end}">')
            out.append('<status state="up" reason="user-set" reason_ttl="0"/>')
            out.append(f'<address addr="{host.address}" addrtype="{family}"/>')
            out.append("<hostnames>\n</hostnames>")
            out.append("<ports>")
            counts = host.counts()
            for state in host.hidden_states():
                reasons = host.hidden_reasons(state)
                out.append(f'<extraports state="{state}" count="{counts[state]}">')
                for reason, n in reasons.most_common():
                    ports = sorted(
                        p for p, r in host.results.items() if r.state is state and str(r.reason) == reason
                    )
                    out.append(
                        f'<extrareasons reason="{reason}" count="{n}" proto="{self.protocol}" '
                        f'ports="{format_ports(ports)}"/>'
                    )
                out.append("</extraports>")
            out.extend(
                f'<port protocol="{r.protocol}" portid="{r.port}"><state state="{r.state}" '
                f'reason="{r.reason}" reason_ttl="0"/><service name="{service_name(r.port, r.protocol)}" '
                'method="table" conf="3"/></port>'
                for r in host.shown()
            )
            out.append("</ports>")
            out.append("</host>")
        count = len(self.hosts)
        summary = (
            f"conduit done at {_stamp(self.end)}; {count} IP address{'es' if count != 1 else ''} "
            f"({count} host{'s' if count != 1 else ''} up) scanned in {self.elapsed:.2f} seconds"
        )
        out.append(
            f'<runstats><finished time="{end}" timestr={quoteattr(_stamp(self.end))} '
            f'summary={quoteattr(summary)} elapsed="{self.elapsed:.2f}" exit="success"/>'
            f'<hosts up="{count}" down="0" total="{count}"/>'
        )
        out.append("</runstats>")
        out.append("</nmaprun>")
        return "\n".join(out) + "\n"

    # -- grepable ------------------------------------------------------------------------------
    def grepable(self) -> str:
        lines = [f"# conduit {_version()} scan initiated {_stamp(self.start)} as: {self.args}"]
        for host in self.hosts.values():
            lines.append(f"Host: {host.address} ()\tStatus: Up")
            ports = ", ".join(
                f"{r.port}/{r.state}/{r.protocol}//{service_name(r.port, r.protocol)}///"
                for r in host.shown()
            )
            line = f"Host: {host.address} ()\tPorts: {ports}"
            counts = host.counts()
            hidden = host.hidden_states()
            if hidden:
                line += "\tIgnored State: " + ", ".join(f"{s} ({counts[s]})" for s in hidden)
            lines.append(line)
        count = len(self.hosts)
        lines.append(
            f"# conduit done at {_stamp(self.end)} -- {count} IP address{'es' if count != 1 else ''} "
            f"({count} host{'s' if count != 1 else ''} up) scanned in {self.elapsed:.2f} seconds"
        )
        return "\n".join(lines) + "\n"


def _stamp(when: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(when))


def _version() -> str:
    return __version__
