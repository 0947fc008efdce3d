"""Wave-2 attack: new inputs of the kinds issues 9 and 10 named, against the merged daemon.

Each test is one *kind* found breaking the DSM after the first fixes, with the inputs that showed it:
state files that are not regular files (a FIFO hung the start for good), serial numbers too long to
be served on every output, and a status with a raw line break inside a string, which got one
error reply per line instead of one per message.
"""
from __future__ import annotations

import json
import os
import signal
import socket

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor import persistence
from DriveStateMonitor.status_protocol import StatusParser

from dsm_harness import END, LOOPBACK, recv_until_end, wait_for


def _state_dir(dsm) -> str:
    return dsm.args[dsm.args.index("--state-dir") + 1]


def _numbered(state_dir: str, prefix: str) -> int:
    return max(int(name[len(prefix):].split(".")[0]) for name in os.listdir(state_dir)
               if name.startswith(prefix) and name.split(".")[-1] in ("json", "log"))


# --- state files that are not regular files ------------------------------------------------------
def test_read_state_file_refuses_a_fifo_and_a_device_without_blocking(tmp_path):
    fifo = str(tmp_path / "journal-7.log")
    os.mkfifo(fifo)
    device = str(tmp_path / "snapshot-8.json")
    os.symlink("/dev/zero", device)  # read() of it would never end
    for path in (fifo, device, str(tmp_path)):
        with pytest.raises(OSError):
            persistence.read_state_file(path)
    regular = tmp_path / "snapshot-1.json"
    regular.write_bytes(b"abc")
    assert persistence.read_state_file(str(regular)) == b"abc"


def test_load_state_skips_fifo_and_device_state_files(tmp_path):
    os.mkfifo(str(tmp_path / "journal-3.log"))
    os.symlink("/dev/zero", str(tmp_path / "snapshot-9.json"))
    loaded = persistence.load_state(str(tmp_path))  # returning at all is the point: no hang
    assert loaded.snapshot is None and loaded.records == []
    assert loaded.snapshots_unreadable == 1
    assert str(tmp_path / "journal-3.log") in loaded.damaged


def test_dsm_starts_and_serves_past_a_fifo_and_a_device_in_its_state_dir(dsm_factory):
    dsm = dsm_factory.start()
    for i in range(5):
        message = json.dumps({"serial_number": "KEEP%d" % i, "time_stamp": 1, "status": i})
        assert dsm.send_status(message.encode()) == END
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0
    state_dir = _state_dir(dsm)
    newest = _numbered(state_dir, "snapshot-")
    os.mkfifo(os.path.join(state_dir, "journal-%d.log" % (newest + 2)))
    os.symlink("/dev/zero", os.path.join(state_dir, "snapshot-%d.json" % (newest + 1)))
    again = dsm_factory.start("--state-dir", state_dir)  # wait_ready fails if the start hangs
    assert set(again.query_json("s")) == {"KEEP%d" % i for i in range(5)}
    assert again.send_status(b'{"serial_number": "NEW", "time_stamp": 1, "status": 1}') == END
    assert "not a regular file" in again.log_text()
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0
