"""Unit tests of the durability files (persistence.py) and of what is kept across a restart
(store_state.py): pure, in memory or in a tmp dir, with injected times.
"""
from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from typing import Any, List

import pytest

from DriveStateMonitor.drive_publisher import DrivePublisher
from DriveStateMonitor.drive_view import DriveView
from DriveStateMonitor.drive_store import DriveStore
from DriveStateMonitor.persistence import (FSYNC_ALWAYS, GROUP_RECORDS, MAGIC, Journal, Loaded,
                                           decode_records, embedded_announcement, encode_records,
                                           decode_snapshot, encode_snapshot, snapshot_file_intact,
                                           encode_record, journal_path, load_state, scan_journal,
                                           snapshot_path, write_snapshot)
from DriveStateMonitor.statserv_tree import EXPIRED, UNDEFINED
from DriveStateMonitor.store_state import JournaledTree, StoreState

RECORDS: List[Any] = [
    ["s", "ZA1", '{"time_stamp": "t1", "status": "001"}'],
    ["tt", "/lab/x", 100.0, "a comment", 30.0, False, "float"],
    ["tp", "/lab/x", "41.5", 101.0, None],
    ["td", "/lab/dir", 102.0, None],
    ["a", "ZA1", '{"serial_number": "ZA1", "model": "\u00e9t\u00e9"}', 103.0, "10.0.0.1", "lo"],
]


def journal_bytes(records: List[Any]) -> bytes:
    return b"".join(encode_record(r, index) for index, r in enumerate(records))


# --- records ------------------------------------------------------------------------------------
def test_encoded_records_decode_to_the_same_records_and_use_every_byte():
    data = journal_bytes(RECORDS)
    records, used = decode_records(data)
    assert records == RECORDS
    assert used == len(data)


def test_record_is_magic_length_index_crc_and_compact_json():
    encoded = encode_record(["w", 5.0], 7)
    assert encoded[:4] == MAGIC
    length, index, crc = struct.unpack_from("<III", encoded, 4)
    payload = encoded[16:]
    assert payload == b'["w",5.0]'
    assert length == len(payload) and index == 7
    assert crc == zlib.crc32(payload, zlib.crc32(encoded[4:12]))


def test_empty_data_decodes_to_no_records():
    assert decode_records(b"") == ([], 0)


def test_torn_last_record_cut_at_every_byte_yields_the_earlier_records():
    good = journal_bytes(RECORDS[:-1])
    last = encode_record(RECORDS[-1], len(RECORDS) - 1)
    for cut in range(len(last)):  # 0 .. len-1 bytes of the last record written
        scan = scan_journal(good + last[:cut])
        records, used = decode_records(good + last[:cut])
        assert records == RECORDS[:-1], "cut at %d" % cut
        assert used == len(good), "cut at %d" % cut
        assert not scan.damaged and scan.torn == (cut > 0), "cut at %d" % cut


@pytest.mark.parametrize("position", ["magic", "length", "index", "crc", "payload"])
def test_corrupt_record_is_skipped_and_replay_resynchronises_on_the_next_header(position):
    parts = [encode_record(r, i) for i, r in enumerate(RECORDS)]
    victim = bytearray(parts[2])
    offset = {"magic": 1, "length": 4, "index": 8, "crc": 13, "payload": 20}[position]
    victim[offset] ^= 0x5A
    data = b"".join(parts[:2]) + bytes(victim) + b"".join(parts[3:])
    scan = scan_journal(data)
    records, used = decode_records(data)
    assert used == len(data) and scan.damaged and not scan.torn
    if position == "length":  # the CRC shows only the length was hit: repaired, nothing lost
        assert records == RECORDS and scan.lengths_repaired == 1 and scan.bad_regions == 0
    else:
        assert records == RECORDS[:2] + RECORDS[3:] and scan.bad_regions == 1


def test_huge_length_field_mid_file_skips_one_record_not_the_rest():
    parts = [encode_record(r, i) for i, r in enumerate(RECORDS)]
    victim = bytearray(parts[1])
    victim[4:8] = b"\xff\xff\xff\xff"
    records, _ = decode_records(parts[0] + bytes(victim) + b"".join(parts[2:]))
    assert records == RECORDS[:1] + RECORDS[2:]


def test_duplicated_and_reordered_records_replay_once_in_written_order():
    parts = [encode_record(r, i) for i, r in enumerate(RECORDS)]
    data = parts[0] + parts[2] + parts[1] + parts[1] + b"".join(parts[3:])
    scan = scan_journal(data)
    assert scan.damaged
    records, _ = decode_records(data)
    assert records == RECORDS


def test_record_with_a_valid_crc_but_no_json_is_skipped():
    payload = b"\xff\xfenot json"
    fields = struct.pack("<II", len(payload), 1)
    bad = MAGIC + fields + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fields))) + payload
    records, _ = decode_records(encode_record(RECORDS[0], 0) + bad + encode_record(RECORDS[1], 2))
    assert records == RECORDS[:2]


