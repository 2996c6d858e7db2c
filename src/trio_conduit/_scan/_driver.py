"""The scanner's trio driver: kernel sockets for the :class:`ScanEngine`'s probes.

One task, no task per probe: every probe's socket is non-blocking and registered
in an epoll set of its own, and the task sleeps on that set's descriptor (trio
waits for it like any other fd) until an answer or the engine's next deadline.
Linux only, like the transports it scans over.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import resource
import select
import socket
from _socket import socket as _raw_socket
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from .._errors import AddressError
from .._util import LINGER_ZERO
from ._engine import PortState, Probe, ScanEngine, ScanReason, ScanResult
from ._ports import parse_ports

__all__ = ["SCANNABLE", "ScanStats", "expand_hosts", "raise_nofile_limit", "scan", "split_target"]

#: Schemes the scanner can probe: scheme -> (socket type, protocol, silence state).
#: A stream transport must tell refused from timed out at connect; a datagram one
#: is probed over a connected socket (ICMP port unreachable: closed).
SCANNABLE: Final = {
    "tcp": (socket.SOCK_STREAM, 0, PortState.FILTERED),
    "sctp": (socket.SOCK_STREAM, getattr(socket, "IPPROTO_SCTP", 132), PortState.FILTERED),
    "udp": (socket.SOCK_DGRAM, 0, PortState.OPEN_FILTERED),
}

#: errno values that are about this machine, not the port: back off and retry.
LOCAL_ERRNOS: Final = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EADDRNOTAVAIL,
        errno.EAGAIN,
        errno.EADDRINUSE,
        errno.EINTR,
    }
)
#: errno values that answer for the port.
REASON_OF_ERRNO: Final = {
    errno.ECONNREFUSED: ScanReason.CONN_REFUSED,
    errno.EHOSTUNREACH: ScanReason.HOST_UNREACH,
    errno.ENETUNREACH: ScanReason.NET_UNREACH,
    errno.EACCES: ScanReason.ADMIN_PROHIBITED,
    errno.EPERM: ScanReason.ADMIN_PROHIBITED,
}
#: File descriptors kept free for everything else the process does.
FD_RESERVE: Final = 24
_EPOLL_OUT: Final = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
_EPOLL_IN: Final = select.EPOLLIN | select.EPOLLERR


@dataclass
class ScanStats:
    """What a finished (or stopped) scan did: probes answered, silences, local failures
    (EMFILE & co.: retried, never a port state), the largest number in flight, the bound."""

    answers: int = 0
    silences: int = 0
    local_failures: int = 0
    max_in_flight: int = 0
    max_window: int = 0


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit towards the hard one; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def _fd_bound() -> int:
    soft = raise_nofile_limit()
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 64
    return max(1, soft - used - FD_RESERVE)


def split_target(url: str) -> tuple[str, str]:
    """``scheme://host`` (or ``scheme://CIDR``, ``scheme://[v6]``) -> (scheme, host part)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise AddressError(f"{url!r}: a scan target is scheme://host (tcp://10.0.0.1, udp://[::1])")
    scheme = scheme.lower()
    if scheme not in SCANNABLE:
        raise AddressError(f"{url!r}: cannot scan over {scheme}:// (scannable: {', '.join(SCANNABLE)})")
    host = rest.rstrip("/")
    if host.startswith("[") and "]" in host:
        inner, _, tail = host[1:].partition("]")
        host = inner + tail  # [v6]/64 -> v6/64
    if not host or ("/" in host.split("%")[0] and not _is_cidr(host)):
        raise AddressError(f"{url!r}: no host to scan (ports go in the port set, not the URL)")
    return scheme, host


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


async def expand_hosts(hosts: Iterable[str]) -> list[tuple[int, str]]:
    """(family, address) for each host: a literal, a CIDR block (each address in it), or a
    name (resolved once, its first address)."""
    out: list[tuple[int, str]] = []
    for host in hosts:
        if "/" in host:
            try:
                net = ipaddress.ip_network(host, strict=False)
            except ValueError as exc:
                raise AddressError(f"{host!r}: not a CIDR block ({exc})") from None
            family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
            addrs = [net.network_address] if net.num_addresses == 1 else list(net.hosts())
            out.extend((family, str(a)) for a in addrs)
            continue
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise AddressError(f"{host!r}: cannot resolve ({exc.strerror})") from None
            family, _, _, _, sockaddr = infos[0]
            out.append((int(family), str(sockaddr[0])))
        else:
            out.append((socket.AF_INET6 if addr.version == 6 else socket.AF_INET, str(addr)))
    return out


