"""The UDT4 packet codec: data packets and every control packet, as the reference puts them on the wire.

Every packet starts with four 32-bit big-endian words::

    data:     0 | seq (31)      FF O | msgno (29)      timestamp      destination socket id
    control:  1 | type (15) | ext (16)   additional info   timestamp      destination socket id

followed by the payload (data) or the control information (control), which
the reference byte-swaps as 32-bit words: every control field is a
big-endian 32-bit word. One quirk is kept as the reference has it: the
handshake's "peer IP" words are the address bytes read as a *little-endian*
integer (``in_addr.s_addr`` on x86), so each 4-byte group of the address
appears byte-reversed on the wire (``127.0.0.1`` travels as ``01 00 00 7f``).

Parsing untrusted bytes goes through :func:`parse_packet_untrusted` (and the
``parse_*_untrusted`` helpers), which return a packet object or raise
:class:`BadPacket` — never anything else. Objects encode themselves with
``encode()``; encoding checks field ranges and raises ``ValueError``.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Final

from trio_conduit import ConduitError

from ._seq import MAX_MSGNO, SEQ_MASK

__all__ = [
    "CONTROL_FLAG",
    "CONTROL_TYPES",
    "HANDSHAKE_SIZE",
    "HEADER",
    "HEADER_SIZE",
    "LOSS_RANGE_FLAG",
    "MSG_FIRST",
    "MSG_IN_ORDER",
    "MSG_LAST",
    "Ack",
    "Ack2",
    "BadPacket",
    "Boundary",
    "CongestionWarning",
    "ControlPacket",
    "ControlType",
    "DataPacket",
    "DropRequest",
    "ErrorSignal",
    "Handshake",
    "KeepAlive",
    "Nak",
    "Packet",
    "RequestType",
    "Shutdown",
    "U32",
    "SocketType",
    "UserDefined",
    "control_type",
    "control_word",
    "decode_loss_list_untrusted",
    "encode_loss_list",
    "ip_from_wire",
    "ip_to_wire",
    "parse_packet_untrusted",
    "repeated_struct",
]

#: The 16-byte header: four big-endian 32-bit words.
HEADER: Final = struct.Struct("!IIII")
HEADER_SIZE: Final = 16
#: Control information of a handshake: eight 32-bit fields and a 128-bit address.
HANDSHAKE_SIZE: Final = 48
_HS: Final = struct.Struct("!iiiiiiii16s")
_WORD: Final = struct.Struct("!I")
_SWORD: Final = struct.Struct("!i")
#: The first word's top bit: set on a control packet, clear on a data packet (whose
#: first word is then its 31-bit sequence number).
CONTROL_FLAG: Final = 0x80000000
#: In a NAK's loss list, a word with the top bit set starts a run: ``first|flag, last``.
LOSS_RANGE_FLAG: Final = 0x80000000
#: A data packet's second word: the boundary bits (first and last packet of its
#: message, :class:`Boundary` shifted to the top), the in-order bit, then the
#: 29-bit message number.
MSG_FIRST: Final = 0x80000000
MSG_LAST: Final = 0x40000000
MSG_IN_ORDER: Final = 0x20000000
_TYPE_SHIFT: Final = 16
_TYPE_MASK: Final = 0x7FFF
#: Every header and control word is 32 bits.
U32: Final = 0xFFFFFFFF
# The reference pads empty control packets with one zero word ("writev does not allow" empty).
_PAD: Final = b"\0\0\0\0"


class BadPacket(ConduitError, ValueError):
    """A datagram that is not a well-formed UDT packet (the only error the parsers raise)."""


class ControlType(enum.IntEnum):
    """Bits 1-15 of a control packet's first word."""

    HANDSHAKE = 0
    KEEPALIVE = 1
    ACK = 2
    NAK = 3
    CONGESTION_WARNING = 4
    SHUTDOWN = 5
    ACK2 = 6
    DROP_REQUEST = 7
    ERROR_SIGNAL = 8
    USER_DEFINED = 0x7FFF


class Boundary(enum.IntEnum):
    """Where a data packet sits in its message (the two ``FF`` bits)."""

    MIDDLE = 0
    LAST = 1
    FIRST = 2
    SOLO = 3


