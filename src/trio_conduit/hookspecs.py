"""The hook catalogue: every hook a plugin can implement, grouped by lifecycle.

Implement a hook with ``@trio_conduit.hookimpl`` on a function or method named
after the spec. Implementations may take any subset of the spec's parameters.

Two calling conventions:

* **Registration hooks** (``conduit_transports``) are called synchronously,
  once, when a pool or listener builds its registry. They return objects.
* **Lifecycle hooks** (everything else) are *awaited* by trio-conduit's own
  dispatcher: an implementation may be ``async def`` and may take its time.
  Implementations run in pluggy's call order (``tryfirst`` ones first,
  ``trylast`` ones last, otherwise the later registered first); for a
  ``firstresult`` hook the first implementation whose *awaited* value is not
  ``None`` wins and the rest are not called.
  Wrappers (``wrapper=True``/``hookwrapper=True``) are not supported on
  lifecycle hooks and are refused when the plugin is registered.

Hooks can be registered globally (the ``trio_conduit`` entry-point group, or
:func:`trio_conduit.register_plugin`), per pool (``open_pool(plugins=[...])``)
or per listener (``pool.serve(..., plugins=[...])``); a narrower scope sees all
the hooks of the wider ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import trio

    from ._address import Address
    from ._connection import Connection
    from ._transport import SocketRole, Transport

hookspec = pluggy.HookspecMarker("trio_conduit")

# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------


@hookspec
def conduit_transports() -> Sequence[Transport]:  # type: ignore[empty-body]
    """Return the transports this plugin provides.

    Each :class:`~trio_conduit.Transport` names its URL scheme(s), its kind
    (stream or datagram), its capabilities and options, an availability probe,
    and async ``connect``/``listen``. Two plugins registering the same scheme
    is a :class:`~trio_conduit.PluginError`. Synchronous.
    """


# --------------------------------------------------------------------------
# Sockets
# --------------------------------------------------------------------------


@hookspec
async def conduit_socket_created(
    sock: trio.socket.SocketType, transport: Transport, address: Address, role: SocketRole
) -> None:
    """A kernel socket was just made by the shared socket path.

    Called after the core has applied its own options (``SO_REUSEADDR``,
    ``SO_BINDTODEVICE``, ``IP_OPTIONS``, ``SO_BROADCAST``, the local bind) and
    before ``connect``/``listen``. Set socket options here. Raising aborts the
    attempt: the socket is closed and the error propagates to the caller (for
    an accepted socket: it is logged and the connection is dropped; the
    listener goes on).
    ``role`` says whether the socket will connect, listen, or is an accepted one.
    """


# --------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------


@hookspec
async def conduit_connection_made(conn: Connection) -> None:
    """A connection was established (connected, or accepted by a listener).

    ``conn.id`` and ``conn.info`` are set. Raising closes the connection and
    the error propagates to whoever made it (for an accepted connection: it is
    logged and the connection is dropped; the listener goes on).
    """


@hookspec
async def conduit_connection_lost(conn: Connection, exc: BaseException | None) -> None:
    """A connection was closed. ``exc`` is what ended it, if anything did.

    Called once per connection, after its resources are released, inside a
    shielded cancel scope bounded by a short deadline: do not block here.
    Errors raised here are logged and swallowed.
    """


@hookspec
async def conduit_handler_error(conn: Connection | None, exc: BaseException) -> None:
    """A connection handler (``pool.spawn``/``pool.serve``) raised ``exc``.

    The error has already been logged; the connection will be closed and the
    listener keeps serving. For ``pool.spawn`` whose connect failed, ``conn``
    is ``None`` and ``exc`` is the connect error. Errors raised here are logged
    and swallowed.
    """
