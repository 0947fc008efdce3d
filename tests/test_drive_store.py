"""DriveStore: announcements, repeats, status histories, the `m` / `s` JSON, wipe, versions."""
import json
import time

import pytest

from DriveStateMonitor.announcement import parse_announcement
from DriveStateMonitor.drive_store import ADDED_FIELDS, ALIVE, EXPIRED, LAST_SEEN_FORMAT, DriveStore
from DriveStateMonitor.status_protocol import parse_status

T0 = 1433341321.25  # 2015-06-03 14:22:01.25 UTC


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def announcement_bytes(serial="ZA1", ip="10.20.30.41", **extra) -> bytes:
    fields = {"serial_number": serial, "world_wide_name": "5 000c50 %s" % serial,
              "manufacturer": "Seagate", "model": "ST4000NK0001", "firmware_version": "3.1.7",
              "protocol_version": "3.0.6", "port": 8123, "tlsPort": 8443,
              "network_interfaces": [{"name": "eth0", "mac_addr": "00:c9:58:01:aa:10",
                                      "ipv4_addr": ip, "ipv6_addr": "fe80::1"}]}
    fields.update(extra)
    return json.dumps(fields).encode()


def announce(store, raw, now=T0, source="10.20.30.41", iface="eth0"):
    parsed = parse_announcement(raw)
    return store.record_announcement(parsed.serial_number, parsed.fields, raw, now, source, iface)


def status(store, serial, time_stamp, text):
    report = parse_status(json.dumps({"serial_number": serial, "time_stamp": time_stamp,
                                      "status": text}).encode())
    return store.record_status(report.serial_number, report.entry_json)


def m(store):
    return json.loads(store.multicast_json())


def s(store):
    return json.loads(store.status_json())


# --- announcements and the `m` reply ---------------------------------------------------------
def test_empty_store_m_and_s_are_empty_objects():
    store = DriveStore()
    assert store.multicast_json() == b"{}" and store.status_json() == b"{}"


def test_m_holds_fields_exactly_as_sent_plus_last_seen_and_added_fields(utc):
    store = DriveStore()
    raw = announcement_bytes("ZA1")
    assert announce(store, raw, now=T0, source="10.20.30.41", iface="eth0")
    sent = json.loads(raw)
    assert m(store) == {"ZA1": dict(sent, last_seen="2015 Jun 03 14:22:01", last_seen_epoch=T0,
                                    source_address="10.20.30.41", interface="eth0", state=ALIVE)}


def test_m_keeps_drive_field_order_then_added_fields():
    store = DriveStore()
    raw = announcement_bytes("ZA1")
    announce(store, raw)
    assert list(m(store)["ZA1"]) == list(json.loads(raw)) + list(ADDED_FIELDS)


def test_last_seen_is_local_time_in_the_original_format(monkeypatch):
    monkeypatch.setenv("TZ", "XYZ-2")  # POSIX TZ: two hours east of UTC, no tzdata needed
    time.tzset()
    try:
        store = DriveStore()
        announce(store, announcement_bytes("ZA1"), now=T0)
        last_seen = m(store)["ZA1"]["last_seen"]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert last_seen == "2015 Jun 03 16:22:01"
    assert time.strftime(LAST_SEEN_FORMAT, time.strptime(last_seen, LAST_SEEN_FORMAT)) == last_seen


def test_drive_view_matches_the_m_entry():
    store = DriveStore()
    announce(store, announcement_bytes("ZA1"))
    assert store.drive_view("ZA1") == m(store)["ZA1"]


def test_drive_sending_no_fields_but_its_identity_has_valid_m_json():
    store = DriveStore()
    store.record_announcement("X", {}, b"raw", T0, "1.2.3.4", "lo")
    assert set(m(store)["X"]) == set(ADDED_FIELDS)


def test_drive_sending_our_added_field_names_shows_ours():
    store = DriveStore()
    raw = announcement_bytes("ZA1", last_seen="forged", interface="forged")
    announce(store, raw, iface="eth1")
    entry = m(store)["ZA1"]
    assert entry["last_seen"] != "forged" and entry["interface"] == "eth1"


def test_non_ascii_fields_survive_into_m():
    store = DriveStore()
    announce(store, announcement_bytes("ZA1", model="Überdrive ✓"))
    assert m(store)["ZA1"]["model"] == "Überdrive ✓"


