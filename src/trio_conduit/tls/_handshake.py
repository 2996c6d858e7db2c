"""The hooked handshake: TLS as a sub-state-machine of a connection (after ATS ``SSLNetVConnection``).

Server side, in order (each step awaits its hooks; any of them may take
its time — that is ATS's pause and ``TSVConnReenable`` — or reject)::

    start ──▶ read + parse ClientHello ──▶ client_hello ──▶ servername ──▶ certificate
          ──▶ alpn ──▶ OpenSSL handshake (hello replayed) ──▶ verify_peer ──▶ handshake_done
          ... connection in use ... ──▶ close

``start``, ``client_hello`` and ``servername`` may instead decide a blind
tunnel: the bytes read so far and everything after go to an origin, undecrypted.

Client side::

    outbound_start ──▶ session_get ──▶ OpenSSL handshake ──▶ pins ──▶ verify_peer
          ──▶ session_put ──▶ handshake_done ... ──▶ close

The whole setup, hooks included, runs under ``handshake_timeout``. On any
failure the connection is closed and a :class:`TLSError` says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, TypeVar, cast, final

import trio

from .._connection import StreamConnection
from .._util import peer_text
from ._certs import Certificate
from ._config import Side, TLSConfig, build_context, trace_matches
from ._errors import (
    ClientHelloError,
    TLSError,
    TLSHandshakeTimeout,
    TLSRejected,
    TLSVerifyError,
    describe_ssl_error,
)
from ._hello import ClientHello, ClientHelloReader, parse_client_hello_untrusted, server_name_untrusted
from ._sessions import SessionKey, session_cache
from ._stream import ContextShim, TLSConnection, TLSInfo

if TYPE_CHECKING:
    from .._address import Address
    from .._plugins import HookScope
    from .._trace import Tracer

__all__ = ["Stash", "StashKey", "TLSHandshake", "TunnelPlan", "client_handshake", "server_handshake"]

_log = logging.getLogger("trio_conduit.tls")
T = TypeVar("T")

# Alert descriptions (RFC 8446 §6) we send ourselves, before OpenSSL has the connection.
_ALERT_HANDSHAKE_FAILURE: Final = 40
_ALERT_ACCESS_DENIED: Final = 49
_ALERT_DECODE_ERROR: Final = 50
_ALERT_PROTOCOL_VERSION: Final = 70
_ALERT_UNRECOGNIZED_NAME: Final = 112
_ALERT_GRACE: Final = 1.0
#: Read size while waiting for a ClientHello (one record; longer hellos take more reads).
_HELLO_READ: Final = 16384 + 5
_CLOSE_GRACE: Final = 5.0
#: Hooks a closing connection may await.
_CLOSING_HOOKS: Final = frozenset(("conduit_tls_close", "conduit_tls_session_put"))
_UNSCOPED: Final = contextlib.nullcontext()


@final
class StashKey(Generic[T]):
    """A typed key for :class:`Stash` (make one per kind of data, at module level)."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<StashKey {self.name or hex(id(self))}>"


