"""trio-conduit's pytest plugin (the ``pytest11`` entry point ``trio_conduit``): fixtures.

* ``conduit_pool``: an open :class:`~trio_conduit.Pool` for a Trio test
  (pytest-trio's ``trio_mode``, or ``@pytest.mark.trio``), closed after it;
* ``conduit_pki``: a :class:`~trio_conduit.testing.TestPKI` in a private
  temporary directory, one per test session;
* ``conduit_relay``: a function that starts an
  :func:`~trio_conduit.testing.impairment_relay` in front of a UDP port and
  stops it when the test ends (``relay = await conduit_relay(port, loss=0.05)``).

Every fixture name starts with ``conduit_``. Disable the plugin with
``-p no:trio_conduit``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from .._pool import Pool, open_pool
from ._certs import TestPKI
from ._relay import ImpairmentRelay, impairment_relay

__all__ = ["conduit_pki", "conduit_pool", "conduit_relay"]

StartRelay = Callable[..., Awaitable[ImpairmentRelay]]


@pytest.fixture
async def conduit_pool() -> AsyncIterator[Pool]:
    """An open pool; leaving the test closes it (and everything it owns)."""
    async with open_pool() as pool:
        yield pool


@pytest.fixture(scope="session")
def conduit_pki() -> Iterator[TestPKI]:
    """A CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate, as files."""
    directory = Path(tempfile.mkdtemp(prefix="conduit-pki-"))
    try:
        yield TestPKI(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def conduit_relay() -> AsyncIterator[StartRelay]:
    """``await conduit_relay(target_port, seed=1, loss=..., dup=..., reorder=..., delay=...)``."""
    async with AsyncExitStack() as stack:

        async def start(target: Any, **kwargs: Any) -> ImpairmentRelay:
            return await stack.enter_async_context(impairment_relay(target, **kwargs))

        yield start
