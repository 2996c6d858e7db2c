"""The ``conduit`` command (also ``python -m trio_conduit``).

* ``conduit check [--json]`` — plugins, transports, availability, a loopback round trip each;
* ``conduit connect URL`` — like ``ncat HOST PORT``: stdin to the connection, the connection to stdout;
* ``conduit listen URL`` — like ``ncat -l``: one connection, or ``--keep-open`` [``--echo``];
* ``conduit plugins [--json]`` — plugins, transports and options, hook implementations;
* ``conduit bench`` — benchmarks (``trio_conduit.bench``; the command line in ``cli._bench``).

See :mod:`trio_conduit.cli._main` for the exit statuses and
:mod:`trio_conduit.cli._relay` for how stdin's end and the peer's end are handled.
"""

from ._main import command as command
from ._main import main as main

__all__ = ["command", "main"]
