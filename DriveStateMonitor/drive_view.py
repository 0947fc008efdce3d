"""`/drives/` in the Status Server tree: a read-only view derived on demand from the drive store.

Theory of operation
-------------------
A drive's data lives once, in the DriveStore (drive_store.py): its newest datagram (raw bytes), when
it was last heard, whether it is alive, and its status history. Earlier the DSM also copied every
field into the tree as ~17 objects per drive, each with its own lifetime, parent links and monitor
hooks; that copy cost most of a new drive's CPU and most of the memory, and could disagree with `m`.

Now the tree mounts this view at `/drives` (Tree.mount). The tree asks the view, per request:

    lookup(path)     -> ("object", value) | ("directory", DIRECTORY) | None
    children(path)   -> {name: value or DIRECTORY} of a directory, or None
    attributes(path) -> what STAT shows of an entry
    walk()           -> [(path, value)] of every object, in SAVE's order

and builds nothing per drive: a drive's layout (below) is computed from its record when asked and
the last one is kept, so LS followed by GETs of the same drive parses the datagram once. Writes below
`/drives/` are refused by the tree (`! DENIED`), so nothing there can disagree with `m` and `s`.

Layout (spec: status-server.md, "Drive data in the tree"):

    /drives/<serial>/<field>                      each field of the announcement
    /drives/<serial>/interfaces/<name>/<field>    each entry of network_interfaces
    /drives/<serial>/last_seen                    when the DSM last heard it (m's format)
    /drives/<serial>/state                        "alive" or "expired", as m says; the one object
                                                  with a lifetime (--drive-lifetime)
    /drives/<serial>/status, time_stamp           the newest status report

Fields the DSM adds in `m` (last_seen_epoch, source_address, interface) stay out: they change with
every datagram. Names the tree cannot hold (spaces, '/', non-ASCII) have those characters replaced
by '_'; lists and dicts other than network_interfaces are shown as their JSON text; null fields are
left out. A drive that falls silent changes one thing, `state`; every other object keeps its value.

Notifications: the store calls `changed(serial, now, structural)` (DriveStore.on_change) when what
this view shows of a serial may have moved — a new or changed datagram, last_seen's second, alive
or expired, a new status, a wipe. With no monitors below the mount that costs one test; otherwise
the tree re-reads only the monitored names of that serial (Tree.mount_changed) and notifies real
differences, so a monitor on `/drives/<serial>` gets exactly one notice when the drive falls silent
and one when it is heard again. Snapshots do not store any of this: it is rebuilt from the store.
"""
from __future__ import annotations

import json
import re
import zlib
from typing import Any, Dict, Iterator, Optional, Tuple

from .drive_store import ADDED_FIELDS, ALIVE, EXPIRED, LAST_SEEN, DriveStore
from .statserv_tree import DIRECTORY, Tree

DRIVES = "/drives"
STATE = "state"
_UNSAFE = re.compile(r"[^\x21-\x2e\x30-\x7e]")  # printable ASCII without space and '/'
_TYPE_NAMES = {str: "string", bool: "bool", int: "int", float: "float"}
# One drive's layout: {relative directory ("" = the drive's own): {name: value or DIRECTORY}}.
Layout = Dict[str, Dict[str, Any]]


# A longer component (a datagram's 60 KB key) could be listed by LS but never asked for: a GET of it
# would pass the Status Server's 8192-byte line. It is cut, with a CRC of the whole to keep it apart.
MAX_COMPONENT_CHARS = 128


def path_component(name: Any) -> str:
    """`name` as one tree path component (unsafe characters become '_'; '.', '..' get a '_'; past
    MAX_COMPONENT_CHARS, its first characters and `~<crc32 of the name>`). Idempotent."""
    text = _UNSAFE.sub("_", str(name)) or "_"
    if len(text) > MAX_COMPONENT_CHARS:
        crc = zlib.crc32(str(name).encode("utf-8", "surrogatepass"))
        text = "%s~%08x" % (text[:MAX_COMPONENT_CHARS - 9], crc)
    return "_" + text if text in (".", "..") else text


