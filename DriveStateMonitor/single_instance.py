"""One DSM per host: an exclusive lock on <run-dir>/dsm.lock held for the daemon's whole life.

The kernel drops the lock when the process dies, however it dies, so a stale pid file never blocks a
new start (the original grepped `ps`). The pid file only says who holds the lock.

The lock is a POSIX record lock (fcntl F_SETLK via `fcntl.lockf`), not flock: a forked child (the
snapshot and SAVE writers) does not inherit it, so a child that outlives a killed DSM never keeps
the next one from starting. The price of POSIX locks: closing *any* descriptor of dsm.lock in the
holding process drops the lock, so only InstanceLock ever opens that file in the DSM.
new start (the original grepped `ps`). The pid file only says who holds the lock: it is written the
moment the lock is taken, and `lock_holder_pid` believes it only when that process has the lock file
open, so stopDSM and runDSM never signal or name a pid left behind by a crashed DSM.

Local users: the run dir (default under /tmp) must belong to the DSM's user and be writable by
nobody else (`check_run_dir`), or another user could plant symlinks or hold the lock. Files in it are
created with O_EXCL|O_NOFOLLOW (a temporary name, then rename), so a link is never followed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import struct
import stat
from typing import Any, Dict, Optional

LOCK_FILE = "dsm.lock"
PID_FILE = "dsm.pid"
INFO_FILE = "dsm.json"  # pid and the ports actually bound (useful with port 0)
QUERY_SOCKET = "dsm.sock"
STATSERV_SOCKET = "statserv.sock"


class RunDirError(Exception):
    """The run dir is unsafe to use; the message names --run-dir and says why."""
# Run dirs whose lock this process holds, with the holder's pid (a forked child holds none).
_HELD: Dict[str, int] = {}


def _lock_key(run_dir: str) -> str:
    return os.path.realpath(os.path.join(run_dir, LOCK_FILE))


def ensure_run_dir(run_dir: str) -> None:
    """Creates the run dir (0755) if absent and checks it (`check_run_dir`); raises RunDirError."""
    try:
        os.makedirs(run_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise RunDirError("cannot use the run dir %s (--run-dir): %s"
                          % (run_dir, exc.strerror or exc)) from None
    check_run_dir(run_dir)


def _user_name(uid: int) -> str:
    """' (name)' of a uid for messages, '' when it has none."""
    try:
        return " (%s)" % pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def check_run_dir(run_dir: str) -> None:
    """Refuses (RunDirError) a run dir that is not a real directory owned by this user, or that
    group or others may write: anyone who can write there can plant symlinks or hold the lock."""
    try:
        info = os.lstat(run_dir)
    except OSError as exc:
        raise RunDirError("cannot use the run dir %s (--run-dir): %s"
                          % (run_dir, exc.strerror or exc)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise RunDirError("the run dir %s (--run-dir) is not a directory (a symlink?); remove it "
                          "or choose another --run-dir" % run_dir)
    if info.st_uid != os.geteuid():
        raise RunDirError("the run dir %s (--run-dir) belongs to uid %d%s, not to this user, uid "
                          "%d%s; choose another --run-dir (or have its owner remove it)"
                          % (run_dir, info.st_uid, _user_name(info.st_uid), os.geteuid(),
                             _user_name(os.geteuid())))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RunDirError("the run dir %s (--run-dir) is writable by group or others (mode %04o); "
                          "chmod go-w it or choose another --run-dir"
                          % (run_dir, stat.S_IMODE(info.st_mode)))


class InstanceLock:
    """The lock file, held while this object is acquired."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        """Takes the lock without waiting; False if another process holds it."""
        fd = os.open(os.path.join(self.run_dir, LOCK_FILE),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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
        # At once, before the (possibly long) restore: from now on the pid file names the holder.
        _write_atomic(os.path.join(self.run_dir, PID_FILE), "%d\n" % os.getpid())
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


def lock_holder_pid(run_dir: str) -> Optional[int]:
    """The pid of the DSM holding the lock in `run_dir`, or None when no live process can be tied
    to it: the pid file's process must have the lock file open (/proc/<pid>/fd), which a recycled
    pid of a crashed DSM never has."""
    if not lock_is_held(run_dir):
        return None
    pid = read_pid(run_dir)
    if pid is None or pid <= 0:
        return None
    lock_path = os.path.realpath(os.path.join(run_dir, LOCK_FILE))
    fd_dir = "/proc/%d/fd" % pid
    try:
        names = os.listdir(fd_dir)
    except PermissionError:
        return pid if _cmdline_is_dsm(pid) else None
    except OSError:
        return None
    for name in names:
        try:
            if os.readlink(os.path.join(fd_dir, name)) == lock_path:
                return pid
        except OSError:
            continue
    return None


def _cmdline_is_dsm(pid: int) -> bool:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"DriveStateMonitor" in f.read()
    except OSError:
        return False


def read_pid(run_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(run_dir, PID_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write_atomic(path: str, text: str) -> None:
    """Writes a temporary name with O_EXCL|O_NOFOLLOW (never through a planted link), then renames
    it over `path` (rename replaces a link itself, never its target)."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # our own leftover (same pid after a crash), or a planted entry
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
