"""TLS over any stream connection, with hooks that may await (after ATS's ``SSLNetVConnection``).

Use ``tls://host:port``, ``tls=`` on any stream ``connect``/``serve``/``listen``,
or ``conn.start_tls()``; DTLS: ``dtls://host:port``, or ``dtls=`` on any datagram
transport. Options are :class:`TLSConfig`; the facts after a
handshake are :class:`TLSInfo` (``conn.info.tls``); hooks receive a
:class:`TLSHandshake`. See the TLS pages of the documentation.

Like :mod:`trio_conduit`, the names are imported when first used
(:mod:`trio_conduit._lazy`): a ``tls://`` connection loads the TLS modules
but not DTLS's, which need pyOpenSSL (and with it ``cryptography``).
"""

import typing

from .._lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from ._api import start_tls as start_tls
    from ._api import tls_client as tls_client
    from ._api import tls_listener as tls_listener
    from ._certs import Certificate as Certificate
    from ._certs import EphemeralCA as EphemeralCA
    from ._certs import fingerprint as fingerprint
    from ._certs import self_signed_certificate as self_signed_certificate
    from ._config import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
    from ._config import DYNAMIC as DYNAMIC
    from ._config import TLSConfig as TLSConfig
    from ._config import build_context as build_context
    from ._config import clear_context_cache as clear_context_cache
    from ._dtls import DTLSConnection as DTLSConnection
    from ._dtls import DTLSListener as DTLSListener
    from ._dtls import dtls_client as dtls_client
    from ._dtls import dtls_listener as dtls_listener
    from ._dtls_config import DTLSVersions as DTLSVersions
    from ._dtls_config import dtls_versions as dtls_versions
    from ._dtls_hello import CookieJar as CookieJar
    from ._errors import ClientHelloError as ClientHelloError
    from ._errors import TLSError as TLSError
    from ._errors import TLSHandshakeTimeout as TLSHandshakeTimeout
    from ._errors import TLSRejected as TLSRejected
    from ._errors import TLSVerifyError as TLSVerifyError
    from ._handshake import Stash as Stash
    from ._handshake import StashKey as StashKey
    from ._handshake import TLSHandshake as TLSHandshake
    from ._hello import DEFAULT_MAX_HELLO_SIZE as DEFAULT_MAX_HELLO_SIZE
    from ._hello import ClientHello as ClientHello
    from ._hello import ClientHelloReader as ClientHelloReader
    from ._hello import Extension as Extension
    from ._hello import ExtensionType as ExtensionType
    from ._hello import is_grease as is_grease
    from ._hello import parse_client_hello_untrusted as parse_client_hello_untrusted
    from ._listener import TLSListener as TLSListener
    from ._options import TLS_OPTION_NAMES as TLS_OPTION_NAMES
    from ._options import TLS_OPTIONS as TLS_OPTIONS
    from ._options import TLSConfigCache as TLSConfigCache
    from ._options import layered_options as layered_options
    from ._records import BURST_THRESHOLD as BURST_THRESHOLD
    from ._records import IDLE_RESET as IDLE_RESET
    from ._records import SMALL_RECORD as SMALL_RECORD
    from ._records import RecordHeader as RecordHeader
    from ._records import RecordSizer as RecordSizer
    from ._records import iter_records as iter_records
    from ._sessions import SessionCache as SessionCache
    from ._sessions import SessionKey as SessionKey
    from ._sessions import session_cache as session_cache
    from ._stream import TLSConnection as TLSConnection
    from ._stream import TLSInfo as TLSInfo
    from ._tunnel import splice as splice

#: Relative module → the public names it gives this package.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "._api": (
        "start_tls",
        "tls_client",
        "tls_listener",
    ),
    "._certs": (
        "Certificate",
        "EphemeralCA",
        "fingerprint",
        "self_signed_certificate",
    ),
    "._config": (
        "DEFAULT_HANDSHAKE_TIMEOUT",
        "DYNAMIC",
        "TLSConfig",
        "build_context",
        "clear_context_cache",
    ),
    "._dtls": (
        "DTLSConnection",
        "DTLSListener",
        "dtls_client",
        "dtls_listener",
    ),
    "._dtls_config": (
        "DTLSVersions",
        "dtls_versions",
    ),
    "._dtls_hello": ("CookieJar",),
    "._errors": (
        "ClientHelloError",
        "TLSError",
        "TLSHandshakeTimeout",
        "TLSRejected",
        "TLSVerifyError",
    ),
    "._handshake": (
        "Stash",
        "StashKey",
        "TLSHandshake",
    ),
    "._hello": (
        "DEFAULT_MAX_HELLO_SIZE",
        "ClientHello",
        "ClientHelloReader",
        "Extension",
        "ExtensionType",
        "is_grease",
        "parse_client_hello_untrusted",
    ),
    "._listener": ("TLSListener",),
    "._options": (
        "TLS_OPTION_NAMES",
        "TLS_OPTIONS",
        "TLSConfigCache",
        "layered_options",
    ),
    "._records": (
        "BURST_THRESHOLD",
        "IDLE_RESET",
        "SMALL_RECORD",
        "RecordHeader",
        "RecordSizer",
        "iter_records",
    ),
    "._sessions": (
        "SessionCache",
        "SessionKey",
        "session_cache",
    ),
    "._stream": (
        "TLSConnection",
        "TLSInfo",
    ),
    "._tunnel": ("splice",),
}
if not typing.TYPE_CHECKING:  # type checkers see the imports above, not a catch-all __getattr__
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
