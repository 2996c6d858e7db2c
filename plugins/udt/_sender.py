"""The sending side of a session: the send buffer and what is done with it.

:class:`SendBuffer` plays the part of the reference's ``CSndBuffer``: the
data the application handed over and the peer has not acknowledged yet, kept
as the application gave it (one :class:`_Chunk` per ``send``, its bytes
referenced, never copied) and read out packet by packet by sequence number.
:class:`Sender` is the sending half of the reference's ``CUDT``: which
packets go next (retransmissions first, then new data within the flow and
congestion windows), their pacing in bursts packed for GSO, and the
processing of the peer's ACKs and NAKs. Sequence numbers are extended (see
:mod:`._seq`); they are cut to 31 bits as packets are packed.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any, Final

from ._engine import SYN, CloseReason, State
from ._losslist import LossList
from ._packet import (
    HEADER,
    HEADER_SIZE,
    LOSS_RANGE_FLAG,
    MSG_FIRST,
    MSG_IN_ORDER,
    MSG_LAST,
    ControlType,
    control_word,
    repeated_struct,
)
from ._seq import SEQ_MASK, next_msgno, unwrap, wire

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["SendBuffer", "Sender"]

_NEVER: Final = math.inf
#: At most this many packets in one GSO batch, and this many bytes.
MAX_SEGMENTS: Final = 64
MAX_GSO_BYTES: Final = 65000
_WORD: Final = struct.Struct("!I")
_ACK2_WORD: Final = control_word(ControlType.ACK2)
_DROP_WORD: Final = control_word(ControlType.DROP_REQUEST)
_PAD: Final = b"\0\0\0\0"


class _Chunk:
    """A run of send-buffer packets from one ``send``: stream bytes or one message."""

    __slots__ = ("data", "dropped", "first", "in_order", "msgno", "npkts", "origin", "ttl", "view")

    def __init__(
        self,
        first: int,
        data: bytes | memoryview,
        npkts: int,
        msgno: int,
        in_order: bool,
        ttl: float | None,
        origin: float,
    ) -> None:
        self.first = first
        self.data = data
        self.view = memoryview(data)
        self.npkts = npkts
        self.msgno = msgno
        self.in_order = in_order
        self.ttl = ttl
        self.origin = origin
        self.dropped = False

    @property
    def end(self) -> int:
        return self.first + self.npkts

    def expired(self, now: float) -> bool:
        return self.ttl is not None and now - self.origin > self.ttl

    def msg_word(self, idx: int) -> int:
        """The second header word of its packet ``idx``: boundary bits, in-order bit, message number."""
        word = self.msgno | (MSG_IN_ORDER if self.in_order else 0)
        if idx == 0:
            word |= MSG_FIRST
        if idx == self.npkts - 1:
            word |= MSG_LAST
        return word


class SendBuffer:
    """The unacknowledged data, by sequence number, and the position of the next new packet.

    ``start`` is the first sequence number not yet acknowledged, ``end`` the
    one after the last buffered packet; the next new packet to send is packet
    ``pkt`` of chunk ``chunk``. Chunks before ``head`` are acknowledged
    (dropped from the list in batches).
    """

    __slots__ = ("bytes", "chunk", "chunks", "end", "head", "msgno", "pkt", "start")

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.head = 0
        self.chunk = 0
        self.pkt = 0
        self.start = 0
        self.end = 0
        #: Bytes held (acknowledged chunks leave whole).
        self.bytes = 0
        self.msgno = 1

    def reset(self, isn: int) -> None:
        self.start = self.end = isn

    @property
    def packets(self) -> int:
        """Packets held: sent but unacknowledged, or not sent yet."""
        return self.end - self.start

    def add(
        self, data: bytes | memoryview, npkts: int, in_order: bool, ttl: float | None, now: float
    ) -> None:
        self.chunks.append(_Chunk(self.end, data, npkts, self.msgno, in_order, ttl, now))
        self.msgno = next_msgno(self.msgno)
        self.end += npkts
        self.bytes += len(data)

    def locate(self, seq: int) -> tuple[_Chunk, int] | None:
        """The chunk holding packet ``seq`` and the packet's index in it."""
        chunks = self.chunks
        lo, hi = self.head, len(chunks)
        while lo < hi:
            mid = (lo + hi) // 2
            if chunks[mid].first <= seq:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
        if i < self.head:
            return None
        chunk = chunks[i]
        if seq >= chunk.end:
            return None
        return chunk, seq - chunk.first

    def skip_to(self, seq: int) -> None:
        """Move the next new packet's position to ``seq``."""
        chunks = self.chunks
        ci = self.chunk
        while ci < len(chunks) and chunks[ci].end <= seq:
            ci += 1
        self.chunk = ci
        self.pkt = seq - chunks[ci].first if ci < len(chunks) else 0

    def release(self, ack: int) -> None:
        """Everything before ``ack`` was acknowledged: free the chunks it covers."""
        self.start = ack
        chunks = self.chunks
        head = self.head
        n = len(chunks)
        freed = 0
        while head < n and chunks[head].end <= ack:
            freed += len(chunks[head].data)
            head += 1
        self.bytes -= freed
        if head > 256 and head * 2 > n:
            del chunks[:head]
            self.chunk -= head
            head = 0
        self.head = head

    def clear(self) -> None:
        self.chunks.clear()
        self.head = self.chunk = 0


