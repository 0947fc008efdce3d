"""Types at the boundary (announcement.py, status_protocol.py): whatever JSON value a drive or a
script puts in any field, every output hands its consumers the types they expect — a drive's text
fields are strings or numbers (or null: no value) everywhere (m, /api/drives, the tree; /metrics
labels are strings), a status's
time_stamp and status are strings or numbers in s and /api/status — and what is refused is counted.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator
from urllib.parse import quote

from hypothesis import example, given, settings, strategies as st

from DriveStateMonitor.announcement import INTERFACE_TEXT_FIELDS, TEXT_FIELDS
from DriveStateMonitor.daemon import DriveStateMonitor
from DriveStateMonitor.metrics import render_metrics
from DriveStateMonitor.query_protocol import Query
from DriveStateMonitor.status_protocol import StatusError, parse_status
from DriveStateMonitor.statserv_protocol import StatServSession
from test_boundary_contract import NOW, in_process_dsm as dsm_in

SENDER = ("10.20.30.41", 8123)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 20, 10 ** 20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)
PLACES = st.sampled_from([("field", name) for name in TEXT_FIELDS]
                         + [("interface", name) for name in INTERFACE_TEXT_FIELDS]
                         + [("interfaces", None), ("interface_entry", None)])


@contextlib.contextmanager
def in_process_dsm() -> Iterator[DriveStateMonitor]:
    """test_boundary_contract's in-process DSM (no sockets) in a temporary dir of its own."""
    with tempfile.TemporaryDirectory() as work:
        with dsm_in(os.path.join(work, "state")) as daemon:
            yield daemon


def is_text(value: Any) -> bool:
    return type(value) in (str, int, float)


def is_text_or_null(value: Any) -> bool:
    return is_text(value) or value is None


def drive_fields(place: Any, value: Any) -> dict:
    fields = {"serial_number": "ZTYPE1", "world_wide_name": "5 000c50 ZTYPE1",
              "manufacturer": "Seagate", "model": "ST4000NK0001", "firmware_version": "3.1.7",
              "protocol_version": "3.0.6", "port": 8123,
              "network_interfaces": [{"name": "eth0", "ipv4_addr": "10.20.30.41"}]}
    kind, name = place
    if kind == "field":
        fields[name] = value
    elif kind == "interface":
        fields["network_interfaces"][0][name] = value
    elif kind == "interfaces":
        fields["network_interfaces"] = value
    else:
        fields["network_interfaces"][0] = value
    return fields


def tree_lines(daemon: DriveStateMonitor, path: str) -> list:
    """The Status Server's LS of `path`, as lines."""
    session = StatServSession(daemon.tree, lambda: NOW, is_local=True)
    session.receive_data(b"LS %s\n" % quote(path, safe="/").encode("utf-8"))
    lines = session.data_to_send().decode("utf-8").splitlines()
    assert lines[-1] == ".", lines
    return lines


def assert_drive_types(drive: dict) -> None:
    for name in TEXT_FIELDS:
        if name in drive:
            assert is_text_or_null(drive[name]), (name, drive[name])
    interfaces = drive.get("network_interfaces", [])
    assert type(interfaces) is list
    for interface in interfaces:
        assert type(interface) is dict
        for name in INTERFACE_TEXT_FIELDS:
            if name in interface:
                assert is_text_or_null(interface[name]), (name, interface[name])


@settings(max_examples=300, deadline=None)
@given(PLACES, JSON_VALUES)
@example(("field", "model"), {"a": 1})
@example(("field", "serial_number"), None)
@example(("interface", "ipv4_addr"), [1])
@example(("interfaces", None), None)
@example(("field", "firmware_version"), 3.5)
def test_any_json_value_in_a_drive_field_leaves_every_output_with_its_types(place, value):
    with in_process_dsm() as daemon:
        daemon._on_datagram(json.dumps(drive_fields(place, value)).encode(), SENDER, 1)
        drives = json.loads(daemon.answer_query(Query("m"), "test")[:-1])
        rejected = {key: count for key, count in daemon.counters.items()
                    if key.startswith("announcements_rejected_") and count}
        assert len(drives) + sum(rejected.values()) == 1  # stored, or refused and counted
        for serial, drive in drives.items():
            assert type(serial) is str
            assert_drive_types(drive)
            assert_drive_types(json.loads(daemon._http_drive_json(serial)))
        drive_dirs = tree_lines(daemon, "/drives")[:-1]
        assert len(drive_dirs) == len(drives)
        for drive_dir in drive_dirs:  # the tree: every value is text
            assert drive_dir.endswith("/"), drive_dir
            for line in tree_lines(daemon, "/drives/" + drive_dir[2:])[:-1]:
                assert line.endswith("/") or ' = "' in line, line
        for drive in daemon.metrics_facts()["drives"]:
            assert type(drive["model"]) is str and type(drive["firmware"]) is str
        render_metrics(daemon.metrics_facts())
        if rejected:
            assert daemon.bad_input.total == 1


def test_a_null_model_is_no_value_and_an_empty_metrics_label():
    with in_process_dsm() as daemon:
        daemon._on_datagram(json.dumps(drive_fields(("field", "model"), None)).encode(), SENDER, 1)
        assert json.loads(daemon.answer_query(Query("m"), "test")[:-1])["ZTYPE1"]["model"] is None
        assert [drive["model"] for drive in daemon.metrics_facts()["drives"]] == [""]
        assert 'model=""' in render_metrics(daemon.metrics_facts())


def test_a_wrong_type_announcement_is_counted_by_its_reason():
    with in_process_dsm() as daemon:
        daemon._on_datagram(json.dumps(drive_fields(("field", "model"), {"x": 1})).encode(),
                            SENDER, 1)
        assert daemon.counters["announcements_rejected_wrong_type"] == 1
        text = render_metrics(daemon.metrics_facts())
        assert 'dsm_announcements_rejected_total{reason="wrong_type"} 1' in text


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, JSON_VALUES, st.booleans())
@example({"code": 2}, [1, None], False)
@example(None, True, True)
@example("2015 Jun 03", "001", True)
def test_any_json_value_as_a_status_is_served_as_a_string_or_a_number(stamp, status, literal):
    value = {"serial_number": "ZTYPE2", "time_stamp": stamp, "status": status}
    message = (str(value) if literal else json.dumps(value)).encode("utf-8", "surrogatepass")
    with in_process_dsm() as daemon:
        try:
            report = parse_status(message)
        except StatusError:
            return  # refused with its reason (the status connection counts it as bad input)
        assert daemon.store_status(report) is None
        history = json.loads(daemon.answer_query(Query("s"), "test")[:-1])["ZTYPE2"]
        assert len(history) == 1
        entry = history[0]
        assert is_text(entry["time_stamp"]) and is_text(entry["status"])
        for sent, kept in ((stamp, entry["time_stamp"]), (status, entry["status"])):
            if is_text(sent):  # a string or a number stays exactly as sent
                assert kept == sent and type(kept) is type(sent)
            else:  # anything else as its JSON text, which reads back as the value sent
                assert json.loads(kept) == json.loads(json.dumps(sent))
        api = json.loads(bytes(daemon._http_status_json()))
        assert api["ZTYPE2"] == history
