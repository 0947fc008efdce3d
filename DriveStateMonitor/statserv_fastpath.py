"""The Status Server's fast path: plain GET / PUT / TOUCH lines, a received batch at a time.

Theory of operation
-------------------
Most Status Server traffic is programs pipelining `PUT name value`, `GET name` and `TOUCH name` on
names they use over and over. The general path (statserv_protocol) pays for generality on every
line: the framer cuts one line at a time out of a bytearray, the argument splitter and binder build
lists and dicts, %XX decoding, the Tree's methods normalize the path again and again, the journal
record is encoded with json.dumps, each reply is a str encoded on its own. This module handles the
same lines with the least work and hands every other line, unchanged and in its place, to the
general path (`session._handle_line`), so replies, notices and journal records stay in request
order:

- The batch is split once: every complete line of one read (`bytes.split`), the unfinished tail
  stays in the session's receive buffer for the general framer (which also owns TOOLONG of a line
  still growing and the discarding of an over-long one).
- A line is *plain* when it is exactly `GET name`, `TOUCH name` or `PUT name value`: the command in
  capitals, single spaces, no `%`, no quote, no tab, no `=` (no keyword, no option). A batch that
  holds none of those bytes is not searched per line; one that does has each line checked.
- Names are looked up whole: a per-session dict maps the name's bytes (under the current
  directory) to its normalized path and that path as JSON; it is emptied when the directory
  changes, and kept to `PATH_CACHE_SIZE` names. Names that need anything else (invalid, below
  the read-only mount) never enter it and go to the general path.
- Each command then applies the rules of the Tree's own method, in the same order, through the
  Tree's own helpers for everything that is not the common case: the object must exist (else the
  general path answers NONEXISTENT / ISDIR), the value fit `max_value_bytes` and the store budget
  (else TOOLONG / LIMIT there), a typed object's text parse as its type (else TYPE there); a
  lifetime restarts through `Tree._start_lifetime`, an actual change goes through `Tree._changed`
  (revision, monitors of the object and of its directory, their `@` notices), a GET catches up on
  expiries first and collects the reader's own monitor as `Tree.get`/`Tree.collect` do, a TOUCH
  holds the object for the session (use count). Because no state is changed before a line is
  known to succeed, "hand it to the general path" is always safe: it redoes the line from the
  start and answers exactly what it always did.
- The journal gets the record JournaledTree would write, built as bytes (the compact JSON that
  `json.dumps` gives, which `encode_record` takes as it is) and queued through the same
  `tree.record` hook, so it is written (and, under `--fsync always`, fsynced) once per loop pass
  before the pass's replies leave. When the journal refuses changes (`--fsync always` on a failing
  state dir) every line takes the general path, which refuses them as before.
- Replies are appended to the session's output buffer as they are made, so an `@` notice the
  session itself causes lands between the replies exactly where the general path puts it.
- TRACE: while anybody traces, every line takes the general path (it owes the tracers a `#` line).

The clock is read once per batch, and again after each line the general path handled: the lines of
one read are one instant, as they are for the daemon's other batched input.

tests/test_statserv_fastpath.py holds this module to the general path: random batches (plain and
not, valid and not, monitors, lifetimes, limits near full, split at every position) give the same
bytes, tree, journal records and notices with and without it.
"""

from __future__ import annotations

import re
from json.encoder import encode_basestring
from typing import Any, Callable, Dict, List, Optional, Tuple

from .host_clock import wall_of
from .statserv_tree import (TYPE_STRING, StatServError, _parse_typed, escape_text, names_directory,
                            resolve)

__all__ = ["PlainLines", "PATH_CACHE_SIZE"]

# Names remembered per session; past this the cache starts over (a client touring a huge tree
# costs a re-resolve per name, never unbounded memory).
PATH_CACHE_SIZE = 4096
# Longest name the cache takes (longer ones take the general path), so that a plain line's
# length is bounded without measuring it.
MAX_PLAIN_NAME = 1024

_OBJECT = "object"
# Bytes that make a line not plain somewhere in it (quote, %XX, tab, CR, keyword or option).
_SPECIAL_CHARS = b"%\"'\t\r="
_SPECIAL = re.compile(b"[" + re.escape(_SPECIAL_CHARS) + b"]")
_SPECIAL_BYTES = tuple(_SPECIAL_CHARS[i:i + 1] for i in range(len(_SPECIAL_CHARS)))
# What a plain name may hold: printable ASCII without space (resolve's rule) and none of _SPECIAL.
_PLAIN_NAME = re.compile(rb"[!#$&(-<>-~]+\Z")