def test_journal_of_the_older_format_still_loads():
    old = b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p
                   for p in (json.dumps(r, separators=(",", ":")).encode() for r in RECORDS))
    records, used = decode_records(old)
    assert records == RECORDS and used == len(old)


def group_journal(records: List[Any], first: int = 0) -> bytes:
    """`records` as one pass's flush writes them (group frames)."""
    return encode_records([encode_record(r)[16:] for r in records], first)


def test_a_pass_of_records_is_framed_in_groups_that_decode_to_the_same_records():
    many = [["tp", "/lab/x", str(n), 101.0, None, n] for n in range(2 * GROUP_RECORDS + 1)]
    data = group_journal(many)
    assert data.count(MAGIC) == 3  # two full groups and one record alone
    scan = scan_journal(data)
    assert [index for index, _ in scan.records] == list(range(len(many)))
    assert decode_records(data) == (many, len(data)) and not scan.damaged


def test_an_announcement_record_is_never_grouped_and_keeps_its_datagram_byte_for_byte():
    # The datagram's own bytes (odd spacing, a repeated key) come back as they were sent.
    datagram = b'{"serial_number": "ZA1",  "model":"x", "model":"y"}'
    payloads = [encode_record(RECORDS[0])[16:],
                embedded_announcement("ZA1", datagram, 103.0, "10.0.0.1", "lo"),
                encode_record(RECORDS[1])[16:]]
    data = encode_records(payloads, 0)
    assert data.count(MAGIC) == 3  # the pass fell back to a frame each
    records, _ = decode_records(data)
    assert records[1] == ["a", "ZA1", datagram.decode(), 103.0, "10.0.0.1", "lo"]
    assert records[0] == RECORDS[0] and records[2] == RECORDS[1]


@pytest.mark.parametrize("position", ["magic", "length", "index", "crc", "payload"])
def test_a_damaged_group_costs_its_own_records_only(position):
    many = [["tp", "/lab/x", str(n), 101.0, None, n] for n in range(3 * GROUP_RECORDS)]
    groups = [group_journal(many[n:n + GROUP_RECORDS], n)
              for n in range(0, len(many), GROUP_RECORDS)]
    victim = bytearray(groups[1])
    offset = {"magic": 1, "length": 4, "index": 8, "crc": 13, "payload": 40}[position]
    victim[offset] ^= 0x5A
    data = groups[0] + bytes(victim) + groups[2]
    scan = scan_journal(data)
    kept = many if position == "length" else many[:GROUP_RECORDS] + many[2 * GROUP_RECORDS:]
    assert decode_records(data)[0] == kept  # a length field alone is repaired
    assert scan.damaged and not scan.torn


def test_a_torn_last_group_is_cut_off_and_the_groups_before_it_kept():
    many = [["tp", "/lab/x", str(n), 101.0, None, n] for n in range(2 * GROUP_RECORDS)]
    good = group_journal(many[:GROUP_RECORDS])
    last = group_journal(many[GROUP_RECORDS:], GROUP_RECORDS)
    for cut in range(1, len(last), 7):
        scan = scan_journal(good + last[:cut])
        assert decode_records(good + last[:cut]) == (many[:GROUP_RECORDS], len(good))
        assert scan.torn and not scan.damaged, "cut at %d" % cut


def test_a_group_element_that_is_not_a_record_is_lost_alone_and_reported():
    # A writer never puts these in a group (a CRC-valid frame holding them was made by hand):
    # the element is lost as a frame of its own would be, the rest of the group kept.
    payload = json.dumps([RECORDS[0], [], ["A", ["ZA1", 1.0, "s", "lo"], {}], 7, RECORDS[1]],
                         separators=(",", ":")).encode()
    scan = scan_journal(encode_record(payload, 0, 5))
    assert scan.records == [(0, RECORDS[0]), (4, RECORDS[1])]
    assert scan.damaged and scan.invalid_records == 3 and scan.expected_end == 5
    # A group frame whose header says another count than its list holds is not one.
    for count in (1, 4, 6):
        assert scan_journal(encode_record(payload, 0, count)).records == []


def last_group_journal(count: int = GROUP_RECORDS) -> Any:
    """A journal of two passes (`count` records the last), its records, and where the last
    group frame starts."""
    many = [["tt", "/lab/o%d" % n, 100.0, None, None, False, None, None, n + 1]
            for n in range(GROUP_RECORDS + count)]
    first = group_journal(many[:GROUP_RECORDS])
    return first + group_journal(many[GROUP_RECORDS:], GROUP_RECORDS), many, len(first)


