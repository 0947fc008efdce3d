"""Durability files: a snapshot of the whole store plus an append-only journal of every change since.

Theory of operation
-------------------
The state dir holds

    snapshot-<N>.json   the whole store as it stood when journal N was started
    journal-<N>.log     every change after that, in checksummed frames (below)

and a restore is the newest intact snapshot N followed by journals N, N+1, ... in order (with no
snapshot, every journal from the oldest). Every file read back is checked item by item, and damage
costs only the damaged items — never the start (docs/durability.md):

- A journal record is MAGIC, length, index and a CRC32 over them and the payload (compact JSON).
  A new drive's announcement embeds the datagram's own bytes, which are JSON already:
  `["A",[serial,time,source,interface],<datagram>]` (EMBEDDED_ANNOUNCEMENT; encoding the datagram
  as a JSON string cost more than the rest of the record). The reader cuts the datagram out byte
  for byte and hands the record on as the older `["a",serial,datagram,time,source,interface]`,
  which it still reads; the datagram passes the live checks again when it is replayed.
  A record that fails its check is skipped and the reader resynchronises on the next MAGIC; the
  indexes show records lost, duplicated or moved (replay is in index order, each once). Only a
  torn *last* record — cut short by a crash mid-append — is cut off in place.
- A pass's records go in *group frames* of up to GROUP_RECORDS: one frame (same MAGIC, length,
  CRC) whose payload is the JSON list of the records and whose index is its first record's; the
  reader numbers the others on from it. The length field's top bits hold the count (less one,
  so a lone record's field is its length as before): a damaged last group is counted in full.
  A frame costs about 0.3 us of Python (two packs, two CRC calls, the joins), more than a PUT's
  own work on the Status Server's fast path; grouped, a record costs its share of a join
  (docs/performance.md). The price: damage to a group frame costs its records (at most
  GROUP_RECORDS, all written in the same loop pass) where a frame each cost one. An
  announcement record is never grouped (its datagram is cut out byte for byte, which a group's
  JSON decoding would not keep); neither is a lone record. A DSM from before group frames reads
  one as damage: it skips the group's records, quarantines the file and keeps it — stop cleanly
  (which writes a snapshot) before going back to such a version.
- MAGIC never occurs inside a payload, so a frame ends at the next MAGIC or the file's end: a
  frame failing its check is tried again with that extent as its length, and if the CRC then
  holds, only the length field was damaged — the frame is kept (the file is still reported and
  quarantined). Before, such a flip in the last frame read as a torn tail and was cut off.
- A snapshot is one line per item, each `<crc32> <n> <JSON>`, closed by `end <count>`; it is
  written to a temporary file, fsynced, read back and checked before it replaces anything. A
  damaged newest snapshot falls back to the previous one, kept with its journals for this; with
  none intact, the newest one's intact items are used.
- Damaged files are listed in Loaded.damaged; once a new snapshot holds what they held, the
  Journal renames them `*.damaged-<time>` (never truncates or deletes them).

Records are queued in memory as the changes happen and written once per loop pass, before that
pass's replies are sent. With `--fsync always` the pass also fsyncs there, so a reply acknowledging a
change leaves only once its record is on disk — one fsync per pass however many changes it holds
(group commit); `everysec` fsyncs at most once a second; `no` leaves it to the kernel.

Snapshots are written by a forked child, as Redis's BGSAVE does: the child holds a copy-on-write image
of the store as of the fork, so the loop never waits for the disk. The child first closes every
inherited descriptor (listeners, connections; the instance lock is a POSIX lock, not inherited) and
dies with its parent (PR_SET_PDEATHSIG), so it never keeps a new DSM from starting. The parent
starts journal N+1 at the fork and removes files older than the previous snapshot only once the
child reports success. A clean stop writes the snapshot in the process itself.

When the state dir fails (full, read-only, removed), the error is logged, reported by `status()`,
the queued records are dropped, and the journal is marked as needing a fresh snapshot: the next
retry writes one — which holds everything the dropped records held — and starts a new journal.
The store keeps serving from memory meanwhile; with `--fsync always`, `refusing` says why changes
must be refused until then (state_guard.py).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import stat
import struct
import time
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from .local_dirs import make_dirs, unsafe_dir

log = logging.getLogger("dsm.state")

FSYNC_ALWAYS = "always"
FSYNC_EVERYSEC = "everysec"
FSYNC_NO = "no"
FSYNC_POLICIES = (FSYNC_ALWAYS, FSYNC_EVERYSEC, FSYNC_NO)
# A journal record: MAGIC, then length and index (_FIELDS), then CRC32 over fields and payload.
# MAGIC holds a NUL, which compact JSON never does, so a reader can find the next record after
# damage; the index numbers the records of one file from 0, exposing lost, repeated or moved ones.
MAGIC = b"\x00DJ\x02"
_FIELDS = struct.Struct("<II")
_CRC = struct.Struct("<I")
_HEADER_SIZE = len(MAGIC) + _FIELDS.size + _CRC.size
_HEAD = struct.Struct("<%dsIII" % len(MAGIC))  # MAGIC, _FIELDS and the CRC in one pack
_LEGACY_HEADER = struct.Struct("<II")
# A record larger than this is taken for a torn length field, not a record.
MAX_RECORD = 64 * 1024 * 1024
# Records of one pass framed together (a group frame; see the top): the frame's cost is paid once
# for these, and damage to one costs at most these.
GROUP_RECORDS = 32
# The length field holds the payload's length in its low bits and, for a group, the number of
# records less one in its top 5 (0 for a lone record, so older single frames read the same): a
# reader knows how many records a frame held even when its payload is damaged.
_LENGTH_MASK = (1 << 27) - 1  # 128 MiB, above MAX_RECORD
_COUNT_SHIFT = 27
SNAPSHOT_FORMAT = 2
# How often a flush checks the journal is still the state dir's (Journal.check_identity) when
# idle and under `everysec` and `no`; under `always`, also every pass that wrote.
IDENTITY_CHECK_S = 1.0
# First record of a journal started by a recovery snapshot (see start_snapshot); replay ignores it.
GAP_RECORD = "g"
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d+)\.json\Z")
RECOVERY_FACTS = ("records_skipped", "records_duplicated", "bytes_skipped", "items_skipped",
                  "snapshots_unreadable", "files_quarantined")
_SNAPSHOT_TMP_NAME = re.compile(r"snapshot-(\d+)\.json\.tmp\.\d+\Z")
_JOURNAL_NAME = re.compile(r"journal-(\d+)\.log\Z")


# The start of a record that embeds an announcement's bytes (see the top).
EMBEDDED_ANNOUNCEMENT = b'["A",'
_RECORD_HEAD = json.JSONDecoder()


def embedded_announcement(serial: str, datagram: bytes, now: float, source: str,
                          interface: str) -> bytes:
    """The payload of an announcement record: `datagram` (JSON text, as parse_announcement
    accepted it) embedded as it is, after a JSON list of the other fields."""
    return b'%s[%s,%s,%s,%s],%s]' % (
        EMBEDDED_ANNOUNCEMENT, _json_str(serial), repr(float(now)).encode("ascii"),
        _json_str(source), _json_str(interface), datagram)


def status_record(serial: str, entry_json: bytes) -> bytes:
    """The payload of a status record, `["s",serial,entry]`: the entry is JSON already (the `s`
    reply's), embedded rather than encoded a second time."""
    return b'["s",%s,%s]' % (_json_str(serial), entry_json)


def _json_str(text: str) -> bytes:
    return json.encoder.encode_basestring_ascii(text).encode("ascii")


def _decode_embedded(text: str) -> Optional[List[Any]]:
    """`["A",[serial,time,source,interface],<datagram>]` as the record
    `["a",serial,datagram text,time,source,interface]`; None if it is not one."""
    try:
        head, end = _RECORD_HEAD.raw_decode(text, len(EMBEDDED_ANNOUNCEMENT))
    except ValueError:
        return None
    if (type(head) is not list or len(head) != 4 or text[end:end + 1] != ","
            or not text.endswith("]")):
        return None
    serial, t, source, interface = head
    return ["a", serial, text[end + 1:-1], t, source, interface]


def decode_payload(payload: bytes) -> Any:
    """A record's payload (checked against its CRC already) as the record; ValueError if it is not
    one (not UTF-8, not JSON, a malformed embedded announcement)."""
    text = payload.decode("utf-8")
    if payload.startswith(EMBEDDED_ANNOUNCEMENT):
        record = _decode_embedded(text)
        if record is None:
            raise ValueError("malformed announcement record")
        return record
    return json.loads(text)


def encode_record(record: Any, index: int = 0, count: int = 1) -> bytes:
    """One frame: magic, length, index, CRC32, payload. `record` is a JSON-able value, or bytes
    already holding its JSON (the hot paths build those by concatenation instead of encoding
    twice); `index` is its place in its journal file, 0 for the first; `count` > 1 makes it a
    group frame of that many records (the payload their JSON list; encode_records)."""
    payload = record if isinstance(record, bytes) else _json_payload(record)
    length = len(payload) | (count - 1) << _COUNT_SHIFT
    index &= 0xFFFFFFFF
    crc = zlib.crc32(payload, zlib.crc32(_FIELDS.pack(length, index)))
    return _HEAD.pack(MAGIC, length, index, crc) + payload  # one pack: hot at 100,000s a second


def _json_payload(record: Any) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_records(payloads: List[bytes], first_index: int) -> bytes:
    """The payloads (JSON bytes) of one pass, numbered on from `first_index`, framed: up to
    GROUP_RECORDS at a time in one group frame (see the top), one frame each where a group cannot
    hold them (a lone record, an embedded announcement, a group past MAX_RECORD)."""
    count = len(payloads)
    if count == 1:
        return encode_record(payloads[0], first_index)
    parts: List[bytes] = []
    join = b",".join
    for start in range(0, count, GROUP_RECORDS):
        chunk = payloads[start:start + GROUP_RECORDS]
        body = join(chunk)
        index = first_index + start
        # A group is JSON decoded whole: an announcement's datagram (cut out byte for byte)
        # cannot ride in one. `["A",` elsewhere (inside a status) only costs the group.
        if len(chunk) == 1 or EMBEDDED_ANNOUNCEMENT in body or len(body) + 2 > MAX_RECORD:
            parts.extend(encode_record(payload, index + offset)
                         for offset, payload in enumerate(chunk))
        else:
            parts.append(encode_record(b"[" + body + b"]", index, len(chunk)))
    return b"".join(parts)


class JournalScan:
    """What one journal file holds: the intact records and an account of everything else.

    `records` are (index, record) pairs in file order; `good_end` is where the last intact record
    ends; `torn` says the bytes after it are a record cut short by a crash (safe to cut off);
    `damaged` says something other than a torn tail failed its check (the file is quarantined)."""

    def __init__(self) -> None:
        self.records: List[Tuple[int, Any]] = []
        self.good_end = 0
        self.bad_regions = 0
        self.bytes_skipped = 0
        self.invalid_records = 0  # elements of intact group frames that are not records
        self.lengths_repaired = 0  # frames whose damaged length field the CRC let us repair
        self.expected_end = 0  # one past the last index the intact frames cover
        self.trailing_lost = 0  # records of the damaged frame(s) after the last intact one
        self.torn = False
        self.damaged = False
        self.legacy = False


def _tail_is_torn(data: bytes, start: int) -> bool:
    """True when data[start:] looks like one record whose writing a crash cut short: a prefix of
    a header, a header whose length runs past the end of the file, or zeros (blocks the file
    system allocated but never wrote)."""
    tail = data[start:]
    if not tail.strip(b"\x00"):
        return True
    if len(tail) < _HEADER_SIZE:
        return MAGIC.startswith(tail[:len(MAGIC)])
    if not tail.startswith(MAGIC):
        return False
    field, _ = _FIELDS.unpack_from(tail, len(MAGIC))
    length = field & _LENGTH_MASK
    return length <= MAX_RECORD and _HEADER_SIZE + length > len(tail)


def _decode_at(data: bytes, offset: int, extent: Optional[int] = None
               ) -> Optional[Tuple[int, List[Any], int]]:
    """The frame at `offset` as (index of its first record, its records, end) — one record, or a
    group's in order (None in place of an element that is not a record) — or None if it fails
    any check. With `extent`, the frame is taken to end there whatever its length field says:
    the payload's CRC (over the fields with that length) tells whether only the length was
    damaged (MAGIC never occurs in a payload, so the next MAGIC or the file's end bounds it)."""
    if data[offset:offset + len(MAGIC)] != MAGIC or offset + _HEADER_SIZE > len(data):
        return None
    field, index = _FIELDS.unpack_from(data, offset + len(MAGIC))
    start = offset + _HEADER_SIZE
    if extent is not None:
        field = (field & ~_LENGTH_MASK) | (extent - start)
    length = field & _LENGTH_MASK
    count = (field >> _COUNT_SHIFT) + 1
    end = start + length
    if length > MAX_RECORD or end > len(data):
        return None
    (crc,) = _CRC.unpack_from(data, offset + len(MAGIC) + _FIELDS.size)
    payload = data[start:end]
    if zlib.crc32(payload, zlib.crc32(_FIELDS.pack(field, index))) != crc:
        return None
    try:
        record = decode_payload(payload)
    except (ValueError, RecursionError):  # RecursionError: JSON nested past the stack
        return None
    if not isinstance(record, list) or not record:
        return None
    if isinstance(record[0], str):
        return (index, [record], end) if count == 1 else None
    if count == 1 or len(record) != count:
        return None
    # A group frame: its records in order. One that is not a record (or an embedded
    # announcement, which is never grouped) is None: lost, as it would be in a frame of its own.
    return index, [each if isinstance(each, list) and each and isinstance(each[0], str)
                   and each[0] != "A" else None for each in record], end


def _frame_count(data: bytes, offset: int, expected_index: int) -> int:
    """How many records the damaged frame at `offset` held, as its header says, where the header
    is believable (MAGIC, the index the frame before implies, a length that ends the file); 1
    (at least) where it is not."""
    if data[offset:offset + len(MAGIC)] != MAGIC or offset + _HEADER_SIZE > len(data):
        return 1
    field, index = _FIELDS.unpack_from(data, offset + len(MAGIC))
    if index != expected_index or offset + _HEADER_SIZE + (field & _LENGTH_MASK) != len(data):
        return 1
    return (field >> _COUNT_SHIFT) + 1


def scan_journal(data: bytes) -> JournalScan:
    """Every intact record of a journal file; after a record that fails its check the reader
    resynchronises on the next record header (MAGIC) rather than giving up on the rest."""
    scan = JournalScan()
    offset = 0
    size = len(data)
    in_bad = False
    while offset < size:
        decoded = _decode_at(data, offset)
        if decoded is None:
            # Only the length field damaged? The frame ends at the next MAGIC or the file's end.
            following = data.find(MAGIC, offset + 1)
            decoded = _decode_at(data, offset, size if following < 0 else following)
            if decoded is not None:
                scan.lengths_repaired += 1
        if decoded is not None:
            index, records, end = decoded
            for number, record in enumerate(records):
                if record is not None:
                    scan.records.append(((index + number) & 0xFFFFFFFF, record))
                else:  # an intact group holding a non-record: its index is missing
                    scan.invalid_records += 1
            scan.expected_end = max(scan.expected_end, index + len(records))
            scan.good_end = offset = end
            in_bad = False
            continue
        if not in_bad:
            scan.bad_regions += 1
            in_bad = True
        following = data.find(MAGIC, offset + 1)
        following = size if following < 0 else following
        scan.bytes_skipped += following - offset
        offset = following
    if scan.bad_regions:
        # Damage confined to the end, shaped like an interrupted append, is a torn record.
        tail_only = scan.bad_regions == 1 and scan.bytes_skipped == size - scan.good_end
        scan.torn = tail_only and _tail_is_torn(data, scan.good_end)
        scan.damaged = not scan.torn
        if scan.good_end < size and not scan.torn:
            scan.trailing_lost = _frame_count(data, scan.good_end, scan.expected_end)
    if scan.invalid_records or scan.lengths_repaired:
        scan.damaged = True
    if not scan.records and size and not data.startswith(MAGIC):
        legacy, used = decode_legacy_records(data)
        if legacy:  # a journal written by a DSM before record headers had MAGIC and an index
            scan = JournalScan()
            scan.legacy = True
            scan.records = list(enumerate(legacy))
            scan.good_end = used
            scan.bytes_skipped = size - used
            scan.torn = used < size
    indexes = [index for index, _ in scan.records]
    if indexes != sorted(set(indexes)):
        scan.damaged = True  # duplicated or reordered records: the file was changed
    return scan


def decode_records(data: bytes) -> Tuple[List[Any], int]:
    """The intact records of `data` in the order they were written (duplicates once), and where
    the last intact record ends."""
    scan = scan_journal(data)
    return [record for _, record in _in_order(scan.records)[0]], scan.good_end


def _in_order(records: List[Tuple[int, Any]]) -> Tuple[List[Tuple[int, Any]], int, int]:
    """Records sorted by index with duplicates dropped; also how many were duplicates and how
    many indexes are missing below the highest one (records lost to damage)."""
    unique: Dict[int, Any] = {}
    for index, record in records:
        unique.setdefault(index, record)
    ordered = sorted(unique.items())
    missing = (ordered[-1][0] + 1 - len(ordered)) if ordered else 0
    return ordered, len(records) - len(unique), missing


def decode_legacy_records(data: bytes) -> Tuple[List[Any], int]:
    """Journals of DSMs before this format: 4-byte length, 4-byte CRC32, payload; stops at the
    first record that fails its check."""
    records: List[Any] = []
    offset = 0
    size = len(data)
    while offset + _LEGACY_HEADER.size <= size:
        length, crc = _LEGACY_HEADER.unpack_from(data, offset)
        start = offset + _LEGACY_HEADER.size
        end = start + length
        if length > MAX_RECORD or end > size:
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            record = json.loads(payload.decode("utf-8"))
        except ValueError:
            break
        if not isinstance(record, list) or not record:
            break
        records.append(record)
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


Chain = Tuple[int, List[Tuple[str, Tuple[int, int]]]]


def restore_chain(state_dir: str, seq: int) -> Chain:
    """The files a restore reads before journal `seq` (see the top): the newest snapshot numbered
    `seq` or below, then the journals from it (from the oldest, with no snapshot) below `seq`; each
    with its (st_dev, st_ino). Returned with that snapshot's number (-1: none). Files that vanish
    while listed are left out."""
    snapshots = [number for number in _numbered(state_dir, _SNAPSHOT_NAME) if number <= seq]
    base = snapshots[-1] if snapshots else -1
    paths = [snapshot_path(state_dir, base)] if snapshots else []
    paths += [journal_path(state_dir, number) for number in _numbered(state_dir, _JOURNAL_NAME)
              if base <= number < seq]
    chain = []
    for path in paths:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        chain.append((path, (info.st_dev, info.st_ino)))
    return base, chain


# --- snapshots ------------------------------------------------------------------------------------
def _snapshot_line(body: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(body), body)


def encode_snapshot(state: Dict[str, Any]) -> Iterator[bytes]:
    """The lines of a snapshot file. Each line is `<crc32 hex> <body>`; bodies are `0 <header>`,
    then `<n> <item>` for n = 1, 2, ... and last `end <n>` with the number of numbered lines.

    `state`'s list values become one item per element (`[key, element]`), its dict values one per
    pair (`[key, name, value]`), the rest goes into the header: `decode_snapshot` rebuilds it."""
    header = {key: value for key, value in state.items() if not isinstance(value, (list, dict))}
    header["file_format"] = SNAPSHOT_FORMAT
    header["lists"] = sorted(key for key, value in state.items() if isinstance(value, list))
    header["dicts"] = sorted(key for key, value in state.items() if isinstance(value, dict))
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    yield _snapshot_line(b"0 " + dumps(header).encode("utf-8"))
    count = 1
    for key, value in state.items():
        if isinstance(value, list):
            items: Iterable[Any] = ([key, element] for element in value)
        elif isinstance(value, dict):
            items = ([key, name, element] for name, element in value.items())
        else:
            continue
        for item in items:
            yield _snapshot_line(b"%d %s" % (count, dumps(item).encode("utf-8")))
            count += 1
    yield _snapshot_line(b"end %d" % count)


class SnapshotCheck:
    """How a snapshot file read: `items_bad` lines failed their check, `missing` numbered lines
    are absent (counting the damaged ones), `duplicates` repeated; `intact` only if nothing was
    wrong at all."""

    def __init__(self) -> None:
        self.items_bad = 0
        self.missing = 0
        self.duplicates = 0
        self.out_of_order = False
        self.has_end = False
        self.legacy = False
        self.newer_format: Optional[Any] = None  # the file_format of a newer DSM's snapshot
        self.items = 0  # numbered item lines that passed their check

    @property
    def intact(self) -> bool:
        return (self.has_end and not self.items_bad and not self.missing and
                not self.duplicates and not self.out_of_order)


def decode_snapshot(data: bytes) -> Tuple[Optional[Dict[str, Any]], SnapshotCheck]:
    """The store a snapshot file holds, from its intact lines only, and how intact it was.

    None (with the check) when not even the header survived. A snapshot in the older format (one
    JSON object, no checksums) is read as a whole or not at all."""
    check = SnapshotCheck()
    if data.startswith(b"{"):
        check.legacy = True
        try:
            legacy = json.loads(data.decode("utf-8"))
        except ValueError:
            return None, check
        check.has_end = isinstance(legacy, dict)
        return (legacy if isinstance(legacy, dict) else None), check
    lines = data.split(b"\n")
    if lines[-1]:
        check.items_bad += 1  # the last line has no newline: cut short
    del lines[-1]
    raw_items: Dict[int, bytes] = {}
    expected: Optional[int] = None
    previous = -1
    crc32 = zlib.crc32
    for line in lines:
        # Inlined _check_snapshot_line for the common, intact line: loading a large snapshot
        # spends most of its time in this loop.
        body = line[9:]
        if line[8:9] == b" " and b"%08x" % crc32(body) == line[:8]:
            number, _, text = body.partition(b" ")
            if number.isdigit():
                index = int(number)
            else:
                checked = _check_snapshot_line(line)
                if checked is None:
                    check.items_bad += 1
                    continue
                index, text = checked
        else:
            checked = _check_snapshot_line(line)
            if checked is None:
                check.items_bad += 1
                continue
            index, text = checked
        if index < 0:
            expected = -index
            check.has_end = True
            continue
        if index in raw_items:
            check.duplicates += 1
            continue
        if index < previous:
            check.out_of_order = True
        previous = index
        raw_items[index] = text
    items = _parse_items(raw_items, check)
    header = items.pop(0, None)
    check.items = len(items)
    highest = max(items) if items else 0
    total = expected if expected is not None else highest + 1
    check.missing = max(0, total - len(items) - (header is not None))
    if not isinstance(header, dict) or header.get("file_format") != SNAPSHOT_FORMAT:
        if isinstance(header, dict) and header.get("file_format") is not None:
            check.newer_format = header.get("file_format")  # intact, but not ours to read
        if header is not None or not items:
            return None, check
        # The header line is lost: the items still say which list or dict they belong to.
        header = {"lists": sorted({item[0] for item in items.values() if len(item) == 2
                                   and isinstance(item[0], str)}),
                  "dicts": sorted({item[0] for item in items.values() if len(item) == 3
                                   and isinstance(item[0], str)})}
    state: Dict[str, Any] = {key: value for key, value in header.items()
                             if key not in ("lists", "dicts", "file_format")}
    lists = [key for key in header.get("lists") or [] if isinstance(key, str)]
    dicts = [key for key in header.get("dicts") or [] if isinstance(key, str) and key not in lists]
    for key in lists:
        state[key] = []
    for key in dicts:
        state[key] = {}
    for index in sorted(items):
        item = items[index]
        if (len(item) == 2 and item[0] in lists):
            state[item[0]].append(item[1])
        elif len(item) == 3 and item[0] in dicts and isinstance(item[1], str):
            state[item[0]][item[1]] = item[2]
        else:
            check.items_bad += 1
    return state, check


def _check_snapshot_line(line: bytes) -> Optional[Tuple[int, bytes]]:
    """(index, JSON text) of a line that passes its CRC, (-count, b"") for the end line, None
    if it fails."""
    if len(line) < 11 or line[8:9] != b" ":
        return None
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    body = line[9:]
    if zlib.crc32(body) != crc:
        return None
    number, _, rest = body.partition(b" ")
    try:
        if number == b"end":
            count = int(rest)
            return (-count, b"") if count > 0 else None
        index = int(number)
    except ValueError:
        return None
    return (index, rest) if index >= 0 else None


def _parse_items(raw_items: Dict[int, bytes], check: SnapshotCheck) -> Dict[int, Any]:
    """The items' JSON, parsed in one go (one json.loads per line is five times slower); line by
    line only if that fails. Lines that are not JSON, or items that are not lists, count as bad."""
    indexes = list(raw_items)
    try:
        values = json.loads(b"[" + b",".join(raw_items.values()) + b"]")
        if len(values) != len(indexes):
            raise ValueError("a line held more than one value")
    except ValueError:
        values = []
        for index in indexes:
            try:
                values.append(json.loads(raw_items[index]))
            except ValueError:
                values.append(None)
    items: Dict[int, Any] = {}
    for index, value in zip(indexes, values):
        if index > 0 and not isinstance(value, list):
            check.items_bad += 1
            continue
        items[index] = value
    return items


def write_snapshot(state_dir: str, seq: int, state: Dict[str, Any]) -> None:
    """Writes snapshot `seq` atomically — a reader sees the old file or the whole new one — and
    only after it was fsynced and read back intact. OSError if any step fails."""
    path = snapshot_path(state_dir, seq)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        # O_EXCL|O_NOFOLLOW: never written through a link planted under the temporary name.
        with os.fdopen(create_new_file(tmp), "wb") as f:
            f.writelines(encode_snapshot(state))
            f.flush()
            os.fsync(f.fileno())
        if not snapshot_file_intact(tmp):
            raise OSError(errno.EIO, "snapshot %s did not read back intact" % tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)  # a full disk must not fill up further with half snapshots
        raise
    # The new name must survive a power cut before anything relies on it (retire_old_files).
    fsync_dir(state_dir)


def read_state_file(path: str) -> bytes:
    """The whole content of the regular file at `path`.

    Raises OSError for anything else found under a state file's name — a FIFO (whose open() would
    block the start for good), a device such as /dev/zero (whose read() never ends), a directory —
    so a planted or mistaken file costs that file only (docs/durability.md)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def snapshot_file_intact(path: str) -> bool:
    """True if every line of the snapshot file at `path` passes its CRC, the lines are numbered
    0, 1, ... in order and the end line counts them. Streams: memory stays small however large
    the snapshot (it runs in the snapshot child, right after the write)."""
    expected = 0
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return False
            checked = _check_snapshot_line(line[:-1])  # the loader's own line check
            if checked is None:
                return False
            index = checked[0]
            if index < 0:  # the end line, which counts the items
                return -index == expected and not f.read(1)
            if index != expected:
                return False
            expected += 1
    return False


def create_new_file(path: str, mode: int = 0o644) -> int:
    """A descriptor of a new, empty regular file at `path`, opened for writing with
    O_EXCL|O_NOFOLLOW: an entry already there (a leftover of this pid, a link or file someone
    planted) is removed first — unlink removes a link itself, never its target."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, mode)


def fsync_dir(path: str) -> None:
    """fsyncs the directory `path`, so the names created or renamed in it survive a power cut
    (as etcd's WAL and Redis's AOF do after creating or renaming a log file). OSError if not;
    a file system that cannot fsync a directory at all (EINVAL, ENOTSUP) is let pass."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _fsync_dir_quietly(path: str) -> None:
    try:
        fsync_dir(path)
    except OSError:
        pass


def quarantine(path: str, now: float) -> Optional[str]:
    """Renames a damaged file to `<path>.damaged-<UTC time>` (never truncates or deletes it);
    the new name, or None if the rename failed."""
    target = _quarantine_target(path, now)
    try:
        os.rename(path, target)
    except OSError as exc:
        log.error("cannot quarantine %s: %s", path, exc)
        return None
    _fsync_dir_quietly(os.path.dirname(path) or ".")
    log.warning("quarantined the damaged %s as %s", path, target)
    return target


def _file_intact(path: str) -> bool:
    """A snapshot or journal file passes its checks (an unreadable one does not)."""
    try:
        # Only a regular file is read: a FIFO or device under the name would block or never end.
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        if _SNAPSHOT_NAME.match(os.path.basename(path)):
            return snapshot_file_intact(path)
        return not scan_journal(read_state_file(path)).damaged
    except OSError:
        return False


def retire_old_files(state_dir: str, seq: int, checked_from: int, now: float,
                     spare: Iterable[str] = ()) -> List[str]:
    """After snapshot `seq` is on disk and read back: removes snapshots older than the previous
    one and journals older than the previous snapshot. A file numbered below `checked_from` was
    never read by this process: it is checked first and, if it fails, renamed aside
    (`*.damaged-<time>`) instead of removed. Returns the quarantined paths. Does not log (it
    runs in the snapshot child, whose log descriptors are closed). Paths in `spare` (damaged
    files the parent will rename aside itself) are left alone."""
    older = [old for old in _numbered(state_dir, _SNAPSHOT_NAME) if old < seq]
    keep_from = older[-1] if older else seq
    retired = [(old, snapshot_path(state_dir, old)) for old in older[:-1]]
    retired += [(old, journal_path(state_dir, old))
                for old in _numbered(state_dir, _JOURNAL_NAME) if old < keep_from]
    quarantined = []
    spare = set(spare)
    for number, path in retired:
        if path in spare:
            continue
        if number < checked_from and not _file_intact(path):
            if _quarantine_quietly(path, now) is not None:
                quarantined.append(path)
            continue  # a damaged file that cannot be renamed stays: never deleted
        _unlink(path)
    return quarantined


def _quarantine_target(path: str, now: float) -> str:
    target = "%s.damaged-%s" % (path, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
    suffix = 0
    while os.path.exists(target + ("" if not suffix else ".%d" % suffix)):
        suffix += 1
    return target + ("" if not suffix else ".%d" % suffix)


def _quarantine_quietly(path: str, now: float) -> Optional[str]:
    target = _quarantine_target(path, now)
    try:
        os.rename(path, target)
    except OSError:
        return None
    return target


class Loaded:
    """What a state dir held: the snapshot (or None) and the journal records after it, in order,
    plus an account of what could not be loaded."""

    def __init__(self) -> None:
        self.snapshot: Optional[Dict[str, Any]] = None
        self.snapshot_seq: Optional[int] = None
        self.records: List[Any] = []
        self.torn: List[str] = []  # journals whose torn last record was cut off
        self.damaged: List[str] = []  # files to quarantine once a new snapshot holds their data
        self.next_seq = 1
        self.records_skipped = 0  # journal records lost to damage (counted by their indexes)
        self.records_duplicated = 0
        self.bytes_skipped = 0
        self.items_skipped = 0  # snapshot items lost to damage
        self.snapshots_unreadable = 0
        self.journal_gaps = 0  # journals replayed across a gap of dropped records
        # Why the state dir could not be listed (it exists but is not readable), else None: then
        # nothing in it was loaded and nothing in it may be written, overwritten or removed.
        self.unreadable: Optional[str] = None
        # Files numbered below this were never read (older than the snapshot loaded): checked
        # before normal cleanup removes them, quarantined if damaged.
        self.checked_from = 0
        self._damaged_before: Set[str] = set()  # damaged names when the child started

    @property
    def lost_anything(self) -> bool:
        return bool(self.records_skipped or self.items_skipped or self.damaged or
                    self.journal_gaps)


def load_state(state_dir: str, repair: bool = True) -> Loaded:
    """Reads the newest intact snapshot and every journal from it on; never raises on damage.

    A damaged newest snapshot falls back to the previous one (kept, with its journals, for this);
    with no intact snapshot the newest one's intact items are used. Journal damage skips the bad
    records only. With `repair`, a torn last record is cut off and leftover temporary files of
    an interrupted snapshot are removed; damaged files are listed in `damaged`, not touched."""
    loaded = Loaded()
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        names = []
    except OSError as exc:  # there, but not readable: its files may be anything, so hands off
        loaded.unreadable = "cannot list the state dir %s: %s" % (state_dir, exc.strerror or exc)
        log.critical("%s; starting without its data and writing nothing into it (a new snapshot "
                     "could overwrite a file never read) until the DSM is restarted with it "
                     "readable: make it readable and writable by the DSM's user (chmod u+rwx) "
                     "or give another --state-dir", loaded.unreadable)
        return loaded
    if repair:
        for name in names:
            if _SNAPSHOT_TMP_NAME.match(name):
                _unlink(os.path.join(state_dir, name))
    snapshots = _numbered(state_dir, _SNAPSHOT_NAME)
    salvage: Optional[Tuple[int, Dict[str, Any], SnapshotCheck]] = None
    for seq in reversed(snapshots):
        path = snapshot_path(state_dir, seq)
        try:
            state, check = decode_snapshot(read_state_file(path))
        except OSError as exc:
            log.error("snapshot %s unreadable: %s", path, exc)
            loaded.snapshots_unreadable += 1
            loaded.damaged.append(path)  # never loaded: renamed aside later, never removed
            continue
        if state is not None and check.intact:
            loaded.snapshot, loaded.snapshot_seq = state, seq
            break
        loaded.snapshots_unreadable += 1
        loaded.damaged.append(path)
        if check.newer_format is not None:
            # A downgrade: the file is fine, this DSM cannot read it. Said as such, with what it
            # holds, so the operator knows to run the newer DSM (the file is kept, renamed).
            loaded.items_skipped += check.items
            log.critical("snapshot %s is in file format %r, which this DSM (format %d) cannot "
                         "read: its %d items are not loaded; it is kept as *.damaged-<time> for "
                         "the DSM version that wrote it; trying an older one", path,
                         check.newer_format, SNAPSHOT_FORMAT, check.items)
            continue
        log.error("snapshot %s is damaged (%d lines failed their check, %d items missing); "
                  "trying an older one", path, check.items_bad, check.missing)
        if state is not None and salvage is None:
            salvage = (seq, state, check)
    if loaded.snapshot is None and salvage is not None:
        # No intact snapshot at all: the newest damaged one's intact items beat nothing.
        seq, state, check = salvage
        loaded.snapshot, loaded.snapshot_seq = state, seq
        loaded.items_skipped += max(check.missing, check.items_bad)
        log.error("no intact snapshot: using the %d intact items of %s",
                  sum(len(v) for v in state.values() if isinstance(v, (list, dict))),
                  snapshot_path(state_dir, seq))
    journals = _numbered(state_dir, _JOURNAL_NAME)
    first = loaded.snapshot_seq if loaded.snapshot_seq is not None else 0
    for seq in journals:
        if seq < first:
            continue
        path = journal_path(state_dir, seq)
        try:
            data = read_state_file(path)
        except OSError as exc:
            log.error("journal %s unreadable: %s", path, exc)
            loaded.damaged.append(path)
            continue
        scan = scan_journal(data)
        ordered, duplicates, missing = _in_order(scan.records)
        if seq > first and ordered and ordered[0][1][:1] == [GAP_RECORD]:
            # The journal before this one missed records (its state dir failed) and the
            # snapshot that held them is not the one loaded: they are lost.
            loaded.records_skipped += 1
            loaded.journal_gaps += 1
            log.error("journal %s starts after records were dropped (a failing state dir); "
                      "the snapshot that held them was not loaded: they are lost", path)
        loaded.records.extend(record for _, record in ordered)
        loaded.records_duplicated += duplicates
        if scan.damaged:
            # Gaps in the indexes (and non-records in groups) below the last intact frame's
            # end, and what the damaged frame after it held (as its header says, or at least 1).
            lost = max(missing, scan.expected_end - len(ordered)) + scan.trailing_lost
            loaded.records_skipped += lost
            loaded.bytes_skipped += scan.bytes_skipped
            loaded.damaged.append(path)
            log.error("journal %s is damaged: %d bytes in %d places failed their check, %d "
                      "records lost, %d duplicated, %d frames' length fields repaired; the %d "
                      "intact records are used", path, scan.bytes_skipped, scan.bad_regions, lost,
                      duplicates, scan.lengths_repaired, len(ordered))
        elif scan.torn:
            loaded.torn.append(path)
            log.warning("journal %s: dropped a torn last record of %d bytes after %d records",
                        path, len(data) - scan.good_end, len(ordered))
            if repair:
                try:
                    with os.fdopen(os.open(path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as f:
                        f.truncate(scan.good_end)
                except OSError as exc:
                    log.error("cannot cut the torn tail of %s: %s", path, exc)
    loaded.next_seq = max(snapshots + journals + [0]) + 1
    loaded.checked_from = first
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
        self._index = 0  # of the next record in the current journal file
        # Run first thing in a forked child (snapshot): closes what the child must not hold.
        self.child_setup: Optional[Callable[[], None]] = None
        # Damaged files found at start: renamed aside once a new snapshot holds what they held.
        self.quarantine_pending: List[str] = []
        self.recovery: Dict[str, int] = dict.fromkeys(RECOVERY_FACTS, 0)
        # Set when the state dir could not be listed at start (Loaded.unreadable): nothing is
        # written into it for the life of the process, so no file never read can be overwritten.
        self.blocked: Optional[str] = None
        # Files numbered below this were never read: checked before cleanup (retire_old_files).
        self.checked_from = 0
        # (st_dev, st_ino) of the state dir and of the open journal when it was opened: the
        # journal written must be the file the configured state dir names now (check_identity).
        self._identity: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None
        self._journal_path = ""
        # The files a restore reads before the open journal (its base snapshot and the journals
        # between), with their (st_dev, st_ino) when it was opened: removed or replaced, the
        # changes they hold would be lost at the next restart (restore_chain).
        self._chain: Chain = (-1, [])
        self._identity_checked = float("-inf")  # monotonic time of the last check in a flush
        self.identity_lost = 0  # times the state dir or journal was found moved, replaced or gone
        self.dir_fsyncs = 0

    # --- records ------------------------------------------------------------------------------
    def record(self, record: Any) -> None:
        """Queues one change; it reaches the file at the next `flush()`."""
        if self.needs_snapshot:
            self.records_dropped += 1  # the snapshot that ends the failure will hold this change
            return
        # Only the payload now (JSON at once: a list may change after this call); framed with
        # its index and CRC at flush, all of the pass's records in one loop (encode_records).
        self._pending.append(record if type(record) is bytes else _json_payload(record))

    def appender(self) -> Callable[[bytes], None]:
        """`record` for JSON bytes until the next flush or failure (the caller asks again after
        anything that may flush): the queue's own append while records are kept, so a hot path
        pays no Python call per change; `record` itself (which counts the dropped) when not."""
        return self.record if self.needs_snapshot else self._pending.append

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def open(self, seq: int) -> bool:
        """Starts appending to journal `seq`."""
        self._close_fd()
        self.seq = seq
        self.journal_bytes = 0
        self._index = 0
        if self.blocked is not None:
            self.error = self.blocked
            self.needs_snapshot = True
            return False
        try:
            self._make_state_dir()
            dir_info = os.stat(self.state_dir)
            self._fd = os.open(journal_path(self.state_dir, seq),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                               | os.O_NONBLOCK, 0o644)
            info = os.fstat(self._fd)
            if not stat.S_ISREG(info.st_mode):  # a FIFO or device planted there
                raise OSError(errno.EINVAL, "not a regular file", journal_path(self.state_dir, seq))
            if info.st_size:  # not new (it never is, normally): number on from it
                indexes = [index for index, _ in
                           scan_journal(read_state_file(journal_path(self.state_dir, seq))).records]
                self._index = max(indexes, default=-1) + 1
            # The journal's name reaches the disk before any record in it is acknowledged.
            fsync_dir(self.state_dir)
            self.dir_fsyncs += 1
            self._identity = ((dir_info.st_dev, dir_info.st_ino), (info.st_dev, info.st_ino))
            self._journal_path = journal_path(self.state_dir, seq)
            self._chain = restore_chain(self.state_dir, seq)
        except OSError as exc:
            self.fail("cannot open the journal", exc)
            return False
        if not self.check_identity():  # the dir was swapped while the journal was being opened
            return False
        return True

    def _make_state_dir(self) -> None:
        """Creates the state dir (0755) if it is absent, and fsyncs its parent so its name survives
        a power cut with the files about to be made in it; OSError if the dir is not safe to
        write into (another user's, writable by others)."""
        if not os.path.isdir(self.state_dir):
            make_dirs(self.state_dir)
            fsync_dir(os.path.dirname(os.path.abspath(self.state_dir)))
            self.dir_fsyncs += 1
        # A state dir re-established while running (moved, removed, made again by someone) gets
        # the start's rules again before anything is written into it (local_dirs.unsafe_dir).
        problem = unsafe_dir(self.state_dir, "state dir", "--state-dir")
        if problem is not None:
            raise OSError(errno.EPERM, problem)

    def check_identity(self) -> bool:
        """True if the open journal is still the file the configured state dir names now: the
        dir's (st_dev, st_ino) and the journal path's are those seen at open. A state dir moved
        aside (and perhaps replaced), removed, or a journal renamed or removed fails this: records
        appended then would go where no restart looks. So does a file a restart reads before the
        journal (restore_chain: its base snapshot, earlier journals) removed or replaced: what it
        held would be gone. A failure marks the state dir failing
        (error, needs_snapshot, no fd), so `refusing` holds back acknowledgements under `always`
        and the recovery snapshot re-establishes the journal in the configured dir. Two stat
        calls (about 10 µs on the 2-core test VM); the flush runs it once per pass that wrote
        records, not per record."""
        if self._fd is None or self._identity is None:
            return True
        path = self._journal_path
        try:
            # (A path that still names the open file's inode means it is linked: no fstat.)
            dir_info = os.stat(self.state_dir)
            file_info = os.lstat(path)
            same = ((dir_info.st_dev, dir_info.st_ino), (file_info.st_dev, file_info.st_ino)) \
                == self._identity
            why = "the state dir was moved or replaced, or the journal renamed"
            for earlier, identity in self._chain[1] if same else ():
                try:
                    earlier_info = os.lstat(earlier)
                    same = (earlier_info.st_dev, earlier_info.st_ino) == identity
                except FileNotFoundError:
                    same = False
                if not same:
                    # The snapshot child retires older files once its snapshot, a newer base
                    # of this journal, is in place; the parent may not have reaped it yet.
                    fresh = restore_chain(self.state_dir, self.seq)
                    same = fresh[0] > self._chain[0]
                    if same:
                        self._chain = fresh
                    else:
                        why = "%s, which a restart reads before it, was removed or replaced" \
                            % earlier
                    break
        except FileNotFoundError:
            same = False
            why = "the state dir was moved, replaced or removed, or the journal renamed or removed"
        except OSError as exc:
            same = False
            why = "cannot check the state dir: %s" % (exc.strerror or exc)
        if same:
            return True
        self.identity_lost += 1
        log.critical("the journal %s is no longer the file the state dir %s names (%s): "
                     "nothing written to it since counts; writing a full snapshot and a new "
                     "journal into %s%s", path, self.state_dir, why, self.state_dir,
                     "; changes are refused until then" if self.fsync == FSYNC_ALWAYS else "")
        self.fail("the journal is not the file the state dir names",
                  FileNotFoundError(errno.ENOENT, why))
        return False

    @property
    def refusing(self) -> Optional[str]:
        """With `--fsync always`, why a change cannot be acknowledged now (the state dir is
        failing and no recovery snapshot has landed yet); None when it can."""
        if self.fsync != FSYNC_ALWAYS:
            return None
        if self.error is not None or self.needs_snapshot or self._fd is None:
            return "not stored: the state dir is failing: %s" % (
                self.error or "no journal open")
        return None

    def flush(self, monotonic_now: float) -> None:
        """Writes the queued records; fsyncs as the policy says; then checks that the journal
        written is still the state dir's (check_identity): before this pass's replies leave, so
        under `always` a change that went elsewhere is never acknowledged. Once per loop pass
        (under `everysec` and `no`, and idle, once per IDENTITY_CHECK_S), and before a snapshot.
        Never raises: whatever fails is a failing state dir (`fail`)."""
        try:
            self._flush(monotonic_now)
        except Exception as exc:  # a bug: what this pass queued is not known to be on disk
            log.exception("the journal flush failed")
            self.fail("cannot write the journal", exc)

    def _flush(self, monotonic_now: float) -> None:
        wrote = False
        if self._pending and self._fd is not None and not self.needs_snapshot:
            try:
                # (Framing a large pass allocates: under a memory cap that fails as a write does.)
                data = encode_records(self._pending, self._index)
                written = 0
                view = memoryview(data)
                while written < len(data):
                    written += os.write(self._fd, view[written:])
            except (OSError, MemoryError) as exc:
                self.fail("cannot write the journal", exc)
                return
            self._index += len(self._pending)
            self.records_written += len(self._pending)
            self.journal_bytes += len(data)
            self._pending = []
            self._unsynced = True
            wrote = True
        elif self._pending and (self._fd is None or self.needs_snapshot):
            self.records_dropped += len(self._pending)
            self._pending = []
        if self._unsynced and self._fd is not None and (
                self.fsync == FSYNC_ALWAYS or
                (self.fsync == FSYNC_EVERYSEC and monotonic_now - self._last_fsync >= 1.0)):
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.fail("cannot fsync the journal", exc)
                return
            self.fsyncs += 1
            self._last_fsync = monotonic_now
            self._unsynced = False
        # `always` acknowledges only what is on disk: checked in every pass that wrote. The other
        # policies acknowledge ahead of the disk anyway (everysec: up to a second), and an idle
        # DSM must notice too (its earlier changes are where no restart looks): once a second.
        if (wrote and self.fsync == FSYNC_ALWAYS) or \
                monotonic_now - self._identity_checked >= IDENTITY_CHECK_S:
            self._identity_checked = monotonic_now
            self.check_identity()

    def fail(self, what: str, exc: BaseException) -> None:
        """The state dir failed (`what`, because of `exc`): the queued records are dropped and
        counted, the journal closed, and a recovery snapshot is due (which holds them); with
        `--fsync always`, changes are refused until it lands (`refusing`)."""
        reason = getattr(exc, "strerror", None) or str(exc) or (
            "out of memory" if isinstance(exc, MemoryError) else type(exc).__name__)
        self.error = "%s in %s: %s" % (what, self.state_dir, reason)
        self.records_dropped += len(self._pending)
        self._pending = []
        self.needs_snapshot = True
        self._close_fd()
        now = time.monotonic()
        if now - self._last_failure_log >= 60.0:
            self._last_failure_log = now
            log.error("%s; serving from memory and retrying", self.error)

    def _close_fd(self) -> None:
        self._identity = None
        self._chain = (-1, [])
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    # --- snapshots ----------------------------------------------------------------------------
    def start_snapshot(self) -> bool:
        """Forks a child that writes snapshot N+1 while the parent goes on with journal N+1."""
        if self._child is not None or self.blocked is not None:
            return False
        self.flush(time.monotonic())
        new_seq = self._free_seq(self.seq + 1)
        try:
            self._make_state_dir()
        except OSError as exc:
            self.fail("cannot create the state dir", exc)
            return False
        if self.checked_from > 0:  # the child may rename never-read files: tell them apart
            self._damaged_before = self._damaged_names()
        pid = os.fork()
        if pid == 0:  # the child: write and leave, touching nothing of the parent's loop
            code = 1
            try:
                become_child(self.child_setup)
                write_snapshot(self.state_dir, new_seq, self.snapshot_source())
                code = 0
                retire_old_files(self.state_dir, new_seq, self.checked_from, self.clock(),
                                 self.quarantine_pending)
            finally:
                os._exit(code)
        self._child = pid
        self._child_seq = new_seq
        self._child_recovers = self.needs_snapshot
        self.needs_snapshot = False
        if self.open(new_seq) and self._child_recovers:
            # Records were dropped before this snapshot: should it ever be lost, a load that falls
            # back past it learns here that the journals before it are incomplete.
            self.record([GAP_RECORD, self.clock()])
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
            self._note_quarantined(self._quarantined_by_child())
            return True
        self.last_snapshot_error = "snapshot child failed (status %d)" % status
        log.error("snapshot %d failed; the journals before it are kept", self._child_seq)
        if self._child_recovers or self._fd is None:
            # Records were dropped before this snapshot: only a complete one closes that gap.
            self.needs_snapshot = True
        return False

    def _damaged_names(self) -> Set[str]:
        try:
            return {name for name in os.listdir(self.state_dir) if ".damaged-" in name}
        except OSError:
            return set()

    def _quarantined_by_child(self) -> List[str]:
        """The never-read files the child renamed aside (it cannot log): the new damaged names."""
        if self.checked_from <= 0:
            return []
        new = self._damaged_names() - self._damaged_before
        return sorted(os.path.join(self.state_dir, name.partition(".damaged-")[0])
                      for name in new)

    @property
    def snapshot_running(self) -> bool:
        return self._child is not None

    def snapshot_now(self) -> bool:
        """Writes a snapshot in this process (a clean stop); True on success."""
        self.wait_for_child()
        self.flush(time.monotonic())
        if self.blocked is not None:
            self.last_snapshot_error = self.blocked
            log.error("no snapshot written: %s", self.blocked)
            return False
        new_seq = self._free_seq(self.seq + 1)
        try:
            self._make_state_dir()
            write_snapshot(self.state_dir, new_seq, self.snapshot_source())
        except OSError as exc:
            self.last_snapshot_error = str(exc)
            log.error("cannot write the snapshot in %s: %s", self.state_dir, exc)
            return False
        self._close_fd()
        self.seq = new_seq
        self._snapshot_done(new_seq)
        self._note_quarantined(retire_old_files(self.state_dir, new_seq, self.checked_from,
                                                self.clock()))
        return True

    def _free_seq(self, seq: int) -> int:
        """`seq`, or the first number above it that names no snapshot or journal file: a new
        snapshot never replaces a file (one this process never read, say)."""
        while os.path.exists(snapshot_path(self.state_dir, seq)) or (
                seq != self.seq and os.path.exists(journal_path(self.state_dir, seq))):
            seq += 1
        return seq

    def _note_quarantined(self, paths: List[str]) -> None:
        for path in paths:
            self.recovery["files_quarantined"] += 1
            log.warning("an old file never loaded failed its check at cleanup: %s renamed aside "
                        "(*.damaged-<time>), not removed", path)

    def wait_for_child(self) -> None:
        if self._child is not None:
            try:
                os.waitpid(self._child, 0)
            except ChildProcessError:
                pass
            self._child = None

    def _snapshot_done(self, seq: int) -> None:
        """Snapshot `seq` is on disk and read back: damaged files found at start are renamed
        aside, and files older than the previous snapshot are removed. The previous snapshot and
        the journals from it stay, so a later-damaged newest snapshot still has a fallback."""
        self.last_snapshot = self.clock()
        self.last_snapshot_error = None
        if self._fd is not None or seq == self.seq:
            self.error = None
        for path in self.quarantine_pending:
            target = quarantine(path, self.clock()) if os.path.exists(path) else None
            if target is not None:
                self.recovery["files_quarantined"] += 1
                self._damaged_before.add(os.path.basename(target))  # counted here, not again
        self.quarantine_pending = []
        if self._fd is not None:  # the new snapshot is the open journal's base from now on
            self._chain = restore_chain(self.state_dir, self.seq)

    def check_vanished(self) -> bool:
        """True (and marked failed) if the journal is no longer the state dir's (check_identity):
        the timer's check for a DSM that writes nothing, so an idle one notices too."""
        return not self.check_identity()

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
            "dir_fsyncs": self.dir_fsyncs,
            "identity_lost": self.identity_lost,
            "last_snapshot": self.last_snapshot or 0.0,
            "last_snapshot_error": self.last_snapshot_error or "",
            **self.recovery,
        }


def become_child(setup: Optional[Callable[[], None]]) -> None:
    """First steps of a forked writer child (snapshot, SAVE): default signals, die with the parent
    (a kill -9 of the DSM must not leave a child holding files or sockets), then `setup`."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    _die_with_parent()
    if setup is not None:
        setup()


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL) where Linux offers it; elsewhere nothing."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError, ImportError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def close_inherited_fds(keep: Iterable[int] = (0, 1, 2)) -> None:
    """Closes every file descriptor of this (forked) process except `keep`: listening sockets,
    client connections, the journal, the instance lock. Plain close(2) only: the epoll set is
    shared with the parent and must not be changed."""
    keep = set(keep)
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 4096))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
