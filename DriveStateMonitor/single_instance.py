"""One DSM per host: an exclusive flock on <run-dir>/dsm.lock held for the daemon's whole life.

The kernel drops the lock when the process dies, however it dies, so a stale pid file never blocks a
new start (the original grepped `ps`). The pid file only says who holds the lock.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from typing import Any, Dict, Optional

LOCK_FILE = "dsm.lock"
PID_FILE = "dsm.pid"
INFO_FILE = "dsm.json"  # pid and the ports actually bound (useful with port 0)
QUERY_SOCKET = "dsm.sock"
STATSERV_SOCKET = "statserv.sock"


def ensure_run_dir(run_dir: str) -> None:
    os.makedirs(run_dir, mode=0o755, exist_ok=True)


class InstanceLock:
    """The lock file, held while this object is acquired."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        """Takes the lock without waiting; False if another process holds it."""
        fd = os.open(os.path.join(self.run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        os.set_inheritable(fd, False)
        self._fd = fd
        return True

    def write_info(self, info: Dict[str, Any]) -> None:
        """Writes the pid file and dsm.json (atomically: readers never see half a file)."""
        _write_atomic(os.path.join(self.run_dir, PID_FILE), "%d\n" % info["pid"])
        _write_atomic(os.path.join(self.run_dir, INFO_FILE), json.dumps(info, indent=1) + "\n")

    def release(self) -> None:
        if self._fd is None:
            return
        for name in (PID_FILE, INFO_FILE):
            try:
                os.unlink(os.path.join(self.run_dir, name))
            except OSError:
                pass
        os.close(self._fd)  # the lock file itself stays: unlinking it would race a new start
        self._fd = None


def lock_is_held(run_dir: str) -> bool:
    """True while some process holds the DSM lock in `run_dir`."""
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def read_pid(run_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(run_dir, PID_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write_atomic(path: str, text: str) -> None:
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
