"""The Status Server's store: a tree of directories and data objects, pure and clock-free.

Theory of operation
-------------------
Every entry ("node") lives in one dict keyed by its normalized absolute path, so a lookup never walks
the tree; a directory also keeps its children by name, for listings and RMDIR's emptiness check. A
node is a DIRECTORY, an OBJECT, or a PLACEHOLDER. A placeholder is a name somebody holds that does not
exist (value NONEXISTENT): it stays in the dict, so holds and monitors survive, but not in its parent's
children, so reads, listings and SAVE do not see it. Creating the name again turns the same node back
into an object, so a monitor keeps working across remove and re-create.

Use counts. An existing entry is held by its directory (pointer integrity); TOUCH, TOUCHDIR and MONITOR
add holders, keyed by an opaque owner (the protocol uses its session object). Removing an entry that
still has holders leaves a placeholder; a placeholder is freed the moment its last holder lets go.
`release_owner` drops everything one owner held (a closing connection) and expires the objects it had
TOUCHed with AUTOEXPIRE.

Changes. Every change (creation, new value, expiry, removal) bumps the global revision and goes through
`_changed`, which tells the node's own monitors and its directory's monitors. A monitor remembers only
*which* names changed since its subscriber last collected (itself as '', or a child's name), so memory
stays bounded by the size of the tree however slow the subscriber is. The subscriber's
`notify(path)` is called once, at the first change after a collect; later changes are coalesced and
the subscriber reads the latest values with `collect`. DEADBAND is measured from the value the
subscriber last collected: for an object monitor the object's, for a directory monitor each numeric
entry's own (kept per entry only while a deadband is set); it is refused on string and bool objects,
where it cannot apply. MINPERIOD: after a notification the monitor stays quiet for the period; a
change in that time is remembered and notified when the period ends. Re-issuing MONITOR replaces
both options at once; the quiet period then running is re-measured from the last notification.

Time. Nothing here reads a clock: whatever depends on time takes `now`. The monotonic rule
(host_clock.py): `now` is a monotonic reading — in the DSM a Moment, which carries the wall reading
taken with it — and every deadline (lifetimes, MINPERIOD, the heap below) is on that monotonic
scale, so a step of the wall clock moves no expiry; the wall clock (`wall_of(now)`) is only for
what is shown and kept: STAT's `time` (mtime) and, in export_entries, each deadline as the wall
time it falls at. import_entries maps such a deadline back, its remaining time capped at the
object's LIFETIME. A plain float `now` stands for both clocks (tests, the tree on its own). Object
lifetimes and the ends of monitors' quiet periods share one heap of (when, seq, target); a target
remembers the seq of its one live entry, and entries whose seq no longer matches are stale and are
dropped when they reach the top (lazy invalidation). An update that only pushes a lifetime further
out does not touch the heap: the old entry, when it comes due, sees the later deadline and re-queues
itself, so thousands of updates a second cost no heap traffic. The event loop sleeps until
`next_deadline()` and then calls `expire_due(now)`, which handles both expiries and quiet-period ends.
Reads that take `now` catch up on anything overdue first, so they never show a stale value.

Mounts. `mount(path, view)` hands everything strictly below a directory to a read-only view that
derives its entries on demand (drive_view.py: /drives from the drive store). The mount point itself is
an ordinary directory node, so holds and monitors on it work as elsewhere; reads below it ask the
view; writes below it fail with DENIED. A monitor on a name below the mount keeps an "anchor": a
node outside `_nodes` that holds the monitors, the value last seen (and, for a directory, its
children's values), nothing else. The view calls `mount_changed(top, now, structural)` when what it
shows under `<mount>/<top>` may have changed; the tree re-reads only the anchors under that top name
and reports real differences through the same `_monitor_saw` path as any other change, so DEADBAND,
MINPERIOD, coalescing and UPDATES behave the same on both sides of the mount.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
import types
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from .host_clock import Moment, wall_deadline, wall_of
from .intake import MAX_INT_DIGITS

_new_float = float.__new__
__all__ = [
    "StatServError", "ValueWord", "Tree", "resolve", "names_directory", "quote_string", "escape_text",
    "unescape_text",
    "format_saved_value",
    "NONEXISTENT", "UNDEFINED", "EXPIRED", "DIRECTORY", "TYPE_NAMES", "ERROR_CODES",
    "MAX_VALUE_BYTES", "MAX_OBJECTS",
]

# Error codes, as the spec lists them.
SYNTAX = "SYNTAX"
NONEXISTENT_CODE = "NONEXISTENT"
EXISTS = "EXISTS"
NOTDIR = "NOTDIR"
ISDIR = "ISDIR"
NOTEMPTY = "NOTEMPTY"
TYPE = "TYPE"
TOOLONG = "TOOLONG"
LIMIT = "LIMIT"
DENIED = "DENIED"
PROTOCOL = "PROTOCOL"
ERROR_CODES = frozenset({SYNTAX, NONEXISTENT_CODE, EXISTS, NOTDIR, ISDIR, NOTEMPTY, TYPE, TOOLONG,
                         LIMIT, DENIED, PROTOCOL})

# CFHT capped values at 255 characters; drive announcements can carry longer fields.
MAX_VALUE_BYTES = 4096
# CFHT's store held over 42,000 objects in daily use; leave room above that.
MAX_OBJECTS = 100_000

TYPE_STRING, TYPE_INT, TYPE_FLOAT, TYPE_BOOL = "string", "int", "float", "bool"
TYPE_NAMES = (TYPE_STRING, TYPE_INT, TYPE_FLOAT, TYPE_BOOL)
_TYPE_NAME_SET = frozenset(TYPE_NAMES)
_TYPE_OF_PYTHON = {str: TYPE_STRING, bool: TYPE_BOOL, int: TYPE_INT, float: TYPE_FLOAT}
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")


class StatServError(Exception):
    """A request failed; `code` is one of ERROR_CODES and becomes `! CODE text` on the wire."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text

    def __str__(self) -> str:
        return "%s %s" % (self.code, self.text)


class ValueWord(str):
    """An invalid value (NONEXISTENT, UNDEFINED, EXPIRED) or DIRECTORY in listings.

    A distinct type, so the string value "EXPIRED" is never mistaken for the word EXPIRED."""

    __slots__ = ()


NONEXISTENT = ValueWord("NONEXISTENT")
UNDEFINED = ValueWord("UNDEFINED")
EXPIRED = ValueWord("EXPIRED")
DIRECTORY = ValueWord("DIRECTORY")  # not a value: how list_dir/collect/monitor report a directory
_WORDS: Dict[str, ValueWord] = {w: w for w in (NONEXISTENT, UNDEFINED, EXPIRED)}

_KIND_DIR, _KIND_OBJECT, _KIND_PLACEHOLDER = "directory", "object", "placeholder"

# ---------------------------------------------------------------------------------------------
# Names

# Printable 7-bit ASCII without space: a name must survive the protocol's space-separated
# arguments and SAVE's "name = value" lines unquoted.
_NAME_CHARS = re.compile(r"[\x21-\x7e]+\Z")


def resolve(path: str, cwd: str = "/") -> str:
    """Return `path` as a normalized absolute path, `.` and `..` resolved against `cwd` as UNIX does.

    `cwd` must itself be normalized and absolute. Raises StatServError(SYNTAX) for an empty name or
    characters outside printable 7-bit ASCII."""
    if not path or not _NAME_CHARS.match(path):
        raise StatServError(SYNTAX, "invalid name %r (printable 7-bit ASCII, no spaces)" % (path,))
    if path[0] == "/":
        # Fast path: already normalized, the common case for the daemon's own publishing.
        if "//" not in path and "/." not in path and (path == "/" or path[-1] != "/"):
            return path
        parts = path.split("/")
    else:
        parts = cwd.split("/") + path.split("/")
    normalized: List[str] = []
    for part in parts:
        if part == "" or part == ".":
            continue
        if part == "..":
            if normalized:
                normalized.pop()
            continue
        normalized.append(part)
    return "/" + "/".join(normalized)


