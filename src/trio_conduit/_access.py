"""Access control: which peers a listener lets in (ncat's ``--allow`` / ``--deny``).

:class:`AccessRules` is a parsed set of *allow* and *deny* specs; an
:class:`AccessGate` is one listener's rules at work. The gate is consulted by
the listener itself, right after the kernel's ``accept()`` (streams) or on a
new peer's first datagram (datagram listeners), before any byte is read and
before any TLS, SOCKS or handler work: a denied stream peer is closed at once
with an RST (``SO_LINGER`` 0), a denied datagram peer's datagrams are dropped.

The spec grammar (one spec; a ``str`` source holds specs separated by commas,
as ncat's ``--allow 10.0.0.1,10.0.0.2``; a file holds specs separated by
whitespace or commas, ``#`` starting a comment):

* an IPv4 address, each of its four parts a number (0-255), a range
  ``N-M`` (``-M`` from 0, ``N-`` to 255, ``-`` any) or ``*``:
  ``192.168.0.1``, ``192.168.0.1-50``, ``10.0-3.*.*``;
  optionally ``/prefix`` (0-32), which widens every address the parts
  match to its block (``192.168.0.0/24``, ``10.1-2.0.0/16``);
* an IPv6 address, optionally ``/prefix`` (0-128): ``::1``, ``fe80::/10``;
* a host name (letters, digits, ``-``, dots; at least one letter), resolved
  to all its addresses (IPv4 and IPv6) when the rules are put to use
  (:meth:`AccessRules.resolved`: ``pool.listen``/``serve`` calls it once,
  when the listener is made); a name that does not resolve is an
  :class:`~trio_conduit.AddressError` then. Names take no ``/prefix``.

A peer is admitted when (no allow source was given, or an allow spec
matches it) and no deny spec matches it: deny wins over allow, as in ncat.
An allow source that holds no spec (an empty file) admits nobody. IPv4
peers seen as IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``, a dual-stack
listener) are matched against the IPv4 specs.

Parsing raises only :class:`~trio_conduit.AddressError`, naming the spec
and, for a file, its name and line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias, final

import trio

from ._errors import AddressError
from ._util import LINGER_ZERO, peer_text

if TYPE_CHECKING:
    from ._connection import Listener
    from ._trace import Tracer

__all__ = ["AccessGate", "AccessRules", "AccessSource", "check_enforced", "open_gate"]

#: What ``allow=`` / ``deny=`` take: a ``str`` of comma-separated specs, a path (``os.PathLike``)
#: of a file of specs, or an iterable of those.
AccessSource: TypeAlias = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]

_MAX_SPEC: Final = 300
_MAX_FILE: Final = 1 << 20
_OCTET_PART: Final = re.compile(r"\*|(\d{1,3})?(-)?(\d{1,3})?")
_PREFIX: Final = re.compile(r"\d{1,3}")
_NAME: Final = re.compile(
    r"(?=.*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_IPV4_CHARS: Final = frozenset("0123456789*-./")
_ALL_OCTETS: Final = (1 << 256) - 1
#: Datagram peers whose refusal was traced recently (one trace line each, not one per datagram).
_TRACED_PEERS_MAX: Final = 1024


@dataclass(frozen=True)
class _V4Pattern:
    """An IPv4 spec: for each of the four parts, a 256-bit set of the values it matches."""

    parts: tuple[int, int, int, int]
    text: str

    def matches(self, address: ipaddress.IPv4Address) -> bool:
        a, b, c, d = address.packed
        p = self.parts
        return bool((p[0] >> a) & (p[1] >> b) & (p[2] >> c) & (p[3] >> d) & 1)


@dataclass(frozen=True)
class _Network:
    """A CIDR block (an IPv6 spec, or one address a host name resolved to)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    text: str

    def matches(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return address in self.network


@dataclass(frozen=True)
class _Name:
    """A host name, to be resolved (:meth:`AccessRules.resolved`)."""

    name: str
    text: str


_Rule: TypeAlias = "_V4Pattern | _Network | _Name"


def _part_set(part: str, spec: str) -> int:
    """The 256-bit set of values one IPv4 part matches (``7``, ``1-50``, ``-9``, ``200-``, ``-``, ``*``)."""
    m = _OCTET_PART.fullmatch(part)
    if part == "" or m is None:
        raise AddressError(f"{spec!r}: {part!r} is not a number, a range (N-M) or *")
    if part == "*":
        return _ALL_OCTETS
    low_text, dash, high_text = m.groups()
    low = int(low_text) if low_text else 0
    high = int(high_text) if high_text else (255 if dash else low)
    if low > 255 or high > 255:
        raise AddressError(f"{spec!r}: {part!r}: a part of an IPv4 address is at most 255")
    if not dash and high_text:  # "1234": three digits, then one more
        raise AddressError(f"{spec!r}: {part!r} is not a number, a range (N-M) or *")
    if low > high:
        raise AddressError(f"{spec!r}: the range {part!r} runs backwards")
    return ((1 << (high + 1)) - 1) ^ ((1 << low) - 1)


def _widen(values: int, bits: int) -> int:
    """``values`` (a 256-bit set), each value widened to its block when only its top ``bits`` count."""
    if bits >= 8:
        return values
    block = 1 << (8 - bits)
    out = 0
    for start in range(0, 256, block):
        chunk = (values >> start) & ((1 << block) - 1)
        if chunk:
            out |= ((1 << block) - 1) << start
    return out


def _prefix(text: str, limit: int, spec: str) -> int:
    if not _PREFIX.fullmatch(text) or int(text) > limit:
        raise AddressError(f"{spec!r}: the prefix length must be a number from 0 to {limit}, not {text!r}")
    return int(text)


def parse_spec(spec: str) -> _Rule:
    """One spec (see the module docstring) as a rule; :class:`AddressError` if it is not one."""
    if not isinstance(spec, str):
        raise TypeError(f"an access spec must be a str, not {type(spec).__name__}")
    if not spec:
        raise AddressError("an empty access spec")
    if len(spec) > _MAX_SPEC:
        raise AddressError(f"{spec[:40]!r}...: an access spec is at most {_MAX_SPEC} characters")
    body, slash, prefix_text = spec.partition("/")
    if ":" in body:
        if "%" in body or not body.isascii():
            raise AddressError(f"{spec!r}: not an IPv6 address (no zone ids)")
        try:
            address = ipaddress.IPv6Address(body)
        except ValueError:
            raise AddressError(f"{spec!r}: not an IPv6 address") from None
        bits = _prefix(prefix_text, 128, spec) if slash else 128
        return _Network(ipaddress.IPv6Network((address, bits), strict=False), spec)
    if set(body) <= _IPV4_CHARS:
        pieces = body.split(".")
        if len(pieces) != 4:
            raise AddressError(f"{spec!r}: an IPv4 address (or range) has four parts, a.b.c.d")
        bits = _prefix(prefix_text, 32, spec) if slash else 32
        sets = [_part_set(piece, spec) for piece in pieces]
        widened = tuple(_widen(values, min(8, max(0, bits - 8 * i))) for i, values in enumerate(sets))
        return _V4Pattern((widened[0], widened[1], widened[2], widened[3]), spec)
    if slash:
        raise AddressError(f"{spec!r}: a prefix length goes with an address, not a host name")
    if len(body) > 253 or not body.isascii() or _NAME.fullmatch(body) is None:
        raise AddressError(
            f"{spec!r}: not an address (a.b.c.d, with ranges and /prefix), an IPv6 address or a host name"
        )
    return _Name(body.rstrip(".").lower(), spec)


def _specs_of_text(text: str, where: str) -> list[_Rule]:
    rules = []
    for piece in text.split(","):
        piece = piece.strip()
        try:
            rules.append(parse_spec(piece))
        except AddressError as exc:
            raise AddressError(f"{where}: {exc}") from None
    return rules


def _specs_of_file(path: os.PathLike[str], where: str) -> list[_Rule]:
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise AddressError(f"{where} file {name!r}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE:
        raise AddressError(f"{where} file {name!r}: larger than {_MAX_FILE} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise AddressError(
            f"{where} file {name!r}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    rules: list[_Rule] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.partition("#")[0]
        for token in line.replace(",", " ").split():
            try:
                rules.append(parse_spec(token))
            except AddressError as exc:
                raise AddressError(f"{name}:{number}: {exc}") from None
    return rules


def _parse_source(source: object, where: str) -> list[_Rule]:
    if isinstance(source, str):
        return _specs_of_text(source, where)
    if isinstance(source, os.PathLike):
        return _specs_of_file(source, where)
    if isinstance(source, (bytes, bytearray, memoryview)) or not isinstance(source, Iterable):
        raise TypeError(
            f"{where}= takes a str of specs, a path (os.PathLike) of a file of specs, or an iterable "
            f"of those; not {type(source).__name__}"
        )
    rules: list[_Rule] = []
    for item in source:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"{where}= items must be str (specs) or os.PathLike (files), not {type(item).__name__}"
            )
        rules.extend(_parse_source(item, where))
    return rules


def _ip_of(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a peer's sockaddr (or of an address string); ``None`` when it has none."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    if isinstance(host, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        address = host
    elif isinstance(host, str):
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None
    else:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@final
@dataclass(frozen=True)
class AccessRules:
    """A parsed set of allow and deny specs (see :doc:`access`). Make one with :meth:`build`.

    ``allow`` is ``None`` when no allow source was given (everyone not denied is
    admitted), else the allow rules (possibly none: nobody is admitted).
    """

    allow: tuple[_Rule, ...] | None
    deny: tuple[_Rule, ...]

    @classmethod
    def build(cls, allow: object = None, deny: object = None) -> AccessRules:
        """Parse ``allow`` and ``deny`` (each an :data:`AccessSource` or ``None``).

        Raises :class:`~trio_conduit.AddressError` for a spec that is not one (with the
        file and line) or a file that cannot be read, ``TypeError`` for a value of the
        wrong type. Host names are kept as names until :meth:`resolved`.
        """
        allowed = None if allow is None else tuple(_parse_source(allow, "allow"))
        denied = () if deny is None else tuple(_parse_source(deny, "deny"))
        return cls(allowed, denied)

    @property
    def names(self) -> list[str]:
        """The host names still to be resolved."""
        return [r.name for r in (*(self.allow or ()), *self.deny) if isinstance(r, _Name)]

    async def resolved(self) -> AccessRules:
        """These rules with every host name replaced by the addresses it resolves to (all of them,
        IPv4 and IPv6); :class:`~trio_conduit.AddressError` naming a name that does not resolve."""
        if not self.names:
            return self
        found: dict[str, list[_Rule]] = {}
        for name in dict.fromkeys(self.names):
            try:
                infos = await trio.socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise AddressError(f"access rules: cannot resolve host name {name!r}: {exc}") from None
            networks = dict.fromkeys(
                ipaddress.ip_network(str(info[4][0]).partition("%")[0]) for info in infos
            )
            found[name] = [_Network(network, name) for network in networks]

        def expand(rules: tuple[_Rule, ...]) -> tuple[_Rule, ...]:
            return tuple(x for r in rules for x in (found[r.name] if isinstance(r, _Name) else [r]))

        return AccessRules(None if self.allow is None else expand(self.allow), expand(self.deny))

    def admits(self, peer: object) -> bool:
        """Whether a peer (its sockaddr, or an address) is let in. A peer with no IP address is not."""
        address = _ip_of(peer)
        if address is None:
            return False
        if self.allow is not None and not _any_matches(self.allow, address):
            return False
        return not _any_matches(self.deny, address)

    def __str__(self) -> str:
        allow = "everyone" if self.allow is None else ",".join(r.text for r in self.allow) or "nobody"
        deny = ",".join(r.text for r in self.deny) or "nobody"
        return f"allow {allow}; deny {deny}"


def _any_matches(rules: tuple[_Rule, ...], address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    for rule in rules:
        if isinstance(rule, _V4Pattern):
            if isinstance(address, ipaddress.IPv4Address) and rule.matches(address):
                return True
        elif isinstance(rule, _Network):
            if address.version == rule.network.version and rule.matches(address):
                return True
        else:
            raise ValueError(f"host name {rule.name!r} not resolved: use AccessRules.resolved()")  # noqa: TRY004
    return False


_IP_FAMILIES: Final = frozenset({socket.AF_INET, socket.AF_INET6})


@final
class AccessGate:
    """One listener's :class:`AccessRules` at work: whether a peer may in, refusals counted and traced.

    A listener that enforces the rules calls :meth:`install` when it is made (with
    its socket's family), :meth:`admits` for each new peer before reading
    anything from it, and :meth:`refuse` to close a refused stream socket.
    """

    def __init__(self, rules: AccessRules, tracer: Tracer) -> None:
        self.rules = rules
        self._tracer = tracer
        #: How many peers were refused (stream connections; datagrams, for datagram listeners).
        self.denied = 0
        self._families: set[int] = set()
        self._traced: dict[object, None] = {}

    def install(self, family: int) -> None:
        """A listener on a socket of ``family`` enforces these rules."""
        self._families.add(family)

    def withdraw(self, family: int) -> None:
        """The listener that installed these rules for ``family`` no longer reads its socket
        (it handed it over): unless another enforces them, :meth:`check_installed` refuses them."""
        self._families.discard(family)

    def check_installed(self, where: object) -> None:
        """After the transport made its listener: :class:`AddressError` unless it enforces the rules
        on IP sockets only."""
        if not self._families:
            raise AddressError(f"{where}: this transport's listener does not enforce allow/deny access rules")
        if not self._families <= _IP_FAMILIES:
            raise AddressError(
                f"{where}: allow/deny match IP addresses, and peers of this transport have none "
                "(for unix:// sockets, restrict who may connect with the socket file's permissions)"
            )

    def admits(self, peer: object, *, datagram: bool = False) -> bool:
        """Whether ``peer`` (a sockaddr) may in; a refusal is counted and traced (datagram peers:
        traced once each, not once per datagram)."""
        if self.rules.admits(peer):
            return True
        self.denied += 1
        log = self._tracer.log
        if log.isEnabledFor(logging.INFO):  # the level of accept lines
            if datagram:
                if peer in self._traced:
                    return False
                if len(self._traced) >= _TRACED_PEERS_MAX:
                    self._traced.clear()
                self._traced[peer] = None
            self._tracer.info(
                "%s from %s denied by the access rules (%d denied so far)",
                "datagram" if datagram else "connection",
                peer_text(peer),
                self.denied,
            )
        return False

    @staticmethod
    def refuse(sock: trio.socket.SocketType) -> None:
        """Close a refused stream socket at once, with an RST (``SO_LINGER`` 0)."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        except OSError:
            pass
        sock.close()


async def open_gate(allow: object, deny: object, tracer: Tracer) -> AccessGate | None:
    """The gate for a listener's ``allow=``/``deny=`` (host names resolved now), or ``None`` for
    neither. Checks types and parses before anything is bound."""
    if allow is None and deny is None:
        return None
    return AccessGate(await AccessRules.build(allow, deny).resolved(), tracer)


async def check_enforced(gate: AccessGate | None, listener: Listener, where: object) -> None:
    """Close ``listener`` and raise :class:`AddressError` unless it enforces ``gate`` (see
    :meth:`AccessGate.check_installed`)."""
    if gate is None:
        return
    try:
        gate.check_installed(where)
    except BaseException:
        await trio.aclose_forcefully(listener)
        raise
