"""A sans-IO ClientHello reader: bytes in, a parsed :class:`ClientHello` out.

The server reads the client's first flight itself, before OpenSSL sees a
byte, so that every decision about the connection (reject it, tunnel it,
choose the certificate, restrict ALPN) can be made by hooks that await.
The bytes read are kept and replayed, unchanged, into OpenSSL or into a
blind tunnel.

The reader reassembles TLS records (RFC 8446 §5.1: a handshake message may be
split across records, and a record may arrive across reads) and parses the
ClientHello (§4.1.2) and the extensions that decisions need. Everything here
treats its input as hostile: sizes are bounded, and whatever the input,
:meth:`ClientHelloReader.feed_untrusted` returns ``None`` (need more),
returns a :class:`ClientHello`, or raises :class:`ClientHelloError` — never
anything else (property-tested with hypothesis).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from ._errors import ClientHelloError

__all__ = [
    "DEFAULT_MAX_HELLO_SIZE",
    "ClientHello",
    "ClientHelloReader",
    "Extension",
    "ExtensionType",
    "is_grease",
    "parse_client_hello_untrusted",
    "server_name_untrusted",
]

#: The largest ClientHello message body accepted by default (bytes). Real ones are
#: 200 bytes to a few KiB (post-quantum key shares add about 1.2 KiB).
DEFAULT_MAX_HELLO_SIZE: Final = 32 * 1024

_RECORD_HEADER: Final = struct.Struct("!BHH")  # content type, legacy version, length
_MAX_RECORD: Final = 2**14  # TLSPlaintext.length limit
_HANDSHAKE: Final = 22
_ALERT: Final = 21
_CHANGE_CIPHER_SPEC: Final = 20
_APPLICATION_DATA: Final = 23
_CLIENT_HELLO: Final = 1
_U16: Final = struct.Struct("!H")
_EXT_HEADER: Final = struct.Struct("!HH")  # extension type, length


class ExtensionType:
    """Extension numbers the reader understands (IANA "TLS ExtensionType Values")."""

    SERVER_NAME: Final = 0
    STATUS_REQUEST: Final = 5
    SUPPORTED_GROUPS: Final = 10
    EC_POINT_FORMATS: Final = 11
    SIGNATURE_ALGORITHMS: Final = 13
    ALPN: Final = 16
    PADDING: Final = 21
    EXTENDED_MASTER_SECRET: Final = 23
    SESSION_TICKET: Final = 35
    PRE_SHARED_KEY: Final = 41
    EARLY_DATA: Final = 42
    SUPPORTED_VERSIONS: Final = 43
    PSK_KEY_EXCHANGE_MODES: Final = 45
    KEY_SHARE: Final = 51
    RENEGOTIATION_INFO: Final = 0xFF01


_GREASE: Final = frozenset(0x0A0A + 0x1010 * i for i in range(16))


def is_grease(value: int) -> bool:
    """A GREASE value (RFC 8701): ``0x0A0A``, ``0x1A1A``, ... ``0xFAFA``.

    Clients put these among cipher suites, extensions, groups and versions to
    keep servers tolerant of unknown values; they mean nothing.
    """
    return value in _GREASE


class Extension(NamedTuple):
    """One ClientHello extension as sent: its type number and raw body."""

    type: int
    data: bytes

    @property
    def grease(self) -> bool:
        return is_grease(self.type)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A parsed ClientHello.

    Lists keep the client's order. GREASE values are left out of
    ``supported_versions``, ``supported_groups``, ``key_share_groups`` and
    ``signature_algorithms`` (they mean nothing) but kept in ``cipher_suites``
    and ``extensions``, which are as sent; ``grease`` says whether any were seen.
    ``raw`` is every byte the reader consumed up to the end of the record that
    completed the hello — what is replayed to OpenSSL or to a tunnel's origin.
    """

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[Extension, ...]
    server_name: str | None
    alpn_protocols: tuple[str, ...]
    supported_versions: tuple[int, ...]
    supported_groups: tuple[int, ...]
    key_share_groups: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    ec_point_formats: tuple[int, ...]
    grease: bool
    message: bytes
    raw: bytes

    @property
    def extension_types(self) -> tuple[int, ...]:
        return tuple(ext.type for ext in self.extensions)

    def extension(self, type: int) -> bytes | None:
        """The body of extension ``type``, or ``None`` if the client did not send it."""
        for ext in self.extensions:
            if ext.type == type:
                return ext.data
        return None

    @property
    def versions(self) -> tuple[int, ...]:
        """Protocol versions offered: ``supported_versions`` if sent, else the legacy version."""
        return self.supported_versions or (self.legacy_version,)

    @property
    def max_version(self) -> int:
        """The highest version offered (``0x0304`` is TLS 1.3)."""
        return max(self.versions)

    @property
    def offers_tls13(self) -> bool:
        return 0x0304 in self.supported_versions

    @property
    def ja3(self) -> str:
        """The JA3 fingerprint string: version, ciphers, extensions, groups, point formats."""
        fields = (
            [self.legacy_version],
            [c for c in self.cipher_suites if not is_grease(c)],
            [e.type for e in self.extensions if not e.grease],
            list(self.supported_groups),
            list(self.ec_point_formats),
        )
        return ",".join("-".join(str(v) for v in values) for values in fields)

    @property
    def ja3_hash(self) -> str:
        """MD5 of :attr:`ja3`, as the JA3 tools print it."""
        return hashlib.md5(self.ja3.encode(), usedforsecurity=False).hexdigest()


