"""The TLS connection: ``trio.SSLStream`` over any stream connection, plus our facts and sizing.

The encryption is Python's ``ssl`` (OpenSSL) through trio's ``SSLStream``
and its memory BIOs. We hand ``SSLStream`` a small stand-in for its context
(:class:`ContextShim`) whose ``wrap_bio`` calls the real context's, so that
we (a) keep the ``ssl.SSLObject`` for the facts, (b) replay into the
incoming BIO the bytes we already read to parse the ClientHello, and (c)
offer a session to resume — without touching trio's private attributes.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Final, final

import trio

from .._connection import CommunicationInfo, HalfCloseableStreamConnection, StreamConnection
from .._trace import DEBUG_ALL
from .._util import ConflictDetector
from ._config import Side
from ._errors import describe_ssl_error
from ._hello import ClientHello
from ._records import RecordSizer

if TYPE_CHECKING:
    from cryptography import x509
    from typing_extensions import Buffer

    from ._handshake import TLSHandshake

__all__ = ["ContextShim", "TLSConnection", "TLSInfo"]

_log = logging.getLogger("trio_conduit.tls")
_wire = logging.getLogger("trio_conduit.tls.wire")
_ENCODING_DER: Final = 2  # _ssl.ENCODING_DER
#: Plaintext shown per traced read/write (the rest is counted, not shown).
TRACE_BYTES: Final = 16384
#: ``trio.SSLStream``'s first reads from the transport (see ``_Reads``).
_FIRST_READS: Final = 16384
#: How much plaintext one receive_some() without a size returns at most (the transport's read size).
_READ_MORE: Final = 256 * 1024
#: TLS 1.3 clients look for the server's session ticket in this many reads at most.
_TICKET_READS: Final = 8


class _SSLObject(ssl.SSLObject):
    """Python's ``SSLObject``, whose next ``write`` can be a ``close_notify`` instead.

    ``send_eof`` must go through ``trio.SSLStream``'s own sending (its lock,
    and the TLS 1.3 session tickets it holds back until the first write, which
    must precede our alert on the wire): it asks for the alert, then sends one
    byte that this ``write`` turns into ``SSL_shutdown``.

    Python's ``unwrap`` calls ``SSL_shutdown`` twice, and the second call
    *discards* application data already received and not yet read. So the
    data OpenSSL holds is read out first, into ``stash``, which the
    connection's ``receive_some`` returns before anything newer.
    """

    _eof_requested = False
    stash = b""
    #: The incoming memory BIO (what arrived and is not decrypted yet), set by ``ContextShim``.
    incoming: ssl.MemoryBIO | None = None

    def write(self, data: Buffer) -> int:
        if self._eof_requested:
            self._eof_requested = False
            chunks = [self.stash]
            try:
                while chunk := super().read(1 << 16):  # b"": the peer's close_notify came
                    chunks.append(chunk)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            self.stash = b"".join(chunks)
            try:
                self.unwrap()  # SSL_shutdown: queues close_notify; the peer's is not awaited
            except ssl.SSLWantReadError:
                pass
            return memoryview(data).nbytes
        return super().write(data)


@final
class ContextShim:
    """What ``trio.SSLStream`` takes as its context: the real one, wrapped.

    ``SSLStream`` only calls ``wrap_bio``; this one writes ``prefix`` (bytes
    already read from the peer) into the incoming BIO first, passes
    ``session`` on, and remembers the ``ssl.SSLObject`` it made.
    """

    __slots__ = ("context", "outgoing", "prefix", "session", "ssl_object")

    def __init__(self, context: ssl.SSLContext, prefix: bytes = b"", session: ssl.SSLSession | None = None):
        self.context = context
        self.prefix = prefix
        self.session = session
        self.ssl_object: ssl.SSLObject | None = None
        self.outgoing: ssl.MemoryBIO | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        context = self.context
        own = "sslobject_class" in vars(context)
        saved = context.sslobject_class
        context.sslobject_class = _SSLObject  # for this call only: the context may be shared
        try:
            obj = context.wrap_bio(
                incoming,
                outgoing,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session if session is not None else self.session,
            )
        finally:
            if own:
                context.sslobject_class = saved
            else:
                del context.sslobject_class
        if self.prefix:
            incoming.write(self.prefix)
        if isinstance(obj, _SSLObject):
            obj.incoming = incoming
        self.ssl_object = obj
        self.outgoing = outgoing
        return obj

    def unsent(self) -> bytes:
        """What OpenSSL queued and ``SSLStream`` did not send: after a failed handshake, its alert."""
        return self.outgoing.read() if self.outgoing is not None else b""

    def wrap(
        self,
        transport: trio.abc.Stream,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        ragged_eof: bool = False,
    ) -> tuple[trio.SSLStream[trio.abc.Stream], ssl.SSLObject]:
        """A ``trio.SSLStream`` over ``transport`` using this shim, and its ``SSLObject``."""
        stream: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(
            _Reads(transport),
            self,  # type: ignore[arg-type]  # trio only calls wrap_bio on it
            server_side=server_side,
            server_hostname=server_hostname,
            https_compatible=ragged_eof,
        )
        assert self.ssl_object is not None
        return stream, self.ssl_object


@final
class _Reads(trio.abc.Stream):
    """The transport as ``trio.SSLStream`` sees it: reads start small and grow with use.

    ``SSLStream`` asks its transport for "some" bytes without a size; our
    socket streams then read up to 256 KiB, good for bulk transfers but
    costly for the few hundred bytes of a handshake (a buffer that large is
    mapped and unmapped each time). Reads are 16 KiB until one fills its
    buffer, then the transport's own size.
    """

    __slots__ = ("size", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.size: int | None = _FIRST_READS

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        size = max_bytes or self.size
        data = await self.stream.receive_some(size)
        if size is not None and len(data) == size and max_bytes is None:
            self.size = None
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def _chain_ders(obj: ssl.SSLObject, verified: bool) -> list[bytes]:
    name = "get_verified_chain" if verified else "get_unverified_chain"
    fn = getattr(obj, name, None)  # public from Python 3.13
    if fn is None:
        fn = getattr(getattr(obj, "_sslobj", None), name, None)  # the C object's, Python 3.10-3.12
    if fn is None:
        return []
    try:
        items = fn() or []
    except (ssl.SSLError, ValueError):
        return []
    return [item if isinstance(item, bytes) else item.public_bytes(_ENCODING_DER) for item in items]


@dataclass(frozen=True, eq=False)
class TLSInfo:
    """Facts about a TLS connection, fixed when its handshake finished (``conn.info.tls``).

    ``side`` is ``"client"`` or ``"server"``; ``version`` (``"TLSv1.3"``),
    ``cipher`` and ``cipher_bits`` what was negotiated; ``alpn`` the
    protocol agreed by ALPN, if any; ``server_name`` the SNI the client sent
    (on a client: what we sent, ``None`` for an IP address; on a server: what
    we received, decoded when first asked for unless a hook needed it before:
    see :attr:`TLSHandshake.server_name`); ``session_reused`` whether an earlier session was resumed
    (the cache-hit flag); ``handshake_seconds`` from the start of the TLS
    setup (hooks included) to its end; ``client_hello`` the parsed hello, on
    a server. The peer's certificate is ``peer_certificate`` and the chain
    OpenSSL verified ``peer_chain`` (leaf first), as ``cryptography`` objects,
    parsed when first asked for.
    """

    side: Side
    version: str
    cipher: str
    cipher_bits: int
    alpn: str | None
    server_name: str | None
    session_reused: bool
    handshake_seconds: float
    peer_certificate_der: bytes | None = field(default=None, repr=False)
    ssl_object: ssl.SSLObject | None = field(default=None, repr=False)
    _handshake: TLSHandshake | None = field(default=None, repr=False)

    @property
    def client_hello(self) -> ClientHello | None:
        """The client's hello, parsed (on a server; see :attr:`TLSHandshake.hello`)."""
        hs = self._handshake
        return hs.hello if hs is not None and self.side == "server" else None

    @cached_property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's leaf certificate, or ``None`` if it sent none."""
        from cryptography import x509

        der = self.peer_certificate_der
        return x509.load_der_x509_certificate(der) if der else None

    @cached_property
    def peer_chain(self) -> tuple[x509.Certificate, ...]:
        """The chain OpenSSL verified (leaf to root); without verification, the chain as the peer sent it."""
        from cryptography import x509

        obj = self.ssl_object
        ders = (_chain_ders(obj, True) or _chain_ders(obj, False)) if obj is not None else []
        if not ders and self.peer_certificate_der:
            ders = [self.peer_certificate_der]
        return tuple(x509.load_der_x509_certificate(d) for d in ders)

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session now (a client's, to resume later with ``session=``). TLS 1.3
        servers send it after the handshake: it has a ticket once some data was read."""
        obj = self.ssl_object
        return obj.session if obj is not None else None

    @staticmethod
    def from_ssl_object(
        obj: ssl.SSLObject,
        side: Side,
        server_name: str | None,
        seconds: float,
        handshake: TLSHandshake | None = None,
    ) -> TLSInfo:
        """The facts of ``obj``'s finished handshake. On a server with ``handshake``,
        ``server_name`` is left to it (decoded from the hello when first asked for)."""
        name, _, bits = obj.cipher() or ("", "", 0)
        # What the frozen dataclass's __init__ does, in one call instead of one per field.
        info = object.__new__(TLSInfo)
        facts = vars(info)
        facts.update(
            side=side,
            version=obj.version() or "",
            cipher=name,
            cipher_bits=bits or 0,
            alpn=obj.selected_alpn_protocol(),
            session_reused=obj.session_reused,
            handshake_seconds=seconds,
            peer_certificate_der=obj.getpeercert(binary_form=True),
            ssl_object=obj,
            _handshake=handshake,
        )
        if side != "server" or handshake is None:
            facts["server_name"] = server_name
        return info

    if not TYPE_CHECKING:  # (for the type checker, server_name is the field it is)

        def __getattr__(self, name: str) -> object:
            # Only for an attribute not set: a server's server_name, until first asked for.
            hs = self.__dict__.get("_handshake") if name == "server_name" else None
            if hs is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            value = hs.server_name
            self.__dict__["server_name"] = value
            return value

    def __repr__(self) -> str:
        facts, hs = vars(self), self._handshake
        # not decoded yet (a server's): decoded now, shown as None if malformed
        name = facts["server_name"] if "server_name" in facts or hs is None else hs._valid_server_name()
        return (
            f"TLSInfo(side={self.side!r}, version={self.version!r}, cipher={self.cipher!r}, "
            f"cipher_bits={self.cipher_bits!r}, alpn={self.alpn!r}, server_name={name!r}, "
            f"session_reused={self.session_reused!r}, handshake_seconds={self.handshake_seconds!r})"
        )


def _explained(exc: trio.BrokenResourceError) -> trio.BrokenResourceError:
    """trio's bare ``BrokenResourceError`` from an OpenSSL error, with the reason in words."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and not exc.args:
        return trio.BrokenResourceError(f"TLS connection broken: {describe_ssl_error(cause)}")
    return exc


@final
class TLSConnection(HalfCloseableStreamConnection):
    """A TLS stream over another stream connection (``trio.abc.HalfCloseableStream``).

    It has the id of the connection it runs over (``transport``), and that
    connection's ``info`` with the TLS facts in ``info.tls`` (also ``tls``).
    ``send_eof()`` sends ``close_notify`` and goes on receiving until the
    peer's (TLS 1.3 half-close; OpenSSL allows it on TLS 1.2 too, and so do
    most peers). Closing it sends ``close_notify`` (if not sent yet) and
    closes the transport. ``ssl_object`` is Python's ``ssl.SSLObject``.
    """

    def __init__(
        self,
        transport: StreamConnection,
        ssl_stream: trio.SSLStream[trio.abc.Stream],
        facts: TLSInfo,
        handshake: TLSHandshake,
        *,
        transport_name: str | None = None,
        record_size: int | str | None = None,
        trace: bool = False,
    ) -> None:
        super().__init__(transport.id, transport.address)
        self._transport = transport
        self._ssl = ssl_stream
        self._facts = facts
        self._handshake = handshake
        self._info = transport.info._with_tls(facts, transport_name)
        self._sizer = (
            None
            if record_size is None
            else RecordSizer(None if record_size == "dynamic" else int(record_size))
        )
        self._trace = trace
        self._closing = False
        self._send_conflict = ConflictDetector("another task is currently sending data on this connection")
        self._eof_sent = False
        self._eof_received = False
        self._pending = b""
        handshake.connection = self
        # A TLS 1.3 client's session ticket arrives after the handshake, with data: look for it.
        self._ticket_reads = _TICKET_READS if handshake.session_pending else 0

    # -- facts ----------------------------------------------------------------
    @property
    def info(self) -> CommunicationInfo:
        return self._info

    @property
    def tls(self) -> TLSInfo:
        """The TLS facts (same as ``info.tls``)."""
        return self._facts

    @property
    def transport(self) -> StreamConnection:
        """The connection TLS runs over."""
        return self._transport

    @property
    def ssl_object(self) -> ssl.SSLObject:
        obj = self._facts.ssl_object
        assert obj is not None
        return obj

    @property
    def handshake(self) -> TLSHandshake:
        """The handshake state the hooks saw (its ``stash`` holds plugins' data)."""
        return self._handshake

    @property
    def session(self) -> ssl.SSLSession | None:
        return self._facts.session

    # -- I/O --------------------------------------------------------------------
    def _check_send(self) -> None:
        if self._eof_sent and not self._closing:
            raise trio.ClosedResourceError("cannot send after send_eof()")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            self._check_send()
            try:
                sizer = self._sizer
                if sizer is None:
                    await self._ssl.send_all(data)
                else:
                    with memoryview(data) as view:
                        pos = 0
                        for size in sizer.plan(len(view), trio.current_time()):
                            await self._ssl.send_all(view[pos : pos + size])
                            pos += size
                        if not pos:
                            await self._ssl.send_all(b"")
            except trio.BrokenResourceError as exc:
                raise _explained(exc) from exc.__cause__
        if self._trace:
            self._trace_data("write", data)

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_send()
            await self._ssl.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Send ``close_notify``: the peer reads an end of stream; we go on receiving."""
        with self._send_conflict:
            if self._closing:
                raise trio.ClosedResourceError("this connection was closed")
            await trio.lowlevel.checkpoint()
            if self._eof_sent:
                return
            self._eof_sent = True
            obj = self.ssl_object
            if isinstance(obj, _SSLObject):
                obj._eof_requested = True
                try:
                    await self._ssl.send_all(b"\0")  # becomes the close_notify (see _SSLObject)
                except trio.BrokenResourceError as exc:
                    raise _explained(exc) from exc.__cause__
                finally:
                    obj._eof_requested = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data: bytes | bytearray
        try:
            if self._eof_sent:
                data = await self._receive_after_eof(max_bytes)
            else:
                try:
                    data = await self._ssl.receive_some(max_bytes)
                except trio.BrokenResourceError as exc:
                    # send_eof() ran while we waited: the peer's close_notify is an end.
                    if not (self._sent_eof() and isinstance(exc.__cause__, ssl.SSLZeroReturnError)):
                        raise
                    data = b""
                if self._sent_eof() and self._take_stash():
                    # send_eof() read these out while we waited: they came first.
                    self._pending += data
                    self._eof_received = self._eof_received or not data
                    data = self._take_pending(max_bytes)
                elif not data:
                    self._eof_received = True
                elif len(data) < (max_bytes or _READ_MORE):
                    data = self._read_more(data, max_bytes or _READ_MORE)
        except trio.BrokenResourceError as exc:
            raise _explained(exc) from exc.__cause__
        if self._ticket_reads:
            self._ticket_reads -= 1
            await self._handshake.ticket_check()
            if not self._handshake.session_pending:
                self._ticket_reads = 0
        if self._trace:
            self._trace_data("read", data)
        return data if isinstance(data, bytes) else bytes(data)

    def _read_more(self, data: bytes | bytearray, limit: int) -> bytes | bytearray:
        """More plaintext that needs no I/O: the records already received, up to ``limit`` bytes.

        OpenSSL's ``SSL_read`` returns one record (at most 16 KiB) per call, and
        a call through ``trio.SSLStream`` costs a trip through the scheduler; the
        rest of what arrived with the same read is decrypted here at once.
        """
        obj = self._facts.ssl_object
        if obj is None:
            return data
        incoming = obj.incoming if isinstance(obj, _SSLObject) else None
        if incoming is not None and not incoming.pending and not obj.pending():
            return data  # nothing arrived that is not decrypted yet (spares OpenSSL's want-read error)
        chunks = [data]
        size = len(data)
        read = obj.read
        try:
            while size < limit:
                more = read(limit - size)
                if not more:
                    break  # the peer's close_notify: the next call reports the end
                chunks.append(more)
                size += len(more)
        except ssl.SSLError:
            pass  # nothing more decryptable now (SSLWantReadError), or an error the next call raises
        return data if len(chunks) == 1 else b"".join(chunks)

    def _sent_eof(self) -> bool:
        return self._eof_sent  # (a call: it may have changed while a receive waited)

    def _take_stash(self) -> bool:
        """Move what ``send_eof`` read out into ``_pending``; whether anything is pending."""
        obj = self._facts.ssl_object
        if isinstance(obj, _SSLObject) and obj.stash:
            self._pending += obj.stash
            obj.stash = b""
        return bool(self._pending)

    def _take_pending(self, max_bytes: int | None) -> bytes:
        pending = self._pending
        n = len(pending) if max_bytes is None else max_bytes
        self._pending = pending[n:]
        return pending[:n]

    async def _receive_after_eof(self, max_bytes: int | None) -> bytes:
        """Receiving once we sent close_notify: what ``send_eof`` read out first, then the rest."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._take_stash() or self._eof_received:
            await trio.lowlevel.checkpoint()
            return self._take_pending(max_bytes)
        try:
            data = bytes(await self._ssl.receive_some(max_bytes))
        except trio.BrokenResourceError as exc:
            # After our close_notify, OpenSSL reports the peer's as an error, not as an end.
            if not isinstance(exc.__cause__, ssl.SSLZeroReturnError):
                raise
            data = b""
        if not data:
            self._eof_received = True
        elif len(data) < (max_bytes or _READ_MORE):
            data = bytes(self._read_more(data, max_bytes or _READ_MORE))
        if self._take_stash():  # send_eof read these out while we waited here: they came first
            self._pending += data
            return self._take_pending(max_bytes)
        return data

    def _trace_data(self, what: str, data: bytes | bytearray | memoryview) -> None:
        if not _wire.isEnabledFor(DEBUG_ALL):
            return
        n = len(data)
        shown = bytes(data[:TRACE_BYTES])
        more = f" (+{n - TRACE_BYTES} bytes not shown)" if n > TRACE_BYTES else ""
        direction = "to" if what == "write" else "from"
        _wire.log(DEBUG_ALL, "TLS %s %d bytes %s conn #%d: %r%s", what, n, direction, self.id, shown, more)

    async def aclose(self) -> None:
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        exc: BaseException | None = None
        try:
            await self._ssl.aclose()
        except BaseException as e:
            exc = e
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._transport)
            raise
        finally:
            # Even when cancelled: each shields what it has to await (close and
            # connection_lost hooks, a session to store), and awaits nothing otherwise.
            await self._handshake.finished(exc)
            await self._closed(exc)

    async def unwrap(self) -> tuple[StreamConnection, bytes]:
        """End TLS (``close_notify`` both ways) and return the transport and any bytes read past it."""
        stream, trailing = await self._ssl.unwrap()
        assert isinstance(stream, _Reads)
        assert stream.stream is self._transport
        self._closing = True
        await self._handshake.finished(None)
        return self._transport, bytes(trailing)

    def __repr__(self) -> str:
        return f"<TLSConnection #{self.id} {self._facts.version} over {self._transport!r}>"
