"""The native controller (``NativeCC``) against the reference's rules, sans IO.

Each test scripts ACKs, NAKs and timeouts with the engine's inputs set by hand
(time included) and checks the period and window that the reference's
``CUDTCC`` rules give for that sequence: slow start on the window until the
first loss or the flow window, then per SYN an increase sized by the spare
link capacity, and on loss a decrease by 1/8 once per congestion epoch.
"""

from __future__ import annotations

import math

from trio_conduit_plugins.udt._congestion import SYN_INTERVAL, NativeCC

MSS = 1500
ISN = 1000


def make(
    *, rcv_rate: int = 16, bandwidth: int = 1, rtt: int = 100_000, max_cwnd: float = 25600.0
) -> NativeCC:
    cc = NativeCC(seed=1)
    cc.mss = MSS
    cc.max_cwnd = max_cwnd
    cc.snd_curr_seq = ISN - 1
    cc.rcv_rate = rcv_rate
    cc.bandwidth = bandwidth
    cc.rtt = rtt
    cc.now = 0
    cc.init()
    return cc


def ack(cc: NativeCC, at: int, seq: int, *, sent: int | None = None) -> None:
    cc.now = at
    if sent is not None:
        cc.snd_curr_seq = sent
    cc.on_ack(seq)


def nak(cc: NativeCC, at: int, first: int, last: int | None = None, *, sent: int | None = None) -> None:
    cc.now = at
    if sent is not None:
        cc.snd_curr_seq = sent
    cc.on_loss([(first, first if last is None else last)])


def decreased(period: float, times: int = 1) -> float:
    for _ in range(times):
        period = math.ceil(period * 1.125)
    return period


