"""The journal written is the file the configured state dir names now, and its name is durable
(issue 18): a state dir moved aside and replaced, removed, or a journal renamed is a failing
state dir — under `--fsync always` nothing more is acknowledged until a full snapshot in the
configured dir holds everything acknowledged before — and the state dir is fsynced after a
journal, snapshot or SAVE file is created or renamed, before the first acknowledgement that
depends on it.

Unit tests drive a Journal directly (an fsync recorder stands in for os.fsync); integration tests
run real DSMs (tests/dsm_harness.py), kill -9 them and restart on the same --state-dir.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from typing import Any, Dict, List, Tuple

import pytest
from dsm_harness import END, LOOPBACK, free_tcp_port, recv_until_end, wait_for

from DriveStateMonitor import persistence
from DriveStateMonitor.persistence import (FSYNC_ALWAYS, FSYNC_EVERYSEC, Journal, journal_path,
                                           load_state)
from test_durability import journal_fact, kill9, new_state_dir, start


# --- unit: identity ------------------------------------------------------------------------------
def _journal(state_dir: str, policy: str = FSYNC_ALWAYS) -> Journal:
    journal = Journal(state_dir, policy, lambda: {"format": 1})
    assert journal.open(1)
    return journal


@pytest.mark.parametrize("policy", [FSYNC_ALWAYS, FSYNC_EVERYSEC])
@pytest.mark.parametrize("change", ["dir-replaced", "dir-removed", "journal-renamed",
                                    "journal-removed", "journal-replaced"])
def test_a_journal_the_state_dir_no_longer_names_fails_the_next_flush(tmp_path, policy, change):
    state_dir = str(tmp_path / "state")
    journal = _journal(state_dir, policy)
    journal.record(["w", 1.0])
    journal.flush(0.0)
    assert journal.status()["state"] == "ok" and journal.refusing is None
    path = journal_path(state_dir, 1)
    if change == "dir-replaced":
        os.rename(state_dir, state_dir + ".old")
        os.mkdir(state_dir)
    elif change == "dir-removed":
        shutil.rmtree(state_dir)
    elif change == "journal-renamed":
        os.rename(path, path + ".moved")
    elif change == "journal-removed":
        os.unlink(path)
    else:  # another file under the journal's name
        os.rename(path, path + ".moved")
        open(path, "wb").close()
    journal.record(["w", 2.0])
    journal.flush(10.0)  # the pass that wrote into the file nobody will read: found at once
    status = journal.status()
    assert status["state"] == "failing" and status["identity_lost"] == 1
    assert journal.needs_snapshot
    assert (journal.refusing is not None) == (policy == FSYNC_ALWAYS)
    # Recovery: a full snapshot (forked) and a new journal in the configured dir.
    assert journal.start_snapshot()
    wait_for(lambda: journal.poll_snapshot() is not None, 10, "the snapshot child")
    assert journal.status()["state"] == "ok" and journal.refusing is None
    assert load_state(state_dir).snapshot == {"format": 1}
    journal.record(["w", 3.0])
    journal.flush(20.0)
    assert load_state(state_dir).records[-1] == ["w", 3.0]
    journal.close()


def test_a_state_dir_replaced_by_one_others_may_write_gets_nothing_until_fixed(tmp_path):
    state_dir = str(tmp_path / "state")
    journal = _journal(state_dir)
    os.rename(state_dir, state_dir + ".old")
    os.mkdir(state_dir)
    os.chmod(state_dir, 0o777)  # anyone could plant links in it now
    journal.record(["w", 1.0])
    journal.flush(0.0)
    assert not journal.start_snapshot()
    assert os.listdir(state_dir) == [] and journal.refusing is not None
    assert "writable by group or others" in journal.error
    os.chmod(state_dir, 0o755)
    assert journal.start_snapshot()
    wait_for(lambda: journal.poll_snapshot() is not None, 10, "the snapshot child")
    assert journal.refusing is None
    journal.close()


def test_an_unchanged_state_dir_passes_the_check_pass_after_pass(tmp_path):
    journal = _journal(str(tmp_path / "state"))
    for n in range(50):
        journal.record(["w", float(n)])
        journal.flush(float(n))
    assert journal.status()["identity_lost"] == 0 and journal.refusing is None


def test_the_identity_is_checked_once_per_pass_not_per_record(tmp_path, monkeypatch):
    journal = _journal(str(tmp_path / "state"))
    calls: List[str] = []
    real_stat = os.stat
    monkeypatch.setattr(persistence.os, "stat",
                        lambda path, *a, **k: calls.append(path) or real_stat(path, *a, **k))
    for n in range(100):
        journal.record(["w", float(n)])
    journal.flush(0.0)
    assert len(calls) == 1  # the state dir, once (plus an lstat of the journal)
    journal.flush(0.5)  # a pass that wrote nothing checks nothing ...
    assert len(calls) == 1
    journal.flush(1.5)  # ... until a second has passed: an idle DSM notices too
    assert len(calls) == 2


def test_under_everysec_the_check_runs_once_a_second_however_many_passes(tmp_path, monkeypatch):
    journal = _journal(str(tmp_path / "state"), FSYNC_EVERYSEC)
    calls: List[str] = []
    real_stat = os.stat
    monkeypatch.setattr(persistence.os, "stat",
                        lambda path, *a, **k: calls.append(path) or real_stat(path, *a, **k))
    for n in range(100):  # 100 passes in 0.99 s
        journal.record(["w", float(n)])
        journal.flush(100.0 + n / 100.0)
    assert len(calls) == 1


def test_a_state_dir_swapped_while_idle_is_found_within_a_second(tmp_path):
    state_dir = str(tmp_path / "state")
    journal = _journal(state_dir)
    journal.flush(0.0)
    os.rename(state_dir, state_dir + ".old")
    os.mkdir(state_dir)
    journal.flush(0.5)
    assert journal.status()["identity_lost"] == 0
    journal.flush(1.0)  # nothing written, a second on: the loop's pass checks
    assert journal.status()["identity_lost"] == 1 and journal.needs_snapshot
    assert not journal.check_vanished()  # the --state-retry timer's check: already failing


# --- unit: durable names -------------------------------------------------------------------------
class FsyncRecorder:
    """Stands in for os.fsync: records what each fsync was of (a dir or a file, by path)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str]] = []
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        path = os.readlink("/proc/self/fd/%d" % fd)
        self.calls.append(("dir" if os.path.isdir(path) else "file", path))
        self._real(fd)


