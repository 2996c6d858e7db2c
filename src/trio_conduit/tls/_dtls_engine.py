"""A sans-IO DTLS engine: an OpenSSL ``SSL.Connection`` over memory BIOs, datagrams in and out.

Theory of operation. OpenSSL does the protocol (records, handshake, replay
window, close_notify); this class moves bytes between it and datagrams and
keeps the clock. Nothing here does I/O or reads a clock: the caller passes
``now`` (seconds, any monotonic origin: ``trio.current_time()``), sends what
:meth:`DTLSEngine.datagrams_to_send` returns, feeds each received datagram to
:meth:`DTLSEngine.receive_datagram` and calls :meth:`DTLSEngine.handle_timeout`
at :meth:`DTLSEngine.next_deadline`.

Datagrams out. OpenSSL writes records back to back into its memory BIO; they
are split at their 13-byte headers and packed, whole, into datagrams of at
most ``mtu`` bytes (a record is never split; OpenSSL fragments handshake
messages to fit ``set_ciphertext_mtu``, so only a record larger than the MTU
after a fallback goes alone in a larger datagram).

Retransmission: our own timer, not OpenSSL's. OpenSSL's DTLS timer
(``DTLSv1_get_timeout``/``DTLSv1_handle_timeout``) reads the real clock inside
OpenSSL, so it cannot be driven by the time passed in (a test's virtual clock,
a caller's deadline) and it cannot be asked to retransmit now. So each flight
the engine sends is kept; when no answer came within the retransmission
timeout (1 s, doubled at each loss up to 60 s, as RFC 6347 §4.2.4.1 says)
the engine first gives OpenSSL its chance (``DTLSv1_handle_timeout``: when its
own timer has expired too it rewrites the flight, fragmented for the current
MTU, and that is sent), else resends the kept datagrams as they are.
Retransmitted records are byte-identical copies, which the peer's replay
window treats as duplicates: harmless. A handshake also has an overall
deadline (``handshake_timeout``): past it :meth:`handle_timeout` raises
:class:`~trio_conduit.tls.TLSHandshakeTimeout`.

Our timer fires :data:`_LOCKSTEP` (10 ms) after the RTO, so that OpenSSL's
timer, started with the flight and of the same length, has expired by then
on a real clock: OpenSSL rewrites, our copies are the fallback (and all
there is under a virtual clock).

MTU fallback: from the second loss of a flight on, each loss steps the MTU
down (:data:`MTU_STEPS`: 1472 → 1232 → 1024 → 576 → 512 bytes of ciphertext,
never above the ``mtu`` asked for) and tells OpenSSL
(``set_ciphertext_mtu``), so OpenSSL's rewrite of this flight, and every later
flight, fit the smaller size. (Our kept copies of a flight are not
re-fragmented: a DTLS record cannot be split without OpenSSL's sequence
numbers.)

Closing: :meth:`close` makes OpenSSL write close_notify (to be sent); a
received close_notify (``ZeroReturnError``) sets :attr:`peer_closed`, which
the channel above turns into an end of channel.

Contexts: pyOpenSSL ≥ 26.2 forbids changing an ``SSL.Context`` once it made a
connection, so the engine only reads the context it is given; every setting
is made when the context is built (:mod:`._dtls_config`).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from typing import Final

from OpenSSL import SSL

from ._errors import TLSError, TLSHandshakeTimeout

__all__ = [
    "DEFAULT_MTU",
    "MIN_MTU",
    "MTU_STEPS",
    "DTLSEngine",
    "DTLSState",
    "split_records",
]

_HEADER: Final = struct.Struct("!BHH6sH")
#: Ciphertext MTU by default: an Ethernet path's 1500 less IPv4 and UDP headers.
DEFAULT_MTU: Final = 1472
#: Below this OpenSSL cannot fragment a handshake sensibly (RFC 791's 576, less headers).
MIN_MTU: Final = 256
#: The sizes an MTU fallback steps down through (IPv6 minimum less headers, 1024, 576, 512).
MTU_STEPS: Final = (1472, 1232, 1024, 576, 512)
INITIAL_RTO: Final = 1.0
MAX_RTO: Final = 60.0
#: Losses of one flight before the MTU steps down (then one step per further loss).
LOSSES_BEFORE_FALLBACK: Final = 2
_LOCKSTEP: Final = 0.01
_READ: Final = 65536


class DTLSState(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"  # we sent close_notify, or the peer did, or it failed


def split_records(data: bytes) -> list[bytes]:
    """DTLS records as OpenSSL wrote them back to back (a trailing partial one is kept whole)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            out.append(data[pos:])
            break
        end = pos + _HEADER.size + int.from_bytes(data[pos + 11 : pos + 13], "big")
        out.append(data[pos:end])
        pos = end
    return out