@final
class Stash:
    """Per-connection data for plugins, under typed keys (after pytest's ``Stash``).

    >>> TENANT = StashKey[str]("tenant")
    >>> handshake.stash[TENANT] = "acme"      # doctest: +SKIP
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast("T", self._data[key])

    def get(self, key: StashKey[T], default: T) -> T:
        return cast("T", self._data.get(key, default))

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __delitem__(self, key: StashKey[Any]) -> None:
        del self._data[key]


class TunnelPlan:
    """A blind tunnel decided by a hook: where to, and the bytes already read."""

    __slots__ = ("buffered", "handshake", "target")

    def __init__(self, handshake: TLSHandshake, target: object, buffered: bytes) -> None:
        self.handshake = handshake
        self.target = target
        self.buffered = buffered


def _is_ip(name: str) -> bool:
    host = name.split("%", 1)[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


@final
class TLSHandshake:
    """One TLS setup as hooks see it (ATS's ``TSVConn`` during the handshake).

    ``side`` is ``"server"`` or ``"client"``; ``conn`` the connection TLS is
    being set up over (its ``id`` and ``info``); ``peer`` the peer's address
    as text; ``config`` the :class:`TLSConfig` in force (an
    ``outbound_start`` hook may replace it: ``handshake.config =
    handshake.config.replace(alpn=["h2"])``); ``hello`` the parsed
    :class:`ClientHello` (server, from the ``client_hello`` step on);
    ``server_name`` the SNI (received, or to be sent); ``stash`` plugins'
    data for this connection; ``connection`` the :class:`TLSConnection` once
    the handshake is done.

    Decisions: :meth:`reject`, :meth:`tunnel`, :meth:`use_context`,
    :meth:`use_certificate`, :meth:`restrict_alpn`; a client's ``session``
    may be set to offer one.
    """

    # Defaults as class attributes: a handshake sets only what it uses.
    _server_name: str | None = None
    _server_name_pending = False  # a server read the hello and has not decoded its name yet
    context: ssl.SSLContext | None = None
    certificate: Certificate | None = None
    alpn: tuple[str, ...] | None = None
    session_key: SessionKey | None = None
    session_pending = False
    tunnel_target: object | None = None
    connection: TLSConnection | None = None
    _hello: ClientHello | None = None
    _hello_reader: ClientHelloReader | None = None  # (a server's, once it holds the whole hello)
    _stash: Stash | None = None
    _context_used: ssl.SSLContext | None = None
    _finished = False
    #: A server's: called once the whole ClientHello has arrived (the listener stops
    #: counting the handshake as evictable then).
    _on_hello: Callable[[], object] | None = None

    def __init__(
        self,
        side: Side,
        conn: StreamConnection,
        config: TLSConfig,
        *,
        scope: HookScope,
        tracer: Tracer | None = None,
        address: Address | None = None,
    ) -> None:
        self.side: Side = side
        self.conn = conn
        self.config = config
        self.scope = scope
        self.tracer = tracer
        self.address = address
        self.remote = conn.info.remote
        self._peer: str | None = address.hostport if side == "client" and address is not None else None
        self.session: ssl.SSLSession | None = config.session
        self.started = trio.current_time()

    @property
    def peer(self) -> str:
        """The peer as text: the address connected to, or the accepted socket's peer."""
        if self._peer is None:
            self._peer = peer_text(self.remote)
        return self._peer

    @property
    def stash(self) -> Stash:
        """Plugins' data for this connection (see :class:`Stash`)."""
        if self._stash is None:
            self._stash = Stash()
        return self._stash

    @property
    def hello(self) -> ClientHello | None:
        """The client's hello, parsed (server side, once read; ``None`` on a client).

        A server parses it before the hooks that may need it run, or else when
        first asked for (a malformed one OpenSSL accepted then raises
        :class:`ClientHelloError` here).
        """
        reader = self._hello_reader
        if self._hello is None and reader is not None and reader.message is not None:
            self._hello = parse_client_hello_untrusted(reader.message, reader.raw)
        return self._hello

    @property
    def server_name(self) -> str | None:
        """The SNI: the name to send (a client; hooks may change it), or the one received.

        A server decodes it from the hello when first asked for, unless a hook
        needed the hello parsed before (a name our parser refuses, in a hello
        OpenSSL accepted, then raises :class:`ClientHelloError` here).
        """
        if self._server_name_pending:
            hello, message = self._hello, self._hello_reader.message if self._hello_reader else None
            assert message is not None  # pending only once the whole hello is in
            self._server_name = hello.server_name if hello is not None else server_name_untrusted(message)
            self._server_name_pending = False
        return self._server_name

    @server_name.setter
    def server_name(self, name: str | None) -> None:
        self._server_name = name
        self._server_name_pending = False

    def _valid_server_name(self) -> str | None:
        """``server_name``, or ``None`` where it is malformed (for logs and trace matching)."""
        try:
            return self.server_name
        except ClientHelloError:
            return None

    # -- decisions ------------------------------------------------------------
    def reject(self, reason: str = "rejected by a hook") -> NoReturn:
        """Refuse this connection: raises :class:`TLSRejected` (let it propagate)."""
        raise TLSRejected(f"TLS {self.side} handshake with {self.peer} refused: {reason}", peer=self.peer)

    def tunnel(self, target: object) -> None:
        """Make this a blind tunnel to ``target`` (a URL such as ``"tcp://origin:443"``, or a
        connected ``trio.abc.Stream``): the bytes read so far, the ClientHello included,
        and all that follows are relayed both ways without decryption (ATS ``TSVConnTunnel``).
        Server side, from the ``start``, ``client_hello`` and ``servername`` hooks."""
        if self.side != "server":
            raise TLSError("only a server can turn a connection into a blind tunnel")
        self.tunnel_target = target

    def use_context(self, context: ssl.SSLContext) -> None:
        """Handshake with this server ``ssl.SSLContext`` (certificate, versions, ALPN, ...)."""
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"use_context() takes an ssl.SSLContext, not {context!r}")
        self.context = context

    def use_certificate(self, certificate: Certificate) -> None:
        """Present this certificate (the other settings stay the listener's)."""
        if not isinstance(certificate, Certificate):
            raise TypeError(f"use_certificate() takes a trio_conduit.tls.Certificate, not {certificate!r}")
        self.certificate = certificate

    def restrict_alpn(self, protocols: list[str] | tuple[str, ...]) -> None:
        """Negotiate only these ALPN protocols (in this order of preference)."""
        self.alpn = tuple(protocols)

    def _tunnel_plan(self, buffered: bytes) -> TunnelPlan | None:
        return TunnelPlan(self, self.tunnel_target, buffered) if self.tunnel_target is not None else None

    @property
    def elapsed(self) -> float:
        """Seconds since the TLS setup started."""
        return trio.current_time() - self.started

    # -- hooks ------------------------------------------------------------------
    async def _hook(self, name: str, **kwargs: Any) -> None:
        if name in self.scope.implemented:
            await _guard(self, name, self.scope.acall(name, handshake=self, **kwargs))

    async def _hook_first(self, name: str, **kwargs: Any) -> Any:
        if name in self.scope.implemented:
            return await _guard(self, name, self.scope.acall_first(name, handshake=self, **kwargs))
        return None

    async def finished(self, exc: BaseException | None) -> None:
        """Run the ``close`` hooks (once) and put a pending client session in the cache."""
        if self._finished:
            return
        self._finished = True
        impls = self.scope.implemented
        store = self.session_pending and exc is None
        if not store and "conduit_tls_close" not in impls:
            return
        # Hooks run shielded (this may be a cancelled task closing up) and bounded; with none,
        # nothing here awaits.
        hooked = not impls.isdisjoint(_CLOSING_HOOKS)
        with (
            trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_GRACE)
            if hooked
            else _UNSCOPED
        ):
            if store:
                session = self._current_session()
                if session is not None and (session.has_ticket or not _is_tls13(self)):
                    await self._store_session(session)
            if "conduit_tls_close" in impls:
                await self.scope.notify("conduit_tls_close", handshake=self, exc=exc)

    # -- sessions ----------------------------------------------------------------
    def _current_session(self) -> ssl.SSLSession | None:
        conn = self.connection
        return conn.ssl_object.session if conn is not None else None

    async def ticket_check(self) -> None:
        """A TLS 1.3 client read data: if the server's ticket came, cache the session."""
        session = self._current_session()
        if session is not None and session.has_ticket:
            await self._store_session(session)

    async def _store_session(self, session: ssl.SSLSession) -> None:
        self.session_pending = False
        key = self.session_key
        if key is None or self._context_used is None:
            return
        session_cache.put(key, self._context_used, session)
        if self.scope.has_impls("conduit_tls_session_put"):
            await self.scope.notify("conduit_tls_session_put", handshake=self, key=key, session=session)

    def __repr__(self) -> str:
        return f"<TLSHandshake {self.side} conn #{self.conn.id} {self.peer}>"


