"""TLS flags for ``conduit connect`` and ``conduit listen`` (``--tls``, ``--cafile``, ``--cert``, ...).

The flags become TLS options in the URL's query, so they mean exactly what
the options mean (see the TLS page): ``--insecure`` is ``verify=0``,
``--sni`` is ``server_hostname``, ``--cert``/``--key`` are
``certfile``/``keyfile``; ``dtls://`` (or ``udp://`` with ``--tls``) takes
the same flags. ``conduit listen`` without ``--cert`` makes a self-signed
certificate for the occasion (as ``ncat --ssl`` does) and prints its SHA-256
fingerprint, for the client's ``--pin``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import urllib.parse
from typing import Final

__all__ = ["add_tls_arguments", "tls_url"]

#: Plain schemes ``--tls`` turns into their TLS scheme.
_TLS_SCHEMES: Final = {
    "tcp": "tls",
    "sctp": "tls+sctp",
    "udp": "dtls",
    "tls": "tls",
    "tls+sctp": "tls+sctp",
    "dtls": "dtls",
}


def add_tls_arguments(parser: argparse.ArgumentParser, *, listening: bool) -> None:
    """Add the TLS flags of ``conduit connect`` (``listening=False``) or ``conduit listen``."""
    group = parser.add_argument_group(
        "TLS", "for tls:// and dtls:// URLs, or tcp:// and udp:// ones with --tls"
    )
    group.add_argument(
        "--tls",
        action="store_true",
        help="TLS over the URL's transport (tcp:// as tls://, udp:// as dtls://)",
    )
    group.add_argument("--alpn", metavar="PROTOS", help="ALPN protocols, comma-separated (h2,http/1.1)")
    if listening:
        group.add_argument(
            "--cert",
            metavar="PEM",
            help="the server's certificate chain; without it a self-signed one is made "
            "and its SHA-256 fingerprint printed",
        )
        group.add_argument("--key", metavar="PEM", help="its private key (default: in --cert)")
        group.add_argument(
            "--cafile", metavar="PEM", help="ask clients for a certificate issued by these CAs (mutual TLS)"
        )
    else:
        group.add_argument("--cafile", metavar="PEM", help="trust these CAs instead of the system's")
        group.add_argument(
            "--insecure",
            action="store_true",
            help="do not verify the server's certificate (a --pin still counts)",
        )
        group.add_argument(
            "--sni", metavar="NAME", help="the server name to send and verify (default: the URL's host)"
        )
        group.add_argument(
            "--pin",
            metavar="SHA256",
            action="append",
            default=[],
            help="accept only a certificate with this SHA-256 fingerprint (repeatable)",
        )
        group.add_argument("--cert", metavar="PEM", help="a client certificate chain (mutual TLS)")
        group.add_argument("--key", metavar="PEM", help="its private key (default: in --cert)")


def _ephemeral(host: str | None) -> tuple[str, str, str]:
    """A self-signed certificate in a private directory removed at exit: (certfile, keyfile, SHA-256)."""
    from ..tls import self_signed_certificate

    names = ["localhost"]
    if host and host not in names:
        names.insert(0, host)
    cert = self_signed_certificate(*names)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    directory = tempfile.mkdtemp(prefix="conduit-listen-", dir=shm)
    atexit.register(shutil.rmtree, directory, True)
    certfile, keyfile = cert.write(directory, "ephemeral")
    return str(certfile), str(keyfile), cert.sha256


def tls_url(args: argparse.Namespace, url: str, *, listening: bool) -> str:
    """``url`` with the TLS flags in ``args`` as query options (and ``--tls`` as a TLS scheme).

    Raises :class:`~trio_conduit.AddressError` when TLS flags come without TLS.
    """
    from .._address import split_url  # here, not at the top: --help and --version import no Trio
    from .._errors import AddressError

    parts = split_url(url)
    options: list[tuple[str, str]] = []
    if getattr(args, "alpn", None):
        options.append(("alpn", args.alpn))
    if getattr(args, "cafile", None):
        options.append(("cafile", args.cafile))
        if listening:
            options.append(("client_auth", "required"))
    if getattr(args, "insecure", False):
        options.append(("verify", "0"))
    if getattr(args, "sni", None):
        options.append(("server_hostname", args.sni))
    options.extend(("pin_sha256", pin) for pin in getattr(args, "pin", None) or [])
    if getattr(args, "cert", None):
        options.append(("certfile", args.cert))
        options.append(("keyfile", args.key or args.cert))
    elif getattr(args, "key", None):
        raise AddressError("--key needs --cert")
    scheme = parts.scheme
    wants_tls = bool(getattr(args, "tls", False)) or scheme in ("tls", "tls+sctp", "dtls")
    if not wants_tls:
        if options:
            raise AddressError(
                f"TLS options need a tls:// or dtls:// URL or --tls (the URL is {parts.scheme}://)"
            )
        return url
    if scheme not in _TLS_SCHEMES:
        raise AddressError(f"--tls works with tcp://, sctp:// and udp:// URLs, not {scheme}://")
    query = dict(parts.query)
    if listening and "certfile" not in query and not getattr(args, "cert", None):
        host = parts.authority.rsplit(":", 1)[0].strip("[]") or None
        certfile, keyfile, digest = _ephemeral(host)
        options += [("certfile", certfile), ("keyfile", keyfile)]
        print(f"conduit: TLS: made a self-signed certificate; SHA-256 fingerprint {digest}", file=sys.stderr)
    pins = [v for k, v in options if k == "pin_sha256"]
    merged = [(k, v) for k, v in parts.query if k not in {k for k, _ in options}]
    merged += [(k, v) for k, v in options if k != "pin_sha256"]
    if pins:
        merged.append(("pin_sha256", ",".join(pins)))
    rest = url.split("://", 1)[1].split("?", 1)[0]
    query_text = urllib.parse.urlencode(merged)
    return f"{_TLS_SCHEMES[scheme]}://{rest}" + (f"?{query_text}" if query_text else "")
