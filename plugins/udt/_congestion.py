"""Congestion control: UDT's ``CCC`` interface in Python, the native DAIMD algorithm, and two more.

An algorithm is a :class:`CongestionControl` subclass. The engine makes one
per connection, sets the *inputs* (``mss``, ``max_cwnd``, ``snd_curr_seq``,
``rcv_rate``, ``rtt``, ``bandwidth``, ``now``) before each callback, and
after each callback reads the *outputs*: ``pkt_send_period`` (microseconds
between two data packets) and ``cwnd`` (packets in flight). Units follow
UDT's ``CCC`` (microseconds, packets, packets per second) so algorithms port
one to one. Sequence numbers given to the callbacks are the engine's
extended numbers: plain integers that never wrap.

Algorithms are registered by name through the generic
``conduit_congestion_controls`` hook; ``udt://...?congestion=NAME`` picks one
(``NAME:key=value,...`` passes keyword arguments to its factory, as strings).

Shipped here: ``udt`` (:class:`NativeCC`, the reference's DAIMD rate
control, the default), ``fixed`` (:class:`FixedRateCC`, a constant rate) and
``bbr`` (:class:`BBRLikeCC`: pacing at the measured bottleneck rate, blind to
random loss).
"""

from __future__ import annotations

import math
import random
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from ._seq import SEQ_MASK

if TYPE_CHECKING:
    from ._packet import UserDefined

__all__ = [
    "BBRLikeCC",
    "CongestionControl",
    "CongestionControlFactory",
    "FixedRateCC",
    "NativeCC",
    "builtin_congestion_controls",
    "parse_rate",
]

#: UDT's SYN interval: 10 ms, in microseconds.
SYN_INTERVAL: Final = 10_000
_U32: Final = 0xFFFFFFFF


class CongestionControl:
    """Base class of congestion-control algorithms (UDT's ``CCC``).

    Override the ``on_*`` callbacks you need; set :attr:`pkt_send_period`
    and :attr:`cwnd` (and optionally :attr:`ack_period`,
    :attr:`ack_interval`, :attr:`rto`). The engine calls :meth:`init` once the
    connection is set up and :meth:`close` when it ends.
    """

    #: Output: microseconds between two data packets (the sending rate).
    pkt_send_period: float = 1.0
    #: Output: the congestion window, in packets.
    cwnd: float = 16.0
    #: Output: send an ACK at least every this many microseconds (``None``: every 10 ms SYN).
    ack_period: int | None = None
    #: Output: also send an ACK every this many packets received (``None``: no count-based ACK).
    ack_interval: int | None = None
    #: Output: a user-defined retransmission timeout in microseconds (``None``: UDT's EXP timer).
    rto: int | None = None

    # Inputs, set by the engine before every callback.
    #: Maximum packet size (bytes, IP and UDP headers included).
    mss: int = 1500
    #: The flow window the peer advertised: the largest useful ``cwnd``.
    max_cwnd: float = 25600.0
    #: The last data sequence number sent (extended).
    snd_curr_seq: int = 0
    #: The peer's packet arrival rate (packets per second), from its ACKs.
    rcv_rate: int = 16
    #: Smoothed round-trip time, microseconds.
    rtt: int = 100_000
    #: Estimated link capacity (packets per second), from the peer's packet pairs.
    bandwidth: int = 1
    #: The engine's clock, microseconds.
    now: int = 0
    #: UDT's SYN interval (microseconds).
    syn_interval: int = SYN_INTERVAL

    _send_custom: Callable[[int, bytes], None] | None = None

    def init(self) -> None:
        """The connection is set up; inputs hold their initial values."""

    def close(self) -> None:
        """The connection is closing."""

    def on_ack(self, ack: int) -> None:
        """An ACK arrived: everything before ``ack`` was received."""

    def on_loss(self, losses: Sequence[tuple[int, int]]) -> None:
        """A NAK arrived reporting these inclusive runs as lost."""

    def on_timeout(self) -> None:
        """The EXP timer fired with data outstanding (everything unacknowledged is resent)."""

    def on_pkt_sent(self, seq: int, count: int) -> None:
        """``count`` data packets starting at ``seq`` were just sent (new or retransmitted)."""

    def on_pkt_received(self, seq: int, count: int) -> None:
        """``count`` data packets ending at ``seq`` were just received."""

    def process_custom_msg(self, packet: UserDefined) -> None:
        """A user-defined control packet (type 0x7FFF) arrived from the peer."""

    def send_custom_msg(self, subtype: int, data: bytes = b"") -> None:
        """Send a user-defined control packet to the peer's algorithm."""
        if self._send_custom is not None:
            self._send_custom(subtype, data)