async def scan(
    targets: str | Sequence[str],
    ports: str | Iterable[int] = "1-1000",
    *,
    retries: int = 1,
    max_parallel: int | None = None,
    initial_timeout: float = 1.0,
    min_timeout: float = 0.1,
    max_timeout: float = 10.0,
    stats: ScanStats | None = None,
) -> AsyncGenerator[ScanResult, None]:
    """Scan ``ports`` on each target (``tcp://host``, ``udp://10.0.0.0/24`` ...); yield a
    :class:`ScanResult` per port as its verdict is reached (not in port order).

    ``ports``: nmap's syntax (``"22,80,1000-2000"``, ``"-"``) or the numbers.
    ``retries``: extra probes for a port that stays silent. ``max_parallel``: an upper
    bound on probes in flight (default: what the open-file limit allows, after raising
    the soft limit to the hard one). ``stats``: filled in as the scan runs.
    Use it as ``async with contextlib.aclosing(scan(...)) as results: async for r in results``
    so that stopping early closes every socket at once.
    """
    urls = [targets] if isinstance(targets, str) else list(targets)
    split = [split_target(url) for url in urls]
    schemes = {scheme for scheme, _ in split}
    if len(schemes) != 1:
        raise AddressError(f"one scheme per scan, not {sorted(schemes)}")
    (scheme,) = schemes
    socktype, proto, silence = SCANNABLE[scheme]
    port_list = parse_ports(ports) if isinstance(ports, str) else sorted(set(ports))
    for port in port_list:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
    hosts = await expand_hosts(host for _, host in split)
    family_of = {addr: family for family, addr in hosts}
    bound = _fd_bound()
    window = bound if max_parallel is None else max_parallel
    engine = ScanEngine(
        ((addr, port) for _, addr in hosts for port in port_list),
        protocol=scheme,
        silence=silence,
        retries=retries,
        max_window=max(1, window),
        initial_timeout=initial_timeout,
        min_timeout=min_timeout,
        max_timeout=max_timeout,
    )
    stats = stats if stats is not None else ScanStats()
    stats.max_window = engine.max_window
    stream = socktype == socket.SOCK_STREAM
    poller = select.epoll()
    by_fd: dict[int, tuple[_raw_socket, Probe]] = {}
    sock_of: dict[Probe, _raw_socket] = {}

    def drop(probe: Probe) -> None:
        sock = sock_of.pop(probe)
        fd = sock.fileno()
        del by_fd[fd]
        poller.unregister(fd)
        sock.close()

    nonblocking = socktype | socket.SOCK_NONBLOCK

    def send(probe: Probe, now: float) -> None:
        try:
            sock = _raw_socket(family_of[probe.host], nonblocking, proto)
        except OSError as exc:
            if exc.errno in LOCAL_ERRNOS:
                engine.local_failure(probe, now)
                return
            raise
        code = sock.connect_ex((probe.host, probe.port))
        if not stream and code == 0:
            try:
                sock.send(b"")
            except OSError as exc:
                code = exc.errno or errno.EIO
        if code == errno.EINPROGRESS and stream:
            # On a near network (loopback, a veth) the answer is often in before connect()
            # returns: a pending error is already the verdict, with no epoll round trip.
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.EINPROGRESS
        if code == errno.EINPROGRESS or (code == 0 and not stream):
            fd = sock.fileno()
            by_fd[fd] = (sock, probe)
            sock_of[probe] = sock
            poller.register(fd, _EPOLL_OUT if stream else _EPOLL_IN)
            return
        finish(probe, sock, code, now)

    def finish(probe: Probe, sock: _raw_socket, code: int, now: float) -> None:
        """``sock`` is done with (closed here); ``code`` is its connect's outcome."""
        if code == 0 and stream:
            if sock.getsockname() == sock.getpeername():  # a self-connect: our own port, not a listener
                code = errno.EADDRINUSE
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)  # close with RST
        sock.close()
        if code == 0:
            engine.answered(probe, ScanReason.SYN_ACK, now)
        elif code in REASON_OF_ERRNO:
            reason = REASON_OF_ERRNO[code]
            if reason is ScanReason.CONN_REFUSED and not stream:
                reason = ScanReason.PORT_UNREACH
            engine.answered(probe, reason, now)
        elif code in LOCAL_ERRNOS:
            engine.local_failure(probe, now)
        else:
            raise OSError(code, f"scanning {probe.host} port {probe.port}: {os.strerror(code)}")

    def ready(fd: int, now: float) -> None:
        sock, probe = by_fd.pop(fd)
        del sock_of[probe]
        poller.unregister(fd)
        if stream:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            try:
                sock.recv(1)
            except OSError as exc:
                code = exc.errno or errno.EIO
            else:
                sock.close()
                engine.answered(probe, ScanReason.UDP_RESPONSE, now)
                return
        finish(probe, sock, code, now)

    try:
        while not engine.finished:
            now = trio.current_time()
            for probe in engine.launch(now):
                send(probe, now)
            events = poller.poll(0)
            if events or (not by_fd and engine.next_deadline() is None):
                # answers to handle, or every probe answered already (at connect time)
                await trio.lowlevel.checkpoint()
            else:
                deadline = engine.next_deadline()
                with trio.move_on_at(deadline if deadline is not None else float("inf")):
                    await trio.lowlevel.wait_readable(poller.fileno())
                events = poller.poll(0)
            now = trio.current_time()
            for fd, _ in events:
                ready(fd, now)
            for probe in engine.expire(now):
                drop(probe)
            stats.answers = engine.stats.answers
            stats.silences = engine.stats.silences
            stats.local_failures = engine.stats.local_failures
            stats.max_in_flight = engine.stats.max_in_flight
            for result in engine.results():
                yield result
        for result in engine.results():
            yield result
    finally:
        for sock, _ in by_fd.values():
            sock.close()
        by_fd.clear()
        sock_of.clear()
        poller.close()
