"""The change feed: every change the DSM serves, numbered, with a window to resume from (sans-IO).

Theory of operation
-------------------
Watches in etcd and Kubernetes work this way: a revision number, a snapshot at a revision, then each
change after it; a client that lost its connection resumes from the last revision it saw, and one
too far behind is told to start again from a snapshot. The DSM's feed is that, for the rows of
`/api/drives` and `/api/status` (docs/protocol.md, "The change feed"; the wire format is served by
web_service.py as server-sent events).

* The store notes which serials changed (drive_store.py: a set add where a drive first appears,
  changes its fields, expires, is heard again after expiring or from another address or
  interface, or gets a status; a flag for a wipe). Nothing is encoded there, and a repeated
  announcement that only moves `last_seen` is not a change: its hot path gains one comparison.
* Once per loop pass, the daemon hands those sets to `ChangeFeed.publish`, which encodes ONE change
  event for the whole pass (`rev` grows by one) with the current drive object of each serial whose
  drive changed and the whole status list of each serial with a new status (null for one that is
  gone), and keeps the encoded bytes in a window. A new status does not resend the drive's object.
  Every open stream is sent the same bytes object: a viewer costs what changes, not what exists.
* The window holds the most recent events, bounded by count (`max_events`) and by bytes
  (`max_bytes`): `since(last_id)` gives the encoded events after `last_id` when they are all still
  there, or None when the client must start from a snapshot (another epoch: the DSM restarted; a
  revision older than the window; a revision from the future; anything unparsable).
* `epoch` is fixed for the life of one process (its start time in milliseconds, hex), so an id
  from an earlier run is never taken for one of this run.

A snapshot of 10,000 drives x 20 statuses is some 16 MB: one event that size costs a browser one
JSON.parse and one apply of a few hundred milliseconds, and nothing is drawn until both are done.
A client that asks for it gets the snapshot in parts instead (`snapshot_parts`): a
`snapshot-start` event, `snapshot-part` events of at most `part_rows` serials and `part_bytes`
bytes of rows each (a row's drive and its status list in the same part), then `snapshot-end`,
the only one with an id. A page draws the first part's rows at once and applies the rest a slice
at a time; the rows a part has not reached yet stay as they were, and only `snapshot-end` forgets
the rows no part named, so a snapshot cut off part-way leaves nothing half-forgotten: the client
resumes from the id it had (the window), or starts over with a new snapshot.

When nobody has watched for a while, `skip` numbers a batch without encoding it and empties the
window: the JSON work of a change (a drive's object, a status list) is then not done at all, and a
client coming back later gets a snapshot, as it would after a long absence anyway.

The feed does not read the store or frame events itself: it is given functions for both, so it can
be tested against any model of the data (tests/test_change_feed.py) and knows nothing of sockets.

Applying a snapshot, then change events in order (a wipe event first forgets every row), gives
exactly the rows the JSON endpoints show at that revision (but for `last_seen`, which only moves
with a change); applying an event twice is harmless, since each carries whole rows, keyed by
serial.
"""
from __future__ import annotations

import collections
import itertools
import json
from typing import Callable, Deque, Iterable, List, Optional, Tuple

# A page reconnecting after a few seconds away finds its place; a bigger gap costs one snapshot.
# 1,024 events is over a minute and a half of 10 changes a second; 16 MiB bounds the memory
# whatever their size. (Kubernetes' API server keeps such a window of recent events in its watch
# cache and answers an older resourceVersion with 410 Gone; etcd refuses a compacted revision.)
DEFAULT_MAX_EVENTS = 1024
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

# json.dumps of a str, in C.
_json_string = json.encoder.encode_basestring_ascii

RowJson = Callable[[str], Optional[bytes]]  # a serial's row as JSON bytes, None when it is gone
# (serial, drive object or None, status list or None), JSON bytes as /api/drives and /api/status
SnapshotRow = Tuple[str, Optional[bytes], Optional[bytes]]
# frame(data, event name, id or None): one server-sent event (http_protocol.server_sent_event)
Frame = Callable[[bytes, str, Optional[str]], bytes]

# A snapshot part is one JSON.parse and one apply in a browser: 512 KiB parses in some 5-10 ms
# and 500 rows apply in a few more, well under the 50 ms that makes a task "long" (RAIL; Chrome's
# Long Tasks API); at 10,000 drives x 20 statuses (1.6 KB a row) that is ~320 rows a part.
DEFAULT_PART_ROWS = 500
DEFAULT_PART_BYTES = 512 * 1024


def make_epoch(start_time: float) -> str:
    """The epoch token of a process started at `start_time` (epoch s): milliseconds, hex."""
    return "%x" % int(start_time * 1000)


