"""The scanner's core, sans-IO: which probe to send next, what an answer or a silence
means, how many probes may be in flight, and when a silence counts as one.

No sockets and no clock of its own: the driver passes ``now`` (seconds, any
monotonic origin) into every call and reports what each probe ended with.

* **States** are nmap's: ``open``, ``closed``, ``filtered`` (no answer after the
  retries, or an ICMP error), and for datagram scans ``open|filtered`` (silence).
* **Window**: a congestion window like nmap's. Every answer grows it (by one per
  answer in slow start, below ``ssthresh``; by ``1/cwnd`` per answer above it);
  a silence halves it (at most once per window's worth of probes, never below
  the starting window) and sets ``ssthresh`` there. It never exceeds ``max_window``
  (the driver's bound: the open-file limit).
* **Timeouts** follow RFC 6298 from first-try answers (Karn's rule): ``srtt + 4
  rttvar`` clamped to [``min_timeout``, ``max_timeout``].
* **Local failures** (the driver could not make or connect a socket: EMFILE,
  EADDRNOTAVAIL, ENOBUFS ...) say nothing about the port. The probe goes back to the
  front of the queue without using a try; the window shrinks to what is in flight,
  the limit with it, and nothing new is sent for a back-off that doubles per failure
  in a row (reset by the next answer).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["PortState", "Probe", "ScanReason", "ScanEngine", "ScanResult"]


class PortState(enum.Enum):
    """A port's state, by nmap's names (``str(state)`` is the name)."""

    OPEN = "open"
    CLOSED = "closed"
    FILTERED = "filtered"
    OPEN_FILTERED = "open|filtered"

    # Members are singletons compared by identity: the identity hash is a right one, and a
    # C slot rather than Enum's hash(self._name_) in Python (a full scan hashes each result's
    # state and reason a few times: 65,535 results).
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


class ScanReason(enum.Enum):
    """Why a port got its state, by nmap's reason names."""

    SYN_ACK = "syn-ack"
    CONN_REFUSED = "conn-refused"
    NO_RESPONSE = "no-response"
    HOST_UNREACH = "host-unreach"
    NET_UNREACH = "net-unreach"
    ADMIN_PROHIBITED = "admin-prohibited"
    PORT_UNREACH = "port-unreach"
    UDP_RESPONSE = "udp-response"

    __hash__ = object.__hash__  # as PortState's

    def __str__(self) -> str:
        return self.value


