"""/drives/ in the Status Server tree: a read-only view of the drive store (drive_view.py).

Pure and in memory: a DriveStore, a Tree with the view mounted, protocol sessions on a fake clock."""
from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from DriveStateMonitor.drive_publisher import DrivePublisher
from DriveStateMonitor.drive_store import LAST_SEEN_FORMAT, DriveStore
from DriveStateMonitor.drive_view import DriveView, path_component
from DriveStateMonitor.statserv_protocol import StatServSession
from DriveStateMonitor.statserv_tree import DIRECTORY, NONEXISTENT, StatServError, Tree

T0 = 1_700_000_000.0
LIFETIME = 60.0
FIELDS = {"serial_number": "ZA1", "model": "ST4000NK0001", "port": 8123, "temperature": 40,
          "network_interfaces": [{"name": "eth0", "ipv4_addr": "10.0.0.1"},
                                 {"name": "eth1", "ipv4_addr": "10.0.1.1"}],
          "extra": {"nested": [1, 2]}, "nothing": None}


def raw_of(fields):
    return json.dumps(fields).encode()


RAW = raw_of(FIELDS)


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


class Subscriber:
    def __init__(self):
        self.notices = []

    def notify(self, path):
        self.notices.append(path)


class Client:
    def __init__(self, tree, clock):
        self.session = StatServSession(tree, clock, is_local=True, on_output=lambda: None,
                                       on_shutdown=lambda: None)

    def send(self, text):
        self.session.receive_data(text.encode())
        return self.session.data_to_send().decode()


@pytest.fixture
def world():
    store = DriveStore(drive_lifetime=LIFETIME)
    tree = Tree()
    view = DriveView(store, tree, T0)
    return store, tree, view


def announce(store, raw=RAW, now=T0, serial="ZA1"):
    if store.refresh_repeat(raw, now, "10.0.0.9", "lo") is None:
        assert store.record_announcement(serial, json.loads(raw), raw, now, "10.0.0.9", "lo")


def last_seen_text(epoch):
    return time.strftime(LAST_SEEN_FORMAT, time.localtime(int(epoch)))


def test_fields_interfaces_last_seen_and_state_are_shown(world):
    store, tree, _ = world
    announce(store)
    assert tree.get("/drives/ZA1/model", T0) == "ST4000NK0001"
    assert tree.get("/drives/ZA1/port", T0) == 8123
    assert tree.get("/drives/ZA1/interfaces/eth1/ipv4_addr", T0) == "10.0.1.1"
    assert json.loads(tree.get("/drives/ZA1/extra", T0)) == {"nested": [1, 2]}
    assert tree.get("/drives/ZA1/last_seen", T0) == last_seen_text(T0)
    assert tree.get("/drives/ZA1/state", T0) == "alive"
    assert not tree.exists("/drives/ZA1/nothing")  # null fields are left out
    # m's per-datagram fields stay out of the tree
    names = [name for name, _ in tree.list_dir("/drives/ZA1")]
    assert names == ["extra", "interfaces", "last_seen", "model", "port", "serial_number",
                     "state", "temperature"]
    assert tree.list_dir("/drives/ZA1/interfaces") == [("eth0", DIRECTORY), ("eth1", DIRECTORY)]
    assert tree.list_dir("/") == [("drives", DIRECTORY)]
    assert tree.kind("/drives/ZA1") == "directory" and tree.kind("/drives/ZA1/port") == "object"


def test_status_and_time_stamp_show_the_newest_status_even_without_a_drive(world):
    store, tree, _ = world
    store.record_status("ZB2", b'{"time_stamp": "2026-11-24 10:00", "status": "001"}', T0)
    store.record_status("ZB2", b'{"time_stamp": "2026-11-24 10:01", "status": "002"}', T0 + 1)
    assert tree.get("/drives/ZB2/status", T0 + 1) == "002"
    assert tree.get("/drives/ZB2/time_stamp", T0 + 1) == "2026-11-24 10:01"
    assert tree.list_dir("/drives") == [("ZB2", DIRECTORY)]
    assert tree.stat("/drives/ZB2/status", T0 + 1)["time"] == T0 + 1


