"""The receiving side of a session: reordering, message assembly, ACKs and NAKs.

:class:`Receiver` plays the parts of the reference's ``CRcvBuffer`` (the
data that arrived and the application has not read: in-order stream data as
views of the datagrams it came in, early packets in a reorder map, whole
messages in a queue) and of the receiving half of its ``CUDT``: taking data
packets in (with a fast path for runs of in-order full-size stream packets),
finding losses and reporting them in NAKs at once and periodically,
acknowledging (full ACKs every SYN, light ones every 64 packets), timing the
peer's ACK2s for the RTT, and measuring the arrival rate and the link
capacity (packet pairs) that full ACKs report. :class:`_RateWindow` is the
reference's ``CPktTimeWindow``. Sequence numbers are extended (see
:mod:`._seq`).
"""

from __future__ import annotations

import math
import statistics
import struct
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ._engine import MIN_EXP, SYN, State
from ._losslist import LossList
from ._packet import (
    CONTROL_FLAG,
    HEADER,
    HEADER_SIZE,
    MSG_FIRST,
    MSG_IN_ORDER,
    MSG_LAST,
    ControlType,
    control_word,
    encode_loss_list,
)
from ._seq import MAX_MSGNO, SEQ_MASK, unwrap, wire

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["Receiver"]

_NEVER: Final = math.inf
_MIN_NAK: Final = 2 * SYN
_MAX_NAK: Final = MIN_EXP / 2
_LIGHT_ACK_PACKETS: Final = 64
_ACK_WINDOW: Final = 1024
#: A packet pair found inside one coalesced datagram came back to back: 1 us apart at most.
BACK_TO_BACK: Final = 1e-6
#: What the arrival rate may be told as at most, after the peer's slow start: this times the
#: rate that arrived over the last round trip and SYN (``Receiver.arrival_rate``).
RATE_CAP: Final = 1.5
#: ... or more, for a window (rate x (RTT + SYN) + 16) this many times the sender's flight.
WINDOW_ROOM: Final = 4.0
_WORD: Final = struct.Struct("!I")
_SEQ_DEST: Final = struct.Struct("!I8xI")  # a data packet's sequence word and destination id
_ACK_WORD: Final = control_word(ControlType.ACK)
_NAK_WORD: Final = control_word(ControlType.NAK)
# A received-but-dropped message's slot in the reorder buffer.
_DROPPED: Final = None


class _RateWindow:
    """Median-filtered intervals (the reference's ``CPktTimeWindow``), for rates in packets/s."""

    __slots__ = ("_pos", "_values")

    def __init__(self, size: int, initial: float) -> None:
        self._values = [initial] * size
        self._pos = 0

    def add(self, interval: float) -> None:
        self._values[self._pos] = interval
        self._pos = (self._pos + 1) % len(self._values)

    def rate(self, *, need_half: bool) -> int:
        values = self._values
        median = statistics.median_low(values)
        upper, lower = median * 8, median / 8
        kept = [v for v in values if lower < v < upper]
        if need_half and len(kept) <= len(values) // 2:
            return 0
        if not need_half:
            kept.append(median)
        mean = sum(kept) / len(kept) if kept else 0.0
        return math.ceil(1.0 / mean) if mean > 0 else 0


class _IntakeWindow:
    """Packets taken in over the last few read passes, and the time those passes spanned: the
    rate a receiver that falls behind really takes packets in at (a ratio of sums: a median of
    per-pass ratios would favour the many short passes over the few long ones)."""

    __slots__ = ("_pos", "_values")

    def __init__(self, size: int) -> None:
        self._values = [(0, 0.0)] * size
        self._pos = 0

    def add(self, packets: int, seconds: float) -> None:
        self._values[self._pos] = (packets, seconds)
        self._pos = (self._pos + 1) % len(self._values)

    def rate(self) -> int:
        packets = sum(p for p, _ in self._values)
        seconds = sum(t for _, t in self._values)
        return math.ceil(packets / seconds) if seconds > 0 else 0