#: What the ``conduit_congestion_controls`` hook maps names to for udt://.
CongestionControlFactory = Callable[..., CongestionControl]


class NativeCC(CongestionControl):
    """UDT's native DAIMD rate control (the reference's ``CUDTCC``).

    Slow start doubles the window per ACK until it passes the flow window;
    then the rate increases every SYN by an amount set by the spare link
    capacity, and decreases by 1/8 on the first loss of a congestion period
    (randomised further decreases, at most five per period).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._rc_interval = SYN_INTERVAL
        self._last_rc_time = 0
        self._slow_start = True
        self._last_ack = 0
        self._loss = False
        self._last_dec_seq = 0
        self._last_dec_period = 1.0
        self._nak_count = 0
        self._dec_random = 1
        self._avg_nak_num = 0
        self._dec_count = 0
        self._max_loss_seen: int | None = None
        self._acked = 0
        self._flow_window: float | None = None
        self._sent_marks: deque[tuple[int, int]] = deque()

    def init(self) -> None:
        self._rc_interval = self.syn_interval
        self._last_rc_time = self.now
        self.ack_period = self._rc_interval
        self._slow_start = True
        self._last_ack = self.snd_curr_seq
        self._acked = self.snd_curr_seq + 1
        self._loss = False
        self._last_dec_seq = self._last_ack - 1
        self._last_dec_period = 1.0
        self._avg_nak_num = 0
        self._nak_count = 0
        self._dec_random = 1
        self.cwnd = 16.0
        self.pkt_send_period = 1.0

    def _leave_slow_start(self, *, on_loss: bool) -> None:
        """Slow start ends: pace at the receiver's reported rate (the reference's rule).

        Ended by a loss or a timeout (``on_loss``), slow start was sending its window
        (``cwnd`` packets per RTT + SYN) unpaced, and the reported rate is kept
        between that rate and twice it (what the next round trip would have sent).
        A loss in the first round trips comes before the receiver has measured
        anything: its report is then a placeholder (ours starts at 16 packets/s, the
        reference's receiver first reports 1) that would pace a 50 ms link at a
        packet per 60 ms for seconds. And the reference's receiver reports the
        pace of arrivals within a burst, which for an unpaced sender is its own
        burst speed, not the path's: taken as the rate, it overflows the path's
        queue by thousands of packets.
        """
        self._slow_start = False
        window_period = (self.rtt + self._rc_interval) / self.cwnd
        if self.rcv_rate <= 0:
            self.pkt_send_period = window_period
            return
        period = 1_000_000.0 / self.rcv_rate
        if on_loss:
            period = min(max(period, window_period / 2), window_period)
        self.pkt_send_period = period

    def _beyond_hole(self) -> int:
        """About how many packets the receiver holds past the one the cumulative ACK waits for.

        Those sent an RTT ago or earlier have arrived, or were lost and reported (the
        holes, a few on a lossy link, are counted as held); so has the packet after a
        NAK's last lost one. The reference counts them all as in flight; with a
        receiver that reports the rate it really takes packets in at (ours), its
        window (that rate times RTT + SYN) then closes while the ACK waits for a
        retransmission, a round trip in every few on a lossy link, and the sender
        idles for much of it.
        """
        marks = self._sent_marks
        now = self.now
        marks.append((now, self.snd_curr_seq))
        horizon = now - self.rtt
        while len(marks) > 1 and marks[1][0] <= horizon:
            marks.popleft()
        arrived = marks[0][1] if marks[0][0] <= horizon else -1
        top = self._max_loss_seen
        if top is not None:
            arrived = max(arrived, top + 1)
        return max(0, arrived - self._acked)

    def _update_window(self) -> None:
        if self._flow_window is not None:
            self.cwnd = self._flow_window + self._beyond_hole()

    def on_ack(self, ack: int) -> None:
        self._acked = max(self._acked, ack)
        if self.now - self._last_rc_time < self._rc_interval:
            return
        self._last_rc_time = self.now
        if self._slow_start:
            self.cwnd += ack - self._last_ack
            self._last_ack = ack
            if self.cwnd > self.max_cwnd:
                self._leave_slow_start(on_loss=False)
            else:
                return
        else:
            # The reference's receiver reports the pace packets arrive at within bursts:
            # for a paced sender, its own pace. Ours reports what it took in over time,
            # which a window closed by that report would hold down: the window is at
            # least the pace's worth of packets (flow control is the peer's flow window).
            rate = max(self.rcv_rate, 1_000_000.0 / self.pkt_send_period)
            self._flow_window = rate / 1_000_000.0 * (self.rtt + self._rc_interval) + 16
            self._update_window()
        if self._slow_start:
            return
        if self._loss:
            self._loss = False
            return
        min_inc = 1.0 / self.mss
        # The link's capacity is at least the rate the receiver takes packets in at: its
        # packet-pair estimate starts from a placeholder (1,000 packets/s) that a slow
        # start cut short by an early loss may not get enough pairs to replace for seconds.
        capacity = max(self.bandwidth, self.rcv_rate)
        spare = int(capacity - 1_000_000.0 / self.pkt_send_period)
        if self.pkt_send_period > self._last_dec_period and capacity // 9 < spare:
            spare = capacity // 9
        if spare <= 0:
            inc = min_inc
        else:
            # 10 ** ceil(log10(spare * MSS * 8)) * 1.5e-6 / MSS, at least min_inc
            inc = max(10.0 ** math.ceil(math.log10(spare * self.mss * 8.0)) * 0.0000015 / self.mss, min_inc)
        self.pkt_send_period = (self.pkt_send_period * self._rc_interval) / (
            self.pkt_send_period * inc + self._rc_interval
        )

    def on_loss(self, losses: Sequence[tuple[int, int]]) -> None:
        # The reference's receiver reports each loss once; ours repeats what is still
        # missing (the periodic NAK). A repeat is not news of congestion: only losses
        # beyond the highest one reported so far count, as they would with the reference.
        top = self._max_loss_seen
        if top is not None:
            losses = [(max(first, top + 1), last) for first, last in losses if last > top]
        if losses:
            self._max_loss_seen = max(last for _, last in losses)
        # a report, repeated or not, is also news of what arrived past the hole
        self._update_window()
        if not losses:
            return
        if self._slow_start:
            # then, as the reference, this loss is also the first decrease
            self._leave_slow_start(on_loss=True)
        self._loss = True
        if losses[0][0] > self._last_dec_seq:
            self._last_dec_period = self.pkt_send_period
            self.pkt_send_period = math.ceil(self.pkt_send_period * 1.125)
            self._avg_nak_num = math.ceil(self._avg_nak_num * 0.875 + self._nak_count * 0.125)
            self._nak_count = 1
            self._dec_count = 1
            self._last_dec_seq = self.snd_curr_seq
            self._rng.seed(self._last_dec_seq)
            self._dec_random = max(1, math.ceil(self._avg_nak_num * self._rng.random()))
        else:
            self._dec_count += 1
            if self._dec_count <= 5:
                self._nak_count += 1
                if self._nak_count % self._dec_random == 0:
                    # at most halve the rate within one congestion period (0.875 ** 5 = 0.51)
                    self.pkt_send_period = math.ceil(self.pkt_send_period * 1.125)
                    self._last_dec_seq = self.snd_curr_seq

    def on_timeout(self) -> None:
        if self._slow_start:
            self._leave_slow_start(on_loss=True)


def parse_rate(text: str | float) -> float:
    """A rate in bytes per second: a number with an optional ``k``/``M``/``G`` suffix."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    scale = 1.0
    if s and s[-1] in "kKmMgG":
        scale = {"k": 1e3, "m": 1e6, "g": 1e9}[s[-1].lower()]
        s = s[:-1]
    value = float(s) * scale
    if not value > 0 or math.isinf(value):
        raise ValueError(f"a rate must be a positive number of bytes per second, not {text!r}")
    return value


class FixedRateCC(CongestionControl):
    """A constant sending rate, ``rate`` bytes per second (``congestion=fixed:rate=50M``).

    Loss does not slow it down; the window is the peer's flow window. For
    links you own and have measured.
    """

    def __init__(self, rate: str | float = "10M") -> None:
        self._rate = parse_rate(rate)

    def init(self) -> None:
        self.cwnd = self.max_cwnd
        self.pkt_send_period = 1_000_000.0 * self.mss / self._rate

    def on_ack(self, ack: int) -> None:
        self.cwnd = self.max_cwnd


class BBRLikeCC(CongestionControl):
    """Rate-based control after BBR: pace at the measured bottleneck bandwidth, ignore random loss.

    The bottleneck bandwidth is the maximum of delivery-rate samples over
    about ten round trips. When the peer runs this algorithm too, its receiving
    side reports every 10 ms (a user-defined control packet, subtype
    :attr:`REPORT_SUBTYPE`) how many data packets it has received and the
    highest sequence number seen; a sample is the packets received over the
    last round trip, by the receiver's clock: the rate at the bottleneck's far
    end, as TCP's BBR gets it from SACKs. Without reports (another algorithm or
    implementation at the other end) a sample is the progress over the last
    round trip of the newest packet known received (the cumulative ACK, or the
    packet after the latest NAKed loss) less the packets lost before it: the
    cumulative ACK alone jumps whenever a retransmission fills a hole.
    The propagation delay is the windowed minimum RTT. Startup paces at 2.89
    times the estimate until it stops growing for three rounds (or a loss run
    of ``burst`` packets shows a queue overflowing), drains, then cycles the
    pacing gain through 1.25, 0.75 and six rounds of 1. The window is twice
    the bandwidth-delay product plus what the receiver is known to have beyond
    the cumulative ACK (packets waiting behind a hole are not in flight).
    Random loss does not change the rate (retransmission repairs it); when
    the packets of a round paced at a gain of at most 1 lose more than
    ``loss_threshold`` (each loss counted once; BBR v2's idea), a queue
    overflows at the estimate itself: it is capped for eight rounds at the
    share of the current rate that got through.
    """

    _GAINS: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    _STARTUP_GAIN: Final = 2.89
    #: The user-defined control packet subtype of the receiver's reports.
    REPORT_SUBTYPE: Final = 0xBB01

    def __init__(
        self, burst: str | int = 32, initial_rate: str | float = "1M", loss_threshold: str | float = 0.03
    ) -> None:
        self._burst = int(burst)
        self._loss_threshold = float(loss_threshold)
        self._initial_rate = parse_rate(initial_rate)
        self._samples: deque[tuple[int, float]] = deque()
        self._acks: deque[tuple[int, int]] = deque()
        # the receiving side: what it reports
        self._rx_count = 0
        self._rx_report_time: int | None = None
        # the sending side: the peer's reports (its clock, its count), the highest sequence it has
        self._reports: deque[tuple[int, int]] = deque()
        self._reported = False
        self._rx_high = -1
        self._round_sent = 0
        self._round_lost = 0
        self._round_gain = 0.0
        self._prev_round_sent = 0
        self._prev_round_gain = 0.0
        self._loss_high = -1
        self._lost_total = 0
        self._loss_round_start = 0
        self._cap = 0.0
        self._cap_until = 0
        self._btl_bw = 0.0  # packets per second
        self._min_rtt = 0
        self._min_rtt_time = 0
        self._last_ack = 0
        self._state = "startup"
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self._round_start = 0
        self._cycle = 0
        self._cycle_time = 0

    def init(self) -> None:
        self._last_ack = self.snd_curr_seq + 1
        self._round_start = self.now
        self._cycle_time = self.now
        self._loss_round_start = self.now
        self._btl_bw = self._initial_rate / self.mss
        self.ack_period = self.syn_interval
        self._apply(self._STARTUP_GAIN)

    def _apply(self, gain: float) -> None:
        bw = max(self._btl_bw, 1.0)
        self.pkt_send_period = 1_000_000.0 / (bw * gain)
        self._round_gain = max(self._round_gain, gain)
        rtt = self._min_rtt or self.rtt
        bdp = bw * rtt / 1_000_000.0
        # packets the receiver has beyond a hole in the sequence are no longer in flight
        beyond = max(0, self._rx_high + 1 - self._last_ack)
        self.cwnd = max(16.0, min(self.max_cwnd, 2.0 * bdp * max(gain, 1.0) + 16 + beyond))

    def _round_len(self) -> int:
        return max(self._min_rtt or self.rtt, self.syn_interval)

    def _window_bw(self) -> float:
        horizon = self.now - 10 * self._round_len()
        samples = self._samples
        while samples and samples[0][0] < horizon:
            samples.popleft()
        if not samples:
            return self._btl_bw
        estimate = max(rate for _, rate in samples)
        if self._cap and self.now < self._cap_until:
            estimate = min(estimate, self._cap)
        return estimate

    def _check_loss_rate(self) -> None:
        # BBR v2's idea: random loss stays low; a loss rate well above it means the
        # bottleneck's queue overflows. The losses reported in a round were sent about a
        # round earlier: judge them against that round's packets, and only when that round
        # paced at a gain of at most 1 (probing above the estimate is meant to overflow a
        # little; startup has its own exit). Then cap the estimate below the current rate.
        round_len = self._round_len()
        if self.now - self._loss_round_start < round_len:
            return
        capped = self._cap and self.now < self._cap_until  # losses reported now may predate the cap
        sent = self._prev_round_sent
        if (
            not capped
            and self._prev_round_gain <= 1.0
            and sent >= 50
            and self._round_lost > self._loss_threshold * sent
        ):
            # what got through the queue at this rate is what it takes
            kept = max(0.5, 1.0 - self._round_lost / sent)
            self._cap = kept * min(self._btl_bw, 1_000_000.0 / self.pkt_send_period)
            self._cap_until = self.now + 8 * round_len
            self._btl_bw = min(self._btl_bw, self._cap)
        self._prev_round_sent, self._prev_round_gain = self._round_sent, self._round_gain
        self._round_sent = self._round_lost = 0
        self._round_gain = 0.0
        self._loss_round_start = self.now

    # -- the receiving side ----------------------------------------------------------
    def on_pkt_received(self, seq: int, count: int) -> None:
        self._rx_count += count
        now = self.now
        if self._rx_report_time is None or now - self._rx_report_time >= self.syn_interval:
            self._rx_report_time = now
            body = struct.pack("!III", self._rx_count & _U32, now & _U32, seq & SEQ_MASK)
            self.send_custom_msg(self.REPORT_SUBTYPE, body)

    # -- the sending side --------------------------------------------------------------
    def process_custom_msg(self, packet: UserDefined) -> None:
        if packet.subtype != self.REPORT_SUBTYPE or len(packet.data) != 12:
            return
        count32, time32, seq31 = struct.unpack("!III", packet.data)
        reports = self._reports
        if reports:
            last_time, last_count = reports[-1]
            dt = (time32 - last_time) & _U32
            dc = (count32 - last_count) & _U32
            if not 0 < dt < 1 << 31 or dc >= 1 << 31:
                return  # reordered, repeated or bogus
            when, count = last_time + dt, last_count + dc
        else:
            when, count = time32, count32
        high = self.snd_curr_seq - ((self.snd_curr_seq - seq31) & SEQ_MASK)
        self._rx_high = max(self._rx_high, high)
        self._reported = True
        reports.append((when, count))
        span = self._round_len()
        while len(reports) > 2 and when - reports[1][0] >= span:
            reports.popleft()
        then, old = reports[0]
        if when - then >= span and count > old:
            self._samples.append((self.now, (count - old) * 1_000_000.0 / (when - then)))
        # the cumulative ACK stalls behind a hole for a round trip or more: the rate, the
        # gain cycle and the window follow the reports meanwhile
        self._update()

    def on_pkt_sent(self, seq: int, count: int) -> None:
        self._round_sent += count

    def on_ack(self, ack: int) -> None:
        now = self.now
        if self.rtt > 0 and (
            not self._min_rtt or self.rtt < self._min_rtt or now - self._min_rtt_time > 10_000_000
        ):
            self._min_rtt = self.rtt
            self._min_rtt_time = now
        span = self._round_len()
        if not self._reported:
            # Delivery rate over the last round trip (BBR's gain cycle probes one round trip
            # at a time) without the peer's reports: the cumulative ACK jumps when a
            # retransmission fills a hole, so count up to the newest packet a NAK shows the
            # receiver has (the one after a loss), less the packets lost before it.
            delivered = max(ack, self._loss_high + 1) - self._lost_total
            acks = self._acks
            acks.append((now, delivered))
            while len(acks) > 2 and now - acks[1][0] >= span:
                acks.popleft()
            then, old = acks[0]
            if now - then >= span and delivered > old:
                self._samples.append((now, (delivered - old) * 1_000_000.0 / (now - then)))
        self._last_ack = max(self._last_ack, ack)
        self._update()

    def _update(self) -> None:
        now = self.now
        span = self._round_len()
        self._check_loss_rate()
        self._btl_bw = self._window_bw()
        if self._state == "startup":
            if now - self._round_start >= span:
                self._round_start = now
                if self._btl_bw >= self._full_bw * 1.25:
                    self._full_bw = self._btl_bw
                    self._full_bw_rounds = 0
                else:
                    self._full_bw_rounds += 1
                    if self._full_bw_rounds >= 3:
                        self._state = "drain"
            self._apply(self._STARTUP_GAIN)
        elif self._state == "drain":
            if now - self._round_start >= span:
                self._state = "probe"
                self._cycle = 0
                self._cycle_time = now
            self._apply(1.0 / self._STARTUP_GAIN)
        else:
            if now - self._cycle_time >= span:
                self._cycle = (self._cycle + 1) % len(self._GAINS)
                self._cycle_time = now
            self._apply(self._GAINS[self._cycle])

    def on_loss(self, losses: Sequence[tuple[int, int]]) -> None:
        # count each lost packet once (the receiver repeats its reports; retransmissions
        # lost again are not news about the queue)
        new = 0
        for first, last in losses:
            start = max(first, self._loss_high + 1)
            if last >= start:
                new += last - start + 1
                self._loss_high = last
        self._round_lost += new
        self._lost_total += new
        # a NAK's last packet is followed by one the receiver has
        self._rx_high = max(self._rx_high, self._loss_high + 1)
        if self._state == "startup" and any(last - first + 1 >= self._burst for first, last in losses):
            # a long run of losses in startup: the queue overflowed; stop growing
            self._state = "drain"
            self._round_start = self.now
            self._apply(1.0)

    def on_timeout(self) -> None:
        self._apply(1.0)


def builtin_congestion_controls() -> dict[str, CongestionControlFactory]:
    """The algorithms this plugin registers: ``udt`` (native), ``fixed``, ``bbr``."""
    return {"udt": NativeCC, "fixed": FixedRateCC, "bbr": BBRLikeCC}