class SocketType(enum.IntEnum):
    """The handshake's socket type: stream or message (``UDT_STREAM``/``UDT_DGRAM``)."""

    STREAM = 1
    DGRAM = 2


class RequestType(enum.IntEnum):
    """The handshake's connection request type."""

    #: A client's first request (and its cookie answer from the listener).
    CONNECT = 1
    #: A rendezvous request.
    RENDEZVOUS = 0
    #: A response (a listener's), or a client's second request carrying the cookie.
    RESPONSE = -1
    #: A rendezvous peer's answer to a ``RESPONSE``.
    RENDEZVOUS_RESPONSE = -2
    #: The listener refuses: backlog full, version or socket type mismatch.
    REJECTED = 1002


@functools.cache
def repeated_struct(pattern: str, count: int) -> struct.Struct:
    """``pattern`` (big-endian) ``count`` times over: to pack or read headers back to back."""
    return struct.Struct("!" + pattern * count)


def control_word(ctype: int, ext: int = 0) -> int:
    """A control packet's first word: the flag, the type in bits 1-15, ``ext`` in the low 16."""
    return CONTROL_FLAG | (ctype << _TYPE_SHIFT) | ext


def control_type(word0: int) -> int:
    """The type (bits 1-15) of a control packet's first word."""
    return (word0 >> _TYPE_SHIFT) & _TYPE_MASK


def ip_to_wire(address: str | None) -> bytes:
    """The handshake's 16 address bytes for an IP address, as the reference sends them."""
    if not address:
        return bytes(16)
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    raw = ip.packed.ljust(16, b"\0")
    return b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))


def ip_from_wire(raw: bytes, *, ipv6: bool) -> str:
    """The address text for the handshake's 16 address bytes (inverse of :func:`ip_to_wire`)."""
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    if ipv6:
        return str(ipaddress.IPv6Address(packed))
    return str(ipaddress.IPv4Address(packed[:4]))


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= U32:
        raise ValueError(f"{name} must fit in 32 bits, got {value}")


def _check_i32(name: str, value: int) -> None:
    if not -0x80000000 <= value <= 0x7FFFFFFF:
        raise ValueError(f"{name} must be a signed 32-bit integer, got {value}")


def _check_seq(name: str, value: int) -> None:
    if not 0 <= value <= SEQ_MASK:
        raise ValueError(f"{name} must be a 31-bit sequence number, got {value}")


@dataclass(frozen=True, slots=True)
class DataPacket:
    """A data packet: ``payload`` is one piece of a message (``boundary`` says which)."""

    seq: int
    msgno: int
    boundary: Boundary
    in_order: bool
    timestamp: int
    dest: int
    payload: bytes

    def encode(self) -> bytes:
        _check_seq("seq", self.seq)
        if not 0 <= self.msgno <= MAX_MSGNO:
            raise ValueError(f"msgno must be a 29-bit message number, got {self.msgno}")
        _check_u32("timestamp", self.timestamp)
        _check_u32("dest", self.dest)
        word = (int(self.boundary) << 30) | (MSG_IN_ORDER if self.in_order else 0) | self.msgno
        return HEADER.pack(self.seq, word, self.timestamp, self.dest) + self.payload


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """Base of control packets: every one carries a timestamp and a destination socket id."""

    TYPE: ClassVar[ControlType]

    def _additional(self) -> int:
        return 0

    def _body(self) -> bytes:
        return _PAD

    def _ext(self) -> int:
        return 0

    def encode(self) -> bytes:
        timestamp: int = getattr(self, "timestamp", 0)
        dest: int = getattr(self, "dest", 0)
        _check_u32("timestamp", timestamp)
        _check_u32("dest", dest)
        additional = self._additional()
        _check_u32("additional info", additional)
        first = control_word(self.TYPE, self._ext())
        return HEADER.pack(first, additional, timestamp, dest) + self._body()