#: The state each reason gives (a silence after the retries: the engine's ``silence``).
STATE_OF: Final = {
    ScanReason.SYN_ACK: PortState.OPEN,
    ScanReason.UDP_RESPONSE: PortState.OPEN,
    ScanReason.CONN_REFUSED: PortState.CLOSED,
    ScanReason.PORT_UNREACH: PortState.CLOSED,
    ScanReason.HOST_UNREACH: PortState.FILTERED,
    ScanReason.NET_UNREACH: PortState.FILTERED,
    ScanReason.ADMIN_PROHIBITED: PortState.FILTERED,
}


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One port's verdict: ``host`` (an address), ``port``, ``protocol`` (``"tcp"``, ``"udp"`` ...),
    ``state``, ``reason``, and ``tries`` (probes it took)."""

    host: str
    port: int
    protocol: str
    state: PortState
    reason: ScanReason
    tries: int = 1

    def as_dict(self) -> dict[str, object]:
        """The JSON-lines form: host, port, protocol, state, reason."""
        return {
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "state": str(self.state),
            "reason": str(self.reason),
        }


@dataclass(eq=False, slots=True)
class Probe:
    """One probe in flight: the target, how many tries it has had (this one included),
    when it was sent and when silence means no answer."""

    host: str
    port: int
    tries: int
    sent: float = 0.0
    deadline: float = 0.0
    #: The window reduction count when sent: one reduction per window's worth of silences.
    epoch: int = 0


@dataclass(slots=True)
class _Stats:
    answers: int = 0
    silences: int = 0
    local_failures: int = 0
    max_in_flight: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class ScanEngine:
    """Probes to send, verdicts to hand out. See the module docstring for the rules.

    ``targets``: (host, port) pairs in the order to probe them. ``silence``: the
    state a port gets when no probe was answered (``filtered`` for streams,
    ``open|filtered`` for datagrams). ``retries``: extra probes after a silence.
    """

    def __init__(
        self,
        targets: Iterable[tuple[str, int]],
        *,
        protocol: str = "tcp",
        silence: PortState = PortState.FILTERED,
        retries: int = 1,
        max_window: int = 1000,
        initial_window: float = 10.0,
        initial_ssthresh: float = 75.0,
        initial_timeout: float = 1.0,
        min_timeout: float = 0.1,
        max_timeout: float = 10.0,
        min_backoff: float = 0.005,
        max_backoff: float = 1.0,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if max_window < 1:
            raise ValueError("max_window must be >= 1")
        self.protocol = protocol
        self.silence = silence
        self.retries = retries
        self.max_window = max_window
        self.cwnd = min(float(initial_window), float(max_window))
        #: The window a silence never halves below: the starting one.
        self.low_window = self.cwnd
        self.ssthresh = float(initial_ssthresh)
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.timeout = initial_timeout
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._backoff = 0.0
        self._resume_at = float("-inf")
        self._fresh: deque[tuple[str, int]] = deque(targets)
        self._again: deque[tuple[str, int, int]] = deque()  # (host, port, tries so far)
        self._in_flight: set[Probe] = set()
        self._results: deque[ScanResult] = deque()
        self._epoch = 0
        self.total = len(self._fresh)
        self.done = 0
        self.stats = _Stats()

    # -- what to do ------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def finished(self) -> bool:
        """Every target has its verdict (and it may still be waiting in :meth:`results`)."""
        return not self._fresh and not self._again and not self._in_flight

    def launch(self, now: float) -> list[Probe]:
        """The probes to send now (counted in flight from here on)."""
        if now < self._resume_at:
            return []
        room = int(self.cwnd) - len(self._in_flight)
        out: list[Probe] = []
        timeout = self.timeout
        while room > 0 and (self._again or self._fresh):
            if self._again:
                host, port, tries = self._again.popleft()
            else:
                (host, port), tries = self._fresh.popleft(), 0
            probe = Probe(host, port, tries + 1, now, now + timeout * (1 << min(tries, 4)), self._epoch)
            self._in_flight.add(probe)
            out.append(probe)
            room -= 1
        if len(self._in_flight) > self.stats.max_in_flight:
            self.stats.max_in_flight = len(self._in_flight)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`expire` or :meth:`launch` next has something to do (``None``: nothing pending)."""
        deadline = min((p.deadline for p in self._in_flight), default=None)
        if (self._fresh or self._again) and len(self._in_flight) < int(self.cwnd):
            wake = self._resume_at
            deadline = wake if deadline is None else min(deadline, wake)
        return deadline

    # -- what happened ---------------------------------------------------------
    def answered(self, probe: Probe, reason: ScanReason, now: float) -> None:
        """``probe`` got an answer that decides its port's state."""
        self._in_flight.remove(probe)
        if probe.tries == 1:
            self._sample_rtt(max(now - probe.sent, 0.0))
        self.stats.answers += 1
        self._backoff = 0.0
        if self.cwnd < self.ssthresh:
            self.cwnd += 1.0
        else:
            self.cwnd += 1.0 / self.cwnd
        self.cwnd = min(self.cwnd, float(self.max_window))
        self._verdict(probe.host, probe.port, STATE_OF[reason], reason, probe.tries)

    def local_failure(self, probe: Probe, now: float) -> None:
        """``probe`` could not be sent (or its socket failed locally): try it again later,
        with fewer probes in flight. The port's state is not touched."""
        self._in_flight.remove(probe)
        self.stats.local_failures += 1
        self._again.appendleft((probe.host, probe.port, probe.tries - 1))
        limit = max(1, len(self._in_flight))
        self.max_window = min(self.max_window, limit) if self._in_flight else self.max_window
        self.cwnd = max(1.0, min(self.cwnd, float(limit)))
        self.ssthresh = max(2.0, self.cwnd)
        self._backoff = min(self.max_backoff, max(self.min_backoff, self._backoff * 2))
        self._resume_at = now + self._backoff

    def expire(self, now: float) -> list[Probe]:
        """The probes whose time ran out (the driver closes their sockets): each is retried,
        or its port gets the silence state once the retries are spent."""
        gone = [p for p in self._in_flight if p.deadline <= now]
        for probe in gone:
            self._in_flight.remove(probe)
            self.stats.silences += 1
            if probe.epoch == self._epoch:  # one reduction per window of probes
                # Halve, but not below the starting window: a silence among prompt answers is
                # most often a filtering rule, not a congested path (and a congested path shows
                # as many silences, which keep the window at that floor).
                self._epoch += 1
                self.cwnd = max(self.low_window, self.cwnd / 2)
                self.ssthresh = self.cwnd
            if probe.tries <= self.retries:
                self._again.append((probe.host, probe.port, probe.tries))
            else:
                self._verdict(probe.host, probe.port, self.silence, ScanReason.NO_RESPONSE, probe.tries)
        return gone

    def results(self) -> list[ScanResult]:
        """The verdicts reached since the last call."""
        out = list(self._results)
        self._results.clear()
        return out

    # -- inside ------------------------------------------------------------------
    def _verdict(self, host: str, port: int, state: PortState, reason: ScanReason, tries: int) -> None:
        self.done += 1
        self._results.append(ScanResult(host, port, self.protocol, state, reason, tries))

    def _sample_rtt(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.timeout = min(self.max_timeout, max(self.min_timeout, self.srtt + 4 * self.rttvar))
