"""State dir edge cases (issue 9, wave 2): a state dir that exists but cannot be listed is never
written into (nothing in it can be overwritten), a new snapshot never replaces an existing file,
and old files that were never loaded are checked before cleanup removes them — the damaged ones
are renamed aside, never deleted."""
from __future__ import annotations

import logging
import os
from typing import Any, List

import pytest
from dsm_harness import wait_for

from DriveStateMonitor import persistence
from DriveStateMonitor.persistence import (FSYNC_ALWAYS, Journal, encode_record, journal_path,
                                           load_state, snapshot_path, write_snapshot)


def journal_bytes(records: List[Any]) -> bytes:
    return b"".join(encode_record(r, index) for index, r in enumerate(records))


def write_journal(state_dir: str, seq: int, records: List[Any]) -> None:
    with open(journal_path(state_dir, seq), "wb") as f:
        f.write(journal_bytes(records))


def flip_middle(path: str) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x55
        f.seek(0)
        f.write(bytes(data))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def unlistable(monkeypatch, tmp_path):
    """A state dir whose listing fails with EACCES (tests run as root, where chmod cannot)."""
    state_dir = str(tmp_path / "state")
    os.makedirs(state_dir)
    write_snapshot(state_dir, 1, {"format": 1, "precious": True})
    write_journal(state_dir, 1, [["w", 1.0]])
    real = os.listdir

    def listdir(path: Any = ".") -> List[str]:
        if os.path.abspath(str(path)) == os.path.abspath(state_dir):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(persistence.os, "listdir", listdir)
    return state_dir


def test_an_unlistable_state_dir_is_reported_and_nothing_is_loaded(unlistable, caplog):
    with caplog.at_level(logging.CRITICAL, logger="dsm.state"):
        loaded = load_state(unlistable)
    assert loaded.unreadable and "Permission denied" in loaded.unreadable
    assert loaded.snapshot is None and loaded.records == []
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical and "--state-dir" in critical[0] and "chmod" in critical[0]


def test_an_unlistable_state_dir_is_never_written_and_acks_are_refused(unlistable):
    before = {name: read(os.path.join(unlistable, name))
              for name in ("snapshot-1.json", "journal-1.log")}
    loaded = load_state(unlistable)
    journal = Journal(unlistable, FSYNC_ALWAYS, lambda: {"format": 1, "empty": True},
                      clock=lambda: 5.0)
    journal.blocked = loaded.unreadable
    assert not journal.open(loaded.next_seq)
    assert journal.refusing and "cannot list the state dir" in journal.refusing
    journal.record(["w", 2.0])
    journal.flush(0.0)
    assert not journal.start_snapshot()  # the --state-retry path
    assert not journal.snapshot_now()    # the final snapshot at a stop
    assert "cannot list" in journal.status()["last_snapshot_error"]
    after = {name: read(os.path.join(unlistable, name)) for name in before}
    assert after == before
    assert sorted(_real_listdir(unlistable)) == ["journal-1.log", "snapshot-1.json"]


def _real_listdir(path: str) -> List[str]:
    return [entry.name for entry in os.scandir(path)]


def test_a_new_snapshot_never_replaces_an_existing_file(tmp_path):
    state_dir = str(tmp_path)
    write_snapshot(state_dir, 1, {"format": 1, "precious": True})
    precious = read(snapshot_path(state_dir, 1))
    journal = Journal(state_dir, FSYNC_ALWAYS, lambda: {"format": 1, "new": True},
                      clock=lambda: 5.0)
    journal.open(0)  # as if the listing had missed snapshot-1: the next number would be 1
    assert journal.snapshot_now()
    assert read(snapshot_path(state_dir, 1)) == precious
    assert os.path.exists(snapshot_path(state_dir, 2))


def older_files(state_dir: str) -> None:
    """snapshot-1 + journal-1 (both damaged), snapshot-2 + journal-2 (intact), snapshot-3 +
    journal-3 (the newest, loaded): 1 and 2 are never read by the load."""
    for seq in (1, 2, 3):
        write_snapshot(state_dir, seq, {"format": 1, "seq": seq, "pad": "x" * 200})
        write_journal(state_dir, seq, [["w", float(seq)], ["w", seq + 0.5]])
    flip_middle(snapshot_path(state_dir, 1))
    flip_middle(journal_path(state_dir, 1))


@pytest.mark.parametrize("forked", [False, True])
def test_old_files_never_loaded_are_checked_before_cleanup_and_damaged_ones_kept(tmp_path,
                                                                                forked):
    state_dir = str(tmp_path)
    older_files(state_dir)
    loaded = load_state(state_dir)
    assert loaded.snapshot_seq == 3 and loaded.checked_from == 3 and not loaded.damaged
    journal = Journal(state_dir, FSYNC_ALWAYS, lambda: {"format": 1, "seq": "new"},
                      clock=lambda: 1_700_000_000.0)
    journal.checked_from = loaded.checked_from
    journal.open(loaded.next_seq)
    if forked:  # the snapshot child does the cleanup; the parent counts what it renamed
        assert journal.start_snapshot()
        results: List[Any] = []
        wait_for(lambda: results.append(journal.poll_snapshot()) or results[-1] is not None,
                 10, "the snapshot child to finish")
        result = results[-1]
        assert result is True
    else:
        assert journal.snapshot_now()
    names = sorted(os.listdir(state_dir))
    damaged = [name for name in names if ".damaged-" in name]
    assert sorted(name.partition(".damaged-")[0] for name in damaged) == \
        ["journal-1.log", "snapshot-1.json"]
    assert "snapshot-2.json" not in names and "journal-2.log" not in names  # intact: removed
    assert "snapshot-3.json" in names and "journal-3.log" in names  # the previous: kept
    assert journal.status()["files_quarantined"] == 2


def test_an_unreadable_older_snapshot_is_quarantined_not_removed(tmp_path, monkeypatch):
    state_dir = str(tmp_path)
    write_snapshot(state_dir, 1, {"format": 1, "seq": 1})
    write_snapshot(state_dir, 2, {"format": 1, "seq": 2})
    flip_middle(snapshot_path(state_dir, 2))
    real_open = os.open

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> Any:
        # State files are read through os.open (non-blocking, regular files only); as root a
        # chmod would not stop the read, so the refusal is simulated where the file is opened.
        if str(path).endswith("snapshot-1.json") and not flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    loaded = load_state(state_dir)
    monkeypatch.undo()
    assert snapshot_path(state_dir, 1) in loaded.damaged


def test_the_daemon_on_an_unlistable_state_dir_refuses_acks_under_fsync_always(unlistable):
    from test_boundary_contract import in_process_dsm
    from DriveStateMonitor.status_protocol import parse_status
    before = read(os.path.join(unlistable, "snapshot-1.json"))
    with in_process_dsm(unlistable, "--fsync", "always") as daemon:
        report = parse_status(b'{"serial_number": "S1", "time_stamp": 1, "status": "ok"}')
        why = daemon.store_status(report)
        assert why is not None and "not stored: the state dir is failing" in why
        assert "cannot list the state dir" in why
        assert not daemon.journal.snapshot_now()
    assert read(os.path.join(unlistable, "snapshot-1.json")) == before
    assert sorted(_real_listdir(unlistable)) == ["journal-1.log", "snapshot-1.json"]
