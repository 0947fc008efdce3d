"""End-to-end tests of drive announcements: loopback multicast to the test group, read back with `m`.

Datagrams go to the harness's test group (239.1.2.99) out of the loopback interface only (TTL 0).
Every wait has a deadline. UDP on loopback may drop a datagram when a receive buffer is full, so a
wait for a datagram's effect re-sends it a bounded number of times (repeats are harmless).
"""
from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable, Dict

import pytest

from dsm_harness import LOOPBACK, TEST_GROUP, announcement, wait_for

ADDED = ("last_seen", "last_seen_epoch", "source_address", "interface")
LAST_SEEN_FORMAT = "%Y %b %d %H:%M:%S"


def m_of(dsm) -> Dict[str, Any]:
    return dsm.query_json("m")


def announce_until(dsm, payload: bytes, condition: Callable[[Dict[str, Any]], Any],
                   what: str, attempts: int = 5, timeout: float = 2.0) -> Dict[str, Any]:
    """Sends `payload` and waits until `condition(m)` holds, re-sending a bounded number of times."""
    for attempt in range(attempts):
        dsm.announce(payload)
        try:
            return wait_for(lambda: (lambda m: m if condition(m) else None)(m_of(dsm)),
                            timeout=timeout, what=what)
        except AssertionError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def kinetic(serial: str, **extra: Any) -> Dict[str, Any]:
    return json.loads(announcement(serial, **extra))


# --- fields -----------------------------------------------------------------------------------
def test_announcement_appears_keyed_by_serial_with_fields_exactly_as_sent(dsm):
    sent = kinetic("ZA10ABCD", world_wide_name="5 000c50 0a1b2c3d4", model="ST4000NK0001 Kïnetic",
                   network_interfaces=[
                       {"name": "eth0", "mac_addr": "00:c9:58:01:aa:10", "ipv4_addr": "10.20.30.41",
                        "ipv6_addr": "fe80::2c9:58ff:fe01:aa10"},
                       {"name": "eth1", "mac_addr": "00:c9:58:01:aa:11", "ipv4_addr": "10.20.31.041",
                        "ipv6_addr": "fe80::2c9:58ff:fe01:aa11"}])
    sent["extra_nested"] = {"list": [1, 2.5, "three", None, True], "empty": {}}
    before = time.time()
    drives = announce_until(dsm, json.dumps(sent).encode(), lambda m: "ZA10ABCD" in m,
                            "ZA10ABCD in m")
    after = time.time()
    assert list(drives) == ["ZA10ABCD"]
    drive = drives["ZA10ABCD"]
    for key, value in sent.items():
        assert drive[key] == value, key
    # the addresses scripts connect to, unchanged (even an odd-looking one)
    assert [nic["ipv4_addr"] for nic in drive["network_interfaces"]] == ["10.20.30.41",
                                                                         "10.20.31.041"]
    for key in ADDED:
        assert key in drive, key
    assert set(drive) - set(sent) - set(ADDED) <= {"state"}, set(drive) - set(sent)
    assert drive["interface"] == "lo"
    assert drive["source_address"] == "127.0.0.1"
    epoch = drive["last_seen_epoch"]
    assert before - 1 <= epoch <= after + 1
    # the original format, local time
    assert drive["last_seen"] == time.strftime(LAST_SEEN_FORMAT, time.localtime(int(epoch)))
    time.strptime(drive["last_seen"], LAST_SEEN_FORMAT)


def test_several_drives_each_under_their_own_serial(dsm):
    for serial in ("D1", "D2", "D3"):
        announce_until(dsm, announcement(serial), lambda m, s=serial: s in m, serial + " in m")
    drives = m_of(dsm)
    assert set(drives) == {"D1", "D2", "D3"}
    assert all(drives[s]["serial_number"] == s for s in drives)