def _bad(message: str) -> ClientHelloError:
    return ClientHelloError(f"bad ClientHello: {message}")


def _vec(data: bytes, pos: int, end: int, length_bytes: int, what: str) -> tuple[int, int]:
    """The (start, end) of a length-prefixed vector at ``pos``; any overrun is our error."""
    if end - pos < length_bytes:
        raise _bad(f"{what} ends early (needed {length_bytes} more bytes, have {end - pos})")
    n = data[pos] if length_bytes == 1 else int.from_bytes(data[pos : pos + length_bytes], "big")
    start = pos + length_bytes
    if n > end - start:
        raise _bad(f"{what} ends early (needed {n} more bytes, have {end - start})")
    return start, start + n


def _whole_vec(data: bytes, length_bytes: int, what: str, minimum: int = 0) -> tuple[int, int]:
    """An extension body that is exactly one vector: its (start, end)."""
    start, stop = _vec(data, 0, len(data), length_bytes, what)
    if stop != len(data):
        raise _bad(f"{len(data) - stop} unexpected bytes after {what}")
    if stop - start < minimum:
        raise _bad(f"{what} is shorter than {minimum} bytes")
    return start, stop


def _u16_list(data: bytes, start: int, stop: int, what: str) -> list[int]:
    if (stop - start) % 2:
        raise _bad(f"{what} has an odd length")
    return list(struct.unpack_from(f"!{(stop - start) // 2}H", data, start))


def _u16s(values: list[int]) -> tuple[int, ...]:
    if _GREASE.isdisjoint(values):
        return tuple(values)
    return tuple(v for v in values if v not in _GREASE)


#: Bytes allowed in a host name: printable ASCII without the space.
_PRINTABLE: Final = bytes(range(0x21, 0x7F))


def _host_name(raw: bytes) -> str:
    if not raw or len(raw) > 255:
        raise _bad("server_name host name is empty or longer than 255 bytes")
    if raw.translate(None, _PRINTABLE):  # something left: not printable ASCII
        raise _bad("server_name host name is not printable ASCII")
    return raw.decode("ascii").lower()


def _parse_server_name(data: bytes) -> str | None:
    p, end = _whole_vec(data, 2, "server_name list", minimum=1)
    host: str | None = None
    while p < end:
        name_type = data[p]
        start, p = _vec(data, p + 1, end, 2, "server_name entry")
        if name_type == 0:
            if host is not None:
                raise _bad("two host names in server_name")
            host = _host_name(data[start:p])
    return host


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    p, end = _whole_vec(data, 2, "ALPN protocol list", minimum=2)
    out = []
    while p < end:
        start, p = _vec(data, p, end, 1, "ALPN protocol name")
        if p == start:
            raise _bad("ALPN protocol name is shorter than 1 bytes")
        out.append(data[start:p].decode("latin-1"))
    return tuple(out)


def _parse_versions(data: bytes) -> list[int]:
    start, stop = _whole_vec(data, 1, "supported_versions list", minimum=2)
    return _u16_list(data, start, stop, "supported_versions list")