def test_damage_to_the_last_group_counts_every_record_its_header_says_it_held(tmp_path):
    # After a kill the last frame is usually a group: a flipped payload byte there costs its
    # records, and the count (in the frame's header) is what is reported, not "1".
    for count in (2, 17, GROUP_RECORDS):
        data, many, last = last_group_journal(count)
        victim = bytearray(data)
        victim[last + 30] ^= 0x5A
        state_dir = str(tmp_path / str(count))
        os.makedirs(state_dir)
        write_journal(state_dir, 1, bytes(victim))
        loaded = load_state(state_dir)
        assert loaded.records == many[:GROUP_RECORDS]
        assert loaded.records_skipped == count and loaded.damaged


def test_a_flipped_length_field_is_repaired_not_taken_for_a_torn_tail(tmp_path):
    # A bit of the last frame's length flipped made it run past the end of the file, which read
    # as a crash's torn tail and was cut off (a group of acknowledged records, silently). The
    # CRC over the fields with the frame's real extent shows only the length was hit.
    data, many, last = last_group_journal()
    for bit in (0, 9, 20, 26):
        victim = bytearray(data)
        struct.pack_into("<I", victim, last + 4,
                         struct.unpack_from("<I", victim, last + 4)[0] ^ (1 << bit))
        scan = scan_journal(bytes(victim))
        assert [record for _, record in scan.records] == many, bit
        assert scan.damaged and not scan.torn and scan.lengths_repaired == 1
    state_dir = str(tmp_path)
    write_journal(state_dir, 1, bytes(victim))
    loaded = load_state(state_dir)
    assert loaded.records == many and loaded.records_skipped == 0 and loaded.damaged
    assert os.path.getsize(journal_path(state_dir, 1)) == len(data)  # nothing cut off


def test_json_nested_past_the_stack_in_a_frame_with_a_valid_crc_is_damage_not_a_crash(tmp_path):
    deep = b'["tp",' + b"[" * 100000 + b"]" * 100000 + b"]"
    data = encode_record(RECORDS[0], 0) + encode_record(deep, 1) + encode_record(RECORDS[1], 2)
    scan = scan_journal(data)
    assert [record for _, record in scan.records] == [RECORDS[0], RECORDS[1]] and scan.damaged
    write_journal(str(tmp_path), 1, data)
    loaded = load_state(str(tmp_path))
    assert loaded.records == [RECORDS[0], RECORDS[1]] and loaded.records_skipped == 1


def test_non_records_at_the_end_of_a_group_are_counted_as_lost(tmp_path):
    payload = json.dumps([RECORDS[0], RECORDS[1], [], 7], separators=(",", ":")).encode()
    write_journal(str(tmp_path), 1, encode_record(payload, 0, 4))
    loaded = load_state(str(tmp_path))
    assert loaded.records == [RECORDS[0], RECORDS[1]] and loaded.records_skipped == 2


def test_a_load_replays_group_frames_and_counts_a_damaged_groups_records_as_lost(tmp_path):
    state_dir = str(tmp_path)
    many = [["tt", "/lab/o%d" % n, 100.0, None, None, False, None, None, n + 1]
            for n in range(3 * GROUP_RECORDS)]
    groups = [group_journal(many[n:n + GROUP_RECORDS], n)
              for n in range(0, len(many), GROUP_RECORDS)]
    victim = bytearray(groups[1])
    victim[-3] ^= 0x5A
    write_journal(state_dir, 1, groups[0] + bytes(victim) + groups[2])
    loaded = load_state(state_dir)
    assert loaded.records == many[:GROUP_RECORDS] + many[2 * GROUP_RECORDS:]
    assert loaded.records_skipped == GROUP_RECORDS


# --- load_state ---------------------------------------------------------------------------------
def write_journal(state_dir: str, seq: int, data: bytes) -> str:
    path = journal_path(state_dir, seq)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_empty_or_missing_state_dir_loads_nothing(tmp_path):
    for state_dir in (str(tmp_path), str(tmp_path / "absent")):
        loaded = load_state(state_dir)
        assert loaded.snapshot is None and loaded.records == [] and loaded.torn == []
        assert loaded.next_seq == 1


def test_load_picks_newest_snapshot_and_only_the_journals_from_it_on(tmp_path):
    state_dir = str(tmp_path)
    write_snapshot(state_dir, 1, {"format": 1, "which": "old"})
    write_snapshot(state_dir, 3, {"format": 1, "which": "new"})
    write_journal(state_dir, 1, journal_bytes([["w", 1.0]]))
    write_journal(state_dir, 2, journal_bytes([["w", 2.0]]))
    write_journal(state_dir, 3, journal_bytes([["w", 3.0], ["w", 3.5]]))
    write_journal(state_dir, 4, journal_bytes([["w", 4.0]]))
    loaded = load_state(state_dir)
    assert loaded.snapshot == {"format": 1, "which": "new"}
    assert loaded.snapshot_seq == 3
    assert loaded.records == [["w", 3.0], ["w", 3.5], ["w", 4.0]]
    assert loaded.next_seq == 5