def test_byte_identical_repeat_updates_last_seen_source_and_interface(utc):
    store = DriveStore()
    raw = announcement_bytes("ZA1")
    announce(store, raw, now=T0)
    m(store)  # caches the entry; the repeat must invalidate it
    assert store.refresh_repeat(raw, T0 + 5, "10.20.31.41", "eth1") == "ZA1"
    entry = m(store)["ZA1"]
    assert entry["last_seen"] == "2015 Jun 03 14:22:06"
    assert (entry["last_seen_epoch"], entry["source_address"], entry["interface"]) == \
        (T0 + 5, "10.20.31.41", "eth1")


def test_unknown_bytes_are_not_a_repeat():
    store = DriveStore()
    announce(store, announcement_bytes("ZA1"))
    assert store.refresh_repeat(announcement_bytes("ZA1", ip="10.0.0.9"), T0, "x", "eth0") is None
    assert DriveStore().refresh_repeat(b"{}", T0, "x", "eth0") is None


def test_changed_announcement_replaces_the_drives_fields():
    store = DriveStore()
    announce(store, announcement_bytes("ZA1", ip="10.20.30.41", extra_field=1))
    m(store)
    announce(store, announcement_bytes("ZA1", ip="10.99.0.1"), now=T0 + 5)
    entry = m(store)["ZA1"]
    assert entry["network_interfaces"][0]["ipv4_addr"] == "10.99.0.1"
    assert "extra_field" not in entry and len(m(store)) == 1


def test_old_bytes_are_no_longer_a_repeat_after_the_drive_changed():
    store = DriveStore()
    old = announcement_bytes("ZA1", ip="10.20.30.41")
    announce(store, old)
    announce(store, announcement_bytes("ZA1", ip="10.99.0.1"))
    assert store.refresh_repeat(old, T0 + 5, "x", "eth0") is None


def test_each_serial_gets_its_own_entry():
    store = DriveStore()
    for serial in ("A", "B", "C"):
        announce(store, announcement_bytes(serial))
    assert sorted(m(store)) == ["A", "B", "C"]


def test_new_drives_past_max_drives_are_refused_and_counted():
    store = DriveStore(max_drives=2)
    assert announce(store, announcement_bytes("A")) and announce(store, announcement_bytes("B"))
    assert not announce(store, announcement_bytes("C"))
    assert sorted(m(store)) == ["A", "B"] and store.refused_drives == 1


def test_known_drive_still_updates_when_the_table_is_full():
    store = DriveStore(max_drives=1)
    announce(store, announcement_bytes("A"))
    assert announce(store, announcement_bytes("A", ip="10.1.1.1"), now=T0 + 5)
    assert m(store)["A"]["network_interfaces"][0]["ipv4_addr"] == "10.1.1.1"


# --- expiry ------------------------------------------------------------------------------------
def test_drives_never_expire_without_a_lifetime():
    store = DriveStore()
    announce(store, announcement_bytes("A"))
    assert store.next_deadline() is None
    assert store.expire_due(T0 + 10 ** 9) == [] and m(store)["A"]["state"] == ALIVE


def test_silent_drive_expires_after_its_lifetime_and_shows_it_in_m():
    store = DriveStore(drive_lifetime=30)
    announce(store, announcement_bytes("A"), now=T0)
    m(store)
    assert store.next_deadline() == T0 + 30
    assert store.expire_due(T0 + 29.9) == []
    assert store.expire_due(T0 + 30) == ["A"]
    assert m(store)["A"]["state"] == EXPIRED
    assert store.expire_due(T0 + 100) == []


def test_drive_heard_again_is_not_expired_at_the_old_deadline():
    store = DriveStore(drive_lifetime=30)
    raw = announcement_bytes("A")
    announce(store, raw, now=T0)
    store.refresh_repeat(raw, T0 + 20, "x", "eth0")
    assert store.expire_due(T0 + 30) == []
    assert store.expire_due(T0 + 50) == ["A"]


def test_expired_drive_heard_again_is_alive():
    store = DriveStore(drive_lifetime=30)
    raw = announcement_bytes("A")
    announce(store, raw, now=T0)
    store.expire_due(T0 + 40)
    assert store.refresh_repeat(raw, T0 + 45, "x", "eth0") == "A"
    assert m(store)["A"]["state"] == ALIVE
    assert store.expire_due(T0 + 75) == ["A"]


def test_repeats_do_not_grow_the_expiry_queue():
    store = DriveStore(drive_lifetime=30)
    raw = announcement_bytes("A")
    announce(store, raw, now=T0)
    for i in range(1, 1000):
        store.refresh_repeat(raw, T0 + i * 0.01, "x", "eth0")
    assert len(store._expiry_heap) == 1