def test_newest_announcement_wins(dsm):
    first = kinetic("NEW1")
    announce_until(dsm, json.dumps(first).encode(), lambda m: "NEW1" in m, "first NEW1")
    second = kinetic("NEW1", firmware_version="3.2.0", network_interfaces=[
        {"name": "eth0", "mac_addr": "00:c9:58:01:aa:10", "ipv4_addr": "10.20.30.99"}])
    del second["tlsPort"]  # a field the newest announcement leaves out is gone
    drives = announce_until(dsm, json.dumps(second).encode(),
                            lambda m: m.get("NEW1", {}).get("firmware_version") == "3.2.0",
                            "the second NEW1 announcement")
    drive = drives["NEW1"]
    assert {k: v for k, v in drive.items() if k in second} == second
    assert "tlsPort" not in drive
    assert set(drive) - set(second) - set(ADDED) <= {"state"}
    # and an older shape sent again wins again: newest, not "most fields"
    drives = announce_until(dsm, json.dumps(first).encode(),
                            lambda m: m.get("NEW1", {}).get("firmware_version") == "3.1.7",
                            "the first NEW1 announcement again")
    assert drives["NEW1"]["tlsPort"] == 8443
    assert list(drives) == ["NEW1"]


def test_byte_identical_repeat_updates_last_seen(dsm):
    payload = announcement("REP1")
    drives = announce_until(dsm, payload, lambda m: "REP1" in m, "REP1 in m")
    first_epoch = drives["REP1"]["last_seen_epoch"]
    first_text = drives["REP1"]["last_seen"]
    # let the wall clock pass into the next second, so the text form must change too
    wait_for(lambda: time.time() >= int(first_epoch) + 1.05, timeout=3, what="the next second")
    drives = announce_until(dsm, payload,
                            lambda m: m["REP1"]["last_seen_epoch"] > first_epoch,
                            "REP1's last_seen to move")
    drive = drives["REP1"]
    assert drive["last_seen"] != first_text
    assert drive["last_seen"] == time.strftime(LAST_SEEN_FORMAT,
                                               time.localtime(int(drive["last_seen_epoch"])))
    assert {k: v for k, v in drive.items() if k not in ADDED and k != "state"} == \
        json.loads(payload)


def test_world_wide_name_is_the_key_when_there_is_no_serial_number(dsm):
    sent = kinetic("unused")
    del sent["serial_number"]
    sent["world_wide_name"] = "5 000c50 0 7f3e2a1b"
    drives = announce_until(dsm, json.dumps(sent).encode(),
                            lambda m: "5 000c50 0 7f3e2a1b" in m, "the drive keyed by its WWN")
    drive = drives["5 000c50 0 7f3e2a1b"]
    assert {k: v for k, v in drive.items() if k in sent} == sent
    assert "serial_number" not in drive
    assert drive["interface"] == "lo"
    # a null serial number also falls back to the world wide name
    sent2 = dict(sent, serial_number=None, world_wide_name="5 000c50 0 deadbeef")
    drives = announce_until(dsm, json.dumps(sent2).encode(),
                            lambda m: "5 000c50 0 deadbeef" in m, "the drive with a null serial")
    assert drives["5 000c50 0 deadbeef"]["serial_number"] is None


# --- datagrams that are not drive announcements ------------------------------------------------
STORAGE_DAEMON = json.dumps({
    "box_id": "box-7", "id": 42, "port": 9000, "version": "1.4.2", "used_bytes": 123456789,
    "total_bytes": 4000000000000,
    "network_interfaces": [{"name": "eth0", "ipv4_addr": "10.20.30.7"}]}).encode()

