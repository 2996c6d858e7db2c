"""``conduit bench``: every benchmark of trio-conduit, each against its reference in the same run.

Each benchmark is a :class:`trio_conduit.Benchmark`; :data:`BENCHMARKS`
lists trio-conduit's own, in the order they run; plugins add theirs through
the ``conduit_benchmarks`` hook. The command line (its options, the printing)
is :mod:`trio_conduit.cli._bench`.

* :mod:`.tcp`: ``bulk`` and ``rate``, TCP through a pool against raw trio;
* :mod:`.cli_pipe`: ``cli``, the ``conduit`` command against ``ncat``;
* :mod:`.socks5`: ``socks5``, connects through a SOCKS5 hop against python-socks;
* :mod:`.tls`: ``tls``, TLS against raw ``trio.SSLStream`` (and the TLS pipe);
* :mod:`.dtls`: ``dtls``, DTLS against raw ``trio.DTLSEndpoint``;
* :mod:`.serving`: ``workers`` (``conduit listen --workers 2`` against one) and
  ``memory`` (RSS per idle connection, ``pool.serve`` against ``trio.serve_tcp``);
* :mod:`.scan`: ``scan``, a full TCP port scan against ``nmap -sT`` (root), and the connect figures;
* :mod:`.startup`: ``startup``, ``conduit --version`` and a one-byte ``conduit connect`` (tcp, tls)
  against ``python -c "import trio"`` and ncat;
* :mod:`._runner`: what they share (pinned processes, alternating runs, medians);
* :mod:`._worker`: the entry point of their worker processes.

Both sides of a figure run in processes of their own pinned to two CPUs,
implementations alternating run by run, so machine noise hits both alike.
"""

from __future__ import annotations

import trio_conduit

from .cli_pipe import CLI
from .dtls import DTLS
from .scan import SCAN
from .serving import MEMORY, WORKERS
from .socks5 import SOCKS5
from .startup import STARTUP
from .tcp import BULK, RATE
from .tls import TLS

__all__ = ["BENCHMARKS"]

#: trio-conduit's own benchmarks, in the order they run.
BENCHMARKS: tuple[trio_conduit.Benchmark, ...] = (
    BULK,
    RATE,
    CLI,
    SOCKS5,
    TLS,
    DTLS,
    WORKERS,
    MEMORY,
    SCAN,
    STARTUP,
)
