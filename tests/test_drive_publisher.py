"""Drive data in the tree: layout, shared lifetimes, and what a repeat costs."""
import json

from DriveStateMonitor.drive_publisher import DrivePublisher, path_component
from DriveStateMonitor.statserv_tree import EXPIRED, NONEXISTENT, Tree

FIELDS = {"serial_number": "ZA1", "model": "ST4000NK0001", "port": 8123,
          "network_interfaces": [{"name": "eth0", "ipv4_addr": "10.0.0.1"},
                                 {"name": "eth1", "ipv4_addr": "10.0.1.1"}],
          "extra": {"nested": [1, 2]}}
RAW = json.dumps(FIELDS).encode()


def _added(now):
    return {"last_seen": "t%d" % now, "last_seen_epoch": now, "source_address": "10.0.0.1",
            "interface": "eth0"}


def test_announcement_fields_interfaces_and_added_fields_are_published():
    tree = Tree()
    DrivePublisher(tree, 60).announcement("ZA1", RAW, _added(100.0), 100.0)
    assert tree.get("/drives/ZA1/model", 100.0) == "ST4000NK0001"
    assert tree.get("/drives/ZA1/port", 100.0) == 8123
    assert tree.get("/drives/ZA1/interfaces/eth1/ipv4_addr", 100.0) == "10.0.1.1"
    assert json.loads(tree.get("/drives/ZA1/extra", 100.0)) == {"nested": [1, 2]}
    assert tree.get("/drives/ZA1/last_seen", 100.0) == "t100"
    assert tree.stat("/drives/ZA1/model")["lifetime"] == 60


def test_repeats_keep_every_object_alive_until_one_lifetime_after_the_last():
    tree = Tree()
    publisher = DrivePublisher(tree, 60)
    for now in (100.0, 140.0, 170.0):
        publisher.announcement("ZA1", RAW, _added(now), now)
    tree.expire_due(229.0)
    assert tree.value_state("/drives/ZA1/interfaces/eth0/ipv4_addr", 229.0) == "10.0.0.1"
    assert tree.value_state("/drives/ZA1/last_seen", 229.0) == "t170"
    tree.expire_due(230.5)
    assert tree.value_state("/drives/ZA1/model", 230.5) is EXPIRED
    assert tree.value_state("/drives/ZA1/interfaces/eth0/ipv4_addr", 230.5) is EXPIRED


def test_a_drive_heard_again_after_it_expired_is_valid_again():
    tree = Tree()
    publisher = DrivePublisher(tree, 10)
    publisher.announcement("ZA1", RAW, _added(100.0), 100.0)
    tree.expire_due(111.0)
    assert tree.value_state("/drives/ZA1/model", 111.0) is EXPIRED
    publisher.announcement("ZA1", RAW, _added(200.0), 200.0)
    assert tree.value_state("/drives/ZA1/model", 200.0) == "ST4000NK0001"


def test_a_field_the_drive_stopped_sending_expires_while_the_rest_lives():
    tree = Tree()
    publisher = DrivePublisher(tree, 60)
    publisher.announcement("ZA1", RAW, _added(100.0), 100.0)
    newer = json.dumps({k: v for k, v in FIELDS.items() if k != "port"}).encode()
    for now in (130.0, 160.0, 190.0):
        publisher.announcement("ZA1", newer, _added(now), now)
    tree.expire_due(195.0)
    assert tree.value_state("/drives/ZA1/port", 195.0) is EXPIRED
    assert tree.value_state("/drives/ZA1/model", 195.0) == "ST4000NK0001"


def test_names_the_tree_cannot_hold_become_underscores():
    assert path_component("5 000c50 0a1b2c3d4") == "5_000c50_0a1b2c3d4"
    assert path_component("a/b") == "a_b"
    assert path_component("..") == "_.."
    tree = Tree()
    DrivePublisher(tree, 60).announcement("5 000c50 x", b'{"world_wide_name": "5 000c50 x"}',
                                         _added(1.0), 1.0)
    assert tree.get("/drives/5_000c50_x/world_wide_name", 1.0) == "5 000c50 x"


def test_status_has_no_lifetime_and_wipe_removes_drives():
    tree = Tree()
    publisher = DrivePublisher(tree, 60)
    publisher.announcement("ZA1", RAW, _added(100.0), 100.0)
    publisher.status("ZA1", "2026-11-24", "002", 100.0)
    tree.expire_due(1000.0)
    assert tree.value_state("/drives/ZA1/status", 1000.0) == "002"
    assert publisher.wipe(1000.0) > 0
    assert tree.value_state("/drives/ZA1/status", 1000.0) is NONEXISTENT
