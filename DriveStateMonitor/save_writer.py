"""Status Server SAVE, written by a forked child into a directory of its own, with limits.

Theory of operation
-------------------
SAVE files live in `<state-dir>/saves/`, never next to the snapshots and journals: load_state only
lists the state dir itself, so no SAVE name — `snapshot-9.json` included — can replace or shadow a
state file. Names are one plain component (letters, digits, `.`, `_`, `-`; no leading dot).

A SAVE of a large tree takes seconds to format and write; like the snapshot (persistence.py) it
is done by a forked child holding a copy-on-write image of the tree, so the loop never stalls. The
session that asked waits for its answer (its later requests wait behind it, in order); the loop
polls the child and answers `.`, `! DENIED` (the file could not be written) or `! LIMIT`.

Limits: at most MAX_IN_FLIGHT SAVEs at once over all clients and one per client, and at most
MAX_BYTES and MAX_FILES files in the saves directory (the new file counted; the file it replaces
not): a flood of
SAVEs is refused with `! LIMIT`, it never fills the disk the journal needs.

Temporaries: a child writes `<name>.tmp.<its pid>` and renames it over `<name>`. A stop or crash
while it writes leaves that file behind; the DSM removes every such file at start
(`remove_stale_temporaries`) and when it kills or loses a child, and the budget never counts one
that no live child is writing. No SAVE may take a name of that form (check_save_name), so these
rules never touch a client's file and no client can write outside the budget under such a name.
"""
from __future__ import annotations

import logging
import os
import re
import signal
from typing import Any, Callable, Container, Dict, Optional, Tuple

from .event_loop import EventLoop
from .local_dirs import make_dirs, unsafe_dir
from .persistence import become_child, close_inherited_fds, create_new_file, fsync_dir
from .statserv_tree import DENIED, LIMIT, StatServError, Tree

log = logging.getLogger("dsm.save")

SAVE_SUBDIR = "saves"
MAX_IN_FLIGHT = 2
MAX_BYTES = 256 * 1024 * 1024
# Files, not only bytes: a flood of small SAVEs under new names would otherwise grow the directory
# the loop lists before each SAVE (100,000 files: ~0.1 s a SAVE, in the loop) and use up inodes.
MAX_FILES = 1000
POLL_S = 0.02
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
# What a SAVE child names its temporary file (_write): the target's name, ".tmp.", its pid.
_TEMPORARY_NAME = re.compile(r".+\.tmp\.([0-9]+)\Z")
# Child exit codes.
_OK, _FAILED, _TOO_BIG = 0, 1, 3


def check_save_name(name: str) -> None:
    """DENIED unless `name` is one plain file name component."""
    if not _SAFE_NAME.match(name):
        raise StatServError(DENIED, "SAVE file names are letters, digits, '.', '_' and '-' "
                                    "(no directories, no leading dot), up to 128 characters")
    if _TEMPORARY_NAME.match(name):
        raise StatServError(DENIED, "SAVE file names may not end in .tmp.<digits> (the DSM's "
                                    "own temporary files)")


def temporary_pid(name: str) -> Optional[int]:
    """The pid in a SAVE child's temporary file name, or None if `name` is not one."""
    match = _TEMPORARY_NAME.match(name)
    return int(match.group(1)) if match else None


def _dir_usage(path: str, besides: str, max_files: int,
               writing: Container[int] = ()) -> Tuple[int, int]:
    """(bytes, files) in `path` apart from `besides` and from temporary files of children not in
    `writing` (pids); stops counting past `max_files` files, so its cost is bounded however full
    the directory."""
    total = files = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                pid = temporary_pid(entry.name)
                if pid is not None and pid not in writing:
                    continue  # a dead child's leftover: removed at start, never counted
                if entry.path != besides and entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    files += 1
                    if files > max_files:
                        break
    except OSError:
        pass
    return total, files


