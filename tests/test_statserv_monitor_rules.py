"""The Status Server's monitor rules, on the pure tree with an injected clock.

The rules (spec status-server.md, "Monitors", after CFHT): the first change after a collect sends
one notice; further changes are coalesced until the subscriber collects (UPDATES, GET of the object,
or MONITOR again), and the collect gives the latest values; DEADBAND (numbers): a change smaller than
the deadband from the value last reported is not a change, for an object and for each numeric entry
of a directory; MINPERIOD: at most one notice per period, the pending one sent when it ends;
re-issuing MONITOR applies its new options at once; UNMONITOR stops it all. A hypothesis state
machine checks them against a small model; unit tests pin the cases the issue reported.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from DriveStateMonitor.statserv_protocol import StatServSession
from DriveStateMonitor.statserv_tree import (
    DIRECTORY, EXPIRED, NONEXISTENT, UNDEFINED, Tree, ValueWord,
)
from test_statserv_tree import Recorder, error_code  # the tree's tests' subscriber and error helper


# -- the model ----------------------------------------------------------------------------------

DIR = "/d"
ENTRIES = ("x", "y")


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


class ModelMonitor:
    """What one monitor should do, written from the rules rather than from the tree's code."""

    def __init__(self, path: str, deadband: float, min_period: float, values: Dict[str, Any]) -> None:
        self.path = path
        self.deadband = deadband
        self.min_period = min_period
        self.dirty: Set[str] = set()       # '' for the object itself, else an entry's name
        self.notified = False
        self.last_notice = -math.inf
        self.base: Dict[str, Any] = {}      # value last reported, per '' or entry name
        self.collected(values, everything=True)

    @property
    def is_dir(self) -> bool:
        return self.path == DIR

    def names_of(self, values: Dict[str, Any]) -> List[str]:
        return list(ENTRIES) if self.is_dir else [""]

    def value_of(self, name: str, values: Dict[str, Any]) -> Any:
        return values[name if name else self.path.rpartition("/")[2]]

    def collected(self, values: Dict[str, Any], everything: bool = False) -> None:
        """What the client was just given: MONITOR's answer (every name), or a collect, which
        reports a directory's changed entries only, so an entry changed within its deadband keeps
        the value last reported before (spec: "from each numeric entry's own last reported
        value")."""
        names = self.names_of(values) if everything or not self.is_dir else sorted(self.dirty)
        self.base.update({name: self.value_of(name, values) for name in names})
        self.dirty = set()
        self.notified = False

    def saw(self, name: str, new: Any, now: float) -> Optional[str]:
        """A change of `name`; returns the notice due now, if any."""
        old = self.base.get(name)
        if self.deadband > 0 and _is_number(new) and _is_number(old) \
                and abs(new - old) < self.deadband:
            return None
        self.dirty.add(name)
        return self.tick(now)

    def tick(self, now: float) -> Optional[str]:
        if self.dirty and not self.notified and now >= self.last_notice + self.min_period:
            self.notified = True
            self.last_notice = now
            return self.path
        return None