def names_directory(name: str) -> bool:
    """True when `name` can only name a directory, as in UNIX: it ends in `/`, or its last
    component is `.` or `..` (`/a/d/`, `d/.`, `..`). The protocol refuses such a name where it
    would name an object (NOTDIR) and in TOUCH, which makes objects (ISDIR)."""
    last = name[-1:]
    return last == "/" or (last == "." and name.rpartition("/")[2] in (".", ".."))


def _parent_of(path: str) -> Optional[str]:
    if path == "/":
        return None
    head = path.rpartition("/")[0]
    return head or "/"


def _join(directory: str, name: str) -> str:
    return directory + name if directory == "/" else directory + "/" + name


# ---------------------------------------------------------------------------------------------
# Value text: quoting for the wire and for SAVE, typing of PUT's text

_NEEDS_ESCAPE = re.compile('[\\\\"\x00-\x1f\x7f\x85\u2028\u2029]')
_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE_SEQUENCE = re.compile(r'\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|[\\"nrt])')
_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _escape_char(match: "re.Match[str]") -> str:
    ch = match.group()
    simple = _SIMPLE_ESCAPES.get(ch)
    if simple is not None:
        return simple
    code = ord(ch)
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def escape_text(text: str) -> str:
    """Backslash-escape quotes, backslashes and anything that could end a line."""
    return _NEEDS_ESCAPE.sub(_escape_char, text)


def unescape_text(text: str) -> str:
    """Invert escape_text."""
    if "\\" not in text:
        return text

    def replace(match: "re.Match[str]") -> str:
        body = match.group()[1:]
        if body[0] in "xu":
            return chr(int(body[1:], 16))
        return _UNESCAPES[body]

    return _ESCAPE_SEQUENCE.sub(replace, text)


def quote_string(text: str) -> str:
    """`"text"` with escapes: one line whatever the string holds."""
    return '"' + escape_text(text) + '"'


def format_saved_value(value: Any) -> str:
    """A value as SAVE writes it: strings quoted, TRUE/FALSE, floats with a point (`10.`), words bare."""
    if type(value) is ValueWord:
        return str(value)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value)
    return quote_string(value)


def _format_float(number: float) -> str:
    text = repr(number)
    if not math.isfinite(number):
        return text  # 'inf', '-inf', 'nan': read back by load as floats
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += "."
        return mantissa + "e" + exponent
    return text[:-1] if text.endswith(".0") else text


def _parse_typed(text: str, type_name: str) -> Any:
    """PUT's text as a value of the object's type; TYPE if it does not fit."""
    if type_name == TYPE_STRING:
        return text
    stripped = text.strip()
    if type_name == TYPE_INT:
        # At most MAX_INT_DIGITS digits, checked before int(): what 3.8-3.10 would convert, a
        # snapshot read by 3.11+ could not (intake.py).
        if _INT_TEXT.match(stripped) and len(stripped.lstrip("+-")) <= MAX_INT_DIGITS:
            return int(stripped)
    elif type_name == TYPE_FLOAT:
        if stripped and "_" not in stripped:
            try:
                number = float(stripped)
            except ValueError:
                pass
            else:
                # inf, nan and 1e400 are refused like every non-finite number at intake: they
                # would be a bare Infinity/NaN in `s`, `/api/...` and the snapshot (intake.py).
                if math.isfinite(number):
                    return number
    elif type_name == TYPE_BOOL:
        lowered = stripped.lower()
        if lowered in _TRUE_WORDS:
            return True
        if lowered in _FALSE_WORDS:
            return False
    raise StatServError(TYPE, "%s is not a valid %s" % (quote_string(text[:40]), type_name))


def _type_of_python(value: Any) -> str:
    type_name = _TYPE_OF_PYTHON.get(type(value))
    if type_name is not None:
        return type_name
    for python_type in (bool, int, float, str):  # subclasses; bool before int
        if isinstance(value, python_type):
            return _TYPE_OF_PYTHON[python_type]
    raise StatServError(TYPE, "cannot store a %s" % type(value).__name__)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# ---------------------------------------------------------------------------------------------
# Nodes and monitors


_NO_HOLDERS: frozenset = frozenset()
_NO_MONITORS: Mapping[Any, Any] = types.MappingProxyType({})


class _Node:
    __slots__ = ("path", "parent_path", "name", "kind", "children", "value", "type_name", "comment",
                 "lifetime", "deadline", "autoexpire", "autoexpire_owner", "mtime", "revision",
                 "holders",
                 "monitors", "timer_at", "timer_seq", "group")

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.parent_path = _parent_of(path)
        self.name = path.rpartition("/")[2]
        self.kind = kind
        self.children: Optional[Dict[str, _Node]] = {} if kind == _KIND_DIR else None
        self.value: Any = NONEXISTENT
        self.type_name = TYPE_STRING
        self.comment = ""
        self.lifetime = 0.0
        self.deadline: Optional[float] = None
        self.group: Optional[LifetimeGroup] = None
        # AUTOEXPIRE is an attribute of the object (STAT shows it, a restart keeps it); the owner is
        # the connection whose end expires it, None once that connection is gone.
        self.autoexpire = False
        self.autoexpire_owner: Any = None
        self.mtime = 0.0
        self.revision = 0
        # Shared empty placeholders until the first holder or monitor: most objects never get
        # one, and an empty set and dict per node were a third of a node's memory.
        self.holders: Any = _NO_HOLDERS
        self.monitors: Any = _NO_MONITORS
        self.timer_at: Optional[float] = None
        self.timer_seq: Optional[int] = None


def _entries(directory: "_Node") -> Dict[str, "_Node"]:
    """A directory's children by name. Only a directory has them (objects and placeholders hold
    None): a node of another kind here is a NOTDIR error, never an AttributeError."""
    children = directory.children
    if children is None:
        raise StatServError(NOTDIR, "%s is not a directory" % directory.path)
    return children


