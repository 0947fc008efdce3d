"""What the DSM knows about drives: the newest announcement of each, and each serial's statuses.

Pure: no sockets, and every method that needs the time takes it (`now`). Time follows the
monotonic rule (host_clock.py): `now` is a monotonic reading, a Moment carrying the wall reading
taken with it; whether a drive is silent (--drive-lifetime, the expiry heap) is decided on the
monotonic scale only, so a step of the wall clock expires no drive and keeps none alive, and
`last_seen`, `last_seen_epoch` and STAT's times show the wall clock (`wall_of`). A plain float
`now` stands for both clocks.

The `m` reply is one bytes join of a list kept up to date: per drive, in the table's order, its key
(`"serial": `), its datagram without the closing brace, and its "tail": a separator, the added
fields' JSON and `, `. A drive whose datagram is already in json.dumps' form (as drives send it)
keeps only that "body" — the datagram without its last byte — which serves as the `m` part, as the
key for recognising repeats, and (plus the brace) as the datagram; any other drive keeps the
datagram and a re-encoded body. A drive heard again only goes on a list of stale tails, rebuilt at
the next `m`. So a query over 10,000 drives of which a few changed costs a few `json.dumps` calls
and a join, and a drive's data is held once, as its datagram. (Drives leave the table only all at
once, by `w`, so each drive's place in the list never moves.) `s` is joined from per-serial
fragments rebuilt only for serials that changed. A drive that repeats its previous announcement
byte for byte — what drives do every 5 s — is recognised by the raw bytes and costs a dict lookup,
no JSON parsing.

The store is the one source of truth for drive data: the Status Server's `/drives/` is a view derived
from it (drive_view.py). `on_change`, when set, is told which serial changed in a way the view shows
(a new or changed announcement, `last_seen`'s second, alive/expired, a new status, a wipe); it is
not called for a repeat heard within the same second, so the hot path stays a lookup.

`touched`, when set (the change feed, change_feed.py), collects the serials whose row in `m`
changed in content: a drive first heard, its fields changed, expired, heard again after expiring, or
heard from another address or interface; `touched_status` those with a new status. A repeat that
only moves `last_seen` is not a change there (drives repeat every 5 s). `wiped` says a wipe
happened since the feed last looked.
"""
from __future__ import annotations

import collections
import heapq
import json
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set, Tuple

from .host_clock import wall_of

# Fields the DSM adds beside the drive's own; `last_seen` keeps the original tool's format.
LAST_SEEN = "last_seen"
LAST_SEEN_FORMAT = "%Y %b %d %H:%M:%S"
ADDED_FIELDS = (LAST_SEEN, "last_seen_epoch", "source_address", "interface", "state")
_ADDED = frozenset(ADDED_FIELDS)
# json.dumps of a str (ensure_ascii), without json.dumps' Python layers.
_json_string = json.encoder.encode_basestring_ascii
ALIVE = "alive"
EXPIRED = "expired"
_NEVER = float("-inf")
DEFAULT_HISTORY = 20
# A flood of announcements with random serial numbers must not eat the memory: new drives past
# this many are refused (and counted) until `w` clears the table.
DEFAULT_MAX_DRIVES = 100_000
DEFAULT_MAX_STATUS_SERIALS = 100_000


