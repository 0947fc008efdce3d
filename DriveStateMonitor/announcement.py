"""Kinetic drive announcements (UDP multicast, port 8123), sans-IO.

A drive sends one JSON object per datagram about every 5 s. Other devices announce on the same group
with other shapes; a datagram without `serial_number` (or, failing that, `world_wide_name`) is not a
drive's and is rejected with a reason, never an exception.

What is accepted must be servable on every output (intake.py): a datagram holding a number that
is not finite (`1e400`, NaN), a lone surrogate (`\\ud800`), an over-long integer or nesting deeper
than intake.MAX_DEPTH, or a serial number longer than intake.MAX_SERIAL_CHARS is rejected as
`unservable`, counted and logged like any other rejection.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

from .intake import IntakeError, check_serial, check_value, json_loads, needs_value_check

REJECT_NOT_JSON = "not_json"
REJECT_NOT_OBJECT = "not_object"
REJECT_NO_SERIAL = "no_serial"
REJECT_UNSERVABLE = "unservable"
REJECT_REASONS = (REJECT_NOT_JSON, REJECT_NOT_OBJECT, REJECT_NO_SERIAL, REJECT_UNSERVABLE)


class Announcement(NamedTuple):
    serial_number: str
    fields: Dict[str, Any]  # the object exactly as the drive sent it


class Rejected(NamedTuple):
    reason: str  # one of REJECT_REASONS
    detail: str


def parse_announcement(datagram: bytes) -> "Announcement | Rejected":
    """Parses one datagram into an Announcement, or says why it is not one."""
    try:
        text = datagram.decode("utf-8")
        fields = json_loads(text)
    except IntakeError as exc:
        return Rejected(REJECT_UNSERVABLE, "announcement %s" % str(exc)[:80])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return Rejected(REJECT_NOT_JSON, "not UTF-8 JSON: %s" % str(exc)[:80])
    if not isinstance(fields, dict):
        return Rejected(REJECT_NOT_OBJECT, "JSON %s, not an object" % type(fields).__name__)
    if needs_value_check(text):  # else check_value could find nothing (intake.py)
        try:
            check_value(fields, what="announcement")
        except IntakeError as exc:
            return Rejected(REJECT_UNSERVABLE, str(exc)[:120])
    serial = _identity(fields.get("serial_number"))
    if serial is None:
        serial = _identity(fields.get("world_wide_name"))
    if serial is None:
        return Rejected(REJECT_NO_SERIAL, "no serial_number or world_wide_name")
    try:
        check_serial(serial)
    except IntakeError as exc:
        return Rejected(REJECT_UNSERVABLE, str(exc))
    return Announcement(serial, fields)


def _identity(value: Any) -> Optional[str]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