def test_wiped_drive_is_never_reported_expired():
    store = DriveStore(drive_lifetime=30)
    announce(store, announcement_bytes("A"), now=T0)
    store.wipe()
    assert store.next_deadline() is None and store.expire_due(T0 + 100) == []


def test_expiry_bumps_drives_version():
    store = DriveStore(drive_lifetime=30)
    announce(store, announcement_bytes("A"), now=T0)
    before = store.drives_version
    store.expire_due(T0 + 31)
    assert store.drives_version > before


# --- statuses and the `s` reply --------------------------------------------------------------
def test_s_lists_statuses_oldest_first():
    store = DriveStore()
    for i, text in enumerate(["001", "002", "000"]):
        status(store, "ZA1", i, text)
    assert s(store) == {"ZA1": [{"time_stamp": 0, "status": "001"},
                                {"time_stamp": 1, "status": "002"},
                                {"time_stamp": 2, "status": "000"}]}


def test_default_history_keeps_twenty_and_drops_the_oldest():
    store = DriveStore()
    for i in range(25):
        status(store, "ZA1", i, "%03d" % i)
    assert [e["time_stamp"] for e in s(store)["ZA1"]] == list(range(5, 25))


def test_history_limit_is_per_serial():
    store = DriveStore(history=2)
    for i in range(3):
        status(store, "A", i, "a")
    status(store, "B", 9, "b")
    assert s(store) == {"A": [{"time_stamp": 1, "status": "a"}, {"time_stamp": 2, "status": "a"}],
                        "B": [{"time_stamp": 9, "status": "b"}]}


def test_history_below_one_is_refused():
    with pytest.raises(ValueError):
        DriveStore(history=0)


def test_s_reflects_statuses_added_after_a_previous_s():
    store = DriveStore()
    status(store, "A", 1, "001")
    s(store)
    status(store, "A", 2, "002")
    assert [e["status"] for e in s(store)["A"]] == ["001", "002"]


def test_new_status_serials_past_the_limit_are_refused_and_counted():
    store = DriveStore(max_status_serials=1)
    assert status(store, "A", 1, "x")
    assert not status(store, "B", 1, "x")
    assert status(store, "A", 2, "y")
    assert list(s(store)) == ["A"] and store.refused_status_serials == 1


# --- wipe and versions -------------------------------------------------------------------------
def test_wipe_says_what_it_forgot_and_empties_m_and_s():
    store = DriveStore()
    announce(store, announcement_bytes("A"))
    announce(store, announcement_bytes("B"))
    for i in range(3):
        status(store, "A", i, "x")
    status(store, "C", 1, "y")
    assert store.wipe() == {"drives": 2, "status_serials": 2, "statuses": 4}
    assert m(store) == {} and s(store) == {}
    assert store.wipe() == {"drives": 0, "status_serials": 0, "statuses": 0}


def test_repeat_of_a_wiped_drive_is_not_recorded_and_a_fresh_announcement_is():
    store = DriveStore()
    raw = announcement_bytes("A")
    announce(store, raw)
    store.wipe()
    assert store.refresh_repeat(raw, T0 + 5, "x", "eth0") is None
    assert announce(store, raw, now=T0 + 5)
    assert list(m(store)) == ["A"]


def test_wipe_frees_room_for_new_drives():
    store = DriveStore(max_drives=1)
    announce(store, announcement_bytes("A"))
    store.wipe()
    assert announce(store, announcement_bytes("B"))


def test_drive_changes_bump_drives_version_only():
    store = DriveStore()
    raw = announcement_bytes("A")
    versions = [(store.drives_version, store.statuses_version)]
    announce(store, raw)
    versions.append((store.drives_version, store.statuses_version))
    store.refresh_repeat(raw, T0 + 5, "x", "eth0")
    versions.append((store.drives_version, store.statuses_version))
    assert versions[0][0] < versions[1][0] < versions[2][0]
    assert versions[0][1] == versions[1][1] == versions[2][1]


def test_status_changes_bump_statuses_version_only():
    store = DriveStore()
    before = (store.drives_version, store.statuses_version)
    status(store, "A", 1, "x")
    assert store.drives_version == before[0] and store.statuses_version > before[1]


def test_wipe_bumps_both_versions():
    store = DriveStore()
    before = (store.drives_version, store.statuses_version)
    store.wipe()
    assert store.drives_version > before[0] and store.statuses_version > before[1]


def test_refusals_do_not_bump_versions():
    store = DriveStore(max_drives=0, max_status_serials=0)
    announce(store, announcement_bytes("A"))
    status(store, "A", 1, "x")
    assert (store.drives_version, store.statuses_version) == (0, 0)


