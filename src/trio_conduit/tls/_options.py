"""The TLS options as URL/keyword options (:class:`~trio_conduit.Option`): what ``tls://``
and every transport that takes TLS options accept, each with a line for the docs.

A URL's text goes through :func:`~trio_conduit.tls._config.normalize_option`, the same
check a :class:`~trio_conduit.tls.TLSConfig` field gets, so a bad value fails when
the URL is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .._address import Option
from ._config import TLSConfig, normalize_option

if TYPE_CHECKING:
    from .._transport import Transport

__all__ = ["TLS_OPTIONS", "TLS_OPTION_NAMES", "TLSConfigCache", "layered_options"]

# The TLS options a URL or keywords may set, with a line each (the docs list them).
_TLS_OPTIONS: Final = {
    "verify": "verify the peer's certificate (default on; 0 only when you mean it)",
    "cafile": "CA certificates to trust, a PEM file (default: the system's)",
    "capath": "a directory of CA certificates",
    "cadata": "CA certificates as PEM text",
    "certfile": "our certificate chain, PEM (a server's, or a client's for mutual TLS)",
    "keyfile": "its private key, PEM (default: in certfile)",
    "password": "the private key's password",
    "certificate": "our certificate and key in memory (a trio_conduit.tls.Certificate; keyword only)",
    "server_hostname": "the name to send (SNI) and verify (default: the URL's host)",
    "min_version": "lowest TLS version (1.2 by default)",
    "max_version": "highest TLS version",
    "ciphers": "OpenSSL cipher list (TLS 1.2 and below)",
    "alpn": "ALPN protocols, comma-separated (h2,http/1.1)",
    "pin_sha256": "accepted peer certificate SHA-256 fingerprints, comma-separated",
    "session": "a TLS session to resume (an ssl.SSLSession; keyword only)",
    "session_cache": "resume sessions from the client session cache (default on)",
    "keylog_file": "append TLS secrets here, SSLKEYLOGFILE format (default: $SSLKEYLOGFILE)",
    "trace": "peers (addresses, networks, server names) whose plaintext is logged at DEBUG_ALL",
    "record_size": "TLS record sizing: dynamic, off (default) or a size in bytes",
    "handshake_timeout": "seconds for the whole TLS setup, hooks included (default 30)",
    "hello_timeout": "server: seconds for a client's whole ClientHello to arrive (default 10)",
    "client_auth": "server: ask for client certificates: none (default), optional, required",
    "allow_renegotiation": "server: allow client-initiated renegotiation on TLS 1.2 (default off)",
    "ragged_eof": "treat a close without close_notify as an end of stream (default off)",
    "max_hello_size": "server: largest ClientHello accepted, bytes (default 32768)",
    "max_handshakes": "server: handshakes run at once per listener (default 256)",
    "context": "an ssl.SSLContext to use as it is (keyword only)",
}


# How the docs' option tables name each option's type (by the parser's name, as the core's).
_KIND_NAMES: Final = {
    "verify": "parse_bool",
    "session_cache": "parse_bool",
    "allow_renegotiation": "parse_bool",
    "ragged_eof": "parse_bool",
    "handshake_timeout": "_parse_seconds",
    "hello_timeout": "_parse_seconds",
    "max_hello_size": "_parse_count",
    "max_handshakes": "_parse_count",
}


def _parser(name: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        if name in ("certificate", "session", "context", "tls"):
            raise ValueError(f"{name} can only be given as a keyword argument")
        return normalize_option(name, text)

    parse.__name__ = _KIND_NAMES.get(
        name, "str" if name not in ("certificate", "session", "context", "tls") else "object"
    )
    return parse


def _tls_option_objects() -> tuple[Option, ...]:
    opts = [
        Option(name, _parser(name), None, doc, secret=name == "password")
        for name, doc in _TLS_OPTIONS.items()
    ]
    opts.append(
        Option("tls", _parser("context"), None, "a whole TLSConfig (or ssl.SSLContext); keyword only")
    )
    return tuple(opts)


#: Every TLS option, and ``tls`` (a whole TLSConfig; keyword only).
TLS_OPTIONS: Final = _tls_option_objects()
#: The names of the TLSConfig fields among them (``tls`` is not one).
TLS_OPTION_NAMES: Final = frozenset(_TLS_OPTIONS)


def layered_options(own: tuple[Option, ...], below: Transport | None) -> tuple[Option, ...]:
    """A TLS layer's options (``own``) with those of the transport beneath it that ``own``
    does not name (``tls://`` takes ``tcp://``'s ``nodelay``; ``dtls://`` ``udp://``'s)."""
    if below is None:
        return own
    names = {o.name for o in own}
    return own + tuple(o for o in below.options if o.name not in names)


class TLSConfigCache:
    """The :class:`~trio_conduit.tls.TLSConfig` a layer's resolved options make: ``tls=``
    amended by the other TLS options, made once per setting (bounded)."""

    __slots__ = ("_configs",)

    def __init__(self) -> None:
        # (id of tls=, the other TLS options) -> (tls=, config): the entry holds what its id names
        self._configs: dict[Any, tuple[Any, TLSConfig]] = {}

    def config(self, options: Mapping[str, object]) -> TLSConfig:
        base: Any = options.get("tls")
        changes = {k: v for k, v in options.items() if k in TLS_OPTION_NAMES and v is not None}
        try:
            key: Any = (id(base) if base is not None else None, tuple(sorted(changes.items())))
            hash(key)
        except TypeError:  # an unhashable value (a list of ALPN protocols): no caching
            key = None
        hit = self._configs.get(key) if key is not None else None
        if hit is not None and hit[0] is base:
            return hit[1]
        config = TLSConfig() if base is None or base is True else TLSConfig.coerce(base)
        config = config.replace(**changes) if changes else config
        if key is not None:
            if len(self._configs) >= 256:
                self._configs.clear()
            self._configs[key] = (base, config)
        return config
