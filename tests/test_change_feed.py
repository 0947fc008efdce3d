"""The change feed (change_feed.py), pure: revisions, the window, resumption, and a client that
applies snapshot + changes ending with exactly the state the JSON endpoints show."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor.change_feed import ChangeFeed, make_epoch
from DriveStateMonitor.http_protocol import server_sent_event


class ModelStore:
    """The rows /api/drives and /api/status show, as plain dicts, with the store's touched set."""

    def __init__(self) -> None:
        self.drives: Dict[str, Any] = {}
        self.statuses: Dict[str, List[Any]] = {}
        self.touched: set = set()
        self.touched_status: set = set()
        self.wiped = False

    def drives_json(self) -> bytes:
        return json.dumps(self.drives).encode()

    def status_json(self) -> bytes:
        return json.dumps(self.statuses).encode()

    def drive_row(self, serial: str) -> Optional[bytes]:
        return json.dumps(self.drives[serial]).encode() if serial in self.drives else None

    def status_row(self, serial: str) -> Optional[bytes]:
        return json.dumps(self.statuses[serial]).encode() if serial in self.statuses else None

    def apply(self, op: Tuple[str, str, int]) -> None:
        kind, serial, value = op
        if kind == "drive":
            self.drives[serial] = {"serial_number": serial, "n": value,
                                   "state": "alive" if value % 3 else "expired"}
            self.touched.add(serial)
        elif kind == "status":
            history = self.statuses.setdefault(serial, [])
            history.append({"time_stamp": value, "status": "s%d" % value})
            del history[:-3]
            self.touched_status.add(serial)
        else:
            self.drives.clear()
            self.statuses.clear()
            self.touched.clear()
            self.touched_status.clear()
            self.wiped = True

    def end_pass(self, feed: ChangeFeed) -> Optional[bytes]:
        """What the daemon does before sleeping: one event for the pass, if anything changed."""
        if not self.touched and not self.touched_status and not self.wiped:
            return None
        drives, statuses, wiped = self.touched, self.touched_status, self.wiped
        self.touched, self.touched_status, self.wiped = set(), set(), False
        _, encoded = feed.publish(drives, statuses, wiped, self.drive_row, self.status_row,
                                  encode)
        return encoded


def encode(event_id: str, data: bytes) -> bytes:
    return server_sent_event(data, "change", event_id)


def parse_events(stream: bytes) -> List[Dict[str, str]]:
    """A minimal text/event-stream reader: each event's fields (one data line each here)."""
    events = []
    for block in stream.decode().split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if fields:
            events.append(fields)
    return events


class Viewer:
    """A page: rows by serial, the last id seen, every rev received."""

    def __init__(self) -> None:
        self.drives: Dict[str, Any] = {}
        self.statuses: Dict[str, Any] = {}
        self.last_id: Optional[str] = None
        self.revs: List[int] = []
        self.snapshots = 0

    def receive(self, stream: bytes) -> None:
        for event in parse_events(stream):
            data = json.loads(event["data"])
            assert event["id"] == "%s-%d" % (data["epoch"], data["rev"])
            if event["event"] == "snapshot":
                self.snapshots += 1
                self.drives, self.statuses = data["drives"], data["status"]
            else:
                assert event["event"] == "change"
                if data["wipe"]:
                    self.drives, self.statuses = {}, {}
                for table, rows in ((self.drives, data["drives"]),
                                    (self.statuses, data["status"])):
                    for serial, row in rows.items():
                        if row is None:
                            table.pop(serial, None)
                        else:
                            table[serial] = row
            self.last_id = event["id"]
            self.revs.append(data["rev"])


def connect(feed: ChangeFeed, store: ModelStore, last_id: Optional[str]) -> bytes:
    """What EventStreams.start sends: the missed events, or a snapshot."""
    missed = feed.since(last_id)
    if missed is None:
        return server_sent_event(feed.snapshot_data(store.drives_json(), store.status_json()),
                                 "snapshot", feed.event_id(feed.rev))
    return b"".join(missed)