def _is_tls13(hs: TLSHandshake) -> bool:
    conn = hs.connection
    return conn is not None and conn.tls.version == "TLSv1.3"


async def _guard(hs: TLSHandshake, hook: str, call: Any) -> Any:
    try:
        return await call
    except TLSError:
        raise
    except Exception as exc:
        _log.warning("TLS %s hook for conn #%d raised %r; closing the connection", hook, hs.conn.id, exc)
        raise TLSRejected(
            f"TLS {hs.side} handshake with {hs.peer} refused: {hook} hook raised {type(exc).__name__}: {exc}",
            peer=hs.peer,
        ) from exc


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def translate_error(exc: BaseException, hs: TLSHandshake) -> TLSError:
    """An error from ``trio.SSLStream`` during a handshake, as a :class:`TLSError` that says why."""
    if isinstance(exc, TLSError):
        return exc
    cause: BaseException | None = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    where = f"TLS handshake with {hs.peer} failed"
    if isinstance(cause, ssl.SSLCertVerificationError):
        code = cause.verify_code
        message = cause.verify_message or "verification failed"
        return TLSVerifyError(
            f"{where}: certificate verify failed: {message} (X509 verify code {code})",
            reason=getattr(cause, "reason", None) or "CERTIFICATE_VERIFY_FAILED",
            peer=hs.peer,
            verify_code=code,
            verify_message=message,
        )
    if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)) or (
        isinstance(exc, trio.BrokenResourceError) and cause is None
    ):
        return TLSError(
            f"{where}: the peer closed the connection during the handshake",
            reason="PEER_CLOSED",
            peer=hs.peer,
        )
    if isinstance(cause, ssl.SSLError):
        return TLSError(
            f"{where}: {describe_ssl_error(cause)}",
            reason=getattr(cause, "reason", None) or "SSL_ERROR",
            peer=hs.peer,
        )
    if isinstance(cause, OSError) or isinstance(exc, trio.BrokenResourceError):
        return TLSError(
            f"{where}: connection broken: {cause or exc}", reason="CONNECTION_BROKEN", peer=hs.peer
        )
    if isinstance(exc, ValueError):
        return TLSError(f"{where}: {exc}", reason="BAD_CONFIG", peer=hs.peer)
    return TLSError(f"{where}: {exc!r}", peer=hs.peer)


