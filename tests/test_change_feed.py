"""The change feed (change_feed.py), pure: revisions, the window, resumption, and a client that
applies snapshot (whole or in parts, cut off part-way or not) + changes ending with exactly the
state the JSON endpoints show."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor.change_feed import DEFAULT_PART_ROWS, ChangeFeed, make_epoch
from DriveStateMonitor.http_protocol import server_sent_event


class JsonRows:
    """The rows /api/drives and /api/status show, as plain dicts, served as the store serves them
    (whole bodies, a row, the snapshot's rows)."""

    def __init__(self) -> None:
        self.drives: Dict[str, Any] = {}
        self.statuses: Dict[str, List[Any]] = {}

    def drives_json(self) -> bytes:
        return json.dumps(self.drives).encode()

    def status_json(self) -> bytes:
        return json.dumps(self.statuses).encode()

    def drive_row(self, serial: str) -> Optional[bytes]:
        return json.dumps(self.drives[serial]).encode() if serial in self.drives else None

    def status_row(self, serial: str) -> Optional[bytes]:
        return json.dumps(self.statuses[serial]).encode() if serial in self.statuses else None

    def snapshot_rows(self) -> List[Tuple[str, Optional[bytes], Optional[bytes]]]:
        """As DriveStore.snapshot_rows: drives first, then serials with statuses only."""
        return [(serial, self.drive_row(serial), self.status_row(serial))
                for serial in list(self.drives) + [s for s in self.statuses
                                                   if s not in self.drives]]


class ModelStore(JsonRows):
    """JsonRows with the store's touched sets, changed by `apply`."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: set = set()
        self.touched_status: set = set()
        self.wiped = False

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
    """A page: rows by serial, the last id seen, every rev received. A snapshot in parts is
    applied as the page does (drive_rows.js): each part sets its rows at once, and only
    `snapshot-end` forgets the rows no part named."""

    def __init__(self, part_rows: int = DEFAULT_PART_ROWS) -> None:
        self.drives: Dict[str, Any] = {}
        self.statuses: Dict[str, Any] = {}
        self.last_id: Optional[str] = None
        self.revs: List[int] = []
        self.snapshots = 0
        self.part_rows = part_rows
        self.pending: Optional[Dict[str, Any]] = None  # a snapshot in parts under way

    def receive_part(self, event: Dict[str, str], data: Dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "snapshot-start":
            assert "id" not in event  # a cut-off snapshot leaves the client's id as it was
            self.pending = {"epoch": data["epoch"], "rev": data["rev"], "parts": data["parts"],
                            "got": 0, "drives": set(self.drives), "statuses": set(self.statuses)}
            return
        pending = self.pending
        assert pending is not None and (data["epoch"], data["rev"]) == (pending["epoch"],
                                                                        pending["rev"])
        if kind == "snapshot-part":
            assert "id" not in event
            pending["got"] += 1
            assert data["part"] == pending["got"]
            assert 0 < len(set(data["drives"]) | set(data["status"])) <= self.part_rows
            for table, unseen, rows in ((self.drives, pending["drives"], data["drives"]),
                                        (self.statuses, pending["statuses"], data["status"])):
                table.update(rows)
                unseen.difference_update(rows)
            return
        assert kind == "snapshot-end" and pending["got"] == data["parts"] == pending["parts"]
        for serial in pending["drives"]:
            del self.drives[serial]
        for serial in pending["statuses"]:
            del self.statuses[serial]
        self.pending = None
        self.snapshots += 1

    def receive(self, stream: bytes) -> None:
        for event in parse_events(stream):
            data = json.loads(event["data"])
            if event["event"] in ("snapshot-start", "snapshot-part", "snapshot-end"):
                self.receive_part(event, data)
                if event["event"] != "snapshot-end":
                    continue
            assert event["id"] == "%s-%d" % (data["epoch"], data["rev"])
            if event["event"] == "snapshot-end":
                pass
            elif event["event"] == "snapshot":
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


def connect(feed: ChangeFeed, store: ModelStore, last_id: Optional[str],
            part_rows: Optional[int] = None, cut: Optional[int] = None) -> bytes:
    """What EventStreams.start sends: the missed events, or a snapshot (in parts of `part_rows`
    rows when given; only its first `cut` events when given: the connection dropped)."""
    missed = feed.since(last_id)
    if missed is None and part_rows is not None:
        events = feed.snapshot_parts(store.snapshot_rows(), server_sent_event, part_rows)
        return b"".join(events[:cut])
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
                            st.sampled_from(["stay", "drop", "resume", "fresh", "cut"]),
                            st.integers(0, 6)), max_size=25)


@settings(max_examples=300)
@given(passes, st.integers(1, 6), st.integers(200, 5000), st.sampled_from([None, 1, 2, 3]))
def test_snapshot_and_changes_end_with_the_endpoints_state(script, max_events, max_bytes,
                                                           part_rows):
    feed = ChangeFeed("e1", max_events=max_events, max_bytes=max_bytes)
    store = ModelStore()
    viewer = Viewer(part_rows or DEFAULT_PART_ROWS)
    viewer.receive(connect(feed, store, None, part_rows))
    connected = True
    for changes, action, cut in script:
        for op in changes:
            store.apply(op)
        encoded = store.end_pass(feed)
        if connected and encoded is not None:
            viewer.receive(encoded)
        if action == "drop":
            connected = False
        elif action == "cut":
            # A fresh snapshot cut off after `cut` events, then a reconnection with the id the
            # viewer had: what is left of the cut snapshot must not spoil the rows.
            viewer.receive(connect(feed, store, None, part_rows, cut))
            viewer.receive(connect(feed, store, viewer.last_id, part_rows))
            connected = True
        elif action in ("resume", "fresh") or not connected:
            before = len(viewer.revs)
            last_id = None if action == "fresh" else viewer.last_id
            resumable = feed.since(last_id) is not None
            snapshots = viewer.snapshots
            viewer.receive(connect(feed, store, last_id, part_rows))
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
    viewer.receive(connect(feed, store, viewer.last_id, part_rows) if not connected else b"")
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


def test_snapshot_in_parts_bounded_by_rows_and_bytes_with_one_id_at_the_end():
    feed = ChangeFeed("abc")
    store = ModelStore()
    for n in range(7):
        store.apply(("drive", "D%d" % n, n))
        store.apply(("status", "D%d" % n, n))
    store.apply(("status", "S", 1))  # statuses only, never announced
    store.apply(("drive", "BIG", 1))
    store.drives["BIG"]["blob"] = "x" * 3000  # a row bigger than a part on its own
    store.end_pass(feed)
    events = parse_events(b"".join(feed.snapshot_parts(store.snapshot_rows(), server_sent_event,
                                                       part_rows=3, part_bytes=1000)))
    assert [e["event"] for e in events] == ["snapshot-start"] + ["snapshot-part"] * 5 + \
        ["snapshot-end"]
    assert [e.get("id") for e in events] == [None] * 6 + ["abc-1"]
    start, parts, end = (json.loads(events[0]["data"]), [json.loads(e["data"]) for e in events[1:-1]],
                         json.loads(events[-1]["data"]))
    assert start == {"epoch": "abc", "rev": 1, "parts": 5, "rows": 9}
    assert end == {"epoch": "abc", "rev": 1, "parts": 5}
    drives: Dict[str, Any] = {}
    statuses: Dict[str, Any] = {}
    for number, (event, part) in enumerate(zip(events[1:-1], parts), 1):
        assert part["part"] == number and (part["epoch"], part["rev"]) == ("abc", 1)
        serials = set(part["drives"]) | set(part["status"])
        assert 1 <= len(serials) <= 3
        assert len(event["data"]) <= 1000 + 100 or serials == {"BIG"}  # rows, plus the frame
        assert set(part["status"]) <= serials and not set(drives) & set(part["drives"])
        for serial in part["drives"]:  # a drive and its statuses arrive in the same part
            assert (serial in part["status"]) == (serial in store.statuses)
        drives.update(part["drives"])
        statuses.update(part["status"])
    assert drives == store.drives and statuses == store.statuses
    empty = parse_events(b"".join(ChangeFeed("e").snapshot_parts([], server_sent_event)))
    assert [json.loads(e["data"]) for e in empty] == [
        {"epoch": "e", "rev": 0, "parts": 0, "rows": 0}, {"epoch": "e", "rev": 0, "parts": 0}]


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


def test_store_snapshot_rows_are_the_rows_of_its_replies():
    from test_drive_store import T0, announce, announcement_bytes, status
    from DriveStateMonitor.drive_store import DriveStore

    store = DriveStore(drive_lifetime=10.0)
    announce(store, announcement_bytes("N1"), T0)
    announce(store, announcement_bytes("N2"), T0)
    status(store, "N1", 1, "ok")
    status(store, "N1", 2, "busy")
    status(store, "S1", 3, "orphan")  # statuses only
    store.expire_due(T0 + 100)         # a tail that changed after the reply was joined
    announce(store, announcement_bytes("N2", ip="10.0.0.1"), T0 + 101)
    rows = list(store.snapshot_rows())
    assert [serial for serial, _, _ in rows] == ["N1", "N2", "S1"]
    drives = {serial: json.loads(drive) for serial, drive, _ in rows if drive is not None}
    statuses = {serial: json.loads(history) for serial, _, history in rows if history is not None}
    assert drives == json.loads(store.multicast_json())
    assert statuses == json.loads(store.status_json())
    assert drives["N1"]["state"] == "expired" and drives["N2"]["state"] == "alive"