def _shown(value: Any) -> Any:
    """A field's value as the tree shows it; None: not shown."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True)


class DriveView:
    """The mounted, read-only `/drives/` of `tree`, derived from `store` (see the module docstring)."""

    def __init__(self, store: DriveStore, tree: Tree, now: float, mount: str = DRIVES) -> None:
        self.store = store
        self.tree = tree
        self.mount = mount
        self._below = mount + "/"
        self._odd: Dict[str, str] = {}  # component -> serial, for serials that are not safe names
        self._odd_built_for = -1
        self._cached: Tuple[Any, ...] = ()  # (key, layout) of the last drive laid out
        tree.mount(mount, self, now)
        store.on_change = self.changed

    # --- notifications, from the store -----------------------------------------------------------
    def changed(self, serial: str, now: float, structural: bool) -> None:
        """What this view shows of `serial` may have changed at `now` (epoch s); `structural`: its
        directory appeared or vanished."""
        if self.tree.mount_watched:
            self.tree.mount_changed(path_component(serial), now, structural)

    # --- what the tree asks ---------------------------------------------------------------------
    def _serial_of(self, component: str) -> Optional[str]:
        store = self.store
        if component in store.drives or component in store.statuses:
            if path_component(component) == component:
                return component
        serial = self._odd.get(component)
        if serial is None or (serial not in store.drives and serial not in store.statuses):
            known = len(store.drives) + len(store.statuses)
            if known != self._odd_built_for:  # rebuilt only when serials came or went
                self._odd = {path_component(s): s for s in list(store.drives) + list(store.statuses)
                             if path_component(s) != s}
                self._odd_built_for = known
            serial = self._odd.get(component)
        return serial

    def _layout(self, serial: str) -> Optional[Layout]:
        store = self.store
        drive = store.drives.get(serial)
        history = store.statuses.get(serial)
        if drive is None and not history:
            return None
        newest = history[-1] if history else None
        key = (serial, drive.body if drive else None, int(drive.last_seen_wall) if drive else None,
               drive.alive if drive else None, newest)
        if self._cached and self._cached[0] == key:
            return self._cached[1]
        own: Dict[str, Any] = {}
        layout: Layout = {"": own}
        if drive is not None:
            for key_name, value in drive.fields.items():
                if key_name in ADDED_FIELDS:
                    continue
                if key_name == "network_interfaces" and isinstance(value, list):
                    interfaces = layout.setdefault("interfaces", {})
                    own["interfaces"] = DIRECTORY
                    for index, iface in enumerate(value):
                        if not isinstance(iface, dict):
                            continue
                        name = path_component(iface.get("name", index))
                        interfaces[name] = DIRECTORY
                        entries = layout.setdefault("interfaces/" + name, {})
                        for iface_key, iface_value in iface.items():
                            shown = _shown(iface_value)
                            if shown is not None:
                                entries[path_component(iface_key)] = shown
                    continue
                shown = _shown(value)
                if shown is not None:
                    own[path_component(key_name)] = shown
            own[LAST_SEEN] = store.format_last_seen(drive.last_seen_wall)
            own[STATE] = ALIVE if drive.alive else EXPIRED
        if newest is not None:
            entry = json.loads(newest.decode("utf-8"))
            for name in ("time_stamp", "status"):
                shown = _shown(entry.get(name))
                if shown is not None:
                    own[name] = shown
        self._cached = (key, layout)
        return layout

    def _locate(self, path: str) -> Optional[Tuple[str, str, Layout]]:
        """(serial, path relative to the drive's directory, layout) for a path below the mount."""
        if not path.startswith(self._below):
            return None
        component, _, relative = path[len(self._below):].partition("/")
        serial = self._serial_of(component)
        if serial is None:
            return None
        layout = self._layout(serial)
        return None if layout is None else (serial, relative, layout)

    def lookup(self, path: str) -> Optional[Tuple[str, Any]]:
        """("object", value) or ("directory", DIRECTORY) for a path below the mount; None if absent."""
        located = self._locate(path)
        if located is None:
            return None
        _, relative, layout = located
        if relative in layout:
            return ("directory", DIRECTORY)
        directory, _, name = relative.rpartition("/")
        entries = layout.get(directory)
        if entries is None or name not in entries:
            return None
        value = entries[name]
        return ("directory", DIRECTORY) if value is DIRECTORY else ("object", value)

    def children(self, path: str) -> Optional[Dict[str, Any]]:
        """A directory's {name: value or DIRECTORY}; None if `path` is not a directory here."""
        if path == self.mount:
            store = self.store
            names = dict.fromkeys(path_component(s) for s in store.drives)
            names.update(dict.fromkeys(path_component(s) for s in store.statuses))
            return dict.fromkeys(names, DIRECTORY)
        located = self._locate(path)
        if located is None:
            return None
        entries = located[2].get(located[1])
        return dict(entries) if entries is not None else None

    def attributes(self, path: str) -> Optional[Dict[str, Any]]:
        """What STAT shows of an entry below the mount (the tree adds use counts); None if absent.

        time: when it last changed (epoch s) — the datagram's arrival for a field, when last heard
        for last_seen, when it flipped for state, when the newest status came for status and
        time_stamp. revision: the store's drives_version then current (a view keeps no per-object
        counters). lifetime: --drive-lifetime for state, 0 (forever) for the rest."""
        located = self._locate(path)
        entry = self.lookup(path)
        if located is None or entry is None:
            return None
        serial, relative, layout = located
        store = self.store
        drive = store.drives.get(serial)
        if relative == STATE and drive is not None:
            changed = drive.state_at
        elif relative == LAST_SEEN and drive is not None:
            changed = drive.last_seen_wall
        elif relative in ("status", "time_stamp"):
            changed = store.status_at.get(serial, 0.0)
        else:
            changed = drive.changed_at if drive is not None else store.status_at.get(serial, 0.0)
        if entry[0] == "directory":
            return {"name": path, "kind": "directory", "comment": "",
                    "entries": len(layout.get(relative, ())), "time": changed,
                    "revision": store.drives_version}
        value = entry[1]
        lifetime = float(store.drive_lifetime or 0.0) if relative == STATE else 0.0
        return {"name": path, "kind": "object", "type": _TYPE_NAMES.get(type(value), "string"),
                "value": value, "comment": "", "lifetime": lifetime, "autoexpire": False,
                "owner": None, "time": changed, "revision": store.drives_version}

    def walk(self) -> Iterator[Tuple[str, Any]]:
        """(path, value) of every object below the mount, depth first, names sorted (SAVE's order)."""
        for component in sorted(self.children(self.mount) or ()):
            serial = self._serial_of(component)
            layout = self._layout(serial) if serial is not None else None
            if layout is None:
                continue
            yield from self._walk_dir(self._below + component, "", layout)

    def _walk_dir(self, base: str, relative: str, layout: Layout) -> Iterator[Tuple[str, Any]]:
        for name, value in sorted(layout.get(relative, {}).items()):
            child = relative + "/" + name if relative else name
            if value is DIRECTORY:
                yield from self._walk_dir(base, child, layout)
            else:
                yield base + "/" + child, value