@dataclass(frozen=True, slots=True)
class Handshake(ControlPacket):
    """Connection handshake (type 0): a request, a cookie challenge, a response or a rejection."""

    TYPE: ClassVar[ControlType] = ControlType.HANDSHAKE
    version: int
    socket_type: int
    isn: int
    mss: int
    flight_flag_size: int
    request_type: int
    socket_id: int
    cookie: int = 0
    #: The address the sender sent this to, in the wire's word order (see :func:`ip_to_wire`).
    peer_ip: bytes = bytes(16)
    timestamp: int = 0
    dest: int = 0

    def _body(self) -> bytes:
        for name in ("version", "socket_type", "isn", "mss", "flight_flag_size", "request_type", "cookie"):
            _check_i32(name, getattr(self, name))
        _check_i32("socket_id", self.socket_id)
        if len(self.peer_ip) != 16:
            raise ValueError("peer_ip must be 16 bytes")
        return _HS.pack(
            self.version,
            self.socket_type,
            self.isn,
            self.mss,
            self.flight_flag_size,
            self.request_type,
            self.socket_id,
            self.cookie,
            self.peer_ip,
        )


@dataclass(frozen=True, slots=True)
class KeepAlive(ControlPacket):
    """Keep-alive (type 1): "I am still here"."""

    TYPE: ClassVar[ControlType] = ControlType.KEEPALIVE
    timestamp: int = 0
    dest: int = 0


@dataclass(frozen=True, slots=True)
class Ack(ControlPacket):
    """Acknowledgement (type 2): every packet before ``ack`` arrived.

    A *light* ACK carries ``ack`` only (``rtt`` is ``None``); a regular one adds
    RTT, RTT variance (microseconds) and the available receive buffer
    (packets); a full one also the packet arrival rate and the estimated link
    capacity (packets per second).
    """

    TYPE: ClassVar[ControlType] = ControlType.ACK
    ack_seqno: int
    ack: int
    rtt: int | None = None
    rtt_var: int | None = None
    available: int | None = None
    rate: int | None = None
    bandwidth: int | None = None
    timestamp: int = 0
    dest: int = 0

    def _additional(self) -> int:
        return self.ack_seqno

    def _body(self) -> bytes:
        _check_seq("ack", self.ack)
        if self.rtt is None:
            return _WORD.pack(self.ack)
        fields = [self.rtt, self.rtt_var, self.available]
        if self.rate is not None or self.bandwidth is not None:
            fields += [self.rate, self.bandwidth]
        values: list[int] = []
        for name, value in zip(("rtt", "rtt_var", "available", "rate", "bandwidth"), fields, strict=False):
            if value is None:
                raise ValueError(f"an ACK with rtt set needs {name} too")
            _check_i32(name, value)
            values.append(value)
        return struct.pack(f"!I{len(values)}i", self.ack, *values)

    @property
    def light(self) -> bool:
        return self.rtt is None