def test_without_a_snapshot_every_journal_is_replayed_oldest_first(tmp_path):
    state_dir = str(tmp_path)
    write_journal(state_dir, 2, journal_bytes([["w", 2.0]]))
    write_journal(state_dir, 10, journal_bytes([["w", 10.0]]))
    write_journal(state_dir, 1, journal_bytes([["w", 1.0]]))
    loaded = load_state(state_dir)
    assert loaded.records == [["w", 1.0], ["w", 2.0], ["w", 10.0]]
    assert loaded.next_seq == 11


@pytest.mark.parametrize("corruption", [b"{\"format\": 1, \"dri", b"", b"[1, 2]", b"\x00\xff"])
def test_corrupt_newest_snapshot_falls_back_to_the_older_one_and_its_journals(tmp_path,
                                                                              corruption):
    state_dir = str(tmp_path)
    write_snapshot(state_dir, 1, {"format": 1, "which": "old"})
    write_journal(state_dir, 1, journal_bytes([["w", 1.0]]))
    write_journal(state_dir, 2, journal_bytes([["w", 2.0]]))
    with open(snapshot_path(state_dir, 2), "wb") as f:
        f.write(corruption)
    loaded = load_state(state_dir)
    assert loaded.snapshot == {"format": 1, "which": "old"}
    assert loaded.snapshot_seq == 1
    assert loaded.records == [["w", 1.0], ["w", 2.0]]
    assert loaded.next_seq == 3


def test_torn_tail_is_reported_cut_off_and_later_appends_stay_readable(tmp_path):
    state_dir = str(tmp_path)
    good = journal_bytes(RECORDS[:3])
    path = write_journal(state_dir, 1, good + encode_record(RECORDS[3], 3)[:7])
    loaded = load_state(state_dir)
    assert loaded.records == RECORDS[:3]
    assert loaded.torn == [path]
    assert os.path.getsize(path) == len(good)
    with open(path, "ab") as f:  # what the next run appends after the cut
        f.write(encode_record(["w", 9.0], 3))
    assert load_state(state_dir).records == RECORDS[:3] + [["w", 9.0]]


def test_load_without_repair_leaves_the_torn_file_alone(tmp_path):
    state_dir = str(tmp_path)
    data = journal_bytes(RECORDS[:2]) + encode_record(RECORDS[2], 2)[:-3]
    path = write_journal(state_dir, 1, data)
    loaded = load_state(state_dir, repair=False)
    assert loaded.records == RECORDS[:2] and loaded.torn == [path]
    with open(path, "rb") as f:
        assert f.read() == data


def test_garbage_after_the_last_record_is_damage_not_a_torn_record_and_is_not_cut(tmp_path):
    state_dir = str(tmp_path)
    data = journal_bytes(RECORDS[:2]) + b"garbage that is no record header"
    path = write_journal(state_dir, 1, data)
    loaded = load_state(state_dir)
    assert loaded.records == RECORDS[:2] and loaded.torn == [] and loaded.damaged == [path]
    assert loaded.records_skipped == 1 and loaded.lost_anything
    with open(path, "rb") as f:
        assert f.read() == data


def test_write_snapshot_leaves_no_temporary_file(tmp_path):
    write_snapshot(str(tmp_path), 7, {"format": 1})
    assert os.listdir(str(tmp_path)) == ["snapshot-7.json"]
    with open(snapshot_path(str(tmp_path), 7), "rb") as f:
        state, check = decode_snapshot(f.read())
    assert state == {"format": 1} and check.intact


def test_snapshot_lines_each_carry_a_crc_and_a_damaged_line_costs_only_its_item(tmp_path):
    state = {"format": 1, "drives": [["A", 1], ["B", 2], ["C", 3]], "statuses": {"A": ["x"]}}
    data = b"".join(encode_snapshot(state))
    lines = data.split(b"\n")
    for line in lines[:-1]:
        crc, _, body = line.partition(b" ")
        assert int(crc, 16) == zlib.crc32(body)
    victim = next(i for i, line in enumerate(lines) if b'["B",2]' in line)
    lines[victim] = lines[victim].replace(b'["B",2]', b'["B",7]')
    loaded, check = decode_snapshot(b"\n".join(lines))
    assert loaded == {"format": 1, "drives": [["A", 1], ["C", 3]], "statuses": {"A": ["x"]}}
    assert not check.intact and check.items_bad == 1 and check.missing == 1


def test_snapshot_that_does_not_read_back_intact_is_not_installed(tmp_path, monkeypatch):
    import DriveStateMonitor.persistence as persistence
    real = persistence.encode_snapshot

    def bytes_that_did_not_land_as_written(state):
        for line in real(state):
            yield line.replace(b'"l",1]', b'"l",7]')  # as if the disk returned other bytes
    monkeypatch.setattr(persistence, "encode_snapshot", bytes_that_did_not_land_as_written)
    with pytest.raises(OSError):
        write_snapshot(str(tmp_path), 3, {"format": 1, "l": [1]})
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("cut", ["nothing", "end line", "last item", "a line in the middle"])
def test_read_back_check_needs_every_line_in_order_and_the_end_line(tmp_path, cut):
    path = str(tmp_path / "s")
    lines = list(encode_snapshot({"format": 1, "l": [1, 2, 3]}))
    if cut == "end line":
        del lines[-1]
    elif cut == "last item":
        del lines[-2]
    elif cut == "a line in the middle":
        del lines[2]
    with open(path, "wb") as f:
        f.writelines(lines)
    assert snapshot_file_intact(path) == (cut == "nothing")