def _parse_u16_vector(data: bytes, what: str) -> list[int]:
    start, stop = _whole_vec(data, 2, what)
    return _u16_list(data, start, stop, what)


def _parse_key_share(data: bytes) -> list[int]:
    p, end = _whole_vec(data, 2, "key_share list")
    groups = []
    while p < end:
        if end - p < 2:
            raise _bad("key_share entry ends early")
        groups.append(data[p] << 8 | data[p + 1])
        _, p = _vec(data, p + 2, end, 2, "key_share entry")
    return groups


def _parse_point_formats(data: bytes) -> list[int]:
    start, stop = _whole_vec(data, 1, "ec_point_formats list", minimum=1)
    return list(data[start:stop])


_SERVER_NAME: Final = ExtensionType.SERVER_NAME
_ALPN: Final = ExtensionType.ALPN
_VERSIONS: Final = ExtensionType.SUPPORTED_VERSIONS
_GROUPS: Final = ExtensionType.SUPPORTED_GROUPS
_SIGALGS: Final = ExtensionType.SIGNATURE_ALGORITHMS
_KEY_SHARE: Final = ExtensionType.KEY_SHARE
_POINT_FORMATS: Final = ExtensionType.EC_POINT_FORMATS
_extension: Final = functools.partial(tuple.__new__, Extension)  # Extension((type, data)), faster


def _fixed_fields(m: bytes) -> tuple[int, int, int]:
    """Check the message header and the fields before the extensions.

    Returns where the cipher suites start and end, and where the extensions
    start. A well-formed hello takes the quick path: the same checks as
    :func:`_fixed_fields_checked`, as a few comparisons; anything else goes
    there, to be refused with the exact reason (a property test holds the two
    to the same answers).
    """
    n = len(m)
    if n >= 43 and m[0] == _CLIENT_HELLO and m[4] == 3 and m[1] << 16 | m[2] << 8 | m[3] == n - 4:
        c = 39 + m[38]  # the cipher_suites length, after legacy_session_id
        if m[38] <= 32 and c + 2 <= n:
            ciphers = c + 2
            ciphers_end = ciphers + (m[c] << 8 | m[c + 1])
            if ciphers_end < n and ciphers_end - ciphers >= 2 and not ciphers_end - ciphers & 1:
                p = ciphers_end + 1 + m[ciphers_end]
                if m[ciphers_end] and p <= n:
                    return ciphers, ciphers_end, p
    return _fixed_fields_checked(m)


def _fixed_fields_checked(m: bytes) -> tuple[int, int, int]:
    """:func:`_fixed_fields`, each check in turn with its own message."""
    n = len(m)
    if n < 4:
        raise _bad(f"ClientHello ends early (needed 4 bytes, have {n})")
    if m[0] != _CLIENT_HELLO:
        raise _bad(f"handshake message type {m[0]}, expected 1 (client_hello)")
    size = int.from_bytes(m[1:4], "big")
    if 4 + size > n:
        raise _bad(f"ClientHello body ends early (needed {size} bytes, have {n - 4})")
    if 4 + size < n:
        raise _bad(f"{n - 4 - size} unexpected bytes after the ClientHello message")
    if n - 4 < 35:
        raise _bad(f"ClientHello body ends early (needed 35 bytes, have {n - 4})")
    if m[4] != 3:
        raise _bad(f"legacy_version {m[4] << 8 | m[5]:#06x} is not SSL 3 / TLS")
    if m[38] > 32:
        raise _bad("legacy_session_id is longer than 32 bytes")
    _, p = _vec(m, 38, n, 1, "legacy_session_id")
    ciphers, p = _vec(m, p, n, 2, "cipher_suites")
    if p - ciphers < 2:
        raise _bad("cipher_suites is shorter than 2 bytes")
    if (p - ciphers) % 2:
        raise _bad("cipher_suites has an odd length")
    ciphers_end = p
    start, p = _vec(m, p, n, 1, "compression_methods")
    if p == start:
        raise _bad("compression_methods is shorter than 1 bytes")
    return ciphers, ciphers_end, p


