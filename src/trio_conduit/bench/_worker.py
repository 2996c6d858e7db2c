"""One side of a benchmark, in a process of its own: ``python -m trio_conduit.bench._worker NAME ARGS...``.

NAME is the module whose ``worker(ARGS)`` runs: ``tcp``, ``tls``, ``dtls``, ``socks5`` or ``serving``
(their docstrings give the arguments). A server side prints its port and
serves until its stdin closes; a client side prints one JSON result.
"""

from __future__ import annotations

import sys

from . import dtls, serving, socks5, tcp, tls

_WORKERS = {
    "tcp": tcp.worker,
    "tls": tls.worker,
    "socks5": socks5.worker,
    "dtls": dtls.worker,
    "serving": serving.worker,
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in _WORKERS:
        raise SystemExit(f"usage: python -m trio_conduit.bench._worker {{{','.join(_WORKERS)}}} ARGS...")
    _WORKERS[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
