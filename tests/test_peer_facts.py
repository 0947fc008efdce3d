"""access.peer_facts: a TCP peer's address worked out once (it was ~50 µs of every connection)."""
import ipaddress

from DriveStateMonitor.access import AccessRules, is_local_peer, peer_facts, peer_ip


def test_an_address_is_parsed_once_and_its_facts_shared():
    first = peer_facts(("10.9.8.7", 40000))
    assert peer_facts(("10.9.8.7", 51234)) is first  # another port, the same cached facts
    assert first.ip == ipaddress.ip_address("10.9.8.7") and first.key == "10.9.8.7"
    assert not first.loopback


def test_ipv4_mapped_peers_are_ipv4_and_loopback_is_known():
    facts = peer_facts(("::ffff:127.0.0.1", 1, 0, 0))
    assert facts.key == "127.0.0.1" and facts.loopback and facts.ip.version == 4
    assert peer_facts(("::1", 1, 0, 0)).loopback
    assert peer_facts(("fe80::1%lo", 1, 0, 2)).key == "fe80::1"


def test_unix_and_unparseable_peers_have_no_facts():
    assert peer_facts("") is None and peer_facts(b"\0abstract") is None
    assert peer_facts(("not an address", 1)) is None
    assert peer_ip(("not an address", 1)) is None
    assert is_local_peer("") and not is_local_peer(("not an address", 1))


def test_allow_rules_see_the_same_addresses():
    rules = AccessRules([ipaddress.ip_network("10.0.0.0/8")])
    assert rules.allows(("10.1.2.3", 5)) and rules.allows(("::ffff:10.1.2.3", 5, 0, 0))
    assert not rules.allows(("192.168.1.1", 5)) and rules.allows("")