class LifetimeGroup:
    """One deadline shared by many objects — a drive's announcement fields — so that refreshing them
    all costs one assignment (`group.deadline = now + lifetime`) instead of one update per object.
    The objects' heap entries, when they come due, find the later deadline and re-queue themselves."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: float = 0.0) -> None:
        self.deadline = deadline


class _Monitor:
    __slots__ = ("subscriber", "path", "deadband", "min_period", "reported", "reported_entries",
                 "changed_names", "notified", "notified_at", "quiet_until", "active", "timer_at",
                 "timer_seq")

    def __init__(self, subscriber: Any, path: str, deadband: float, min_period: float) -> None:
        self.subscriber = subscriber
        self.path = path
        self.deadband = deadband
        self.min_period = min_period
        self.reported: Any = None          # value at the last collect, for DEADBAND
        # A directory monitor's DEADBAND: each numeric entry's value as last reported (only kept
        # while deadband > 0, so it costs nothing otherwise).
        self.reported_entries: Dict[str, Any] = {}
        self.changed_names: Set[str] = set()  # '' = the monitored node itself, else a child's name
        self.notified = False              # notify() called and not yet collected
        self.notified_at = float("-inf")   # when notify() was last called, for MINPERIOD
        self.quiet_until = float("-inf")   # MINPERIOD: no notify() before this
        self.active = True
        self.timer_at: Optional[float] = None
        self.timer_seq: Optional[int] = None


# ---------------------------------------------------------------------------------------------
# The tree


# What one entry costs in memory beyond its texts (node object, dict slots, parent's child entry);
# with its path, value and comment lengths this is what --max-store-bytes charges (`byte_size`).
NODE_COST = 320


def _text_cost(value: Any) -> int:
    return len(value) if type(value) is str else 0


class Tree:
    """The store. Paths given to its methods are absolute (or relative to `/`)."""

    def __init__(self, *, max_value_bytes: int = MAX_VALUE_BYTES,
                 max_objects: int = MAX_OBJECTS) -> None:
        self.max_value_bytes = max_value_bytes
        self.max_objects = max_objects
        self.revision = 0
        self._nodes: Dict[str, _Node] = {"/": _Node("/", _KIND_DIR)}
        self._held_by_owner: Dict[Any, Set[str]] = {}
        self._autoexpire_by_owner: Dict[Any, Set[str]] = {}
        self._monitors_by_subscriber: Dict[Any, Dict[str, _Monitor]] = {}
        # Monitors with uncollected changes, per subscriber, in order of first change.
        self._changed_by_subscriber: Dict[Any, Dict[str, _Monitor]] = {}
        self._timers: List[Tuple[float, int, Any]] = []
        self._timer_seqs = itertools.count()
        self._monitor_count = 0
        # Sessions that asked for TRACE; the protocol layer owns what that means. Kept here because
        # the tree is the one object every session shares.
        self.tracers: Set[Any] = set()
        # Size accounting for the store budget: paths, string values and comments of the
        # entries; `byte_budget()` (set by the daemon) says how many bytes the tree may hold.
        self._text_bytes = 1  # the root's path
        self.byte_budget: Optional[Callable[[], int]] = None
        # The one mount (see "Mounts" above): its path, that path + "/", the view, and the
        # anchors of monitored names below it, also indexed by their first component.
        self._mount_path: Optional[str] = None
        self._mount_below = "\0"  # no normalized path starts with this
        self._view: Any = None
        self._anchors: Dict[str, _Node] = {}
        self._anchors_by_top: Dict[str, Set[str]] = {}

    def __len__(self) -> int:
        """Entries (objects, directories, placeholders, monitored names below a mount) other than
        the root and a mount's derived entries: what max_objects caps."""
        return len(self._nodes) - 1 + len(self._anchors)

    # -- the mount -----------------------------------------------------------------------------

    def mount(self, path: str, view: Any, now: float) -> None:
        """Serve everything below directory `path` from `view` (read-only; see "Mounts").

        `view` answers `lookup(path) -> (kind, value) | None`, `children(path) -> {name: value} |
        None` (a subdirectory's value is DIRECTORY), `attributes(path) -> dict` (type, comment,
        lifetime, time, revision) and `walk() -> [(path, value)]` (objects, SAVE's order)."""
        self.touch_dir(path, now)
        self._mount_path = self._normalized(path)
        self._mount_below = self._mount_path + "/"
        self._view = view

    def _refuse_mounted(self, path: str) -> None:
        if path.startswith(self._mount_below):
            raise StatServError(DENIED, "%s is derived from the DSM's own records; read-only"
                                % path)

    def _view_entry(self, path: str) -> Optional[Tuple[str, Any]]:
        return self._view.lookup(path)

    def _view_value(self, path: str) -> Any:
        """A mounted name's value as monitors report it: the value, DIRECTORY or NONEXISTENT."""
        entry = self._view.lookup(path)
        if entry is None:
            return NONEXISTENT
        return DIRECTORY if entry[0] == _KIND_DIR else entry[1]

    def _top_of(self, path: str) -> str:
        return path[len(self._mount_below):].partition("/")[0]

    @property
    def mount_watched(self) -> bool:
        """True while a monitor watches the mount point or a name below it (the view's changes
        then need reporting; otherwise they cost nothing)."""
        if self._anchors_by_top:
            return True
        node = self._nodes.get(self._mount_path) if self._mount_path is not None else None
        return node is not None and bool(node.monitors)

    def mount_changed(self, top: str, now: float, structural: bool) -> None:
        """The view's entries under `<mount>/<top>` may have changed at `now` (epoch s);
        `structural`: the directory `<mount>/<top>` appeared or vanished."""
        if structural and self._mount_path is not None:
            mount_node = self._nodes[self._mount_path]
            self._bump_revision(mount_node, now)
            if mount_node.monitors:
                for mon in list(mount_node.monitors.values()):
                    self._monitor_saw(mon, top, mount_node, now)
        paths = self._anchors_by_top.get(top)
        if paths:
            for path in list(paths):
                anchor = self._anchors.get(path)
                if anchor is not None:
                    self._refresh_anchor(anchor, now)

    def _refresh_anchor(self, anchor: _Node, now: float) -> None:
        """Re-read a monitored mounted name; report what differs from what the anchor last saw."""
        value = self._view_value(anchor.path)
        old = anchor.value
        if type(old) is not type(value) or old != value:
            anchor.value = value
            self._bump_revision(anchor, now)
            for mon in list(anchor.monitors.values()):
                self._monitor_saw(mon, "", anchor, now)
        # An anchor's `children` slot holds its directory's {name: value} as last seen.
        seen = anchor.children or {}
        current = (self._view.children(anchor.path) or {}) if value is DIRECTORY else {}
        if seen or current:
            changed = [name for name in set(seen) | set(current)
                       if type(seen.get(name)) is not type(current.get(name))
                       or seen.get(name) != current.get(name)]
            anchor.children = current
            for name in changed:
                for mon in list(anchor.monitors.values()):
                    self._monitor_saw(mon, name, anchor, now)

    def _monitored_node(self, path: str) -> Optional[_Node]:
        node = self._nodes.get(path)
        return node if node is not None else self._anchors.get(path)

    @property
    def monitor_count(self) -> int:
        """Monitors set by all subscribers together (for /metrics)."""
        return self._monitor_count

    # -- lookups -------------------------------------------------------------------------------

    def _normalized(self, path: str) -> str:
        return path if path in self._nodes else resolve(path)

    def _existing(self, path: str) -> _Node:
        node = self._nodes.get(self._normalized(path))
        if node is None or node.kind == _KIND_PLACEHOLDER:
            raise StatServError(NONEXISTENT_CODE, "%s does not exist" % path)
        return node

    def _object(self, path: str) -> _Node:
        node = self._existing(path)
        if node.kind == _KIND_DIR:
            raise StatServError(ISDIR, "%s is a directory" % path)
        return node

    def _directory(self, path: str) -> _Node:
        node = self._existing(path)
        if node.kind != _KIND_DIR:
            raise StatServError(NOTDIR, "%s is not a directory" % path)
        return node

    def exists(self, path: str) -> bool:
        """True for an existing object or directory (not a placeholder)."""
        path = self._normalized(path)
        if path.startswith(self._mount_below):
            return self._view_entry(path) is not None
        node = self._nodes.get(path)
        return node is not None and node.kind != _KIND_PLACEHOLDER

    def kind(self, path: str) -> Optional[str]:
        """'directory', 'object', or None if the name does not exist."""
        path = self._normalized(path)
        if path.startswith(self._mount_below):
            entry = self._view_entry(path)
            return None if entry is None else entry[0]
        node = self._nodes.get(path)
        if node is None or node.kind == _KIND_PLACEHOLDER:
            return None
        return node.kind

    def get(self, path: str, now: float) -> Any:
        """The value (str, int, float, bool) or UNDEFINED/EXPIRED. NONEXISTENT/ISDIR errors."""
        self._catch_up(now)
        if self._view is not None and self._normalized(path).startswith(self._mount_below):
            path = self._normalized(path)
            entry = self._view_entry(path)
            if entry is None:
                raise StatServError(NONEXISTENT_CODE, "%s does not exist" % path)
            if entry[0] == _KIND_DIR:
                raise StatServError(ISDIR, "%s is a directory" % path)
            return entry[1]
        return self._object(path).value

    def value_state(self, path: str, now: float) -> Any:
        """Like get, but an absent name gives the word NONEXISTENT instead of an error."""
        self._catch_up(now)
        path = self._normalized(path)
        if path.startswith(self._mount_below):
            entry = self._view_entry(path)
            if entry is not None and entry[0] == _KIND_DIR:
                raise StatServError(ISDIR, "%s is a directory" % path)
            return NONEXISTENT if entry is None else entry[1]
        node = self._nodes.get(path)
        if node is None:
            return NONEXISTENT
        if node.kind == _KIND_DIR:
            raise StatServError(ISDIR, "%s is a directory" % path)
        return node.value

    def list_dir(self, path: str, now: Optional[float] = None) -> List[Tuple[str, Any]]:
        """(name, value) of a directory's entries, sorted; a subdirectory's value is DIRECTORY."""
        if now is not None:
            self._catch_up(now)
        mounted = self._mounted_children(path)
        if mounted is not None:
            return sorted(mounted.items())
        directory = self._directory(path)
        return [(name, DIRECTORY if child.kind == _KIND_DIR else child.value)
                for name, child in sorted(_entries(directory).items())]

    def _mounted_children(self, path: str) -> Optional[Dict[str, Any]]:
        """A mounted directory's {name: value}; None if `path` is not the mount or below it;
        NONEXISTENT / NOTDIR errors as for any directory."""
        if self._view is None:
            return None
        path = self._normalized(path)
        if path != self._mount_path and not path.startswith(self._mount_below):
            return None
        children = self._view.children(path)
        if children is None:
            if self._view_entry(path) is None:
                raise StatServError(NONEXISTENT_CODE, "%s does not exist" % path)
            raise StatServError(NOTDIR, "%s is not a directory" % path)
        return children

    def stat(self, path: str, now: Optional[float] = None) -> Dict[str, Any]:
        """Every attribute of an entry, in a fixed order (the protocol prints them as they come)."""
        if now is not None:
            self._catch_up(now)
        path = self._normalized(path)
        if path.startswith(self._mount_below):
            attributes = self._view.attributes(path)
            if attributes is None:
                raise StatServError(NONEXISTENT_CODE, "%s does not exist" % path)
            anchor = self._anchors.get(path)
            monitors = len(anchor.monitors) if anchor is not None else 0
            attributes.update(usecount=1 + monitors, monitors=monitors)
            return attributes
        node = self._existing(path)
        use_count = 1 + len(node.holders) + len(node.monitors)  # 1: its directory's entry
        if node.kind == _KIND_DIR:
            entries = len(_entries(node))
            if node.path == self._mount_path:
                entries = len(self._view.children(node.path) or ())
            return {"name": node.path, "kind": node.kind, "comment": node.comment,
                    "entries": entries, "time": node.mtime, "revision": node.revision,
                    "usecount": use_count, "monitors": len(node.monitors)}
        return {"name": node.path, "kind": node.kind, "type": node.type_name, "value": node.value,
                "comment": node.comment, "lifetime": node.lifetime,
                "autoexpire": node.autoexpire, "owner": node.autoexpire_owner,
                "time": node.mtime, "revision": node.revision, "usecount": use_count,
                "monitors": len(node.monitors)}

    # -- creation ------------------------------------------------------------------------------

    @property
    def byte_size(self) -> int:
        """Bytes the entries are charged against the store budget (--max-store-bytes)."""
        return len(self._nodes) * NODE_COST + self._text_bytes

    def _check_bytes(self, extra: int) -> None:
        """LIMIT if growing by `extra` bytes would pass `byte_budget()` (none: no budget)."""
        if self.byte_budget is not None and extra > 0 and \
                self.byte_size + extra > self.byte_budget():
            raise StatServError(LIMIT, "the store is full (--max-store-bytes)")

    def _check_room(self, new_nodes: int) -> None:
        if new_nodes and len(self) + new_nodes > self.max_objects:
            raise StatServError(LIMIT, "the store is full (%d entries)" % self.max_objects)
        self._check_bytes(new_nodes * NODE_COST)

    def _set_text(self, node: _Node, value: Any = None, comment: Optional[str] = None,
                  set_value: bool = False) -> None:
        """Assigns a value and/or comment, keeping the byte count."""
        if set_value:
            self._text_bytes += _text_cost(value) - _text_cost(node.value)
            node.value = value
        if comment is not None:
            self._text_bytes += len(comment) - len(node.comment)
            node.comment = comment

    def _add_node(self, node: _Node) -> None:
        if node.path not in self._nodes:
            self._text_bytes += len(node.path)
        self._nodes[node.path] = node

    def _del_node(self, node: _Node) -> None:
        del self._nodes[node.path]
        self._text_bytes -= len(node.path) + _text_cost(node.value) + len(node.comment)

    def _check_length(self, text: str, what: str) -> None:
        limit = self.max_value_bytes
        # len(text) bounds the UTF-8 length from below and len*4 from above: encode only if needed.
        if len(text) > limit or (len(text) * 4 > limit
                                 and len(text.encode("utf-8", "surrogatepass")) > limit):
            raise StatServError(TOOLONG, "%s longer than %d bytes" % (what, limit))

    def _make_parents(self, path: str, now: float, new_leaf: bool) -> None:
        """Create every missing directory above `path`; NOTDIR if an ancestor is an object.

        Checks all limits before creating anything, so a failure leaves the tree unchanged."""
        missing: List[str] = []
        ancestor = _parent_of(path)
        while ancestor is not None:
            node = self._nodes.get(ancestor)
            if node is not None and node.kind == _KIND_DIR:
                break
            if node is not None and node.kind == _KIND_OBJECT:
                raise StatServError(NOTDIR, "%s is not a directory" % ancestor)
            missing.append(ancestor)
            ancestor = _parent_of(ancestor)
        self._check_room(sum(1 for p in missing if p not in self._nodes) + (1 if new_leaf else 0))
        for directory in reversed(missing):
            self._link(self._nodes.get(directory) or _Node(directory, _KIND_DIR), _KIND_DIR)
            self._changed(self._nodes[directory], now)

    def _parent(self, node: _Node) -> _Node:
        """The directory `node` is an entry of; the root is nobody's entry (ISDIR, never linked or
        unlinked)."""
        if node.parent_path is None:
            raise StatServError(ISDIR, "/ is the root directory")
        return self._nodes[node.parent_path]

    def _link(self, node: _Node, kind: str) -> None:
        """Make `node` an existing entry of `kind`, in the dict and its directory's children."""
        node.kind = kind
        if kind == _KIND_DIR:
            node.children = {}
            self._set_text(node, NONEXISTENT, set_value=True)
        else:
            self._set_text(node, UNDEFINED, set_value=True)
        self._add_node(node)
        parent = self._parent(node)
        node.parent_path = parent.path  # share the parent's string rather than keep a copy
        _entries(parent)[node.name] = node

    def _create_object(self, path: str, now: float) -> _Node:
        """An UNDEFINED object at `path` (a placeholder there is reused); no change is reported yet."""
        node = self._nodes.get(path)
        if node is not None and node.kind == _KIND_DIR:
            raise StatServError(ISDIR, "%s is a directory" % path)
        self._make_parents(path, now, new_leaf=node is None)
        node = node or _Node(path, _KIND_OBJECT)
        node.type_name = TYPE_STRING
        self._link(node, _KIND_OBJECT)
        return node

    def touch(self, path: str, now: float, *, owner: Any = None, comment: Optional[str] = None,
              lifetime: Optional[float] = None, autoexpire: Optional[bool] = None,
              type_name: Optional[str] = None) -> None:
        """Create the object (UNDEFINED, parents too) if absent, update the given attributes, and
        hold it for `owner`. `autoexpire` True sets the object's AUTOEXPIRE flag and makes `owner`
        (if any) the one whose release expires it; False clears both; None leaves them."""
        path = self._normalized(path)
        self._refuse_mounted(path)
        if type_name is not None and type_name not in TYPE_NAMES:
            raise StatServError(TYPE, "unknown type %r (string, int, float, bool)" % type_name)
        if comment is not None:
            self._check_length(comment, "comment")
        node = self._nodes.get(path)
        if path == "/" or (node is not None and node.kind == _KIND_DIR):
            raise StatServError(ISDIR, "%s is a directory" % path)
        created = node is None or node.kind == _KIND_PLACEHOLDER
        if node is not None and not created and type_name is not None \
                and type_name != node.type_name and type(node.value) is not ValueWord:
            raise StatServError(TYPE, "%s holds a %s" % (path, node.type_name))
        if node is None or created:
            node = self._create_object(path, now)
        if type_name is not None:
            node.type_name = type_name
        if comment is not None:
            self._set_text(node, comment=comment)
        if lifetime is not None:
            node.lifetime = lifetime
            node.group = None  # a client's own lifetime replaces the daemon's shared one
            if node.value is not EXPIRED:
                self._start_lifetime(node, now)
        if autoexpire is not None:
            self._set_autoexpire(node, autoexpire, owner)
        if created:
            self._changed(node, now)
        elif (comment is not None or lifetime is not None or type_name is not None
              or autoexpire is not None):
            self._bump_revision(node, now)
        if owner is not None:
            self._hold(node, owner)

    def _set_autoexpire(self, node: _Node, autoexpire: bool, owner: Any) -> None:
        previous = node.autoexpire_owner
        if previous is not None and (not autoexpire or (owner is not None and owner is not previous)):
            paths = self._autoexpire_by_owner.get(previous)
            if paths is not None:
                paths.discard(node.path)
            node.autoexpire_owner = None
        node.autoexpire = autoexpire
        if autoexpire and owner is not None:
            node.autoexpire_owner = owner
            self._autoexpire_by_owner.setdefault(owner, set()).add(node.path)

    def touch_dir(self, path: str, now: float, *, owner: Any = None,
                  comment: Optional[str] = None) -> None:
        """Create the directory and its parents if absent, set its comment, hold it for `owner`."""
        path = self._normalized(path)
        self._refuse_mounted(path)
        if comment is not None:
            self._check_length(comment, "comment")
        node = self._nodes.get(path)
        if node is not None and node.kind == _KIND_OBJECT:
            raise StatServError(EXISTS, "%s is an object" % path)
        if node is None or node.kind == _KIND_PLACEHOLDER:
            self._make_parents(path, now, new_leaf=node is None)
            node = node or _Node(path, _KIND_DIR)
            self._link(node, _KIND_DIR)
            self._set_text(node, comment=comment or "")
            self._changed(node, now)
        elif comment is not None and comment != node.comment:
            self._check_bytes(len(comment) - len(node.comment))
            self._set_text(node, comment=comment)
            self._bump_revision(node, now)
        if owner is not None:
            self._hold(node, owner)

    def _hold(self, node: _Node, owner: Any) -> None:
        if node.holders is _NO_HOLDERS:
            node.holders = set()
        node.holders.add(owner)
        self._held_by_owner.setdefault(owner, set()).add(node.path)

    # -- values --------------------------------------------------------------------------------

    def put(self, path: str, text: str, now: float, *, lifetime: Optional[float] = None) -> None:
        """Update an existing object from text, converted to its type (TYPE if it does not fit)."""
        self._refuse_mounted(self._normalized(path))
        node = self._object(path)
        self._check_length(text, "value")
        self._check_bytes(len(text) - _text_cost(node.value))
        node.group = None  # a client's PUT: its own lifetime from now on
        self._store(node, _parse_typed(text, node.type_name), now, lifetime)

    def set_value(self, path: str, value: Any, now: float, *, lifetime: Optional[float] = None,
                  comment: Optional[str] = None, group: Optional[LifetimeGroup] = None) -> None:
        """The daemon's publish: create parents and object if absent; the type follows the Python
        value (str, int, float, bool). An unchanged value only refreshes the lifetime. With a
        `group`, the lifetime ends at the group's deadline, which the caller keeps up to date."""
        node = self._nodes.get(path)
        if node is None or node.kind != _KIND_OBJECT:  # slow path: normalize, create
            path = self._normalized(path)
            self._refuse_mounted(path)
            node = self._nodes.get(path)
            if node is None or node.kind != _KIND_OBJECT:
                node = self._create_object(path, now)
        type_name = _type_of_python(value)
        if type_name == TYPE_STRING:
            self._check_length(value, "value")
        elif type_name == TYPE_FLOAT and not math.isfinite(value):
            raise StatServError(TYPE, "%r is not a finite number" % value)
        if comment is not None and comment != node.comment:
            self._check_length(comment, "comment")
            self._set_text(node, comment=comment)
            self._bump_revision(node, now)
        node.type_name = type_name
        node.group = group
        self._store(node, value, now, lifetime)

    def _store(self, node: _Node, value: Any, now: float, lifetime: Optional[float]) -> None:
        if lifetime is not None:
            node.lifetime = lifetime
        self._start_lifetime(node, now)
        old = node.value
        if type(old) is type(value) and old == value:
            return  # same value: a refresh, not a change
        self._set_text(node, value, set_value=True)
        self._changed(node, now)

    def _start_lifetime(self, node: _Node, now: float) -> None:
        if not node.lifetime:
            node.deadline = None
            return
        deadline = node.group.deadline if node.group is not None else now + node.lifetime
        node.deadline = deadline
        # A later deadline needs no new entry: the pending one re-queues itself when it comes due.
        if node.timer_seq is None or node.timer_at is None or deadline < node.timer_at:
            self._schedule(node, deadline)

    def _expire(self, node: _Node, now: float) -> None:
        node.deadline = None
        if node.value is not EXPIRED:
            self._set_text(node, EXPIRED, set_value=True)
            self._changed(node, now)

    # -- removal -------------------------------------------------------------------------------

    def remove(self, path: str, now: float) -> None:
        """Remove an object; if anyone holds it, a NONEXISTENT placeholder stays."""
        self._refuse_mounted(self._normalized(path))
        self._unlink(self._object(path), now)

    def remove_dir(self, path: str, now: float) -> None:
        """Remove an empty directory (NOTEMPTY otherwise; the root: DENIED)."""
        self._refuse_mounted(self._normalized(path))
        node = self._directory(path)
        if node.path == "/" or node.path == self._mount_path:
            raise StatServError(DENIED, "cannot remove %s" % node.path)
        if node.children:
            raise StatServError(NOTEMPTY, "%s is not empty" % path)
        self._unlink(node, now)

    def remove_subtree(self, path: str, now: float) -> int:
        """Remove `path` and everything under it (the root itself stays); an absent path is fine.

        Returns the number of data objects removed (directories not counted)."""
        path = self._normalized(path)
        self._refuse_mounted(path)
        if path == self._mount_path:
            raise StatServError(DENIED, "cannot remove %s" % path)
        node = self._nodes.get(path)
        if node is None or node.kind == _KIND_PLACEHOLDER:
            return 0
        preorder: List[_Node] = []
        stack = [node]
        while stack:
            current = stack.pop()
            preorder.append(current)
            if current.kind == _KIND_DIR:
                stack.extend(_entries(current).values())
        removed_objects = 0
        for current in reversed(preorder):  # children before their directory
            if current.path == "/":
                continue
            if current.kind == _KIND_OBJECT:
                removed_objects += 1
            self._unlink(current, now)
        return removed_objects

    def _unlink(self, node: _Node, now: float) -> None:
        del _entries(self._parent(node))[node.name]
        node.children = None
        self._set_text(node, NONEXISTENT, comment="", set_value=True)
        node.lifetime = 0.0
        node.deadline = None
        node.group = None
        self._set_autoexpire(node, False, None)  # its owner's leaving no longer concerns this name
        node.type_name = TYPE_STRING
        if node.holders or node.monitors:
            node.kind = _KIND_PLACEHOLDER
        else:
            self._del_node(node)
            node.timer_seq = None
        self._changed(node, now)

    def _free_if_unheld(self, node: _Node) -> None:
        if node.kind == _KIND_PLACEHOLDER and not node.holders and not node.monitors:
            if self._nodes.get(node.path) is node:
                self._del_node(node)
            elif self._anchors.get(node.path) is node:
                del self._anchors[node.path]
                top = self._top_of(node.path)
                paths = self._anchors_by_top.get(top)
                if paths is not None:
                    paths.discard(node.path)
                    if not paths:
                        del self._anchors_by_top[top]

    # -- owners --------------------------------------------------------------------------------

    def holds_anything(self, owner: Any) -> bool:
        """True while `owner` has monitors, traces, held entries or AUTOEXPIRE objects."""
        return bool(self._monitors_by_subscriber.get(owner) or self._held_by_owner.get(owner)
                    or self._autoexpire_by_owner.get(owner) or owner in self.tracers)

    def autoexpire_paths(self, owner: Any) -> List[str]:
        """The objects that expire when `owner` is released."""
        return sorted(self._autoexpire_by_owner.get(owner, ()))

    def expire(self, path: str, now: float) -> None:
        """Makes an object EXPIRED now (replaying an auto-expire whose owner is gone); its
        AUTOEXPIRE flag stays."""
        self._refuse_mounted(self._normalized(path))
        node = self._object(path)
        node.deadline = None
        node.autoexpire_owner = None
        self._expire(node, now)

    def release_owner(self, owner: Any, now: float) -> None:
        """Everything `owner` held is let go (its monitors end, unheld placeholders are freed) and
        the objects it TOUCHed with AUTOEXPIRE become EXPIRED (they keep the flag, with no owner)."""
        for mon in self._monitors_by_subscriber.pop(owner, {}).values():
            self._drop_monitor(mon)
        self._changed_by_subscriber.pop(owner, None)
        for path in self._held_by_owner.pop(owner, ()):
            node = self._nodes.get(path)
            if node is not None:
                if node.holders:
                    node.holders.discard(owner)
                self._free_if_unheld(node)
        for path in self._autoexpire_by_owner.pop(owner, ()):
            node = self._nodes.get(path)
            if node is not None and node.autoexpire_owner is owner:
                node.autoexpire_owner = None
                self._expire(node, now)
        self.tracers.discard(owner)

    # -- monitors ------------------------------------------------------------------------------

    def monitor(self, path: str, subscriber: Any, now: float, *, deadband: float = 0.0,
                min_period: float = 0.0) -> Any:
        """Start (or re-configure) `subscriber`'s monitor on an object or directory and return its
        current value: the value, a word (NONEXISTENT for a new placeholder) or DIRECTORY.

        Starting a monitor counts as a collect: the next change notifies. Re-issuing it replaces
        both options at once (one not given is 0): a shorter MINPERIOD shortens the quiet period
        already running. `deadband` (>= 0) applies to a numeric object, or to each numeric entry
        of a directory (from the value last reported for that entry); on an object of type string
        or bool it cannot apply and is refused (TYPE). `min_period` in seconds."""
        self._catch_up(now)
        path = self._normalized(path)
        node = self._nodes.get(path)
        if deadband > 0:
            self._check_deadband_applies(path, node)
        if node is None and path.startswith(self._mount_below):
            node = self._anchors.get(path)
            if node is None:
                self._check_room(1)
                node = self._anchors[path] = _Node(path, _KIND_PLACEHOLDER)
                node.value = self._view_value(path)
                if node.value is DIRECTORY:
                    node.children = self._view.children(path)
                self._anchors_by_top.setdefault(self._top_of(path), set()).add(path)
        if node is None:
            ancestor = _parent_of(path)
            while ancestor is not None:
                existing = self._nodes.get(ancestor)
                if existing is not None and existing.kind == _KIND_OBJECT:
                    raise StatServError(NOTDIR, "%s is not a directory" % ancestor)
                if existing is not None and existing.kind == _KIND_DIR:
                    break
                ancestor = _parent_of(ancestor)
            self._check_room(1)
            node = _Node(path, _KIND_PLACEHOLDER)
            self._add_node(node)
        monitors = self._monitors_by_subscriber.setdefault(subscriber, {})
        mon = monitors.get(path)
        if mon is None:
            mon = _Monitor(subscriber, path, deadband, min_period)
            monitors[path] = mon
            if node.monitors is _NO_MONITORS:
                node.monitors = {}
            node.monitors[subscriber] = mon
            self._monitor_count += 1
        else:
            mon.deadband = deadband
            mon.min_period = min_period
            mon.quiet_until = mon.notified_at + min_period  # the new period, from now on
            pending = self._changed_by_subscriber.get(subscriber)
            if pending:
                pending.pop(path, None)
        self._collect_monitor(mon, now)
        # The answer reports every entry of a directory: each numeric one is the deadband's base.
        mon.reported_entries = {name: value for name, value in self._entry_values(node).items()
                                if _is_number(value)} if deadband > 0 else {}
        if node.kind == _KIND_PLACEHOLDER and path.startswith(self._mount_below):
            return node.value  # an anchor: the view's value, DIRECTORY, or NONEXISTENT
        return DIRECTORY if node.kind == _KIND_DIR else node.value

    def _check_deadband_applies(self, path: str, node: Optional[_Node]) -> None:
        """TYPE unless DEADBAND can apply to `path`: a directory, a name that does not exist yet,
        or an int/float object (CFHT: a deadband on integer and float objects)."""
        if path.startswith(self._mount_below):
            value = self._view_value(path)
            if type(value) is ValueWord or value is DIRECTORY or _is_number(value):
                return
            type_name = _type_of_python(value)
        elif node is None or node.kind != _KIND_OBJECT or node.type_name in (TYPE_INT, TYPE_FLOAT):
            return
        else:
            type_name = node.type_name
        raise StatServError(TYPE, "DEADBAND applies to int and float objects; %s is a %s"
                            % (path, type_name))

    def _entry_values(self, node: _Node) -> Dict[str, Any]:
        """A monitored directory's {name: value} (DIRECTORY for a subdirectory); {} otherwise."""
        path = node.path
        if path == self._mount_path or path.startswith(self._mount_below):
            if path == self._mount_path or self._view_value(path) is DIRECTORY:
                return self._view.children(path) or {}
            return {}
        if node.kind != _KIND_DIR:
            return {}
        return {name: DIRECTORY if child.kind == _KIND_DIR else child.value
                for name, child in _entries(node).items()}

    def unmonitor(self, path: str, subscriber: Any) -> None:
        """Stop `subscriber`'s monitor on `path` (NONEXISTENT if there is none)."""
        path = self._normalized(path)
        mon = self._monitors_by_subscriber.get(subscriber, {}).pop(path, None)
        if mon is None:
            raise StatServError(NONEXISTENT_CODE, "%s is not monitored" % path)
        pending = self._changed_by_subscriber.get(subscriber)
        if pending:
            pending.pop(path, None)
        self._drop_monitor(mon)

    def _drop_monitor(self, mon: _Monitor) -> None:
        mon.active = False
        mon.timer_seq = None
        self._monitor_count -= 1
        node = self._monitored_node(mon.path)
        if node is not None and node.monitors.get(mon.subscriber) is mon:
            del node.monitors[mon.subscriber]
            self._free_if_unheld(node)

    def monitored_paths(self, subscriber: Any) -> List[str]:
        """The paths `subscriber` monitors, sorted."""
        return sorted(self._monitors_by_subscriber.get(subscriber, ()))

    def collect(self, subscriber: Any, path: Optional[str] = None,
                now: float = 0.0) -> List[Tuple[str, Any]]:
        """Take `subscriber`'s uncollected changes: for `path` only, or all of them (UPDATES).

        Returns (absolute path, latest value) pairs; a directory monitor yields each changed entry
        (a directory's value is DIRECTORY, a vanished entry's NONEXISTENT). Collecting re-arms the
        monitor: its next change calls notify() again (subject to MINPERIOD)."""
        self._catch_up(now)
        pending = self._changed_by_subscriber.get(subscriber)
        if path is None:
            if not pending:
                return []
            monitors = list(pending.values())
            del self._changed_by_subscriber[subscriber]
        else:
            path = self._normalized(path)
            mon = self._monitors_by_subscriber.get(subscriber, {}).get(path)
            if mon is None:
                return []
            if pending:
                pending.pop(path, None)
            monitors = [mon]
        collected: List[Tuple[str, Any]] = []
        seen: Set[str] = set()
        for mon in monitors:
            for changed_path, value in self._collect_monitor(mon, now):
                # An object monitored itself and through its directory is reported once.
                if changed_path not in seen:
                    seen.add(changed_path)
                    collected.append((changed_path, value))
        return collected

    def _collect_monitor(self, mon: _Monitor, now: float) -> List[Tuple[str, Any]]:
        names = sorted(mon.changed_names)
        mon.changed_names = set()
        mon.notified = False
        node = self._monitored_node(mon.path)
        mon.reported = node.value if node is not None else NONEXISTENT
        collected = [(mon.path if name == "" else _join(mon.path, name),
                      self._reported_value(mon.path if name == "" else _join(mon.path, name)))
                     for name in names]
        if mon.deadband > 0:
            entries = mon.reported_entries
            for name, (_, value) in zip(names, collected):
                if name:
                    if _is_number(value):
                        entries[name] = value
                    else:
                        entries.pop(name, None)
        return collected

    def _reported_value(self, path: str) -> Any:
        if path.startswith(self._mount_below):
            return self._view_value(path)
        node = self._nodes.get(path)
        if node is None:
            return NONEXISTENT
        return DIRECTORY if node.kind == _KIND_DIR else node.value

    # -- changes -------------------------------------------------------------------------------

    def _bump_revision(self, node: _Node, now: float) -> None:
        self.revision += 1
        node.revision = self.revision
        node.mtime = wall_of(now)  # shown and kept: the wall clock

    def _changed(self, node: _Node, now: float) -> None:
        """Record a change of `node` and tell its monitors and its directory's monitors."""
        self._bump_revision(node, now)
        if node.monitors:
            for mon in list(node.monitors.values()):
                self._monitor_saw(mon, "", node, now)
        parent = self._nodes.get(node.parent_path) if node.parent_path is not None else None
        if parent is not None and parent.monitors:
            for mon in list(parent.monitors.values()):
                self._monitor_saw(mon, node.name, node, now)

    def _monitor_saw(self, mon: _Monitor, name: str, node: _Node, now: float) -> None:
        if mon.deadband > 0:
            if name == "":
                value, reported = node.value, mon.reported
            else:  # an entry of a monitored directory, against its own last reported value
                value = self._reported_value(_join(mon.path, name))
                reported = mon.reported_entries.get(name)
            if _is_number(value) and _is_number(reported) and abs(value - reported) < mon.deadband:
                return  # within the deadband of what the subscriber last saw: not a change
        if not mon.changed_names:
            self._changed_by_subscriber.setdefault(mon.subscriber, {})[mon.path] = mon
        mon.changed_names.add(name)
        if mon.notified:
            return  # coalesced: the subscriber has been told and will collect the latest
        if now >= mon.quiet_until:
            self._notify(mon, now)
        elif mon.timer_seq is None or mon.timer_at is None or mon.quiet_until < mon.timer_at:
            # No timer yet, or one set for a longer quiet period than a re-configured MINPERIOD
            # now gives (that entry is left to lapse: its sequence number no longer matches).
            self._schedule(mon, mon.quiet_until)

    def _notify(self, mon: _Monitor, now: float) -> None:
        mon.notified = True
        mon.notified_at = now
        mon.quiet_until = now + mon.min_period
        mon.subscriber.notify(mon.path)

    # -- time ----------------------------------------------------------------------------------

    def _schedule(self, target: Any, when: float) -> None:
        seq = next(self._timer_seqs)
        target.timer_at = when
        target.timer_seq = seq
        heapq.heappush(self._timers, (when, seq, target))
        # Entries of removed nodes linger until due; rebuild if they come to dominate the heap.
        if len(self._timers) > 1024 and len(self._timers) > 4 * (len(self._nodes) + self._monitor_count):
            self._timers = [entry for entry in self._timers if entry[2].timer_seq == entry[1]]
            heapq.heapify(self._timers)

    def _due_time(self, target: Any) -> Optional[float]:
        """When `target` needs attention now, or None if it no longer does."""
        if isinstance(target, _Node):
            if self._nodes.get(target.path) is not target or target.kind != _KIND_OBJECT:
                return None
            if target.group is not None and target.deadline is not None:
                return target.group.deadline
            return target.deadline
        if target.active and target.changed_names and not target.notified:
            return target.quiet_until
        return None

    def _live_top(self) -> Optional[Tuple[float, Any]]:
        """The earliest entry that still needs attention, dropping dead ones. Its time may be
        earlier than the target's real due time (a lifetime extended since it was queued): the
        caller then wakes a little early and `expire_due` re-queues it — once per postponement
        that actually comes due, never a sweep over every postponed entry."""
        timers = self._timers
        while timers:
            when, seq, target = timers[0]
            if target.timer_seq == seq and self._due_time(target) is not None:
                return when, target
            heapq.heappop(timers)
            if target.timer_seq == seq:
                target.timer_seq = target.timer_at = None
        return None

    def next_deadline(self) -> Optional[float]:
        """The earliest time at which expire_due may have something to do, or None."""
        top = self._live_top()
        return top[0] if top is not None else None

    def expire_due(self, now: float) -> int:
        """Expire every object whose lifetime has run out and send the notifications whose
        MINPERIOD has ended, both due at `now`. Returns the number of objects expired."""
        expired = 0
        while True:
            top = self._live_top()
            if top is None or top[0] > now:
                return expired
            heapq.heappop(self._timers)
            target = top[1]
            target.timer_seq = target.timer_at = None
            due = self._due_time(target)
            if due is not None and due > now:  # postponed since it was queued
                self._schedule(target, due)
            elif isinstance(target, _Node):
                self._expire(target, now)
                expired += 1
            else:
                self._notify(target, now)

    def _catch_up(self, now: float) -> None:
        if self._timers and self._timers[0][0] <= now:
            self.expire_due(now)

    # -- snapshots (durability) --------------------------------------------------------------

    def export_entries(self, skip: Tuple[str, ...] = (),
                       now: Optional[float] = None) -> List[Dict[str, Any]]:
        """Every directory and object with all its attributes, parents first, as JSON-able dicts.
        `mtime` is wall time; a `deadline` is given as the wall time it falls at seen from `now`
        (None: as held, for a tree whose `now` is one clock).

        Entries under a path in `skip` (and their directories) are left out: the daemon rebuilds
        /drives and /dsm from its own records. Holders and monitors are not exported: they belong
        to connections, which do not survive a restart; "owned" says an AUTOEXPIRE object's owner
        was connected (so it reads EXPIRED after a restart), "autoexpire" is the flag itself."""
        root = self._nodes["/"]
        # The root too, when a client gave it a comment: STAT / shows it after a restart.
        entries: List[Dict[str, Any]] = [] if not root.revision else [
            {"path": "/", "dir": True, "comment": root.comment, "mtime": root.mtime,
             "revision": root.revision}]
        for node in self._walk():
            if any(node.path == prefix or node.path.startswith(prefix + "/") for prefix in skip):
                continue
            if node.kind == _KIND_DIR:
                entries.append({"path": node.path, "dir": True, "comment": node.comment,
                                "mtime": node.mtime, "revision": node.revision})
                continue
            value = node.value
            deadline = node.deadline
            if deadline is not None and now is not None:
                deadline = wall_deadline(deadline, now)
            entry: Dict[str, Any] = {
                "path": node.path, "type": node.type_name, "comment": node.comment,
                "lifetime": node.lifetime, "deadline": deadline, "mtime": node.mtime,
                "autoexpire": node.autoexpire, "owned": node.autoexpire_owner is not None,
                "revision": node.revision,
            }
            if type(value) is ValueWord:
                entry["word"] = str(value)
            else:
                entry["value"] = value
            entries.append(entry)
        return entries

    def import_entries(self, entries: List[Dict[str, Any]], now: float) -> None:
        """Recreates exported entries with every attribute STAT shows (time and revision too).
        Lifetimes keep the (wall) deadlines they had, mapped onto `now`'s monotonic scale with at
        most the object's LIFETIME left; auto-expire objects whose owner was connected come back
        EXPIRED, since that connection is gone, and keep their AUTOEXPIRE flag. (An older
        snapshot without "owned" meant by "autoexpire" an owned object.)"""
        nodes = self._nodes
        # Changes made now (an owned object expiring) number above every revision restored.
        saved = [entry.get("revision") for entry in entries]
        self.revision = max([self.revision] + [r for r in saved if type(r) is int])
        owned: List[_Node] = []
        # host_clock.restored_moment and monotonic_deadline, inlined: a restore runs this loop
        # for every object (100,000: a Python call each cost ~0.2 s).
        mono_now, wall_now = float(now), wall_of(now)
        for entry in entries:
            path = entry["path"]
            mtime = entry.get("mtime")
            if mtime is None:
                at = now
            else:
                at = _new_float(Moment, mono_now - (wall_now - mtime if wall_now > mtime else 0.0))
                at.wall = mtime
            if entry.get("dir"):
                self.touch_dir(path, at, comment=entry.get("comment", ""))
                directory = nodes.get(self._normalized(path))
                if directory is not None and mtime is not None:
                    directory.mtime = mtime  # an existing directory (the root) too
                self.restore_revision(path, entry.get("revision"))
                continue
            node = self._import_new_object(path, entry, at) if path not in nodes else None
            if node is None:  # not the plain case: every check of touch()
                self.touch(path, at, comment=entry.get("comment", ""),
                           type_name=entry.get("type", TYPE_STRING))
                node = nodes[path]
            word = entry.get("word")
            if word is not None:
                self._set_text(node, _WORDS.get(word, UNDEFINED), set_value=True)
            else:
                self._set_text(node, entry["value"], set_value=True)
            node.lifetime = float(entry.get("lifetime") or 0.0)
            deadline = entry.get("deadline")
            node.autoexpire = bool(entry.get("autoexpire"))
            if deadline is not None and node.value is not EXPIRED:
                remaining = float(deadline) - wall_now
                if 0 < node.lifetime < remaining:
                    remaining = node.lifetime  # never more than its LIFETIME left
                node.deadline = mono_now + remaining
                self._schedule(node, node.deadline)
            node.mtime = wall_of(at)
            self.restore_revision(path, entry.get("revision"))
            if entry.get("owned", node.autoexpire):
                owned.append(node)
        for node in owned:  # a change now: STAT's time and revision say when it expired
            node.deadline = None
            self._expire(node, now)
        self.expire_due(now)

    def restore_revision(self, path: str, revision: Optional[int]) -> None:
        """Give an entry back the revision it had before a restart (a snapshot's or a journal
        record's); the global revision never goes below it, so later changes number higher."""
        if revision is None:
            return
        node = self._nodes.get(self._normalized(path))
        if node is not None:
            node.revision = revision
        if revision > self.revision:
            self.revision = revision

    def _import_new_object(self, path: str, entry: Dict[str, Any], now: float) -> Optional[_Node]:
        """The restore's fast path for the plain case — a new object, normalized path in an
        existing directory outside the mount, known type, room left — doing what touch() does
        for it (same checks, same revision) without the general path's normalizing and
        parent-making; None when the case is not plain, for touch() to handle (and refuse)."""
        type_name = entry.get("type", TYPE_STRING)
        slash = path.rfind("/")
        parent = self._nodes.get(path[:slash] or "/") if slash >= 0 else None
        if parent is None or parent.kind != _KIND_DIR or type_name not in _TYPE_NAME_SET \
                or len(self._nodes) >= self.max_objects or path.startswith(self._mount_below) \
                or "//" in path or "/." in path or path[-1] == "/" or not _NAME_CHARS.match(path):
            return None
        comment = entry.get("comment", "")
        if comment:
            self._check_length(comment, "comment")
        self._check_room(1)  # as touch() checks it: entries and bytes
        node = _Node(path, _KIND_OBJECT)
        node.type_name = type_name
        node.value = UNDEFINED
        node.parent_path = parent.path
        self._nodes[path] = node
        self._text_bytes += len(path)
        _entries(parent)[node.name] = node
        if comment:
            self._set_text(node, comment=comment)
        self._changed(node, now)
        return node

    # -- SAVE ------------------------------------------------------------------------------------

    def _walk(self) -> Iterator[_Node]:
        """Every existing entry below the root, depth first, children sorted by name."""
        stack = [child for _, child in sorted(_entries(self._nodes["/"]).items(), reverse=True)]
        while stack:
            node = stack.pop()
            yield node
            if node.kind == _KIND_DIR:
                stack.extend(child for _, child in sorted(_entries(node).items(), reverse=True))

    def dump(self) -> str:
        """The whole store in CFHT's SAVE format, one object a line: `/path/name = value  # comment`.

        A directory gets a line of its own (`/path/dir/  # comment`) only when it has a comment or
        is empty; otherwise its objects imply it. Lifetimes, auto-expire and the type of an object
        without a valid value are not saved (CFHT's format has no place for them)."""
        lines: List[str] = []
        root = self._nodes["/"]
        if root.comment:
            lines.append("/  # " + escape_text(root.comment))
        for node in self._walk():
            comment = "  # " + escape_text(node.comment) if node.comment else ""
            if node.path == self._mount_path:
                derived = [path + " = " + format_saved_value(value)
                           for path, value in self._view.walk()]
                if node.comment or not derived:
                    lines.append(node.path + "/" + comment)
                lines.extend(derived)
            elif node.kind == _KIND_DIR:
                if node.comment or not node.children:
                    lines.append(node.path + "/" + comment)
            else:
                lines.append(node.path + " = " + format_saved_value(node.value) + comment)
        return "".join(line + "\n" for line in lines)

    @classmethod
    def load(cls, text: str, now: float = 0.0, **tree_options: Any) -> "Tree":
        """A new Tree holding what `text` (dump's format) describes. SYNTAX on a malformed line."""
        tree = cls(**tree_options)
        tree.restore(text, now)
        return tree

    def restore(self, text: str, now: float) -> None:
        """Add the objects and directories `text` (dump's format) describes to this tree."""
        for number, line in enumerate(text.split("\n"), 1):
            if line.endswith("\r"):
                line = line[:-1]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                self._restore_line(line, now)
            except StatServError as error:
                raise StatServError(error.code, "line %d: %s" % (number, error.text)) from None

    def _restore_line(self, line: str, now: float) -> None:
        path, _, rest = line.partition(" ")
        rest = " " + rest if rest else ""
        if path.endswith("/") and not rest.startswith(" = "):
            comment = _parse_saved_comment(rest)
            if path == "/":
                self._set_text(self._nodes["/"], comment=comment or "")
            else:
                self.touch_dir(path, now, comment=comment or "")
            return
        if not rest.startswith(" = "):
            raise StatServError(SYNTAX, "expected 'name = value'")
        value, rest = _parse_saved_value(rest[3:])
        comment = _parse_saved_comment(rest)
        if type(value) is ValueWord:
            if value is NONEXISTENT:
                return
            self.touch(path, now, comment=comment)
            node = self._object(path)
            self._set_text(node, value, set_value=True)
        else:
            self.set_value(path, value, now, comment=comment)


