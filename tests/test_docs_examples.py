"""The documentation's examples run, print what the docs say they print, and the README agrees.

Each ``docs/examples/*.py`` runs as a subprocess of the interpreter running the
tests (so against the trio-conduit installed here) and must exit 0 within its
time limit, printing exactly the output below. The same output is shown in the
docs after ``$ python docs/examples/NAME.py``; the README's example is
``quickstart.py``, verbatim.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
DOCS = ROOT / "docs"

#: What each example prints on stdout, exactly.
EXPECTED: dict[str, str] = {
    "access_rules.py": """\
allow 127.0.0.0/29,10.0-3.*.*; deny 127.0.0.2
{'127.0.0.1': True, '127.0.0.2': False, '10.2.9.9': True, '10.4.0.1': False}
127.0.0.1 b'welcome'
127.0.0.2 reset before a byte was read
denied: 1
""",
    "tls_quickstart.py": """\
TLSv1.3 h2 localhost False
peer: CN=localhost
chain: ['CN=localhost', 'CN=example CA']
b'h2 handler: hello'
resumed: True
b'http/1.1 handler: again'
b'220 go ahead\\r\\n'
same id: True tcp TLSv1.3
b'NOW PRIVATE'
""",
    "tls_sni_directory.py": """\
a.example: CN=a.example, echo b'hi'
b.example: CN=b.example, echo b'hi'
c.example: TLSError: TLSV1_UNRECOGNIZED_NAME
loaded: ['a.example', 'b.example']
""",
    "tls_tunnel.py": """\
origin.example: certificate CN=origin.example, reply b'from the origin'
front.example: certificate CN=front.example, reply b'from the front'
""",
    "dtls_quickstart.py": """\
b'HELLO OVER DTLS'
DTLSv1.2 localhost CN=localhost
too large for one datagram
server: peer closed
hook saw: ['localhost']
DTLS 1.2 available: True
""",
    "dtls_layered.py": """\
b'OVER A UNIX DATAGRAM SOCKET' unix+dgram DTLSv1.2
b'THROUGH THE RELAY' via socks5
""",
    "quickstart.py": """\
b'hello, conduit'
tcp 1
""",
    "serve_handlers.py": """\
handler error: ValueError('boom')
after the error: b''
second waits while the first handler runs
first got b'FIRST'
second got b'SECOND'
""",
    "udp_server.py": """\
b'1:a'
b'2:b'
b'1:x'
b'3:c'
alice's peer is the server: True
b'1:hi' from the server: True
""",
    "unix_credentials.py": """\
the server saw me: True
and I see the server: True
socket file left behind: False
abstract: True
""",
    "pool_plugin.py": """\
b'hello'
pool plugin saw:
    socket created for accepted
    socket created for connect
    socket created for listen
    tcp connection lost
    tcp connection lost
    tcp connection made
    tcp connection made
listener plugin saw:
    socket created for accepted
    socket created for listen
    tcp connection lost
    tcp connection made
""",
    "tracing.py": """\
