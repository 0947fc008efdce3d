"""Kinetic drive announcements (UDP multicast, port 8123), sans-IO.

A drive sends one JSON object per datagram about every 5 s. Other devices announce on the same group
with other shapes; a datagram without `serial_number` (or, failing that, `world_wide_name`) is not a
drive's and is rejected with a reason, never an exception.

What is accepted must be servable on every output (intake.py): a datagram holding a number that
is not finite (`1e400`, NaN), a lone surrogate (`\\ud800`), an over-long integer or nesting deeper
than intake.MAX_DEPTH, or a serial number longer than intake.MAX_SERIAL_CHARS is rejected as
`unservable`, counted and logged like any other rejection.

Types at the boundary: every output hands a drive's text fields to consumers that expect text (the
page's cells, dsmctl's columns, /metrics labels, the tree's values). A drive's announcement whose
TEXT_FIELDS, or whose `network_interfaces` entries' INTERFACE_TEXT_FIELDS, hold anything but a
string, a number or null (no value, as if left out: a null serial_number falls back to the world
wide name) — an object, an array, true/false — or whose `network_interfaces` is not a list of
objects, is rejected as `wrong_type`, counted and logged: a Kinetic drive never sends one, so it is
another device's or a forgery, and changing it into text would break the promise that `m` holds
the fields exactly as the drive sent them. Other fields are passed
on as sent, any JSON value. (Statuses, which a script waits to have acknowledged, are kept instead:
status_protocol.py stores such a value as its JSON text.)
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

from .intake import IntakeError, check_serial, check_value, json_loads, needs_value_check

REJECT_NOT_JSON = "not_json"
REJECT_NOT_OBJECT = "not_object"
REJECT_NO_SERIAL = "no_serial"
REJECT_UNSERVABLE = "unservable"
REJECT_WRONG_TYPE = "wrong_type"
REJECT_REASONS = (REJECT_NOT_JSON, REJECT_NOT_OBJECT, REJECT_NO_SERIAL, REJECT_UNSERVABLE,
                  REJECT_WRONG_TYPE)
# Fields every consumer reads as text (spec dsm.md; kinetic-announcement.json): a string or a number.
TEXT_FIELDS = ("serial_number", "world_wide_name", "manufacturer", "model", "firmware_version",
               "protocol_version")
INTERFACE_TEXT_FIELDS = ("name", "mac_addr", "ipv4_addr", "ipv6_addr")


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
    wrong = wrong_type(fields)
    if wrong is not None:
        return Rejected(REJECT_WRONG_TYPE, wrong)
    return Announcement(serial, fields)


def wrong_type(fields: Dict[str, Any]) -> Optional[str]:
    """Why a drive's fields do not have the types every output promises (see the top), or None."""
    for name in TEXT_FIELDS:
        if name in fields and not _is_text(fields[name]):
            return "%s is %s; a string, a number or null is expected" % (
                name, _kind(fields[name]))
    interfaces = fields.get("network_interfaces", [])
    if type(interfaces) is not list:
        return "network_interfaces is %s; a list of objects is expected" % _kind(interfaces)
    for index, interface in enumerate(interfaces):
        if type(interface) is not dict:
            return "network_interfaces[%d] is %s; an object is expected" % (index, _kind(interface))
        for name in INTERFACE_TEXT_FIELDS:
            if name in interface and not _is_text(interface[name]):
                return "network_interfaces[%d].%s is %s; a string, a number or null is " \
                       "expected" % (
                    index, name, _kind(interface[name]))
    return None


def _is_text(value: Any) -> bool:
    """A string, a number, or null (no value)."""
    kind = type(value)
    return kind is str or kind is int or kind is float or value is None


def _kind(value: Any) -> str:
    """A JSON value's kind, as the error names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    kinds: Dict[type, str] = {dict: "an object", list: "an array", tuple: "an array"}
    return kinds.get(type(value), "a %s" % type(value).__name__)


def _identity(value: Any) -> Optional[str]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