def test_a_journal_after_dropped_records_counts_as_a_loss_only_when_replayed(tmp_path):
    state_dir = str(tmp_path)
    write_snapshot(state_dir, 1, {"format": 1})
    write_journal(state_dir, 1, journal_bytes([["w", 1.0]]))  # then the state dir failed
    write_snapshot(state_dir, 2, {"format": 1, "recovered": True})
    write_journal(state_dir, 2, journal_bytes([["g", 2.0], ["w", 2.5]]))
    assert load_state(state_dir).journal_gaps == 0  # snapshot 2 holds what was dropped
    with open(snapshot_path(state_dir, 2), "r+b") as f:
        f.write(b"X")  # damaged: the fallback to snapshot 1 replays across the gap
    loaded = load_state(state_dir)
    assert loaded.snapshot_seq == 1 and loaded.journal_gaps == 1 and loaded.lost_anything


def test_failed_snapshot_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        write_snapshot(str(tmp_path), 3, {"format": 1})
    monkeypatch.undo()
    assert os.listdir(str(tmp_path)) == []


# --- Journal ------------------------------------------------------------------------------------
def test_journal_writes_queued_records_at_flush_and_fsyncs_with_always(tmp_path):
    journal = Journal(str(tmp_path / "state"), FSYNC_ALWAYS, lambda: {"format": 1})
    assert journal.open(1)
    journal.record(["w", 1.0])
    journal.record(["w", 2.0])
    assert load_state(journal.state_dir).records == []  # queued, not written yet
    journal.flush(0.0)
    assert load_state(journal.state_dir).records == [["w", 1.0], ["w", 2.0]]
    status = journal.status()
    assert (status["state"], status["records_written"], status["fsyncs"]) == ("ok", 2, 1)
    journal.close()


def test_journal_snapshot_now_removes_older_files_and_restarts_from_the_snapshot(tmp_path):
    state_dir = str(tmp_path)
    journal = Journal(state_dir, FSYNC_ALWAYS, lambda: {"format": 1, "n": 42}, clock=lambda: 77.0)
    journal.open(1)
    journal.record(["w", 1.0])
    assert journal.snapshot_now()
    assert sorted(os.listdir(state_dir)) == ["snapshot-2.json"]
    loaded = load_state(state_dir)
    assert loaded.snapshot == {"format": 1, "n": 42} and loaded.records == []
    assert journal.status()["last_snapshot"] == 77.0


def test_journal_on_a_vanished_file_reports_failing_and_drops_records_until_a_snapshot(tmp_path):
    state_dir = str(tmp_path / "state")
    journal = Journal(state_dir, FSYNC_ALWAYS, lambda: {"format": 1})
    journal.open(1)
    os.unlink(journal_path(state_dir, 1))
    assert journal.check_vanished()
    assert journal.status()["state"] == "failing"
    journal.record(["w", 1.0])
    journal.flush(0.0)
    assert journal.records_written == 0
    assert journal.snapshot_now()
    assert journal.status()["state"] == "ok"


def test_journal_refuses_an_unknown_fsync_policy(tmp_path):
    with pytest.raises(ValueError):
        Journal(str(tmp_path), "sometimes", dict)


# --- store_state: snapshot and restore ----------------------------------------------------------
def make_state(drive_lifetime: float = 60.0) -> StoreState:
    store = DriveStore(history=20, drive_lifetime=drive_lifetime)
    tree = JournaledTree()
    DriveView(store, tree, 0.0)  # /drives: derived from the store, never in the snapshot
    return StoreState(store, tree, DrivePublisher(tree, drive_lifetime))


def announce(state: StoreState, serial: str, now: float, **extra: Any) -> None:
    fields = {"serial_number": serial, "model": "ST4000NK0001", "firmware_version": "3.1.7"}
    fields.update(extra)
    raw = json.dumps(fields).encode()
    assert state.store.record_announcement(serial, fields, raw, now, "10.1.2.3", "eth0")
    state.announced(serial, raw, now, "10.1.2.3", "eth0")


def status_entry(stamp: str, status: str) -> bytes:
    return json.dumps({"time_stamp": stamp, "status": status}).encode()