@pytest.fixture
def fsyncs(monkeypatch) -> FsyncRecorder:
    recorder = FsyncRecorder()
    monkeypatch.setattr(persistence.os, "fsync", recorder)
    return recorder


def test_a_new_journal_s_dir_is_fsynced_before_its_first_record_is_synced(tmp_path, fsyncs):
    state_dir = str(tmp_path / "state")
    journal = _journal(state_dir)
    journal.record(["w", 1.0])
    journal.flush(0.0)
    real_dir = os.path.realpath(state_dir)
    parent = os.path.dirname(real_dir)
    assert fsyncs.calls[:3] == [("dir", parent), ("dir", real_dir),
                                ("file", os.path.realpath(journal_path(state_dir, 1)))]


def test_a_snapshot_s_dir_is_fsynced_after_its_rename(tmp_path, fsyncs):
    state_dir = str(tmp_path)
    persistence.write_snapshot(state_dir, 3, {"format": 1})
    real_dir = os.path.realpath(state_dir)
    assert [kind for kind, _ in fsyncs.calls] == ["file", "dir"]
    assert fsyncs.calls[-1] == ("dir", real_dir)
    assert os.listdir(state_dir) == ["snapshot-3.json"]


def test_a_save_file_s_dir_is_fsynced_after_its_rename_before_the_child_reports(tmp_path,
                                                                               fsyncs):
    from DriveStateMonitor import save_writer
    from DriveStateMonitor.statserv_tree import Tree
    saves = str(tmp_path / "saves")
    os.makedirs(saves)
    tree = Tree()
    tree.touch("/lab/a", 0.0)
    # _write is the child's whole job: its exit code (the `.` to the client) comes after these.
    assert save_writer._write(tree, os.path.join(saves, "a.save"), 1 << 20) == 0
    assert fsyncs.calls == [("file", os.path.realpath(os.path.join(saves, "a.save.tmp.%d"
                                                                   % os.getpid()))),
                            ("dir", os.path.realpath(saves))]


