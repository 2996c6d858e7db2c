"""DTLS associations and the DTLS listener: the trio driver of :mod:`._dtls_engine`.

A client runs its handshake over any datagram connection (``udp://``'s
connected channel, ``unix+dgram://``, ``udp://`` through a SOCKS5 relay):
:func:`dtls_client`. A server, :class:`DTLSListener`, reads one bound
datagram socket (a :class:`~trio_conduit.transport.DatagramEndpoint`: UDP,
or unix datagrams from clients that bound a path) for many peers; the peer
address, whatever its type, is what the cookie binds:

* a datagram from a peer with an association goes to that association's
  queue (bounded: ``queue`` datagrams, the rest dropped and counted);
* anything else must be a ClientHello. It is read by our sans-IO reader
  (:mod:`._dtls_hello`); a hello without a valid cookie is answered with a
  HelloVerifyRequest computed from nothing but a secret (:class:`CookieJar`),
  so a spoofed hello allocates nothing. A hello that arrives in fragments
  needs its fragments kept until it is whole: a reassembly cache of at most
  :data:`REASSEMBLY_SLOTS` peers, each bounded by ``max_hello_size`` (the
  oldest is evicted), is the only state a stranger can make us hold;
* a hello with a valid cookie (the peer proved it receives at its address)
  starts an association and its handshake task, unless ``max_handshakes``
  are already running (then it is dropped and counted; the client retries).
  The hooks (``start``, ``client_hello``, ``servername``, ``certificate``,
  ``alpn``) run first, with the parsed hello, in that handshake's own task,
  so one that awaits pauses only its own handshake; then OpenSSL gets the
  reassembled hello (``DTLSv1_listen`` with our cookie already checked).
* RFC 6347 §4.2.8: a ClientHello from an address that has an open
  association does not touch it unless it carries a valid cookie; then it
  is a new connection from that peer (the old one is closed) — a spoofed
  hello cannot kill a live association.

A handshake failing (or a handler's error, in ``pool.serve``) is traced
and the listener goes on. Everything runs under the listener's cancel
scope in the pool's nursery and ends with :meth:`DTLSListener.aclose`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, cast, final

import trio
from OpenSSL import SSL, crypto

from .._connection import CommunicationInfo, Connection, DatagramConnection, Listener, StreamConnection
from .._errors import MessageTooLarge
from .._socket_channel import DatagramEndpoint, DatagramListener
from .._util import ConflictDetector, peer_text
from ._certs import Certificate
from ._config import Side, TLSConfig
from ._dtls_config import build_dtls_context
from ._dtls_engine import DEFAULT_MTU, DTLSEngine, DTLSState
from ._dtls_hello import CookieJar, DTLSClientHello, DTLSClientHelloReader, hello_verify_request
from ._errors import ClientHelloError, TLSError, TLSHandshakeTimeout, TLSVerifyError
from ._handshake import TLSHandshake, _check_pins, _is_ip
from ._sessions import SessionKey, session_cache
from ._stream import TLSInfo

if TYPE_CHECKING:
    from cryptography import x509

    from .._address import Address
    from .._connection import Buffer, SockAddr
    from .._plugins import HookScope
    from .._trace import Tracer
    from .._transport import Context

__all__ = ["REASSEMBLY_SLOTS", "DTLSConnection", "DTLSListener", "dtls_client", "dtls_listener"]

_log = logging.getLogger("trio_conduit.tls")
_RECORD: Final = struct.Struct("!BHH6sH")
#: Peers whose fragmented first flight is being reassembled at once, at most.
REASSEMBLY_SLOTS: Final = 64
#: With every ``max_handshakes`` slot taken, a handshake whose peer has been silent this long
#: (longer than the first retransmission, 1 s) gives its slot to a new one.
STALLED: Final = 2.0
_CLOSE_GRACE: Final = 1.0
_VERIFY_TEXT: Final = {
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    62: "hostname mismatch",
}


def _ssl_connection(config: TLSConfig, side: Side) -> tuple[SSL.Connection, dict[str, Any]]:
    """A fresh OpenSSL connection for ``side``, and the dict the verify callback leaves its
    findings in (its app data, read by :func:`_verify_error`)."""
    ssl_conn = SSL.Connection(build_dtls_context(config, side))
    holder: dict[str, Any] = {}
    ssl_conn.set_app_data(holder)
    return ssl_conn, holder


def _verify_error(holder: dict[str, Any], peer: str, exc: TLSError) -> TLSError:
    found = holder.get("verify_error")
    if found is None:
        return exc
    code, _ = found
    text = _VERIFY_TEXT.get(code, f"X509 verify error {code}")
    return TLSVerifyError(
        f"DTLS handshake with {peer} failed: certificate verify failed: {text} (X509 verify code {code})",
        peer=peer,
        verify_code=code,
        verify_message=text,
    )


def _hostname_matches(cert: x509.Certificate, name: str) -> bool:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if _is_ip(name):
        ip = ipaddress.ip_address(name.split("%", 1)[0])
        return ip in san.get_values_for_type(x509.IPAddress)
    wanted = name.lower().rstrip(".")
    for pattern in san.get_values_for_type(x509.DNSName):
        pattern = pattern.lower().rstrip(".")
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted:
            head, tail = wanted.split(".", 1)
            if head and tail == pattern[2:]:
                return True
    return False


#: Hostname checks already made: (leaf DER, name) → whether it matches (the newest 64). A client
#: that connects again and again to one server checks one certificate: parsing it (its SAN) once
#: is enough.
_hostname_checks: OrderedDict[tuple[bytes, str], bool] = OrderedDict()


def _hostname_ok(info: TLSInfo, name: str) -> bool:
    der = info.peer_certificate_der
    if der is None:
        return False
    key = (der, name)
    found = _hostname_checks.get(key)
    if found is None:
        leaf = info.peer_certificate
        found = _hostname_checks[key] = leaf is not None and _hostname_matches(leaf, name)
        if len(_hostname_checks) > 64:
            _hostname_checks.popitem(last=False)
    return found


@final
@dataclass(frozen=True, eq=False)
class _DTLSInfo(TLSInfo):
    """:class:`TLSInfo` of a DTLS association: the peer's chain is read from OpenSSL (and made
    ``cryptography`` objects) when first asked for, not at each handshake."""

    _ssl_conn: SSL.Connection | None = field(default=None, repr=False)

    @cached_property
    def peer_chain(self) -> tuple[x509.Certificate, ...]:
        conn = self._ssl_conn
        chain = None
        if conn is not None:
            chain = conn.get_verified_chain(as_cryptography=True) or conn.get_peer_cert_chain(
                as_cryptography=True
            )
        if chain:
            return tuple(chain)
        leaf = self.peer_certificate
        return (leaf,) if leaf is not None else ()


def _info(engine: DTLSEngine, side: str, server_name: str | None, seconds: float, reused: bool) -> TLSInfo:
    conn = engine.ssl
    cert = conn.get_peer_certificate()  # (as DER straight from OpenSSL: no cryptography object yet)
    alpn = conn.get_alpn_proto_negotiated()
    return _DTLSInfo(
        side=side,  # type: ignore[arg-type]
        version=conn.get_protocol_version_name(),
        cipher=conn.get_cipher_name() or "",
        cipher_bits=conn.get_cipher_bits() or 0,
        alpn=alpn.decode(errors="replace") if alpn else None,
        server_name=server_name,
        session_reused=reused,
        handshake_seconds=seconds,
        peer_certificate_der=crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        if cert is not None
        else None,
        _ssl_conn=conn,
    )


try:  # pyOpenSSL has no SSL_session_reused; its cffi binding does (private: False if it goes away).
    from OpenSSL._util import lib as _lib

    _SSL_session_reused: Callable[[Any], int] | None = _lib.SSL_session_reused
except (ImportError, AttributeError):  # pragma: no cover - pyOpenSSL as we know it has both
    _SSL_session_reused = None


def _session_reused(conn: SSL.Connection) -> bool:
    try:
        return _SSL_session_reused is not None and bool(_SSL_session_reused(conn._ssl))
    except AttributeError:
        return False


@final
class DTLSConnection(DatagramConnection):
    """One DTLS association: whole messages both ways (``trio.abc.Channel[bytes]``).

    ``send`` takes a message of at most :attr:`max_message_size` bytes (the
    path's cleartext MTU; larger raises :class:`~trio_conduit.MessageTooLarge`
    and the association stays usable); ``receive`` returns the next message,
    raises ``trio.EndOfChannel`` once the peer sent close_notify. Records
    that fail to authenticate, replays and duplicates are dropped silently
    (DTLS's rule). On a server, datagrams beyond the association's queue are
    dropped and counted in :attr:`dropped`. ``aclose`` sends close_notify.
    Received messages are processed when ``receive`` is called: a peer's
    retransmission that needs an answer is answered then.
    """

    def __init__(
        self,
        conn_id: int,
        address: Address | None,
        *,
        send_datagram: Callable[[bytes], Awaitable[None]],
        receive_datagram: Callable[[], Awaitable[bytes]],
        close_wire: Callable[[], Awaitable[None]],
        base_info: Callable[[], CommunicationInfo],
        transport_name: str | None,
    ) -> None:
        super().__init__(conn_id, address)
        self._send_datagram = send_datagram
        self._receive_datagram = receive_datagram
        self._close_wire = close_wire
        self._base_info = base_info
        self._transport_name = transport_name
        self._engine: DTLSEngine | None = None
        self._tls: TLSInfo | None = None
        self._handshake: TLSHandshake | None = None
        self._receive_guard = ConflictDetector("another task is receiving on this DTLS association")
        self._is_closed = False
        self.dropped = 0

    @property
    def info(self) -> CommunicationInfo:
        base = self._base_info()
        return base._with_tls(self._tls, self._transport_name) if self._tls is not None else base

    @property
    def tls(self) -> TLSInfo:
        assert self._tls is not None
        return self._tls

    @property
    def max_message_size(self) -> int:
        """The largest message :meth:`send` takes now (the cleartext MTU)."""
        return self._engine.cleartext_mtu if self._engine is not None else 0

    @property
    def mtu(self) -> int:
        """The ciphertext MTU in force (smaller than asked after a fallback)."""
        return self._engine.mtu if self._engine is not None else 0

    async def _flush(self) -> None:
        engine = self._engine
        if engine is None:
            return
        for datagram in engine.datagrams_to_send():
            await self._send_datagram(datagram)

    # -- the handshake --------------------------------------------------------
    async def _run_handshake(self, engine: DTLSEngine, pending: list[bytes] | None = None) -> None:
        self._engine = engine
        try:
            engine.start(trio.current_time())
            for datagram in pending or ():
                if engine.handshake_done:
                    break
                engine.receive_datagram(datagram, trio.current_time())
            while not engine.handshake_done:
                await self._flush()
                deadline = engine.next_deadline()
                data = None
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    data = await self._receive_datagram()
                if data is not None:
                    engine.receive_datagram(data, trio.current_time())
                else:
                    engine.handle_timeout(trio.current_time())
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(_CLOSE_GRACE),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
            ):
                await self._flush()  # the rest of our flight, or OpenSSL's alert

    # -- the channel ------------------------------------------------------------
    async def send(self, value: Buffer) -> None:
        # Several tasks may send at once, as on any datagram channel: encrypting a message is
        # one synchronous call, and each flush sends the whole datagrams queued by then.
        engine = self._engine
        if self._is_closed or engine is None:
            raise trio.ClosedResourceError("this DTLS association was closed")
        if engine.state is not DTLSState.OPEN:
            raise trio.BrokenResourceError("this DTLS association is closed by the peer")
        try:
            engine.send(bytes(value))
        except ValueError as exc:
            raise MessageTooLarge(str(exc)) from None
        await self._flush()

    async def receive(self) -> bytes:
        with self._receive_guard:
            engine = self._engine
            if self._is_closed or engine is None:
                raise trio.ClosedResourceError("this DTLS association was closed")
            while True:
                message = engine.next_message()
                if message is not None:
                    return message
                if engine.peer_closed:
                    raise trio.EndOfChannel
                try:
                    data = await self._receive_datagram()
                except trio.EndOfChannel:
                    raise trio.BrokenResourceError("the DTLS listener was closed") from None
                engine.receive_datagram(data, trio.current_time())
                await self._flush()

    async def aclose(self) -> None:
        if self._is_closed:
            await trio.lowlevel.checkpoint()
            return
        self._is_closed = True
        with trio.CancelScope(shield=True):
            engine = self._engine
            if engine is not None and engine.handshake_done:
                engine.close()
                with (
                    trio.move_on_after(_CLOSE_GRACE),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
                ):
                    await self._flush()
            await self._close_wire()
            if self._handshake is not None:
                await self._handshake.finished(None)
            await self._closed()


def _shim(conn: DTLSConnection) -> StreamConnection:
    # TLSHandshake only reads ``id``, ``info`` (the peer) and, on failure, closes it.
    return cast("StreamConnection", conn)


# ---------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------


async def dtls_client(
    inner: Connection,
    config: TLSConfig,
    ctx: Context,
    *,
    transport_name: str | None = None,
    mtu: int = DEFAULT_MTU,
) -> DTLSConnection:
    """A client handshake over the datagram connection ``inner`` (closed if it fails)."""
    if not isinstance(inner, DatagramConnection):
        await trio.aclose_forcefully(inner)
        raise TypeError(f"DTLS needs a datagram connection, not {inner!r}")
    conn = DTLSConnection(
        inner.id,
        ctx.address,
        send_datagram=inner.send,
        receive_datagram=inner.receive,
        close_wire=inner.aclose,
        base_info=lambda: inner.info,
        transport_name=transport_name,
    )
    hs = TLSHandshake("client", _shim(conn), config, scope=ctx.scope, tracer=ctx.tracer, address=ctx.address)
    conn._handshake = hs
    if config.server_hostname is not None:
        hs.server_name = config.server_hostname or None
    elif ctx.address.host:
        hs.server_name = ctx.address.host
    try:
        with trio.move_on_after(config.handshake_timeout or math.inf):
            await _client_steps(conn, hs, config, mtu)
            return conn
        raise TLSHandshakeTimeout(
            f"DTLS handshake with {hs.peer} did not finish within {config.handshake_timeout:g} s",
            peer=hs.peer,
        )
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(conn)
            await hs.finished(exc)
        raise


async def _client_steps(conn: DTLSConnection, hs: TLSHandshake, config: TLSConfig, mtu: int) -> None:
    if hs.scope.has_impls("conduit_tls_outbound_start"):
        await hs._hook("conduit_tls_outbound_start")
        config = hs.config
    if config.verify and not hs.server_name:
        raise TLSError(
            f"DTLS handshake with {hs.peer}: verifying the server needs its name; pass server_hostname= "
            "(or verify=False)",
            reason="NO_SERVER_NAME",
            peer=hs.peer,
        )
    ssl_conn, holder = _ssl_connection(config, "client")
    ssl_conn.set_connect_state()
    if hs.server_name and not _is_ip(hs.server_name):
        ssl_conn.set_tlsext_host_name(hs.server_name.encode("idna"))
    key = SessionKey(hs.peer, hs.server_name)
    context = ssl_conn.get_context()
    offered = session_cache.take(key, context) if config.session_cache else None
    if isinstance(offered, SSL.Session):
        ssl_conn.set_session(offered)
    deadline = hs.started + config.handshake_timeout if config.handshake_timeout else None
    engine = DTLSEngine(ssl_conn, mtu=mtu, now=trio.current_time(), handshake_deadline=deadline)
    try:
        await conn._run_handshake(engine)
    except TLSError as exc:
        session_cache.remove(key)
        exc.peer = hs.peer
        raise _verify_error(holder, hs.peer, exc) from exc
    sni = hs.server_name if hs.server_name and not _is_ip(hs.server_name) else None
    info = _info(engine, "client", sni, hs.elapsed, _session_reused(ssl_conn))
    if config.verify and hs.server_name and not _hostname_ok(info, hs.server_name):
        raise TLSVerifyError(
            f"DTLS handshake with {hs.peer} failed: certificate verify failed: hostname mismatch, "
            f"certificate is not valid for {hs.server_name!r} (X509 verify code 62)",
            peer=hs.peer,
            verify_code=62,
            verify_message="hostname mismatch",
        )
    conn._tls = info
    await _after(hs, conn, info)
    if config.session_cache:
        session = ssl_conn.get_session()
        if session is not None:
            session_cache.put(key, context, session)


async def _after(hs: TLSHandshake, conn: DTLSConnection, info: TLSInfo) -> None:
    hs.connection = cast("Any", conn)  # (hooks see the DTLSConnection where TLS has its TLSConnection)
    _check_pins(hs, info)
    impls = hs.scope.implemented
    if info.peer_certificate_der is not None and "conduit_tls_verify_peer" in impls:
        await hs._hook("conduit_tls_verify_peer", chain=list(info.peer_chain))
    if "conduit_tls_handshake_done" in impls:
        await hs._hook("conduit_tls_handshake_done", conn=conn)
    tracer = hs.tracer
    if tracer is not None:
        tracer.debug(
            "DTLS %s handshake with %s done (conn #%d): %s %s, ALPN %s, %s session, %.1f ms",
            hs.side,
            hs.peer,
            conn.id,
            info.version,
            info.cipher,
            info.alpn or "-",
            "resumed" if info.session_reused else "new",
            info.handshake_seconds * 1000,
        )


# ---------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------


class _Association:
    """A peer with a handshake running or done: its queue of datagrams and its connection.

    ``heard`` is when the peer last sent a datagram; ``cancel`` ends its handshake (a full
    listener reclaims the slot of the handshake that has waited longest on its peer).
    """

    __slots__ = ("cancel", "conn", "handshaking", "heard", "receive", "send")

    def __init__(self, conn: DTLSConnection, queue: int) -> None:
        self.conn = conn
        self.send, self.receive = trio.open_memory_channel[bytes](queue)
        self.handshaking = True
        self.heard = trio.current_time()
        self.cancel = trio.CancelScope()


@final
class DTLSListener(Listener):
    """DTLS on one bound datagram socket, many peers (see the module docstring).

    ``endpoint`` reads the bound socket; the listener owns it from now on
    (:func:`dtls_listener` takes it from a datagram listener). The reader task
    starts at once in ``nursery`` (the pool's) and ends with :meth:`aclose`.
    Counters: :attr:`cookies_sent` (HelloVerifyRequests), :attr:`dropped`
    (datagrams that were not DTLS, came from a peer without an address, or
    found no room), :attr:`handshake_failures`.
    """

    def __init__(
        self,
        endpoint: DatagramEndpoint,
        config: TLSConfig,
        *,
        address: Address,
        scope: HookScope,
        tracer: Tracer,
        nursery: trio.Nursery,
        transport_name: str | None = None,
        mtu: int = DEFAULT_MTU,
        queue: int = 64,
        backlog: int = 128,
        cookie_jar: CookieJar | None = None,
    ) -> None:
        self._endpoint = endpoint
        self.config = config
        self._address = address
        self._scope = scope
        self._tracer = tracer
        self._transport_name = transport_name
        self._mtu = mtu
        self._queue = queue
        self.cookies = cookie_jar if cookie_jar is not None else CookieJar()
        self._associations: dict[SockAddr, _Association] = {}
        self._reassembly: OrderedDict[SockAddr, DTLSClientHelloReader] = OrderedDict()
        self._new_send, self._new_receive = trio.open_memory_channel[DTLSConnection](backlog)
        self._cancel = trio.CancelScope()
        self._done = trio.Event()
        self._handshakes = 0
        self._closed = False
        #: Handshakes ended to make room for new ones (see :meth:`_reclaim`).
        self.evicted = 0
        self.cookies_sent = 0
        self.dropped = 0
        self.handshake_failures = 0
        nursery.start_soon(self._run, name=f"conduit DTLS listener {address}")

    @property
    def address(self) -> Address:
        return self._address

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._endpoint.socket

    @property
    def associations(self) -> int:
        """Peers with a handshake running or an association open."""
        return len(self._associations)

    @property
    def reassembling(self) -> int:
        """Peers whose fragmented first flight is being reassembled (at most :data:`REASSEMBLY_SLOTS`)."""
        return len(self._reassembly)

    async def accept(self) -> Connection:
        try:
            return await self._new_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("this listener was closed") from None

    # -- the reader ---------------------------------------------------------------
    async def _run(self) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    while True:
                        try:
                            data, addr = await self._endpoint.receive_from()
                        except (trio.ClosedResourceError, trio.BrokenResourceError):
                            return
                        if not addr:  # an unbound unix socket: no answer can reach it
                            self.dropped += 1
                            continue
                        await self._route(data, addr, nursery)
        finally:
            self._new_send.close()
            for assoc in self._associations.values():
                assoc.send.close()
            # Associations done but never accepted: closed here (their close hooks fire).
            with trio.CancelScope(shield=True):
                while True:
                    try:
                        pending = self._new_receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                    await trio.aclose_forcefully(pending)
            self._done.set()

    async def _route(self, data: bytes, addr: SockAddr, nursery: trio.Nursery) -> None:
        assoc = self._associations.get(addr)
        if assoc is not None and (assoc.handshaking or not _is_client_hello(data)):
            assoc.heard = trio.current_time()
            try:
                assoc.send.send_nowait(data)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                assoc.conn.dropped += 1
            return
        # No association (or a new hello at an open one: RFC 6347 §4.2.8): stateless until a cookie.
        reader = self._reassembly.pop(addr, None) or DTLSClientHelloReader(self.config.max_hello_size)
        try:
            hello = reader.feed_datagram_untrusted(data)
        except ClientHelloError:
            self.dropped += 1
            return
        if hello is None:
            self._reassembly[addr] = reader
            if len(self._reassembly) > REASSEMBLY_SLOTS:
                self._reassembly.popitem(last=False)
            return
        if not self.cookies.valid(addr, hello):
            verify = hello_verify_request(hello, self.cookies.cookie(addr, hello))
            self.cookies_sent += 1
            with contextlib.suppress(
                OSError, MessageTooLarge, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                await self._endpoint.send_to(verify, addr)
            return
        if self._handshakes >= self.config.max_handshakes and not self._reclaim():
            self.dropped += 1
            return
        if assoc is not None:
            self._tracer.debug("DTLS: a new connection from %s replaces its association", peer_text(addr))
            del self._associations[addr]
            assoc.send.close()
        self._start_association(addr, hello, nursery)

    def _reclaim(self) -> bool:
        """All ``max_handshakes`` slots are taken: end the handshake whose peer has been silent
        longest, if that is over :data:`STALLED` seconds (a peer that proved its address with a
        cookie and then stalls, slowloris-style, must not starve the others until
        ``handshake_timeout``). Whether a slot is free now."""
        stalled = [a for a in self._associations.values() if a.handshaking and not a.cancel.cancel_called]
        if not stalled:
            return False
        oldest = min(stalled, key=lambda a: a.heard)
        if trio.current_time() - oldest.heard < STALLED:
            return False
        oldest.cancel.cancel()
        self.evicted += 1
        self._tracer.info(
            "DTLS: conn #%d silent for %.1f s made room for a new handshake",
            oldest.conn.id,
            trio.current_time() - oldest.heard,
        )
        return True

    def _start_association(self, addr: SockAddr, hello: DTLSClientHello, nursery: trio.Nursery) -> None:
        endpoint = self._endpoint
        assoc_box: list[_Association] = []

        async def send_datagram(datagram: bytes) -> None:
            try:
                await endpoint.send_to(datagram, addr)
            except (OSError, MessageTooLarge, trio.BrokenResourceError) as exc:  # (a vanished unix peer too)
                raise trio.BrokenResourceError(f"sending to {peer_text(addr)} failed: {exc}") from exc

        async def receive_datagram() -> bytes:
            return await assoc_box[0].receive.receive()

        async def close_wire() -> None:
            assoc = assoc_box[0]
            if self._associations.get(addr) is assoc:
                del self._associations[addr]
            assoc.send.close()
            assoc.receive.close()

        conn = DTLSConnection(
            self._tracer.next_conn_id(),
            self._address,
            send_datagram=send_datagram,
            receive_datagram=receive_datagram,
            close_wire=close_wire,
            base_info=lambda: endpoint.info(addr),
            transport_name=self._transport_name,
        )
        assoc = _Association(conn, self._queue)
        assoc_box.append(assoc)
        self._associations[addr] = assoc
        self._handshakes += 1
        nursery.start_soon(self._serve_handshake, assoc, hello, name=f"conduit DTLS handshake #{conn.id}")

    async def _serve_handshake(self, assoc: _Association, hello: DTLSClientHello) -> None:
        conn = assoc.conn
        hs = TLSHandshake(
            "server", _shim(conn), self.config, scope=self._scope, tracer=self._tracer, address=self._address
        )
        conn._handshake = hs
        hs._hello = hello.hello
        hs.server_name = hello.server_name
        timeout = self.config.handshake_timeout
        done = False
        try:
            with assoc.cancel, trio.move_on_after(timeout if timeout is not None else math.inf):
                await self._server_steps(conn, hs, hello)
                done = True
            if not done and assoc.cancel.cancel_called:
                raise TLSHandshakeTimeout(
                    f"DTLS handshake with {hs.peer} stalled and made room for another", peer=hs.peer
                )
            if not done:
                raise TLSHandshakeTimeout(
                    f"DTLS handshake with {hs.peer} did not finish within {timeout:g} s", peer=hs.peer
                )
        except TLSError as exc:
            self.handshake_failures += 1
            self._tracer.info("DTLS handshake failed (conn #%d): %s", conn.id, exc)
            with trio.CancelScope(shield=True):
                await hs.finished(exc)
        except Exception:
            self.handshake_failures += 1
            _log.exception("DTLS handshake for conn #%d raised; association dropped", conn.id)
        finally:
            assoc.handshaking = False
            self._handshakes -= 1
            if not done:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(conn)
        if done:
            try:
                await self._new_send.send(conn)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(conn)
            except BaseException:
                # Nobody will accept it (the listener closed, or we are cancelled).
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(conn)
                raise

    async def _server_steps(self, conn: DTLSConnection, hs: TLSHandshake, hello: DTLSClientHello) -> None:
        impls = hs.scope.implemented
        if "conduit_tls_start" in impls:
            await hs._hook("conduit_tls_start")
        if "conduit_tls_client_hello" in impls:
            await hs._hook("conduit_tls_client_hello", hello=hello.hello)
        if hs.server_name is not None and "conduit_tls_servername" in impls:
            _take(hs, await hs._hook_first("conduit_tls_servername", server_name=hs.server_name))
        if hs.certificate is None and "conduit_tls_certificate" in impls:
            _take(hs, await hs._hook_first("conduit_tls_certificate", server_name=hs.server_name))
        if hs.alpn is None and "conduit_tls_alpn" in impls and hello.hello.alpn_protocols:
            protocol = await hs._hook_first("conduit_tls_alpn", offered=list(hello.hello.alpn_protocols))
            if protocol is not None:
                hs.restrict_alpn([str(protocol)])
        if hs.tunnel_target is not None:
            raise TLSError("DTLS has no blind tunnels", reason="BAD_CONFIG", peer=hs.peer)
        config = hs.config
        if hs.certificate is not None:
            config = config.replace(certificate=hs.certificate, certfile=None, keyfile=None)
        if hs.alpn is not None:
            config = config.replace(alpn=hs.alpn)
        if not config.has_certificate():
            raise TLSError(
                f"DTLS handshake with {hs.peer} failed: no certificate (give the listener certfile= "
                "or a certificate, or a conduit_tls_certificate hook)",
                reason="NO_CERTIFICATE",
                peer=hs.peer,
            )
        ssl_conn, holder = _ssl_connection(config, "server")
        # OpenSSL gets the hello as one record of one unfragmented message, whatever it came in;
        # DTLSv1_listen sets the association's sequence numbers from it (our cookie already checked).
        version = hello.hello.legacy_version
        record = _RECORD.pack(22, version, 0, hello.record_seq.to_bytes(6, "big"), len(hello.message))
        ssl_conn.bio_write(record + hello.message)
        try:
            ssl_conn.DTLSv1_listen()
        except SSL.Error as exc:
            raise TLSError(
                f"DTLS handshake with {hs.peer} failed: OpenSSL refused the hello: {exc}", peer=hs.peer
            ) from exc
        deadline = hs.started + config.handshake_timeout if config.handshake_timeout else None
        engine = DTLSEngine(ssl_conn, mtu=self._mtu, now=trio.current_time(), handshake_deadline=deadline)
        try:
            await conn._run_handshake(engine)
        except TLSError as exc:
            exc.peer = hs.peer
            raise _verify_error(holder, hs.peer, exc) from exc
        info = _info(engine, "server", hs.server_name, hs.elapsed, _session_reused(ssl_conn))
        conn._tls = info
        await _after(hs, conn, info)

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._cancel.cancel()
        with trio.CancelScope(shield=True):
            await self._done.wait()
            self._endpoint.close()
            self._new_receive.close()


def dtls_listener(
    inner: Listener,
    config: TLSConfig,
    ctx: Context,
    *,
    transport_name: str | None = None,
    address: Address | None = None,
    mtu: int = DEFAULT_MTU,
    queue: int | None = None,
) -> DTLSListener:
    """DTLS over the socket of a datagram listener (``udp://``, ``unix+dgram://``): it takes the
    socket over (:meth:`~trio_conduit.transport.DatagramListener.take_endpoint`) and serves
    every peer from it, stateless cookies first. ``address``: what the listener reports
    (default: the inner listener's); ``queue``: datagrams held per association (default:
    the inner transport's ``queue``). A certificate given in ``config`` is loaded now (the
    caller closes ``inner`` if that raises)."""
    if not isinstance(inner, DatagramListener):
        raise TypeError(
            f"DTLS serves from a datagram listener's socket (udp://, unix+dgram://), not {inner!r}"
        )
    if ctx.nursery is None:
        raise RuntimeError("a DTLS listener needs the pool's nursery")
    if config.has_certificate():
        build_dtls_context(config, "server")  # a missing file or a bad key fails here, not per peer
    endpoint = inner.take_endpoint()
    return DTLSListener(
        endpoint,
        config,
        address=address if address is not None else inner.address,
        scope=ctx.scope,
        tracer=ctx.tracer,
        nursery=ctx.nursery,
        transport_name=transport_name,
        mtu=mtu,
        queue=endpoint.queue if queue is None else queue,
        backlog=128 if ctx.socket_options.backlog is None else max(1, ctx.socket_options.backlog),
    )


def _take(hs: TLSHandshake, chosen: object) -> None:
    if chosen is None:
        return
    if isinstance(chosen, Certificate):
        hs.use_certificate(chosen)
        return
    raise TLSError(
        f"a DTLS certificate/servername hook returned {chosen!r}; DTLS takes a Certificate or None "
        "(Python's ssl has no DTLS contexts)",
        reason="BAD_CONFIG",
        peer=hs.peer,
    )


def _is_client_hello(data: bytes) -> bool:
    """An epoch-0 handshake record whose message is a ClientHello (type 1)."""
    return len(data) > 25 and data[0] == 22 and data[3:5] == b"\0\0" and data[13] == 1
