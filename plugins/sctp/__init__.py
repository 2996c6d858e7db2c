"""``sctp://host:port`` — SCTP associations: a byte stream, or messages with stream ids.

Stream mode (the default): one-to-one style sockets (``SOCK_STREAM``,
``IPPROTO_SCTP``) through the core's shared socket path, IPv4 and IPv6. The
connection is a ``trio.abc.Stream`` and *not* half-closeable: SCTP has no
half-close (after ``shutdown(SHUT_WR)`` the peer cannot send either).

Message mode (``?mode=message``): one-to-many style sockets
(``SOCK_SEQPACKET``). Each association is an :class:`SCTPMessageChannel` of
whole messages that carry a stream number and a payload protocol id
(``SCTP_SNDINFO`` / ``SCTP_RCVINFO`` ancillary data, or the older
``SCTP_SNDRCV``). The client waits for its association to come up (an
``SCTP_ASSOC_CHANGE`` notification: refused and timed-out associations are
typed errors); the listener peels each new association off into a socket of
its own. The ``struct`` layouts are those of ``include/uapi/linux/sctp.h``
(Python's ``socket`` module has none of them).

The association code is in ``_association``, imported when first needed:
registering the plugin (at every ``conduit`` start, on kernels without SCTP
too) costs only this module.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from trio_conduit import Address, AddressError, Connection, Kind
from trio_conduit.transport import (
    DEFAULT_DATAGRAM_SIZE,
    Availability,
    Capabilities,
    Context,
    Listener,
    Option,
    SockAddr,
    Transport,
    URLParts,
    hookimpl,
    parse_host_port,
    probe_socket,
)

if TYPE_CHECKING:
    from ._association import SCTPMessage, SCTPMessageChannel, SCTPStream

__all__ = ["SCTPMessage", "SCTPMessageChannel", "SCTPStream", "SCTPTransport"]


def __getattr__(name: str) -> Any:
    """The association classes, imported on first use."""
    if name in ("SCTPMessage", "SCTPMessageChannel", "SCTPStream"):
        from . import _association

        value = getattr(_association, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parse_mode(text: str) -> str:
    if text not in ("stream", "message"):
        raise ValueError(f"expected 'stream' or 'message', got {text!r}")
    return text


def _message_mode(ctx: Context) -> bool:
    mode = ctx.options["mode"]
    if mode not in ("stream", "message"):
        raise AddressError(f"{ctx.address}: mode must be 'stream' or 'message', not {mode!r}")
    return mode == "message"


def _parse_streams(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"expected a stream count from 1 to 65535, got {text!r}")
    return value


class SCTPTransport(Transport):
    schemes = ("sctp",)
    name = "SCTP"
    kind = Kind.STREAM
    # Streams by default: ?mode=message (the option below) keeps message boundaries.
    capabilities = Capabilities(half_close=False, device=True, ip_options=True)
    options = (
        Option(
            "mode", _parse_mode, "stream", "stream: a byte stream; message: whole messages with stream ids"
        ),
        Option.boolean("nodelay", True, "SCTP_NODELAY: send small messages at once"),
        Option("streams", _parse_streams, None, "streams to ask for each way (SCTP_INITMSG), 1-65535"),
        Option.count("max_size", DEFAULT_DATAGRAM_SIZE, "message mode: largest message received"),
    )
    description = "SCTP: one-to-one byte streams (no half-close), or ?mode=message with stream ids"

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    async def connect(self, ctx: Context) -> Connection:
        from ._association import SCTPMessageChannel, SCTPStream, association_up, prepare

        prepare_socket = partial(prepare, ctx.options)
        if not _message_mode(ctx):
            sock = await ctx.connect_inet(socket.SOCK_STREAM, socket.IPPROTO_SCTP, prepare=prepare_socket)
            return SCTPStream(sock, ctx.conn_id, ctx, address=ctx.address)
        # One-to-many: connect() starts the association and returns at once; its
        # SCTP_ASSOC_CHANGE notification says whether it came up.
        sock = await ctx.connect_inet(socket.SOCK_SEQPACKET, socket.IPPROTO_SCTP, prepare=prepare_socket)
        try:
            change, remote = await association_up(sock, str(ctx.address))
        except BaseException:
            sock.close()
            raise
        return SCTPMessageChannel(sock, ctx.conn_id, ctx, change, address=ctx.address, remote=remote)

    async def listen(self, ctx: Context) -> Listener:
        from ._association import SCTPMessageListener, SCTPStream, prepare

        message = _message_mode(ctx)
        socktype = socket.SOCK_SEQPACKET if message else socket.SOCK_STREAM
        sock = await ctx.listen_inet(socktype, socket.IPPROTO_SCTP, prepare=partial(prepare, ctx.options))
        host, port = sock.getsockname()[:2]
        bound = Address(ctx.address.scheme, host=host, port=port, query=ctx.address.query)
        if message:
            return SCTPMessageListener(sock, ctx, bound)

        def wrap(s: trio.socket.SocketType, remote: SockAddr, conn_id: int) -> Connection:
            return SCTPStream(s, conn_id, ctx, address=bound, remote=remote)

        return ctx.stream_listener(sock, bound, wrap)

    def availability(self) -> Availability:
        probe = probe_socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        if probe.available:
            return probe
        if probe.errno == errno.EPROTONOSUPPORT:
            reason = "EPROTONOSUPPORT: this kernel has no SCTP (the sctp module is not loaded or not built)"
            return Availability(False, reason, probe.errno)
        return probe

    def loopback_url(self, tmpdir: str) -> str:
        return "sctp://127.0.0.1:0"


@hookimpl
def conduit_transports() -> Sequence[Transport]:
    return [SCTPTransport()]