class MonitorRules(RuleBasedStateMachine):
    """One subscriber, a directory /d with int objects x and y, monitors on /d/x, /d/y and /d."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.tree = Tree()
        self.subscriber = Recorder()
        self.tree.touch_dir(DIR, self.now)
        self.values: Dict[str, Any] = {}
        self.lifetimes: Dict[str, float] = {name: 0.0 for name in ENTRIES}
        self.deadlines: Dict[str, Optional[float]] = {name: None for name in ENTRIES}
        for name in ENTRIES:
            self.tree.touch(DIR + "/" + name, self.now, type_name="int")
            self.values[name] = UNDEFINED
        self.monitors: Dict[str, ModelMonitor] = {}
        self.expected: List[str] = []

    # -- changes --------------------------------------------------------------------------------
    def _changed(self, name: str, value: Any) -> None:
        self.values[name] = value
        for mon in self.monitors.values():
            if mon.is_dir:
                notice = mon.saw(name, value, self.now)
            elif mon.path == DIR + "/" + name:
                notice = mon.saw("", value, self.now)
            else:
                continue
            if notice:
                self.expected.append(notice)

    @rule(name=st.sampled_from(ENTRIES), value=st.integers(0, 6),
          lifetime=st.sampled_from([None, None, 0.0, 1.0, 3.0]))
    def put(self, name, value, lifetime):
        """PUT [LIFETIME=s]: every PUT restarts the lifetime; its end is a change (EXPIRED)."""
        path = DIR + "/" + name
        if self.values[name] is NONEXISTENT:
            assert error_code(self.tree.put, path, str(value), self.now,
                              lifetime=lifetime) == "NONEXISTENT"
            return
        self.tree.put(path, str(value), self.now, lifetime=lifetime)
        if lifetime is not None:
            self.lifetimes[name] = lifetime
        self.deadlines[name] = self.now + self.lifetimes[name] if self.lifetimes[name] else None
        if self.values[name] != value or type(self.values[name]) is not int:
            self._changed(name, value)

    @rule(name=st.sampled_from(ENTRIES))
    def remove(self, name):
        path = DIR + "/" + name
        if self.values[name] is NONEXISTENT:
            return
        self.tree.remove(path, self.now)
        self.lifetimes[name], self.deadlines[name] = 0.0, None
        self._changed(name, NONEXISTENT)

    @rule(name=st.sampled_from(ENTRIES))
    def touch(self, name):
        self.tree.touch(DIR + "/" + name, self.now, type_name="int")
        if self.values[name] is NONEXISTENT:
            self._changed(name, UNDEFINED)

    @rule(seconds=st.sampled_from([0.0, 0.25, 1.0, 2.0, 5.0]))
    def advance(self, seconds):
        self.now += seconds
        self.tree.expire_due(self.now)
        for name in ENTRIES:
            deadline = self.deadlines[name]
            if deadline is not None and deadline <= self.now:
                self.deadlines[name] = None
                if self.values[name] is not EXPIRED:
                    self._changed(name, EXPIRED)
        for mon in self.monitors.values():
            notice = mon.tick(self.now)
            if notice:
                self.expected.append(notice)

    # -- monitors -------------------------------------------------------------------------------
    @rule(path=st.sampled_from([DIR, DIR + "/x", DIR + "/y"]),
          deadband=st.sampled_from([0.0, 1.5, 3.0]), min_period=st.sampled_from([0.0, 1.0, 3.0]))
    def monitor(self, path, deadband, min_period):
        answer = self.tree.monitor(path, self.subscriber, self.now, deadband=deadband,
                                   min_period=min_period)
        old = self.monitors.get(path)
        mon = ModelMonitor(path, deadband, min_period, self.values)
        if old is not None:  # re-configured: options replaced now, the last notice still counts
            mon.last_notice = old.last_notice
        self.monitors[path] = mon
        if path == DIR:
            assert answer is DIRECTORY
        else:
            assert _same(answer, self.values[path.rpartition("/")[2]])

    @rule(path=st.sampled_from([DIR, DIR + "/x", DIR + "/y"]))
    def unmonitor(self, path):
        if path not in self.monitors:
            assert error_code(self.tree.unmonitor, path, self.subscriber) == "NONEXISTENT"
            return
        self.tree.unmonitor(path, self.subscriber)
        del self.monitors[path]

    @rule()
    def updates(self):
        got = self.tree.collect(self.subscriber, None, self.now)
        want: Dict[str, Any] = {}
        for mon in self.monitors.values():
            if mon.dirty:
                for name in mon.dirty:
                    path = mon.path if not name else mon.path + "/" + name
                    want[path] = mon.value_of(name, self.values)
                mon.collected(self.values)
        assert len(got) == len(dict(got)), "a path reported twice: %r" % (got,)
        assert _pairs(got) == _pairs(want.items())

    @rule(name=st.sampled_from(ENTRIES))
    def get(self, name):
        """GET of a monitored object collects its monitor (not its directory's)."""
        path = DIR + "/" + name
        if self.values[name] is NONEXISTENT:
            return
        assert _same(self.tree.get(path, self.now), self.values[name])
        got = self.tree.collect(self.subscriber, path, self.now)
        mon = self.monitors.get(path)
        if mon is None:
            assert got == []
            return
        assert _pairs(got) == _pairs([(path, self.values[name])] if mon.dirty else [])
        mon.collected(self.values)

    # -- what the subscriber was told -----------------------------------------------------------
    @invariant()
    def notices_match_the_model(self):
        assert sorted(self.subscriber.notified) == sorted(self.expected)
        self.subscriber.notified.clear()
        self.expected.clear()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _pairs(items) -> Set[Tuple[str, str]]:
    return {(path, "%s:%r" % (type(value).__name__, value)) for path, value in items}


TestMonitorRules = MonitorRules.TestCase
TestMonitorRules.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


# -- the cases the issue reported, one by one ----------------------------------------------------

def test_reissued_monitor_with_a_shorter_minperiod_applies_it_at_once():
    tree, subscriber = Tree(), Recorder()
    tree.touch("/o", 0.0, type_name="int")
    tree.monitor("/o", subscriber, 0.0, min_period=3600.0)
    tree.put("/o", "1", 1.0)                      # first change: notified at once
    assert subscriber.notified == ["/o"]
    tree.monitor("/o", subscriber, 2.0, min_period=5.0)   # re-configured (and collected)
    tree.put("/o", "2", 3.0)                      # within the new period: waits for its end
    assert subscriber.notified == ["/o"]
    assert tree.next_deadline() == 6.0            # 1.0 + 5, not 1.0 + 3600
    tree.expire_due(6.0)
    assert subscriber.notified == ["/o", "/o"]
    assert tree.collect(subscriber, None, 6.0) == [("/o", 2)]


def test_a_change_waiting_for_a_long_period_is_told_when_a_shorter_one_reissued_ends():
    """Found by the state machine: a change already waiting for MINPERIOD=3's end kept that
    timer when MONITOR was re-issued with MINPERIOD=1, so the next change was told at 3, not 1."""
    tree, subscriber = Tree(), Recorder()
    tree.touch("/o", 0.0, type_name="int")
    tree.monitor("/o", subscriber, 0.0, min_period=3.0)
    tree.put("/o", "1", 0.0)                      # told at once; quiet until 3
    tree.collect(subscriber, None, 0.0)
    tree.put("/o", "2", 0.0)                      # waits: a timer at 3
    tree.monitor("/o", subscriber, 0.0, min_period=1.0)   # re-configured: quiet until 1
    tree.put("/o", "3", 0.0)
    assert tree.next_deadline() == 1.0
    tree.expire_due(1.0)
    assert subscriber.notified == ["/o", "/o"]
    assert tree.collect(subscriber, None, 1.0) == [("/o", 3)]


def test_reissued_monitor_without_options_drops_them():
    tree, subscriber = Tree(), Recorder()
    tree.touch("/o", 0.0, type_name="float")
    tree.put("/o", "1.0", 0.0)
    tree.monitor("/o", subscriber, 0.0, deadband=10.0, min_period=60.0)
    tree.monitor("/o", subscriber, 0.0)           # MONITOR again, no DEADBAND, no MINPERIOD
    tree.put("/o", "1.5", 1.0)
    assert subscriber.notified == ["/o"]


def test_deadband_of_a_directory_monitor_applies_to_each_numeric_entry():
    tree, subscriber = Tree(), Recorder()
    for name, value in (("a", "10"), ("b", "100")):
        tree.touch("/dir/" + name, 0.0, type_name="int")
        tree.put("/dir/" + name, value, 0.0)
    tree.touch("/dir/s", 0.0)
    tree.put("/dir/s", "text", 0.0)
    tree.monitor("/dir", subscriber, 0.0, deadband=5.0)
    tree.put("/dir/a", "14", 1.0)                 # 4 from 10: within the deadband
    tree.put("/dir/b", "96", 1.0)                 # 4 from 100: within, measured from b's own value
    assert subscriber.notified == []
    tree.put("/dir/a", "15", 2.0)                 # 5 from the 10 last reported: a change
    assert subscriber.notified == ["/dir"]
    assert tree.collect(subscriber, None, 2.0) == [("/dir/a", 15)]
    tree.put("/dir/a", "19", 3.0)                 # 4 from the 15 now reported: not a change
    tree.put("/dir/s", "other", 3.0)              # a string: every change counts
    assert tree.collect(subscriber, None, 3.0) == [("/dir/s", "other")]
    tree.touch("/dir/new", 4.0, type_name="int")  # a new entry and a removal are changes
    tree.remove("/dir/b", 4.0)
    assert tree.collect(subscriber, None, 4.0) == [("/dir/b", NONEXISTENT), ("/dir/new", UNDEFINED)]


@pytest.mark.parametrize("type_name", ["string", "bool"])
def test_deadband_on_an_object_it_cannot_apply_to_is_refused(type_name):
    tree, subscriber = Tree(), Recorder()
    tree.touch("/o", 0.0, type_name=type_name)
    assert error_code(tree.monitor, "/o", subscriber, 0.0, deadband=1.0) == "TYPE"
    assert tree.monitored_paths(subscriber) == []  # nothing half-made
    assert tree.stat("/o")["monitors"] == 0
    tree.monitor("/o", subscriber, 0.0)            # without a deadband it is fine
    assert error_code(tree.monitor, "/o", subscriber, 0.0, deadband=1.0) == "TYPE"


def test_deadband_is_accepted_on_numbers_directories_and_names_not_yet_there():
    tree, subscriber = Tree(), Recorder()
    tree.touch("/i", 0.0, type_name="int")
    tree.touch_dir("/dir", 0.0)
    for path in ("/i", "/dir", "/absent"):
        tree.monitor(path, subscriber, 0.0, deadband=1.0)
    assert tree.monitored_paths(subscriber) == ["/absent", "/dir", "/i"]


def test_minperiod_of_a_directory_monitor_spaces_its_notices():
    tree, subscriber = Tree(), Recorder()
    tree.touch_dir("/dir", 0.0)
    tree.monitor("/dir", subscriber, 0.0, min_period=10.0)
    tree.touch("/dir/a", 1.0)
    assert subscriber.notified == ["/dir"]
    tree.collect(subscriber, None, 1.0)
    tree.touch("/dir/b", 2.0)
    tree.touch("/dir/c", 3.0)
    assert subscriber.notified == ["/dir"]          # quiet until 11
    tree.expire_due(10.9)
    assert subscriber.notified == ["/dir"]
    tree.expire_due(11.0)
    assert subscriber.notified == ["/dir", "/dir"]
    assert tree.collect(subscriber, None, 11.0) == [("/dir/b", UNDEFINED), ("/dir/c", UNDEFINED)]


def test_deadband_entries_are_kept_only_while_a_deadband_is_set():
    tree, subscriber = Tree(), Recorder()
    tree.touch("/dir/a", 0.0, type_name="int")
    tree.put("/dir/a", "1", 0.0)
    tree.monitor("/dir", subscriber, 0.0)
    monitor = tree._monitors_by_subscriber[subscriber]["/dir"]
    assert monitor.reported_entries == {}
    tree.monitor("/dir", subscriber, 0.0, deadband=2.0)
    assert monitor.reported_entries == {"a": 1}
    assert isinstance(NONEXISTENT, ValueWord)


# -- the same rules on the line protocol ----------------------------------------------------------

class LineSession:
    """A protocol session on `tree` with a clock the test moves."""

    def __init__(self, tree: Tree, clock: List[float]) -> None:
        self.session = StatServSession(tree, lambda: clock[0], is_local=True)

    def ask(self, line: str) -> str:
        self.session.receive_data(line.encode("ascii") + b"\n")
        return self.session.data_to_send().decode("utf-8")

    def pending(self) -> str:
        return self.session.data_to_send().decode("utf-8")


def test_line_protocol_directory_deadband_is_applied_not_just_accepted():
    tree, clock = Tree(), [0.0]
    watcher, writer = LineSession(tree, clock), LineSession(tree, clock)
    writer.ask("TOUCH /lab/t TYPE=float")
    writer.ask("PUT /lab/t 20.0")
    assert watcher.ask("MONITOR /lab DEADBAND=1.5") == '* t = "20.0"\n.\n'
    writer.ask("PUT /lab/t 21.0")
    assert watcher.pending() == ""
    writer.ask("PUT /lab/t 21.5")                 # 1.5 from the 20.0 reported
    assert watcher.pending() == "@ /lab\n"
    assert watcher.ask("UPDATES") == '* /lab/t = "21.5"\n.\n'


def test_line_protocol_refuses_deadband_on_a_string_and_reissue_applies_minperiod():
    tree, clock = Tree(), [0.0]
    watcher, writer = LineSession(tree, clock), LineSession(tree, clock)
    writer.ask("TOUCH /s")
    assert watcher.ask("MONITOR /s DEADBAND=1").startswith("! TYPE ")
    assert "* monitors=0" in watcher.ask("STAT /s")
    assert watcher.ask("MONITOR /s MINPERIOD=3600") == ". UNDEFINED\n"
    writer.ask("PUT /s a")
    assert watcher.pending() == "@ /s\n"
    assert watcher.ask("MONITOR /s MINPERIOD=2") == '. "a"\n'
    clock[0] = 1.0
    writer.ask("PUT /s b")
    assert watcher.pending() == ""                # quiet until 0 + 2, not 0 + 3600
    clock[0] = 2.0
    tree.expire_due(clock[0])
    assert watcher.pending() == "@ /s\n"