class Receiver:
    """What a session receives: the receive buffer, the loss list, ACK and NAK generation.

    ``next`` is the first sequence number not received yet (everything
    before it was; ``next31`` is its wire form), ``curr`` the largest
    received, ``last_ack_ack`` the largest acknowledgement the peer
    confirmed with an ACK2. ``next_ack`` and ``next_nak`` are the ACK and
    periodic NAK timers' deadlines (the session schedules them).
    """

    def __init__(self, session: Session, now: float) -> None:
        self._session = session
        self.stats = session.stats
        self.cc = session.cc
        config = session.config
        self.config = config
        self.rcv_buf = config.rcv_buf
        self.is_stream = session.is_stream
        self.next = 0
        self.next31 = 0
        self.curr = -1
        self.last_ack = 0
        self.last_ack_ack = 0
        self.reorder: dict[int, tuple[int, Any] | None] = {}
        self.loss = LossList()
        # what the application may read
        self.readable: deque[Any] = deque()
        self.readable_bytes = 0
        self._head_offset = 0
        self.buffered_pkts = 0
        self._msg_parts: list[Any] = []
        self._msg_parts_pkts = 0
        self.messages: deque[tuple[bytes, int]] = deque()
        self._unordered: dict[int, list[int]] = {}
        self._delivered_early: set[int] = set()
        # ACKs and NAKs
        self._ack_seqno = 0
        self._ack_window: deque[tuple[int, int, float]] = deque(maxlen=_ACK_WINDOW)
        self._last_full_ack = -_NEVER
        self._last_ack_sent = -_NEVER
        #: Whether the peer has answered one of our ACKs with an ACK2.
        self._confirmed = False
        self.next_ack = now + SYN
        self.next_nak = now + MIN_EXP
        self._nak_interval = _MIN_NAK
        self._pkt_count = 0
        self._light_ack_count = 1
        #: Tell the sender the window reopened (the reader drained a full buffer).
        self.window_update = False
        self._last_avail = 0
        # arrival rate: median-filtered packet intervals (the reference's CPktTimeWindow)
        self._speed = _RateWindow(16, 1.0)
        self._last_arrival = now
        # what arrived: (arrival, packets so far) about once per SYN, for the rate cap
        self._arrived_pkts = 0
        self._delivery: deque[tuple[float, int]] = deque([(now, 0)], maxlen=64)
        self._peer_isn = 0
        self._nak_sent = False
        #: The peer's smoothed receive rate as the reference's sender keeps it (from our reports).
        self._told = 16
        self._pass_pkts = 0
        self._in_pass = False
        self._pass_speed = _IntakeWindow(16)
        self._pass_end = now
        self._pass_wait = 0.0
        self._behind_log = [False] * 16
        self._behind_pos = 0
        self._behind = 0
        self._probe = _RateWindow(64, 0.001)
        self._probe_time = -_NEVER
        self._probe_batch = -1
        self._probe_seq31 = -1
        self._batch = 0

    def reset(self, peer_isn: int) -> None:
        self.next = peer_isn
        self.next31 = peer_isn
        self.curr = peer_isn - 1
        self.last_ack = peer_isn
        self.last_ack_ack = peer_isn
        self._peer_isn = peer_isn

    def start(self, now: float) -> None:
        """The connection is set up: the ACK and NAK timers start."""
        self.next_ack = now + SYN
        self.next_nak = now + MIN_EXP

    def clear(self) -> None:
        self.reorder.clear()

    # -- the application side -------------------------------------------------------
    def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of stream data (``b""`` when none is waiting)."""
        if not self.readable_bytes:
            return b""
        readable = self.readable
        head = self._head_offset
        first = readable[0]
        flen = len(first) - head
        if flen >= max_bytes:
            # one packet (or a piece of one) is enough
            out = bytes(first[head : head + max_bytes])
            if flen == max_bytes:
                readable.popleft()
                self._head_offset = 0
            else:
                self._head_offset = head + max_bytes
            self.readable_bytes -= max_bytes
            self._after_read()
            return out
        parts = [first[head:] if head else first]
        total = flen
        readable.popleft()
        while readable:
            nxt = readable[0]
            n = len(nxt)
            if total + n > max_bytes:
                if total < max_bytes:
                    take = max_bytes - total
                    parts.append(nxt[:take])
                    total += take
                    self._head_offset = take
                else:
                    self._head_offset = 0
                break
            parts.append(nxt)
            total += n
            readable.popleft()
        else:
            self._head_offset = 0
        out = b"".join(parts)
        self.readable_bytes -= len(out)
        self._after_read()
        return out

    def receive_message(self) -> bytes | None:
        """The next whole message, or ``None`` when none is complete."""
        if not self.messages:
            return None
        data, npkts = self.messages.popleft()
        self.readable_bytes -= len(data)
        self.buffered_pkts -= npkts
        self._after_read()
        return data

    def held(self) -> int:
        """Packets' worth of received data the application has not read yet (the window's use)."""
        if self.is_stream:
            return -(-self.readable_bytes // self._session.payload_size)
        return self.buffered_pkts

    def _after_read(self) -> None:
        # A reader draining a buffer that was advertised (nearly) full reopens the
        # window: tell the sender now rather than waiting for its next probe.
        s = self._session
        if s.state is not State.CONNECTED or self.window_update:
            return
        limit = self.rcv_buf
        if self._last_avail < limit // 8 and limit - self.held() - 1 >= limit // 4:
            self.window_update = True
            self.next_ack = s.endpoint.now
            s._reschedule()

    # -- ACK / NAK ----------------------------------------------------------------------
    def send_ack(self, now: float, *, light: bool = False) -> None:
        s = self._session
        ack = self.next
        update = self.window_update
        if ack == self.last_ack_ack and not update:
            self.next_ack = now + SYN
            return
        if light:
            s._send_control(_ACK_WORD, 0, _WORD.pack(wire(ack)), now)
            self.stats.pkt_sent_ack += 1
            return
        self.next_ack = now + SYN
        self.window_update = False
        # whether the peer is in slow start as it takes this ACK in (its window grows by it)
        slow_start = self.peer_in_slow_start()
        acked = self.last_ack
        if ack > self.last_ack:
            self.last_ack = ack
        elif ack == self.last_ack:
            # the same ACK again after RTT + 4 RTTVar, as the reference; but every SYN until the
            # peer confirmed one of ours with an ACK2: libudt's sender drops a packet that comes
            # before its receiving thread took the new connection in, and stalls (with nothing
            # in flight) until an ACK for the same packets comes again -- after 300 ms, with the
            # initial RTT (measured: nothing sent 300 ms after its first 16 packets, most runs)
            wait = s.rtt + 4 * s.rtt_var if self._confirmed else SYN / 2
            if not update and now - self._last_ack_sent < wait:
                return
        else:
            return
        self._pkt_count = 0
        self._light_ack_count = 1
        self._ack_seqno = (self._ack_seqno + 1) & SEQ_MASK
        avail = max(2, self.rcv_buf - self.held() - 1)
        self._last_avail = avail
        rtt_us = int(s.rtt * 1_000_000)
        var_us = int(s.rtt_var * 1_000_000)
        if slow_start or now - self._last_full_ack > SYN:
            rate = self._rate(slow_start=slow_start)
            if slow_start:
                rate = self._catch_up(rate)
            if rate > 0 and ack > acked:  # the reference's sender skips an ACK that acknowledges nothing new
                self._told = (self._told * 7 + rate) >> 3
            bw = self._probe.rate(need_half=False)
            body = struct.pack("!Iiiiii", wire(ack), rtt_us, var_us, avail, rate, bw)
            self._last_full_ack = now
        else:
            body = struct.pack("!Iiii", wire(ack), rtt_us, var_us, avail)
        s._send_control(_ACK_WORD, self._ack_seqno, body, now)
        self._last_ack_sent = now
        self._ack_window.append((self._ack_seqno, ack, now))
        self.stats.pkt_sent_ack += 1

    def on_ack2(self, ack_seqno: int, now: float) -> None:
        # the ACK2's arrival time, not when it was read: the RTT is the network's, as the
        # reference's (whose receiving thread reads each packet as it comes) is
        now = self._session.endpoint.arrival
        self.stats.pkt_recv_ack2 += 1
        window = self._ack_window
        for i, (seqno, ack, sent) in enumerate(window):
            if seqno == ack_seqno:
                rtt = now - sent
                for _ in range(i + 1):
                    window.popleft()
                self._confirmed = True
                if rtt > 0:
                    self._session._rtt_sample(rtt)
                if ack > self.last_ack_ack:
                    self.last_ack_ack = ack
                return

    def _arrived(self, count: int, now: float) -> None:
        # The reference records the interval before each packet as its receiving thread takes
        # it in, which is as it arrives; the median of the last 16 (filtered) is the pace packets
        # come at while they flow: a window-limited sender's bursts at the link's pace, not its
        # waits for ACKs (one interval in 16). The sender sizes its window by it (rate x
        # (RTT + SYN) + 16) and, when its slow start ends, its sending period. Ours takes the
        # same intervals from the kernel's arrival stamps (a coalesced batch of ``count``
        # packets is ``count`` intervals sharing the gap before it).
        #
        # But ours reads in passes, between timers and the reader, and can be the slower
        # side: then datagrams wait in the socket, and the pace they arrived at is not the
        # pace this receiver takes them in; telling the sender the first would make it send
        # more than we read. So where the driver reads in passes (``Endpoint.read_passes``),
        # a second window gets one interval per pass -- the packets it took in over the time
        # since the previous pass ended, time away from the socket included -- and a pass is
        # "behind" when a datagram in it waited in the socket longer than that, or when it
        # stopped at its limit with datagrams still waiting. While most recent passes are
        # behind, the rate reported is the per-pass one. See :meth:`arrival_rate` for the cap.
        self._arrived_stamped([self._session.endpoint.arrival] * count, now)

    def _arrived_stamped(self, arrivals: Sequence[float], now: float) -> None:
        """:meth:`_arrived` for packets that arrived at ``arrivals`` (one stamp each)."""
        add = self._speed.add
        last = self._last_arrival
        for arrival in arrivals:
            add(arrival - last if arrival - last > BACK_TO_BACK else BACK_TO_BACK)
            last = arrival
        self._last_arrival = last
        self._arrived_pkts += len(arrivals)
        if last - self._delivery[-1][0] >= SYN:
            self._delivery.append((last, self._arrived_pkts))
        if self._session.endpoint.read_passes:
            self._pass_pkts += len(arrivals)
            wait = now - arrivals[0]
            if wait > self._pass_wait:
                self._pass_wait = wait
            if not self._in_pass:
                self._in_pass = True
                self._session.endpoint._read_this_pass.append(self)

    def end_of_pass(self, now: float, *, backlog: bool = False) -> None:
        """The driver finished a pass of reads (see :meth:`_arrived`); ``backlog``: it left
        datagrams waiting (its limit per pass reached): this receiver is behind."""
        self._in_pass = False
        count = self._pass_pkts
        if count:
            self._pass_pkts = 0
            gap = now - self._pass_end
            self._pass_speed.add(count, gap)
            behind = backlog or self._pass_wait > gap
            self._behind += behind - self._behind_log[self._behind_pos]
            self._behind_log[self._behind_pos] = behind
            self._behind_pos = (self._behind_pos + 1) % len(self._behind_log)
            self._pass_wait = 0.0
        self._pass_end = now

    def arrival_rate(self) -> int:
        """Packets per second arriving lately (0 while too few intervals agree).

        While the peer is in slow start (:meth:`peer_in_slow_start`), the pace packets come at
        (see :meth:`_arrived`), as the reference reports it, even while this reader is behind: the
        sender's sending period starts from what it was told by then (full ACKs then say
        :meth:`_catch_up` of it), and a sender in slow start sends as fast as it can, in windows;
        one faster than this reader is held back by the flow window. Later, at most RATE_CAP times
        the rate that arrived over the last round trip and SYN: a sender that hands the kernel
        bursts (its pacing timer woke late, or GSO) has them stamped microseconds apart, and the
        reference's median then tells it many times what it sends (measured on loopback: 4x,
        libudt against libudt), which only grows a queue. But never so little that the sender's
        window (rate x (RTT + SYN) + 16) is under WINDOW_ROOM times its flight -- what it sent
        past our first hole, and a round trip's worth on the way: on a long, lossy link a hole
        stays open for a round trip or more, and a window near the flight would set the pace
        instead of the rate control (measured on the 50 ms / 1 % link: libudt's window stuck near
        its flight, 3.8 MB/s; 5.1 MB/s with this room, as with no cap at all).
        """
        return self._rate(slow_start=self.peer_in_slow_start())

    def _rate(self, *, slow_start: bool) -> int:
        """:meth:`arrival_rate`, for a peer in slow start or not."""
        if slow_start:
            return self._speed.rate(need_half=True)
        if self._behind * 2 > len(self._behind_log):
            rate = self._pass_speed.rate()
        else:
            rate = self._speed.rate(need_half=True)
        delivered = self._delivered_rate()
        # the sender's flight: what it sent past our first hole (up to the largest received),
        # and what is on the way over a round trip
        rtt = self._session.rtt
        flight = self.curr - self.next + 1 + delivered * rtt
        room = WINDOW_ROOM * flight / (rtt + SYN)
        return min(rate, math.ceil(max(RATE_CAP * delivered, room)))

    def peer_in_slow_start(self) -> bool:
        """Whether the peer's sender is still in its slow start, as the reference's controller
        runs it: it ends at the first loss (our first NAK) or once its window passes the flow
        window we announced (it grows from 16 by what our full ACKs acknowledge)."""
        return not self._nak_sent and self.last_ack - self._peer_isn + 16 <= self.config.advertised_window

    def _catch_up(self, rate: int) -> int:
        """What to tell a sender in slow start for its smoothed receive rate to become ``rate``.

        The reference's sender keeps 7/8 of what it had and 1/8 of each report (from 16), and
        when its slow start ends it sends at that smoothed rate from then on, speeding up by a
        fraction of a percent per SYN: told the pace each time, it ends slow start at a part
        of it (measured on loopback: 80,000 of 200,000 packets/s). So while it is in slow start
        it is told the report that brings its smoothed rate (as we follow it in ``_told``) to the
        pace in one step; never less than the pace. A sender faster than this reader is then
        held back by the flow window, without loss (measured: no NAK, RTT under 0.5 ms).
        """
        return max(rate, 8 * rate - 7 * self._told)

    def _delivered_rate(self) -> float:
        """Packets per second that arrived over the last round trip and SYN (at least 2 SYN)."""
        delivery = self._delivery
        last = self._last_arrival
        since = last - max(self._session.rtt + SYN, 2 * SYN)
        then, pkts = delivery[0]
        for t, n in reversed(delivery):
            if t <= since:
                then, pkts = t, n
                break
        return (self._arrived_pkts - pkts) / (last - then) if last > then else 0.0

    def send_periodic_nak(self, now: float) -> None:
        # only the losses not reported within a NAK period: the others' repairs may be on the way
        limit = max(1, self._session.payload_size // 8)
        due = self.loss.due(now, self._nak_interval * 0.99, limit)
        runs = [(wire(f), wire(lst)) for f, lst in due]
        if runs:
            self._session._send_control(_NAK_WORD, 0, encode_loss_list(runs), now)
            self.stats.pkt_sent_nak += 1
        self._update_nak_interval(now)

    def _update_nak_interval(self, now: float) -> None:
        # The draft's NAK period: long enough for a resent packet to arrive (RTT + 4 RTTVar,
        # plus the time to resend the losses at the arrival rate, at most another RTT), but
        # not the reference's 300 ms floor: a lost retransmission would stall the stream. And
        # at most half the sender's shortest EXP period, so that a receiver stuck on a hole
        # speaks up before the sender decides it timed out and resends its whole window.
        s = self._session
        base = s.rtt + 4 * s.rtt_var + SYN
        speed = self.arrival_rate()
        extra = min(len(self.loss) / speed, base) if speed > 0 else 0.0
        self._nak_interval = min(max(base + extra, _MIN_NAK), _MAX_NAK)
        self.next_nak = now + self._nak_interval

    # -- data packets -------------------------------------------------------------------------
    def _pair_across(self, first31: int, batch: int, now: float) -> None:
        """Packet pairs (16n, 16n+1): a run starting at ``first31`` may complete one begun earlier."""
        if first31 & 0xF == 1 and self._probe_seq31 == first31 - 1 and self._probe_batch != batch:
            self._probe.add(max(now - self._probe_time, BACK_TO_BACK))
            self._probe_seq31 = -1

    def _pair_within(self, first31: int, count: int, last31: int, batch: int, now: float) -> None:
        """A run of ``count`` from ``first31`` to ``last31`` holds a pair, or starts one at its end."""
        if (-first31) & 0xF <= count - 2:
            self._probe.add(BACK_TO_BACK)  # a pair inside this datagram
        if last31 & 0xF == 0:
            self._probe_time = now
            self._probe_batch = batch
            self._probe_seq31 = last31

    def on_data_segments(
        self, buf: bytes | bytearray | memoryview, start: int, end: int, seg: int, now: float
    ) -> int:
        """Process data packets at ``buf[start:end]`` (``seg`` bytes each, the last maybe shorter).

        Returns the offset where processing stopped: a packet for another
        session or a control packet (the endpoint carries on from there).
        """
        s = self._session
        s._heard(now)
        self._batch += 1
        batch = self._batch
        arrival = s.endpoint.arrival  # packet pairs are timed by arrival, not by reading
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        my_id = s.socket_id
        payload_size = s.payload_size
        full = payload_size + HEADER_SIZE
        is_stream = self.is_stream
        off = start
        count = 0
        nbytes = 0
        short = False
        while off < end:
            if seg == full and is_stream and not self.reorder:
                # The fast path: a run of full-size, in-order stream packets goes straight to the
                # reader as views of the datagram, no per-packet state beyond the sequence number.
                take = min((end - off) // full, self.rcv_buf - 1 - self.held())
                if take > 0:
                    expect = first = self.next31
                    unpack = _SEQ_DEST.unpack_from
                    append = self.readable.append
                    o = off
                    stop = off + take * full
                    while o < stop:
                        w0, dest = unpack(buf, o)
                        if w0 != expect or dest != my_id:
                            break
                        append(view[o + HEADER_SIZE : o + full])
                        expect = (w0 + 1) & SEQ_MASK
                        o += full
                    k = (o - off) // full
                    if k:
                        # packet pairs, timed only across datagrams: the first packet here may
                        # complete a pair, the last one may start one
                        self._pair_across(first, batch, arrival)
                        self._pair_within(first, k, (expect - 1) & SEQ_MASK, batch, arrival)
                        self._advanced_to(self.next + k, expect)
                        self.readable_bytes += k * payload_size
                        count += k
                        nbytes += k * payload_size
                        off = o
                        continue
            # one packet, the general way
            pend = off + seg if off + seg < end else end
            w0, w1, _ts, dest = HEADER.unpack_from(buf, off)
            if dest != my_id or w0 & CONTROL_FLAG:
                break
            count += 1
            plen = pend - off - HEADER_SIZE
            nbytes += plen
            if plen != payload_size:
                short = True
            low = w0 & 0xF
            if low == 0:
                self._probe_time = arrival
                self._probe_batch = batch
                self._probe_seq31 = w0
            elif low == 1 and self._probe_seq31 == w0 - 1:
                # across datagrams: their spacing; within one coalesced datagram: back to back
                gap = arrival - self._probe_time if self._probe_batch != batch else BACK_TO_BACK
                self._probe.add(max(gap, BACK_TO_BACK))
                self._probe_seq31 = -1
            if w0 == self.next31 and is_stream and not self.reorder and self.held() < self.rcv_buf - 1:
                self.readable.append(view[off + HEADER_SIZE : pend])
                self.readable_bytes += plen
                nxt = self.next + 1
                self._advanced_to(nxt, nxt & SEQ_MASK)
            else:
                self._on_data_slow(w0, w1, view[off + HEADER_SIZE : pend], now)
            off = pend
        if count:
            self._received(count, nbytes, self.curr, short, now)
        return off

    def accept_run(
        self,
        payload: bytes,
        count: int,
        first31: int,
        last_len: int,
        now: float,
        arrivals: Sequence[float] | None = None,
    ) -> None:
        """``count`` in-order stream packets, their payloads joined (the fast path): from one
        coalesced datagram, or ``count`` datagrams that arrived at ``arrivals``."""
        s = self._session
        s._heard(now)
        self._batch += 1
        batch = self._batch
        last31 = (first31 + count - 1) & SEQ_MASK
        if arrivals is None:
            # packet pairs (16n, 16n+1) timed only across datagrams, by arrival
            arrival = s.endpoint.arrival
            self._pair_across(first31, batch, arrival)
            self._pair_within(first31, count, last31, batch, arrival)
        else:
            self._pairs_stamped(first31, count, arrivals)
        self.readable.append(payload)
        self.readable_bytes += len(payload)
        nxt = self.next + count
        self._advanced_to(nxt, wire(nxt))
        self._received(count, len(payload), nxt - 1, last_len != s.payload_size, now, arrivals)

    def _pairs_stamped(self, first31: int, count: int, arrivals: Sequence[float]) -> None:
        """Packet pairs (16n, 16n+1) among ``count`` datagrams from ``first31``, each with its stamp."""
        probe = self._probe
        if first31 & 0xF == 1 and self._probe_seq31 == first31 - 1:
            probe.add(max(arrivals[0] - self._probe_time, BACK_TO_BACK))
        for j in range((-first31) & 0xF, count - 1, 16):
            probe.add(max(arrivals[j + 1] - arrivals[j], BACK_TO_BACK))
        self._probe_seq31 = -1
        last31 = (first31 + count - 1) & SEQ_MASK
        if last31 & 0xF == 0:
            self._probe_time = arrivals[-1]
            self._probe_seq31 = last31
            self._probe_batch = -1  # stamped: the next datagram's own stamp times the pair

    def _advanced_to(self, nxt: int, nxt31: int) -> None:
        """Everything before ``nxt`` (``nxt31`` on the wire) has arrived."""
        self.next = nxt
        self.next31 = nxt31
        if nxt - 1 > self.curr:
            self.curr = nxt - 1

    def _received(
        self,
        count: int,
        nbytes: int,
        top: int,
        short: bool,
        now: float,
        arrivals: Sequence[float] | None = None,
    ) -> None:
        """After a datagram's ``count`` data packets (up to ``top``; ``count`` datagrams that
        arrived at ``arrivals``): counters, the controller, the reader, light ACKs."""
        s = self._session
        stats = self.stats
        stats.pkt_recv += count
        stats.bytes_recv += nbytes
        if arrivals is None:
            self._arrived(count, now)
        else:
            self._arrived_stamped(arrivals, now)
        self._pkt_count += count
        cc = self.cc
        cc.now = int(now * 1_000_000)
        cc.on_pkt_received(top, count)
        if short:
            self.next_ack = now
        if self.readable_bytes or self.messages:
            s.endpoint._readable(s)
        if self._pkt_count >= _LIGHT_ACK_PACKETS * self._light_ack_count:
            self.send_ack(now, light=True)
            self._light_ack_count += 1
        s._reschedule()

    def _on_data_slow(self, seq31: int, w1: int, payload: Any, now: float) -> None:
        seq = unwrap(seq31, self.next)
        offset = seq - self.next
        if offset < 0:
            self.stats.pkt_recv_dup += 1
            return
        if offset >= self.rcv_buf - self.held() - 1:
            return  # beyond the receive window
        reorder = self.reorder
        if seq in reorder:
            # already here, or given up by a drop request
            self.stats.pkt_recv_dup += 1
            return
        curr = self.curr
        if seq > curr + 1:
            # a gap: report it at once
            first, last = curr + 1, seq - 1
            self.loss.insert(first, last, now)
            self.stats.pkt_rcv_loss += last - first + 1
            body = encode_loss_list([(wire(first), wire(last))])
            self._session._send_control(_NAK_WORD, 0, body, now)
            self.stats.pkt_sent_nak += 1
            self._nak_sent = True
            if self.config.periodic_nak and len(self.loss) == last - first + 1:
                self._update_nak_interval(now)
        if seq > curr:
            self.curr = seq
        else:
            self.loss.remove(seq)
        reorder[seq] = (w1, payload)
        if not self.is_stream and not (w1 & MSG_IN_ORDER) and offset:
            self._note_unordered(seq, w1)
        if offset == 0:
            self._advance()

    def _advance(self) -> None:
        """Move everything contiguous from the reorder buffer to the reader."""
        reorder = self.reorder
        nxt = self.next
        is_stream = self.is_stream
        while nxt in reorder:
            entry = reorder.pop(nxt)
            if entry is not None:
                w1, payload = entry
                if is_stream:
                    self.readable.append(payload)
                    self.readable_bytes += len(payload)
                else:
                    self._assemble(w1, payload)
            elif not is_stream:
                self._delivered_early.discard(nxt)
            nxt += 1
        if nxt != self.next:
            self._advanced_to(nxt, wire(nxt))
            self.loss.remove_below(nxt)
            if self.readable_bytes or self.messages:
                s = self._session
                s.endpoint._readable(s)

    def on_drop_request(self, data: bytes | bytearray | memoryview, w1: int) -> None:
        """The peer gave up on a message (its TTL passed): forget it, stop waiting for it."""
        if len(data) < HEADER_SIZE + 8:
            return
        first31, last31 = struct.unpack_from("!II", data, HEADER_SIZE)
        if first31 > SEQ_MASK or last31 > SEQ_MASK:
            return
        first = unwrap(first31, self.next)
        last = unwrap(last31, self.next)
        if last < first or last - first > self.rcv_buf:
            return
        msgno = w1 & MAX_MSGNO
        self.stats.msg_dropped += 1
        reorder = self.reorder
        lo = max(first, self.next)
        for seq in range(lo, last + 1):
            entry = reorder.get(seq)
            if entry is None or (entry[0] & MAX_MSGNO) == msgno:
                reorder[seq] = _DROPPED
        self.loss.remove_range(first, last)
        if last > self.curr and first <= self.curr + 1:
            self.curr = last
        # a message being assembled from this one is gone too
        if self._msg_parts and first <= self.next - 1:
            self._drop_parts()
        self._unordered.pop(msgno, None)
        self._advance()

    # -- messages ---------------------------------------------------------------------------------
    def _drop_parts(self) -> None:
        self._msg_parts.clear()
        self.buffered_pkts -= self._msg_parts_pkts
        self._msg_parts_pkts = 0

    def _assemble(self, w1: int, payload: Any) -> None:
        parts = self._msg_parts
        if w1 & MSG_FIRST:
            if parts:
                # a message without its last packet: corrupt, drop it
                self._drop_parts()
        elif not parts:
            return  # the middle of a dropped message
        parts.append(payload)
        self._msg_parts_pkts += 1
        self.buffered_pkts += 1
        if w1 & MSG_LAST:
            if self._unordered:
                self._unordered.pop(w1 & MAX_MSGNO, None)
            data = b"".join(parts)
            self.messages.append((data, self._msg_parts_pkts))
            self.readable_bytes += len(data)
            parts.clear()
            self._msg_parts_pkts = 0

    def _note_unordered(self, seq: int, w1: int) -> None:
        """An out-of-order packet of an unordered message: deliver the message once it is whole."""
        msgno = w1 & MAX_MSGNO
        info = self._unordered.get(msgno)
        if info is None:
            info = self._unordered[msgno] = [-1, -1, 0]
        if w1 & MSG_FIRST:
            info[0] = seq
        if w1 & MSG_LAST:
            info[1] = seq
        info[2] += 1
        first, last, have = info
        if first < 0 or last < 0 or have != last - first + 1:
            return
        del self._unordered[msgno]
        reorder = self.reorder
        parts = []
        for s in range(first, last + 1):
            entry = reorder.get(s)
            if entry is None:
                return
            parts.append(entry[1])
        data = b"".join(parts)
        npkts = last - first + 1
        for s in range(first, last + 1):
            reorder[s] = _DROPPED
            self._delivered_early.add(s)
        self.messages.append((data, npkts))
        self.readable_bytes += len(data)
        self.buffered_pkts += npkts
        session = self._session
        session.endpoint._readable(session)
