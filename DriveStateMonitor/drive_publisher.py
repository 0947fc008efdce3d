"""Publishes what the DSM hears and is told into the Status Server tree (`/drives/`, `/dsm/`).

Layout (spec: status-server.md, "Drive data in the tree"):

    /drives/<serial>/<field>                      each scalar field of the announcement
    /drives/<serial>/interfaces/<name>/<field>    each entry of network_interfaces
    /drives/<serial>/last_seen                     when the DSM last heard it (the original format)
    /drives/<serial>/status, time_stamp           the newest status report
    /dsm/version, pid, start_time, interfaces, counters/<name>

Announcement objects carry the drive lifetime, so a drive that falls silent reads EXPIRED and its
monitors fire. All of one drive's objects share one LifetimeGroup: a repeated announcement — what
drives send every 5 s — moves that one deadline and updates last_seen, instead of re-setting every
field (which profiling showed to be most of the cost of a datagram).
Status objects have no lifetime: a status stays the newest until the next one. Names that the tree
cannot hold (spaces, '/', non-ASCII: a world_wide_name has spaces) have those characters replaced by
'_'. Lists and dicts other than network_interfaces are published as their JSON text.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Optional, Tuple

from .statserv_tree import LifetimeGroup, StatServError, Tree

DRIVES = "/drives"
DSM = "/dsm"
_UNSAFE = re.compile(r"[^\x21-\x2e\x30-\x7e]")  # printable ASCII without space and '/'


def path_component(name: Any) -> str:
    """`name` as one tree path component."""
    text = _UNSAFE.sub("_", str(name)) or "_"
    return "_" + text if text in (".", "..") else text


def drive_dir(serial: str) -> str:
    return "%s/%s" % (DRIVES, path_component(serial))


def _publishable(value: Any) -> Optional[Any]:
    if value is None:
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True)


class DrivePublisher:
    """Writes drive data into `tree`; counts what the tree refused instead of failing the caller."""

    def __init__(self, tree: Tree, drive_lifetime: float) -> None:
        self.tree = tree
        self.drive_lifetime = drive_lifetime
        self.refused = 0
        # serial -> (its objects' shared deadline, the datagram last published in full, the
        # added fields last published)
        self._published: Dict[str, Tuple[LifetimeGroup, bytes, Dict[str, Any]]] = {}

    def _set(self, path: str, value: Any, now: float, lifetime: Optional[float],
             group: Optional[LifetimeGroup] = None) -> None:
        value = _publishable(value)
        if value is None:
            return
        try:
            self.tree.set_value(path, value, now, lifetime=lifetime, group=group)
        except StatServError:
            # Too long, tree full, or a name clash with a client's object: the DSM's own record (m)
            # still has it; the tree copy is best effort.
            self.refused += 1

    def announcement(self, serial: str, raw: bytes, added: Dict[str, Any], now: float,
                     fields: Optional[Dict[str, Any]] = None) -> None:
        """Publishes (or refreshes) one drive's announcement (`raw`, the datagram; `fields`, its
        parsed form if the caller has it) and the fields the DSM adds."""
        base = drive_dir(serial)
        lifetime = self.drive_lifetime
        published = self._published.get(serial)
        if published is not None and published[1] == raw and published[0].deadline > now:
            # The same announcement again, objects still alive: move the deadline, and write
            # only the added fields that changed (last_seen, once a second at most).
            group, _, last_added = published
            group.deadline = now + lifetime
            for key, value in added.items():
                if last_added.get(key) != value:
                    self._set("%s/%s" % (base, key), value, now, lifetime, group)
            self._published[serial] = (group, raw, added)
            return
        # A fresh group: objects of a field the drive no longer sends keep the old one, whose
        # deadline no longer moves, so they expire instead of living on.
        group = LifetimeGroup(now + lifetime)
        self._published[serial] = (group, raw, added)
        if fields is None:
            fields = json.loads(raw.decode("utf-8"))
        for key, value in fields.items():
            if key == "network_interfaces" and isinstance(value, list):
                for index, iface in enumerate(value):
                    if not isinstance(iface, dict):
                        continue
                    iface_dir = "%s/interfaces/%s" % (base, path_component(iface.get("name", index)))
                    for iface_key, iface_value in iface.items():
                        self._set("%s/%s" % (iface_dir, path_component(iface_key)), iface_value,
                                  now, lifetime, group)
            else:
                self._set("%s/%s" % (base, path_component(key)), value, now, lifetime, group)
        for key, value in added.items():
            self._set("%s/%s" % (base, key), value, now, lifetime, group)

    def status(self, serial: str, time_stamp: Any, status: Any, now: float) -> None:
        base = drive_dir(serial)
        self._set(base + "/time_stamp", time_stamp, now, 0)
        self._set(base + "/status", status, now, 0)

    def wipe(self, now: float) -> int:
        """Removes /drives (objects other clients still hold stay as placeholders)."""
        self._published.clear()
        try:
            return self.tree.remove_subtree(DRIVES, now)
        except StatServError:
            return 0

    def facts(self, facts: Dict[str, Any], now: float) -> None:
        """Publishes the daemon's own facts under /dsm/ (nested dicts become directories)."""
        self._facts(DSM, facts, now)

    def _facts(self, base: str, facts: Dict[str, Any], now: float) -> None:
        for key, value in facts.items():
            path = "%s/%s" % (base, path_component(key))
            if isinstance(value, dict):
                self._facts(path, value, now)
            else:
                self._set(path, value, now, 0)