async def _send_alert(conn: StreamConnection, description: int) -> None:
    """A fatal alert in a plaintext record, best effort (before OpenSSL has the connection)."""
    await _send_raw(conn, bytes((21, 3, 3, 0, 2, 2, description)))


async def _send_raw(conn: StreamConnection, data: bytes) -> None:
    if not data:
        return
    with trio.move_on_after(_ALERT_GRACE):
        try:
            await conn.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass


async def _handshake_failed(shim: ContextShim, hs: TLSHandshake, exc: BaseException) -> NoReturn:
    """``do_handshake`` raised ``exc``: send the alert OpenSSL made (trio leaves it unsent),
    then raise the :class:`TLSError` that says why."""
    await _send_raw(hs.conn, shim.unsent())
    raise translate_error(exc, hs) from exc


def _deadline(timeout: float | None) -> trio.CancelScope:
    return trio.move_on_after(timeout) if timeout is not None else trio.CancelScope()


async def _guarded(hs: TLSHandshake, steps: Coroutine[Any, Any, T]) -> T:
    """Run one side's ``steps`` under ``handshake_timeout``; on any failure close the
    connection, run the ``close`` hooks and raise a :class:`TLSError` that says why."""
    timeout = hs.config.handshake_timeout
    try:
        with _deadline(timeout):
            return await steps
        raise TLSHandshakeTimeout(
            f"TLS handshake with {hs.peer} did not finish within {timeout:g} s", peer=hs.peer
        )
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(hs.conn)
            await hs.finished(exc)
        if isinstance(exc, Exception) and not isinstance(exc, TLSError):
            raise translate_error(exc, hs) from exc
        raise


def _check_pins(hs: TLSHandshake, info: TLSInfo) -> None:
    pins = hs.config.pin_sha256
    if not pins:
        return
    der = info.peer_certificate_der
    if der is None:
        raise TLSVerifyError(
            f"TLS handshake with {hs.peer} failed: the peer sent no certificate to check the pin against",
            reason="PIN_MISMATCH",
            peer=hs.peer,
        )
    digest = hashlib.sha256(der).hexdigest()
    if digest not in pins:
        shown = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
        raise TLSVerifyError(
            f"TLS handshake with {hs.peer} failed: certificate SHA-256 fingerprint {shown} is not pinned",
            reason="PIN_MISMATCH",
            peer=hs.peer,
            verify_message="certificate not pinned",
        )


def _trace_done(hs: TLSHandshake, info: TLSInfo) -> None:
    tracer = hs.tracer
    log = tracer.log if tracer is not None else _log
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "TLS %s handshake with %s done (conn #%d): %s %s, ALPN %s, SNI %s, %s session, %.1f ms",
            hs.side,
            hs.peer,
            hs.conn.id,
            info.version,
            info.cipher,
            info.alpn or "-",
            hs._valid_server_name() or "-",
            "resumed" if info.session_reused else "new",
            info.handshake_seconds * 1000,
        )