def test_silent_drive_changes_only_state_and_keeps_every_other_value(world):
    store, tree, _ = world
    announce(store)
    store.expire_due(T0 + LIFETIME + 1)
    now = T0 + LIFETIME + 1
    assert tree.get("/drives/ZA1/state", now) == "expired"
    assert tree.get("/drives/ZA1/model", now) == "ST4000NK0001"
    assert tree.get("/drives/ZA1/last_seen", now) == last_seen_text(T0)
    assert tree.get("/drives/ZA1/interfaces/eth0/ipv4_addr", now) == "10.0.0.1"
    attributes = tree.stat("/drives/ZA1/state", now)
    assert (attributes["lifetime"], attributes["time"]) == (LIFETIME, now)
    assert tree.stat("/drives/ZA1/model", now)["lifetime"] == 0


def test_directory_monitor_gets_one_notice_when_silent_and_one_when_heard_again(world):
    store, tree, _ = world
    announce(store)
    watcher = Subscriber()
    assert tree.monitor("/drives/ZA1", watcher, T0) is DIRECTORY
    silent_at = T0 + LIFETIME + 1
    store.expire_due(silent_at)
    store.expire_due(silent_at + 100)  # nothing more happens while it stays silent
    assert watcher.notices == ["/drives/ZA1"]
    assert tree.collect(watcher, None, silent_at + 100) == [("/drives/ZA1/state", "expired")]
    back_at = silent_at + 200
    announce(store, now=back_at)
    assert watcher.notices == ["/drives/ZA1", "/drives/ZA1"]
    assert tree.collect(watcher, None, back_at) == [
        ("/drives/ZA1/last_seen", last_seen_text(back_at)), ("/drives/ZA1/state", "alive")]


def test_monitor_on_state_fires_once_per_silence(world):
    store, tree, _ = world
    announce(store)
    watcher = Subscriber()
    assert tree.monitor("/drives/ZA1/state", watcher, T0) == "alive"
    for second in range(1, 5):  # heard again within the lifetime: state does not change
        announce(store, now=T0 + second)
    assert watcher.notices == []
    store.expire_due(T0 + 4 + LIFETIME + 1)
    assert watcher.notices == ["/drives/ZA1/state"]
    assert tree.collect(watcher, None, T0 + 100) == [("/drives/ZA1/state", "expired")]


def test_monitor_on_a_drive_not_seen_yet_fires_when_it_appears(world):
    store, tree, _ = world
    watcher, lister = Subscriber(), Subscriber()
    assert tree.monitor("/drives/ZA1/model", watcher, T0) is NONEXISTENT
    assert tree.monitor("/drives", lister, T0) is DIRECTORY
    announce(store, now=T0 + 1)
    assert watcher.notices == ["/drives/ZA1/model"]
    assert tree.collect(watcher, None, T0 + 1) == [("/drives/ZA1/model", "ST4000NK0001")]
    assert lister.notices == ["/drives"]
    assert tree.collect(lister, None, T0 + 1) == [("/drives/ZA1", DIRECTORY)]
    # a repeat of the same datagram changes nothing the monitor watches
    announce(store, now=T0 + 2)
    assert watcher.notices == ["/drives/ZA1/model"] and lister.notices == ["/drives"]


def test_deadband_and_minperiod_apply_to_view_objects(world):
    store, tree, _ = world
    announce(store)
    banded, slow = Subscriber(), Subscriber()
    tree.monitor("/drives/ZA1/temperature", banded, T0, deadband=5)
    tree.monitor("/drives/ZA1/model", slow, T0, min_period=10)
    announce(store, raw_of(dict(FIELDS, temperature=43)), T0 + 1)
    assert banded.notices == []  # within the deadband
    announce(store, raw_of(dict(FIELDS, temperature=46)), T0 + 2)
    assert banded.notices == ["/drives/ZA1/temperature"]
    announce(store, raw_of(dict(FIELDS, model="A")), T0 + 3)
    assert tree.collect(slow, None, T0 + 3) == [("/drives/ZA1/model", "A")]
    announce(store, raw_of(dict(FIELDS, model="B")), T0 + 4)
    assert slow.notices == ["/drives/ZA1/model"]  # quiet until T0 + 13
    assert tree.next_deadline() == pytest.approx(T0 + 13)
    tree.expire_due(T0 + 13)
    assert slow.notices == ["/drives/ZA1/model", "/drives/ZA1/model"]
    assert tree.collect(slow, None, T0 + 13) == [("/drives/ZA1/model", "B")]