class SaveWriter:
    """Starts SAVE children and answers their sessions when they end."""

    def __init__(self, loop: EventLoop, tree: Tree, save_dir: str,
                 max_in_flight: int = MAX_IN_FLIGHT, max_bytes: int = MAX_BYTES,
                 max_files: int = MAX_FILES) -> None:
        self.loop = loop
        self.tree = tree
        self.save_dir = save_dir
        self.max_in_flight = max_in_flight
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._children: Dict[int, Tuple[Any, str]] = {}  # pid -> (session, target)
        self.refused = 0
        self.written = 0

    def start(self, target: str, session: Any) -> None:
        """Forks the child writing `target` for `session`, which gets `save_finished(code, text)`
        later; raises StatServError(LIMIT/DENIED) at once when it cannot start."""
        if os.path.dirname(target) != os.path.realpath(self.save_dir):
            raise StatServError(DENIED, "SAVE writes only into %s" % self.save_dir)
        check_save_name(os.path.basename(target))
        if len(self._children) >= self.max_in_flight or \
                any(owner is session for owner, _ in self._children.values()):
            self.refused += 1
            raise StatServError(LIMIT, "%d SAVEs already being written; try again later"
                                % len(self._children))
        used, files = _dir_usage(self.save_dir, target, self.max_files, self._children)
        if files >= self.max_files:
            self.refused += 1
            raise StatServError(LIMIT, "the SAVE directory holds %d files already (limit %d); "
                                       "SAVE over an existing name or remove some"
                                % (files, self.max_files))
        budget = self.max_bytes - used
        if budget <= 0:
            self.refused += 1
            raise StatServError(LIMIT, "the SAVE directory holds %d bytes already (limit %d)"
                                % (self.max_bytes - budget, self.max_bytes))
        try:
            if not os.path.isdir(self.save_dir):
                make_dirs(self.save_dir)
                fsync_dir(os.path.dirname(os.path.abspath(self.save_dir)))  # its name is durable
        except OSError as exc:
            raise StatServError(DENIED, "cannot create %s: %s" % (self.save_dir, exc.strerror)) from exc
        unsafe = unsafe_dir(self.save_dir, "SAVE dir", "--state-dir")
        if unsafe is not None:  # another user's, a link, writable by others: never written into
            log.error("SAVE refused: %s", unsafe)
            raise StatServError(DENIED, "the SAVE directory is not safe to write into (see the "
                                        "DSM log)")
        pid = os.fork()
        if pid == 0:
            code = _FAILED
            try:
                become_child(close_inherited_fds)
                code = _write(self.tree, target, budget)
            finally:
                os._exit(code)
        self._children[pid] = (session, target)
        if len(self._children) == 1:
            self.loop.call_later(POLL_S, self._poll)

    def remove_stale_temporaries(self) -> int:
        """Removes the temporary files of SAVE children that are not running (a stop or crash
        while one wrote); returns how many. Called at start, once the DSM holds its lock."""
        removed = 0
        try:
            with os.scandir(self.save_dir) as entries:
                names = [entry.name for entry in entries
                         if temporary_pid(entry.name) is not None
                         and temporary_pid(entry.name) not in self._children
                         and entry.is_file(follow_symlinks=False)]
        except OSError:
            return 0
        for name in names:
            try:
                os.unlink(os.path.join(self.save_dir, name))
                removed += 1
            except OSError as exc:
                log.warning("cannot remove the stale SAVE temporary %s: %s", name, exc)
        if removed:
            log.info("removed %d stale SAVE temporary file%s from %s", removed,
                     "" if removed == 1 else "s", self.save_dir)
        return removed

    def _remove_temporary(self, pid: int, target: str) -> None:
        try:
            os.unlink("%s.tmp.%d" % (target, pid))
        except OSError:
            pass

    @property
    def in_flight(self) -> int:
        return len(self._children)

    def _poll(self) -> None:
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, _FAILED << 8
            if done == 0:
                continue
            session, target = self._children.pop(pid)
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else _FAILED
            name = os.path.basename(target)
            if code == _OK:
                self.written += 1
                session.save_finished(None, None)
            elif code == _TOO_BIG:
                self.refused += 1
                session.save_finished(LIMIT, "%s would pass the SAVE directory's limit of %d "
                                             "bytes" % (name, self.max_bytes))
            else:
                self._remove_temporary(pid, target)  # a child killed mid-write leaves it
                log.error("SAVE %s failed (child status %d)", target, status)
                session.save_finished(DENIED, "cannot write %s" % name)
        if self._children:
            self.loop.call_later(POLL_S, self._poll)

    def close(self) -> None:
        """Stops the children still writing and removes their temporary files."""
        for pid, (_, target) in list(self._children.items()):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            self._remove_temporary(pid, target)
        self._children.clear()


def _write(tree: Tree, target: str, budget: int) -> int:
    """In the child: dump, check the size, write atomically and fsync; the exit code."""
    data = tree.dump().encode("utf-8")
    if len(data) > budget:
        return _TOO_BIG
    temporary = "%s.tmp.%d" % (target, os.getpid())
    try:
        # O_EXCL|O_NOFOLLOW: never through a link planted under the temporary name; the rename
        # replaces a link under the target's name itself, never what it points to.
        with os.fdopen(create_new_file(temporary), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)  # a crash mid-write never leaves half a save
        fsync_dir(os.path.dirname(target))  # the name survives a power cut before the `.`
    except OSError:  # the parent logs it: this child's log descriptor is closed
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return _FAILED
    return _OK


Saver = Callable[[str, Any], None]
