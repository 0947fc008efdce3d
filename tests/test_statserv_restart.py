"""What a Status Server client sees across a real DSM restart on the same state dir.

CFHT reloads its store on restart; we keep every attribute STAT shows as it was. What cannot stay is
what belonged to the old process's connections, and each such change follows a rule:
- an AUTOEXPIRE object whose owner was connected reads EXPIRED (the owner's connection is gone), keeps
  its autoexpire flag, and has no owner; its time and revision say when it expired;
- holds and monitors die with their connections: usecount counts only the directory's entry (1),
  monitors is 0.
Everything else — name, kind, type, value, comment, lifetime, autoexpire, time, revision, entries — is
identical, whether the DSM stopped cleanly (SIGTERM: a final snapshot) or was killed (-9: the journal
is replayed). A client that reconnects re-establishes its monitors and reports only what changed.

Every DSM is started by the harness and stopped by its pid; waits are conditions with deadlines.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
from typing import Dict, List

import pytest

from dsm_harness import PACKAGE, wait_for
from DriveStateMonitor.statserv_client import EXPIRED, StatServClient
from test_durability import LineClient, kill9, new_state_dir, start, statserv

DSMCTL = os.path.join(PACKAGE, "dsmctl.py")

NAMES = ["/", "/r", "/r/auto", "/r/left", "/r/life", "/r/short", "/r/flag", "/r/undef", "/r/sub",
         "/r/sub/n", "/r/empty"]


def stat_all(client: LineClient) -> Dict[str, Dict[str, str]]:
    """STAT of every name, each as {attribute: text exactly as the server wrote it}."""
    result = {}
    for name in NAMES:
        lines = client.request("STAT " + name)
        assert lines[-1] == ".", (name, lines)
        result[name] = dict(line[2:].split("=", 1) for line in lines[:-1])
    return result


def build(dsm) -> List[LineClient]:
    """Objects of every kind, type and attribute; returns the connections that must stay open."""
    owner = statserv(dsm)
    owner.ok("REGISTER 4242 owner")
    owner.ok("TOUCHDIR / COMMENT='the lab store'")
    owner.ok("TOUCHDIR /r COMMENT='the restart test'")
    owner.ok("TOUCH /r/auto AUTOEXPIRE=1 TYPE=int COMMENT='owned, connected at the stop'")
    owner.ok("PUT /r/auto 5")
    owner.ok("TOUCH /r/life TYPE=float LIFETIME=3600 COMMENT='an hour to live'")
    owner.ok("PUT /r/life 2.5")
    owner.ok("TOUCH /r/short LIFETIME=0.2")
    owner.ok("PUT /r/short soon")
    owner.ok("TOUCH /r/flag TYPE=bool")
    owner.ok("PUT /r/flag yes")
    owner.ok("TOUCH /r/undef COMMENT='never given a value'")
    owner.ok("TOUCHDIR /r/sub")
    owner.ok("TOUCH /r/sub/n TYPE=int")
    owner.ok("PUT /r/sub/n 7")
    owner.ok("TOUCHDIR /r/empty COMMENT=nothing")
    owner.ok("MONITOR /r/life")
    owner.ok("MONITOR /r/sub/n")
    # An owner that leaves before the restart: its object reads EXPIRED, flag kept, no owner.
    leaver = statserv(dsm)
    leaver.ok("TOUCH /r/left AUTOEXPIRE=1 COMMENT='owner left'")
    leaver.ok("PUT /r/left here")
    leaver.close()
    observer = statserv(dsm)
    wait_for(lambda: observer.ask("GET /r/left") == ". EXPIRED", 10, "/r/left to expire")
    wait_for(lambda: observer.ask("GET /r/short") == ". EXPIRED", 10, "/r/short's lifetime")
    observer.close()
    return [owner]


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_every_stat_attribute_survives_a_restart(dsm_factory, stop):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    kept_open = build(first)
    observer = statserv(first)
    before = stat_all(observer)
    observer.close()
    assert before["/r/auto"]["autoexpire"] == "1" and before["/r/auto"]["owner"] == "owner[4242]"
    assert before["/r/left"]["autoexpire"] == "1" and before["/r/left"]["value"] == "EXPIRED"
    assert before["/r/life"]["monitors"] == "1" and before["/r/life"]["usecount"] == "3"
    if stop == "kill9":
        kill9(first)
    else:
        first.stop()
    for client in kept_open:
        client.close()

    second = start(dsm_factory, state_dir)
    observer = statserv(second)
    after = stat_all(observer)
    observer.close()

    expected = {name: dict(attributes) for name, attributes in before.items()}
    for attributes in expected.values():
        attributes["usecount"] = "1"       # holds and monitors died with their connections
        attributes["monitors"] = "0"
        if "owner" in attributes:
            attributes["owner"] = ""
    expected["/r/auto"]["value"] = "EXPIRED"  # its owner's connection is gone; the flag stays
    for name in NAMES:
        got = dict(after[name])
        if name == "/r/auto":  # expired by the restart: a change, so a later time and revision
            assert float(got["time"]) >= float(before[name]["time"])
            assert int(got["revision"]) > max(int(a["revision"]) for a in before.values())
            got["time"], got["revision"] = before[name]["time"], before[name]["revision"]
        assert got == expected[name], name


def test_autoexpire_flag_is_cleared_by_touch_autoexpire_0_and_that_survives_a_restart(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    owner = statserv(first)
    owner.ok("TOUCH /c/x AUTOEXPIRE=1")
    owner.ok("PUT /c/x on")
    owner.ok("TOUCH /c/x AUTOEXPIRE=0")
    assert "* autoexpire=0" in owner.request("STAT /c/x")
    kill9(first)
    owner.close()
    second = start(dsm_factory, state_dir)
    client = statserv(second)
    assert client.ask("GET /c/x") == '. "on"'   # no longer auto-expiring: the value stays
    assert "* autoexpire=0" in client.request("STAT /c/x")
    client.close()


# --- a client that reconnects ---------------------------------------------------------------------

def test_reconnecting_client_reports_only_what_changed_across_the_restart(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    first = start(dsm_factory, state_dir, run_dir=run_dir)
    socket_path = first.statserv_socket
    owner = StatServClient("owner", socket_path, reconnect_timeout=0)
    assert owner.logon() and owner.touch("/c/dir/auto", autoexpire=True)
    assert owner.put("/c/dir/auto", "on")
    watcher = StatServClient("watcher", socket_path, retry_pause=0.05, reconnect_timeout=20)
    assert watcher.logon() and watcher.touch("/c/same") and watcher.put("/c/same", "kept")
    assert watcher.touch("/c/dir/plain") and watcher.put("/c/dir/plain", "p")
    assert watcher.monitor("/c/same") == "kept"
    assert sorted(watcher.monitor("/c/dir")) == [("auto", "on"), ("plain", "p")]
    assert watcher.monitor("/c/dir/auto") == "on"
    try:
        first.stop()
        owner.logoff()  # its connection is gone with the old DSM: no one re-touches /c/dir/auto
        second = start(dsm_factory, state_dir, run_dir=run_dir)
        updates = watcher.wait_for_updates(15)
        assert watcher.reconnects == 1
        # /c/dir/auto expired with its owner's connection; /c/same and /c/dir/plain did not change.
        assert sorted(updates) == [("/c/dir/auto", EXPIRED)]
        assert watcher.wait_for_updates(0) == []
        writer = StatServClient("writer", second.statserv_socket)
        assert writer.logon() and writer.put("/c/same", "new")
        assert wait_for(lambda: watcher.wait_for_updates(1), 10, "the change") == [
            ("/c/same", "new")]
        writer.logoff()
    finally:
        watcher.logoff()


def test_reconnecting_client_reports_changes_made_while_it_was_away_within_its_deadband_rule(
        dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    first = start(dsm_factory, state_dir, run_dir=run_dir)
    watcher = StatServClient("watcher", first.statserv_socket, retry_pause=0.05,
                             reconnect_timeout=20)
    assert watcher.logon()
    for name in ("/n/small", "/n/big", "/n/text"):
        assert watcher.touch(name, type="float" if name != "/n/text" else None)
        assert watcher.put(name, "10" if name != "/n/text" else "a")
    assert watcher.monitor("/n/small", deadband=2) == "10.0"
    assert watcher.monitor("/n/big", deadband=2) == "10.0"
    assert watcher.monitor("/n/text") == "a"
    try:
        first.stop()
        second = start(dsm_factory, state_dir, run_dir=run_dir)
        writer = StatServClient("writer", second.statserv_socket)
        assert writer.logon()  # changes made before the watcher is back
        assert writer.put("/n/small", 11.5) and writer.put("/n/big", 12.5)
        assert writer.put("/n/text", "b")
        writer.logoff()
        updates = watcher.wait_for_updates(15)
        assert sorted(updates) == [("/n/big", "12.5"), ("/n/text", "b")]
    finally:
        watcher.logoff()


def test_reconnecting_client_reports_entries_gone_from_a_monitored_directory(dsm_factory):
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    first = dsm_factory.start(run_dir=run_dir)
    other = StatServClient("other", first.statserv_socket)
    assert other.logon() and other.touch("/g/theirs") and other.put("/g/theirs", "t")
    other.logoff()
    watcher = StatServClient("watcher", first.statserv_socket, retry_pause=0.05,
                             reconnect_timeout=20)
    assert watcher.logon() and watcher.touchdir("/g")
    assert watcher.monitor("/g") == [("theirs", "t")]
    try:
        first.stop()
        dsm_factory.start(run_dir=run_dir)  # a new state dir: only what the watcher replays
        assert watcher.wait_for_updates(15) == [("/g/theirs", "NONEXISTENT")]
    finally:
        watcher.logoff()


# --- dsmctl watch across a restart ---------------------------------------------------------------

def read_line(proc: subprocess.Popen, timeout: float = 15.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from watch within %g s" % timeout
    line = proc.stdout.readline()
    assert line, "watch ended: %s" % proc.stderr.read()
    return line.rstrip("\n")


def change_of(line: str) -> str:
    """`2026-...T12:00:00.123 /w/x = "v"` without its time stamp."""
    return line.split(" ", 1)[1]


def test_dsmctl_watch_prints_only_changes_across_a_dsm_restart(dsm_factory, procs):
    state_dir = new_state_dir(dsm_factory)
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    first = start(dsm_factory, state_dir, run_dir=run_dir)
    socket_path = first.statserv_socket
    setup = statserv(first)
    for line in ("TOUCH /w/same", "PUT /w/same kept", "TOUCH /w/changed", "PUT /w/changed before",
                 "TOUCH /w/dir/a TYPE=int", "PUT /w/dir/a 1"):
        setup.ok(line)
    owner = statserv(first)
    owner.ok("TOUCH /w/auto AUTOEXPIRE=1")
    owner.ok("PUT /w/auto on")
    watch = subprocess.Popen([sys.executable, DSMCTL, "--server", socket_path, "watch", "/w/same",
                              "/w/changed", "/w/dir", "/w/auto"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True)
    procs.append(watch)
    wait_for(lambda: "* monitors=1" in setup.request("STAT /w/auto"), 10, "the watch to monitor")
    setup.ok("PUT /w/changed one")
    assert change_of(read_line(watch)) == '/w/changed = "one"'

    first.stop()
    setup.close()
    owner.close()
    second = start(dsm_factory, state_dir, run_dir=run_dir)
    client = statserv(second)
    wait_for(lambda: "* monitors=1" in client.request("STAT /w/auto"), 20, "the watch to return")
    # What the restart changed (the owner's connection is gone) is printed once; then a new change.
    assert change_of(read_line(watch)) == "/w/auto = EXPIRED"
    client.ok("PUT /w/changed after")
    assert change_of(read_line(watch)) == '/w/changed = "after"'  # nothing unchanged before it
    client.ok("PUT /w/dir/a 2")
    assert change_of(read_line(watch)) == '/w/dir/a = "2"'
    client.close()
    watch.kill()
    watch.wait(10)


# --- the journal alone, pure: what a replay gives equals what STAT showed live ------------------

def replayed_stats(records, names, now):
    from DriveStateMonitor.persistence import Loaded
    from test_persistence_unit import make_state
    loaded = Loaded()
    loaded.records = records
    state = make_state()
    state.restore(loaded, now)
    return {name: state.tree.stat(name, now) for name in names}


def live_stats(tree, names, now):
    stats = {}
    for name in names:
        attributes = tree.stat(name, now)
        attributes.update(usecount=1, monitors=0)  # what dies with the process
        if "owner" in attributes:
            attributes["owner"] = None
        stats[name] = attributes
    return stats


def test_replay_of_a_lifetime_expiry_of_an_owned_object_keeps_it_owned():
    """An owned object that expired by its lifetime and got a new value still reads EXPIRED after a
    crash: the lifetime's end is not its owner leaving."""
    from test_persistence_unit import make_state
    records: List = []
    state = make_state()
    state.attach(records.append)
    owner = object()
    state.tree.touch("/o", 0.0, owner=owner, autoexpire=True, lifetime=1.0)
    state.tree.put("/o", "a", 0.0)
    state.tree.expire_due(1.0)                    # the lifetime ran out: journaled, kind "te"
    assert state.tree.get("/o", 1.0) is EXPIRED
    state.tree.put("/o", "b", 2.0)                # the owner, still connected, sets it again
    after = replayed_stats(records, ["/o"], 2.5)["/o"]  # before b's lifetime ends at 3
    assert after["value"] is EXPIRED and after["autoexpire"] is True


def test_replay_gives_stat_of_expired_removed_and_recreated_objects_as_they_were_live():
    from test_persistence_unit import make_state
    records: List = []
    state = make_state()
    state.attach(records.append)
    tree = state.tree
    first, second = object(), object()
    tree.touch_dir("/j", 0.0, owner=first, comment="journal")
    tree.touch("/j/short", 0.0, owner=first, lifetime=2.0, type_name="int")
    tree.put("/j/short", "3", 0.5)
    tree.touch("/j/re", 0.0, owner=first, autoexpire=True)
    tree.remove("/j/re", 1.0)                     # removed: first's leaving no longer concerns it
    tree.touch("/j/re", 1.5, owner=second, comment="someone else's now")
    tree.put("/j/re", "kept", 1.5)
    tree.set_value("/dsm/noise", 1, 1.6)          # a daemon change: revisions move, unjournaled
    tree.expire_due(2.5)                          # /j/short's lifetime ends at 2.5
    tree.release_owner(first, 3.0)
    names = ["/j", "/j/short", "/j/re"]
    live = live_stats(tree, names, 4.0)
    assert live["/j/re"]["value"] == "kept" and live["/j/short"]["value"] is EXPIRED
    assert replayed_stats(records, names, 4.0) == live
