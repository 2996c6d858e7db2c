"""The one line ``conduit`` prints for an error (shared by every command, ``check`` included).

Apart from ``_check`` so that a command that fails (a refused connect, in a
health check) does not import ``conduit check``'s machinery to say so.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterator
from typing import Final

import trio

from .._errors import ConduitError

__all__ = ["BROKEN", "error_line", "leaves"]

#: What a connection raises when it breaks or its peer goes: a command reports it with
#: :func:`error_line` (exit status 1), a session among many logs it and goes on.
BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ConduitError)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def error_line(exc: BaseException) -> str:
    """One line that says what went wrong, for any error a connection can raise."""
    exc = next(leaves(exc), exc)
    if isinstance(exc, ConduitError):
        return str(exc)
    if isinstance(exc, OSError):
        name = _errno.errorcode.get(exc.errno or 0)
        text = exc.strerror or str(exc)
        return f"{text} [{name}]" if name else text
    if isinstance(exc, trio.BrokenResourceError):
        return str(exc) or "connection broken"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
