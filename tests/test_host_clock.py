"""The monotonic rule (host_clock.py): deadlines follow the monotonic clock, the wall clock only what
is shown and kept. Each test drives the stores with an injected pair of clocks and steps the wall
one a day back or forward while the monotonic one advances normally."""
import json
from typing import Any, List

import pytest

from DriveStateMonitor.drive_store import ALIVE, EXPIRED, DriveStore
from DriveStateMonitor.drive_view import DriveView
from DriveStateMonitor.drive_publisher import DrivePublisher
from DriveStateMonitor.host_clock import (HostClock, Moment, monotonic_deadline, restored_moment,
                                          wall_deadline, wall_of)
from DriveStateMonitor.persistence import Loaded
from DriveStateMonitor.statserv_tree import EXPIRED as EXPIRED_WORD, Tree
from DriveStateMonitor.store_state import JournaledTree, StoreState

DAY = 86400.0
WALL_START = 1_700_000_000.0


class SteppableClocks:
    """A monotonic and a wall clock; `advance` moves both, `step_wall` only the wall one."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = WALL_START
        self.clock = HostClock(lambda: self.mono, lambda: self.wall)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds

    def __call__(self) -> Moment:
        return self.clock()


class Subscriber:
    def __init__(self) -> None:
        self.notified: List[str] = []

    def notify(self, path: str) -> None:
        self.notified.append(path)


def announce(store: DriveStore, serial: str, now: float) -> bytes:
    fields = {"serial_number": serial, "model": "ST4000NK0001"}
    raw = json.dumps(fields).encode()
    assert store.record_announcement(serial, fields, raw, now, "10.0.0.1", "lo")
    return raw


def create(tree: Tree, path: str, now: float, lifetime: float = 0) -> None:
    tree.touch(path, now)
    tree.put(path, "1", now, lifetime=lifetime)


# --- the helpers ---------------------------------------------------------------------------------
def test_moment_is_its_monotonic_reading_and_carries_the_wall_one():
    moment = HostClock(lambda: 12.5, lambda: WALL_START)()
    assert moment == 12.5 and moment.wall == WALL_START
    assert type(moment + 1) is float and moment + 1 == 13.5
    assert wall_of(moment) == WALL_START and wall_of(7.0) == 7.0


def test_a_restored_time_is_never_in_the_future():
    now = Moment(50.0, WALL_START)
    assert restored_moment(WALL_START - 30, now) == 20.0
    future = restored_moment(WALL_START + DAY, now)  # the clock was stepped back since
    assert future == 50.0 and future.wall == WALL_START + DAY


def test_a_stored_deadline_keeps_at_most_its_lifetime():
    now = Moment(50.0, WALL_START)
    assert wall_deadline(55.0, now) == WALL_START + 5
    assert monotonic_deadline(WALL_START + 5, 10.0, now) == 55.0
    assert monotonic_deadline(WALL_START + DAY, 10.0, now) == 60.0  # capped
    assert monotonic_deadline(WALL_START - 5, 10.0, now) == 45.0   # overdue stays overdue


# --- the Status Server tree -----------------------------------------------------------------------
@pytest.mark.parametrize("step", [-DAY, DAY])
def test_a_wall_step_changes_no_object_lifetime(step):
    clocks = SteppableClocks()
    tree = Tree()
    create(tree, "/short", clocks(), lifetime=5)
    create(tree, "/long", clocks(), lifetime=3600)
    clocks.step_wall(step)
    clocks.advance(4)
    assert tree.expire_due(clocks()) == 0
    assert tree.get("/short", clocks()) == "1" and tree.get("/long", clocks()) == "1"
    clocks.advance(1.5)
    assert tree.expire_due(clocks()) == 1
    assert tree.get("/short", clocks()) is EXPIRED_WORD
    assert tree.get("/long", clocks()) == "1"
    assert tree.next_deadline() == pytest.approx(1000.0 + 3600)


def test_stat_time_is_the_wall_clock():
    clocks = SteppableClocks()
    tree = Tree()
    clocks.step_wall(-DAY)
    create(tree, "/x", clocks(), lifetime=5)
    assert tree.stat("/x", clocks())["time"] == WALL_START - DAY


@pytest.mark.parametrize("step", [-DAY, DAY])
def test_a_wall_step_changes_no_minperiod(step):
    clocks = SteppableClocks()
    tree = Tree()
    subscriber = Subscriber()
    create(tree, "/x", clocks())
    tree.monitor("/x", subscriber, clocks(), min_period=10)
    tree.put("/x", "2", clocks())
    assert subscriber.notified == ["/x"]
    tree.collect(subscriber, None, clocks())
    tree.put("/x", "3", clocks())  # inside the quiet period: held back
    clocks.step_wall(step)
    clocks.advance(5)
    tree.expire_due(clocks())
    assert subscriber.notified == ["/x"]
    clocks.advance(5)
    tree.expire_due(clocks())
    assert subscriber.notified == ["/x", "/x"]


# --- the drive store ------------------------------------------------------------------------------
def test_a_wall_step_back_does_not_keep_a_silent_drive_alive():
    clocks = SteppableClocks()
    store = DriveStore(drive_lifetime=30)
    announce(store, "D1", clocks())
    clocks.step_wall(-DAY)
    clocks.advance(31)
    assert store.next_deadline() <= clocks()
    assert store.expire_due(clocks()) == ["D1"]
    assert store.drive_view("D1")["state"] == EXPIRED


def test_a_wall_step_forward_does_not_expire_a_drive_heard_lately():
    clocks = SteppableClocks()
    store = DriveStore(drive_lifetime=30)
    announce(store, "D1", clocks())
    clocks.step_wall(DAY)
    clocks.advance(1)
    assert store.expire_due(clocks()) == []
    view = store.drive_view("D1")
    assert view["state"] == ALIVE
    assert view["last_seen_epoch"] == WALL_START  # what is shown: the wall clock when heard


# --- restore: from stored wall times --------------------------------------------------------------
def make_state(clocks: SteppableClocks, records: List[Any]) -> StoreState:
    store = DriveStore(history=20, drive_lifetime=60)
    tree = JournaledTree()
    DriveView(store, tree, clocks())
    state = StoreState(store, tree, DrivePublisher(tree, 60))
    state.attach(records.append)
    return state


def restore(snapshot: Any, records: List[Any], clocks: SteppableClocks) -> StoreState:
    fresh = make_state(clocks, [])
    loaded = Loaded()
    loaded.snapshot = snapshot
    loaded.records = records
    fresh.attach(None)
    fresh.restore(loaded, clocks())
    return fresh


def test_snapshot_and_journal_keep_wall_times():
    clocks = SteppableClocks()
    records: List[Any] = []
    state = make_state(clocks, records)
    create(state.tree, "/x", clocks(), lifetime=5)
    announce(state.store, "D1", clocks())
    state.announced("D1", state.store.drives["D1"].raw, clocks(), "10.0.0.1", "lo")
    clocks.advance(2)
    snapshot = json.loads(json.dumps(state.snapshot(clocks())))
    assert snapshot["saved_at"] == WALL_START + 2
    assert snapshot["drives"][0][2] == WALL_START
    entry = next(e for e in snapshot["tree"] if e["path"] == "/x")
    assert entry["deadline"] == WALL_START + 5 and entry["mtime"] == WALL_START
    assert [r[0] for r in records[:2]] == ["tt", "tp"]
    assert records[0][2] == WALL_START and records[1][3] == WALL_START
    assert repr(WALL_START).encode() in records[2] and b"1000.0" not in records[2]  # "a"


def test_restore_after_the_clock_stepped_back_keeps_at_most_the_lifetime():
    clocks = SteppableClocks()
    state = make_state(clocks, [])
    create(state.tree, "/x", clocks(), lifetime=5)
    announce(state.store, "D1", clocks())
    snapshot = json.loads(json.dumps(state.snapshot(clocks())))
    clocks.step_wall(-DAY)  # restarted with the clock a day back: the stored times lie ahead
    fresh = restore(snapshot, [], clocks)
    now = clocks()
    assert fresh.tree.next_deadline() == pytest.approx(float(now) + 5)
    assert fresh.store.next_deadline() == pytest.approx(float(now) + 60)
    clocks.advance(61)
    fresh.tree.expire_due(clocks())
    assert fresh.tree.get("/x", clocks()) is EXPIRED_WORD
    assert fresh.store.expire_due(clocks()) == ["D1"]


def test_restore_counts_the_time_passed_by_the_wall_clock():
    clocks = SteppableClocks()
    records: List[Any] = []
    state = make_state(clocks, records)
    create(state.tree, "/x", clocks(), lifetime=3600)
    create(state.tree, "/y", clocks(), lifetime=3600)
    clocks.advance(3000)
    fresh = restore(json.loads(json.dumps(state.snapshot(clocks()))), [], clocks)
    assert fresh.tree.next_deadline() == pytest.approx(float(clocks()) + 600)
    # replayed from the journal alone: the same remaining time
    replayed = restore(None, json.loads(json.dumps(records)), clocks)
    assert replayed.tree.next_deadline() == pytest.approx(float(clocks()) + 600)
    assert replayed.tree.stat("/x", clocks())["time"] == WALL_START


def test_a_wall_step_forward_journals_no_expiry():
    clocks = SteppableClocks()
    records: List[Any] = []
    state = make_state(clocks, records)
    create(state.tree, "/long", clocks(), lifetime=3600)
    clocks.step_wall(DAY)
    clocks.advance(10)
    assert state.tree.expire_due(clocks()) == 0
    snapshot = json.loads(json.dumps(state.snapshot(clocks())))
    entry = next(e for e in snapshot["tree"] if e["path"] == "/long")
    assert entry["value"] == "1" and "word" not in entry
    # the deadline is kept as the wall time it now falls at: 3590 s ahead of the stepped clock
    assert entry["deadline"] == pytest.approx(clocks().wall + 3590)
    assert [r[0] for r in records] == ["tt", "tp"]
    fresh = restore(snapshot, [], clocks)
    assert fresh.tree.get("/long", clocks()) == "1"