def _parse_saved_value(text: str) -> Tuple[Any, str]:
    """(value, rest of line) from the text after `name = `."""
    if text.startswith('"'):
        index = 1
        while True:
            index = text.find('"', index)
            if index < 0:
                raise StatServError(SYNTAX, "unterminated string")
            backslashes = 0
            while text[index - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2 == 0:
                return unescape_text(text[1:index]), text[index + 1:]
            index += 1
    token, _, _ = text.partition(" ")
    rest = text[len(token):]
    if token in ("TRUE", "FALSE"):
        return token == "TRUE", rest
    if token in _WORDS:
        return _WORDS[token], rest
    if _INT_TEXT.match(token):
        return int(token), rest
    if token and "_" not in token:
        try:
            number = float(token)
        except ValueError:
            pass
        else:
            if not math.isfinite(number):  # an older SAVE may hold inf/nan: not servable
                raise StatServError(TYPE, "%s is not a finite number" % token[:40])
            return number, rest
    raise StatServError(SYNTAX, "bad value %r" % token)


def _parse_saved_comment(text: str) -> Optional[str]:
    if not text.strip():
        return None
    stripped = text.lstrip(" ")
    if not stripped.startswith("#"):
        raise StatServError(SYNTAX, "unexpected text after the value: %r" % text[:40])
    comment = stripped[1:]
    if comment.startswith(" "):
        comment = comment[1:]
    return unescape_text(comment)