def increased(period: float, capacity: int, *, capped: bool) -> float:
    spare = int(capacity - 1_000_000 / period)
    if capped:
        spare = min(spare, capacity // 9)
    inc = 1 / MSS if spare <= 0 else max(10 ** math.ceil(math.log10(spare * MSS * 8)) * 1.5e-6 / MSS, 1 / MSS)
    return period * SYN_INTERVAL / (period * inc + SYN_INTERVAL)


def test_slow_start_grows_the_window_by_what_each_syn_acknowledges() -> None:
    cc = make()
    assert (cc.cwnd, cc.pkt_send_period) == (16.0, 1.0)
    start = ISN - 1  # the last packet sent before the connection's data
    ack(cc, SYN_INTERVAL, ISN + 10)
    assert cc.cwnd == 16 + (ISN + 10 - start)
    ack(cc, SYN_INTERVAL + 5_000, ISN + 30)  # within the same SYN: not counted
    assert cc.cwnd == 16 + (ISN + 10 - start)
    ack(cc, 2 * SYN_INTERVAL, ISN + 40)
    assert cc.cwnd == 16 + (ISN + 40 - start)
    assert cc.pkt_send_period == 1.0  # unpaced: the window alone limits slow start


def test_slow_start_ends_past_the_flow_window_at_the_reported_rate() -> None:
    cc = make(rcv_rate=20_000, max_cwnd=100)
    ack(cc, SYN_INTERVAL, ISN + 50)
    assert cc.pkt_send_period == 1.0
    ack(cc, 2 * SYN_INTERVAL, ISN + 100)  # past 100 packets
    # the reported rate, and in the same SYN the first increase (no capacity reported: the least)
    assert cc.pkt_send_period == increased(1_000_000 / 20_000, 1, capped=True)
    # then the window follows the receive rate, or the pace when that is faster
    pace = 1_000_000 / cc.pkt_send_period
    assert pace > 20_000
    ack(cc, 3 * SYN_INTERVAL, ISN + 120)
    assert cc.cwnd == pace / 1_000_000 * (cc.rtt + SYN_INTERVAL) + 16
    cc.rcv_rate = 30_000
    ack(cc, 4 * SYN_INTERVAL, ISN + 140)
    assert cc.cwnd == 30_000 / 1_000_000 * (cc.rtt + SYN_INTERVAL) + 16


def test_first_loss_ends_slow_start_at_the_reported_rate_and_is_the_first_decrease() -> None:
    cc = make(rcv_rate=1_000, rtt=50_000)
    ack(cc, SYN_INTERVAL, ISN + 20, sent=ISN + 40)
    window = cc.cwnd  # 37 packets per 60 ms: 617 packets/s, below the reported 1,000
    nak(cc, 2 * SYN_INTERVAL, ISN + 25, sent=ISN + 60)
    assert (50_000 + SYN_INTERVAL) / window > 1_000_000 / 1_000
    assert cc.pkt_send_period == decreased(1_000_000 / 1_000)
    # the next ACK only clears the loss flag; the one after increases, capped below the
    # rate before the decrease at a ninth of the capacity
    cc.bandwidth = 30_000
    period = cc.pkt_send_period
    ack(cc, 3 * SYN_INTERVAL, ISN + 30)
    assert cc.pkt_send_period == period
    ack(cc, 4 * SYN_INTERVAL, ISN + 40)
    assert cc.pkt_send_period == increased(period, 30_000, capped=True)


def test_a_loss_before_any_rate_report_keeps_the_window_rate() -> None:
    # The receiver has reported nothing yet (the placeholder 16 packets/s): a first
    # packet lost must not pace the link at 16 packets/s.
    cc = make(rtt=100_000)
    nak(cc, 1_000, ISN, sent=ISN + 15)
    window_period = (100_000 + SYN_INTERVAL) / 16
    assert cc.pkt_send_period == decreased(window_period)
    assert cc.pkt_send_period < 1_000_000 / 16 / 8


def test_a_loss_in_slow_start_paces_at_most_twice_the_window_rate() -> None:
    # The reference's receiver reports the pace within bursts: for an unpaced sender in
    # slow start, its own burst speed (80,000 packets/s here), not the path's.
    cc = make(rcv_rate=80_000, rtt=50_000)
    ack(cc, SYN_INTERVAL, ISN + 20, sent=ISN + 40)
    window_period = (50_000 + SYN_INTERVAL) / cc.cwnd
    nak(cc, 2 * SYN_INTERVAL, ISN + 25, sent=ISN + 60)
    assert cc.pkt_send_period == decreased(window_period / 2)


def test_one_decrease_per_congestion_epoch_then_at_most_four_more() -> None:
    cc = make(rcv_rate=200)
    nak(cc, 1_000, ISN + 5, sent=ISN + 100)  # ends slow start: the epoch's first decrease
    period = cc.pkt_send_period
    assert period == decreased(1_000_000 / 200)
    # losses of packets sent before that decrease belong to the same epoch: with no NAK
    # history the random skip is 1, so each of them decreases, four at most
    for i in range(6):
        nak(cc, 2_000 + i, ISN + 10 + i, sent=ISN + 101 + i)
    assert cc.pkt_send_period == decreased(period, 4)
    # a loss beyond the last decrease's sequence opens a new epoch
    last = cc.pkt_send_period
    nak(cc, 3_000, ISN + 200, sent=ISN + 300)
    assert cc.pkt_send_period == decreased(last)


def test_rate_increases_each_syn_without_loss_by_the_spare_capacity() -> None:
    cc = make(rcv_rate=2_000, max_cwnd=20)
    cc.bandwidth = 100_000
    ack(cc, SYN_INTERVAL, ISN + 10)  # past 20 packets: slow start ends at 2,000 packets/s
    # no decrease yet: the reference's initial "last decrease period" of 1 us keeps the
    # increase under a ninth of the capacity
    assert cc.pkt_send_period == increased(500.0, 100_000, capped=True)
    period = cc.pkt_send_period
    ack(cc, 2 * SYN_INTERVAL, ISN + 20)
    assert cc.pkt_send_period == increased(period, 100_000, capped=True)
    # after a decrease, past the rate before it, the whole spare capacity counts
    nak(cc, 2 * SYN_INTERVAL + 1, ISN + 30, sent=ISN + 40)
    cc.pkt_send_period = 100.0  # faster than the decrease's rate
    ack(cc, 3 * SYN_INTERVAL, ISN + 30)  # clears the loss flag
    ack(cc, 4 * SYN_INTERVAL, ISN + 31)
    assert cc.pkt_send_period == increased(100.0, 100_000, capped=False)
    # above the capacity: the least increase, 1/MSS packets per SYN
    cc.pkt_send_period = 5.0
    ack(cc, 5 * SYN_INTERVAL, ISN + 32)
    assert cc.pkt_send_period == 5.0 * SYN_INTERVAL / (5.0 / MSS + SYN_INTERVAL)


def test_timeouts_end_slow_start_but_do_not_slow_down_after_it() -> None:
    cc = make(rcv_rate=1, rtt=100_000)
    ack(cc, SYN_INTERVAL, ISN + 20)
    window = cc.cwnd
    cc.on_timeout()
    assert cc.pkt_send_period == (100_000 + SYN_INTERVAL) / window  # not 1 packet/s
    cc.on_timeout()
    assert cc.pkt_send_period == (100_000 + SYN_INTERVAL) / window


def test_repeated_loss_reports_are_not_new_losses() -> None:
    # our receiver repeats what is still missing (periodic NAK); the reference's reports
    # each loss once: a repeat is no news of congestion
    cc = make(rcv_rate=200)
    nak(cc, 1_000, ISN + 5, sent=ISN + 100)
    period = cc.pkt_send_period
    for i in range(5):
        nak(cc, 2_000 + i, ISN + 5, sent=ISN + 101 + i)
    assert cc.pkt_send_period == period


def test_the_capacity_is_at_least_the_receive_rate() -> None:
    # The receiver's packet-pair estimate still says its placeholder 1,000 packets/s
    # while it takes packets in at 50,000 packets/s: the link carries at least that.
    cc = make(rcv_rate=2_000, bandwidth=1_000, max_cwnd=20)
    ack(cc, SYN_INTERVAL, ISN + 10)  # slow start ends at 2,000 packets/s
    period = cc.pkt_send_period
    cc.rcv_rate = 50_000
    ack(cc, 2 * SYN_INTERVAL, ISN + 20)
    assert cc.pkt_send_period == increased(period, 50_000, capped=True)
    assert cc.pkt_send_period < increased(period, 1_000, capped=True)


def test_the_window_leaves_out_what_the_receiver_holds_past_a_hole() -> None:
    cc = make(rcv_rate=3_000, rtt=50_000, max_cwnd=20)
    ack(cc, SYN_INTERVAL, ISN + 10)  # slow start ends
    cc.pkt_send_period = 1_000.0  # slower than the receive rate: the window follows that
    ack(cc, 2 * SYN_INTERVAL, ISN + 100)
    flow = 3_000 / 1_000_000 * (50_000 + SYN_INTERVAL) + 16
    assert cc.cwnd == flow
    # ISN + 100 is lost; the receiver reports it when ISN + 101 arrives, then a later loss
    # when ISN + 181 arrives: it holds 81 packets the ACK does not cover yet
    nak(cc, 2 * SYN_INTERVAL + 1, ISN + 100, sent=ISN + 150)
    assert cc.cwnd == flow + 1
    nak(cc, 2 * SYN_INTERVAL + 2, ISN + 180, sent=ISN + 200)
    assert cc.cwnd == flow + (ISN + 181 - (ISN + 100))  # the hole at ISN + 180 counted too
    # the retransmission arrives: the ACK moves past both holes, nothing is held past it
    cc.pkt_send_period = 1_000.0
    ack(cc, 3 * SYN_INTERVAL, ISN + 190, sent=ISN + 300)
    assert cc.cwnd == flow
    # ISN + 190 is lost; an RTT on, what was sent by then has arrived, reported or not
    nak(cc, 3 * SYN_INTERVAL + 50_000, ISN + 190, sent=ISN + 450)
    assert cc.cwnd == flow + (ISN + 300 - (ISN + 190))
