"""``tls+sctp://``: TLS over the sctp:// transport (found in the registry when used).

With SCTP (the kernel lane, ``python3 -m nox -s kernel``, or a kernel that has
it): a round trip and trio's stream checks. Without: the transport says it
is unavailable with the sctp transport's reason, and a connect is a
:class:`~trio_conduit.TransportUnavailable`.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit._plugins import global_scope

from ..kernel._lane import needs_sctp, sctp_absent
from .conftest import PKI


def test_availability_is_the_sctp_transports() -> None:
    scope = global_scope()
    tls_sctp, sctp = scope.transport_for("tls+sctp"), scope.transport_for("sctp")
    assert tls_sctp is not None
    assert sctp is not None
    assert tls_sctp.availability() == sctp.availability()
    assert {o.name for o in sctp.options} <= {o.name for o in tls_sctp.options}  # the inner options too


@sctp_absent
async def test_unavailable_without_sctp(pki: PKI) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.TransportUnavailable) as info:
            await pool.connect("tls+sctp://127.0.0.1:9", cafile=pki.cafile)
        assert info.value.errno is not None
        assert "protocol" in str(info.value)


@needs_sctp
async def test_tls_over_sctp(pki: PKI) -> None:
    async def echo(conn: Any) -> None:
        while data := await conn.receive_some():
            await conn.send_all(data)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        url = f"tls+sctp://127.0.0.1:0?certfile={pki.server.certfile}&keyfile={pki.server.keyfile}"
        address = await nursery.start(pool.serve, url, echo)
        conn = await pool.connect(f"tls+sctp://localhost:{address.port}", cafile=pki.cafile)
        assert conn.info.transport == "tls+sctp"
        assert conn.tls.version == "TLSv1.3"
        await conn.send_all(b"over sctp")
        assert await conn.receive_some() == b"over sctp"
        await conn.aclose()

        listener = await pool.listen(url)

        async def maker() -> tuple[Any, Any]:
            accepted: list[Any] = []
            async with trio.open_nursery() as inner:

                async def accept() -> None:
                    accepted.append(await listener.accept())

                inner.start_soon(accept)
                client = await pool.connect(
                    f"tls+sctp://localhost:{listener.address.port}", cafile=pki.cafile
                )
            return client, accepted[0]

        await trio.testing.check_half_closeable_stream(maker, None)
        nursery.cancel_scope.cancel()