serials = st.sampled_from(["A", "B", "C", "d\u00e9", 'q"uote'])
ops = st.one_of(st.tuples(st.just("drive"), serials, st.integers(0, 99)),
                st.tuples(st.just("status"), serials, st.integers(0, 99)),
                st.tuples(st.just("wipe"), st.just(""), st.just(0)))
# A pass: some changes, then what the viewer does: stays, drops (and reconnects with its last id,
# or without), or reconnects later.
passes = st.lists(st.tuples(st.lists(ops, max_size=4),
                            st.sampled_from(["stay", "drop", "resume", "fresh"])), max_size=25)


@settings(max_examples=300)
@given(passes, st.integers(1, 6), st.integers(200, 5000))
def test_snapshot_and_changes_end_with_the_endpoints_state(script, max_events, max_bytes):
    feed = ChangeFeed("e1", max_events=max_events, max_bytes=max_bytes)
    store = ModelStore()
    viewer = Viewer()
    viewer.receive(connect(feed, store, None))
    connected = True
    for changes, action in script:
        for op in changes:
            store.apply(op)
        encoded = store.end_pass(feed)
        if connected and encoded is not None:
            viewer.receive(encoded)
        if action == "drop":
            connected = False
        elif action in ("resume", "fresh") or not connected:
            before = len(viewer.revs)
            last_id = None if action == "fresh" else viewer.last_id
            resumable = feed.since(last_id) is not None
            snapshots = viewer.snapshots
            viewer.receive(connect(feed, store, last_id))
            connected = True
            new_revs = viewer.revs[before:]
            if resumable:  # no duplicate and no lost revision
                assert viewer.snapshots == snapshots
                start = int(viewer.revs[before - 1]) if before else 0
                assert new_revs == list(range(start + 1, feed.rev + 1)) or \
                    (not new_revs and start == feed.rev)
            else:
                assert viewer.snapshots == snapshots + 1
        if connected:
            assert viewer.drives == store.drives
            assert viewer.statuses == store.statuses
    viewer.receive(connect(feed, store, viewer.last_id) if not connected else b"")
    assert (viewer.drives, viewer.statuses) == (store.drives, store.statuses)


def test_one_event_per_pass_carries_every_touched_serial_once():
    feed = ChangeFeed("e", max_events=10)
    store = ModelStore()
    for op in [("drive", "A", 1), ("drive", "A", 2), ("status", "A", 5), ("status", "B", 6)]:
        store.apply(op)
    encoded = store.end_pass(feed)
    [event] = parse_events(encoded)
    data = json.loads(event["data"])
    assert event["id"] == "e-1" and data["rev"] == 1 and data["wipe"] is False
    assert data["drives"] == {"A": store.drives["A"]}  # a status does not resend the drive
    assert data["status"] == {"A": store.statuses["A"], "B": store.statuses["B"]}
    assert store.end_pass(feed) is None and feed.rev == 1  # a quiet pass: no event


def test_wipe_event_says_so_and_carries_what_came_after_it():
    feed = ChangeFeed("e")
    store = ModelStore()
    store.apply(("drive", "A", 1))
    store.end_pass(feed)
    store.apply(("wipe", "", 0))
    store.apply(("status", "B", 3))
    data = json.loads(parse_events(store.end_pass(feed))[0]["data"])
    assert data["wipe"] is True
    assert data["drives"] == {} and data["status"] == {"B": store.statuses["B"]}


def test_window_bounded_by_count_then_snapshot():
    feed = ChangeFeed("e", max_events=3)
    store = ModelStore()
    for n in range(5):
        store.apply(("drive", "A", n))
        store.end_pass(feed)
    assert feed.rev == 5 and feed.oldest_rev == 3
    assert len(feed.since("e-2")) == 3      # 3, 4, 5: all still there
    assert feed.since("e-1") is None        # 2 left the window
    assert feed.since("e-5") == []          # up to date


