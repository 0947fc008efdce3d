"""One DSM per host: an exclusive lock on <run-dir>/dsm.lock held for the daemon's whole life.

The kernel drops the lock when the process dies, however it dies, so a stale pid file never blocks a
new start (the original grepped `ps`). The pid file only says who holds the lock.

The lock is a POSIX record lock (fcntl F_SETLK via `fcntl.lockf`), not flock: a forked child (the
snapshot and SAVE writers) does not inherit it, so a child that outlives a killed DSM never keeps
the next one from starting. The price of POSIX locks: closing *any* descriptor of dsm.lock in the
holding process drops the lock, so only InstanceLock ever opens that file in the DSM.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
from typing import Any, Dict, Optional

LOCK_FILE = "dsm.lock"
PID_FILE = "dsm.pid"
INFO_FILE = "dsm.json"  # pid and the ports actually bound (useful with port 0)
QUERY_SOCKET = "dsm.sock"
STATSERV_SOCKET = "statserv.sock"


# Run dirs whose lock this process holds, with the holder's pid (a forked child holds none).
_HELD: Dict[str, int] = {}


def _lock_key(run_dir: str) -> str:
    return os.path.realpath(os.path.join(run_dir, LOCK_FILE))


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
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        os.set_inheritable(fd, False)
        self._fd = fd
        _HELD[_lock_key(self.run_dir)] = os.getpid()
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
        _HELD.pop(_lock_key(self.run_dir), None)


def lock_is_held(run_dir: str) -> bool:
    """True while some process holds the DSM lock in `run_dir`."""
    if _HELD.get(_lock_key(run_dir)) == os.getpid():
        return True  # ours: opening and closing the file here would drop it (POSIX locks)
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # F_GETLK asks without taking anything (taking and dropping a lock here would do no
        # harm in another process, but asking is enough).
        query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        return struct.unpack("hhqqi", answer)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


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