class DriveRecord:
    # Slots, and nothing per drive that can be derived (its cost, its fields): 10,000 drives are
    # 10,000 of these (docs/performance.md, bytes per drive).
    __slots__ = ("serial", "body", "fields_prefix", "model", "firmware", "last_seen",
                 "source_address", "interface", "slot", "m_tail", "alive", "expiry_queued",
                 "changed_at", "state_at", "journaled_at")

    def __init__(self, serial: str, slot: int = 0, now: float = 0.0) -> None:
        self.serial = serial
        # The datagram as the drive sent it, without its closing brace when fields_prefix is None;
        # the fields are parsed from it on demand.
        self.body = b""
        self.model = ""
        self.firmware = ""
        # The drive's own fields as JSON without the closing brace; None: `body` is exactly that.
        self.fields_prefix: Optional[bytes] = b""
        # When last heard: a Moment (monotonic for expiry, .wall for what is shown; see
        # last_seen_wall), one object per drive, which the expiry heap shares.
        self.last_seen: float = 0.0
        self.source_address = ""
        self.interface = ""
        self.slot = slot  # where this drive's three parts of the `m` reply start in the parts list
        # What follows the body in `m`: `, "last_seen": ...}, ` (the separator, the added
        # fields, the comma before the next drive); None when stale.
        self.m_tail: Optional[bytes] = None
        self.alive = True
        self.expiry_queued = False  # an entry for this drive is in the expiry heap
        self.changed_at = 0.0  # when the announcement's content last changed (wall, epoch s)
        self.state_at = wall_of(now)  # when `alive` last flipped (or first heard; wall, epoch s)
        # When a record of it last went to the journal (monotonic; store_state.py; -inf: never).
        self.journaled_at = _NEVER

    @property
    def last_seen_wall(self) -> float:
        """When the drive was last heard, by the wall clock (epoch s): what is shown and kept."""
        return wall_of(self.last_seen)

    @property
    def cost(self) -> int:
        """Bytes charged against --max-store-bytes: drive_cost of what it holds."""
        return _cost(self.serial, self.raw,
                     0 if self.fields_prefix is None else len(self.fields_prefix) + 1)

    @property
    def fields(self) -> Dict[str, Any]:
        """The announcement's fields. Parsed again on each use: keeping every drive's parsed
        dicts cost more memory than the rest of the record, and only rare paths need them."""
        raw = self.raw
        return json.loads(raw.decode("utf-8")) if raw else {}

    @property
    def raw(self) -> bytes:
        """The datagram as the drive sent it."""
        return self.body + b"}" if self.fields_prefix is None else self.body


# A stored status costs its JSON twice (the entry and its share of the cached `s` fragment) plus
# the bytes object and deque slot; the serial's own key and deque are charged with each entry.
STATUS_ENTRY_OVERHEAD = 96


# A stored drive costs its datagram (held once), its re-encoded fields when the datagram is not in
# json.dumps' form, its serial (key and record) and the record, `m` parts and table slots: 374
# bytes measured with tracemalloc for 5,000 drives (datagrams of 366 B to 60 KiB; see
# docs/operating-safely.md), rounded up.
DRIVE_RECORD_OVERHEAD = 400


# json.dumps(value) with its default options, without the new C encoder json.dumps builds on every
# call (JSONEncoder.iterencode): a quarter of re-encoding a new drive's fields. json's own encoder
# and options; no circular check, as nothing json.loads made has a cycle. Property-tested against
# json.dumps (tests/test_drive_store.py).
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
if _C_ENCODER is not None:
    _ENCODE = _C_ENCODER(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii,
                         None, ": ", ", ", False, False, True)

    def dumps_default(value: Any) -> str:
        """json.dumps(value) for a value json.loads made (no cycles)."""
        return "".join(_ENCODE(value, 0))
else:  # a Python built without _json
    def dumps_default(value: Any) -> str:
        return json.dumps(value)


def drive_cost(serial: str, raw: bytes, own_json: bytes) -> int:
    """Bytes of memory one stored drive is charged against --max-store-bytes."""
    return _cost(serial, raw, 0 if own_json == raw else len(own_json))


def _cost(serial: str, raw: bytes, re_encoded: int) -> int:
    """drive_cost, given the length of the re-encoded fields kept (0: the datagram serves)."""
    return len(raw) + re_encoded + len(serial) + DRIVE_RECORD_OVERHEAD


def status_cost(serial: str, entry_json: bytes) -> int:
    """Bytes of memory one stored status entry is charged against --max-store-bytes."""
    return 2 * len(entry_json) + len(serial) + STATUS_ENTRY_OVERHEAD


