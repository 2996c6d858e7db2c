"""docs/udt.rst: its congestion-control example runs and prints what the page says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent.parent / "docs" / "udt.rst"


def test_congestion_control_example_runs_as_documented() -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "example_congestion.py")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Capped 200 1000000\n"
    page = PAGE.read_text()
    assert "(it prints ``Capped 200 1000000``)" in page
    assert ".. literalinclude:: ../tests/udt/example_congestion.py" in page
