"""Where the DSM keeps its state and logs by default, and the check that a dir can be used.

Theory of operation
-------------------
State (snapshot, journal, SAVE files) and logs belong to the host, not to the code: a copied
`DriveStateMonitor/` folder must never bring along another host's drives, so neither default is
inside the folder. Root gets the places a Debian admin looks first; a lab user, who cannot write
there, gets the XDG state dir (https://specifications.freedesktop.org/basedir-spec/latest/):

    root          state /var/lib/DriveStateMonitor       logs /var/log/DriveStateMonitor
    anyone else   state $XDG_STATE_HOME/DriveStateMonitor/state   logs .../DriveStateMonitor/logs
                  ($XDG_STATE_HOME defaults to ~/.local/state)

The run dir (lock, pid, sockets) stays /tmp/DriveStateMonitor so every user of the host finds the one
DSM. A dir that cannot be used is reported by `unusable_dir` as one sentence naming the option that
fixes it, for the terminal — before the daemon starts, not only in its log.

Local users: the state dir, its `saves/` and the log dir get the run dir's rules
(single_instance.check_run_dir): `unsafe_dir` refuses a dir that is not this user's, or that group
or others may write — whoever can write there can plant a link under a name the DSM is about to
write (a snapshot, a SAVE, the log) and have a root DSM write a root-owned file wherever it
points. A symlink *to* a dir (an admin moving /var/lib/DriveStateMonitor to another disk) is
followed only when the link is this user's or root's. The files themselves are opened with
O_NOFOLLOW (`open_append_no_follow`, persistence.create_new_file), so a link is never followed
even where a check could be raced.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from typing import Mapping, Optional

APP = "DriveStateMonitor"


def _state_home(env: Mapping[str, str]) -> str:
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the spec: a relative value is invalid and ignored
        return xdg
    return os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")


def default_state_dir(euid: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """The default `--state-dir` for the user `euid` (default: this process's) and environment."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return "/var/lib/" + APP
    return os.path.join(_state_home(os.environ if env is None else env), APP, "state")


def default_log_dir(euid: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """The default `--log-dir` for the user `euid` (default: this process's) and environment."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return "/var/log/" + APP
    return os.path.join(_state_home(os.environ if env is None else env), APP, "logs")


def unusable_dir(path: str, what: str, option: str) -> Optional[str]:
    """Creates `path` (and its parents) if needed; None when this user can write there, else one
    sentence for the terminal: what failed, and `option` as the fix. `what` names the dir's use."""
    try:
        make_dirs(path)
    except OSError as exc:
        return "cannot use %s as the %s: %s; choose another with %s DIR" % (
            path, what, exc.strerror or exc, option)
    if not os.path.isdir(path):
        return "cannot use %s as the %s: not a directory; choose another with %s DIR" % (
            path, what, option)
    if not os.access(path, os.W_OK | os.X_OK):
        return "cannot use %s as the %s: this user (uid %d) may not write there; choose another " \
               "with %s DIR" % (path, what, os.geteuid(), option)
    return unsafe_dir(path, what, option)


def make_dirs(path: str) -> None:
    """os.makedirs, but every dir it creates (parents too: os.makedirs gives those the umask's
    mode) is 0755 at most, so a careless umask never leaves a dir others may write; and none is
    made past a link or dir of another user (unsafe_path: OSError EPERM)."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    if missing:  # nothing is made through another user's link or in a dir others may swap
        on_the_way = unsafe_path(path)
        if on_the_way is not None:
            raise OSError(errno.EPERM, on_the_way, path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def _user(uid: int) -> str:
    try:
        return "uid %d (%s)" % (uid, pwd.getpwuid(uid).pw_name)
    except KeyError:
        return "uid %d" % uid


def _strangers_may_rename(info: os.stat_result) -> bool:
    """True when someone other than the dir's owner may rename entries in it, so could swap what
    it holds for a link: writable by others without the sticky bit (/tmp has it), or by a group
    the owner did not make for itself. A group-writable dir of root's is root's own choice of
    who administers it (Ubuntu's /var/log is 0775 root:syslog); one of a user's, with the user's
    private group (Debian and Ubuntu give each user one; umask 002 makes its dirs 0775), has no
    stranger in its group."""
    mode = info.st_mode
    if mode & stat.S_ISVTX or not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    if mode & stat.S_IWOTH:
        return True
    if info.st_uid == 0:
        return False
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return True
    return not (group.gr_name == owner and set(group.gr_mem) <= {owner})


# Links followed at most while walking a path (Linux's MAXSYMLINKS, after which open gives ELOOP).
_MAX_LINKS = 40


def unsafe_path(path: str, euid: Optional[int] = None) -> Optional[str]:
    """None when every link on the way to `path` is this user's or root's and every dir on the
    way (the real one each link leads to) is too, and no stranger may rename entries in it
    (`_strangers_may_rename`: writable by others only if sticky, like /tmp; by a group only if
    the dir is root's or the group is its owner's own); else what is wrong, as a phrase. Whoever
    owns a link on the way, or may rename entries in a dir on the way, decides where `path` leads
    (OpenSSH's StrictModes walks the same way up)."""
    euid = os.geteuid() if euid is None else euid
    pending = [part for part in os.path.abspath(path).split(os.sep) if part]
    pending.reverse()
    here = os.sep
    links = 0
    while pending:
        part = pending.pop()
        if part in (".", ".."):
            here = os.path.dirname(here) if part == ".." else here
            continue
        try:
            held = os.stat(here)
        except OSError:
            return None  # the rest does not exist yet: it is made below checked dirs
        if held.st_uid not in (euid, 0):
            return "%s on the way belongs to %s, who could replace what it holds" % (
                here, _user(held.st_uid))
        if _strangers_may_rename(held):
            return ("%s on the way may be written by group or others (mode %04o, not sticky), who "
                    "could replace what it holds" % (here, stat.S_IMODE(held.st_mode)))
        entry = os.path.join(here, part)
        try:
            info = os.lstat(entry)
        except OSError:
            return None
        if not stat.S_ISLNK(info.st_mode):
            here = entry
            continue
        if info.st_uid not in (euid, 0):
            return "%s on the way is a symlink owned by %s" % (entry, _user(info.st_uid))
        links += 1
        if links > _MAX_LINKS:
            return "%s: too many levels of symbolic links" % path
        target = os.readlink(entry)
        if os.path.isabs(target):
            here = os.sep
        pending.extend(reversed([part for part in target.split(os.sep) if part]))
    return None


def unsafe_dir(path: str, what: str, option: str) -> Optional[str]:
    """None when `path` (which must exist) is a directory owned by this user that group and
    others may not write, reached through no link but this user's or root's, in a parent that is
    this user's or root's and not writable by others unless sticky; else one sentence naming
    `option` as the fix (the run dir's rules, single_instance.check_run_dir, plus the parent)."""
    euid = os.geteuid()
    try:
        link = os.lstat(path)
        info = os.stat(path)
    except OSError as exc:
        return "cannot use %s as the %s: %s; choose another with %s DIR" % (
            path, what, exc.strerror or exc, option)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (euid, 0):
        return ("the %s %s is a symlink owned by %s, not by this user or root; remove it or "
                "choose another with %s DIR" % (what, path, _user(link.st_uid), option))
    if not stat.S_ISDIR(info.st_mode):
        return "cannot use %s as the %s: not a directory; choose another with %s DIR" % (
            path, what, option)
    if info.st_uid != euid:
        return ("the %s %s belongs to %s, not to this user, %s; choose another with %s DIR (or "
                "have its owner remove it)" % (what, path, _user(info.st_uid), _user(euid),
                                              option))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return ("the %s %s is writable by group or others (mode %04o); chmod go-w it or choose "
                "another with %s DIR" % (what, path, stat.S_IMODE(info.st_mode), option))
    # Whoever may rename entries in the parent can swap the dir for a link between two checks:
    # the parent must be this user's or root's, and writable by others only if sticky (/tmp).
    parent = os.path.dirname(os.path.abspath(path))
    try:
        above = os.stat(parent)
    except OSError:
        return None
    if above.st_uid not in (euid, 0):
        return ("the %s %s is in %s, which belongs to %s: that user could replace it; choose "
                "another with %s DIR" % (what, path, parent, _user(above.st_uid), option))
    if _strangers_may_rename(above):
        return ("the %s %s is in %s, which group or others may write (mode %04o, not sticky): "
                "they could replace it; chmod go-w it or choose another with %s DIR"
                % (what, path, parent, stat.S_IMODE(above.st_mode), option))
    on_the_way = unsafe_path(path, euid)
    if on_the_way is not None:
        return "cannot use %s as the %s: %s; choose another with %s DIR" % (
            path, what, on_the_way, option)
    return None


def open_append_no_follow(path: str, mode: int = 0o644) -> int:
    """A descriptor appending to the regular file at `path` (created if absent), never through a
    link planted under its name (O_NOFOLLOW: ELOOP) and never into a file of another user (a root
    DSM would otherwise append to whatever another user left there). OSError otherwise."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                 mode)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if info.st_uid != os.geteuid():
            raise OSError(errno.EPERM, "the file belongs to %s, not to this user"
                          % _user(info.st_uid), path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unsafe_state_dirs(state_dir: str, saves_dir: str) -> Optional[str]:
    """The daemon's own check at start (runDSM's `unusable_dir` may not have run): creates the
    state dir (0755) if absent; None when it and `saves_dir` (if present) pass `unsafe_dir`,
    else the sentence naming --state-dir."""
    problem = unusable_dir(state_dir, "state dir", "--state-dir")
    if problem is None and os.path.lexists(saves_dir):
        problem = unsafe_dir(saves_dir, "SAVE dir (the state dir's saves/)", "--state-dir")
    return problem