class Sender:
    """The packets a session sends: the send buffer, the loss list, pacing, the peer's ACKs and NAKs.

    ``next`` is the next new sequence number to send, ``last_ack`` the
    peer's latest acknowledgement (light ACKs included: it bounds the flow
    window), ``buffer.start`` the latest full one (what the buffer may free).
    ``flow_window``, ``delivery_rate`` and ``bandwidth`` are what the peer's
    handshake and ACKs report; ``period`` and ``cwnd`` what the congestion
    controller set.
    """

    def __init__(self, session: Session, now: float) -> None:
        self._session = session
        self.stats = session.stats
        self.config = session.config
        self.buffer = SendBuffer()
        self.next = 0
        self.last_ack = 0
        self.loss = LossList()
        #: What the peer reported lost and has not acknowledged yet, by when it was reported.
        self.holes = LossList()
        #: When the next packet is due (pacing), and whether there is anything to send.
        self.next_time = now
        self.want = False
        self.period = 1e-6  # seconds per packet
        self.cwnd = 16.0
        self.flow_window = session.config.flight_flag_size
        self.delivery_rate = 16  # packets/s, from the peer's ACKs
        self.bandwidth = 1  # packets/s, from the peer's ACKs
        self._rate_seen = False
        self._bw_seen = False
        self._last_ack2_seqno = -1
        self._last_ack2_time = -_NEVER
        #: When the cumulative ACK last moved (or the packet it waits for was last resent).
        self._ack_moved = now

    def reset(self, isn: int) -> None:
        self.next = isn
        self.last_ack = isn
        self.buffer.reset(isn)

    @property
    def buffered(self) -> int:
        """Packets in the send buffer (sent but unacknowledged, or not yet sent)."""
        return self.buffer.end - self.buffer.start

    def clear(self) -> None:
        self.loss.clear()
        self.holes.clear()
        self.buffer.clear()

    # -- taking data ------------------------------------------------------------
    def send_stream(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue stream bytes; returns how many fit in the send buffer (possibly 0)."""
        size = len(data)
        if not size:
            return 0
        free = self.config.snd_buf - self.buffered
        if free <= 0:
            return 0
        take = min(size, free * self._session.payload_size)
        # Immutable bytes (directly or under a memoryview) are kept by reference; anything
        # the caller may change after send_all returns is copied.
        chunk_data: bytes | memoryview
        if isinstance(data, bytes):
            chunk_data = data if take == size else memoryview(data)[:take]
        elif isinstance(data, memoryview) and isinstance(data.obj, bytes) and data.contiguous:
            chunk_data = data[:take]  # a new view: the caller may release its own
        else:
            chunk_data = bytes(data[:take])
        self._enqueue(chunk_data, False, None, now)
        return take

    def send_message(
        self, data: bytes | bytearray | memoryview, now: float, ttl: float | None, in_order: bool
    ) -> bool:
        """Queue one message whole; ``False`` when the send buffer lacks room for it now."""
        npkts = max(1, -(-len(data) // self._session.payload_size))
        if self.config.snd_buf - self.buffered < npkts:
            return False
        self._enqueue(bytes(data), in_order, ttl, now)
        return True

    def _enqueue(self, data: bytes | memoryview, in_order: bool, ttl: float | None, now: float) -> None:
        s = self._session
        npkts = max(1, -(-len(data) // s.payload_size))
        buffer = self.buffer
        if buffer.end == buffer.start:
            # nothing was outstanding: restart the EXP clock (as the reference does)
            s._last_rsp = now
        buffer.add(data, npkts, in_order, ttl, now)
        if not self.want:
            self.want = True
            if self.next_time < now:
                self.next_time = now
        s._reschedule()

    # -- sending ------------------------------------------------------------------
    def can_send_new(self) -> bool:
        if self.next >= self.buffer.end:
            return False
        return self.next - self.last_ack < int(min(self.flow_window, self.cwnd))

    def emit(self, now: float) -> None:
        """Send what pacing, the windows and the buffers allow now, in GSO batches."""
        s = self._session
        period = self.period
        late = now - self.next_time
        cfg = self.config
        burst = cfg.max_burst
        if late > burst:
            late = burst
            self.next_time = now - burst
        budget = min(max(int(late / period) + 1, int(cfg.min_burst / period), cfg.min_burst_packets), 4096)
        out = s.endpoint._out
        addr = s.peer_addr
        peer_id = s.peer_id
        ts = s._now_us(now)
        payload_size = s.payload_size
        full = payload_size + HEADER_SIZE
        sent = retrans = nbytes = 0
        buffer = self.buffer
        first_sent = self.next

        loss = self.loss
        if loss:
            batch = _Batch(out, addr)
            while sent < budget and loss:
                seq = loss.pop_first()
                if seq < buffer.start:
                    continue
                where = buffer.locate(seq)
                if where is None:
                    continue
                chunk, idx = where
                if chunk.expired(now):
                    self.drop_message(chunk, now)
                    continue
                start = idx * payload_size
                piece = chunk.view[start : start + payload_size]
                batch.add(HEADER.pack(wire(seq), chunk.msg_word(idx), ts, peer_id), piece)
                sent += 1
                retrans += 1
                nbytes += len(piece)
            batch.flush()
            first_sent = self.next

        probe = 0
        if sent < budget and self.next < buffer.end:
            room = int(min(self.flow_window, self.cwnd)) - (self.next - self.last_ack)
            available = buffer.end - self.next
            todo = min(budget - sent, room, available)
            if todo > 0 and (self.next + todo - 1) & 0xF == 0 and todo < min(room, available):
                # The reference sends packet 16n+1 right behind 16n, unpaced: the receiver
                # times the pair to estimate the link's capacity.
                todo += 1
                probe = 1
            chunks = buffer.chunks
            max_batch = min(MAX_SEGMENTS, MAX_GSO_BYTES // full)
            while todo > 0:
                chunk = chunks[buffer.chunk]
                pi = buffer.pkt
                if pi == 0 and chunk.expired(now):
                    # expired before its first packet left: drop it whole
                    skipped = chunk.npkts
                    self.drop_message(chunk, now)
                    todo -= skipped
                    continue
                npkts = chunk.npkts
                k = min(todo, npkts - pi)
                view = chunk.view
                base = chunk.msgno | (MSG_IN_ORDER if chunk.in_order else 0)
                last = npkts - 1
                seq = self.next
                j = pi
                end = pi + k
                while j < end:
                    # One GSO batch as an iovec list: its headers packed in one call, then
                    # header and payload views alternating (the kernel gathers them).
                    m = min(end - j, max_batch)
                    flat = [0, base, ts, peer_id] * m
                    if seq + m - 1 <= SEQ_MASK:
                        flat[0::4] = range(seq, seq + m)
                    else:
                        flat[0::4] = [x & SEQ_MASK for x in range(seq, seq + m)]
                    if j == 0:
                        flat[1] |= MSG_FIRST
                    if j + m - 1 == last:
                        flat[4 * m - 3] |= MSG_LAST
                    headers = memoryview(repeated_struct("IIII", m).pack(*flat))
                    iov: list[Any] = [None] * (2 * m)
                    iov[0::2] = [headers[h : h + HEADER_SIZE] for h in range(0, HEADER_SIZE * m, HEADER_SIZE)]
                    first_byte = j * payload_size
                    iov[1::2] = [
                        view[b : b + payload_size]
                        for b in range(first_byte, first_byte + m * payload_size, payload_size)
                    ]
                    out.append((iov, addr, full if m > 1 else 0))
                    nbytes += min(len(view), first_byte + m * payload_size) - first_byte
                    seq += m
                    j += m
                self.next = seq
                sent += k
                todo -= k
                if end >= npkts:
                    buffer.chunk += 1
                    buffer.pkt = 0
                else:
                    buffer.pkt = end

        if sent:
            stats = self.stats
            stats.pkt_sent += sent
            stats.pkt_retrans += retrans
            stats.bytes_sent += nbytes
            self.next_time += (sent - probe) * period
            cc = s.cc
            cc.snd_curr_seq = self.next - 1
            if sent > retrans:
                cc.on_pkt_sent(first_sent, sent - retrans)
        if not loss and self.next >= buffer.end:
            self.want = False
        elif not sent and self.next_time < now:
            # blocked by the window: the next ACK reopens it
            self.next_time = now

    def drop_message(self, chunk: _Chunk, now: float) -> None:
        """Give up on ``chunk`` (its TTL passed): skip it and ask the peer to drop it too."""
        first, last = chunk.first, chunk.end - 1
        self.loss.remove_range(first, last)
        if self.next <= last:
            # skip the packets of it not sent yet
            self.next = last + 1
            self.buffer.skip_to(self.next)
        if not chunk.dropped:  # a repeated NAK may hit it again: the request is resent, counted once
            chunk.dropped = True
            self.stats.msg_dropped += 1
        body = struct.pack("!II", wire(first), wire(last))
        self._session._send_control(_DROP_WORD, chunk.msgno, body, now)

    def on_timeout(self) -> int:
        """An EXP timeout with data outstanding: everything unacknowledged is lost; how many packets."""
        if self.next == self.last_ack or self.loss:
            return 0
        return self.loss.insert(self.last_ack, self.next - 1)

    def wake(self, now: float) -> None:
        """Something must be (re)sent: due now at the latest."""
        self.want = True
        self.next_time = min(self.next_time, now)

    # -- the peer's ACKs and NAKs ----------------------------------------------------
    def on_ack(self, data: bytes | bytearray | memoryview, ack_seqno: int, now: float) -> None:
        size = len(data) - HEADER_SIZE
        if size < 4:
            return
        ack31 = _WORD.unpack_from(data, HEADER_SIZE)[0]
        if ack31 > SEQ_MASK:
            return  # not a sequence number
        ack = unwrap(ack31, self.last_ack)
        stats = self.stats
        stats.pkt_recv_ack += 1
        if size == 4:
            # light ACK: only moves the flow window
            if ack >= self.last_ack:
                self.flow_window -= ack - self.last_ack
                self.last_ack = ack
            return
        if size < 16:
            return
        s = self._session
        # ACK2, not for every ACK: at most one per SYN, or for a repeated ACK
        if now - self._last_ack2_time > SYN or ack_seqno == self._last_ack2_seqno:
            s._send_control(_ACK2_WORD, ack_seqno, _PAD, now)
            self._last_ack2_seqno = ack_seqno
            self._last_ack2_time = now
            stats.pkt_sent_ack2 += 1
        if ack > self.next:
            # acknowledges what was never sent: an attack or a bug
            s._finish(CloseReason.PROTOCOL, now, send_shutdown=True)
            return
        rtt, _var, avail = struct.unpack_from("!iii", data, HEADER_SIZE + 4)
        if ack >= self.last_ack:
            self.flow_window = max(avail, 0)
            self.last_ack = ack
        buffer = self.buffer
        if ack <= buffer.start:
            self.resend_stuck(now)
            return
        self._ack_moved = now
        self.loss.remove_below(ack)
        self.holes.remove_below(ack)
        buffer.release(ack)
        if rtt > 0:
            s._rtt_sample(rtt / 1_000_000)
        if size >= 24:
            # EWMAs of the peer's reports, as the reference; but where it starts them from
            # placeholders (16 and 1 packets/s), the first report is taken as it is
            rate, bw = struct.unpack_from("!ii", data, HEADER_SIZE + 16)
            if rate > 0:
                self.delivery_rate = (self.delivery_rate * 7 + rate) >> 3 if self._rate_seen else rate
                self._rate_seen = True
            if bw > 0:
                self.bandwidth = (self.bandwidth * 7 + bw) >> 3 if self._bw_seen else bw
                self._bw_seen = True
        s._cc_inputs(now)
        s.cc.on_ack(ack)
        s._cc_update()
        if (self.next < buffer.end or self.loss) and not self.want:
            self.want = True
            self.next_time = max(self.next_time, now - self.config.max_burst)
        s.endpoint._writable(s)
        if s.state is State.CLOSING and not self.buffered:
            s._finish(CloseReason.LOCAL, now, send_shutdown=True)

    def on_nak(self, data: bytes | bytearray | memoryview, now: float) -> None:
        self.stats.pkt_recv_nak += 1
        body = data[HEADER_SIZE:]
        if len(body) % 4 or not body:
            return
        s = self._session
        words = struct.unpack(f"!{len(body) // 4}I", body)
        runs: list[tuple[int, int]] = []
        i, n = 0, len(words)
        ref = self.last_ack
        while i < n:
            w = words[i]
            if w & LOSS_RANGE_FLAG:
                if i + 1 >= n:
                    s._finish(CloseReason.PROTOCOL, now, send_shutdown=True)
                    return
                first = unwrap(w & SEQ_MASK, ref)
                last = unwrap(words[i + 1], ref)
                i += 2
            else:
                first = last = unwrap(w, ref)
                i += 1
            if first > last or last >= self.next:
                # a loss beyond what was sent: an attack or a bug
                s._finish(CloseReason.PROTOCOL, now, send_shutdown=True)
                return
            runs.append((first, last))
        s._cc_inputs(now)
        s.cc.on_loss(runs)
        s._cc_update()
        added = 0
        floor = self.last_ack
        for first, last in runs:
            if last >= floor:
                added += self.loss.insert(max(first, floor), last)
                self.holes.insert(max(first, floor), last, now)
        self.stats.pkt_snd_loss += added
        self.resend_stuck(now)
        if self.loss:
            self.wake(now)

    def _stuck_wait(self) -> float:
        s = self._session
        return 2 * (s.rtt + 2 * s.rtt_var + SYN)

    def stuck_deadline(self) -> float:
        """When the packets the cumulative ACK waits for are resent (see :meth:`resend_stuck`)."""
        if self.buffer.start >= self.next:
            return _NEVER
        return self._ack_moved + self._stuck_wait()

    def resend_stuck(self, now: float) -> None:
        """The cumulative ACK has not moved for two round trips: resend what it waits for.

        That is the packet at the ACK, and every loss the peer reported a round trip
        ago or earlier: their retransmissions were lost too (or, for the
        packet at the ACK, its loss was never reported: the last packets before a
        pause). A receiver that reports each loss once, as the reference's does,
        leaves them to the sender's EXP timer: that one does not fire while the
        receiver's other reports keep coming, so the sender runs on until the flow
        window is used up; and when it fires (at least 300 ms of silence), the
        whole window is resent, though the receiver lacks a few packets of it.
        """
        if now < self.stuck_deadline():
            return
        self._ack_moved = now
        head = self.buffer.start
        added = self.loss.insert(head, head)
        # a retransmission sent when its loss was reported is acknowledged a round trip on
        for first, last in self.holes.due(now, self._stuck_wait() / 2, len(self.holes)):
            added += self.loss.insert(first, last)
        if added:
            self.stats.pkt_snd_loss += added
            self.wake(now)


class _Batch:
    """Collects packets into GSO batches: equal-size segments, a shorter one only last."""

    __slots__ = ("addr", "buf", "count", "out", "seg")

    def __init__(self, out: list[tuple[Any, tuple[Any, ...], int]], addr: tuple[Any, ...]) -> None:
        self.out = out
        self.addr = addr
        self.buf = bytearray()
        self.seg = 0
        self.count = 0

    def add(self, header: bytes, payload: Any) -> None:
        size = HEADER_SIZE + len(payload)
        if self.count and (
            size > self.seg or self.count >= MAX_SEGMENTS or len(self.buf) + size > MAX_GSO_BYTES
        ):
            self.flush()
        if not self.count:
            self.seg = size
        self.buf += header
        self.buf += payload
        self.count += 1
        if size < self.seg:
            self.flush()  # a short segment ends a batch

    def flush(self) -> None:
        if self.count:
            self.out.append((self.buf, self.addr, self.seg if self.count > 1 else 0))
            self.buf = bytearray()
            self.count = 0
