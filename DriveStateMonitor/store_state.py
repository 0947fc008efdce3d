"""What survives a restart, and the journal records that carry each change to disk.

Kept: every drive's newest announcement with when, from whom and where it was heard; every status
history; every object and directory clients made in the Status Server tree, with types, comments,
lifetimes and deadlines. Not kept because derived: /drives (a view of the drive records, whose
times of hearing make lifetimes keep counting across the restart) and /dsm (the new process's facts).
Not kept: connections, monitors and holds — they die with the process.

Times: every `t` below and every time in the snapshot is the wall clock (epoch s); the running
stores keep deadlines on the monotonic clock (host_clock.py). A restore maps each stored wall time
onto the new process's monotonic scale with `restored_moment` (elapsed = wall now - stored, never
negative), so a restored lifetime or drive keeps at most its LIFETIME / --drive-lifetime, and a
tree deadline is stored as the wall time it falls at and capped by its lifetime on the way back.

Journal records are short JSON arrays, the first item naming the change:

    ["a", serial, datagram_text, t, source, interface]   a new or changed announcement
    ["h", serial, t, source, interface]                  heard again (at most every lifetime/4)
    ["s", serial, {"time_stamp": ..., "status": ...}]    a status (the entry as stored)
    ["w", t]                                             the `w` wipe
    ["tt", path, t, comment, lifetime, owned, type, autoexpire, rev]  TOUCH
    ["td", path, t, comment, rev]                        TOUCHDIR
    ["tp", path, value_text, t, lifetime, rev]           PUT
    ["tr", path, t, rev] / ["trd", path, t, rev]         REMOVE / RMDIR
    ["tx", path, t, rev]                                 expired: its auto-expire owner left
    ["te", path, t, rev]                                 expired: its lifetime ran out
    ["g", t]                                             first record after a recovery snapshot

`rev` is the entry's revision after the change, so STAT's `revision` (and `time`) read after a
restart what they read before it; `owned`: TOUCH AUTOEXPIRE=1 by a connected owner; `autoexpire`:
the flag as given (true, false, or null: not given). Records written before these trailing items
existed are read as they always were (no revision kept; autoexpire set only when owned).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, List, Optional, Union

from .drive_publisher import DRIVES, DSM, DrivePublisher
from .drive_store import DriveStore
from .host_clock import restored_moment, wall_of
from .announcement import Rejected, parse_announcement
from .persistence import GAP_RECORD, Loaded, embedded_announcement, status_record
from .statserv_tree import EXPIRED, LIMIT, StatServError, Tree

log = logging.getLogger("dsm.state")

SNAPSHOT_FORMAT = 1
# A change record: a JSON-able list, or bytes already holding its JSON (persistence.encode_record).
Recorder = Callable[[Union[List[Any], bytes]], None]


class JournaledTree(Tree):
    """A Tree whose client-facing changes (TOUCH, TOUCHDIR, PUT, REMOVE, RMDIR) are journaled.

    The daemon's own publishing (set_value, remove_subtree) is not: /drives and /dsm are rebuilt
    from the daemon's records."""

    record: Optional[Recorder] = None
    # Why client changes cannot be stored now (`--fsync always` on a failing state dir), or None.
    refusing: Optional[Callable[[], Optional[str]]] = None

    def _check_storable(self) -> None:
        if self.record is not None and self.refusing is not None:
            why = self.refusing()
            if why is not None:
                raise StatServError(LIMIT, why)

    _releasing = False

    def _revision_of(self, path: str) -> int:
        """The entry's revision after a change (the global one if the entry is gone)."""
        node = self._nodes.get(path)  # the protocol passes normalized paths
        if node is None:
            node = self._nodes.get(self._normalized(path))
        return node.revision if node is not None else self.revision

    def touch(self, path: str, now: float, *, owner: Any = None, comment: Optional[str] = None,
              lifetime: Optional[float] = None, autoexpire: Optional[bool] = None,
              type_name: Optional[str] = None) -> None:
        self._check_storable()
        super().touch(path, now, owner=owner, comment=comment, lifetime=lifetime,
                      autoexpire=autoexpire, type_name=type_name)
        if self.record is not None:
            self.record(["tt", path, wall_of(now), comment, lifetime,
                         bool(autoexpire and owner is not None), type_name, autoexpire,
                         self._revision_of(path)])

    def touch_dir(self, path: str, now: float, *, owner: Any = None,
                  comment: Optional[str] = None) -> None:
        self._check_storable()
        super().touch_dir(path, now, owner=owner, comment=comment)
        if self.record is not None:
            self.record(["td", path, wall_of(now), comment, self._revision_of(path)])

    def put(self, path: str, text: str, now: float, *, lifetime: Optional[float] = None) -> None:
        self._check_storable()
        super().put(path, text, now, lifetime=lifetime)
        if self.record is not None:
            self.record(["tp", path, text, wall_of(now), lifetime, self._revision_of(path)])

    def remove(self, path: str, now: float) -> None:
        self._check_storable()
        super().remove(path, now)
        if self.record is not None:
            self.record(["tr", path, wall_of(now), self.revision])

    def remove_dir(self, path: str, now: float) -> None:
        self._check_storable()
        super().remove_dir(path, now)
        if self.record is not None:
            self.record(["trd", path, wall_of(now), self.revision])

    def release_owner(self, owner: Any, now: float) -> None:
        expiring = self.autoexpire_paths(owner) if self.record is not None else []
        self._releasing = True
        try:
            super().release_owner(owner, now)
        finally:
            self._releasing = False
        if self.record is not None:
            # Every owned path, expired now or already: the replay learns its owner left.
            for path in expiring:
                self.record(["tx", path, wall_of(now), self._revision_of(path)])

    def _expire(self, node: Any, now: float) -> None:
        """A lifetime's end is journaled too: without it a replay would expire the object at the
        restart instead, with another time and revision than STAT showed before."""
        was_expired = node.value is EXPIRED
        super()._expire(node, now)
        if (self.record is not None and not was_expired and not self._releasing
                and not node.path.startswith(DSM + "/")):
            self.record(["te", node.path, wall_of(now), node.revision])