INFO      TCP connection requested to 127.0.0.1:PORT (conn #1) event #1
DEBUG     TCP socket made (fd N, connect) for tcp://127.0.0.1:PORT
INFO      connect succeeded for event #1 (conn #1) [127.0.0.1:PORT]
DEBUG_ALL write 4 bytes to conn #1 event #2
DEBUG_ALL read 4 bytes from conn #1 event #3
INFO      closed conn #1 event #4
""",
    "proxies.py": """\
b'hello from the target\\n'
localhost 2 hops
password shown: False
socks5h://alice:***
ProxyAuthenticationError at hop 2 - SOCKS5 user name or password refused (RFC 1929 status 0x01)
ProxyTargetRefused at hop 2 - HTTP/1.1 502 Connection Refused \
(Proxy-Status: conduit; error=connection_refused)
ProxyTimeout at hop 3 - waiting for its reply to CONNECT
""",
    "proxy_udp.py": """\
b'THROUGH'
b'THE RELAY'
udp True
relay is the server: False
""",
    "proxy_plugin.py": """\
b'you are 192.0.2.10; you said hi'
""",
    "testing_kit.py": """\
udp:// passes check_datagram_channel
b'hello over TLS' True
b'twice?' b'twice?'
relay: 2 received, 2 duplicated
""",
    "cli_exec_chat.py": """\
hello 127.0.0.1 (TCP), you said: one
hello 127.0.0.1 (TCP), you said: two
alice sees: <announce> 127.0.0.1:PORT is connected as <user1>.
alice sees: <announce> already connected: nobody.
alice sees: <announce> 127.0.0.1:PORT is connected as <user2>.
alice sees: <user2> hi alice \\033[2J
alice sees: <announce> <user2> is disconnected.
exit status 0
exit status 0
""",
    "scan_ports.py": """\
listening: open (syn-ack)
bound only: closed (conn-refused)
[22, 80, 1000, 1001, 1002]
""",
    "errors.py": """\
AddressError: 'tcp://127.0.0.1': missing port (expected host:port)
AddressError: 'tcp://127.0.0.1:0': port 0 can only be used to listen (it asks the kernel to choose)
AddressError: 'tcp://[::1:80': '[' without a closing ']' around the IPv6 address
AddressError: 'udp://host:99999': port 99999 is out of range (1-65535)
ConnectionRefused True 111
udp: ConnectionRefused
ConnectTimeout after 0.3 s
PermissionDenied cannot connect to udp://127.255.255.255:9: Permission denied \
(a broadcast address needs broadcast=True) [EACCES]
""",
}

#: Each example must finish by itself well within this (they take < 2 s; CI machines are slow).
TIME_LIMIT = 20.0


def run_example(name: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return proc, time.monotonic() - start


def test_every_example_is_checked() -> None:
    on_disk = {p.name for p in EXAMPLES.glob("*.py")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_output(name: str) -> None:
    proc, elapsed = run_example(name)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr}"
    assert proc.stdout == EXPECTED[name], proc.stderr
    assert elapsed < TIME_LIMIT


def _shown_outputs() -> dict[str, list[str]]:
    """Every ``$ python docs/examples/NAME.py`` transcript in the docs: NAME -> outputs shown."""
    shown: dict[str, list[str]] = {}
    for page in DOCS.glob("*.rst"):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"(\s+)\$ python docs/examples/(\S+\.py)", line)
            if not match:
                continue
            indent = match.group(1)
            out = []
            for following in lines[i + 1 :]:
                if following.strip() and not following.startswith(indent):
                    break
                out.append(following[len(indent) :])
            shown.setdefault(match.group(2), []).append("\n".join(out).strip("\n") + "\n")
    return shown


def test_docs_show_the_real_output() -> None:
    shown = _shown_outputs()
    assert set(shown) == set(EXPECTED), "every example's output appears in the docs"
    for name, outputs in shown.items():
        for text in outputs:
            assert text == EXPECTED[name], f"docs show a stale output for {name}"


def test_docs_include_every_example() -> None:
    included = set()
    for page in DOCS.glob("*.rst"):
        included.update(re.findall(r"literalinclude:: examples/(\S+\.py)", page.read_text()))
    assert set(EXPECTED) <= included


def test_readme_example_is_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "README.md has a python example"
    assert blocks[0] == (EXAMPLES / "quickstart.py").read_text()


def test_api_page_constants() -> None:
    from trio_conduit import DEBUG_ALL
    from trio_conduit.transport import DEFAULT_DATAGRAM_SIZE, DEFAULT_RECEIVE_SIZE

    api = (DOCS / "api.rst").read_text()
    for name, value in [
        ("DEBUG_ALL", DEBUG_ALL),
        ("DEFAULT_RECEIVE_SIZE", DEFAULT_RECEIVE_SIZE),
        ("DEFAULT_DATAGRAM_SIZE", DEFAULT_DATAGRAM_SIZE),
    ]:
        assert re.search(rf"\.\. data:: {name}\n   :value: {value}\n", api), name