BOGUS = [
    pytest.param(STORAGE_DAEMON, id="storage-daemon"),
    pytest.param(b"not json at all", id="text"),
    pytest.param(b"\xff\xfe\x00\x01binary", id="binary"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[1, 2, 3]", id="list"),
    pytest.param(b'"ZA10ABCD"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b'{"serial_number": "TRUNC", "model": "ST4000', id="truncated"),
    pytest.param(b'{"serial_number": null, "model": "x"}', id="null-serial-no-wwn"),
    pytest.param(b'{"serial_number": "", "world_wide_name": ""}', id="empty-serial-and-wwn"),
    pytest.param(b'{"serial_number": ["ZA1"], "port": 8123}', id="serial-is-a-list"),
    pytest.param(b'{"serial_number": "NAN1", "port": NaN}', id="nan"),
    pytest.param(b"[" * 5000 + b"]" * 5000, id="deeply-nested"),
]


@pytest.mark.parametrize("payload", BOGUS)
def test_datagram_that_is_not_a_drive_announcement_is_dropped(dsm, payload):
    announce_until(dsm, announcement("BEFORE"), lambda m: "BEFORE" in m, "BEFORE in m")
    before = m_of(dsm)
    for _ in range(3):
        dsm.announce(payload)
    # datagrams from one sender over loopback arrive in order: once AFTER is in, the bogus ones
    # have been handled
    drives = announce_until(dsm, announcement("AFTER"), lambda m: "AFTER" in m, "AFTER in m")
    assert set(drives) == {"BEFORE", "AFTER"}
    assert drives["BEFORE"] == before["BEFORE"]
    assert dsm.proc.poll() is None
    assert dsm.query_json("s") == {}


def test_burst_of_bogus_datagrams_then_the_dsm_still_answers(dsm):
    announce_until(dsm, announcement("STEADY"), lambda m: "STEADY" in m, "STEADY in m")
    before = m_of(dsm)["STEADY"]
    kinds = [STORAGE_DAEMON, b"garbage", b"[]", b"{}", b'{"serial_number": null}',
             b"\x00" * 100, b'{"box_id": "b", "id": 1}', b"[" * 3000]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        for n in range(2000):
            sock.sendto(kinds[n % len(kinds)], (TEST_GROUP, dsm.mcast_port))
    started = time.monotonic()
    drives = announce_until(dsm, announcement("LATER"), lambda m: "LATER" in m, "LATER in m",
                            attempts=10)
    assert time.monotonic() - started < 10
    assert set(drives) == {"STEADY", "LATER"}
    assert drives["STEADY"] == before
    assert dsm.send_status(b"{'serial_number': 'STEADY', 'time_stamp': 1, 'status': '002'}") \
        == b"\x04"
    assert dsm.query_json("s") == {"STEADY": [{"time_stamp": 1, "status": "002"}]}
    assert dsm.proc.poll() is None


@pytest.mark.parametrize("coalesce", ["0", "0.02"])
def test_a_burst_of_new_drives_is_all_stored_in_order_whether_coalesced_or_not(dsm_factory,
                                                                              coalesce):
    dsm = dsm_factory.start("--coalesce", coalesce)
    serials = ["BURST%03d" % n for n in range(300)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        for serial in serials:
            sock.sendto(announcement(serial), (TEST_GROUP, dsm.mcast_port))
        sock.sendto(announcement(serials[0], firmware_version="9.9.9"),
                    (TEST_GROUP, dsm.mcast_port))
    drives = wait_for(lambda: (lambda m: m if len(m) == len(serials) and
                               m[serials[0]]["firmware_version"] == "9.9.9" else None)(m_of(dsm)),
                      timeout=10, what="the whole burst in m")
    assert sorted(drives) == serials
    assert all(drives[s]["firmware_version"] != "9.9.9" for s in serials[1:])


def test_wipe_forgets_drives_and_a_repeat_brings_one_back(dsm):
    payload = announcement("WIPED1")
    announce_until(dsm, payload, lambda m: "WIPED1" in m, "WIPED1 in m")
    assert dsm.query_json("w")["wiped"]["drives"] == 1
    assert m_of(dsm) == {}
    # the same bytes again after the wipe: a new drive, not a "repeat" of a forgotten one
    drives = announce_until(dsm, payload, lambda m: "WIPED1" in m, "WIPED1 back in m")
    assert drives["WIPED1"]["network_interfaces"][0]["ipv4_addr"] == "10.20.30.41"