async def _established(
    hs: TLSHandshake,
    ssl_stream: trio.SSLStream[trio.abc.Stream],
    info: TLSInfo,
    transport_name: str | None,
    trace_name: str | None = None,
) -> TLSConnection:
    """The :class:`TLSConnection` of a finished handshake, checked (pins, ``verify_peer``)
    and announced (``handshake_done``). A wire trace matches ``trace_name``, else the
    handshake's server name (on a server decoded only when a trace is configured)."""
    config = hs.config
    trace = bool(config.trace) and trace_matches(
        config.trace, hs.remote, trace_name or hs._valid_server_name()
    )
    tls_conn = TLSConnection(
        hs.conn,
        ssl_stream,
        info,
        hs,
        transport_name=transport_name,
        record_size=config.record_size,
        trace=trace,
    )
    await _after_handshake(hs, tls_conn)
    return tls_conn


async def _after_handshake(hs: TLSHandshake, tls_conn: TLSConnection) -> None:
    info = tls_conn.tls
    _check_pins(hs, info)
    impls = hs.scope.implemented
    if info.peer_certificate_der is not None and "conduit_tls_verify_peer" in impls:
        await hs._hook("conduit_tls_verify_peer", chain=list(info.peer_chain))
    if "conduit_tls_handshake_done" in impls:
        await hs._hook("conduit_tls_handshake_done", conn=tls_conn)
    _trace_done(hs, info)


# ---------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------


def client_handshake(
    conn: StreamConnection,
    config: TLSConfig,
    *,
    scope: HookScope,
    tracer: Tracer | None = None,
    address: Address | None = None,
    transport_name: str | None = None,
) -> Coroutine[Any, Any, TLSConnection]:
    """Run a client handshake over ``conn`` (await it); the :class:`TLSConnection`, or
    ``conn`` closed and an error."""
    hs = TLSHandshake("client", conn, config, scope=scope, tracer=tracer, address=address)
    if config.server_hostname is not None:
        hs.server_name = config.server_hostname or None
    elif address is not None and address.host:
        hs.server_name = address.host
    return _guarded(hs, _client_steps(hs, transport_name))


async def _client_steps(hs: TLSHandshake, transport_name: str | None) -> TLSConnection:
    if hs.scope.has_impls("conduit_tls_outbound_start"):
        await hs._hook("conduit_tls_outbound_start")
    config = hs.config
    context = hs.context or build_context(config, "client")
    hs._context_used = context
    if context.check_hostname and not hs.server_name:
        raise TLSError(
            f"TLS handshake with {hs.peer}: verifying the server needs its name; pass server_hostname= "
            "(or verify=False)",
            reason="NO_SERVER_NAME",
            peer=hs.peer,
        )
    if config.session_cache and hs.session is None:
        hs.session_key = SessionKey(hs.peer, hs.server_name)
        found = await hs._hook_first("conduit_tls_session_get", key=hs.session_key)
        if not isinstance(found, ssl.SSLSession):
            found = session_cache.take(hs.session_key, context)
        hs.session = found if isinstance(found, ssl.SSLSession) else None
    elif config.session_cache:
        hs.session_key = SessionKey(hs.peer, hs.server_name)
    shim = ContextShim(context, b"", hs.session)
    try:
        ssl_stream, obj = shim.wrap(
            hs.conn, server_side=False, server_hostname=hs.server_name, ragged_eof=config.ragged_eof
        )
    except ValueError:
        if hs.session is None:
            raise
        _log.debug("conn #%d: the session offered does not fit this context; not resuming", hs.conn.id)
        hs.session = None
        shim = ContextShim(context)
        ssl_stream, obj = shim.wrap(
            hs.conn, server_side=False, server_hostname=hs.server_name, ragged_eof=config.ragged_eof
        )
    try:
        try:
            await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            await _handshake_failed(shim, hs, exc)
    except TLSError:
        if hs.session is not None and hs.session_key is not None:
            session_cache.remove(hs.session_key)
            if hs.scope.has_impls("conduit_tls_session_remove"):
                await hs.scope.notify("conduit_tls_session_remove", handshake=hs, key=hs.session_key)
        raise
    sni = hs.server_name if hs.server_name and not _is_ip(hs.server_name) else None
    info = TLSInfo.from_ssl_object(obj, "client", sni, hs.elapsed)
    hs.session_pending = hs.session_key is not None
    tls_conn = await _established(hs, ssl_stream, info, transport_name, sni)
    if hs.session_pending and info.version != "TLSv1.3":
        session = obj.session
        if session is not None:
            await hs._store_session(session)
    return tls_conn


