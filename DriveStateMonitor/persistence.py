"""Durability files: a snapshot of the whole store plus an append-only journal of every change since.

Theory of operation
-------------------
The state dir holds

    snapshot-<N>.json   the whole store as it stood when journal N was started
    journal-<N>.log     every change after that, one record each

and a restore is the newest readable snapshot N followed by journals N, N+1, ... in order (with no
snapshot, every journal from the oldest).

A journal record is a 4-byte length and a 4-byte CRC32 (both little-endian) followed by the payload,
compact JSON. A torn last record — the power went while it was being written — fails its length or
CRC check: replay stops there and the file is cut back to the last good record, so the records
appended after the restart stay readable. Nothing after a bad record is trusted.

Records are queued in memory as the changes happen and written once per loop pass, before that
pass's replies are sent. With `--fsync always` the pass also fsyncs there, so a reply acknowledging a
change leaves only once its record is on disk — one fsync per pass however many changes it holds
(group commit); `everysec` fsyncs at most once a second; `no` leaves it to the kernel.

Snapshots are written by a forked child, as Redis's BGSAVE does: the child holds a copy-on-write image
of the store as of the fork, so the loop never waits for the disk. The parent starts journal N+1 at
the fork and removes the older files only once the child reports success. A clean stop writes the
snapshot in the process itself.

When the state dir fails (full, read-only, removed), the error is logged, reported by `status()`,
the queued records are dropped, and the journal is marked as needing a fresh snapshot: the next
retry writes one — which holds everything the dropped records held — and starts a new journal.
The store keeps serving from memory meanwhile.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import struct
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger("dsm.state")

FSYNC_ALWAYS = "always"
FSYNC_EVERYSEC = "everysec"
FSYNC_NO = "no"
FSYNC_POLICIES = (FSYNC_ALWAYS, FSYNC_EVERYSEC, FSYNC_NO)
_HEADER = struct.Struct("<II")
# A record larger than this is taken for a torn length field, not a record.
MAX_RECORD = 64 * 1024 * 1024
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d+)\.json\Z")
_JOURNAL_NAME = re.compile(r"journal-(\d+)\.log\Z")


def encode_record(record: Any) -> bytes:
    """One framed record; `record` is a JSON-able value, or bytes already holding its JSON (the
    hot paths build those by concatenation instead of encoding twice)."""
    if isinstance(record, bytes):
        payload = record
    else:
        payload = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes) -> Tuple[List[Any], int]:
    """The records at the start of `data` that are whole and intact, and how many bytes they use."""
    records: List[Any] = []
    offset = 0
    size = len(data)
    while offset + _HEADER.size <= size:
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        if length > MAX_RECORD or end > size:
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            records.append(json.loads(payload.decode("utf-8")))
        except ValueError:
            break
        offset = end
    return records, offset


def snapshot_path(state_dir: str, seq: int) -> str:
    return os.path.join(state_dir, "snapshot-%d.json" % seq)


def journal_path(state_dir: str, seq: int) -> str:
    return os.path.join(state_dir, "journal-%d.log" % seq)


def _numbered(state_dir: str, pattern: "re.Pattern[str]") -> List[int]:
    try:
        names = os.listdir(state_dir)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)


def write_snapshot(state_dir: str, seq: int, state: Dict[str, Any]) -> None:
    """Writes snapshot `seq` atomically: a reader sees the old file or the whole new one."""
    path = snapshot_path(state_dir, seq)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, separators=(",", ":"), ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)  # a full disk must not fill up further with half snapshots
        raise
    _fsync_dir(state_dir)


def _fsync_dir(state_dir: str) -> None:
    try:
        fd = os.open(state_dir, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Loaded:
    """What a state dir held: the snapshot (or None) and the journal records after it, in order."""

    def __init__(self) -> None:
        self.snapshot: Optional[Dict[str, Any]] = None
        self.snapshot_seq: Optional[int] = None
        self.records: List[Any] = []
        self.torn: List[str] = []  # journals whose tail was cut off
        self.next_seq = 1


def load_state(state_dir: str, repair: bool = True) -> Loaded:
    """Reads the newest readable snapshot and every journal after it; cuts torn tails if `repair`."""
    loaded = Loaded()
    snapshots = _numbered(state_dir, _SNAPSHOT_NAME)
    for seq in reversed(snapshots):
        try:
            with open(snapshot_path(state_dir, seq), encoding="utf-8") as f:
                snapshot = json.load(f)
        except (OSError, ValueError) as exc:
            log.error("snapshot %s unreadable (%s); trying an older one",
                      snapshot_path(state_dir, seq), exc)
            continue
        if isinstance(snapshot, dict):
            loaded.snapshot, loaded.snapshot_seq = snapshot, seq
            break
    journals = _numbered(state_dir, _JOURNAL_NAME)
    first = loaded.snapshot_seq if loaded.snapshot_seq is not None else 0
    for seq in journals:
        if seq < first:
            continue
        path = journal_path(state_dir, seq)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            log.error("journal %s unreadable: %s", path, exc)
            continue
        records, good = decode_records(data)
        loaded.records.extend(records)
        if good < len(data):
            loaded.torn.append(path)
            log.warning("journal %s: dropped a torn or corrupt tail of %d bytes after %d records",
                        path, len(data) - good, len(records))
            if repair:
                try:
                    with open(path, "r+b") as f:
                        f.truncate(good)
                except OSError as exc:
                    log.error("cannot cut the torn tail of %s: %s", path, exc)
    loaded.next_seq = max(snapshots + journals + [0]) + 1
    return loaded


class Journal:
    """The append-only journal plus the snapshot schedule, for one state dir.

    `snapshot_source()` returns the whole store as a JSON-able dict; it is called in the forked child
    (or in-process at a clean stop).
    """

    def __init__(self, state_dir: str, fsync: str, snapshot_source: Callable[[], Dict[str, Any]],
                 clock: Callable[[], float] = time.time) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError("fsync policy must be one of %s" % ", ".join(FSYNC_POLICIES))
        self.state_dir = state_dir
        self.fsync = fsync
        self.snapshot_source = snapshot_source
        self.clock = clock
        self.seq = 0
        self._fd: Optional[int] = None
        self._pending: List[bytes] = []
        self._last_fsync = 0.0
        self._unsynced = False
        self.error: Optional[str] = None
        self.needs_snapshot = False
        self.records_written = 0
        self.journal_bytes = 0  # written to the current journal, i.e. since its snapshot began
        self.records_dropped = 0
        self.fsyncs = 0
        self.last_snapshot: Optional[float] = None
        self.last_snapshot_error: Optional[str] = None
        self._child: Optional[int] = None
        self._child_seq = 0
        self._child_recovers = False  # the running child is to end a failure
        self._last_failure_log = float("-inf")

    # --- records ------------------------------------------------------------------------------
    def record(self, record: Any) -> None:
        """Queues one change; it reaches the file at the next `flush()`."""
        if self.needs_snapshot:
            self.records_dropped += 1  # the snapshot that ends the failure will hold this change
            return
        self._pending.append(encode_record(record))

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def open(self, seq: int) -> bool:
        """Starts appending to journal `seq`."""
        self._close_fd()
        self.seq = seq
        self.journal_bytes = 0
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            self._fd = os.open(journal_path(self.state_dir, seq),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            self._failed("cannot open the journal", exc)
            return False
        return True

    def flush(self, monotonic_now: float) -> None:
        """Writes the queued records; fsyncs as the policy says. Called once per loop pass."""
        if self._pending and self._fd is not None and not self.needs_snapshot:
            data = b"".join(self._pending)
            try:
                written = 0
                view = memoryview(data)
                while written < len(data):
                    written += os.write(self._fd, view[written:])
            except OSError as exc:
                self._failed("cannot write the journal", exc)
                return
            self.records_written += len(self._pending)
            self.journal_bytes += len(data)
            self._pending = []
            self._unsynced = True
        elif self._pending and (self._fd is None or self.needs_snapshot):
            self.records_dropped += len(self._pending)
            self._pending = []
        if self._unsynced and self._fd is not None and (
                self.fsync == FSYNC_ALWAYS or
                (self.fsync == FSYNC_EVERYSEC and monotonic_now - self._last_fsync >= 1.0)):
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._failed("cannot fsync the journal", exc)
                return
            self.fsyncs += 1
            self._last_fsync = monotonic_now
            self._unsynced = False

    def _failed(self, what: str, exc: OSError) -> None:
        self.error = "%s in %s: %s" % (what, self.state_dir, exc.strerror or exc)
        self.records_dropped += len(self._pending)
        self._pending = []
        self.needs_snapshot = True
        self._close_fd()
        now = time.monotonic()
        if now - self._last_failure_log >= 60.0:
            self._last_failure_log = now
            log.error("%s; serving from memory and retrying", self.error)

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    # --- snapshots ----------------------------------------------------------------------------
    def start_snapshot(self) -> bool:
        """Forks a child that writes snapshot N+1 while the parent goes on with journal N+1."""
        if self._child is not None:
            return False
        self.flush(time.monotonic())
        new_seq = self.seq + 1
        try:
            os.makedirs(self.state_dir, exist_ok=True)
        except OSError as exc:
            self._failed("cannot create the state dir", exc)
            return False
        pid = os.fork()
        if pid == 0:  # the child: write and leave, touching nothing of the parent's loop
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                write_snapshot(self.state_dir, new_seq, self.snapshot_source())
                code = 0
            finally:
                os._exit(code)
        self._child = pid
        self._child_seq = new_seq
        self._child_recovers = self.needs_snapshot
        self.needs_snapshot = False
        self.open(new_seq)
        return True

    def poll_snapshot(self) -> Optional[bool]:
        """Reaps the snapshot child: True when it succeeded, False when it failed, None if running."""
        if self._child is None:
            return None
        try:
            pid, status = os.waitpid(self._child, os.WNOHANG)
        except ChildProcessError:
            pid, status = self._child, 1 << 8
        if pid == 0:
            return None
        self._child = None
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self._snapshot_done(self._child_seq)
            return True
        self.last_snapshot_error = "snapshot child failed (status %d)" % status
        log.error("snapshot %d failed; the journals before it are kept", self._child_seq)
        if self._child_recovers or self._fd is None:
            # Records were dropped before this snapshot: only a complete one closes that gap.
            self.needs_snapshot = True
        return False

    @property
    def snapshot_running(self) -> bool:
        return self._child is not None

    def snapshot_now(self) -> bool:
        """Writes a snapshot in this process (a clean stop); True on success."""
        self.wait_for_child()
        self.flush(time.monotonic())
        new_seq = self.seq + 1
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            write_snapshot(self.state_dir, new_seq, self.snapshot_source())
        except OSError as exc:
            self.last_snapshot_error = str(exc)
            log.error("cannot write the snapshot in %s: %s", self.state_dir, exc)
            return False
        self._close_fd()
        self.seq = new_seq
        self._snapshot_done(new_seq)
        return True

    def wait_for_child(self) -> None:
        if self._child is not None:
            try:
                os.waitpid(self._child, 0)
            except ChildProcessError:
                pass
            self._child = None

    def _snapshot_done(self, seq: int) -> None:
        self.last_snapshot = self.clock()
        self.last_snapshot_error = None
        if self._fd is not None or seq == self.seq:
            self.error = None
        for old in _numbered(self.state_dir, _SNAPSHOT_NAME):
            if old < seq:
                _unlink(snapshot_path(self.state_dir, old))
        for old in _numbered(self.state_dir, _JOURNAL_NAME):
            if old < seq:
                _unlink(journal_path(self.state_dir, old))

    def check_vanished(self) -> bool:
        """True (and marked failed) if the journal file was removed under us: writes to an
        unlinked file succeed and are lost, so a removed state dir must be noticed by looking."""
        if self._fd is None:
            return False
        try:
            gone = os.fstat(self._fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            self._failed("the journal file was removed", FileNotFoundError(2, "removed"))
        return gone

    def close(self) -> None:
        self._close_fd()

    def status(self) -> Dict[str, Any]:
        return {
            "state": "failing" if self.error else "ok",
            "error": self.error or "",
            "fsync": self.fsync,
            "journal_seq": self.seq,
            "records_written": self.records_written,
            "journal_bytes": self.journal_bytes,
            "records_dropped": self.records_dropped,
            "fsyncs": self.fsyncs,
            "last_snapshot": self.last_snapshot or 0.0,
            "last_snapshot_error": self.last_snapshot_error or "",
        }


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
