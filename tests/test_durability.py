"""Nothing acknowledged is lost: real DSMs killed (-9 or SIGTERM), restarted on the same state dir.

Every process is started by the harness and stopped by its pid; a restart is a second DSM started
with the same `--state-dir` after the first one is dead. Waits are conditions with deadlines; every
loop is bounded.
"""
from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Tuple

import pytest

from DriveStateMonitor.persistence import decode_snapshot, encode_record
from dsm_harness import END, LOOPBACK, announcement, recv_until_end, wait_for



STATUS_SERIALS = ("DUR-A", "DUR-B", "DUR-C")


# --- helpers --------------------------------------------------------------------------------------
class LineClient:
    """A Status Server connection: one request line, its response lines up to `.` or `!`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self, deadline: float) -> str:
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no response line in time; have %r" % self.buffer[-200:]
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            assert chunk, "connection closed; have %r" % self.buffer[-200:]
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8")

    def request(self, line: str, timeout: float = 5.0) -> List[str]:
        self.sock.sendall(line.encode("utf-8") + b"\n")
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            response = self._line(deadline)
            if response[:1] in ("@", "#"):
                continue
            lines.append(response)
            if response[:1] in (".", "!"):
                return lines

    def ask(self, line: str) -> str:
        lines = self.request(line)
        assert len(lines) == 1, lines
        return lines[0]

    def ok(self, line: str) -> str:
        answer = self.ask(line)
        assert answer.startswith("."), (line, answer)
        return answer

    def close(self) -> None:
        self.sock.close()


def statserv(dsm, unix: bool = False) -> LineClient:
    return LineClient(dsm.connect_statserv(unix=unix))


def get(dsm, name: str) -> str:
    client = statserv(dsm, unix=True)
    try:
        return client.ask("GET " + name)
    finally:
        client.close()


def journal_fact(dsm, name: str) -> str:
    """/dsm/journal/<name> as text (published once a second)."""
    answer = get(dsm, "/dsm/journal/" + name)
    assert answer.startswith('. "'), answer
    return answer[3:-1]


def new_state_dir(dsm_factory) -> str:
    return os.path.join(dsm_factory.new_dirs(), "state")


def start(dsm_factory, state_dir: str, *extra: str, **kwargs: Any):
    return dsm_factory.start("--state-dir", state_dir, "--fsync", "always", *extra, **kwargs)


def kill9(dsm) -> None:
    dsm.proc.kill()
    dsm.proc.wait(10)


def send_statuses_script_style(dsm, count: int, serials=STATUS_SERIALS,
                               payload: str = "") -> Dict[str, List[Dict[str, Any]]]:
    """Each status on its own connection, as the lab scripts send it; returns what was acked."""
    acked: Dict[str, List[Dict[str, Any]]] = {}
    for n in range(count):
        serial = serials[n % len(serials)]
        entry = {"time_stamp": "2026-11-24 %06d" % n, "status": "%04d%s" % (n, payload)}
        message = str(dict(serial_number=serial, **entry)).encode()
        assert dsm.send_status(message) == END, "status %d not acknowledged" % n
        acked.setdefault(serial, []).append(entry)
    return acked


def tree_changes(dsm) -> Dict[str, str]:
    """TOUCHDIR/TOUCH/PUT/REMOVE with every answer read; returns name -> expected GET answer."""
    expected: Dict[str, str] = {}
    client = statserv(dsm)
    try:
        client.ok("TOUCHDIR /lab/bench3 COMMENT='bench three'")
        expected["/lab/bench3"] = "! ISDIR"
        for n in range(40):
            name = "/lab/bench3/probe%02d" % n
            client.ok("TOUCH %s TYPE=int COMMENT='probe %d'" % (name, n))
            client.ok("PUT %s %d" % (name, n * 10))
            expected[name] = '. "%d"' % (n * 10)
        for n in range(0, 40, 4):
            name = "/lab/bench3/probe%02d" % n
            client.ok("REMOVE " + name)
            expected[name] = "! NONEXISTENT"
        client.ok("TOUCH /lab/text")
        client.ok("PUT /lab/text 'two words'")
        expected["/lab/text"] = '. "two words"'
        client.ok("TOUCH /lab/empty TYPE=float")
        expected["/lab/empty"] = ". UNDEFINED"
        client.ok("TOUCHDIR /lab/a/b/c")
        expected["/lab/a/b/c"] = "! ISDIR"
    finally:
        client.close()
    return expected


def assert_tree(dsm, expected: Dict[str, str]) -> None:
    client = statserv(dsm)
    try:
        for name, answer in expected.items():
            got = client.ask("GET " + name)
            assert got.startswith(answer), (name, got, answer)
    finally:
        client.close()


def assert_statuses_kept(dsm, acked: Dict[str, List[Dict[str, Any]]]) -> None:
    s = dsm.query_json("s")
    for serial, entries in acked.items():
        assert s.get(serial) == entries, "statuses of %s differ after the restart" % serial


def state_files(state_dir: str) -> Tuple[List[int], List[int]]:
    snapshots, journals = [], []
    for name in os.listdir(state_dir):
        m = re.match(r"(snapshot|journal)-(\d+)\.(json|log)\Z", name)
        if m:
            (snapshots if m.group(1) == "snapshot" else journals).append(int(m.group(2)))
    return sorted(snapshots), sorted(journals)


def newest_journal(state_dir: str) -> str:
    _, journals = state_files(state_dir)
    assert journals, os.listdir(state_dir)
    return os.path.join(state_dir, "journal-%d.log" % journals[-1])


def announce_until_seen(dsm, serial: str, rounds: int = 20) -> None:
    """Announces until `m` shows the drive (loopback datagrams may drop; bounded re-sends)."""
    for _ in range(rounds):
        dsm.announce(announcement(serial))
        try:
            wait_for(lambda: serial in dsm.query_json("m"), 0.5, "%s in m" % serial)
            return
        except AssertionError:
            continue
    raise AssertionError("%s never showed up in m" % serial)


# --- kill -9 ----------------------------------------------------------------------------------
def test_acknowledged_statuses_and_tree_changes_survive_kill_9(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir, "--history", "500")
    acked = send_statuses_script_style(first, 300)
    expected = tree_changes(first)
    kill9(first)

    second = start(dsm_factory, state_dir, "--history", "500")
    assert_statuses_kept(second, acked)
    assert set(second.query_json("s")) == set(STATUS_SERIALS)
    assert_tree(second, expected)
    client = statserv(second)
    try:
        stat = client.request("STAT /lab/bench3/probe01")
        assert "* type=int" in stat and '* comment="probe 1"' in stat, stat
        assert '* comment="bench three"' in client.request("STAT /lab/bench3")
    finally:
        client.close()
    assert "restored from" in second.log_text()


def test_fsync_always_syncs_the_journal_and_counts_it(dsm_factory):
    dsm = start(dsm_factory, new_state_dir(dsm_factory))
    send_statuses_script_style(dsm, 20)
    wait_for(lambda: int(journal_fact(dsm, "records_written")) >= 20, 5,
             "records_written to reach 20")
    assert journal_fact(dsm, "fsync") == "always"
    assert 1 <= int(journal_fact(dsm, "fsyncs")) <= int(journal_fact(dsm, "records_written"))
    assert journal_fact(dsm, "state") == "ok"
    assert int(journal_fact(dsm, "records_dropped")) == 0


def test_a_pipelined_pass_is_journaled_in_group_frames_that_survive_kill_9_and_a_clean_stop(
        dsm_factory):
    # 300 PUTs and TOUCHes in one write: one or a few passes, so group frames (persistence.py).
    from DriveStateMonitor.persistence import MAGIC, read_state_file, scan_journal

    def pipeline(dsm, round_: int) -> bytes:
        """300 lines in one write, all answered; the journal they went to."""
        lines = b"".join(b"TOUCH /lab/g%d\nPUT /lab/g%d v%d.%d\n" % (n % 7, n % 7, round_, n)
                         for n in range(150))
        with dsm.connect_statserv() as sock:
            sock.sendall(lines)
            replies = b""
            deadline = time.monotonic() + 20
            while replies.count(b"\n") < 300 and time.monotonic() < deadline:
                replies += sock.recv(65536)
        assert replies == b".\n" * 300
        data = read_state_file(newest_journal(state_dir))
        assert data.count(MAGIC) < len(scan_journal(data).records) // 10  # grouped
        return data

    def values(dsm, round_: int) -> None:
        assert [get(dsm, "/lab/g%d" % n) for n in range(7)] == [
            '. "v%d.%d"' % (round_, max(i for i in range(150) if i % 7 == n)) for n in range(7)]

    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    pipeline(first, 1)
    kill9(first)

    second = start(dsm_factory, state_dir)
    values(second, 1)
    pipeline(second, 2)  # groups in the journal the clean stop is to make unneeded
    second.stop()
    assert second.proc.returncode == 0
    # The final snapshot holds everything, and no journal a restart replays after it (the only
    # ones an older DSM would read) holds a group.
    snapshots, journals = state_files(state_dir)
    for seq in [seq for seq in journals if seq >= snapshots[-1]]:
        data = read_state_file(os.path.join(state_dir, "journal-%d.log" % seq))
        assert data.count(MAGIC) == len(scan_journal(data).records), seq
    third = start(dsm_factory, state_dir)
    values(third, 2)


@pytest.mark.parametrize("tail", ["half-record", "garbage"])
def test_torn_journal_tail_is_dropped_and_the_good_records_come_back(dsm_factory, tail):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir, "--history", "100")
    acked = send_statuses_script_style(first, 60)
    expected = tree_changes(first)
    kill9(first)

    path = newest_journal(state_dir)
    size = os.path.getsize(path)
    if tail == "half-record":
        record = encode_record(["s", "DUR-A", '{"time_stamp": "torn", "status": "never"}'])
        junk = record[:len(record) // 2]
    else:
        junk = bytes(random.Random(7).getrandbits(8) for _ in range(301))
    with open(path, "ab") as f:
        f.write(junk)

    second = start(dsm_factory, state_dir, "--history", "100")
    assert_statuses_kept(second, acked)
    assert_tree(second, expected)
    log = second.log_text()
    if tail == "half-record":
        assert "torn" in log and os.path.basename(path) in log, log[-2000:]
        assert os.path.getsize(path) == size  # cut back to the last good record
    else:
        # Not shaped like an interrupted append: damage, reported, never cut; renamed aside
        # (bytes intact) once the recovery snapshot holds what the file held.
        assert "CRITICAL" in log and "damaged" in log and os.path.basename(path) in log, log
        quarantined = wait_for(lambda: [n for n in os.listdir(state_dir) if n.startswith(
            os.path.basename(path) + ".damaged-")], what="the damaged journal quarantined")
        with open(os.path.join(state_dir, quarantined[0]), "rb") as f:
            assert f.read()[size:] == junk
        wait_for(lambda: journal_fact(second, "files_quarantined") == "1",
                 what="/dsm/journal/files_quarantined 1")
        assert int(journal_fact(second, "records_skipped")) == 1

    # The restarted DSM appends after the cut: a third start sees everything.
    more = send_statuses_script_style(second, 5, serials=("AFTER",))
    kill9(second)
    third = start(dsm_factory, state_dir, "--history", "100")
    assert_statuses_kept(third, acked)
    assert_statuses_kept(third, more)


# --- snapshots --------------------------------------------------------------------------------
def test_sigterm_writes_a_snapshot_removes_older_files_and_restart_restores_from_it(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir, "--history", "100")
    acked = send_statuses_script_style(first, 30)
    expected = tree_changes(first)
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    snapshots, journals = state_files(state_dir)
    assert len(snapshots) == 1, os.listdir(state_dir)
    assert all(seq >= snapshots[0] for seq in journals), os.listdir(state_dir)
    assert "snapshot written" in first.log_text()
    with open(os.path.join(state_dir, "snapshot-%d.json" % snapshots[0]), "rb") as f:
        snapshot, check = decode_snapshot(f.read())
    assert check.intact and set(snapshot["statuses"]) == set(STATUS_SERIALS)

    second = start(dsm_factory, state_dir, "--history", "100")
    assert_statuses_kept(second, acked)
    assert_tree(second, expected)
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0
    later, journals = state_files(state_dir)
    # The previous snapshot and the journals from it stay as the fallback of the newest one.
    assert later == [snapshots[0], later[1]] and later[1] > snapshots[0], os.listdir(state_dir)
    assert all(seq >= snapshots[0] for seq in journals), os.listdir(state_dir)


def test_periodic_snapshot_is_forked_while_the_loop_keeps_answering(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    dsm = start(dsm_factory, state_dir, "--snapshot-interval", "0.5", "--history", "100")
    acked = send_statuses_script_style(dsm, 30)
    answered = 0
    deadline = time.monotonic() + 10
    for _ in range(10_000):
        started = time.monotonic()
        assert dsm.query_json("s")  # the loop answers while the child writes
        assert time.monotonic() - started < 2.0
        answered += 1
        snapshots, journals = state_files(state_dir)
        if snapshots and all(seq >= snapshots[-1] for seq in journals):
            break
        assert time.monotonic() < deadline, "no periodic snapshot in 10 s: %s" % os.listdir(
            state_dir)
    assert answered >= 1
    wait_for(lambda: float(journal_fact(dsm, "last_snapshot")) > 0, 5,
             "last_snapshot to be published")
    assert journal_fact(dsm, "state") == "ok"
    assert "Traceback" not in dsm.log_text()
    more = send_statuses_script_style(dsm, 6, serials=("AFTER",))
    kill9(dsm)
    second = start(dsm_factory, state_dir, "--history", "100")
    assert_statuses_kept(second, acked)
    assert_statuses_kept(second, more)


# --- lifetimes, auto-expire, silent drives ------------------------------------------------------
@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_lifetime_that_ran_out_while_stopped_reads_expired_after_restart(dsm_factory, stop):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    client = statserv(first)
    client.ok("TOUCH /lab/short")
    client.ok("TOUCH /lab/long")
    put_at = time.time()
    client.ok("PUT /lab/short soon LIFETIME=2")
    client.ok("PUT /lab/long later LIFETIME=600")
    client.close()
    if stop == "sigterm":
        first.signal(signal.SIGTERM)
        assert first.wait_exit() == 0
    else:
        kill9(first)
    wait_for(lambda: time.time() > put_at + 2.3, 5, "the 2 s lifetime to pass")

    second = start(dsm_factory, state_dir)
    assert get(second, "/lab/short") == ". EXPIRED"
    assert get(second, "/lab/long") == '. "later"'


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_lifetime_still_running_at_restart_stays_valid_then_expires(dsm_factory, stop):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    client = statserv(first)
    client.ok("TOUCH /lab/soon")
    put_at = time.time()
    client.ok("PUT /lab/soon value LIFETIME=5")
    client.close()
    if stop == "sigterm":
        first.signal(signal.SIGTERM)
        assert first.wait_exit() == 0
    else:
        kill9(first)

    second = start(dsm_factory, state_dir)
    if time.time() < put_at + 4.5:  # a loaded host may have been too slow to see it valid
        assert get(second, "/lab/soon") == '. "value"'
    # It keeps its deadline: nobody reads, and yet it expires at about the original time.
    wait_for(lambda: get(second, "/lab/soon") == ". EXPIRED", 10, "/lab/soon to expire")
    assert time.time() < put_at + 5 + 6


def test_autoexpire_object_comes_back_expired_after_kill_9_with_its_owner_connected(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    owner = statserv(first)
    owner.ok("TOUCH /lab/mine AUTOEXPIRE=1")
    owner.ok("PUT /lab/mine 5")
    other = statserv(first)
    other.ok("TOUCH /lab/plain")
    other.ok("PUT /lab/plain 6")
    assert get(first, "/lab/mine") == '. "5"'
    kill9(first)  # the owner is still connected
    owner.close()
    other.close()

    second = start(dsm_factory, state_dir)
    assert get(second, "/lab/mine") == ". EXPIRED"
    assert get(second, "/lab/plain") == '. "6"'


def test_autoexpire_object_put_after_a_periodic_snapshot_comes_back_expired(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir, "--snapshot-interval", "3")
    owner = statserv(first)
    owner.ok("TOUCH /lab/mine AUTOEXPIRE=1")
    owner.ok("PUT /lab/mine 5")
    wait_for(lambda: state_files(state_dir)[0], 10, "the first periodic snapshot")
    owner.ok("PUT /lab/mine 6")  # journaled after the snapshot; the next one is ~3 s away
    kill9(first)
    owner.close()

    second = start(dsm_factory, state_dir)
    assert get(second, "/lab/mine") == ". EXPIRED"


def test_silent_drive_comes_back_expired_after_a_restart(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir, "--drive-lifetime", "1")
    announce_until_seen(first, "SILENT9")
    heard_at = time.time()
    kill9(first)
    wait_for(lambda: time.time() > heard_at + 1.3, 5, "the drive lifetime to pass")

    second = start(dsm_factory, state_dir, "--drive-lifetime", "1")
    drive = second.query_json("m")["SILENT9"]
    assert drive["state"] == "expired"
    assert drive["model"] == "ST4000NK0001"
    assert abs(drive["last_seen_epoch"] - heard_at) < 2
    assert get(second, "/drives/SILENT9/state") == '. "expired"'
    assert get(second, "/drives/SILENT9/model") == '. "ST4000NK0001"'
    assert get(second, "/drives/SILENT9/interfaces/eth0/ipv4_addr") != ". EXPIRED"


def test_alive_drive_comes_back_with_its_data_after_kill_9(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    announce_until_seen(first, "ALIVE7")
    before = first.query_json("m")["ALIVE7"]
    kill9(first)
    second = start(dsm_factory, state_dir)
    after = second.query_json("m")["ALIVE7"]
    assert after == before
    assert get(second, "/drives/ALIVE7/model") == '. "ST4000NK0001"'


def test_wiped_data_stays_wiped_after_kill_9(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir)
    announce_until_seen(first, "WIPED1")
    send_statuses_script_style(first, 9)
    client = statserv(first)
    client.ok("TOUCH /lab/keep")
    client.ok("PUT /lab/keep kept")
    client.close()
    reply = first.query(b"w", unix=True)
    assert json.loads(reply[:-1])["wiped"]["statuses"] == 9
    after = send_statuses_script_style(first, 2, serials=("POSTWIPE",))
    kill9(first)

    second = start(dsm_factory, state_dir)
    assert second.query_json("m") == {}
    assert second.query_json("s") == after
    assert get(second, "/drives/WIPED1/model").startswith("! NONEXISTENT")
    assert get(second, "/lab/keep") == '. "kept"'


# --- a failing state dir ------------------------------------------------------------------------
def file_size_limit_prefix(soft: int) -> List[str]:
    """A command prefix that starts the DSM with RLIMIT_FSIZE `soft` (the hard limit stays
    unlimited, so the test can raise it again): writes past it fail with EFBIG."""
    if shutil.which("prlimit") is not None:
        return ["prlimit", "--fsize=%d:unlimited" % soft, "--"]
    code = ("import os, resource, sys; "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (%d, resource.RLIM_INFINITY)); "
            "os.execv(sys.argv[1], sys.argv[1:])" % soft)
    return [sys.executable, "-c", code]


def lift_file_size_limit(pid: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _big_statuses(dsm, count: int, tag: str) -> Dict[str, List[Dict[str, Any]]]:
    serials = tuple("%s%03d" % (tag, n) for n in range(count))
    return send_statuses_script_style(dsm, count, serials=serials, payload="x" * 500)


def test_full_state_dir_keeps_the_daemon_answering_from_memory_and_reports_failing(dsm_factory):
    # --fsync everysec promises no more than this: keep acknowledging from memory and say so
    # (--fsync always refuses instead: test_state_damage.py).
    state_dir = new_state_dir(dsm_factory)
    dsm = start(dsm_factory, state_dir, "--state-retry", "0.5", "--fsync", "everysec",
                prefix=file_size_limit_prefix(20000))
    acked = _big_statuses(dsm, 80, "FULL")  # ~45 kB of records: the journal hits EFBIG
    client = statserv(dsm)
    client.ok("TOUCH /lab/during TYPE=int")
    client.ok("PUT /lab/during 3")
    client.close()

    wait_for(lambda: journal_fact(dsm, "state") == "failing", 5, "journal state failing")
    error = journal_fact(dsm, "error")
    assert "too large" in error.lower() or "File too large" in error, error
    assert int(journal_fact(dsm, "records_dropped")) > 0
    # Everything is still served from memory, on every port.
    assert_statuses_kept(dsm, acked)
    assert get(dsm, "/lab/during") == '. "3"'
    assert dsm.send_status(b"{'serial_number': 'LATE', 'time_stamp': 1, 'status': 'ok'}") == END
    assert dsm.query_json("s")["LATE"] == [{"time_stamp": 1, "status": "ok"}]
    assert dsm.query(b"m", unix=True) == b"{}" + END
    # The retry's snapshot does not fit either; the daemon never falls over.
    wait_for(lambda: "failed" in journal_fact(dsm, "last_snapshot_error"), 5, "a failed retry")
    assert dsm.proc.poll() is None
    log = dsm.log_text()
    assert "Traceback" not in log
    assert "serving from memory" in log


def test_state_dir_that_has_room_again_recovers_within_a_few_retries(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    dsm = start(dsm_factory, state_dir, "--state-retry", "0.5", "--fsync", "everysec",
                prefix=file_size_limit_prefix(20000))
    acked = _big_statuses(dsm, 80, "ROOM")
    wait_for(lambda: journal_fact(dsm, "state") == "failing", 5, "journal state failing")
    # Let the first retry (a snapshot larger than the limit) fail, then give the disk room.
    wait_for(lambda: journal_fact(dsm, "last_snapshot_error") != "", 5, "a failed retry")
    lift_file_size_limit(dsm.pid)
    wait_for(lambda: journal_fact(dsm, "state") == "ok", 8, "journal state ok again")
    kill9(dsm)
    second = start(dsm_factory, state_dir)
    assert_statuses_kept(second, acked)


def test_removed_state_dir_is_recreated_with_a_fresh_snapshot_and_nothing_is_lost(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    dsm = start(dsm_factory, state_dir, "--state-retry", "0.5", "--history", "100")
    acked = send_statuses_script_style(dsm, 30)
    expected = tree_changes(dsm)
    wait_for(lambda: journal_fact(dsm, "state") == "ok", 5, "journal state ok")

    shutil.rmtree(state_dir)
    wait_for(lambda: os.path.isdir(state_dir) and state_files(state_dir)[0], 10,
             "a fresh snapshot in the recreated state dir")
    wait_for(lambda: journal_fact(dsm, "state") == "ok" and
             float(journal_fact(dsm, "last_snapshot")) > 0, 5, "journal state ok again")
    assert "removed" in dsm.log_text()
    more = send_statuses_script_style(dsm, 6, serials=("AFTER",))
    client = statserv(dsm)
    client.ok("TOUCH /lab/after")
    client.ok("PUT /lab/after yes")
    client.close()
    kill9(dsm)

    second = start(dsm_factory, state_dir, "--history", "100")
    assert_statuses_kept(second, acked)
    assert_statuses_kept(second, more)
    assert_tree(second, expected)
    assert get(second, "/lab/after") == '. "yes"'


def test_a_journal_grown_past_its_limit_gets_an_early_snapshot(dsm_factory):
    dsm = dsm_factory.start("--snapshot-journal-bytes", "10000", "--state-retry", "0.2",
                            "--snapshot-interval", "3600")
    state_dir = dsm.args[dsm.args.index("--state-dir") + 1]
    # One write: the DSM closes a status connection once all it received is answered
    # (pipelining.answered_and_idle; the original took one status per connection), so statuses
    # written one by one could find it closed after the first, and the rest reset.
    statuses = b"".join(b'{"serial_number": "JB", "time_stamp": %d, "status": "002"}\n' % n
                        for n in range(400))  # about 60 bytes of journal each: past 10,000
    with socket.create_connection((LOOPBACK, dsm.status_port), timeout=10) as sock:
        sock.sendall(statuses)
        recv_until_end(sock, count=400)
    wait_for(lambda: any(name.startswith("snapshot-") for name in os.listdir(state_dir)),
             what="an early snapshot")
    assert dsm.proc.poll() is None
    assert len(dsm.query_json("s")["JB"]) == 20