def populate(state: StoreState, now: float) -> None:
    announce(state, "ZA1", now - 5.0)
    announce(state, "ZB2", now - 1.0, model="ST8000")
    for index in range(3):
        entry = status_entry("t%d" % index, "%03d" % index)
        state.store.record_status("ZA1", entry)
        state.status("ZA1", entry)
    tree = state.tree
    tree.touch_dir("/lab/bench3", now, comment="bench three")
    tree.touch("/lab/bench3/temperature", now, comment="probe", lifetime=30.0, type_name="float")
    tree.put("/lab/bench3/temperature", "41.5", now)
    tree.touch("/lab/count", now, type_name="int")
    tree.put("/lab/count", "7", now)
    tree.touch("/lab/flag", now, type_name="bool")
    tree.put("/lab/flag", "TRUE", now)
    tree.touch("/lab/name", now, comment="just a string")
    tree.put("/lab/name", "hello world", now)
    tree.touch("/lab/undefined", now)


def restored(loaded: Loaded, now: float, drive_lifetime: float = 60.0) -> StoreState:
    fresh = make_state(drive_lifetime)
    fresh.restore(loaded, now)
    return fresh


def snapshot_of(state: StoreState, now: float) -> Loaded:
    loaded = Loaded()
    # Through JSON, as the file is: only JSON-able data survives.
    loaded.snapshot = json.loads(json.dumps(state.snapshot(now)))
    return loaded


def test_snapshot_restore_round_trip_keeps_drives_statuses_and_tree_entries():
    now = 1_700_000_000.0
    state = make_state()
    populate(state, now)
    fresh = restored(snapshot_of(state, now), now + 2.0)
    assert fresh.store.multicast_json() == state.store.multicast_json()
    assert fresh.store.status_json() == state.store.status_json()
    tree = fresh.tree
    for path, value in [("/lab/bench3/temperature", 41.5), ("/lab/count", 7),
                        ("/lab/flag", True), ("/lab/name", "hello world"),
                        ("/lab/undefined", UNDEFINED)]:
        assert tree.get(path, now + 2.0) == value, path
        before, after = state.tree.stat(path), tree.stat(path)
        for key in ("type", "comment", "lifetime"):
            assert after[key] == before[key], (path, key)
    assert tree.stat("/lab/bench3")["comment"] == "bench three"
    assert tree.get("/drives/ZB2/model", now + 2.0) == "ST8000"
    assert tree.get("/drives/ZA1/status", now + 2.0) == "002"


def test_restored_lifetime_keeps_its_original_deadline():
    now = 1_700_000_000.0
    state = make_state()
    populate(state, now)  # temperature: LIFETIME=30 from `now`
    loaded = snapshot_of(state, now + 1.0)
    assert restored(loaded, now + 29.0).tree.get("/lab/bench3/temperature", now + 29.0) == 41.5
    assert restored(loaded, now + 31.0).tree.get("/lab/bench3/temperature",
                                                 now + 31.0) is EXPIRED
    still = restored(loaded, now + 29.0).tree
    still.expire_due(now + 30.5)
    assert still.get("/lab/bench3/temperature", now + 30.5) is EXPIRED


def test_drives_silent_longer_than_their_lifetime_come_back_expired():
    now = 1_700_000_000.0
    state = make_state(drive_lifetime=10.0)
    announce(state, "OLD", now - 20.0)
    announce(state, "NEW", now - 1.0)
    fresh = restored(snapshot_of(state, now), now, drive_lifetime=10.0)
    drives = json.loads(fresh.store.multicast_json())
    assert drives["OLD"]["state"] == "expired"
    assert drives["NEW"]["state"] == "alive"
    assert fresh.tree.get("/drives/OLD/state", now) == "expired"
    assert fresh.tree.get("/drives/OLD/model", now) == "ST4000NK0001"  # keeps its last value
    assert fresh.tree.get("/drives/NEW/state", now) == "alive"


def through_the_journal(records: List[Any]) -> List[Any]:
    """What replay reads back: each record framed as the journal writes it, then decoded."""
    data = b"".join(encode_record(record, i) for i, record in enumerate(records))
    decoded, _ = decode_records(data)
    assert len(decoded) == len(records)
    return decoded


def test_journal_records_replay_to_the_same_store_as_the_live_one():
    now = 1_700_000_000.0
    records: List[Any] = []
    state = make_state()
    state.attach(records.append)
    populate(state, now)
    state.tree.remove("/lab/undefined", now + 1)
    state.tree.touch_dir("/gone", now + 1)
    state.tree.remove_dir("/gone", now + 1)
    loaded = Loaded()
    loaded.records = through_the_journal(records)
    fresh = restored(loaded, now + 2.0)
    assert fresh.store.multicast_json() == state.store.multicast_json()
    assert fresh.store.status_json() == state.store.status_json()
    assert fresh.tree.export_entries(skip=("/drives", "/dsm")) == \
        state.tree.export_entries(skip=("/drives", "/dsm"))


