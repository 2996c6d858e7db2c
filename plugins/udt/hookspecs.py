"""The ``udt://`` plugin's own hook: congestion-control algorithms.

Added to every plugin manager by the plugin's ``conduit_addhooks``, as pytest
plugins add theirs; the core's catalogue (:mod:`trio_conduit.hookspecs`) holds
only the core's hooks. Implement it with ``@trio_conduit.hookimpl`` in any
plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pluggy

hookspec = pluggy.HookspecMarker("trio_conduit")


@hookspec
def conduit_congestion_controls() -> Mapping[str, Callable[..., object]]:  # type: ignore[empty-body]
    """Return congestion-control algorithms this plugin provides, by name.

    ``udt://`` looks a name up here when a connection asks for one
    (``?congestion=NAME``, or ``NAME:key=value,...`` to pass keyword
    arguments). Each value is a factory called once per connection, with those
    keyword arguments as strings, returning a
    :class:`trio_conduit_plugins.udt.CongestionControl`. A name provided by two
    plugins is a :class:`~trio_conduit.PluginError` when it is looked up.
    Synchronous.
    """
