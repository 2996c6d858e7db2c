"""A sans-IO DTLS ClientHello reader and the stateless cookie exchange (RFC 6347, RFC 9147).

The DTLS server reads a client's first flight itself, as the TLS server does
(:mod:`._hello`), so that the same awaitable hooks can decide about it before
OpenSSL sees a byte; and it answers a hello without a valid cookie with a
HelloVerifyRequest from no state at all, so spoofed hellos allocate nothing.

Datagrams in, a :class:`DTLSClientHello` out. Each datagram carries whole
records (type, version, epoch, 48-bit sequence number, length: 13 bytes);
a handshake message may be split into fragments, each with its own 12-byte
header (type, length, message_seq, fragment_offset, fragment_length), which
may arrive in any order, more than once, and overlapping. The reader
reassembles one ClientHello, bounded by ``max_size``, and parses it with the
TLS parser: a DTLS ClientHello is a TLS 1.2 one with a ``cookie`` vector after
``legacy_session_id`` (RFC 6347 §4.2.1; RFC 9147 §5.3 keeps the field, empty).
Everything here treats its input as hostile: whatever the datagrams,
:meth:`DTLSClientHelloReader.feed_datagram_untrusted` returns ``None`` (need
more), returns a :class:`DTLSClientHello`, or raises
:class:`~trio_conduit.tls.ClientHelloError` — nothing else (property-tested).

Written here rather than taken from a library: pyOpenSSL's ``DTLSv1_listen``
does the cookie exchange inside OpenSSL, where no hook can await, and refuses
a fragmented ClientHello; trio's ``DTLSEndpoint`` parses records but owns its
socket and refuses fragments too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

from ._errors import ClientHelloError
from ._hello import DEFAULT_MAX_HELLO_SIZE, ClientHello, parse_client_hello_untrusted

__all__ = [
    "DTLSClientHello",
    "DTLSClientHelloReader",
    "CookieJar",
    "hello_verify_request",
]

#: type, version, epoch, sequence number (48 bits), length
_RECORD: Final = struct.Struct("!BHH6sH")
#: msg_type, length (24 bits), message_seq, fragment_offset (24), fragment_length (24)
_FRAGMENT: Final = struct.Struct("!B3sH3s3s")
_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_HELLO_VERIFY_REQUEST: Final = 3
#: What a HelloVerifyRequest says its version is, whatever the client offered (RFC 6347 §4.2.1).
DTLS_1_0: Final = 0xFEFF
DTLS_1_2: Final = 0xFEFD
#: A cookie's length (HMAC-SHA256, truncated): RFC 6347 allows up to 255 bytes.
COOKIE_SIZE: Final = 16
#: The most records one datagram may carry before the reader gives up on it.
_MAX_RECORDS_PER_DATAGRAM: Final = 64
#: The most distinct fragments one hello may arrive in (a few per datagram at worst).
_MAX_FRAGMENTS: Final = 256


def _bad(message: str, reason: str = "BAD_CLIENT_HELLO") -> ClientHelloError:
    return ClientHelloError(message, reason=reason)


@dataclass(frozen=True, slots=True)
class DTLSClientHello:
    """A reassembled and parsed DTLS ClientHello.

    ``hello`` has every field the TLS parser gives (``legacy_version`` as sent:
    ``0xFEFD`` is DTLS 1.2; DTLS 1.3 is in ``supported_versions`` as ``0xFEFC``).
    ``cookie`` is empty on a first flight. ``message_seq`` is the handshake
    message sequence number (0 for a first hello, 1 after a
    HelloVerifyRequest). ``record_seq`` is the 48-bit sequence number of the
    record that completed the hello (a HelloVerifyRequest echoes it).
    ``message`` is the handshake message with its DTLS header as one
    unfragmented message (what a cookie is computed over, less the cookie).
    """

    hello: ClientHello
    cookie: bytes
    message_seq: int
    record_seq: int
    message: bytes

    @property
    def server_name(self) -> str | None:
        return self.hello.server_name


def _tls_form(body: bytes) -> tuple[bytes, bytes, int]:
    """A ClientHello body as the TLS parser reads it (cookie left out, version's major byte 3),
    the cookie, and where the cookie stood (for :meth:`CookieJar` to hash around it)."""
    if len(body) < 35:
        raise _bad(f"ClientHello body ends early (needed 35 bytes, have {len(body)})")
    sid_len = body[34]
    if sid_len > 32:
        raise _bad("legacy_session_id is longer than 32 bytes")
    at = 35 + sid_len
    if at >= len(body):
        raise _bad("ClientHello ends before its cookie")
    cookie_len = body[at]
    if at + 1 + cookie_len > len(body):
        raise _bad(f"cookie ends early (needed {cookie_len} bytes, have {len(body) - at - 1})")
    if body[0] != 0xFE:
        raise _bad(f"legacy_version {body[0] << 8 | body[1]:#06x} is not DTLS")
    cookie = body[at + 1 : at + 1 + cookie_len]
    tls_body = b"\x03" + body[1:at] + body[at + 1 + cookie_len :]
    return tls_body, cookie, at


class _Reassembly:
    """One handshake message's fragments: bytes and the ranges they cover (bounded)."""

    __slots__ = ("body", "covered", "length", "message_seq", "pieces")

    def __init__(self, length: int, message_seq: int) -> None:
        self.length = length
        self.message_seq = message_seq
        self.body = bytearray(length)
        self.covered: list[tuple[int, int]] = []  # sorted, disjoint [start, end)
        self.pieces = 0

    def add(self, offset: int, data: bytes) -> bool:
        """Add a fragment; whether the message is now complete."""
        end = offset + len(data)
        if end > self.length:
            raise _bad(f"a fragment ends at {end}, past the message's length {self.length}")
        self.pieces += 1
        if self.pieces > _MAX_FRAGMENTS:
            raise _bad(
                f"the ClientHello came in more than {_MAX_FRAGMENTS} fragments", "CLIENT_HELLO_TOO_LARGE"
            )
        self.body[offset:end] = data
        merged: list[tuple[int, int]] = []
        for start, stop in sorted([*self.covered, (offset, end)]):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            else:
                merged.append((start, stop))
        self.covered = merged
        return merged == [(0, self.length)] or self.length == 0


class DTLSClientHelloReader:
    """Feed it a client's datagrams until it returns the :class:`DTLSClientHello`.

    :attr:`datagrams` keeps what was fed, to be replayed into OpenSSL. Records
    other than handshake records of epoch 0 before the hello is complete are
    refused; so is a hello whose header says it is longer than ``max_size``,
    as soon as a fragment says so. A fragment of a later message_seq than the
    one being reassembled starts over (a client's new hello, e.g. with a
    cookie); an earlier one is a retransmission and is ignored.
    """

    __slots__ = ("_datagrams", "_hello", "_max_size", "_message", "_record_seq")

    def __init__(self, max_size: int = DEFAULT_MAX_HELLO_SIZE) -> None:
        self._datagrams: list[bytes] = []
        self._hello: DTLSClientHello | None = None
        self._max_size = max_size
        self._message: _Reassembly | None = None
        self._record_seq = 0

    @property
    def datagrams(self) -> list[bytes]:
        """Every datagram fed so far, in order."""
        return list(self._datagrams)

    @property
    def hello(self) -> DTLSClientHello | None:
        return self._hello

    def feed_datagram_untrusted(self, datagram: bytes | bytearray | memoryview) -> DTLSClientHello | None:
        """Add one datagram; the :class:`DTLSClientHello` once complete, else ``None``."""
        data = bytes(datagram)
        self._datagrams.append(data)
        if self._hello is not None:
            return self._hello
        pos, records = 0, 0
        if not data:
            raise _bad("an empty datagram", "NOT_DTLS")
        if data[0] != _HANDSHAKE:
            raise _bad(f"not DTLS: first byte {data[0]:#04x} is not a handshake record (0x16)", "NOT_DTLS")
        while pos < len(data):
            records += 1
            if records > _MAX_RECORDS_PER_DATAGRAM:
                raise _bad(f"more than {_MAX_RECORDS_PER_DATAGRAM} records in one datagram")
            if len(data) - pos < _RECORD.size:
                raise _bad("a datagram ends inside a record header")
            kind, version, epoch, seq, length = _RECORD.unpack_from(data, pos)
            start = pos + _RECORD.size
            pos = start + length
            if pos > len(data):
                raise _bad(f"a record of {length} bytes runs past the end of its datagram")
            if kind != _HANDSHAKE:
                raise _bad(f"record type {kind} before the ClientHello was complete")
            if version >> 8 != 0xFE:
                raise _bad(f"record version {version:#06x} is not DTLS", "NOT_DTLS")
            if epoch != 0:
                raise _bad(f"a record of epoch {epoch} before the handshake (epoch 0)")
            done = self._fragments(data[start:pos], int.from_bytes(seq, "big"))
            if done is not None:
                self._hello = done
                return done
        return None

    def _fragments(self, record: bytes, record_seq: int) -> DTLSClientHello | None:
        pos = 0
        while pos < len(record):
            if len(record) - pos < _FRAGMENT.size:
                raise _bad("a record ends inside a handshake fragment header")
            msg_type, length3, message_seq, offset3, frag3 = _FRAGMENT.unpack_from(record, pos)
            length, offset, frag = (int.from_bytes(b, "big") for b in (length3, offset3, frag3))
            start = pos + _FRAGMENT.size
            pos = start + frag
            if pos > len(record):
                raise _bad(f"a handshake fragment of {frag} bytes runs past the end of its record")
            if msg_type != _CLIENT_HELLO:
                raise _bad(f"handshake message type {msg_type}, expected 1 (client_hello)")
            if length > self._max_size:
                raise _bad(
                    f"ClientHello of {length} bytes is larger than the limit ({self._max_size})",
                    "CLIENT_HELLO_TOO_LARGE",
                )
            current = self._message
            if current is None or message_seq > current.message_seq:
                current = self._message = _Reassembly(length, message_seq)
            elif message_seq < current.message_seq:
                continue  # a retransmission of an earlier hello
            elif length != current.length:
                raise _bad("fragments of one ClientHello disagree on its length")
            if current.add(offset, record[start:pos]):
                return self._complete(current, record_seq)
        return None

    def _complete(self, message: _Reassembly, record_seq: int) -> DTLSClientHello:
        body = bytes(message.body)
        tls_body, cookie, _ = _tls_form(body)
        tls_message = bytes([_CLIENT_HELLO]) + len(tls_body).to_bytes(3, "big") + tls_body
        parsed = parse_client_hello_untrusted(tls_message, b"".join(self._datagrams))
        whole = _FRAGMENT.pack(
            _CLIENT_HELLO,
            len(body).to_bytes(3, "big"),
            message.message_seq,
            b"\0\0\0",
            len(body).to_bytes(3, "big"),
        )
        hello = dataclasses.replace(parsed, legacy_version=body[0] << 8 | body[1])
        return DTLSClientHello(hello, cookie, message.message_seq, record_seq, whole + body)


def hello_verify_request(hello: DTLSClientHello, cookie: bytes) -> bytes:
    """The one-datagram HelloVerifyRequest answering ``hello`` with ``cookie`` (RFC 6347 §4.2.1).

    Its record echoes the sequence number of the hello's record, and says
    DTLS 1.0 whatever the client offered, as the RFC asks.
    """
    if len(cookie) > 255:
        raise ValueError("a DTLS cookie is at most 255 bytes")
    body = DTLS_1_0.to_bytes(2, "big") + bytes([len(cookie)]) + cookie
    size = len(body).to_bytes(3, "big")
    message = _FRAGMENT.pack(_HELLO_VERIFY_REQUEST, size, 0, b"\0\0\0", size) + body
    record = _RECORD.pack(_HANDSHAKE, DTLS_1_0, 0, hello.record_seq.to_bytes(6, "big"), len(message))
    return record + message


class CookieJar:
    """Stateless cookies: an HMAC over the peer's address and the hello's parameters.

    ``secret`` (32 random bytes by default) keys the HMAC; :meth:`rotate`
    makes a new one and keeps the previous for cookies already handed out, so
    call it every few minutes. A cookie binds the peer address and everything
    in the hello but the cookie itself (RFC 6347 §4.2.1's
    ``HMAC(Secret, Client-IP, Client-Parameters)``), so it cannot be replayed
    from another address or with another hello. Nothing is stored per peer.
    """

    __slots__ = ("_previous", "_secret")

    def __init__(self, secret: bytes | None = None) -> None:
        import secrets

        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._previous: bytes | None = None

    def rotate(self, secret: bytes | None = None) -> None:
        import secrets

        self._previous = self._secret
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    @staticmethod
    def _mac(secret: bytes, peer: object, hello: DTLSClientHello) -> bytes:
        body = hello.message[_FRAGMENT.size :]
        _, _, at = _tls_form(body)
        parameters = body[:at] + body[at + 1 + len(hello.cookie) :]
        mac = hmac.new(secret, repr(peer).encode(), hashlib.sha256)
        mac.update(parameters)
        return mac.digest()[:COOKIE_SIZE]

    def cookie(self, peer: object, hello: DTLSClientHello) -> bytes:
        """The cookie ``peer`` must send back with this hello."""
        return self._mac(self._secret, peer, hello)

    def valid(self, peer: object, hello: DTLSClientHello) -> bool:
        """Whether ``hello`` carries the cookie this jar (or its previous secret) gave ``peer``."""
        if len(hello.cookie) != COOKIE_SIZE:
            return False
        secrets_ = (self._secret,) if self._previous is None else (self._secret, self._previous)
        return any(hmac.compare_digest(hello.cookie, self._mac(s, peer, hello)) for s in secrets_)