def test_wipe_record_replays_as_a_wipe():
    now = 1_700_000_000.0
    records: List[Any] = []
    state = make_state()
    state.attach(records.append)
    populate(state, now)
    state.store.wipe(now)
    state.wiped(now)
    entry = status_entry("after", "100")
    state.store.record_status("ZC3", entry)
    state.status("ZC3", entry)
    loaded = Loaded()
    loaded.records = through_the_journal(records)
    fresh = restored(loaded, now + 1)
    assert json.loads(fresh.store.multicast_json()) == {}
    assert json.loads(fresh.store.status_json()) == {"ZC3": [{"time_stamp": "after",
                                                              "status": "100"}]}
    assert fresh.tree.get("/lab/name", now + 1) == "hello world"  # w leaves clients' objects


def test_autoexpire_object_whose_owner_never_left_comes_back_expired_from_the_journal():
    now = 1_700_000_000.0
    records: List[Any] = []
    state = make_state()
    state.attach(records.append)
    owner = object()
    state.tree.touch("/lab/mine", now, owner=owner, autoexpire=True)
    state.tree.put("/lab/mine", "5", now + 1)
    loaded = Loaded()
    loaded.records = records
    assert restored(loaded, now + 2).tree.get("/lab/mine", now + 2) is EXPIRED


def test_autoexpire_object_whose_owner_never_left_comes_back_expired_from_the_snapshot():
    now = 1_700_000_000.0
    state = make_state()
    state.tree.touch("/lab/mine", now, owner=object(), autoexpire=True)
    state.tree.put("/lab/mine", "5", now + 1)
    assert restored(snapshot_of(state, now + 1), now + 2).tree.get("/lab/mine",
                                                                   now + 2) is EXPIRED


def test_autoexpire_object_in_snapshot_put_again_after_it_comes_back_expired():
    now = 1_700_000_000.0
    records: List[Any] = []
    state = make_state()
    owner = object()
    state.tree.touch("/lab/mine", now, owner=owner, autoexpire=True)
    state.tree.put("/lab/mine", "5", now)
    loaded = snapshot_of(state, now)  # the periodic snapshot, owner still connected
    state.attach(records.append)
    state.tree.put("/lab/mine", "6", now + 1)  # journaled after the snapshot
    loaded.records = records
    assert restored(loaded, now + 2).tree.get("/lab/mine", now + 2) is EXPIRED


def test_released_autoexpire_owner_is_journaled_and_replays_as_expired():
    now = 1_700_000_000.0
    records: List[Any] = []
    state = make_state()
    state.attach(records.append)
    owner = object()
    state.tree.touch("/lab/mine", now, owner=owner, autoexpire=True)
    state.tree.put("/lab/mine", "5", now)
    state.tree.release_owner(owner, now + 1)
    assert ["tx", "/lab/mine", now + 1, state.tree.stat("/lab/mine")["revision"]] in records
    state.tree.touch("/lab/mine", now + 2)
    state.tree.put("/lab/mine", "6", now + 2)  # a later plain PUT by someone else revives it
    loaded = Loaded()
    loaded.records = records
    assert restored(loaded, now + 3).tree.get("/lab/mine", now + 3) == "6"


def test_a_record_the_tree_refuses_is_skipped_and_counted_not_fatal():
    loaded = Loaded()
    loaded.records = [["tp", "/never/touched", "1", 1.0, None], ["td", "/ok", 1.0, None],
                      ["zz", "unknown kind"]]
    fresh = make_state()
    counts = fresh.restore(loaded, 2.0)
    assert counts["bad_records"] == 2 and counts["records"] == 1
    assert fresh.tree.kind("/ok") == "directory"


def test_daemon_publishing_under_drives_and_dsm_is_not_journaled():
    records: List[Any] = []
    state = make_state()
    state.attach(records.append)
    state.publisher.facts({"pid": 1, "counters": {"x": 2}}, 1.0)
    state.store.record_status("ZA1", b'{"time_stamp": "t", "status": "001"}', 1.0)
    assert state.tree.get("/drives/ZA1/status", 1.0) == "001"
    assert records == []


def test_snapshot_items_that_fail_validation_are_skipped_and_the_rest_restored():
    now = 1_700_000_000.0
    state = make_state()
    populate(state, now)
    loaded = snapshot_of(state, now)
    snapshot = loaded.snapshot
    snapshot["drives"][0][1] = "x" + snapshot["drives"][0][1][1:]  # the case: not JSON
    snapshot["statuses"]["ZA1"][1] = snapshot["statuses"]["ZA1"][1][:-1]  # no closing brace
    snapshot["tree"].append({"path": "/lab/bad", "type": "no such type", "value": "1"})
    snapshot["tree"].append({"path": "/lab/worse", "value": {"a": 1}})
    fresh = make_state()
    counts = fresh.restore(loaded, now + 1.0)
    assert counts["items_skipped"] == 4
    assert set(fresh.store.drives) == {"ZB2"}
    assert [json.loads(e)["status"] for e in fresh.store.statuses["ZA1"]] == ["000", "002"]
    json.loads(fresh.store.status_json())  # every reply still JSON
    assert fresh.tree.kind("/lab/bad") is None and fresh.tree.kind("/lab/worse") is None
    assert fresh.tree.get("/lab/count", now + 1.0) == 7  # the rest of the tree is there