def test_writes_under_drives_are_denied_and_change_nothing(world):
    store, tree, _ = world
    announce(store)
    client = Client(tree, Clock())
    for request in ("PUT /drives/ZA1/model X", "TOUCH /drives/ZA1/mine", "REMOVE /drives/ZA1/model",
                    "TOUCHDIR /drives/ZA1/sub", "RMDIR /drives/ZA1/interfaces/eth0",
                    "TOUCH /drives/NEW1/x", "RMDIR /drives"):
        assert client.send(request + "\n").startswith("! DENIED"), request
    assert client.send("GET /drives/ZA1/model\n") == '. "ST4000NK0001"\n'
    assert not tree.exists("/drives/ZA1/mine") and not tree.exists("/drives/NEW1")
    with pytest.raises(StatServError) as caught:
        tree.set_value("/drives/ZA1/model", "X", T0)
    assert caught.value.code == "DENIED"


def test_protocol_get_ls_stat_updates_and_save_through_the_view(world):
    store, tree, _ = world
    clock = Clock()
    client = Client(tree, clock)
    assert client.send("MONITOR /drives/ZA1/state\n") == ". NONEXISTENT\n"
    announce(store)
    assert client.send("") == "@ /drives/ZA1/state\n"
    assert client.send("UPDATES\n") == '* /drives/ZA1/state = "alive"\n.\n'
    assert client.send("GET /drives/ZA1/port\n") == '. "8123"\n'
    assert client.send("GET /drives/ZA1/nope\n").startswith("! NONEXISTENT")
    assert client.send("GET /drives/ZA1\n").startswith("! ISDIR")
    listing = client.send("LS /drives/ZA1/interfaces/eth0\n")
    assert listing == '* ipv4_addr = "10.0.0.1"\n* name = "eth0"\n.\n'
    stat = client.send("STAT /drives/ZA1/state\n")
    assert "* lifetime=60" in stat and "* usecount=2" in stat and "* monitors=1" in stat
    assert "* entries=1" in client.send("STAT /drives\n")
    saved = tree.dump()
    assert '/drives/ZA1/interfaces/eth0/ipv4_addr = "10.0.0.1"\n' in saved
    assert "/drives/ZA1/port = 8123\n" in saved
    assert '/drives/ZA1/state = "alive"\n' in saved
    loaded = Tree.load(saved.replace("/drives/", "/copy/"))
    assert loaded.get("/copy/ZA1/model", T0) == "ST4000NK0001"


def test_unmonitor_and_closing_free_the_anchors(world):
    store, tree, _ = world
    watcher = Subscriber()
    before = len(tree)
    tree.monitor("/drives/ZZ9/state", watcher, T0)
    tree.monitor("/drives/ZZ9", watcher, T0)
    assert len(tree) == before + 2  # monitored names count against max_objects
    tree.unmonitor("/drives/ZZ9/state", watcher)
    tree.release_owner(watcher, T0)
    assert len(tree) == before
    announce(store, serial="ZA1")
    assert watcher.notices == []


def test_wipe_reports_vanished_drives_to_their_monitors(world):
    store, tree, _ = world
    announce(store)
    watcher, lister = Subscriber(), Subscriber()
    tree.monitor("/drives/ZA1/model", watcher, T0)
    tree.monitor("/drives", lister, T0)
    store.wipe(T0 + 5)
    assert tree.collect(watcher, None, T0 + 5) == [("/drives/ZA1/model", NONEXISTENT)]
    assert tree.collect(lister, None, T0 + 5) == [("/drives/ZA1", NONEXISTENT)]
    assert tree.list_dir("/drives") == []
    assert tree.exists("/drives")