class ChangeFeed:
    """The revision counter and the window of recent encoded events."""

    def __init__(self, epoch: str, max_events: int = DEFAULT_MAX_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("the window must hold at least one event")
        self.epoch = epoch
        self.rev = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._window: Deque[Tuple[int, bytes]] = collections.deque()
        self.window_bytes = 0
        self._prefix = ('{"epoch": %s, "rev": ' % _json_string(epoch)).encode("ascii")

    def event_id(self, rev: int) -> str:
        """The SSE id of revision `rev`: `<epoch>-<rev>`."""
        return "%s-%d" % (self.epoch, rev)

    @property
    def oldest_rev(self) -> int:
        """The revision of the oldest event still in the window (rev + 1 when it is empty)."""
        return self._window[0][0] if self._window else self.rev + 1

    def snapshot_data(self, drives_json: bytes, status_json: bytes) -> bytes:
        """The snapshot's JSON at the current revision: {"epoch", "rev", "drives", "status"},
        with the two replies embedded as they are (never parsed again)."""
        return b"".join((self._prefix, b"%d" % self.rev, b', "drives": ', drives_json,
                         b', "status": ', status_json, b"}"))

    def snapshot_parts(self, rows: Iterable[SnapshotRow], frame: Frame,
                       part_rows: int = DEFAULT_PART_ROWS,
                       part_bytes: int = DEFAULT_PART_BYTES) -> List[bytes]:
        """The snapshot at the current revision as framed events, in order:
        `snapshot-start` {"epoch", "rev", "parts": n, "rows": count}; n `snapshot-part` events
        {"epoch", "rev", "part": 1..n, "drives": {serial: row}, "status": {serial: list}}, each of
        at most `part_rows` serials and `part_bytes` bytes of rows (a single bigger row alone);
        `snapshot-end` {"epoch", "rev", "parts": n}, with the id `<epoch>-<rev>`."""
        if part_rows < 1 or part_bytes < 1:
            raise ValueError("a part must hold at least one row")
        head = self._prefix + b"%d" % self.rev
        bodies: List[bytes] = []
        drives: List[bytes] = []
        statuses: List[bytes] = []
        size = count = 0

        def cut() -> None:
            bodies.append(b"".join((head, b', "part": %d, "drives": {' % (len(bodies) + 1),
                                    b", ".join(drives), b'}, "status": {', b", ".join(statuses),
                                    b"}}")))
            drives.clear()
            statuses.clear()

        in_part = 0
        for serial, drive, history in rows:
            key = _json_string(serial).encode("ascii") + b": "
            row_size = len(key) * 2 + len(drive or b"") + len(history or b"")
            if in_part and (in_part >= part_rows or size + row_size > part_bytes):
                cut()
                size = in_part = 0
            if drive is not None:
                drives.append(key + drive)
            if history is not None:
                statuses.append(key + history)
            size += row_size
            in_part += 1
            count += 1
        if in_part:
            cut()
        events = [frame(head + b', "parts": %d, "rows": %d}' % (len(bodies), count),
                        "snapshot-start", None)]
        events.extend(frame(body, "snapshot-part", None) for body in bodies)
        events.append(frame(head + b', "parts": %d}' % len(bodies), "snapshot-end",
                            self.event_id(self.rev)))
        return events

    def change_data(self, rev: int, drives_touched: Iterable[str],
                    statuses_touched: Iterable[str], wiped: bool, drive_json: RowJson,
                    status_json: RowJson) -> bytes:
        """One change event's JSON: {"epoch", "rev", "wipe", "drives": {serial: row | null}
        for each serial of `drives_touched`, "status": {serial: list | null} for each of
        `statuses_touched`}, each serial once per map."""
        drives: List[bytes] = []
        statuses: List[bytes] = []
        for serial in sorted(set(drives_touched)):
            drive = drive_json(serial)
            drives.append(_json_string(serial).encode("ascii") + b": "
                          + (b"null" if drive is None else drive))
        for serial in sorted(set(statuses_touched)):
            history = status_json(serial)
            statuses.append(_json_string(serial).encode("ascii") + b": "
                            + (b"null" if history is None else history))
        return b"".join((self._prefix, b"%d" % rev, b', "wipe": ', b"true" if wiped else b"false",
                         b', "drives": {', b", ".join(drives), b'}, "status": {',
                         b", ".join(statuses), b"}}"))

    def publish(self, drives_touched: Iterable[str], statuses_touched: Iterable[str],
                wiped: bool, drive_json: RowJson, status_json: RowJson,
                encode: Callable[[str, bytes], bytes]) -> Tuple[int, bytes]:
        """Numbers one batch of changes: the next revision and its encoded event, which joins the
        window. `encode(event_id, data)` frames the JSON for the wire (web_service.py)."""
        rev = self.rev + 1
        encoded = encode(self.event_id(rev),
                         self.change_data(rev, drives_touched, statuses_touched, wiped,
                                          drive_json, status_json))
        self.rev = rev
        self._window.append((rev, encoded))
        self.window_bytes += len(encoded)
        while len(self._window) > self.max_events or (
                self.window_bytes > self.max_bytes and len(self._window) > 1):
            self.window_bytes -= len(self._window.popleft()[1])
        return rev, encoded

    def skip(self) -> int:
        """Numbers one batch of changes nobody will be sent: the next revision; the window is
        emptied, so every earlier id now needs a snapshot."""
        self.rev += 1
        self._window.clear()
        self.window_bytes = 0
        return self.rev

    def parse_id(self, last_id: Optional[str]) -> Optional[int]:
        """The revision of an id of this epoch (`<epoch>-<rev>`), or None (another epoch, junk)."""
        if not last_id:
            return None
        epoch, dash, rev_text = last_id.strip().rpartition("-")
        if not dash or epoch != self.epoch or not rev_text.isdigit() or len(rev_text) > 18:
            return None
        return int(rev_text)

    def since(self, last_id: Optional[str]) -> Optional[List[bytes]]:
        """The encoded events after `last_id`, in order ([] when it is the newest), or None when
        the client needs a snapshot: another epoch, junk, a revision not yet given, or one whose
        successors have left the window."""
        rev = self.parse_id(last_id)
        if rev is None or rev > self.rev or rev + 1 < self.oldest_rev:
            return None
        return self.events_from(rev + 1)

    def events_from(self, rev: int) -> Optional[List[bytes]]:
        """The encoded events of revisions `rev` and later, or None if `rev` left the window."""
        if rev > self.rev:
            return []
        if rev < self.oldest_rev:
            return None
        if rev == self.rev:  # the usual case: a stream that keeps up wants the newest only
            return [self._window[-1][1]]
        skip = rev - self.oldest_rev  # revisions in the window are consecutive
        return [encoded for _, encoded in itertools.islice(self._window, skip, None)]
