"""The SCP's peer allow-list: AE title and IP of the same [[peers]] entry."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.receive.scp import PeerAllowList, normalise_ip, resolve_host


@dataclass(frozen=True)
class _Peer:
    ae_title: str
    host: str


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("::ffff:10.1.2.3", "10.1.2.3"), ("fe80::1%eth0", "fe80::1"), ("::1", "::1")],
)
def test_normalise_ip(address: str, expected: str) -> None:
    assert normalise_ip(address) == expected


def test_pair_must_match_the_same_peer() -> None:
    allow = PeerAllowList.from_peers([_Peer("PACS", "10.0.0.5"), _Peer("MODALITY", "10.0.0.9")])
    assert allow.allowed("PACS", "10.0.0.5")
    assert allow.allowed("PACS ", "::ffff:10.0.0.5")  # AE titles are space padded on the wire
    assert not allow.allowed("PACS", "10.0.0.9")  # a listed AE title from another listed peer's address
    assert not allow.allowed("OTHER", "10.0.0.5")
    assert allow.ip_allowed("10.0.0.9") and not allow.ip_allowed("10.0.0.7")
    assert not allow.ip_allowed("not an address")


def test_host_names_resolve_once() -> None:
    assert "127.0.0.1" in resolve_host("localhost")
    assert resolve_host("no-such-host.invalid") == frozenset()