@pytest.mark.parametrize("raw", [
    b'{"serial_number": "ZA1", "model": "M"}',              # json.dumps' form: used in place
    b'{"serial_number":"ZA1",  "model":"M\xc3\xa9"}',       # other spacing, raw UTF-8: re-encoded
    b'{"serial_number": "ZA1", "model": "M", "state": "x", "last_seen": 1}',  # added names dropped
    b'{}',
])
def test_m_is_the_same_json_whatever_form_the_datagram_has(raw):
    store = DriveStore()
    fields = json.loads(raw)
    store.record_announcement("ZA1", fields, raw, T0, "10.0.0.1", "eth0")
    store.record_announcement("ZB2", {"serial_number": "ZB2"}, b'{"serial_number": "ZB2"}', T0,
                              "10.0.0.2", "eth0")
    drives = json.loads(store.multicast_json(b""))
    own = {k: v for k, v in fields.items() if k not in ADDED_FIELDS}
    assert {k: v for k, v in drives["ZA1"].items() if k not in ADDED_FIELDS} == own
    assert drives["ZA1"]["state"] == ALIVE and drives["ZB2"]["source_address"] == "10.0.0.2"
    assert store.multicast_json(b"\x04").endswith(b"}\x04")


def test_repeats_are_recognised_in_either_form_and_nothing_else_is():
    store = DriveStore()
    canonical = b'{"serial_number": "ZA1", "model": "M"}'
    spaced = b'{"serial_number":"ZB2","model":"M"}'
    for serial, raw in (("ZA1", canonical), ("ZB2", spaced)):
        store.record_announcement(serial, json.loads(raw), raw, T0, "10.0.0.1", "eth0")
    assert store.refresh_repeat(canonical, T0 + 1, "10.0.0.1", "eth0") == "ZA1"
    assert store.refresh_repeat(spaced, T0 + 1, "10.0.0.1", "eth0") == "ZB2"
    assert store.drives["ZA1"].raw == canonical and store.drives["ZB2"].raw == spaced
    # one byte more or less is another datagram, to be parsed (and refused) as such
    for other in (canonical[:-1], canonical + b"}", spaced + b"}", spaced[:-1], b"}"):
        assert store.refresh_repeat(other, T0 + 2, "10.0.0.1", "eth0") is None
    changed = b'{"serial_number": "ZA1", "model": "N"}'
    store.record_announcement("ZA1", json.loads(changed), changed, T0 + 3, "10.0.0.1", "eth0")
    assert store.refresh_repeat(canonical, T0 + 4, "10.0.0.1", "eth0") is None
    assert json.loads(store.multicast_json())["ZA1"]["model"] == "N"


@pytest.mark.parametrize("serial", ["ZA1", 'quo"te', "back\\slash", "caf\u00e9", "tab\there", "sp ace"])
def test_m_keys_are_valid_json_for_any_serial(serial):
    store = DriveStore()
    fields = {"serial_number": serial, "model": "M"}
    raw = json.dumps(fields).encode()
    store.record_announcement(serial, fields, raw, T0, "10.0.0.1", "eth0")
    assert json.loads(store.multicast_json())[serial]["model"] == "M"


# --- the `m` reply byte for byte, and the encoder it uses --------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from DriveStateMonitor.drive_store import DriveRecord, drive_cost, dumps_default  # noqa: E402

from test_intake import _JSON_VALUES as _VALUES  # noqa: E402  (any JSON value, lone surrogates too)


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_dumps_default_is_json_dumps(value):
    assert dumps_default(value) == json.dumps(value)


def _reference_m(store, end):
    """The `m` reply as the original tool built it: json.dumps of every drive's view, in order."""
    return json.dumps({serial: store.drive_view(serial) for serial in store.drives}).encode() + end


_SERIALS = st.sampled_from(["A", "B", 'q"t', "caf\u00e9"])
_DATAGRAM_FORMS = st.sampled_from(["dumps", "compact", "utf8", "empty", "added"])


def _datagram(serial, form, variant):
    fields = {"serial_number": serial, "model": "M%d" % variant, "n": [variant, {"x": 1.5}]}
    if form == "dumps":
        return fields, json.dumps(fields).encode()
    if form == "compact":
        return fields, json.dumps(fields, separators=(",", ":")).encode()
    if form == "utf8":
        fields["model"] += "\u00e9"
        return fields, json.dumps(fields, ensure_ascii=False).encode()
    if form == "added":
        fields.update(state="x", last_seen=variant)
        return fields, json.dumps(fields).encode()
    return {}, b"{}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["announce", "repeat", "expire", "m", "wipe"]),
                          _SERIALS, _DATAGRAM_FORMS, st.integers(0, 2)), max_size=25))
