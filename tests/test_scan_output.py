"""``conduit scan --json`` lines: each is exactly ``json.dumps(result.as_dict())``."""

from __future__ import annotations

import ipaddress
import json

from hypothesis import given
from hypothesis import strategies as st

from trio_conduit import PortState, ScanReason, ScanResult
from trio_conduit._scan._report import json_line

results = st.builds(
    ScanResult,
    host=st.one_of(st.ip_addresses().map(str), st.text(max_size=20)),
    port=st.integers(0, 65535),
    protocol=st.sampled_from(["tcp", "udp", "sctp"]),
    state=st.sampled_from(PortState),
    reason=st.sampled_from(ScanReason),
    tries=st.integers(1, 5),
)


@given(results)
def test_json_line_is_json_dumps_of_as_dict(result: ScanResult) -> None:
    line = json_line(result)
    assert line == json.dumps(result.as_dict())
    assert json.loads(line)["port"] == result.port


def test_json_lines_of_one_host_differ_only_by_port() -> None:
    host = str(ipaddress.ip_address("::1"))
    lines = [json_line(ScanResult(host, p, "tcp", PortState.CLOSED, ScanReason.CONN_REFUSED)) for p in (1, 2)]
    assert lines[0] != lines[1]
    assert lines[0].replace('"port": 1,', '"port": 2,') == lines[1]