class PlainLines:
    """One session's fast path. `receive(data)` handles every complete line of the session's
    receive buffer plus `data`; what it cannot handle plainly it passes to the session's general
    line handler, in order."""

    def __init__(self, session: Any, tree: Any, clock: Callable[[], float],
                 display: Callable[[Any], str]) -> None:
        self._session = session
        self._tree = tree
        self._clock = clock
        self._display = display  # statserv_protocol.display_value (no import cycle)
        self._paths: Dict[bytes, Tuple[str, bytes]] = {}
        self._paths_cwd: Optional[str] = None

    def receive(self, data: bytes) -> None:
        """Handle the complete lines; leave the unfinished tail in the session's receive buffer."""
        session = self._session
        end = data.rfind(b"\n")
        if end < 0:  # no line ends here: the general framer keeps count of the growing line
            session._inbox += data
            return
        inbox = session._inbox
        if inbox:
            end += len(inbox)
            data = bytes(inbox) + data
            session._inbox = bytearray()  # its lines are being handled: not there any more
        tail = data[end + 1:]
        lines = data[:end].split(b"\n")
        session._searched = 0
        rest = self._handle(lines, end > session._max_line, _holds_special(data, end))
        if rest is not None:  # SAVE waits or LOGOFF: the rest waits in the buffer
            tail = b"\n".join(rest) + b"\n" + tail
        session._inbox = bytearray(tail)

    def _path_entry(self, name: bytes) -> Optional[Tuple[str, bytes]]:
        """(normalized path, its JSON) for a plain name, or None if it needs the general path."""
        session = self._session
        if len(self._paths) >= PATH_CACHE_SIZE:
            self._paths = {}
        if len(name) > MAX_PLAIN_NAME or not _PLAIN_NAME.match(name) \
                or names_directory(name.decode("ascii")):
            return None  # a name ending in '/', '.' or '..' names a directory: the general rules
        try:
            path = resolve(name.decode("ascii"), session._cwd)
        except StatServError:
            return None
        if path.startswith(self._tree._mount_below):
            return None  # read-only mount: the Tree's view answers
        entry = (path, encode_basestring(path).encode("ascii"))
        self._paths[name] = entry
        return entry

    def _handle(self, lines: List[bytes], long_possible: bool, special: bool
                ) -> Optional[List[bytes]]:
        """Handle `lines` in order; the lines not handled (after SAVE waiting, LOGOFF) or None when
        all were.

        One loop with everything it touches in locals, PUT's rules written out in it rather than
        called: at a few hundred thousand lines a second, a call or an attribute lookup per line
        is a visible share of the whole cost."""
        session = self._session
        tree = self._tree
        nodes = tree._nodes
        monitors_of = tree._monitors_by_subscriber
        max_value = tree.max_value_bytes
        max_line = session._max_line
        # A line the fast path handles holds a cached name and a value of at most max_value
        # bytes: its length needs checking only when --max-line is below that.
        check_length = long_possible and max_line < 6 + MAX_PLAIN_NAME + max_value
        careful = special or check_length
        plain, paths, output, now, record = self._batch_state()
        touch_tail = put_tail = None  # the records' time parts: made when the first one needs them
        wall_now = wall_of(now)  # an object's mtime (shown): the wall clock of the batch's instant
        # Monitors come and go only through MONITOR/UNMONITOR (general lines, after which this is
        # read again) or a connection's end, which only removes them: read once, not per line.
        collects = bool(monitors_of.get(session))
        budget = tree.byte_budget  # set once by the daemon
        remaining = iter(lines)  # not enumerate: the place is needed only where handling stops
        for line in remaining:
            if plain and not (careful and (_SPECIAL.search(line) is not None
                                           or (check_length and len(line) > max_line))):
                command, _, name = line.partition(b" ")
                if command == b"GET":
                    entry = paths.get(name) or self._path_entry(name)
                    if entry is not None:
                        timers = tree._timers
                        if timers and timers[0][0] <= now:
                            tree.expire_due(now)  # as Tree.get: overdue expiries first
                        node = nodes.get(entry[0])
                        if node is not None and node.kind == _OBJECT:
                            value = node.value
                            if collects:
                                tree.collect(session, entry[0], now)  # reading collects
                            if type(value) is str:
                                if value.isalnum():  # nothing to escape: the common case
                                    output += b'. "%s"\n' % value.encode()
                                else:
                                    output += b'. "' + escape_text(value).encode(
                                        "utf-8", "backslashreplace") + b'"\n'
                            else:
                                output += (". " + self._display(value)).encode(
                                    "utf-8", "backslashreplace") + b"\n"
                            continue
                elif command == b"PUT":
                    # Tree.put's checks, in its order; any that fails leaves everything as it
                    # was, for the general path to answer (NONEXISTENT, ISDIR, TOOLONG, SYNTAX,
                    # LIMIT, TYPE).
                    name, _, value = name.partition(b" ")
                    entry = paths.get(name) or self._path_entry(name)
                    node = nodes.get(entry[0]) if entry is not None else None
                    # (32: a space; `int in bytes` is one memchr, `b" " in bytes` 8 x as long)
                    if entry is not None and node is not None and node.kind == _OBJECT and value \
                            and len(value) <= max_value and 32 not in value:
                        try:
                            text = value.decode()
                        except UnicodeDecodeError:
                            text = None
                        old = node.value
                        old_cost = len(old) if type(old) is str else 0
                        if text is not None and not (
                                budget is not None and len(text) > old_cost
                                and tree.byte_size + len(text) - old_cost > budget()):
                            new = text if node.type_name == TYPE_STRING \
                                else _typed_or_none(text, node.type_name)
                            if new is not None:
                                node.group = None
                                if node.lifetime:
                                    tree._start_lifetime(node, now)
                                else:
                                    node.deadline = None
                                if type(old) is not type(new) or old != new:
                                    grown = (len(new) if type(new) is str else 0) - old_cost
                                    if grown:  # (an attribute store less when the size holds)
                                        tree._text_bytes += grown
                                    node.value = new
                                    if tree._monitor_count and (node.monitors or _monitored(
                                            nodes.get(node.parent_path))):
                                        tree._changed(node, now)
                                    else:  # Tree._changed with nobody to tell
                                        revision = tree.revision + 1
                                        tree.revision = node.revision = revision
                                        node.mtime = wall_now
                                if record is not None:
                                    if put_tail is None:
                                        touch_tail, put_tail = _record_tails(now)
                                    # put_tail opens with the value's closing quote
                                    record(b'["tp",%s,"%s%s%d]' % (
                                        entry[1], value, put_tail, node.revision)
                                           if value.isalnum() else b'["tp",%s,%s%s%d]' % (
                                               entry[1], encode_basestring(text).encode(),
                                               put_tail[1:], node.revision))
                                output += b".\n"
                                continue
                elif command == b"TOUCH":
                    entry = paths.get(name) or self._path_entry(name)
                    node = nodes.get(entry[0]) if entry is not None else None
                    if entry is not None and node is not None and node.kind == _OBJECT:  # else: create...
                        if session not in node.holders:
                            tree._hold(node, session)  # the use count
                        if record is not None:
                            if touch_tail is None:
                                touch_tail, put_tail = _record_tails(now)
                            record(b'["tt",%s%s%d]' % (entry[1], touch_tail, node.revision))
                        output += b".\n"
                        continue
            # Not plain, or not the common case: the general path, exactly as its framer would.
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > max_line:
                session._reply_error("TOOLONG", "line longer than %d bytes" % max_line)
            else:
                session._handle_line(line)
            if session._closing or session._waiting:
                return list(remaining)
            # It may have changed anything: the directory, TRACE, the journal's state, the time.
            plain, paths, output, now, record = self._batch_state()
            touch_tail = put_tail = None
            wall_now = wall_of(now)
            collects = bool(monitors_of.get(session))
        return None

    def _batch_state(self) -> Tuple[bool, Dict[bytes, Tuple[str, bytes]], bytearray, float,
                                    Optional[Callable[[bytes], None]]]:
        """What the loop keeps in locals: whether lines may take the fast path at all (not while
        anybody traces or the journal refuses changes), the name cache of the current directory,
        the output buffer, the time, and where journal records go (_record_sink)."""
        session = self._session
        tree = self._tree
        if self._paths_cwd != session._cwd:
            self._paths = {}
            self._paths_cwd = session._cwd
        refusing = getattr(tree, "refusing", None)
        plain = not tree.tracers and not (getattr(tree, "record", None) is not None
                                          and refusing is not None and refusing() is not None)
        return plain, self._paths, session._output, self._clock(), _record_sink(tree)