# ---------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------


def server_handshake(
    conn: StreamConnection,
    config: TLSConfig,
    *,
    scope: HookScope,
    tracer: Tracer | None = None,
    address: Address | None = None,
    transport_name: str | None = None,
    on_hello: Callable[[], object] | None = None,
) -> Coroutine[Any, Any, TLSConnection | TunnelPlan]:
    """Run a server handshake over an accepted ``conn`` (await it), hooks and all.

    Returns the :class:`TLSConnection`, or a :class:`TunnelPlan` when a hook
    decided a blind tunnel (the caller relays it). On failure ``conn`` is
    closed and a :class:`TLSError` raised. ``on_hello()`` is called once the
    whole ClientHello has arrived (within ``hello_timeout``).
    """
    hs = TLSHandshake("server", conn, config, scope=scope, tracer=tracer, address=address)
    hs._on_hello = on_hello
    return _guarded(hs, _server_steps(hs, transport_name))


#: Hooks that are handed the parsed ClientHello or decide from it, before OpenSSL runs.
_HELLO_HOOKS: Final = frozenset(
    ("conduit_tls_client_hello", "conduit_tls_servername", "conduit_tls_certificate", "conduit_tls_alpn")
)
#: Every hook that runs before OpenSSL has the connection.
_BEFORE_OPENSSL: Final = _HELLO_HOOKS | {"conduit_tls_start"}


async def _read_hello(hs: TLSHandshake, parse: bool) -> bytes:
    """Read the ClientHello into ``hs``; every byte read so far.

    It is parsed whole at once when ``parse`` (a hook will want it); otherwise
    only its records are checked now (OpenSSL checks the rest), and the parse
    waits until something asks for ``hs.hello`` (or only the server name
    scan, for ``hs.server_name``).
    """
    reader = ClientHelloReader(hs.config.max_hello_size)
    hello_timeout = hs.config.hello_timeout
    try:
        with _deadline(hello_timeout) as deadline:
            buffered = await _read_hello_records(hs, reader, parse)
        if deadline.cancelled_caught:
            raise TLSHandshakeTimeout(
                f"TLS handshake with {hs.peer} failed: no complete ClientHello within {hello_timeout:g} s",
                peer=hs.peer,
            )
    except ClientHelloError as exc:
        exc.peer = hs.peer
        if exc.reason not in ("EOF", "NOT_TLS"):
            alert = _ALERT_PROTOCOL_VERSION if exc.reason == "SSLV2_HELLO" else _ALERT_DECODE_ERROR
            await _send_alert(hs.conn, alert)
        raise ClientHelloError(
            f"TLS handshake with {hs.peer} failed: {exc}", reason=exc.reason, peer=hs.peer
        ) from None
    if hs._on_hello is not None:
        hs._on_hello()
    return buffered


async def _read_hello_records(hs: TLSHandshake, reader: ClientHelloReader, parse: bool) -> bytes:
    while True:
        try:
            data = await hs.conn.receive_some(_HELLO_READ)
        except trio.BrokenResourceError as exc:
            raise TLSError(
                f"TLS handshake with {hs.peer} failed: connection broken before the ClientHello: {exc}",
                reason="CONNECTION_BROKEN",
                peer=hs.peer,
            ) from exc
        if not data:
            reader.feed_eof()
        message = reader.feed_message_untrusted(data)
        if message is not None:
            hs._hello_reader = reader
            hs._server_name_pending = True
            if parse:
                hs.hello  # noqa: B018 - parsed (and refused if malformed) before the hooks run
            return reader.buffered