class StoreState:
    """Turns the stores into a snapshot and back, and changes into journal records and back."""

    def __init__(self, store: DriveStore, tree: JournaledTree, publisher: DrivePublisher) -> None:
        self.store = store
        self.tree = tree
        self.publisher = publisher
        self.record: Optional[Recorder] = None
        self._owned_at_crash: Dict[str, float] = {}  # replay: auto-expire objects never released
        # While restoring: the restore's `now`, onto whose monotonic scale stored wall times map.
        self._restoring_at: Optional[float] = None

    def attach(self, record: Optional[Recorder]) -> None:
        """Starts (or, with None, stops) sending change records to `record`."""
        self.record = record
        self.tree.record = record

    # --- changes, as they happen --------------------------------------------------------------
    def announced(self, serial: str, raw: bytes, now: float, source: str, interface: str) -> None:
        if self.record is not None:
            # The datagram is JSON already: embedded as it is, not encoded as a string.
            self.record(embedded_announcement(serial, raw, wall_of(now), source, interface))
            self.store.drives[serial].journaled_at = float(now)  # kept on the record: no table per drive

    def heard(self, serial: str, now: float, source: str, interface: str) -> None:
        # Drives repeat themselves every 5 s; one record per quarter lifetime keeps a restarted
        # DSM's idea of "silent" within that margin without journaling every datagram.
        if self.record is None:
            return
        lifetime = self.store.drive_lifetime or 60.0
        drive = self.store.drives[serial]
        if now - drive.journaled_at >= lifetime / 4:
            self.record(["h", serial, wall_of(now), source, interface])
            drive.journaled_at = float(now)

    def status(self, serial: str, entry_json: bytes) -> None:
        if self.record is not None:
            self.record(status_record(serial, entry_json))

    def wiped(self, now: float) -> None:
        if self.record is not None:
            self.record(["w", wall_of(now)])

    # --- snapshot -----------------------------------------------------------------------------
    def snapshot(self, now: float) -> Dict[str, Any]:
        """The whole store as a JSON-able dict."""
        store = self.store
        return {
            "format": SNAPSHOT_FORMAT,
            "saved_at": wall_of(now),
            "drives": [[d.serial, d.raw.decode("utf-8"), d.last_seen_wall, d.source_address,
                        d.interface] for d in store.drives.values()],
            "statuses": {serial: [entry.decode("utf-8") for entry in history]
                         for serial, history in store.statuses.items()},
            "tree": self.tree.export_entries(skip=(DRIVES, DSM), now=now),
            "tree_revision": self.tree.revision,
        }

    # --- restore ------------------------------------------------------------------------------
    def restore(self, loaded: Loaded, now: float) -> Dict[str, int]:
        """Rebuilds the stores from a snapshot and its journal records; counts what it applied.

        Every item is validated as it is loaded (announcements by the live intake parser, status
        entries as the status port stores them, tree entries by the tree itself): an item that
        fails is skipped and counted in `items_skipped` (snapshot) or `bad_records` (journal),
        never raised and never stored half-checked."""
        self.attach(None)
        self._restoring_at = now
        try:
            return self._restore(loaded, now)
        finally:
            self._restoring_at = None

    def _restore(self, loaded: Loaded, now: float) -> Dict[str, int]:
        counts = {"drives": 0, "statuses": 0, "tree_entries": 0, "records": 0, "bad_records": 0,
                  "items_skipped": 0}
        snapshot = loaded.snapshot
        if snapshot is not None:
            counts["items_skipped"] += self._restore_snapshot(snapshot, now, counts)
        for record in loaded.records:
            try:
                self.apply(record)
                counts["records"] += 1
            except (StatServError, ValueError, TypeError, KeyError, IndexError) as exc:
                # A record the tree refuses now (a limit lowered since, say) is skipped, not fatal.
                counts["bad_records"] += 1
                log.warning("journal record %r not applied: %s", str(record)[:120], exc)
        for path in self._owned_at_crash:
            # Their owners' connections died with the old process: auto-expire fires now.
            if self.tree.kind(path) == "object":
                self.tree.expire(path, now)
        self._owned_at_crash.clear()
        self.store.expire_due(now)
        self.tree.expire_due(now)
        counts["drives"] = len(self.store.drives)
        counts["statuses"] = sum(len(h) for h in self.store.statuses.values())
        return counts

    def _restore_snapshot(self, snapshot: Dict[str, Any], now: float,
                          counts: Dict[str, int]) -> int:
        """Loads a snapshot's items, each checked; returns how many were skipped."""
        skipped = 0
        drives = snapshot.get("drives", [])
        for item in drives if isinstance(drives, list) else ():
            try:
                if not isinstance(item, list) or len(item) != 5:
                    raise ValueError("not a drive record")
                self._announce(*item)
            except (ValueError, TypeError) as exc:
                skipped += 1
                log.error("snapshot drive %s skipped: %s", str(item)[:120], exc)
        statuses = snapshot.get("statuses", {})
        for serial, entries in (statuses.items() if isinstance(statuses, dict) else ()):
            for entry in entries if isinstance(entries, list) else [entries]:
                try:
                    self.store.record_status(_text(serial), _status_entry(entry))
                except (ValueError, TypeError) as exc:
                    skipped += 1
                    log.error("snapshot status of %s skipped: %s", str(serial)[:60], exc)
        revision = snapshot.get("tree_revision")
        if type(revision) is int and revision > self.tree.revision:
            self.tree.revision = revision  # later changes number above every one before
        entries = snapshot.get("tree", [])
        valid = []
        for entry in entries if isinstance(entries, list) else ():
            try:
                _check_tree_entry(entry)
            except (ValueError, TypeError) as exc:
                skipped += 1
                log.error("snapshot tree entry %s skipped: %s", str(entry)[:120], exc)
                continue
            valid.append(entry)
        for start in range(0, len(valid), _IMPORT_CHUNK):
            chunk = valid[start:start + _IMPORT_CHUNK]
            try:
                self.tree.import_entries(chunk, now)  # the fast path: one call per chunk
            except (StatServError, ValueError, TypeError, KeyError):
                tried = len(chunk)
                chunk = self._import_one_by_one(chunk, now)  # importing again is harmless
                skipped += tried - len(chunk)
            counts["tree_entries"] += len(chunk)
            for entry in chunk:
                if entry.get("owned", entry.get("autoexpire")):
                    # Its owner was connected at the snapshot: a PUT replayed later must not
                    # outlive that owner, who died with the old process.
                    self._owned_at_crash[entry["path"]] = now
        return skipped

    def _import_one_by_one(self, entries: List[Dict[str, Any]],
                           now: float) -> List[Dict[str, Any]]:
        """The entries the tree accepts, each imported on its own; the others logged."""
        imported = []
        for entry in entries:
            try:
                self.tree.import_entries([entry], now)
            except (StatServError, ValueError, TypeError, KeyError) as exc:
                log.error("snapshot tree entry %s skipped: %s", str(entry)[:120], exc)
                continue
            imported.append(entry)
        return imported

    def _at(self, stored: Any) -> float:
        """A stored wall time (epoch s) as the stores' `now`: during a restore, a Moment on the
        restore's monotonic scale (host_clock.restored_moment); otherwise the number itself."""
        wall = _number(stored)
        if self._restoring_at is None:
            return wall
        return restored_moment(wall, self._restoring_at)

    def apply(self, record: List[Any]) -> None:
        """Applies one journal record (replay). ValueError/TypeError/StatServError if it does
        not hold what its kind says."""
        kind = record[0]
        if kind == "a":
            _, serial, raw, t, source, interface = record
            self._announce(serial, raw, t, source, interface)
        elif kind == "h":
            _, serial, t, source, interface = record
            drive = self.store.drives.get(serial)
            if drive is not None:
                self.store.refresh_repeat(drive.raw, self._at(t), _text(source), _text(interface))
        elif kind == "s":
            if len(record) != 3:
                raise ValueError("a status record has 3 items")
            self.store.record_status(_text(record[1]), _status_entry(record[2]))
        elif kind == GAP_RECORD:
            pass  # load_state counted it where it matters
        elif kind == "w":
            self.store.wipe(self._at(record[1]))
        elif kind == "tt":
            _, path, t, comment, lifetime, owned, type_name = record[:7]
            autoexpire = record[7] if len(record) > 7 else (True if owned else None)
            if autoexpire not in (None, True, False):
                raise ValueError("autoexpire is not true, false or null")
            self.tree.touch(path, self._at(t), comment=comment, lifetime=lifetime,
                            type_name=type_name, autoexpire=autoexpire)
            if owned:
                self._owned_at_crash[path] = t
            elif autoexpire is False:
                self._owned_at_crash.pop(path, None)
            self._restore_revision(path, record, 8)
        elif kind == "tx":
            self._owned_at_crash.pop(record[1], None)
            if self.tree.kind(record[1]) == "object":
                self.tree.expire(record[1], self._at(record[2]))
                self._restore_revision(record[1], record, 3)
        elif kind == "te":
            if self.tree.kind(record[1]) == "object":
                self.tree.expire(record[1], self._at(record[2]))
                self._restore_revision(record[1], record, 3)
        elif kind == "td":
            self.tree.touch_dir(record[1], self._at(record[2]), comment=record[3])
            self._restore_revision(record[1], record, 4)
        elif kind == "tp":
            _, path, text, t, lifetime = record[:5]
            self.tree.put(path, text, self._at(t), lifetime=lifetime)
            self._restore_revision(path, record, 5)
        elif kind == "tr":
            self._owned_at_crash.pop(record[1], None)
            self.tree.remove(record[1], self._at(record[2]))
            self._restore_revision(record[1], record, 3)
        elif kind == "trd":
            self.tree.remove_dir(record[1], self._at(record[2]))
            self._restore_revision(record[1], record, 3)
        else:
            raise ValueError("unknown record kind %r" % kind)

    def _restore_revision(self, path: str, record: List[Any], index: int) -> None:
        """The revision a record carries at `index` (absent in older records) back on its entry."""
        revision = record[index] if len(record) > index else None
        if type(revision) is int and revision >= 0:  # the change itself is applied already
            self.tree.restore_revision(path, revision)

    def _announce(self, serial: str, raw: str, t: float, source: str, interface: str) -> None:
        """Stores a kept announcement after the same checks a live datagram passes."""
        data = _text(raw).encode("utf-8")
        parsed = parse_announcement(data)
        if isinstance(parsed, Rejected):
            raise ValueError("announcement rejected: %s" % parsed.detail)
        if parsed.serial_number != serial:
            raise ValueError("announcement of %r kept under %r" % (parsed.serial_number, serial))
        self.store.record_announcement(serial, parsed.fields, data, self._at(t), _text(source),
                                       _text(interface))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string, got %s" % type(value).__name__)
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError("expected a number, got %r" % (value,))
    return float(value)


