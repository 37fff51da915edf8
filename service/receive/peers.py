"""The peer allow-list of the SCP: (AE title, IP address) pairs from the ``[[peers]]`` entries."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


def normalise_ip(address: str) -> str:
    """Canonical text of an IP address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes a.b.c.d."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def resolve_host(host: str) -> frozenset[str]:
    """All IP addresses of a configured peer host (literal IP or name resolved once at start-up)."""
    try:
        return frozenset({normalise_ip(host)})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        logger.error("peer host %r does not resolve (%s); it cannot connect", host, exc)
        return frozenset()
    return frozenset(normalise_ip(str(info[4][0])) for info in infos)


@dataclass(frozen=True)
class PeerAllowList:
    """(AE title, IP) pairs allowed to associate."""

    entries: frozenset[tuple[str, str]]
    certificates: frozenset[tuple[str, str, str]] = frozenset()
    """(AE title, IP, SHA-256 of the peer's TLS client certificate) of the peers that have one."""
    names: frozenset[tuple[str, str, str]] = frozenset()
    """(AE title, IP, name of the ``[[peers]]`` entry): which peer an allowed association is (per-peer caps)."""

    @classmethod
    def from_peers(cls, peers: Iterable[Any]) -> PeerAllowList:
        resolved = [(p, ip) for p in peers for ip in resolve_host(str(p.host))]
        pairs = {(str(p.ae_title).rstrip(), ip) for p, ip in resolved}
        prints = {(str(p.ae_title).rstrip(), ip, str(getattr(p, "certificate_sha256", "")).lower())
                  for p, ip in resolved if getattr(p, "certificate_sha256", "")}
        names = {(str(p.ae_title).rstrip(), ip, str(getattr(p, "name", p.ae_title))) for p, ip in resolved}
        return cls(frozenset(pairs), frozenset(prints), frozenset(names))

    def peer_name(self, ae_title: str, address: str) -> str | None:
        """The ``[[peers]]`` entry of an allowed (AE title, address) pair; the first by name when several match."""
        try:
            ip = normalise_ip(address)
        except ValueError:
            return None
        matches = sorted(name for ae, peer_ip, name in self.names if ae == ae_title.rstrip() and peer_ip == ip)
        return matches[0] if matches else None

    def fingerprints_by_address(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for _, ip, print_ in self.certificates:
            out.setdefault(ip, set()).add(print_)
        return {ip: frozenset(prints) for ip, prints in out.items()}

    def certificate_matches(self, ae_title: str, address: str, print_: str) -> bool:
        try:
            return (ae_title.rstrip(), normalise_ip(address), print_) in self.certificates
        except ValueError:
            return False

    @property
    def ips(self) -> frozenset[str]:
        return frozenset(ip for _, ip in self.entries)

    def ip_allowed(self, address: str) -> bool:
        try:
            return normalise_ip(address) in self.ips
        except ValueError:
            return False

    def allowed(self, ae_title: str, address: str) -> bool:
        try:
            return (ae_title.rstrip(), normalise_ip(address)) in self.entries
        except ValueError:
            return False
