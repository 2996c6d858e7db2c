"""The scanner's sans-IO engine: verdicts, retries, the window, timeouts, local failures.

No sockets: the tests play the driver, with a clock they move by hand.
"""

from __future__ import annotations

import pytest

from trio_conduit._scan._engine import PortState, ScanEngine, ScanReason


def targets(n: int) -> list[tuple[str, int]]:
    return [("10.0.0.1", port) for port in range(1, n + 1)]


def test_answers_give_nmap_states_and_reasons() -> None:
    engine = ScanEngine(targets(4))
    probes = engine.launch(0.0)
    assert [p.port for p in probes] == [1, 2, 3, 4]
    for probe, reason in zip(
        probes,
        [ScanReason.SYN_ACK, ScanReason.CONN_REFUSED, ScanReason.HOST_UNREACH, ScanReason.ADMIN_PROHIBITED],
        strict=False,
    ):
        engine.answered(probe, reason, 0.001)
    got = {r.port: (r.state, r.reason) for r in engine.results()}
    assert got == {
        1: (PortState.OPEN, ScanReason.SYN_ACK),
        2: (PortState.CLOSED, ScanReason.CONN_REFUSED),
        3: (PortState.FILTERED, ScanReason.HOST_UNREACH),
        4: (PortState.FILTERED, ScanReason.ADMIN_PROHIBITED),
    }
    assert engine.finished


def test_silence_is_retried_then_filtered() -> None:
    engine = ScanEngine(targets(1), retries=2, initial_timeout=1.0)
    (first,) = engine.launch(0.0)
    assert engine.expire(0.5) == []  # not yet
    assert engine.next_deadline() == 1.0
    assert engine.expire(1.0) == [first]
    assert engine.results() == []  # a retry, not a verdict
    (second,) = engine.launch(1.0)
    assert second.port == 1
    assert second.tries == 2
    assert second.deadline > 1.0 + 1.0  # a retry waits longer (exponential back-off)
    engine.expire(second.deadline)
    (third,) = engine.launch(second.deadline)
    assert third.tries == 3
    engine.expire(third.deadline)
    (result,) = engine.results()
    assert (result.state, result.reason, result.tries) == (PortState.FILTERED, ScanReason.NO_RESPONSE, 3)
    assert engine.finished


def test_datagram_silence_is_open_filtered() -> None:
    engine = ScanEngine(targets(1), protocol="udp", silence=PortState.OPEN_FILTERED, retries=0)
    (probe,) = engine.launch(0.0)
    engine.expire(probe.deadline)
    (result,) = engine.results()
    assert (result.state, result.protocol) == (PortState.OPEN_FILTERED, "udp")


def test_an_answer_on_a_retry_wins() -> None:
    engine = ScanEngine(targets(1), retries=1)
    (probe,) = engine.launch(0.0)
    engine.expire(probe.deadline)
    (again,) = engine.launch(probe.deadline)
    engine.answered(again, ScanReason.SYN_ACK, again.deadline - 0.01)
    (result,) = engine.results()
    assert result.state is PortState.OPEN
    assert result.tries == 2


def test_window_grows_on_answers_and_halves_on_silence() -> None:
    engine = ScanEngine(targets(1000), initial_window=4, initial_ssthresh=8, max_window=50)
    assert len(engine.launch(0.0)) == 4
    now = 0.0
    for _ in range(10):  # answer everything in flight, launch what the window allows
        now += 0.001
        for probe in list(engine._in_flight):
            engine.answered(probe, ScanReason.CONN_REFUSED, now)
        engine.launch(now)
    grown = engine.cwnd
    assert grown > 8  # slow start, then congestion avoidance
    assert grown <= 50
    in_flight = list(engine._in_flight)
    deadline = max(p.deadline for p in in_flight)
    gone = engine.expire(deadline)
    assert len(gone) == len(in_flight)
    assert engine.cwnd == pytest.approx(grown / 2)  # one halving for a window's worth of silences


def test_window_never_exceeds_its_bound() -> None:
    engine = ScanEngine(targets(5000), initial_window=10, max_window=16)
    now = 0.0
    for _ in range(200):
        now += 0.001
        probes = engine.launch(now)
        assert engine.in_flight <= 16
        for probe in probes:
            engine.answered(probe, ScanReason.CONN_REFUSED, now)
    assert engine.cwnd <= 16