async def _server_steps(hs: TLSHandshake, transport_name: str | None) -> TLSConnection | TunnelPlan:
    if hs.scope.implemented.isdisjoint(_BEFORE_OPENSSL):
        buffered = await _read_hello(hs, parse=False)
    else:
        decided = await _hooks_before_openssl(hs)
        if isinstance(decided, TunnelPlan):
            return decided
        buffered = decided
    try:
        context = _server_context(hs)
    except TLSError as exc:
        no_cert = exc.reason == "NO_CERTIFICATE"
        await _send_alert(hs.conn, _ALERT_UNRECOGNIZED_NAME if no_cert else _ALERT_HANDSHAKE_FAILURE)
        raise
    hs._context_used = context
    config = hs.config
    shim = ContextShim(context, buffered)
    ssl_stream, obj = shim.wrap(hs.conn, server_side=True, ragged_eof=config.ragged_eof)
    try:
        await ssl_stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await _handshake_failed(shim, hs, exc)
    info = TLSInfo.from_ssl_object(obj, "server", None, hs.elapsed, hs)
    return await _established(hs, ssl_stream, info, transport_name)


async def _hooks_before_openssl(hs: TLSHandshake) -> bytes | TunnelPlan:
    """``start``, reading the hello, ``client_hello``, ``servername``, ``certificate``, ``alpn``:
    the bytes read so far, or the blind tunnel a hook decided."""
    impls = hs.scope.implemented
    try:
        if "conduit_tls_start" in impls:
            await hs._hook("conduit_tls_start")
        if (plan := hs._tunnel_plan(b"")) is not None:
            return plan
        buffered = await _read_hello(hs, parse=not impls.isdisjoint(_HELLO_HOOKS))
        if "conduit_tls_client_hello" in impls:
            await hs._hook("conduit_tls_client_hello", hello=hs.hello)
            if (plan := hs._tunnel_plan(buffered)) is not None:
                return plan
        if hs.server_name is not None and "conduit_tls_servername" in impls:
            chosen = await hs._hook_first("conduit_tls_servername", server_name=hs.server_name)
            _take_choice(hs, chosen, "conduit_tls_servername")
            if (plan := hs._tunnel_plan(buffered)) is not None:
                return plan
        if hs.context is None and hs.certificate is None and "conduit_tls_certificate" in impls:
            chosen = await hs._hook_first("conduit_tls_certificate", server_name=hs.server_name)
            _take_choice(hs, chosen, "conduit_tls_certificate")
        if hs.alpn is None and "conduit_tls_alpn" in impls:
            offered = hs.hello.alpn_protocols if hs.hello is not None else ()
            if offered:
                protocol = await hs._hook_first("conduit_tls_alpn", offered=list(offered))
                if protocol is not None:
                    hs.restrict_alpn([str(protocol)])
    except TLSRejected:
        await _send_alert(hs.conn, _ALERT_ACCESS_DENIED)
        raise
    return buffered


def _take_choice(hs: TLSHandshake, chosen: object, hook: str) -> None:
    if chosen is None:
        return
    if isinstance(chosen, ssl.SSLContext):
        hs.use_context(chosen)
    elif isinstance(chosen, Certificate):
        hs.use_certificate(chosen)
    else:
        raise TLSError(f"{hook} returned {chosen!r}; expected an ssl.SSLContext, a Certificate or None")


def _server_context(hs: TLSHandshake) -> ssl.SSLContext:
    config = hs.config
    if hs.certificate is not None:
        config = config.replace(certificate=hs.certificate, certfile=None, keyfile=None, context=None)
    if hs.context is not None:
        if hs.alpn is not None:
            raise TLSError(
                "cannot restrict ALPN on an ssl.SSLContext chosen by a hook; set its ALPN protocols yourself",
                reason="BAD_CONFIG",
                peer=hs.peer,
            )
        return hs.context
    if hs.alpn is not None:
        if not config.builds_context:
            raise TLSError(
                "cannot restrict ALPN on the ssl.SSLContext given as tls=; set its ALPN protocols yourself",
                reason="BAD_CONFIG",
                peer=hs.peer,
            )
        config = config.replace(alpn=hs.alpn)
    if not config.has_certificate():
        name = hs._valid_server_name() or "-"
        raise TLSError(
            f"TLS handshake with {hs.peer} failed: no certificate (server name {name}) "
            "(give the listener certfile= or a certificate, or a conduit_tls_certificate hook)",
            reason="NO_CERTIFICATE",
            peer=hs.peer,
        )
    return build_context(config, "server")
