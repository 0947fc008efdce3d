"""Kinetic drive announcements (UDP multicast), sans-IO: one datagram in, Announcement or Rejected out."""
import json
import os

import pytest

from DriveStateMonitor.announcement import (REJECT_NO_SERIAL, REJECT_NOT_JSON, REJECT_NOT_OBJECT,
                                            REJECT_REASONS, Announcement, Rejected,
                                            parse_announcement)

SAMPLE_PATH = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "spec",
                           "kinetic-announcement.json")


@pytest.fixture
def sample_bytes() -> bytes:
    path = SAMPLE_PATH if os.path.exists(SAMPLE_PATH) else "/work/shared/spec/kinetic-announcement.json"
    with open(path, "rb") as f:
        return f.read()


def test_sample_kinetic_announcement_parses_with_its_serial_number(sample_bytes):
    parsed = parse_announcement(sample_bytes)
    assert isinstance(parsed, Announcement)
    assert parsed.serial_number == "ZA10F3K2"


def test_announcement_keeps_every_field_exactly_as_sent(sample_bytes):
    parsed = parse_announcement(sample_bytes)
    assert parsed.fields == json.loads(sample_bytes)
    assert [i["ipv4_addr"] for i in parsed.fields["network_interfaces"]] == ["10.20.30.41",
                                                                            "10.20.31.41"]
    assert parsed.fields["world_wide_name"] == "5 000c50 0a1b2c3d4"


def test_without_serial_number_world_wide_name_identifies_the_drive():
    parsed = parse_announcement(b'{"world_wide_name": "5 000c50 0a1b2c3d4", "port": 8123}')
    assert parsed == Announcement("5 000c50 0a1b2c3d4",
                                  {"world_wide_name": "5 000c50 0a1b2c3d4", "port": 8123})


@pytest.mark.parametrize("serial", ['""', '"   "', "1.5", "null"])
def test_unusable_serial_number_falls_back_to_world_wide_name(serial):
    parsed = parse_announcement(('{"serial_number": %s, "world_wide_name": "W W N"}' % serial).encode())
    assert parsed.serial_number == "W W N"


@pytest.mark.parametrize("serial", ["true", "[]", "{}"])
def test_a_serial_number_that_is_not_text_is_the_wrong_type_even_with_a_world_wide_name(serial):
    # it would reach every output as it is (types at the boundary: announcement.py)
    parsed = parse_announcement(('{"serial_number": %s, "world_wide_name": "W W N"}' % serial).encode())
    assert isinstance(parsed, Rejected) and parsed.reason == "wrong_type"
    assert "serial_number is" in parsed.detail


def test_integer_serial_number_becomes_a_string():
    assert parse_announcement(b'{"serial_number": 1234}').serial_number == "1234"


def test_storage_daemon_datagram_is_rejected_as_no_serial():
    datagram = json.dumps({"box_id": "box-7", "id": 3, "network_interfaces": [{"name": "eth0"}],
                           "port": 6000, "version": "1.2", "used_bytes": 10,
                           "total_bytes": 100}).encode()
    parsed = parse_announcement(datagram)
    assert isinstance(parsed, Rejected) and parsed.reason == REJECT_NO_SERIAL


def test_object_with_neither_identity_is_rejected_as_no_serial():
    assert parse_announcement(b'{"serial_number": "", "world_wide_name": " "}').reason == \
        REJECT_NO_SERIAL


@pytest.mark.parametrize("datagram", [b"", b"hello", b"{'serial_number': 'py-literal'}",
                                      b'{"serial_number": "A"', b'{"serial_number": "A"} trailing',
                                      b"\xef\xbb\xbf{}"])
def test_non_json_is_rejected_as_not_json(datagram):
    parsed = parse_announcement(datagram)
    assert isinstance(parsed, Rejected) and parsed.reason == REJECT_NOT_JSON


def test_invalid_utf8_is_rejected_as_not_json():
    assert parse_announcement(b'{"serial_number": "\xff\xfe"}').reason == REJECT_NOT_JSON


@pytest.mark.parametrize("datagram", [b'{"serial_number": "A", "x": NaN}',
                                      b'{"serial_number": "A", "x": [Infinity]}',
                                      b'{"serial_number": "A", "x": -Infinity}'])
def test_nan_and_infinity_are_rejected_as_unservable(datagram):
    # Stored, they would make every `m` reply invalid JSON for strict clients.
    assert parse_announcement(datagram).reason == "unservable"


@pytest.mark.parametrize("datagram", [
    b'{"serial_number": "A", "port": 1e400}',                      # overflows to Infinity
    b'{"serial_number": "A", "port": -1e400}',
    b'{"serial_number": "A", "x": [{"y": 1.5e999}]}',
    b'{"serial_number": "A", "model": "\\ud800"}',                # a lone surrogate
    b'{"serial_number": "A", "\\udfff": 1}',                     # ... as a key
    b'{"serial_number": "\\ud800"}',
    b'{"serial_number": "A", "x": ' + b"1" * 4301 + b"}",          # an int too long for int()
    b'{"serial_number": "A", "x": ' + b"[" * 40 + b"]" * 40 + b"}",  # deeper than the limit
], ids=lambda datagram: repr(datagram[:40]))
def test_values_no_output_could_serve_are_rejected_as_unservable(datagram):
    parsed = parse_announcement(datagram)
    assert isinstance(parsed, Rejected) and parsed.reason == "unservable", parsed
    assert len(parsed.detail) < 200


def test_nesting_near_the_recursion_limit_is_rejected():
    # ~980 levels parsed on some Pythons and then failed on every publish and /api/drives/<serial>.
    for depth in (33, 500, 980, 5000):
        datagram = b'{"serial_number": "A", "x": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
        assert isinstance(parse_announcement(datagram), Rejected), depth


@pytest.mark.parametrize("datagram", [
    b'{"serial_number": "A", "model": "\\ud83d\\ude00 ok"}',     # a surrogate *pair* is fine
    b'{"serial_number": "A", "port": 1e300, "x": ' + b"1" * 4300 + b"}",
    b'{"serial_number": "A", "x": ' + b"[" * 31 + b"]" * 31 + b"}",
], ids=lambda datagram: repr(datagram[:40]))
def test_servable_edge_values_are_accepted(datagram):
    assert isinstance(parse_announcement(datagram), Announcement)


@pytest.mark.parametrize("datagram", [b"[1, 2]", b'["serial_number"]', b'"ZA1"', b"42", b"null",
                                      b"true"])
def test_json_that_is_not_an_object_is_rejected_as_not_object(datagram):
    parsed = parse_announcement(datagram)
    assert isinstance(parsed, Rejected) and parsed.reason == REJECT_NOT_OBJECT


@pytest.mark.parametrize("datagram", [b"[" * 100_000, b'{"a":' * 100_000])
def test_absurd_nesting_is_rejected_not_raised(datagram):
    assert parse_announcement(datagram).reason in REJECT_REASONS


def test_rejection_detail_is_short_for_a_long_datagram():
    parsed = parse_announcement(b"x" * 65_000)
    assert parsed.reason == REJECT_NOT_JSON and len(parsed.detail) < 200