def test_m_is_byte_for_byte_the_original_tools_json_after_any_history(steps):
    store = DriveStore(drive_lifetime=10.0)
    sent = {}
    now = T0
    for op, serial, form, variant in steps:
        now += 3.7
        if op == "announce":
            fields, raw = _datagram(serial, form, variant)
            assert store.record_announcement(serial, fields, raw, now, "10.0.0.%d" % variant,
                                              "eth%d" % variant)
            sent[serial] = raw
        elif op == "repeat" and serial in sent:
            store.refresh_repeat(sent[serial], now, "10.0.0.9", "eth9")
        elif op == "expire":
            store.expire_due(now + 20.0)
        elif op == "wipe":
            store.wipe(now)
            sent.clear()
        end = b"\x04" if variant else b""
        assert store.multicast_json(end) == _reference_m(store, end)
        assert store.drive_bytes == sum(
            drive_cost(d.serial, d.raw, dumps_default(
                {k: v for k, v in d.fields.items() if k not in ADDED_FIELDS}).encode())
            for d in store.drives.values())


def test_a_drive_record_keeps_no_per_drive_dict():
    record = DriveRecord("A")
    assert not hasattr(record, "__dict__")
    # what a drive costs is derived from what it holds, not stored beside it
    store = DriveStore()
    raw = announcement_bytes("ZA1")
    announce(store, raw)
    assert store.drives["ZA1"].cost == drive_cost("ZA1", raw, raw) == store.drive_bytes


@settings(max_examples=300, deadline=None)
@given(st.floats(0.5, 30.0), st.lists(st.tuples(st.sampled_from(["hear", "expire"]),
                                                st.sampled_from("ABCD"), st.floats(0.0, 12.0)),
                                      max_size=40))
def test_expiry_matches_a_model_of_last_seen_plus_lifetime(lifetime, steps):
    store = DriveStore(drive_lifetime=lifetime)
    last_seen, alive = {}, {}
    now = T0
    for op, serial, step in steps:
        now += step
        if op == "hear":
            raw = json.dumps({"serial_number": serial}).encode()
            if store.refresh_repeat(raw, now, "10.0.0.1", "eth0") is None:
                store.record_announcement(serial, {"serial_number": serial}, raw, now,
                                          "10.0.0.1", "eth0")
            last_seen[serial], alive[serial] = now, True
        else:
            expired = store.expire_due(now)
            due = sorted(s for s in alive if alive[s] and last_seen[s] + lifetime <= now)
            assert sorted(expired) == due
            for s in due:
                alive[s] = False
        assert {s: d.alive for s, d in store.drives.items()} == alive
        queued = [last_seen[s] + lifetime for s in alive if alive[s]]
        if queued:  # the next wake-up is never after the first drive that is due
            assert store.next_deadline() <= min(queued)


def test_an_expiry_entry_holds_no_time_of_its_own():
    store = DriveStore(drive_lifetime=60.0)
    announce(store, announcement_bytes("ZA1"), now=T0 + 0.5)
    (heard_at, serial), = store._expiry_heap
    assert serial == "ZA1" and heard_at is store.drives["ZA1"].last_seen
    assert store.next_deadline() == T0 + 0.5 + 60.0


# --- the daemon's one deadline timer: the earlier of the tree's and the drive store's ----------
def test_the_daemon_wakes_for_the_earlier_of_the_tree_and_the_store_deadlines(tmp_path):
    from DriveStateMonitor.daemon import DriveStateMonitor
    from DriveStateMonitor.options import parse_options
    clock = [T0]
    dsm = DriveStateMonitor(parse_options(
        ["--query-port", "0", "--run-dir", str(tmp_path / "run"), "--log-dir", str(tmp_path),
         "--state-dir", str(tmp_path / "state"), "--drive-lifetime", "30"]), clock=lambda: clock[0])
    try:
        dsm._schedule_deadline()
        assert dsm._deadline_at is None  # nothing can expire: no timer
        announce(dsm.store, announcement_bytes("ZA1"), now=T0)
        dsm._schedule_deadline()
        assert dsm._deadline_at == T0 + 30  # the store's only
        dsm.tree.touch("/lab/x", T0, lifetime=10.0)
        dsm._schedule_deadline()
        assert dsm._deadline_at == T0 + 10  # the tree's, earlier
        dsm.tree.touch("/lab/y", T0, lifetime=60.0)
        dsm._schedule_deadline()
        assert dsm._deadline_at == T0 + 10  # a later one changes nothing
    finally:
        dsm.loop.close()