def _record_tails(now: float) -> Tuple[bytes, bytes]:
    """The middles of TOUCH's and PUT's journal records at `now`, as json.dumps writes them, up to
    the entry's revision that ends each (store_state.JournaledTree): TOUCH's from the (wall) time
    on, PUT's from the value's closing quote on."""
    now_json = repr(float(wall_of(now))).encode("ascii")
    return b"," + now_json + b",null,null,false,null,null,", b'",' + now_json + b",null,"


def _record_sink(tree: Any) -> Optional[Callable[[bytes], None]]:
    """What this batch's journal records (JSON bytes) go through: the tree's `record` hook, or
    where that is the journal's own `record`, the journal's `appender()` (its queue's append
    itself while it keeps records: one Python call less per change). Read again after every
    line the general path handles, which may change the journal's state."""
    record = getattr(tree, "record", None)
    appender = getattr(getattr(record, "__self__", None), "appender", None)
    return appender() if appender is not None else record


def _holds_special(data: bytes, end: int) -> bool:
    """True if `data[:end]` holds a byte of _SPECIAL: one memchr per byte over a whole batch is
    20 x faster than the regular expression's search (0.002 against 0.04 us a line)."""
    if end < 128:  # a line or two (one at a time): one search costs less than six calls
        return _SPECIAL.search(data, 0, end) is not None
    find = data.find
    for byte in _SPECIAL_BYTES:
        if find(byte, 0, end) >= 0:
            return True
    return False


def _monitored(node: Any) -> bool:
    return node is not None and bool(node.monitors)


def _typed_or_none(text: str, type_name: str) -> Any:
    """PUT's text as a value of `type_name` (Tree's own conversion), or None if it does not fit."""
    try:
        return _parse_typed(text, type_name)
    except StatServError:
        return None