def test_snapshot_stores_no_derived_drive_objects_and_restores_them_from_the_records():
    now = 1_700_000_000.0
    state = make_state()
    announce(state, "ZV1", now)
    snapshot = state.snapshot(now)
    assert [entry["path"] for entry in snapshot["tree"] if entry["path"].startswith("/drives")] == []
    fresh = restored(snapshot_of(state, now), now + 1)
    assert fresh.tree.get("/drives/ZV1/model", now + 1) == "ST4000NK0001"
    assert fresh.tree.dump() == state.tree.dump()


# --- a new drive's record embeds its datagram ---------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from DriveStateMonitor.announcement import Announcement, parse_announcement  # noqa: E402
from DriveStateMonitor.persistence import EMBEDDED_ANNOUNCEMENT  # noqa: E402

DATAGRAMS = [
    b'{"serial_number": "ZA1", "model": "ST4000NK0001"}',
    '{"serial_number":"ZA2" ,\n "model":"\u00e9t\u00e9", "n": 1.50, "x": [1, {"y": null}]}'.encode(),
    b' {"serial_number": "ZA3", "s": "a \\"quoted\\" \\\\ ] word"} ',
]


def journaled(state: StoreState) -> List[Any]:
    payloads: List[Any] = []
    state.attach(payloads.append)
    return payloads


@pytest.mark.parametrize("datagram", DATAGRAMS)
def test_a_new_drive_is_journaled_with_its_datagram_embedded_and_replays_byte_for_byte(datagram):
    serial = json.loads(datagram)["serial_number"]
    state = make_state()
    payloads = journaled(state)
    assert state.store.record_announcement(serial, json.loads(datagram), datagram, 100.5,
                                           "10.1.2.3", "eth\u00e90")
    state.announced(serial, datagram, 100.5, "10.1.2.3", "eth\u00e90")
    assert len(payloads) == 1 and payloads[0].startswith(EMBEDDED_ANNOUNCEMENT)
    assert datagram in payloads[0]  # embedded as it is, not encoded as a string
    records, used = decode_records(encode_record(payloads[0], 7))
    assert records == [["a", serial, datagram.decode(), 100.5, "10.1.2.3", "eth\u00e90"]]
    replayed = make_state()
    replayed.apply(records[0])
    assert replayed.store.drives[serial].raw == datagram


def test_old_string_announcement_records_and_embedded_ones_load_side_by_side():
    old = ["a", "OLD1", '{"serial_number": "OLD1", "model": "m"}', 10.0, "10.0.0.1", "lo"]
    new = embedded_announcement("NEW1", b'{"serial_number": "NEW1"}', 11.0, "10.0.0.2", "lo")
    records, used = decode_records(encode_record(old, 0) + encode_record(new, 1))
    state = make_state()
    for record in records:
        state.apply(record)
    assert set(state.store.drives) == {"OLD1", "NEW1"}
    assert state.store.drives["NEW1"].raw == b'{"serial_number": "NEW1"}'


@pytest.mark.parametrize("payload", [
    b'["A",["S",1.0,"h"],{"serial_number": "S"}]',      # three fields in the head, not four
    b'["A",["S",1.0,"h","lo"]{"serial_number": "S"}]',   # no comma after the head
    b'["A",["S",1.0,"h","lo"],{"serial_number": "S"}',   # no closing bracket
    b'["A",{"S":1},{"serial_number": "S"}]',             # the head is not a list
    b'["A",["S",1.0,"h","lo",],{}]',                     # the head is not JSON
])
def test_a_malformed_embedded_record_with_a_valid_crc_is_skipped(payload):
    records, _ = decode_records(encode_record(RECORDS[0], 0) + encode_record(payload, 1)
                               + encode_record(RECORDS[1], 2))
    assert records == RECORDS[:2]


def test_an_embedded_datagram_that_fails_the_live_checks_is_refused_at_replay():
    records, _ = decode_records(encode_record(
        b'["A",["S",1.0,"h","lo"],{"serial_number": "OTHER"}]', 0))
    with pytest.raises(ValueError):
        make_state().apply(records[0])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers() | st.floats(
    allow_nan=False, allow_infinity=False) | st.none(), max_size=4), st.text(min_size=1, max_size=8),
    st.booleans())
def test_any_accepted_datagram_survives_the_journal_byte_for_byte(fields, serial, ascii_only):
    fields["serial_number"] = serial
    datagram = json.dumps(fields, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    if not isinstance(parse_announcement(datagram), Announcement):
        return  # refused live, so never journaled
    records, _ = decode_records(encode_record(
        embedded_announcement(serial, datagram, 5.25, "::1", "lo"), 0))
    assert records == [["a", serial, datagram.decode("utf-8"), 5.25, "::1", "lo"]]
