"""Helpers for testing code built on trio-conduit (our own tests use them too).

* :func:`check_datagram_channel`: a conformance check for channels of whole messages;
* :func:`impairment_relay`: a seeded UDP relay that loses, duplicates, reorders and delays;
* :class:`TestPKI`: a throwaway CA with server and client certificates as PEM files;
* :mod:`trio_conduit.testing.pytest_plugin`: fixtures (``conduit_pool``,
  ``conduit_pki``, ``conduit_relay``), loaded by pytest through the ``pytest11``
  entry point.

See :doc:`testing`.
"""

from ._certs import CertificateFiles as CertificateFiles
from ._certs import TestPKI as TestPKI
from ._check import ChannelPair as ChannelPair
from ._check import check_datagram_channel as check_datagram_channel
from ._relay import Impairment as Impairment
from ._relay import ImpairmentRelay as ImpairmentRelay
from ._relay import impairment_relay as impairment_relay

__all__ = [
    "CertificateFiles",
    "ChannelPair",
    "Impairment",
    "ImpairmentRelay",
    "TestPKI",
    "check_datagram_channel",
    "impairment_relay",
]
