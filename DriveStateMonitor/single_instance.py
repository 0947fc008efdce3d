"""One DSM per host: an exclusive lock on <run-dir>/dsm.lock held for the daemon's whole life.

The kernel drops the lock when the process dies, however it dies, so a stale pid file never blocks a
new start (the original grepped `ps`). The pid file only says who holds the lock.

The lock is a POSIX record lock (fcntl F_SETLK via `fcntl.lockf`), not flock: a forked child (the
snapshot and SAVE writers) does not inherit it, so a child that outlives a killed DSM never keeps
the next one from starting. The price of POSIX locks: closing *any* descriptor of dsm.lock in the
holding process drops the lock, so only InstanceLock ever opens that file in the DSM. The pid file
only says who holds the lock: it is written the moment the lock is taken, and `lock_holder_pid`
believes it only when that process has the lock file open, so stopDSM and runDSM never signal or
name a pid left behind by a crashed DSM.

Local users: the run dir (default under /tmp) must belong to the DSM's user and be writable by
nobody else (`check_run_dir`), or another user could plant symlinks or hold the lock. Files in it are
created with O_EXCL|O_NOFOLLOW (a temporary name, then rename), so a link is never followed.

A shared machine: the default run dir is one path for every user, and another user's run dir is
refused. So a DSM that created its run dir removes it when it stops (InstanceLock.release): after a
lab user's DSM, root's plain start works, and the reverse. `running_dsms` finds the DSMs of one
folder with their run dirs (/proc), for stopDSM to name the one that runs elsewhere.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import struct
import stat
from typing import Any, Dict, List, Optional, Tuple

from .local_dirs import unsafe_path

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


def ensure_run_dir(run_dir: str) -> bool:
    """Creates the run dir (0755) if absent and checks it (`check_run_dir`); raises RunDirError.
    True if this call created it (then a clean stop removes it again: InstanceLock.release)."""
    if not os.path.lexists(run_dir):  # made past no link or dir of another user
        on_the_way = unsafe_path(run_dir)
        if on_the_way is not None:
            raise RunDirError("cannot use the run dir %s (--run-dir): %s; choose another "
                              "--run-dir" % (run_dir, on_the_way))
    try:
        os.makedirs(run_dir, mode=0o755)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise RunDirError("cannot use the run dir %s (--run-dir): %s"
                          % (run_dir, exc.strerror or exc)) from None
    check_run_dir(run_dir)
    return created


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
                          "%d%s; choose another --run-dir (or have its owner remove it)%s"
                          % (run_dir, info.st_uid, _user_name(info.st_uid), os.geteuid(),
                             _user_name(os.geteuid()), _left_behind(run_dir)))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RunDirError("the run dir %s (--run-dir) is writable by group or others (mode %04o); "
                          "chmod go-w it or choose another --run-dir"
                          % (run_dir, stat.S_IMODE(info.st_mode)))
    on_the_way = unsafe_path(run_dir)
    if on_the_way is not None:
        raise RunDirError("cannot use the run dir %s (--run-dir): %s; choose another --run-dir"
                          % (run_dir, on_the_way))


def _left_behind(run_dir: str) -> str:
    """For the refusal of another user's run dir: says so when no DSM runs there (a killed one
    left it; a clean stop removes the run dir it made), with the command that clears it."""
    try:
        if lock_is_held(run_dir):
            return ""
    except OSError:
        return ""
    return ("; no DSM runs there (one that was killed left it behind): remove it with "
            "`sudo rm -r %s`" % run_dir)


class InstanceLock:
    """The lock file, held while this object is acquired."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._fd: Optional[int] = None
        # Set by the caller when ensure_run_dir created the run dir: release() removes it then,
        # so the next user's default start (root after a lab user, or the reverse) finds none.
        self.created_dir = False

    def acquire(self) -> bool:
        """Takes the lock without waiting; False if another process holds it.

        A stopping DSM that created the run dir removes its lock file and the dir (release), so
        the file locked must still be the one the path names, and a dir removed between
        ensure_run_dir and here is made again: a few tries, then OSError."""
        path = os.path.join(self.run_dir, LOCK_FILE)
        for _ in range(5):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except FileNotFoundError:  # the run dir went with a DSM that stopped just now
                self.created_dir = ensure_run_dir(self.run_dir) or self.created_dir
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            if _same_inode(fd, path):
                break
            os.close(fd)  # locked a file its stopping holder had just unlinked: try the new one
        else:
            raise OSError(errno.EAGAIN, "the lock file kept changing", path)
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
        """Removes the pid file and dsm.json and drops the lock. A run dir this DSM created goes
        too (lock file first, while still held: a new start that opened it sees the inode change
        and retries, see acquire); it stays if anything else is in it (dsm.exit for stopDSM)."""
        if self._fd is None:
            return
        names = (PID_FILE, INFO_FILE) + ((LOCK_FILE,) if self.created_dir else ())
        for name in names:
            try:
                os.unlink(os.path.join(self.run_dir, name))
            except OSError:
                pass
        # In a dir it did not create the lock file stays: unlinking it would race a new start.
        os.close(self._fd)
        self._fd = None
        _HELD.pop(_lock_key(self.run_dir), None)
        if self.created_dir:
            try:
                os.rmdir(self.run_dir)
            except OSError:
                pass  # not empty (an exit note, a new DSM's files): it stays


