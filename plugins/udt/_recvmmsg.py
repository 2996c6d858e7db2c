"""Many datagrams per system call: ``recvmmsg(2)`` through :mod:`ctypes` (Linux, IPv4).

Python's socket module reads one datagram per call, and every call builds a
result tuple, an address tuple and a list of tuples for the ancillary data:
per datagram, that costs about as much as the kernel's own work. A
:class:`BatchReader` reads up to :attr:`~BatchReader.count` datagrams per
call into buffers laid out the way the engine's batch entry point
(:meth:`~._endpoint.Endpoint.receive_batch`) takes packets: datagram *i*'s
16-byte header in slot *i* of :attr:`~BatchReader.headers`, its payload in
slot *i* of :attr:`~BatchReader.payloads`, anything longer (a GRO-coalesced
batch) in a spill area of its own. Lengths, flags and arrival stamps come
out of the kernel's message array with one ``struct`` call per read.

:meth:`BatchReader.open` returns ``None`` where there is no ``recvmmsg``;
the driver then reads one datagram at a time.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import socket
import struct
from typing import Any, Final, final

__all__ = ["MSG_TRUNC", "BatchReader"]

_MSG_DONTWAIT: Final = 0x40
#: ``msg_flags``: the datagram was longer than the buffers (the rest is lost).
MSG_TRUNC: Final = 0x20
_SOL_UDP: Final = 17
_UDP_GRO: Final = getattr(socket, "UDP_GRO", 104)
_SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
_HEADER: Final = 16
_NAME: Final = 16  # struct sockaddr_in
_CONTROL: Final = 64  # a timestamp (32) and a GRO segment size (24)
_SPILL: Final = 65536
_CMSG: Final = struct.Struct("@Nii")  # cmsg_len, cmsg_level, cmsg_type
_ALIGN: Final = ctypes.sizeof(ctypes.c_size_t)


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _recvmmsg() -> Any:
    """libc's ``recvmmsg``, or ``None``."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _layout() -> tuple[int, str]:
    """The size of one ``struct mmsghdr`` and a ``struct`` pattern reading its
    (controllen, flags, len) -- from ctypes' own offsets, not assumed."""
    size = ctypes.sizeof(_MMsgHdr)
    ctl = _MsgHdr.controllen.offset
    flags = _MsgHdr.flags.offset
    length = _MMsgHdr.len.offset
    pattern = f"{ctl}xN{flags - ctl - _ALIGN}xi{length - flags - 4}xI{size - length - 4}x"
    return size, pattern


_SIZE, _PATTERN = _layout()


@functools.cache
def _repeated(pattern: str, count: int) -> struct.Struct:
    """``pattern`` (native layout) ``count`` times over; one per pattern and count, shared."""
    return struct.Struct("@" + pattern * count)


_STAMP_PATTERN: Final = f"{_CMSG.size}xqq{_CONTROL - _CMSG.size - 16}x"
#: ``msg_controllen`` of a datagram whose only ancillary data is its arrival stamp.
STAMP_ONLY: Final = socket.CMSG_SPACE(16)