def test_window_bounded_by_bytes_keeps_at_least_the_newest():
    feed = ChangeFeed("e", max_events=100, max_bytes=10)
    store = ModelStore()
    for n in range(3):
        store.apply(("drive", "A", n))
        store.end_pass(feed)
    assert feed.oldest_rev == 3 and feed.window_bytes > 10
    assert feed.since("e-2") is not None and feed.since("e-1") is None


@pytest.mark.parametrize("last_id", ["other-3", "e-9", "e-", "e-x", "-3", "", "e-3-1", "e--1",
                                     "e-" + "9" * 40, "\u00e9-1"])
def test_other_epoch_future_or_junk_id_gets_a_snapshot(last_id):
    feed = ChangeFeed("e")
    store = ModelStore()
    for n in range(3):
        store.apply(("drive", "A", n))
        store.end_pass(feed)
    assert feed.since(last_id) is None


def test_snapshot_embeds_the_replies_as_they_are():
    feed = ChangeFeed("abc")
    data = json.loads(feed.snapshot_data(b'{"A": {"x": 1}}', b'{"A": []}'))
    assert data == {"epoch": "abc", "rev": 0, "drives": {"A": {"x": 1}}, "status": {"A": []}}


def test_epoch_is_the_start_time_in_milliseconds_hex():
    assert make_epoch(1.5) == "5dc"
    assert make_epoch(1796675713.657) != make_epoch(1796675713.658)


def test_line_breaks_in_json_whitespace_stay_inside_one_data_line():
    encoded = server_sent_event(b'{"a":\r\n 1,\r"b":\n2}', "change", "e-1")
    assert encoded == b'id: e-1\nevent: change\ndata: {"a":  1, "b": 2}\n\n'
    assert json.loads(parse_events(encoded)[0]["data"]) == {"a": 1, "b": 2}


# --- the store's hooks: which changes are noted for the feed (drive_store.touched) -------------

def test_store_notes_every_content_change_and_not_a_repeat():
    from test_drive_store import T0, announce, announcement_bytes, status
    from DriveStateMonitor.drive_store import DriveStore

    store = DriveStore(drive_lifetime=10.0)
    raw = announcement_bytes("N1")
    announce(store, raw, T0)
    assert store.touched is None  # nobody collects: nothing is kept
    store.touched, store.touched_status = set(), set()
    announce(store, announcement_bytes("N2"), T0)
    assert store.touched == {"N2"}                      # first heard
    store.touched.clear()
    assert store.refresh_repeat(raw, T0 + 3, "10.20.30.41", "eth0") == "N1"
    assert store.touched == set()                       # a repeat: last_seen only
    store.refresh_repeat(raw, T0 + 4, "10.20.30.99", "eth0")
    assert store.touched == {"N1"}                      # heard from another address
    store.touched.clear()
    store.refresh_repeat(raw, T0 + 5, "10.20.30.99", "eth1")
    assert store.touched == {"N1"}                      # ... or another interface
    store.touched.clear()
    announce(store, announcement_bytes("N1", ip="10.0.0.1"), T0 + 6, "10.20.30.99", "eth1")
    assert store.touched == {"N1"}                      # fields changed
    store.touched.clear()
    assert sorted(store.expire_due(T0 + 100)) == ["N1", "N2"]
    assert store.touched == {"N1", "N2"}                # expired
    store.touched.clear()
    store.refresh_repeat(announcement_bytes("N1", ip="10.0.0.1"), T0 + 101, "10.20.30.99", "eth1")
    assert store.touched == {"N1"}                      # heard again after expiring
    store.touched.clear()
    status(store, "S1", 1, "ok")
    assert store.touched == set() and store.touched_status == {"S1"}  # a status
    assert not store.wiped
    store.wipe(T0 + 102)
    assert store.wiped and store.touched == store.touched_status == set()  # every row forgotten