def test_rtt_sets_the_timeout_within_bounds() -> None:
    engine = ScanEngine(targets(50), initial_timeout=1.0, min_timeout=0.1, max_timeout=10.0)
    for probe in engine.launch(0.0):
        engine.answered(probe, ScanReason.CONN_REFUSED, 0.0005)
    assert engine.timeout == pytest.approx(0.1)  # clamped to the minimum on a fast network
    slow = ScanEngine(targets(5), initial_timeout=1.0)
    for probe in slow.launch(0.0):
        slow.answered(probe, ScanReason.CONN_REFUSED, 0.4)
    assert slow.srtt == pytest.approx(0.4)
    assert 0.4 < slow.timeout <= 10.0


def test_local_failure_is_never_a_verdict() -> None:
    engine = ScanEngine(targets(3), initial_window=3, min_backoff=0.01)
    a, b, c = engine.launch(0.0)
    engine.local_failure(c, 0.0)  # EMFILE on the third socket
    assert engine.results() == []
    assert engine.max_window == 2  # bounded by what could be held open
    assert engine.launch(0.005) == []  # backing off
    engine.answered(a, ScanReason.CONN_REFUSED, 0.006)
    (retry,) = engine.launch(0.02)
    assert retry.port == 3
    assert retry.tries == 1
    engine.answered(b, ScanReason.CONN_REFUSED, 0.02)
    engine.answered(retry, ScanReason.SYN_ACK, 0.02)
    assert {r.port: r.state for r in engine.results()} == {
        1: PortState.CLOSED,
        2: PortState.CLOSED,
        3: PortState.OPEN,
    }
    assert engine.stats.local_failures == 1


def test_back_off_doubles_while_failures_repeat() -> None:
    engine = ScanEngine(targets(1), min_backoff=0.01, max_backoff=0.05)
    waits = []
    now = 0.0
    for _ in range(5):
        (probe,) = engine.launch(now)
        engine.local_failure(probe, now)
        deadline = engine.next_deadline()
        assert deadline is not None
        waits.append(round(deadline - now, 6))
        now = deadline
    assert waits == [0.01, 0.02, 0.04, 0.05, 0.05]
    (probe,) = engine.launch(now)
    engine.answered(probe, ScanReason.CONN_REFUSED, now)
    assert engine.finished
    assert engine.results()[0].state is PortState.CLOSED


def test_every_target_gets_exactly_one_verdict() -> None:
    engine = ScanEngine(targets(300), retries=1, initial_window=7)
    now = 0.0
    seen: list[int] = []
    step = 0
    while not engine.finished:
        for probe in engine.launch(now):
            step += 1
            if step % 7 == 0:
                engine.local_failure(probe, now)
            elif step % 5 == 0:
                pass  # silence
            else:
                engine.answered(probe, ScanReason.CONN_REFUSED, now)
        deadline = engine.next_deadline()
        now = max(now + 0.001, deadline if deadline is not None else now)
        engine.expire(now)
        seen += [r.port for r in engine.results()]
    assert sorted(seen) == list(range(1, 301))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="retries"):
        ScanEngine([], retries=-1)
    with pytest.raises(ValueError, match="max_window"):
        ScanEngine([], max_window=0)


def test_silences_never_halve_below_the_starting_window() -> None:
    """A DROP rule here and there must not starve the scan: one probe's silence after another
    halves the window down to the starting one, no further."""
    engine = ScanEngine(targets(60000), initial_window=10, retries=0)
    now = 0.0
    for _ in range(50):  # grow it with prompt answers
        now += 0.001
        for probe in engine.launch(now):
            engine.answered(probe, ScanReason.CONN_REFUSED, now)
    assert engine.cwnd > 40
    for _ in range(8):  # then eight silences, each from a probe sent after the last halving
        now += 0.001
        probe = engine.launch(now)[0]
        for other in list(engine._in_flight):
            if other is not probe:
                engine.answered(other, ScanReason.CONN_REFUSED, now)
        engine.expire(probe.deadline)
        now = probe.deadline
    assert engine.cwnd == pytest.approx(10)
    assert engine.ssthresh == pytest.approx(10)