@final
class BatchReader:
    """Reads up to ``count`` datagrams per call from an IPv4 socket; ``slot``-byte payload slots."""

    def __init__(self, fn: Any, fd: int, count: int, slot: int) -> None:
        self._fn = fn
        self._fd = fd
        self.count = count
        self.slot = slot
        self.headers = bytearray(_HEADER * count)
        self.payloads = bytearray(slot * count)
        # 64 KiB per datagram, needed only by a coalesced batch: anonymous memory that the
        # kernel backs page by page when it is written to, not 2 MiB of zeros per socket
        self._spill = mmap.mmap(-1, _SPILL * count)
        self._names = bytearray(_NAME * count)
        self._control = bytearray(_CONTROL * count)
        self._msgs = (_MMsgHdr * count)()
        self._iovs = (_IOVec * (3 * count))()
        # the buffers' addresses (from_buffer exports them: they cannot move while we live)
        self._anchors = [
            (ctypes.c_char * len(b)).from_buffer(b)
            for b in (self.headers, self.payloads, self._spill, self._names, self._control)
        ]
        base = [ctypes.addressof(a) for a in self._anchors]
        iov_base = ctypes.addressof(self._iovs)
        for i in range(count):
            for j, (start, size) in enumerate(
                ((base[0] + _HEADER * i, _HEADER), (base[1] + slot * i, slot), (base[2] + _SPILL * i, _SPILL))
            ):
                self._iovs[3 * i + j].base = start
                self._iovs[3 * i + j].len = size
            hdr = self._msgs[i].hdr
            hdr.name = base[3] + _NAME * i
            hdr.namelen = _NAME
            hdr.iov = iov_base + ctypes.sizeof(_IOVec) * 3 * i
            hdr.iovlen = 3
            hdr.control = base[4] + _CONTROL * i
            hdr.controllen = _CONTROL
        self._address = ctypes.addressof(self._msgs)
        self._view = memoryview(self._msgs).cast("B")
        # the kernel writes lengths into the array: a pristine copy resets it before each call
        self._template = bytes(self._view)
        self._sources: dict[bytes, tuple[str, int]] = {}

    @classmethod
    def open(cls, sock: socket.socket, count: int, slot: int) -> BatchReader | None:
        """A reader for ``sock``, or ``None`` (not IPv4, or no ``recvmmsg`` here)."""
        if sock.family != socket.AF_INET:
            return None
        fn = _recvmmsg()
        return None if fn is None else cls(fn, sock.fileno(), count, slot)

    def read(self, limit: int) -> int:
        """Read up to ``limit`` (at most :attr:`count`) waiting datagrams; 0 if none waits.

        Raises :class:`OSError` for an error the socket reports (an ICMP error for an
        earlier send, a closed descriptor).
        """
        limit = min(limit, self.count)
        size = _SIZE * limit
        self._view[:size] = self._template[:size]
        k: int = self._fn(self._fd, self._address, limit, _MSG_DONTWAIT, None)
        if k >= 0:
            return k
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
            return 0
        raise OSError(err, os.strerror(err))

    def meta(self, k: int) -> tuple[int, ...]:
        """``(controllen, flags, length)`` of each of the first ``k`` datagrams, flat."""
        fields: tuple[int, ...] = _repeated(_PATTERN, k).unpack_from(self._view)
        return fields

    def stamps(self, k: int) -> tuple[int, ...]:
        """``(seconds, nanoseconds)`` of each of the first ``k`` datagrams, flat: meaningful
        only where its ``controllen`` is :data:`STAMP_ONLY`."""
        fields: tuple[int, ...] = _repeated(_STAMP_PATTERN, k).unpack_from(self._control)
        return fields

    def control(self, i: int, length: int) -> tuple[float | None, int]:
        """Datagram ``i``'s ancillary data the long way: (arrival stamp in seconds or ``None``,
        GRO segment size or 0)."""
        stamp: float | None = None
        segment = 0
        ctl = self._control
        base = _CONTROL * i
        off = 0
        length = min(length, _CONTROL)
        while off + _CMSG.size <= length:
            clen, level, kind = _CMSG.unpack_from(ctl, base + off)
            if clen < _CMSG.size or off + clen > length:
                break
            data = base + off + _CMSG.size
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and clen >= _CMSG.size + 16:
                sec, nsec = struct.unpack_from("@qq", ctl, data)
                stamp = sec + nsec * 1e-9
            elif level == _SOL_UDP and kind == _UDP_GRO and clen >= _CMSG.size + 4:
                segment = int.from_bytes(ctl[data : data + 4], "little")
            off += (clen + _ALIGN - 1) & ~(_ALIGN - 1)
        return stamp, segment

    def same_source(self, k: int) -> bool:
        """Whether the first ``k`` datagrams all came from one address."""
        names = self._names
        return names[: _NAME * k] == names[:_NAME] * k

    def source(self, i: int) -> tuple[str, int]:
        """Datagram ``i``'s source address, as the socket module gives it."""
        raw = bytes(self._names[_NAME * i : _NAME * (i + 1)])
        addr = self._sources.get(raw)
        if addr is None:
            if len(self._sources) >= 1024:  # spoofed sources must not grow it without bound
                self._sources.clear()
            addr = self._sources[raw] = (socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big"))
        return addr

    def datagram(self, i: int, length: int) -> bytes:
        """Datagram ``i`` (``length`` bytes) put back together."""
        head = bytes(self.headers[_HEADER * i : _HEADER * (i + 1)])
        if length <= _HEADER:
            return head[:length]
        rest = length - _HEADER
        slot = self.slot
        body = self.payloads[slot * i : slot * i + min(rest, slot)]
        if rest <= slot:
            return head + body
        return head + body + self._spill[_SPILL * i : _SPILL * i + rest - slot]
