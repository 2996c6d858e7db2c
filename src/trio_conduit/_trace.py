"""nsock-style trace lines through stdlib ``logging``.

Levels, as nsock's: ``ERROR``, ``INFO`` (connects, accepts, closes),
``DEBUG`` (socket setup, hook calls, handler lifecycle) and ``DEBUG_ALL``
(every read and write, with sizes). Loggers live under ``trio_conduit``.
Every line names the connection (``conn #N``) and, for I/O events, the event
id (``event #M``); ids come from the pool that owns the connection.
"""

from __future__ import annotations

import itertools
import logging
from typing import Final

__all__ = ["DEBUG_ALL", "Tracer", "configure_cli_logging", "logger"]

DEBUG_ALL: Final = 5
logging.addLevelName(DEBUG_ALL, "DEBUG_ALL")
logger: Final = logging.getLogger("trio_conduit")


class Tracer:
    """Id allocation for one pool: connection ids (nsock's IOD #) and event ids."""

    __slots__ = ("_conn_ids", "_event_ids", "log")

    def __init__(self, log: logging.Logger = logger) -> None:
        self._conn_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self.log = log

    def next_conn_id(self) -> int:
        return next(self._conn_ids)

    def next_event_id(self) -> int:
        return next(self._event_ids)

    def info(self, msg: str, *args: object) -> None:
        self.log.info(msg, *args)

    def debug(self, msg: str, *args: object) -> None:
        self.log.debug(msg, *args)

    def all_enabled(self) -> bool:
        return self.log.isEnabledFor(DEBUG_ALL)


def verbosity_level(verbose: int) -> int:
    """``-v`` → INFO, ``-vv`` → DEBUG, ``-vvv`` → DEBUG_ALL; none → WARNING."""
    return {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}.get(verbose, DEBUG_ALL)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname
        base = f"CONDUIT {level} [{record.relativeCreated / 1000:.4f}s] {record.getMessage()}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def configure_cli_logging(verbose: int) -> None:
    """Send trace lines to stderr at the level ``-v`` flags ask for."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(verbosity_level(verbose))
    logger.propagate = False