class DriveStore:
    """Drive announcements and status histories, with cached `m` and `s` replies."""

    def __init__(self, history: int = DEFAULT_HISTORY, max_drives: int = DEFAULT_MAX_DRIVES,
                 max_status_serials: int = DEFAULT_MAX_STATUS_SERIALS,
                 drive_lifetime: Optional[float] = None) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self.history = history
        # A drive not heard for this long is "expired" in `m` (None: drives never expire).
        self.drive_lifetime = drive_lifetime
        # (heard at, serial), due at heard at + drive_lifetime; one entry per drive at most,
        # re-queued when it comes due while the drive has been heard since — so announcements
        # never grow the heap. The time is the record's own last_seen object: no float per entry.
        self._expiry_heap: List[Tuple[float, str]] = []
        self.max_drives = max_drives
        self.max_status_serials = max_status_serials
        self.drives: Dict[str, DriveRecord] = {}
        # Serial by body (drives in json.dumps' form) and by whole datagram (the others): two
        # tables, so no datagram is ever taken for another one's body.
        self._serial_by_body: Dict[bytes, str] = {}
        self._serial_by_raw: Dict[bytes, str] = {}
        self.statuses: Dict[str, Deque[bytes]] = {}
        # What the statuses cost in memory (entry, its cached `s` fragment, objects), for the
        # store budget (--max-store-bytes).
        self.status_bytes = 0
        self.refused_status_budget = 0
        # What the drive table costs (drive_cost per drive), charged to the same budget.
        self.drive_bytes = 0
        self.refused_drive_budget = 0
        self._status_fragments: Dict[str, str] = {}
        # Bumped by every change, so a caller can cache a whole reply until the data moves.
        self.drives_version = 0
        self.statuses_version = 0
        self.refused_drives = 0
        self.refused_status_serials = 0
        self._last_seen_text: Dict[int, str] = {}
        self._strings: Dict[str, str] = {}
        # The `m` reply's parts (see the module docstring) and the drives whose added fields
        # changed since it was last joined.
        self._m_parts: List[Any] = [b"{"]
        self._stale: List[DriveRecord] = []
        # When each serial's newest status arrived (wall, epoch s; the view's STAT time for it).
        self.status_at: Dict[str, float] = {}
        # (serial, now, appeared_or_vanished): see the module docstring. Set by the drive view.
        self.on_change: Optional[Callable[[str, float, bool], None]] = None
        # Serials whose rows changed in content, for the change feed (None: nobody collects).
        self.touched: Optional[Set[str]] = None
        self.touched_status: Optional[Set[str]] = None
        self.wiped = False

    # --- announcements ------------------------------------------------------------------------
    def refresh_repeat(self, raw: bytes, now: float, source_address: str,
                       interface: str) -> Optional[str]:
        """Records `raw` if it repeats a drive's current announcement byte for byte; its serial."""
        serial = self._serial_by_body.get(raw[:-1]) if raw[-1:] == b"}" else None
        if serial is None and self._serial_by_raw:
            serial = self._serial_by_raw.get(raw)
        if serial is not None:
            self._heard(self.drives[serial], now, source_address, interface)
        return serial

    def record_announcement(self, serial: str, fields: Dict[str, Any], raw: bytes, now: float,
                            source_address: str, interface: str, *,
                            budget: Optional[int] = None) -> bool:
        """Stores a drive's newest announcement; False if the drive table is full or, when
        `budget` (bytes) is given, if `drive_bytes` would pass it (a new drive, or a changed
        announcement that grows: the drive keeps what it had). Restores give no budget: what was
        stored before is never dropped."""
        drive = self.drives.get(serial)
        if drive is None:
            if len(self.drives) >= self.max_drives:
                self.refused_drives += 1
                return False
        elif drive.raw == raw:
            self._heard(drive, now, source_address, interface)
            return True
        own = fields if _ADDED.isdisjoint(fields) else {
            key: value for key, value in fields.items() if key not in _ADDED}
        own_json = dumps_default(own).encode("utf-8")
        cost = drive_cost(serial, raw, own_json)
        old_cost = drive.cost if drive is not None else 0
        if budget is not None and cost > old_cost and self.drive_bytes + cost - old_cost > budget:
            self.refused_drive_budget += 1
            return False
        if drive is None:
            appeared = serial not in self.statuses  # its directory may exist for statuses
            drive = self.drives[serial] = DriveRecord(serial, len(self._m_parts), now)
            key = (_json_string(serial) + ": ").encode("ascii")  # json.dumps(serial), in C
            self._m_parts += (key, b"", b"")
            self._stale.append(drive)
        else:
            appeared = False
            table = self._serial_by_body if drive.fields_prefix is None else self._serial_by_raw
            if table.get(drive.body) == serial:
                del table[drive.body]
        # Most drives share a model and a firmware: keep one string of each.
        # (Strings, numbers or null: announcement.wrong_type. Null is no value: "".)
        drive.model = self._shared(str(fields.get("model") or ""))
        drive.firmware = self._shared(str(fields.get("firmware_version") or ""))
        if own_json == raw:
            drive.fields_prefix = None
            drive.body = body = raw[:-1]
            self._serial_by_body[body] = serial
        else:
            drive.fields_prefix = body = own_json[:-1]
            drive.body = raw
            self._serial_by_raw[raw] = serial
        self._m_parts[drive.slot + 1] = body  # its tail (separator included) is stale: _heard
        drive.changed_at = wall_of(now)
        self.drive_bytes += cost - old_cost
        if self.touched is not None:
            self.touched.add(serial)
        self._heard(drive, now, source_address, interface, True, appeared)
        return True

    def _heard(self, drive: DriveRecord, now: float, source_address: str, interface: str,
               changed: bool = False, appeared: bool = False) -> None:
        # The view shows last_seen to the second and alive/expired: tell it when either moves.
        wall = wall_of(now)
        visible = changed or not drive.alive or int(wall) != int(wall_of(drive.last_seen))
        drive.last_seen = now
        if source_address != drive.source_address or interface != drive.interface:
            drive.source_address = self._shared(source_address)
            drive.interface = interface
            if self.touched is not None:
                self.touched.add(drive.serial)
        if not drive.alive:
            drive.alive = True
            drive.state_at = wall
            if self.touched is not None:
                self.touched.add(drive.serial)
        if drive.m_tail is not None:
            drive.m_tail = None
            self._stale.append(drive)
        self.drives_version += 1
        if visible and self.on_change is not None:
            self.on_change(drive.serial, now, appeared)
        if self.drive_lifetime is not None and not drive.expiry_queued:
            drive.expiry_queued = True
            heapq.heappush(self._expiry_heap, (drive.last_seen, drive.serial))

    def next_deadline(self) -> Optional[float]:
        """When (monotonic) `expire_due` may next have a drive to expire, or None."""
        if not self._expiry_heap or self.drive_lifetime is None:
            return None
        return self._expiry_heap[0][0] + self.drive_lifetime

    def expire_due(self, now: float) -> List[str]:
        """Marks every drive silent for longer than the lifetime (on the monotonic scale) as
        expired; returns their serials."""
        expired: List[str] = []
        heap = self._expiry_heap
        lifetime = self.drive_lifetime
        if lifetime is None:
            return expired
        while heap and heap[0][0] + lifetime <= now:
            _, serial = heapq.heappop(heap)
            drive = self.drives.get(serial)
            if drive is None or not drive.expiry_queued:
                continue  # wiped, or a stale entry
            if drive.last_seen + lifetime > now:
                heapq.heappush(heap, (drive.last_seen, serial))
                continue
            drive.expiry_queued = False
            drive.alive = False
            drive.state_at = wall_of(now)
            if drive.m_tail is not None:
                drive.m_tail = None
                self._stale.append(drive)
            self.drives_version += 1
            expired.append(serial)
            if self.touched is not None:
                self.touched.add(serial)
            if self.on_change is not None:
                self.on_change(serial, now, False)
        return expired

    def drive_view(self, serial: str) -> Dict[str, Any]:
        """One drive as the `m` reply shows it."""
        drive = self.drives[serial]
        view = {key: value for key, value in drive.fields.items() if key not in ADDED_FIELDS}
        view.update(self.added_fields(drive))
        return view

    def multicast_json(self, end: bytes = b"") -> bytes:
        """The `m` reply's JSON: {serial: {fields..., last_seen, ...}}, followed by `end`."""
        parts = self._refresh_tails()
        if len(parts) == 1:
            return b"{}" + end
        last_tail = parts[-1]
        parts[-1] = last_tail[:-2] + b"}" + end  # the last drive's comma closes the object
        try:
            return b"".join(parts)
        finally:
            parts[-1] = last_tail

    def _refresh_tails(self) -> List[Any]:
        """The `m` reply's parts, each drive's added fields (its tail) up to date."""
        parts = self._m_parts
        for drive in self._stale:
            if drive.m_tail is None and self.drives.get(drive.serial) is drive:
                separator = ", " if len(parts[drive.slot + 1]) > 1 else ""  # body "{": no fields
                drive.m_tail = (separator + dumps_default(self.added_fields(drive))[1:]
                                + ", ").encode("utf-8")
                parts[drive.slot + 2] = drive.m_tail
        self._stale = []
        return parts

    def snapshot_rows(self) -> Iterator[Tuple[str, Optional[bytes], Optional[bytes]]]:
        """Every row of the `m` and `s` replies: (serial, its drive object as the `m` reply has
        it or None, its status list as the `s` reply has it or None), JSON bytes cut from the
        replies' cached parts (no encoding); drives first, in the `m` reply's order, then the
        serials with statuses only. The change feed's snapshot in parts (change_feed.py)."""
        parts = self._refresh_tails()
        statuses = self.statuses
        for serial, drive in self.drives.items():
            history = statuses.get(serial)
            # body "{fields" + tail ", added fields}, ": the object without its ", ".
            yield (serial, (parts[drive.slot + 1] + parts[drive.slot + 2])[:-2],
                   None if history is None else b"[" + b", ".join(history) + b"]")
        for serial, history in statuses.items():
            if serial not in self.drives:
                yield serial, None, b"[" + b", ".join(history) + b"]"

    def _shared(self, text: str) -> str:
        """One string object for each distinct short text (models, firmware, addresses)."""
        shared = self._strings.setdefault(text, text)
        if len(self._strings) > 4096:  # a flood of distinct values must not grow this
            self._strings.clear()
        return shared

    def added_fields(self, drive: DriveRecord) -> Dict[str, Any]:
        """What the DSM adds beside a drive's own fields."""
        return {
            LAST_SEEN: self.format_last_seen(drive.last_seen_wall),
            "last_seen_epoch": round(drive.last_seen_wall, 3),
            "source_address": drive.source_address,
            "interface": drive.interface,
            "state": ALIVE if drive.alive else EXPIRED,
        }

    def format_last_seen(self, epoch: float) -> str:
        """`epoch` (s) in the original tool's `last_seen` format, local time, to the second."""
        # Drives announcing every 5 s share a handful of distinct seconds: format each once.
        second = int(epoch)
        text = self._last_seen_text.get(second)
        if text is None:
            if len(self._last_seen_text) > 256:
                self._last_seen_text.clear()
            text = self._last_seen_text[second] = time.strftime(LAST_SEEN_FORMAT,
                                                                time.localtime(second))
        return text

    # --- statuses -----------------------------------------------------------------------------
    def record_status(self, serial: str, entry_json: bytes, now: float = 0.0, *,
                      budget: Optional[int] = None) -> bool:
        """Appends one status entry (pre-serialised JSON) that arrived at `now` (epoch s); False
        if the serial table is full or, when `budget` (bytes) is given, if `status_bytes` would
        pass it (restores give none: what was acknowledged is never dropped)."""
        history = self.statuses.get(serial)
        cost = status_cost(serial, entry_json)
        if budget is not None:
            freed = status_cost(serial, history[0]) if history is not None and \
                len(history) == history.maxlen else 0
            if self.status_bytes + cost - freed > budget:
                self.refused_status_budget += 1
                return False
        appeared = False
        if history is None:
            if len(self.statuses) >= self.max_status_serials:
                self.refused_status_serials += 1
                return False
            history = self.statuses[serial] = collections.deque(maxlen=self.history)
            appeared = serial not in self.drives
        if len(history) == history.maxlen:
            self.status_bytes -= status_cost(serial, history[0])
        history.append(entry_json)
        self.status_bytes += cost
        self.status_at[serial] = wall_of(now)
        self._status_fragments.pop(serial, None)
        self.statuses_version += 1
        if self.touched_status is not None:
            self.touched_status.add(serial)
        if self.on_change is not None:
            self.on_change(serial, now, appeared)
        return True

    def status_json(self) -> bytes:
        """The `s` reply's JSON: {serial: [{time_stamp, status}, ...]}, oldest first."""
        parts: List[str] = []
        fragments = self._status_fragments
        for serial, history in self.statuses.items():
            fragment = fragments.get(serial)
            if fragment is None:
                entries = b", ".join(history).decode("utf-8")
                fragment = fragments[serial] = "%s: [%s]" % (json.dumps(serial), entries)
            parts.append(fragment)
        return ("{" + ", ".join(parts) + "}").encode("utf-8")

    # --- wiping -------------------------------------------------------------------------------
    def wipe(self, now: float = 0.0) -> Dict[str, int]:
        """Forgets every drive and status at `now` (epoch s); says how much was forgotten."""
        wiped = {
            "drives": len(self.drives),
            "status_serials": len(self.statuses),
            "statuses": sum(len(history) for history in self.statuses.values()),
        }
        gone = list(self.drives) + [s for s in self.statuses if s not in self.drives]
        self.drives.clear()
        self._m_parts = [b"{"]
        self._stale = []
        self.status_at.clear()
        self._serial_by_raw.clear()
        self._serial_by_body.clear()
        self._expiry_heap.clear()
        self.statuses.clear()
        self._status_fragments.clear()
        self.status_bytes = 0
        self.drive_bytes = 0
        self.drives_version += 1
        self.statuses_version += 1
        if self.touched is not None:
            self.touched.clear()  # a wipe event forgets every row first
            self.wiped = True
        if self.touched_status is not None:
            self.touched_status.clear()
        if self.on_change is not None:
            for serial in gone:
                self.on_change(serial, now, True)
        return wiped