def encode_loss_list(losses: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> bytes:
    """Compressed loss list: a single number for a lone loss, ``first|0x80000000, last`` for a run."""
    words: list[int] = []
    for first, last in losses:
        _check_seq("loss", first)
        _check_seq("loss", last)
        if first == last:
            words.append(first)
        else:
            words.append(first | LOSS_RANGE_FLAG)
            words.append(last)
    return struct.pack(f"!{len(words)}I", *words)


def decode_loss_list_untrusted(body: bytes | memoryview) -> tuple[tuple[int, int], ...]:
    """Decode a NAK's loss list into ``(first, last)`` runs; :class:`BadPacket` if malformed."""
    if len(body) % 4:
        raise BadPacket(f"loss list of {len(body)} bytes is not whole 32-bit words")
    if not body:
        raise BadPacket("empty loss list")
    words = struct.unpack(f"!{len(body) // 4}I", body)
    out: list[tuple[int, int]] = []
    i, n = 0, len(words)
    while i < n:
        word = words[i]
        if word & LOSS_RANGE_FLAG:
            if i + 1 >= n:
                raise BadPacket("loss list ends in the middle of a range")
            last = words[i + 1]
            if last & LOSS_RANGE_FLAG:
                raise BadPacket("loss range end has the range flag set")
            out.append((word & SEQ_MASK, last))
            i += 2
        else:
            out.append((word, word))
            i += 1
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Nak(ControlPacket):
    """Negative acknowledgement (type 3): these packets are missing (inclusive runs)."""

    TYPE: ClassVar[ControlType] = ControlType.NAK
    losses: tuple[tuple[int, int], ...]
    timestamp: int = 0
    dest: int = 0

    def _body(self) -> bytes:
        if not self.losses:
            raise ValueError("a NAK needs at least one loss")
        return encode_loss_list(self.losses)


@dataclass(frozen=True, slots=True)
class CongestionWarning(ControlPacket):
    """Congestion/delay warning (type 4): the receiver asks the sender to slow down."""

    TYPE: ClassVar[ControlType] = ControlType.CONGESTION_WARNING
    timestamp: int = 0
    dest: int = 0


@dataclass(frozen=True, slots=True)
class Shutdown(ControlPacket):
    """Shutdown (type 5): the sender closed the connection (sent once, not acknowledged)."""

    TYPE: ClassVar[ControlType] = ControlType.SHUTDOWN
    timestamp: int = 0
    dest: int = 0


@dataclass(frozen=True, slots=True)
class Ack2(ControlPacket):
    """ACK of ACK (type 6): echoes an ACK's ``ack_seqno`` so its sender can time the round trip."""

    TYPE: ClassVar[ControlType] = ControlType.ACK2
    ack_seqno: int
    timestamp: int = 0
    dest: int = 0

    def _additional(self) -> int:
        return self.ack_seqno


@dataclass(frozen=True, slots=True)
class DropRequest(ControlPacket):
    """Message drop request (type 7): give up on message ``msgno`` (packets ``first``..``last``)."""

    TYPE: ClassVar[ControlType] = ControlType.DROP_REQUEST
    msgno: int
    first: int
    last: int
    timestamp: int = 0
    dest: int = 0

    def _additional(self) -> int:
        return self.msgno

    def _body(self) -> bytes:
        _check_seq("first", self.first)
        _check_seq("last", self.last)
        return struct.pack("!II", self.first, self.last)


@dataclass(frozen=True, slots=True)
class ErrorSignal(ControlPacket):
    """Error signal (type 8): something went wrong at the peer (``code``; 4000: file I/O)."""

    TYPE: ClassVar[ControlType] = ControlType.ERROR_SIGNAL
    code: int
    timestamp: int = 0
    dest: int = 0

    def _additional(self) -> int:
        return self.code


@dataclass(frozen=True, slots=True)
class UserDefined(ControlPacket):
    """User-defined control packet (type 0x7FFF): ``subtype`` in bits 16-31, ``data`` whole words.

    Congestion-control algorithms exchange these (UDT's ``CCC::sendCustomMsg``).
    """

    TYPE: ClassVar[ControlType] = ControlType.USER_DEFINED
    subtype: int
    data: bytes = field(default=b"")
    additional: int = 0
    timestamp: int = 0
    dest: int = 0

    def _ext(self) -> int:
        if not 0 <= self.subtype <= 0xFFFF:
            raise ValueError(f"subtype must fit in 16 bits, got {self.subtype}")
        return self.subtype

    def _additional(self) -> int:
        return self.additional

    def _body(self) -> bytes:
        if len(self.data) % 4:
            raise ValueError("user-defined control data must be whole 32-bit words")
        return self.data


Packet = (
    DataPacket
    | Handshake
    | KeepAlive
    | Ack
    | Nak
    | CongestionWarning
    | Shutdown
    | Ack2
    | DropRequest
    | ErrorSignal
    | UserDefined
)

#: Control type number → class (the codec's registry).
CONTROL_TYPES: Final[dict[int, type[ControlPacket]]] = {
    cls.TYPE: cls
    for cls in (
        Handshake,
        KeepAlive,
        Ack,
        Nak,
        CongestionWarning,
        Shutdown,
        Ack2,
        DropRequest,
        ErrorSignal,
        UserDefined,
    )
}


def parse_packet_untrusted(data: bytes | bytearray | memoryview) -> Packet:
    """Parse one datagram into a packet object, or raise :class:`BadPacket`.

    Control information is decoded as the reference reads it; fields with room
    for nonsense are checked (a handshake's ISN must be a sequence number, an
    ACK's fields must be present as a light, regular or full ACK, a loss list
    must be well formed). Trailing bytes after a handshake are ignored, as the
    reference does.
    """
    try:
        return _parse(data)
    except BadPacket:
        raise
    except (struct.error, ValueError, IndexError, TypeError) as exc:  # pragma: no cover - defence in depth
        raise BadPacket(f"malformed packet: {exc}") from None


def _parse(data: bytes | bytearray | memoryview) -> Packet:
    size = len(data)
    if size < HEADER_SIZE:
        raise BadPacket(f"datagram of {size} bytes is shorter than the 16-byte UDT header")
    w0, w1, timestamp, dest = HEADER.unpack_from(data)
    if not w0 & CONTROL_FLAG:
        return DataPacket(
            seq=w0,
            msgno=w1 & MAX_MSGNO,
            boundary=Boundary(w1 >> 30),
            in_order=bool(w1 & MSG_IN_ORDER),
            timestamp=timestamp,
            dest=dest,
            payload=bytes(data[HEADER_SIZE:]),
        )
    ctype = control_type(w0)
    ext = w0 & 0xFFFF
    body = bytes(data[HEADER_SIZE:])
    blen = len(body)
    if ctype == ControlType.HANDSHAKE:
        if blen < HANDSHAKE_SIZE:
            raise BadPacket(f"handshake of {blen} bytes; needs {HANDSHAKE_SIZE}")
        version, stype, isn, mss, flight, req, sid, cookie, peer_ip = _HS.unpack_from(body)
        if not 0 <= isn <= SEQ_MASK:
            raise BadPacket(f"handshake ISN {isn} is not a 31-bit sequence number")
        return Handshake(
            version, stype, isn, mss, flight, req, sid, cookie, peer_ip, timestamp=timestamp, dest=dest
        )
    if blen % 4:
        raise BadPacket(f"control information of {blen} bytes is not whole 32-bit words")
    if ctype == ControlType.ACK:
        if blen < 4:
            raise BadPacket("ACK without an acknowledged sequence number")
        ack = _WORD.unpack_from(body)[0]
        if ack & CONTROL_FLAG:
            raise BadPacket(f"ACK of {ack:#x} is not a sequence number")
        if blen == 4:
            return Ack(w1, ack, timestamp=timestamp, dest=dest)
        if blen < 16:
            raise BadPacket(f"ACK of {blen} bytes: neither light (4) nor regular (16)")
        rtt, var, avail = struct.unpack_from("!iii", body, 4)
        rate = bandwidth = None
        if blen >= 24:
            rate, bandwidth = struct.unpack_from("!ii", body, 16)
        return Ack(w1, ack, rtt, var, avail, rate, bandwidth, timestamp=timestamp, dest=dest)
    if ctype == ControlType.NAK:
        return Nak(decode_loss_list_untrusted(body), timestamp=timestamp, dest=dest)
    if ctype == ControlType.DROP_REQUEST:
        if blen < 8:
            raise BadPacket("message drop request without its sequence range")
        first, last = struct.unpack_from("!II", body)
        if (first | last) & CONTROL_FLAG:
            raise BadPacket("message drop request range is not sequence numbers")
        return DropRequest(w1 & MAX_MSGNO, first, last, timestamp=timestamp, dest=dest)
    if ctype == ControlType.ACK2:
        return Ack2(w1, timestamp=timestamp, dest=dest)
    if ctype == ControlType.KEEPALIVE:
        return KeepAlive(timestamp=timestamp, dest=dest)
    if ctype == ControlType.SHUTDOWN:
        return Shutdown(timestamp=timestamp, dest=dest)
    if ctype == ControlType.CONGESTION_WARNING:
        return CongestionWarning(timestamp=timestamp, dest=dest)
    if ctype == ControlType.ERROR_SIGNAL:
        return ErrorSignal(w1, timestamp=timestamp, dest=dest)
    if ctype == ControlType.USER_DEFINED:
        return UserDefined(ext, body, w1, timestamp=timestamp, dest=dest)
    raise BadPacket(f"unknown control packet type {ctype}")