def _extension_spans(m: bytes, p: int) -> Iterator[tuple[int, int, int]]:
    """Each extension from ``p`` on, as (type, body start, body end), its framing checked."""
    end = len(m)
    if p == end:
        return
    p, ext_end = _vec(m, p, end, 2, "extensions")
    if ext_end != end:
        raise _bad(f"{end - ext_end} unexpected bytes after extensions")
    header = _EXT_HEADER.unpack_from
    while p < end:
        if end - p < 4:
            raise _bad("extensions end early (a truncated extension header)")
        t, size = header(m, p)
        start = p + 4
        p = start + size
        if p > end:
            raise _bad(f"extension {t} ends early (needed {size} bytes, have {end - start})")
        yield t, start, p


def parse_client_hello_untrusted(message: bytes, raw: bytes = b"") -> ClientHello:
    """Parse one complete ClientHello handshake message (4-byte header included).

    ``raw`` is stored as :attr:`ClientHello.raw` (the record-layer bytes it came in).
    Raises :class:`ClientHelloError` and nothing else.
    """
    m = bytes(message)
    ciphers, ciphers_end, p = _fixed_fields(m)
    cipher_suites = _u16_list(m, ciphers, ciphers_end, "cipher_suites")
    extensions: list[Extension] = []
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: list[int] = []
    groups: list[int] = []
    key_shares: list[int] = []
    sigalgs: list[int] = []
    point_formats: list[int] = []
    grease = not _GREASE.isdisjoint(cipher_suites)
    seen: set[int] = set()
    for t, start, stop in _extension_spans(m, p):
        if t in seen:
            raise _bad(f"extension {t} appears twice")
        seen.add(t)
        data = m[start:stop]
        extensions.append(_extension((t, data)))
        # Decode the extensions decisions need (the others stay raw).
        if t == _SERVER_NAME:
            if data:  # a server echoes an empty one; a client sending it empty is odd but harmless
                server_name = _parse_server_name(data)
        elif t == _ALPN:
            alpn = _parse_alpn(data)
        elif t == _VERSIONS:
            versions = _parse_versions(data)
        elif t == _GROUPS:
            groups = _parse_u16_vector(data, "supported_groups")
        elif t == _SIGALGS:
            sigalgs = _parse_u16_vector(data, "signature_algorithms")
        elif t == _KEY_SHARE:
            key_shares = _parse_key_share(data)
        elif t == _POINT_FORMATS:
            point_formats = _parse_point_formats(data)
        elif t in _GREASE:
            grease = True
    grease = grease or not _GREASE.isdisjoint((*versions, *groups, *key_shares, *sigalgs))
    return ClientHello(
        legacy_version=m[4] << 8 | m[5],
        random=m[6:38],
        session_id=m[39 : 39 + m[38]],
        cipher_suites=tuple(cipher_suites),
        compression_methods=m[ciphers_end + 1 : p],
        extensions=tuple(extensions),
        server_name=server_name,
        alpn_protocols=alpn,
        supported_versions=_u16s(versions),
        supported_groups=_u16s(groups),
        key_share_groups=_u16s(key_shares),
        signature_algorithms=_u16s(sigalgs),
        ec_point_formats=tuple(point_formats),
        grease=grease,
        message=m,
        raw=bytes(raw),
    )


def server_name_untrusted(message: bytes) -> str | None:
    """The host name in a ClientHello message's ``server_name`` extension, or ``None``.

    The quick path of :func:`parse_client_hello_untrusted` (for a server that
    needs nothing else from the hello yet): it walks the message only as far as
    that extension, with the same checks, so any input it refuses the full
    parse refuses too. It raises :class:`ClientHelloError` and nothing else.
    """
    m = bytes(message)
    _, _, p = _fixed_fields(m)
    for t, start, stop in _extension_spans(m, p):
        if t == _SERVER_NAME:
            return _parse_server_name(m[start:stop]) if stop > start else None
    return None


def _not_tls(first: bytes) -> ClientHelloError:
    if first[:1] and first[0] & 0x80 and len(first) >= 3 and first[2] == _CLIENT_HELLO:
        return ClientHelloError(
            "an SSLv2-compatible ClientHello: SSL 2 style hellos are not supported (TLS 1.2 or later needed)",
            reason="SSLV2_HELLO",
        )
    if first[:1].isalpha():
        shown = first[:16].decode("latin-1")
        return ClientHelloError(
            f"not TLS: the client sent plain text ({shown!r}...); is it speaking HTTP or another "
            "plaintext protocol to a TLS port?",
            reason="NOT_TLS",
        )
    if first[0] == _ALERT:
        return ClientHelloError("the client sent an alert instead of a ClientHello", reason="NOT_TLS")
    return ClientHelloError(
        f"not TLS: first byte {first[0]:#04x} is not a handshake record (0x16)", reason="NOT_TLS"
    )


