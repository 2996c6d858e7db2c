"""The reference-library peer (``udtpeer.cpp``) and how to build it.

:func:`build_udtpeer` compiles ``udtpeer.cpp`` against Debian's ``libudt-dev``
with ``g++`` into a cache directory keyed by the source's hash, and returns
the binary's path; :func:`udtpeer_skip_reason` says why it cannot (to skip
with). The interop tests and the UDT benchmark both use it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("udtpeer.cpp")
HEADER = Path("/usr/include/udt/udt.h")
SETUP_HINT = "the nox 'tests' session installs them (apt-get install g++ libudt-dev)"


def udtpeer_skip_reason() -> str | None:
    """Why the reference peer cannot be built here, or ``None``."""
    if shutil.which("g++") is None:
        return f"g++ is not installed; {SETUP_HINT}"
    if not HEADER.exists():
        return f"libudt-dev is not installed (no {HEADER}); {SETUP_HINT}"
    return None


def build_udtpeer(cache: Path | None = None) -> Path:
    """Compile the peer once per source version; the binary's path."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = cache or Path(tempfile.gettempdir()) / "trio-conduit-udtpeer"
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"udtpeer-{digest}"
    if binary.exists():
        return binary
    tmp = cache / f".udtpeer-{digest}-{os.getpid()}"
    proc = subprocess.run(
        ["g++", "-O2", "-std=c++17", "-o", str(tmp), str(SOURCE), "-ludt", "-lpthread"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building udtpeer failed:\n{proc.stderr}")
    tmp.replace(binary)
    return binary