def _same_inode(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def lock_is_held(run_dir: str) -> bool:
    """True while some process holds the DSM lock in `run_dir`."""
    if _HELD.get(_lock_key(run_dir)) == os.getpid():
        return True  # ours: opening and closing the file here would drop it (POSIX locks)
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        # Never through a link, never blocking on a FIFO planted in another user's run dir.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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
    """The pid in the pid file, or None; never through a link or blocking on a FIFO."""
    try:
        fd = os.open(os.path.join(run_dir, PID_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd) as f:
            return int(f.read(64).strip())
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


def running_dsms(daemon_script: str,
                 default_run_dir: Optional[str] = None) -> List[Tuple[int, Optional[str]]]:
    """(pid, run dir) of each process running `daemon_script` (this folder's
    DriveStateMonitor.py), from /proc: the run dir is where its open dsm.lock is, or, when its
    descriptors cannot be read (another user's process, a snapshot child), its `--run-dir`
    argument, else `default_run_dir` (None if that cannot be told). Empty without /proc."""
    script = os.path.realpath(daemon_script)
    found: List[Tuple[int, Optional[str]]] = []
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = [arg.decode("utf-8", "replace") for arg in f.read().split(b"\0") if arg]
        except OSError:
            continue
        try:
            cwd: Optional[str] = os.readlink("/proc/%d/cwd" % pid)
        except OSError:  # another user's process: only absolute paths can be told
            cwd = None
        runs = any(os.path.realpath(os.path.join(cwd or "/", arg)) == script
                   for arg in argv[:3] if arg.endswith(".py"))
        if runs:
            found.append((pid, _held_run_dir(pid) or _run_dir_argument(argv, cwd,
                                                                         default_run_dir)))
    return found


def _held_run_dir(pid: int) -> Optional[str]:
    """The dir of the dsm.lock process `pid` has open, if its descriptors can be read."""
    fd_dir = "/proc/%d/fd" % pid
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if os.path.basename(target) == LOCK_FILE:
            return os.path.dirname(target)
    return None


def _run_dir_argument(argv: List[str], cwd: Optional[str],
                      default: Optional[str]) -> Optional[str]:
    """The value of the last --run-dir in `argv` (else `default`), made absolute against `cwd`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == "--run-dir" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--run-dir="):
            value = arg.split("=", 1)[1]
    if value is None or (cwd is None and not os.path.isabs(value)):
        return None
    return os.path.normpath(os.path.join(cwd or "/", value))