def _record_end(data: bytes) -> int:
    """Where the first record of ``data`` ends (its header's length field; 0 if no header)."""
    return _HEADER.size + int.from_bytes(data[11:13], "big") if len(data) >= _HEADER.size else 0


def pack_records(records: list[bytes], mtu: int) -> list[bytes]:
    """Whole records packed in order into datagrams of at most ``mtu`` bytes (a larger record alone)."""
    out: list[bytes] = []
    current = b""
    for rec in records:
        if current and len(current) + len(rec) > mtu:
            out.append(current)
            current = b""
        current += rec
    if current:
        out.append(current)
    return out


class DTLSEngine:
    """One DTLS association's protocol state (see the module header).

    ``conn`` is a fresh ``SSL.Connection`` of a DTLS context, in connect or
    accept state (a server's may already have been through
    ``DTLSv1_listen``). ``handshake_deadline`` is an absolute time or ``None``.
    """

    def __init__(
        self,
        conn: SSL.Connection,
        *,
        mtu: int = DEFAULT_MTU,
        now: float,
        handshake_deadline: float | None = None,
    ) -> None:
        if mtu < MIN_MTU:
            raise ValueError(f"mtu: at least {MIN_MTU} bytes, got {mtu}")
        self._ssl = conn
        self._mtu = mtu
        self._mtu_ceiling = mtu
        conn.set_ciphertext_mtu(mtu)
        self._out: deque[bytes] = deque()
        self._received: deque[bytes] = deque()
        self._flight: list[bytes] = []
        self._rto = INITIAL_RTO
        self._retransmit_at: float | None = None
        self._losses = 0
        self._handshake_deadline = handshake_deadline
        self.state = DTLSState.HANDSHAKING
        self.peer_closed = False
        self.retransmits = 0
        self.mtu_fallbacks = 0
        self.started = now
        self._cleartext_mtu: int | None = None  # (known once the handshake set the cipher)

    # -- facts ----------------------------------------------------------------
    @property
    def ssl(self) -> SSL.Connection:
        return self._ssl

    @property
    def mtu(self) -> int:
        """The ciphertext MTU in force (smaller than asked after a fallback)."""
        return self._mtu

    @property
    def cleartext_mtu(self) -> int:
        """The largest message :meth:`send` takes: the MTU less record overhead."""
        if self._cleartext_mtu is None:
            return int(self._ssl.get_cleartext_mtu())
        return self._cleartext_mtu

    @property
    def handshake_done(self) -> bool:
        return self.state is not DTLSState.HANDSHAKING

    # -- input ----------------------------------------------------------------
    def start(self, now: float) -> None:
        """Begin the handshake (a client writes its first flight)."""
        self._step(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """One datagram from the peer: handshake progress, or messages for :meth:`next_message`.

        Raises :class:`TLSError` when the handshake fails (OpenSSL's alert is
        then among the datagrams to send). Records OpenSSL refuses after the
        handshake (bad MAC, replays) are dropped silently, as DTLS asks.
        """
        if self.state is DTLSState.OPEN and data[:1] == b"\x17" and len(data) == _record_end(data):
            # The common case, one application_data record: one read, nothing to write.
            self._ssl.bio_write(data)
            try:
                self._received.append(self._ssl.recv(_READ))
            except SSL.WantReadError:
                pass  # a replay, a duplicate, a record that does not authenticate: dropped
            except SSL.ZeroReturnError:
                self.peer_closed = True
                self.state = DTLSState.CLOSED
            except SSL.Error:
                pass
            return
        if self.state is DTLSState.CLOSED and not self.peer_closed:
            return
        if not data:
            return
        self._ssl.bio_write(data)
        if self.state is DTLSState.HANDSHAKING:
            self._step(now)
        if self.state is DTLSState.OPEN:
            self._read_application_data()
        self._collect(as_flight=False)

    def _step(self, now: float) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._collect(as_flight=True, now=now)
            return
        except SSL.Error as exc:
            self.state = DTLSState.CLOSED
            self._collect(as_flight=False)
            raise TLSError(f"DTLS handshake failed: {_describe(exc)}", reason=_reason(exc)) from exc
        self.state = DTLSState.OPEN
        self._retransmit_at = None
        self._cleartext_mtu = int(self._ssl.get_cleartext_mtu())
        self._collect(as_flight=False)

    def _read_application_data(self) -> None:
        while True:
            try:
                data = self._ssl.recv(_READ)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self.peer_closed = True
                self.state = DTLSState.CLOSED
                return
            except SSL.Error:
                # A record OpenSSL would not take (a stale epoch, a bad MAC): dropped, as DTLS does.
                return
            self._received.append(bytes(data))

    def _written(self) -> bytes:
        """All OpenSSL has written to its outgoing memory BIO since the last call."""
        chunks = []
        while True:
            try:
                chunk = self._ssl.bio_read(_READ)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _collect(self, *, as_flight: bool, now: float = 0.0) -> None:
        """Move what OpenSSL wrote into datagrams to send; during a handshake it is a new flight."""
        written = self._written()
        if not written:
            return
        datagrams = pack_records(split_records(written), self._mtu)
        self._out.extend(datagrams)
        if as_flight and self.state is DTLSState.HANDSHAKING:
            self._flight = datagrams
            self._rto = INITIAL_RTO
            self._losses = 0
            self._retransmit_at = now + self._rto + _LOCKSTEP

    # -- timers ---------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` next has something to do (``None``: only input matters)."""
        if self.state is not DTLSState.HANDSHAKING:
            return None
        candidates = [t for t in (self._retransmit_at, self._handshake_deadline) if t is not None]
        return min(candidates) if candidates else None

    def handle_timeout(self, now: float) -> None:
        """Retransmit a flight left unanswered, step the MTU down after repeated losses,
        or raise :class:`TLSHandshakeTimeout` past the handshake deadline."""
        if self.state is not DTLSState.HANDSHAKING:
            return
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self.state = DTLSState.CLOSED
            raise TLSHandshakeTimeout(
                f"DTLS handshake did not finish within {self._handshake_deadline - self.started:g} s"
            )
        if self._retransmit_at is None or now < self._retransmit_at:
            return
        self._losses += 1
        self.retransmits += 1
        if self._losses >= LOSSES_BEFORE_FALLBACK:
            self._fall_back()
        self._rto = min(self._rto * 2, MAX_RTO)
        self._retransmit_at = now + self._rto + _LOCKSTEP
        rewrote = False
        try:
            rewrote = bool(self._ssl.DTLSv1_handle_timeout())
        except SSL.Error:
            rewrote = False
        if rewrote and (written := self._written()):
            self._flight = pack_records(split_records(written), self._mtu)
        self._out.extend(self._flight)

    def _fall_back(self) -> None:
        smaller = [m for m in MTU_STEPS if m < self._mtu]
        if not smaller:
            return
        self._mtu = smaller[0]
        self.mtu_fallbacks += 1
        self._ssl.set_ciphertext_mtu(self._mtu)
        self._cleartext_mtu = None

    # -- output -----------------------------------------------------------------
    def datagrams_to_send(self) -> list[bytes]:
        """Everything to send now, in order (then forgotten here)."""
        if not self._out:
            return []
        out = list(self._out)
        self._out.clear()
        return out

    def next_message(self) -> bytes | None:
        """The next message received, or ``None``."""
        return self._received.popleft() if self._received else None

    def send(self, message: bytes) -> None:
        """Encrypt one message as one record (a datagram to send). Raises ``ValueError``
        past :attr:`cleartext_mtu` and :class:`TLSError` when not open."""
        if self.state is not DTLSState.OPEN:
            raise TLSError("the DTLS association is not open", reason="CLOSED")
        limit = self.cleartext_mtu
        if len(message) > limit:
            raise ValueError(f"a message of {len(message)} bytes is larger than the cleartext MTU ({limit})")
        if message:  # (OpenSSL writes no record for an empty write: an empty message is not sent)
            self._ssl.send(message)
            self._out.append(self._ssl.bio_read(_READ))  # one message, one record, one datagram

    def close(self) -> None:
        """Write close_notify (to be sent); the association is then closed."""
        if self.state is DTLSState.CLOSED and not self.peer_closed:
            return
        was_open = self.state is DTLSState.OPEN or self.peer_closed
        self.state = DTLSState.CLOSED
        if was_open:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._collect(as_flight=False)


def _reason(exc: SSL.Error) -> str:
    args = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    for entry in args:
        if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
            return str(entry[2]).upper().replace(" ", "_")
    return "SSL_ERROR"


def _describe(exc: SSL.Error) -> str:
    args = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    texts = [str(e[2]) for e in args if isinstance(e, tuple) and len(e) == 3 and e[2]]
    return "; ".join(texts) or repr(exc)
