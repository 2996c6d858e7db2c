"""The stream a proxy chain hands back, and the prefix buffer between hops.

A proxy's reply can arrive in the same segment as the first bytes of the next
hop's reply, or of the target's banner (nmap#2534). Those bytes are never
dropped: :func:`with_prefix` puts them in front of the stream the next hop (or
the caller) reads, and :class:`ProxiedStream` serves them before anything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import trio

from .._connection import (
    CommunicationInfo,
    HalfCloseableStreamConnection,
    StreamConnection,
)
from .._util import ConflictDetector

if TYPE_CHECKING:
    from .._address import Address
    from .._connection import Buffer

__all__ = ["HalfCloseableProxiedStream", "PrefixedStream", "ProxiedStream", "with_prefix"]


class _Prefix:
    """Bytes to serve before the wrapped stream's, with trio's one-receiver rule."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._conflict = ConflictDetector("another task is already receiving on this stream")

    async def receive_some(self, stream: trio.abc.ReceiveStream, max_bytes: int | None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._conflict:
            if self.data:
                await trio.lowlevel.checkpoint()
                n = len(self.data) if max_bytes is None else max_bytes
                out, self.data = self.data[:n], self.data[n:]
                return out
        return await stream.receive_some(max_bytes)


class PrefixedStream(trio.abc.Stream):
    """``stream`` with ``prefix`` served first by ``receive_some`` (everything else passes through)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = _Prefix(prefix)

    async def send_all(self, data: Buffer) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._prefix.receive_some(self.stream, max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


@final
class HalfCloseablePrefixedStream(PrefixedStream, trio.abc.HalfCloseableStream):
    """A :class:`PrefixedStream` over a half-closeable stream."""

    stream: trio.abc.HalfCloseableStream

    def __init__(self, stream: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        super().__init__(stream, prefix)

    async def send_eof(self) -> None:
        await self.stream.send_eof()


def with_prefix(stream: trio.abc.Stream, prefix: bytes) -> trio.abc.Stream:
    """``stream`` reading ``prefix`` first (``stream`` itself when there is none); half-closeable stays so."""
    if not prefix:
        return stream
    if isinstance(stream, trio.abc.HalfCloseableStream):
        return HalfCloseablePrefixedStream(stream, prefix)
    return PrefixedStream(stream, prefix)


class ProxiedStream(StreamConnection):
    """A connection through a proxy chain, as ``pool.connect(..., proxies=[...])`` returns it.

    ``info.remote`` is the target (as given, ``(host, port)``), ``info.via``
    the chain's proxy URLs (passwords as ``***``); ``info.local``/``family``
    are those of the socket to the first proxy. ``tunnel`` is the stream it
    wraps. Bytes that came with the last proxy's reply are served first.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn_id: int,
        *,
        info: CommunicationInfo,
        address: Address | None,
        prefix: bytes = b"",
    ) -> None:
        super().__init__(conn_id, address)
        self._stream = stream
        self._info = info
        self._prefix = _Prefix(prefix)
        self._is_closed = False

    @property
    def info(self) -> CommunicationInfo:
        return self._info

    @property
    def tunnel(self) -> trio.abc.Stream:
        """The stream through the chain (the socket to the first proxy, or a layer over it)."""
        return self._stream

    def _check_open(self) -> None:
        if self._is_closed:
            raise trio.ClosedResourceError("this connection was closed")

    async def send_all(self, data: Buffer) -> None:
        self._check_open()
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self._check_open()
        return await self._prefix.receive_some(self._stream, max_bytes)

    async def aclose(self) -> None:
        if self._is_closed:
            await trio.lowlevel.checkpoint()
            return
        self._is_closed = True
        try:
            await self._stream.aclose()
        finally:
            await self._closed()


@final
class HalfCloseableProxiedStream(ProxiedStream, HalfCloseableStreamConnection):
    """A :class:`ProxiedStream` whose tunnel can half-close (plain TCP all the way)."""

    _stream: trio.abc.HalfCloseableStream

    async def send_eof(self) -> None:
        self._check_open()
        await self._stream.send_eof()