def test_a_recovery_journal_s_dir_is_fsynced_before_acks_resume(tmp_path, fsyncs):
    state_dir = str(tmp_path / "state")
    journal = _journal(state_dir)
    os.unlink(journal_path(state_dir, 1))
    journal.record(["w", 1.0])
    journal.flush(0.0)
    assert journal.refusing is not None
    del fsyncs.calls[:]
    assert journal.start_snapshot()  # the child writes the snapshot; here, the new journal
    assert fsyncs.calls == [("dir", os.path.realpath(state_dir))]
    assert journal.refusing is not None  # until the child's snapshot (renamed, dir fsynced) landed
    wait_for(lambda: journal.poll_snapshot() is not None, 10, "the snapshot child")
    assert journal.refusing is None
    journal.close()


# --- integration ---------------------------------------------------------------------------------
def send_status(dsm, serial: str, n: int) -> Tuple[str, Dict[str, Any]]:
    """One status as the lab scripts send it: ('acked'|'refused'|'closed', entry)."""
    entry = {"time_stamp": "2026-12-07 %06d" % n, "status": "%04d" % n}
    message = str(dict(serial_number=serial, **entry)).encode()
    with socket.create_connection((LOOPBACK, dsm.status_port), timeout=10) as sock:
        sock.sendall(message)
        try:
            reply = recv_until_end(sock)
        except ConnectionResetError:
            reply = b""
    if reply == END:
        return "acked", entry
    return ("refused" if b"error" in reply else "closed"), entry


def assert_acked_kept(dsm, acked: Dict[str, List[Dict[str, Any]]]) -> None:
    """Every acknowledged status is there, in order. A status whose connection was closed
    unanswered may be there too (it reached memory; only its acknowledgement was withheld)."""
    stored = dsm.query_json("s")
    for serial, entries in acked.items():
        remaining = iter(stored.get(serial, []))
        missing = [entry for entry in entries if entry not in remaining]
        assert not missing, "acknowledged statuses of %s lost: %s" % (serial, missing)


def _mid_stream(dsm, state_dir: str, swap) -> Tuple[Dict[str, List[Dict[str, Any]]], List[str]]:
    """30 statuses, `swap()`, 30 more (the recovery lands somewhere among them): what was acked,
    and the outcomes of the statuses after the swap."""
    acked: Dict[str, List[Dict[str, Any]]] = {}
    after: List[str] = []
    for n in range(60):
        if n == 30:
            swap()
        outcome, entry = send_status(dsm, "ID-%d" % (n % 3), n)
        if outcome == "acked":
            acked.setdefault("ID-%d" % (n % 3), []).append(entry)
        if n >= 30:
            after.append(outcome)
    return acked, after


def _swap_dir(state_dir: str):
    def swap() -> None:
        os.rename(state_dir, state_dir + ".old")
        os.mkdir(state_dir)
    return swap


def _rename_journal(state_dir: str):
    def swap() -> None:
        name = max((n for n in os.listdir(state_dir) if n.startswith("journal-")),
                   key=lambda n: int(re.findall(r"\d+", n)[0]))
        os.rename(os.path.join(state_dir, name), os.path.join(state_dir, name + ".renamed"))
    return swap


@pytest.mark.parametrize("swap", [_swap_dir, _rename_journal], ids=["dir-replaced",
                                                                    "journal-renamed"])
def test_fsync_always_acknowledges_nothing_into_a_moved_journal_and_loses_nothing(dsm_factory,
                                                                                   swap):
    state_dir = new_state_dir(dsm_factory)
    # --state-retry 60: the recovery starts at once when a flush finds the journal astray, not
    # at the next retry.
    dsm = start(dsm_factory, state_dir, "--state-retry", "60", "--history", "100")
    acked, after = _mid_stream(dsm, state_dir, swap(state_dir))
    # The first status after the swap went into a file no restart reads: not acknowledged.
    assert after[0] != "acked", after
    wait_for(lambda: journal_fact(dsm, "state") == "ok" and
             journal_fact(dsm, "identity_lost") == "1", 10, "recovered, identity_lost 1")
    assert "is no longer the file the state dir" in dsm.log_text()
    for n in range(100, 110):  # acknowledged again after the recovery snapshot
        outcome, entry = send_status(dsm, "ID-%d" % (n % 3), n)
        assert outcome == "acked"
        acked.setdefault("ID-%d" % (n % 3), []).append(entry)
    kill9(dsm)

    second = start(dsm_factory, state_dir, "--history", "100")
    assert sum(map(len, acked.values())) >= 40
    assert_acked_kept(second, acked)


