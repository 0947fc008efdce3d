"""Issue 9 end to end: a DSM started on damage, killed during a snapshot, on a full disk with
`--fsync always`, stopped while its final snapshot fails, and SAVE kept away from its own files.

Real DSM processes on loopback with temporary dirs (dsm_harness); no sleeps as synchronisation.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Dict, List

import pytest

from DriveStateMonitor.launcher import stop_dsm
from DriveStateMonitor.metrics import empty_facts, render_metrics
from DriveStateMonitor.persistence import decode_snapshot
from dsm_harness import END, wait_for
from test_durability import (assert_statuses_kept, get, journal_fact, kill9, new_state_dir,
                             send_statuses_script_style, start, statserv)


def status_message(serial: str, n: int, payload: str = "") -> bytes:
    return str({"serial_number": serial, "time_stamp": "t%06d" % n,
                "status": "%04d%s" % (n, payload)}).encode()


def children_of(pid: int) -> List[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- damage found at start ----------------------------------------------------------------------
def test_snapshot_with_one_changed_item_starts_serves_the_rest_and_reports_it(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    first = start(dsm_factory, state_dir, "--history", "100")
    acked = send_statuses_script_style(first, 12)
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    [name] = [n for n in os.listdir(state_dir) if n.startswith("snapshot-")]
    path = os.path.join(state_dir, name)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # The case: one status entry changed, the file still well-formed.
    victim = next(i for i, line in enumerate(lines) if b"DUR-B" in line)
    assert b"0001" in lines[victim]
    lines[victim] = lines[victim].replace(b"0001", b"x001", 1)
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))

    second = start(dsm_factory, state_dir, "--history", "100")
    statuses = second.query_json("s")
    assert "DUR-B" not in statuses  # its history was the damaged item: not served changed
    for serial in ("DUR-A", "DUR-C"):
        assert statuses[serial] == acked[serial]
    log = second.log_text()
    critical = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1 and "1 snapshot items could not be loaded" in critical[0], log
    assert journal_fact(second, "items_skipped") == "1"
    quarantined = wait_for(lambda: [n for n in os.listdir(state_dir)
                                    if n.startswith(name + ".damaged-")], what="quarantine")
    with open(os.path.join(state_dir, quarantined[0]), "rb") as f:
        assert f.read() == b"\n".join(lines)  # renamed, never cut or rewritten


def test_metrics_show_what_a_start_could_not_load():
    facts = empty_facts()
    facts["journal"].update(records_skipped=3, items_skipped=2, snapshots_unreadable=1,
                            files_quarantined=2)
    text = render_metrics(facts)
    for line in ("dsm_state_records_skipped_total 3", "dsm_state_items_skipped_total 2",
                 "dsm_state_snapshots_unreadable_total 1", "dsm_state_files_quarantined_total 2"):
        assert line in text.splitlines(), line


# --- kill -9 during a snapshot ------------------------------------------------------------------
def test_kill_9_during_a_snapshot_then_an_immediate_restart_serves_at_once(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    args = ("--history", "1000", "--snapshot-interval", "0.05")
    dsm = start(dsm_factory, state_dir, *args, run_dir=run_dir)
    # Enough data that each snapshot takes a while, so the child is caught writing.
    acked = send_statuses_script_style(dsm, 300, payload="p" * 2000)
    figures = []
    for round_number in range(3):
        child, child_fds = catch_snapshot_child(dsm)
        # Caught writing its snapshot: it holds that file and not one socket of the parent's.
        assert any(".tmp." in link for link in child_fds), child_fds
        assert not [link for link in child_fds if link.startswith("socket:")], child_fds
        killed_at = time.monotonic()
        kill9(dsm)
        dsm = start(dsm_factory, state_dir, *args, run_dir=run_dir)
        statuses = dsm.query_json("s")
        figures.append(time.monotonic() - killed_at)
        assert statuses == {serial: acked[serial] for serial in statuses} and \
            set(statuses) == set(acked), "round %d" % round_number
        assert "already running" not in dsm.log_text()
        wait_for(lambda child=child: not alive(child), 5,
                 "the orphaned snapshot child to die with its parent")
    print("\nkill -9 during a snapshot, 3 rounds: restart serving %s s after the kill"
          % ", ".join("%.2f" % f for f in figures))


def catch_snapshot_child(dsm, timeout: float = 20.0):
    """A snapshot child of `dsm` and its open files, caught while it writes the snapshot."""
    deadline = time.monotonic() + timeout
    for _ in range(1_000_000):
        assert time.monotonic() < deadline, "never caught a snapshot child writing"
        for child in children_of(dsm.pid):
            try:
                links = [os.readlink("/proc/%d/fd/%s" % (child, fd))
                         for fd in os.listdir("/proc/%d/fd" % child)]
            except OSError:
                continue  # it ended meanwhile
            if any(".tmp." in link for link in links):
                return child, links
    raise AssertionError("unreachable")


# --- a full disk with --fsync always --------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs the test mounts (root only) and always unmounts."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = str(tmp_path / "tmpfs")
    os.makedirs(mount_point)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount_point],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % result.stderr.strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], capture_output=True)


def fill(mount_point: str, leave: int) -> str:
    """A filler file that leaves about `leave` bytes free."""
    path = os.path.join(mount_point, "filler")
    stat = os.statvfs(mount_point)
    free = stat.f_bavail * stat.f_frsize
    with open(path, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
        except OSError:
            pass
    return path


def test_full_disk_with_fsync_always_acknowledges_nothing_unstored_then_resumes(
        dsm_factory, small_tmpfs):
    state_dir = os.path.join(small_tmpfs, "state")
    dsm = start(dsm_factory, state_dir, "--history", "1000", "--state-retry", "0.2",
                "--snapshot-interval", "3600")
    filler = fill(small_tmpfs, 16 * 1024)
    acked: Dict[str, List[Dict[str, str]]] = {}
    replies: Dict[str, int] = {"ack": 0, "closed": 0, "refused": 0}
    refusal = None
    unanswered: List[Dict[str, str]] = []
    for n in range(2000):
        message = status_message("FULL", n, "x" * 200)
        reply = dsm.send_status(message)
        if reply == END:
            replies["ack"] += 1
            acked.setdefault("FULL", []).append(
                {"time_stamp": "t%06d" % n, "status": "%04d%s" % (n, "x" * 200)})
        elif reply == b"":
            # The pass whose journal write failed: no answer at all (stored in memory only,
            # and in the recovery snapshot later, but never acknowledged).
            replies["closed"] += 1
            unanswered.append({"time_stamp": "t%06d" % n, "status": "%04d%s" % (n, "x" * 200)})
        else:
            replies["refused"] += 1
            refusal = json.loads(reply[:-1])
            break
    assert refusal is not None, replies
    assert refusal["error"].startswith("not stored: the state dir is failing: "), refusal
    assert reply.endswith(END)
    client = statserv(dsm)
    assert client.ask("TOUCH /lab/full").startswith("! LIMIT not stored: the state dir is failing")
    client.close()
    assert "error" in json.loads(dsm.query(b"w")[:-1])
    # Nothing refused is in memory either.
    assert dsm.query_json("s")["FULL"] == acked["FULL"] + unanswered

    os.unlink(filler)  # room again: a recovery snapshot lands, acknowledgements resume
    wait_for(lambda: dsm.send_status(status_message("AFTER", 1)) == END, 10,
             "acknowledgements to resume")
    kill9(dsm)
    second = start(dsm_factory, state_dir, "--history", "1000")
    assert second.query_json("s")["FULL"][:len(acked["FULL"])] == acked["FULL"]  # all on disk
    assert second.query_json("s")["AFTER"][0]["status"] == "0001"
    print("\nfull tmpfs, --fsync always: %s" % replies)


def test_stop_whose_final_snapshot_fails_exits_4_and_stopdsm_reports_it(
        dsm_factory, small_tmpfs, capsys):
    state_dir = os.path.join(small_tmpfs, "state")
    dsm = start(dsm_factory, state_dir, "--history", "1000", "--state-retry", "3600",
                "--snapshot-interval", "3600")
    send_statuses_script_style(dsm, 20, payload="y" * 200)
    fill(small_tmpfs, 0)
    code = stop_dsm(["--run-dir", dsm.run_dir, "--timeout", "15"])
    err = capsys.readouterr().err
    assert dsm.wait_exit() == 4
    assert code == 4 and "exit code 4" in err and "final snapshot failed" in err, err
    assert "CRITICAL" in dsm.log_text() and "final snapshot failed" in dsm.log_text()


# --- SAVE -----------------------------------------------------------------------------------------
def test_save_with_the_name_of_every_state_file_never_touches_the_state(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    dsm = start(dsm_factory, state_dir, "--history", "100", "--snapshot-interval", "0.2")
    acked = send_statuses_script_style(dsm, 30)
    client = statserv(dsm)
    client.ok("TOUCH /lab/keep")
    client.ok("PUT /lab/keep kept")
    wait_for(lambda: any(n.startswith("snapshot-") for n in os.listdir(state_dir)), 10,
             "a periodic snapshot")
    seq = int(journal_fact(dsm, "journal_seq"))
    names = set(os.listdir(state_dir)) | {"snapshot-%d.json" % n for n in range(seq + 3)} | {
        "journal-%d.log" % n for n in range(seq + 3)} | {"statserv.save", "dsm.lock"}
    answers = {}
    for name in sorted(names):
        answers[name] = client.ask("SAVE " + name)
    for name in ("../snapshot-1.json", ".hidden", "saves/../journal-1.log",
                 "../state/journal-%d.log" % seq, "/etc/passwd", "a/b"):
        answers[name] = client.ask("SAVE " + name)
        assert answers[name].startswith("! DENIED"), (name, answers[name])
    for name in names - {"saves"}:
        assert answers[name] == ".", (name, answers[name])
        with open(os.path.join(state_dir, "saves", name), encoding="utf-8") as f:
            assert "/lab/keep = " in f.read()
    for name in os.listdir(state_dir):
        if name.startswith("snapshot-"):
            with open(os.path.join(state_dir, name), "rb") as f:
                assert decode_snapshot(f.read())[1].intact, name
    client.close()
    kill9(dsm)
    second = start(dsm_factory, state_dir, "--history", "100")
    assert_statuses_kept(second, acked)
    assert get(second, "/lab/keep") == '. "kept"'
    assert "damaged" not in second.log_text()


def test_save_flood_is_refused_with_limit_and_the_loop_keeps_answering(dsm_factory):
    state_dir = new_state_dir(dsm_factory)
    dsm = start(dsm_factory, state_dir)
    loader = statserv(dsm)
    batch = "".join("TOUCH /flood/o%05d TYPE=int\nPUT /flood/o%05d %d\n" % (n, n, n)
                    for n in range(5000))
    loader.sock.sendall(batch.encode())
    for _ in range(10000):
        answer = loader._line(time.monotonic() + 30)
        assert answer == ".", answer
    clients = [statserv(dsm) for _ in range(6)]
    per_client = 15
    for number, client in enumerate(clients):  # pipelined: all SAVEs at once
        client.sock.sendall("".join("SAVE flood-%d-%d\n" % (number, i)
                                    for i in range(per_client)).encode())
    slowest = 0.0
    answers: Dict[str, int] = {}
    for client in clients:
        for _ in range(per_client):
            started = time.monotonic()
            assert dsm.query_json("m") is not None  # the loop answers meanwhile
            slowest = max(slowest, time.monotonic() - started)
            answer = client._line(time.monotonic() + 30)
            answers[answer[:7]] = answers.get(answer[:7], 0) + 1
    assert set(answers) <= {".", "! LIMIT"}, answers
    assert answers.get(".", 0) >= 1 and answers.get("! LIMIT", 0) >= 1, answers
    saves = os.path.join(state_dir, "saves")
    assert len(os.listdir(saves)) == answers["."]  # no temporary files left behind
    assert slowest < 2.0
    for client in clients + [loader]:
        client.close()
    print("\nSAVE flood: %d SAVEs of a 5,000-object tree: %s; slowest query meanwhile %.3f s"
          % (len(clients) * per_client, answers, slowest))