class ClientHelloReader:
    """Feed it what the client sends until it returns the :class:`ClientHello`.

    >>> reader = ClientHelloReader()
    >>> hello = None
    >>> while hello is None:                                   # doctest: +SKIP
    ...     hello = reader.feed_untrusted(await stream.receive_some())

    :attr:`buffered` is every byte fed so far (the hello and anything after
    it), to be replayed into the TLS library or a tunnel. ``max_size`` bounds
    the ClientHello message; a longer one is refused as soon as its header
    says so. An end of input is reported by :meth:`feed_eof`.

    :meth:`feed_message_untrusted` stops short of parsing: it checks the
    records and returns the whole ClientHello message as bytes, for
    :func:`parse_client_hello_untrusted` later.
    """

    __slots__ = ("_buf", "_complete", "_hello", "_max_size", "_message", "_pos")

    def __init__(self, max_size: int = DEFAULT_MAX_HELLO_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0  # parsed up to here (a record boundary)
        self._message = bytearray()
        self._complete: bytes | None = None
        self._hello: ClientHello | None = None
        self._max_size = max_size

    @property
    def buffered(self) -> bytes:
        """Every byte fed so far, as fed."""
        return bytes(self._buf)

    @property
    def message(self) -> bytes | None:
        """The ClientHello handshake message once its records are all in (what
        :meth:`feed_message_untrusted` returned), else ``None``."""
        return self._complete

    @property
    def raw(self) -> bytes:
        """The bytes up to the end of the record that completed the hello (see :attr:`ClientHello.raw`)."""
        return bytes(self._buf[: self._pos])

    @property
    def hello(self) -> ClientHello | None:
        return self._hello

    def feed_eof(self) -> None:
        """The client closed before its ClientHello was complete: raises :class:`ClientHelloError`."""
        if self._complete is not None:
            return
        if not self._buf:
            raise ClientHelloError("the client closed the connection without sending anything", reason="EOF")
        raise ClientHelloError(
            f"the client closed the connection after {len(self._buf)} bytes of an incomplete ClientHello",
            reason="EOF",
        )

    def feed_untrusted(self, data: bytes | bytearray | memoryview) -> ClientHello | None:
        """Add bytes; the :class:`ClientHello` once complete, else ``None``."""
        if self._hello is not None:
            self._buf += data
            return self._hello
        message = self.feed_message_untrusted(data)
        if message is None:
            return None
        self._hello = parse_client_hello_untrusted(message, self.raw)
        return self._hello

    def feed_message_untrusted(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Add bytes; the ClientHello handshake message (header included, body not
        parsed) once its records are all in, else ``None``."""
        self._buf += data
        if self._complete is not None:
            return self._complete
        buf = self._buf
        if self._pos == 0 and buf and buf[0] != _HANDSHAKE:
            raise _not_tls(bytes(buf[:16]))
        while len(buf) - self._pos >= _RECORD_HEADER.size:
            content_type, version, length = _RECORD_HEADER.unpack_from(buf, self._pos)
            if content_type != _HANDSHAKE:
                raise _bad(f"record type {content_type} before the ClientHello was complete")
            if version >> 8 != 3:
                raise _bad(f"record version {version:#06x} is not SSL 3 / TLS")
            if length == 0:
                raise _bad("an empty handshake record")
            if length > _MAX_RECORD:
                raise _bad(f"a {length}-byte record (the limit is {_MAX_RECORD})")
            start = self._pos + _RECORD_HEADER.size
            if len(buf) - start < length:
                return None
            self._message += buf[start : start + length]
            self._pos = start + length
            message = self._message
            if message[0] != _CLIENT_HELLO:
                raise _bad(f"handshake message type {message[0]}, expected 1 (client_hello)")
            if len(message) >= 4:
                size = int.from_bytes(message[1:4], "big")
                if size > self._max_size:
                    raise ClientHelloError(
                        f"ClientHello of {size} bytes is larger than the limit ({self._max_size})",
                        reason="CLIENT_HELLO_TOO_LARGE",
                    )
                if len(message) >= 4 + size:
                    self._complete = bytes(message[: 4 + size])
                    return self._complete
        return None