def test_everysec_recovers_a_replaced_state_dir_logged_and_counted(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    http_port = free_tcp_port()
    dsm = dsm_factory.start("--state-dir", state_dir, "--state-retry", "0.5", "--history", "100",
                            "--http-port", str(http_port))
    acked, _ = _mid_stream(dsm, state_dir, _swap_dir(state_dir))
    wait_for(lambda: journal_fact(dsm, "state") == "ok" and
             journal_fact(dsm, "identity_lost") == "1" and
             any(n.startswith("snapshot-") for n in os.listdir(state_dir)),
             10, "recovered into the new state dir")
    metrics = dsm_metrics(http_port)
    assert re.search(r"^dsm_journal_identity_lost_total 1(\.0)?$", metrics, re.M), metrics
    kill9(dsm)
    second = dsm_factory.start("--state-dir", state_dir, "--history", "100")
    assert_acked_kept(second, acked)


def dsm_metrics(port: int) -> str:
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as reply:
        return reply.read().decode()


STRACE = "/usr/bin/strace"


def _strace_works() -> bool:
    if not os.access(STRACE, os.X_OK):
        return False
    probe = subprocess.run([STRACE, "-f", "-o", os.devnull, "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _strace_works(), reason="needs /usr/bin/strace, permitted to trace")
def test_strace_shows_the_state_dir_fsynced_before_the_first_acknowledgement(dsm_factory,
                                                                              tmp_path):
    state_dir = new_state_dir(dsm_factory)
    trace = str(tmp_path / "trace")
    dsm = dsm_factory.start("--state-dir", state_dir, "--fsync", "always",
                            prefix=[STRACE, "-f", "-tt", "-y", "-e",
                                    "trace=openat,fsync,fdatasync,sendto,write",
                                    "-o", trace], wait=False)

    def ready() -> bool:  # dsm.json names the DSM's pid, not strace's
        try:
            with open(os.path.join(dsm.run_dir, "dsm.json")) as f:
                dsm.info = json.load(f)
        except (OSError, ValueError):
            return False
        return True
    wait_for(ready, 30, "the traced DSM to start")
    outcome, _ = send_status(dsm, "STRACE-1", 1)
    assert outcome == "acked"
    os.kill(dsm.info["pid"], signal.SIGTERM)
    assert dsm.proc.wait(30) == 0
    lines = open(trace).read().splitlines()
    real_dir = os.path.realpath(state_dir)
    dir_fsync = next(i for i, line in enumerate(lines)
                     if re.search(r"fsync\(\d+<%s>\)" % re.escape(real_dir), line))
    ack = next(i for i, line in enumerate(lines)
               if re.search(r'(sendto|write)\(\d+<[^>]*>, "\\4"', line))
    journal_fsync = next(i for i, line in enumerate(lines)
                         if re.search(r"fsync\(\d+<%s/journal-\d+\.log>\)" % re.escape(real_dir),
                                      line))
    assert dir_fsync < journal_fsync < ack, (dir_fsync, journal_fsync, ack)


# --- the files a restart reads before the journal: its base snapshot and earlier journals --------
@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_base_snapshot_removed_or_replaced_fails_the_next_flush(tmp_path, change):
    """Journal 2 builds on snapshot 2: without it a restart replays journal 2 alone, and every
    change the snapshot held is gone. Found at the next flush like a moved journal, recovered
    the same way (a full snapshot), after which the dir again holds everything."""
    state_dir = str(tmp_path / "state")
    journal = _journal(state_dir)
    journal.record(["w", 1.0])
    journal.flush(0.0)
    assert journal.start_snapshot()
    assert wait_for(lambda: journal.poll_snapshot() is not None, 10, "the snapshot child")
    base = persistence.snapshot_path(state_dir, journal.seq)
    assert os.path.exists(base)
    if change == "removed":
        os.unlink(base)
    else:  # the same bytes under the same name, another file: a restore reads whatever is there
        shutil.copyfile(base, base + ".copy")
        os.rename(base + ".copy", base)
    journal.record(["w", 2.0])
    journal.flush(10.0)
    status = journal.status()
    assert status["state"] == "failing" and status["identity_lost"] == 1, status
    assert "which a restart reads before it" in status["error"]
    assert journal.refusing is not None
    assert journal.start_snapshot()
    wait_for(lambda: journal.poll_snapshot() is not None, 10, "the recovery snapshot")
    assert journal.status()["state"] == "ok" and load_state(state_dir).snapshot == {"format": 1}
    journal.close()


def test_an_earlier_journal_removed_fails_the_next_flush(tmp_path):
    """No snapshot yet: a restart replays every journal from the oldest; journal 1 (written by
    an earlier run) holds changes journal 2 does not."""
    state_dir = str(tmp_path / "state")
    first = _journal(state_dir)
    first.record(["w", 1.0])
    first.flush(0.0)
    first.close()
    journal = Journal(state_dir, FSYNC_ALWAYS, lambda: {"format": 1})
    assert journal.open(2)
    journal.record(["w", 2.0])
    journal.flush(0.0)
    assert journal.status()["identity_lost"] == 0
    os.unlink(journal_path(state_dir, 1))
    journal.record(["w", 3.0])
    journal.flush(1.0)
    assert journal.status()["identity_lost"] == 1 and journal.refusing is not None
    journal.close()


def test_fsync_always_loses_nothing_when_the_base_snapshot_is_removed(dsm_factory):
    """A clean stop leaves snapshot N; the next run journals on top of it. Removed while that run
    acknowledges statuses, then kill -9: before, the restart replayed the journal alone and every
    status of the first run was gone (200 of 200, nothing logged)."""
    state_dir = new_state_dir(dsm_factory)
    dsm = start(dsm_factory, state_dir, "--state-retry", "60", "--history", "100")
    acked: Dict[str, List[Dict[str, Any]]] = {}
    for n in range(20):
        outcome, entry = send_status(dsm, "BASE-%d" % (n % 3), n)
        assert outcome == "acked"
        acked.setdefault("BASE-%d" % (n % 3), []).append(entry)
    dsm.stop()
    dsm = start(dsm_factory, state_dir, "--state-retry", "60", "--history", "100")
    snapshots = [name for name in os.listdir(state_dir) if name.startswith("snapshot-")]
    assert snapshots
    for name in snapshots:
        os.unlink(os.path.join(state_dir, name))
    for n in range(20, 40):
        outcome, entry = send_status(dsm, "BASE-%d" % (n % 3), n)
        if outcome == "acked":
            acked.setdefault("BASE-%d" % (n % 3), []).append(entry)
    wait_for(lambda: journal_fact(dsm, "state") == "ok" and
             journal_fact(dsm, "identity_lost") == "1", 10, "recovered, identity_lost 1")
    assert "which a restart reads before it" in dsm.log_text()
    kill9(dsm)
    second = start(dsm_factory, state_dir, "--history", "100")
    assert_acked_kept(second, acked)


def test_files_the_snapshot_child_retires_before_it_is_reaped_are_no_loss(tmp_path):
    """The child removes journal 1 once snapshot 2 (the open journal's new base) is in place; a
    flush between that and the parent reaping the child finds a newer base, not a loss."""
    state_dir = str(tmp_path / "state")
    journal = _journal(state_dir)
    journal.record(["w", 1.0])
    journal.flush(0.0)
    assert journal.start_snapshot()
    wait_for(lambda: not os.path.exists(journal_path(state_dir, 1)), 10, "journal 1 retired")
    journal.record(["w", 2.0])
    journal.flush(10.0)
    assert journal.status()["identity_lost"] == 0 and journal.refusing is None
    wait_for(lambda: journal.poll_snapshot() is not None, 10, "the snapshot child")
    journal.close()
