"""TLS options (:class:`TLSConfig`) and the ``ssl.SSLContext`` objects built from them.

Building a context is costly (loading the system's CA store takes
milliseconds), and TLS session reuse needs the *same* context object, so
contexts are built once per distinct configuration and cached (files are
keyed by path and modification time, so a replaced certificate is reloaded).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .._address import parse_bool
from ._certs import Certificate, load_certificate_into
from ._errors import TLSError
from ._hello import DEFAULT_MAX_HELLO_SIZE

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HELLO_TIMEOUT",
    "DYNAMIC",
    "OPTION_NAMES",
    "Side",
    "TLSConfig",
    "build_context",
    "normalize_option",
]

Side = Literal["client", "server"]
ClientAuth = Literal["none", "optional", "required"]

#: ``record_size="dynamic"``: ATS's ``max_record_size = -1`` (see :mod:`._records`).
DYNAMIC: Final = "dynamic"
DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0
#: Seconds a server waits for a client's whole ClientHello (see docs/tls.rst).
DEFAULT_HELLO_TIMEOUT: Final = 10.0
_CONTEXT_CACHE_MAX: Final = 128
_VERSIONS: Final = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "1.0": ssl.TLSVersion.TLSv1,
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.0": ssl.TLSVersion.TLSv1,
}
_HEX64: Final = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class TLSConfig:
    """Everything that says how to do TLS on one side of a connection.

    Pass one as ``tls=`` (or its fields as keywords / URL query parameters on a
    ``tls://`` URL). Fields left at their defaults mean:

    verification on with the system's CAs (``verify``, ``cafile``, ``capath``,
    ``cadata``); no client certificate (``certfile``/``keyfile``/``password``,
    or ``certificate`` in memory); SNI and host name check against the URL's
    host (``server_hostname``); TLS 1.2 or later (``min_version``,
    ``max_version``); OpenSSL's cipher list (``ciphers``, TLS 1.2 suites);
    no ALPN (``alpn``); no pinning (``pin_sha256``: SHA-256 fingerprints of
    acceptable peer certificates, hex, colons optional); client sessions
    cached and resumed (``session_cache``; ``session`` resumes one given
    session); key log to ``$SSLKEYLOGFILE`` if set (``keylog_file``); no wire
    trace (``trace``: addresses, networks or server names whose plaintext is
    logged at DEBUG_ALL); one record per write (``record_size``: ``"dynamic"``
    or a fixed size); 30 s to finish a handshake, hooks included
    (``handshake_timeout``), of which a server gives a client 10 s to send
    its whole ClientHello (``hello_timeout``); servers ask no client certificate
    (``client_auth``: ``"optional"``/``"required"``), refuse client
    renegotiation (``allow_renegotiation``), accept ClientHellos up to 32 KiB
    (``max_hello_size``) and run up to 256 handshakes at once per listener
    (``max_handshakes``); a peer closing without ``close_notify`` is an error
    (``ragged_eof=True`` treats it as an end of stream, as HTTPS clients do).

    ``context``: an ``ssl.SSLContext`` of your own, used as it is (the options
    that configure a context are then ignored).
    """

    verify: bool = True
    cafile: str | None = None
    capath: str | None = None
    cadata: str | bytes | None = field(default=None, repr=False)
    certfile: str | None = None
    keyfile: str | None = None
    password: str | bytes | None = field(default=None, repr=False)
    certificate: Certificate | None = None
    server_hostname: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None
    ciphers: str | None = None
    alpn: tuple[str, ...] | None = None
    pin_sha256: frozenset[str] = frozenset()
    session: ssl.SSLSession | None = field(default=None, compare=False, repr=False)
    session_cache: bool = True
    keylog_file: str | None = None
    trace: tuple[str, ...] = ()
    record_size: int | Literal["dynamic"] | None = None
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT
    hello_timeout: float | None = DEFAULT_HELLO_TIMEOUT
    client_auth: ClientAuth = "none"
    allow_renegotiation: bool = False
    ragged_eof: bool = False
    max_hello_size: int = DEFAULT_MAX_HELLO_SIZE
    max_handshakes: int = 256
    context: ssl.SSLContext | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, default in _DEFAULTS:
            value = getattr(self, name)
            if value is default:
                continue  # defaults are in normal form already
            normal = normalize_option(name, value)
            if normal is not value:
                object.__setattr__(self, name, normal)

    # -- building -------------------------------------------------------------
    @classmethod
    def coerce(cls, value: object) -> TLSConfig:
        """``True`` (defaults), a :class:`TLSConfig`, an ``ssl.SSLContext``, or a mapping of options."""
        if isinstance(value, TLSConfig):
            return value
        if value is True:
            return cls()
        if isinstance(value, ssl.SSLContext):
            return cls(context=value)
        if isinstance(value, Mapping):
            return cls().replace(**value)
        raise TypeError(
            f"tls= takes True, a TLSConfig, an ssl.SSLContext or a dict of TLS options, not {value!r}"
        )

    def replace(self, **changes: Any) -> TLSConfig:
        """A copy with ``changes`` (values are normalised as URL query values are)."""
        unknown = set(changes) - OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown TLS option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @property
    def builds_context(self) -> bool:
        """Whether contexts are built from these options (not a given ``context``)."""
        return self.context is None

    def has_certificate(self) -> bool:
        return self.context is not None or self.certfile is not None or self.certificate is not None

    def context_key(self, side: Side) -> tuple[object, ...]:
        """What a built context depends on (files by path and modification time)."""
        keylog = self.keylog_file if self.keylog_file is not None else os.environ.get("SSLKEYLOGFILE")
        return (
            side,
            self.verify,
            _file_key(self.cafile),
            self.capath,
            self.cadata,
            _file_key(self.certfile),
            _file_key(self.keyfile),
            self.password,
            self.certificate,
            self.min_version,
            self.max_version,
            self.ciphers,
            self.alpn,
            self.client_auth if side == "server" else None,
            self.allow_renegotiation if side == "server" else None,
            keylog or None,
        )


OPTION_NAMES: Final = frozenset(f.name for f in dataclasses.fields(TLSConfig))
_DEFAULTS: Final = tuple((f.name, f.default) for f in dataclasses.fields(TLSConfig))
#: How long a file's modification time is trusted before it is looked at again (seconds).
_STAT_EVERY: Final = 1.0
_stats: dict[str, tuple[float, tuple[str, int]]] = {}


def _file_key(path: str | None) -> tuple[str, int] | None:
    """``(path, mtime)``: a replaced certificate or CA file makes a new context (within a second)."""
    if path is None:
        return None
    now = time.monotonic()
    hit = _stats.get(path)
    if hit is not None and now - hit[0] < _STAT_EVERY:
        return hit[1]
    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError:
        key = (path, -1)
    if len(_stats) > 1024:
        _stats.clear()
    _stats[path] = (now, key)
    return key


def _version(value: object) -> ssl.TLSVersion:
    if isinstance(value, ssl.TLSVersion):
        return value
    if isinstance(value, str):
        found = _VERSIONS.get(value.strip().lower())
        if found is not None:
            return found
    raise ValueError(f"expected a TLS version like '1.2' or '1.3', got {value!r}")


def _names(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        items = [str(v) for v in value]
    else:
        raise ValueError(  # noqa: TRY004 - every option's bad value is a ValueError (an AddressError in URLs)
            f"{what}: expected a list of names or a comma-separated string, got {value!r}"
        )
    if any(not item for item in items):
        raise ValueError(f"{what}: empty name in {value!r}")
    return tuple(items)


def _pins(value: object) -> frozenset[str]:
    out = set()
    for pin in _names(value, "pin_sha256"):
        text = pin.lower().removeprefix("sha256:").replace(":", "")
        if not _HEX64.match(text):
            raise ValueError(f"pin_sha256: {pin!r} is not a SHA-256 fingerprint (64 hex digits)")
        out.add(text)
    return frozenset(out)


def _record_size(value: object) -> int | Literal["dynamic"] | None:
    if value is None or value == "off":
        return None
    if value == DYNAMIC:
        return DYNAMIC
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 64 <= value <= 16384:
        return value
    raise ValueError(f"record_size: expected 'dynamic', 'off' or a size of 64..16384 bytes, got {value!r}")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(value)
    raise ValueError(f"expected a boolean, got {value!r}")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"{name}: expected a positive whole number, got {value!r}")


def _timeout(value: object, name: str = "handshake_timeout") -> float | None:
    if value is None or value in ("none", "inf"):
        return None
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: expected seconds, got {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
    return seconds


def _trace(value: object) -> tuple[str, ...]:
    out = []
    for item in _names(value, "trace"):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9_.\-]+", item):
                raise ValueError(
                    f"trace: {item!r} is neither an address, a network nor a host name"
                ) from None
            item = item.lower()
        out.append(item)
    return tuple(out)


def _optional_text(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[no-any-return]
    raise ValueError(f"{name}: expected text, got {value!r}")


_CIPHER_CHECKED: dict[str, bool] = {}


def _ciphers(value: object) -> str | None:
    """An OpenSSL cipher list, checked now (a list that selects nothing fails here)."""
    text = _optional_text(value, "ciphers")
    if text is None:
        return None
    ok = _CIPHER_CHECKED.get(text)
    if ok is None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(text)
            ok = True
        except ssl.SSLError:
            ok = False
        if len(_CIPHER_CHECKED) < 256:
            _CIPHER_CHECKED[text] = ok
    if not ok:
        raise ValueError(f"ciphers: OpenSSL selects no cipher from {text[:100]!r}")
    return text


def normalize_option(name: str, value: object) -> Any:
    """Turn an option's value (a URL's text or a keyword's object) into its :class:`TLSConfig` form.

    Returns ``value`` itself when it is already in that form. Raises ``ValueError``.
    """
    if name in ("verify", "session_cache", "allow_renegotiation", "ragged_eof"):
        return value if isinstance(value, bool) else _bool(value)
    if name == "ciphers":
        return _ciphers(value)
    if name in ("cafile", "capath", "certfile", "keyfile", "keylog_file", "server_hostname"):
        return _optional_text(value, name)
    if name in ("min_version", "max_version"):
        if value is None and name == "max_version":
            return None
        return value if isinstance(value, ssl.TLSVersion) else _version(value)
    if name == "alpn":
        if value is None or (isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)):
            return value
        return _names(value, "alpn")
    if name == "pin_sha256":
        if isinstance(value, frozenset) and all(isinstance(v, str) and _HEX64.match(v) for v in value):
            return value
        return _pins(value) if value else frozenset()
    if name == "trace":
        if value == ():
            return value
        return _trace(value) if value else ()
    if name == "record_size":
        return value if value is None or value == DYNAMIC else _record_size(value)
    if name in ("handshake_timeout", "hello_timeout"):
        if value is None or (isinstance(value, float) and value > 0 and value != float("inf")):
            return value
        return _timeout(value, name)
    if name == "client_auth":
        if value in ("none", "optional", "required"):
            return value
        raise ValueError(f"client_auth: expected none, optional or required, got {value!r}")
    if name in ("max_hello_size", "max_handshakes"):
        return (
            value
            if isinstance(value, int) and not isinstance(value, bool) and value > 0
            else (_positive_int(value, name))
        )
    if name == "certificate":
        if value is None or isinstance(value, Certificate):
            return value
        raise ValueError(f"certificate: expected a trio_conduit.tls.Certificate, got {value!r}")
    if name == "session":
        if value is None or isinstance(value, ssl.SSLSession):
            return value
        raise ValueError(f"session: expected an ssl.SSLSession, got {value!r}")
    if name == "context":
        if value is None or isinstance(value, ssl.SSLContext):
            return value
        raise ValueError(f"context: expected an ssl.SSLContext, got {value!r}")
    if name in ("cadata", "password"):
        if value is None or isinstance(value, (str, bytes)):
            return value
        # never the value itself: it may be a secret
        raise ValueError(f"{name}: expected str or bytes, got a {type(value).__name__}")
    raise ValueError(f"unknown TLS option {name!r}")


# ---------------------------------------------------------------------------
# contexts
# ---------------------------------------------------------------------------

_CONTEXTS: OrderedDict[tuple[object, ...], ssl.SSLContext] = OrderedDict()
#: The last answer for a config object: (config, side, when, context). A listener or
#: a connect URL reuses one config object; within ``_STAT_EVERY`` of the last look
#: its context is taken from here without working out the key again.
_RECENT: dict[tuple[int, Side], tuple[TLSConfig, float, ssl.SSLContext]] = {}


def build_context(config: TLSConfig, side: Side) -> ssl.SSLContext:
    """The ``ssl.SSLContext`` for ``config`` on ``side`` (cached; ``config.context`` as is)."""
    if config.context is not None:
        return config.context
    now = time.monotonic()
    recent = _RECENT.get((id(config), side))
    if recent is not None and recent[0] is config and now - recent[1] < _STAT_EVERY:
        return recent[2]
    key = config.context_key(side)
    context = _CONTEXTS.get(key)
    if context is not None:
        _CONTEXTS.move_to_end(key)
    else:
        context = _make_context(config, side)
        _CONTEXTS[key] = context
        if len(_CONTEXTS) > _CONTEXT_CACHE_MAX:
            _CONTEXTS.popitem(last=False)
    if len(_RECENT) >= _CONTEXT_CACHE_MAX:
        _RECENT.clear()
    _RECENT[id(config), side] = (config, now, context)
    return context


def clear_context_cache() -> None:
    """Forget every cached context (the next handshakes build them again)."""
    _CONTEXTS.clear()
    _RECENT.clear()


def _make_context(config: TLSConfig, side: Side) -> ssl.SSLContext:
    try:
        return _configure(config, side)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or "BAD_CONFIG"  # set_ciphers' SSLError has none
        raise TLSError(f"cannot set up a TLS {side} context: {exc}", reason=reason) from exc
    except OSError as exc:
        raise TLSError(f"cannot set up a TLS {side} context: {exc}", reason="BAD_CONFIG") from exc


def _configure(config: TLSConfig, side: Side) -> ssl.SSLContext:
    if side == "client":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if config.verify:
            if config.cafile or config.capath or config.cadata:
                ctx.load_verify_locations(config.cafile, config.capath, config.cadata)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if config.client_auth != "none":
            ctx.verify_mode = ssl.CERT_REQUIRED if config.client_auth == "required" else ssl.CERT_OPTIONAL
            if config.cafile or config.capath or config.cadata:
                ctx.load_verify_locations(config.cafile, config.capath, config.cadata)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if not config.allow_renegotiation:
            ctx.options |= ssl.OP_NO_RENEGOTIATION
    if config.certificate is not None:
        load_certificate_into(ctx, config.certificate)
    elif config.certfile is not None:
        ctx.load_cert_chain(config.certfile, config.keyfile, password=config.password)
    ctx.minimum_version = config.min_version
    if config.max_version is not None:
        ctx.maximum_version = config.max_version
    if config.ciphers:
        ctx.set_ciphers(config.ciphers)
    if config.alpn:
        ctx.set_alpn_protocols(list(config.alpn))
    keylog = config.keylog_file if config.keylog_file is not None else os.environ.get("SSLKEYLOGFILE")
    if keylog:
        ctx.keylog_filename = keylog
    return ctx


# ---------------------------------------------------------------------------
# per-peer trace
# ---------------------------------------------------------------------------


def trace_matches(patterns: tuple[str, ...], remote: object, server_name: str | None) -> bool:
    """Whether a peer (its socket address, the server name) is one ``trace`` names."""
    if not patterns:
        return False
    host = remote[0] if isinstance(remote, tuple) and remote and isinstance(remote[0], str) else None
    ip = None
    if host is not None:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            ip = None
    name = server_name.lower() if server_name else None
    for pattern in patterns:
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(pattern, strict=False):
                    return True
                continue
            except ValueError:
                pass
        if name is None:
            continue
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and name != pattern[2:]:
                return True
        elif name == pattern:
            return True
    return False