def _status_entry(entry: Any) -> bytes:
    """A kept status entry as the status port stores it: a JSON object with exactly time_stamp
    and status. Anything else would make every `s` reply invalid JSON."""
    value = json.loads(entry) if isinstance(entry, str) else entry
    if not isinstance(value, dict) or set(value) != {"time_stamp", "status"}:
        raise ValueError("not a status entry")
    if isinstance(entry, str):
        return entry.encode("utf-8")
    return json.dumps(value).encode("utf-8")


_NUMBER_TYPES = frozenset((int, float, bool, type(None)))
_TEXT_TYPES = frozenset((str, type(None)))
_VALUE_TYPES = frozenset((str, int, float, bool))
_IMPORT_CHUNK = 512


def _check_tree_entry(entry: Any) -> None:
    """The shape export_entries gives, numbers finite; the tree checks paths, types and limits
    itself. Type lookups in sets, no exceptions on the good path: a restore of 100,000 objects
    runs this 100,000 times."""
    if type(entry) is not dict:
        raise ValueError("not a tree entry")
    get = entry.get
    path = get("path")
    if type(path) is not str or path[:1] != "/":
        raise ValueError("not a tree entry")
    mtime, deadline, lifetime, value = get("mtime"), get("deadline"), get("lifetime"), get("value")
    revision = get("revision")
    if (type(revision) is not int and revision is not None) or (revision or 0) < 0:
        raise ValueError("tree entry %r has a revision that is not a count" % (path,))
    if (type(mtime) not in _NUMBER_TYPES or type(deadline) not in _NUMBER_TYPES
            or type(lifetime) not in _NUMBER_TYPES or type(get("comment")) not in _TEXT_TYPES
            or type(get("type")) not in _TEXT_TYPES or type(get("word")) not in _TEXT_TYPES):
        raise ValueError("tree entry %r has a field of the wrong type" % (path,))
    if not get("dir") and "word" not in entry and type(value) not in _VALUE_TYPES:
        raise ValueError("tree value %r is not a string or number" % (value,))
    # x - x is 0.0 for a finite float and nan (true) for inf or nan: never servable.
    if ((type(value) is float and value - value) or (type(mtime) is float and mtime - mtime)
            or (type(deadline) is float and deadline - deadline)
            or (type(lifetime) is float and lifetime - lifetime)):
        raise ValueError("tree entry %r holds a non-finite number" % (path,))