def test_unsafe_serials_and_field_names_become_safe_components(world):
    store, tree, _ = world
    fields = {"serial_number": "5 000c50 x", "world wide/name": "5 000c50 x"}
    raw = raw_of(fields)
    store.record_announcement("5 000c50 x", fields, raw, T0, "10.0.0.9", "lo")
    assert path_component("5 000c50 x") == "5_000c50_x"
    assert tree.get("/drives/5_000c50_x/world_wide_name", T0) == "5 000c50 x"
    watcher = Subscriber()
    tree.monitor("/drives/5_000c50_x/state", watcher, T0)
    store.expire_due(T0 + LIFETIME + 1)
    assert watcher.notices == ["/drives/5_000c50_x/state"]


def test_view_agrees_with_m_after_a_changed_announcement(world):
    store, tree, _ = world
    announce(store)
    newer = dict(FIELDS, model="ST8000", network_interfaces=[{"name": "eth0", "ipv4_addr": "10.9.9.9"}])
    announce(store, raw_of(newer), T0 + 3)
    m = json.loads(store.multicast_json())["ZA1"]
    assert tree.get("/drives/ZA1/model", T0 + 3) == m["model"] == "ST8000"
    assert tree.get("/drives/ZA1/state", T0 + 3) == m["state"]
    assert tree.get("/drives/ZA1/last_seen", T0 + 3) == m["last_seen"]
    assert not tree.exists("/drives/ZA1/interfaces/eth1")  # the drive no longer sends it


def test_publisher_still_publishes_the_daemons_facts(world):
    _, tree, _ = world
    DrivePublisher(tree).facts({"pid": 7, "counters": {"statuses": 3}}, T0)
    assert tree.get("/dsm/pid", T0) == 7 and tree.get("/dsm/counters/statuses", T0) == 3


def test_a_drive_costs_no_tree_objects(world):
    store, tree, _ = world
    before = len(tree)
    for index in range(200):
        fields = dict(FIELDS, serial_number="S%03d" % index)
        store.record_announcement("S%03d" % index, fields, raw_of(fields), T0, "10.0.0.9", "lo")
    assert len(tree) == before
    assert len(tree.list_dir("/drives")) == 200


def test_monitors_below_the_mount_count_against_max_objects():
    store = DriveStore(drive_lifetime=LIFETIME)
    tree = Tree(max_objects=3)
    DriveView(store, tree, T0)  # /drives: one entry
    watcher = Subscriber()
    tree.monitor("/drives/A/state", watcher, T0)
    tree.monitor("/drives/B/state", watcher, T0)
    with pytest.raises(StatServError) as caught:
        tree.monitor("/drives/C/state", watcher, T0)
    assert caught.value.code == "LIMIT"



_names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                        blacklist_characters="/"), min_size=1, max_size=8)
_values = st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.lists(st.integers(0, 9), max_size=3))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_names, _values, max_size=8), st.booleans())
def test_every_field_in_the_tree_agrees_with_m(extra, silent):
    store = DriveStore(drive_lifetime=LIFETIME)
    tree = Tree()
    DriveView(store, tree, T0)
    fields = dict(extra, serial_number="ZP1")
    store.record_announcement("ZP1", fields, raw_of(fields), T0, "10.0.0.9", "lo")
    if silent:
        store.expire_due(T0 + LIFETIME + 1)
    shown = json.loads(store.multicast_json())["ZP1"]
    listed = dict(tree.list_dir("/drives/ZP1"))
    for key in ("last_seen", "state"):
        assert listed.pop(key) == shown[key]
    own = {path_component(k): v for k, v in shown.items()
           if k not in ("last_seen", "last_seen_epoch", "source_address", "interface", "state")}
    assert listed == {k: v if isinstance(v, (str, bool, int, float)) else json.dumps(v, sort_keys=True)
                      for k, v in own.items()}
