"""The Status Server's line protocol, sans-IO: one StatServSession per connection.

Theory of operation
-------------------
The data flow, in one pass: the loop hands received bytes to `receive_data`; the line framer cuts
complete lines out of the receive buffer; each line is split into arguments (quotes first, then %XX
decoding of each argument, so `%20` is a space inside a value and never a separator); the command's
handler calls the Tree; the response lines go to the output buffer, which the loop drains with
`data_to_send` once per pass — pipelined requests cost one send, and responses stay in request order
because lines are handled one after the other.

Unsolicited lines come from outside `receive_data`: the Tree calls `notify(path)` (this session is the
subscriber of its monitors) when a monitored object first changes after it was last collected, and
other sessions append `#` lines for TRACE. Both append to the output buffer and call `on_output` so
the loop knows there is something to flush. The Tree coalesces notifications until they are
collected, so a slow client costs at most one `@` line per monitored name, never a queue.

Framing limits: a line longer than `max_line` is answered with one `! TOOLONG` and the rest of it is
discarded up to its newline while keeping nothing, so memory stays bounded. The framer remembers how
far it has already searched for a newline, so a line dripped in byte by byte costs O(n), not O(n^2)
(h11 does the same, for the same denial-of-service reason).

Names: `%2F` in a NAME or PATH argument is refused before decoding (an encoded separator is not a
separator, and a component cannot hold '/'); a name ending in '/' (or in a '.'/'..' component) names
a directory, so it fails NOTDIR where it names an object and ISDIR in TOUCH (`_path`). A per-batch
fast path for plain names must send such names (trailing '/', '.' components) the general way.

The session owns no socket and reads no clock: the loop passes `clock` (host_clock.HostClock in
production, a fake in tests) and the callbacks.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from .statserv_fastpath import PlainLines
from .statserv_tree import (
    DENIED, DIRECTORY, ISDIR, NONEXISTENT_CODE, NOTDIR, PROTOCOL, SYNTAX, TOOLONG, StatServError,
    Tree, ValueWord, escape_text, names_directory, quote_string, resolve,
)

__all__ = ["StatServSession", "MAX_LINE_BYTES", "SAVE_FILE_NAME", "COMMAND_NAMES", "display_value"]

# Longest request line. nginx's default large header buffer is 8 KiB and Redis allows 64 KiB for
# inline commands; 8 KiB holds a maximal 4096-byte value unless most of it is %XX-encoded.
MAX_LINE_BYTES = 8192
SAVE_FILE_NAME = "statserv.save"

_SPACES = b" \t"
_QUOTES = b"\"'"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_session_numbers = itertools.count(1)


class _Command:
    __slots__ = ("name", "required", "optional_positional", "keywords", "usage", "summary", "handler")

    def __init__(self, name: str, required: Tuple[str, ...], optional_positional: Tuple[str, ...],
                 keywords: Tuple[str, ...], usage: str, summary: str) -> None:
        self.name = name
        self.required = required
        self.optional_positional = optional_positional
        self.keywords = frozenset(required + optional_positional + keywords)
        self.usage = usage
        self.summary = summary
        self.handler = "_command_" + name.lower()


_COMMANDS: Dict[str, _Command] = {command.name: command for command in (
    _Command("REGISTER", ("PID", "NAME"), (), (), "REGISTER pid name", "says who the client is"),
    _Command("LOGOFF", (), (), (), "LOGOFF", "closes the connection, no response"),
    _Command("PWD", (), (), (), "PWD", "shows the current path"),
    _Command("CD", ("PATH",), (), (), "CD path", "changes the current path"),
    _Command("TOUCHDIR", ("PATH",), (), ("COMMENT",), "TOUCHDIR path [COMMENT=..]",
             "creates a directory (and parents), registers intent to use it"),
    _Command("TOUCH", ("NAME",), (), ("COMMENT", "LIFETIME", "AUTOEXPIRE", "TYPE"),
             "TOUCH name [COMMENT=..] [LIFETIME=s] [AUTOEXPIRE=1] [TYPE=string|int|float|bool]",
             "creates the object (UNDEFINED) if absent, registers intent to use it"),
    _Command("PUT", ("NAME", "VALUE"), (), ("LIFETIME",), "PUT name value [LIFETIME=s]",
             "updates the value of an existing object"),
    _Command("GET", ("NAME",), (), (), "GET name", "shows the value"),
    _Command("STAT", ("NAME",), (), (), "STAT name", "shows every attribute"),
    _Command("LS", (), ("PATH",), (), "LS [path]", "lists a directory"),
    _Command("MONITOR", ("NAME",), (), ("DEADBAND", "MINPERIOD"),
             "MONITOR name [DEADBAND=x] [MINPERIOD=s]",
             "sends '@ name' when an object or directory changes; answers with its value"),
    _Command("UNMONITOR", ("NAME",), (), (), "UNMONITOR name", "stops a monitor"),
    _Command("UPDATES", (), (), (), "UPDATES", "the latest value of every monitored name changed"),
    _Command("REMOVE", ("NAME",), (), (), "REMOVE name", "removes an object"),
    _Command("RMDIR", ("PATH",), (), (), "RMDIR path", "removes an empty directory"),
    _Command("TRACE", (), (), (), "TRACE", "shows every command of every client as '#' lines"),
    _Command("UNTRACE", (), (), (), "UNTRACE", "stops TRACE"),
    _Command("SAVE", (), ("FILE",), (), "SAVE [file]", "writes the store to a file"),
    _Command("SHUTDOWN", (), (), (), "SHUTDOWN", "stops the server (local clients only)"),
    _Command("HELP", (), (), (), "HELP", "lists the commands"),
)}
COMMAND_NAMES = tuple(_COMMANDS)


# ---------------------------------------------------------------------------------------------
# Request parsing


def split_request(line: bytes) -> List[Tuple[bytes, int]]:
    """Split a request line into (raw argument, index of its first unquoted '=' or -1).

    Arguments are separated by spaces or tabs; a quoted part (' or ") may contain them, and may sit
    anywhere in an argument (`COMMENT="a b"`). Quotes are removed; %XX escapes are left for later."""
    if b"'" not in line and b'"' not in line:
        # Most lines quote nothing: C-level splitting instead of the byte loop below.
        return [(argument, argument.find(b"="))
                for argument in line.replace(b"\t", b" ").split(b" ") if argument]
    arguments: List[Tuple[bytes, int]] = []
    index, length = 0, len(line)
    while True:
        while index < length and line[index] in _SPACES:
            index += 1
        if index >= length:
            return arguments
        argument = bytearray()
        equals_at = -1
        quoted = False
        while index < length and line[index] not in _SPACES:
            byte = line[index]
            if byte in _QUOTES:
                end = line.find(line[index:index + 1], index + 1)
                if end < 0:
                    raise StatServError(SYNTAX, "unterminated quote")
                argument += line[index + 1:end]
                quoted = True
                index = end + 1
                continue
            if byte == 0x3D and equals_at < 0 and not quoted:  # '='
                equals_at = len(argument)
            argument.append(byte)
            index += 1
        arguments.append((bytes(argument), equals_at))


def percent_decode(raw: bytes) -> str:
    """Decode %XX escapes and then UTF-8; SYNTAX for a malformed escape or invalid UTF-8."""
    if b"%" in raw:
        pieces = raw.split(b"%")
        decoded = bytearray(pieces[0])
        for piece in pieces[1:]:
            if len(piece) < 2 or piece[0] not in _HEX_DIGITS or piece[1] not in _HEX_DIGITS:
                raise StatServError(SYNTAX, "malformed %XX escape")
            decoded.append(int(piece[:2], 16))
            decoded += piece[2:]
        raw = bytes(decoded)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StatServError(SYNTAX, "invalid UTF-8") from None


def bind_arguments(command: _Command, arguments: List[Tuple[bytes, int]]) -> Dict[str, str]:
    """Match mixed positional/keyword arguments to the command's parameters (upper-case names).

    `KEY=value` is a keyword only if KEY is one of the command's parameters; anything else is
    positional, so `PUT x a=b` stores "a=b". Positional arguments fill the required parameters not
    given as keywords, in order, then the optional positional ones."""
    bound: Dict[str, str] = {}
    positional: List[str] = []
    slashed: Optional[List[int]] = None  # positions of arguments holding %2F (rare)
    for raw, equals_at in arguments:
        if equals_at > 0:
            key = raw[:equals_at].decode("ascii", "replace").upper()
            if key in command.keywords:
                if key in bound:
                    raise StatServError(SYNTAX, "%s given twice" % key)
                bound[key] = _decode_argument(key, raw[equals_at + 1:])
                continue
        if b"%" in raw and b"%2f" in raw.lower():
            slashed = (slashed or []) + [len(positional)]
        positional.append(percent_decode(raw))
    slots = [name for name in command.required + command.optional_positional if name not in bound]
    if len(positional) > len(slots):
        raise StatServError(SYNTAX, "too many arguments; usage: %s" % command.usage)
    if slashed:
        for index in slashed:
            _decode_argument(slots[index], b"%2F")  # SYNTAX if that slot holds a name
    bound.update(zip(slots, positional))
    missing = [name for name in command.required if name not in bound]
    if missing:
        raise StatServError(SYNTAX, "missing %s; usage: %s" % (", ".join(missing), command.usage))
    return bound


# The parameters that hold a tree name (a path of components separated by '/').
_NAME_PARAMETERS = frozenset({"NAME", "PATH"})


def _decode_argument(parameter: str, raw: bytes) -> str:
    """percent_decode, except that an encoded '/' (%2F) in a name is refused (SYNTAX): CFHT's
    names are UNIX-style paths whose components never contain '/', so %2F cannot be data inside
    a component, and taking it as a separator would make one request mean two things (RFC 3986,
    2.2: an encoded reserved character is not the delimiter)."""
    if parameter in _NAME_PARAMETERS and b"%" in raw and b"%2f" in raw.lower():
        raise StatServError(SYNTAX, "%2F in a name: a name component cannot contain '/' "
                            "(separate components with a plain '/')")
    return percent_decode(raw)


# The largest LIFETIME / MINPERIOD / DEADBAND a client may give: ten years of seconds. Larger
# values only stand for "forever" (LIFETIME=0 says that) and would make every deadline sum huge.
MAX_CLIENT_NUMBER = 10 * 365.25 * 86400.0


def _number(text: str, what: str) -> float:
    """A LIFETIME, DEADBAND or MINPERIOD: a finite number in [0, MAX_CLIENT_NUMBER]; SYNTAX if
    not (negative, inf, nan, 1e400, too large, `1_0`)."""
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not 0 <= number <= MAX_CLIENT_NUMBER or "_" in text:  # also rejects NaN and inf
        raise StatServError(SYNTAX, "%s must be a number from 0 to %d" % (what, MAX_CLIENT_NUMBER))
    return number


def _flag(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise StatServError(SYNTAX, "%s must be 0 or 1" % what)


def display_value(value: Any) -> str:
    """A value as clients see it: a valid value in double quotes, a word bare."""
    if type(value) is ValueWord:
        return str(value)
    if isinstance(value, bool):
        return '"TRUE"' if value else '"FALSE"'
    if isinstance(value, (int, float)):
        return '"%r"' % (value,)
    return quote_string(value)


def _entry_line(name: str, value: Any) -> str:
    """`* name = "value"` for an object, `* name/` for a directory."""
    if value is DIRECTORY:
        return "* " + (name if name.endswith("/") else name + "/")
    return "* %s = %s" % (name, display_value(value))


# ---------------------------------------------------------------------------------------------
# The session


class StatServSession:
    """One client connection's protocol state: receive buffer, current path, output buffer."""

    def __init__(self, tree: Tree, clock: Callable[[], float], *, is_local: bool,
                 on_output: Optional[Callable[[], None]] = None,
                 on_shutdown: Optional[Callable[[], None]] = None,
                 max_line: int = MAX_LINE_BYTES, save_dir: Optional[str] = None,
                 saver: Optional[Callable[[str, "StatServSession"], None]] = None,
                 fast_path: bool = True) -> None:
        self._tree = tree
        self._clock = clock
        self._is_local = is_local
        self._on_output = on_output
        self._on_shutdown = on_shutdown
        self._max_line = max_line
        self._save_dir = save_dir
        # Writes SAVE files elsewhere (a forked child, save_writer.py) and calls save_finished();
        # until then this session handles no further request, so answers stay in order.
        self._saver = saver
        self._waiting = False
        self._eof_while_waiting = False
        self._number = next(_session_numbers)
        self._registered: Optional[Tuple[str, str]] = None  # (pid, name)
        self._cwd = "/"
        self._inbox = bytearray()
        self._searched = 0         # bytes of _inbox already known to hold no newline
        self._discarding = False   # inside an over-long line, dropping it up to its newline
        self._output = bytearray()
        self._in_receive = False   # output made now is flushed by the loop anyway: no on_output
        self._closing = False
        self._lost = False
        # Plain GET/PUT/TOUCH lines of a batch take statserv_fastpath (same answers, less work).
        self._plain_lines = PlainLines(self, tree, clock, display_value) if fast_path else None

    def __str__(self) -> str:
        """How traces and STAT's owner name this client."""
        if self._registered is not None:
            return "%s[%s]" % (self._registered[1], self._registered[0])
        return "client#%d" % self._number

    def __repr__(self) -> str:
        return "<StatServSession %s>" % self

    @property
    def closing(self) -> bool:
        """True after LOGOFF or end of input: flush what is left, then close."""
        return self._closing

    @property
    def partial_line(self) -> bool:
        """True while a request line has begun and not ended (the --request-timeout clock)."""
        return bool(self._inbox) or self._discarding

    def holds_nothing(self) -> bool:
        """True when closing this session would cost nobody anything: no monitor, no TRACE, no
        object TOUCHed or held (so it may be idled out)."""
        return not self._tree.holds_anything(self)

    # -- the loop's interface ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Handle every complete line in `data` (plus what was buffered); never raises."""
        if self._closing:
            return
        self._in_receive = True
        try:
            if self._plain_lines is not None and not self._discarding and not self._waiting:
                self._plain_lines.receive(data)
            else:
                self._inbox += data
            while self._inbox and not self._closing and not self._waiting:
                line = self._next_line()
                if line is None:
                    break
                self._handle_line(line)
        finally:
            self._in_receive = False
        if self._closing:
            self._inbox = bytearray()

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call."""
        data = bytes(self._output)
        self._output = bytearray()
        return data

    def eof_received(self) -> None:
        """The client will send no more: a final line without a newline is still handled."""
        if self._closing:
            return
        if self._waiting:
            self._eof_while_waiting = True
            return
        self._in_receive = True
        try:
            line = bytes(self._inbox)
            self._inbox = bytearray()
            if line.endswith(b"\r"):
                line = line[:-1]
            if line and not self._discarding:
                if len(line) > self._max_line:
                    self._reply_error(TOOLONG, "line longer than %d bytes" % self._max_line)
                else:
                    self._handle_line(line)
        finally:
            self._in_receive = False
        self._closing = True

    def connection_lost(self) -> None:
        """The connection is gone: let go of everything this session held in the tree."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._inbox = bytearray()
        self._tree.release_owner(self, self._clock())

    def notify(self, path: str) -> None:
        """The Tree's monitor callback: one `@ name` line per change until collected."""
        self._push_unsolicited("@ " + path)

    def _push_unsolicited(self, line: str) -> None:
        if self._closing:
            return
        self._output += line.encode("utf-8", "backslashreplace") + b"\n"
        if not self._in_receive and self._on_output is not None:
            self._on_output()

    # -- framing -------------------------------------------------------------------------------

    def _next_line(self) -> Optional[bytes]:
        """The next complete line without its line ending, or None until more data arrives."""
        inbox = self._inbox
        while True:
            if self._discarding:
                end = inbox.find(b"\n")
                if end < 0:
                    del inbox[:]
                    return None
                del inbox[:end + 1]
                self._discarding = False
                self._searched = 0
            end = inbox.find(b"\n", self._searched)
            if end < 0:
                self._searched = len(inbox)
                # +1: a line of max_line bytes may still be waiting for the '\n' of its "\r\n".
                if len(inbox) > self._max_line + 1:
                    self._reply_error(TOOLONG, "line longer than %d bytes" % self._max_line)
                    del inbox[:]
                    self._searched = 0
                    self._discarding = True
                return None
            line = bytes(inbox[:end])
            del inbox[:end + 1]
            self._searched = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max_line:
                self._reply_error(TOOLONG, "line longer than %d bytes" % self._max_line)
                continue
            return line

    # -- dispatch ------------------------------------------------------------------------------

    def _handle_line(self, line: bytes) -> None:
        if not line.strip(_SPACES):
            return  # an empty line is not a request
        self._trace(line)
        try:
            response = self._execute(line)
        except StatServError as error:
            response = ["! %s %s" % (error.code, error.text)]
        except Exception:  # a bug must cost one request, not the connection or the server
            response = ["! %s internal error" % PROTOCOL]
        for text in response:
            self._output += text.encode("utf-8", "backslashreplace") + b"\n"

    def _reply_error(self, code: str, text: str) -> None:
        self._output += ("! %s %s\n" % (code, text)).encode("utf-8")

    def _execute(self, line: bytes) -> List[str]:
        arguments = split_request(line)
        name = percent_decode(arguments[0][0]).upper()
        command = _COMMANDS.get(name)
        if command is None:
            raise StatServError(SYNTAX, "unknown command %s; try HELP"
                                % name.encode("ascii", "backslashreplace").decode("ascii")[:40])
        bound = bind_arguments(command, arguments[1:])
        return getattr(self, command.handler)(bound)

    def _trace(self, line: bytes) -> None:
        if not self._tree.tracers:
            return
        # Escaped to printable ASCII: a trace line must stay one line for any client's reader.
        text = "# %s %s" % (self, "".join(chr(byte) if 0x20 <= byte < 0x7F else "\\x%02x" % byte
                                          for byte in line))
        for tracer in list(self._tree.tracers):
            tracer._push_unsolicited(text)

    def _path(self, name: str) -> str:
        """`name` resolved against the current path; NOTDIR if it can only name a directory
        (`x/`, `x/.`) and names an object, as UNIX refuses `file/`."""
        path = resolve(name, self._cwd)
        if name[-1] in "/." and path != "/" and names_directory(name) \
                and self._tree.kind(path) == "object":
            raise StatServError(NOTDIR, "%s is not a directory (%s names one)" % (path, name))
        return path

    # -- commands: each returns its response lines ---------------------------------------------

    def _command_register(self, args: Dict[str, str]) -> List[str]:
        pid = args["PID"].strip()
        if not pid.isdigit() or not pid.isascii():
            raise StatServError(SYNTAX, "PID must be a number")
        self._registered = (pid, escape_text(args["NAME"]))  # escaped: it goes into trace lines
        return ["."]

    def _command_logoff(self, args: Dict[str, str]) -> List[str]:
        self._closing = True
        return []

    def _command_pwd(self, args: Dict[str, str]) -> List[str]:
        return [". " + self._cwd]

    def _command_cd(self, args: Dict[str, str]) -> List[str]:
        path = self._path(args["PATH"])
        kind = self._tree.kind(path)
        if kind is None:
            raise StatServError(NONEXISTENT_CODE, "%s does not exist" % path)
        if kind != "directory":
            raise StatServError(NOTDIR, "%s is not a directory" % path)
        self._cwd = path
        return ["."]

    def _command_touchdir(self, args: Dict[str, str]) -> List[str]:
        self._tree.touch_dir(self._path(args["PATH"]), self._clock(), owner=self,
                             comment=args.get("COMMENT"))
        return ["."]

    def _command_touch(self, args: Dict[str, str]) -> List[str]:
        lifetime = _number(args["LIFETIME"], "LIFETIME") if "LIFETIME" in args else None
        autoexpire = _flag(args["AUTOEXPIRE"], "AUTOEXPIRE") if "AUTOEXPIRE" in args else None
        type_name = args["TYPE"].lower() if "TYPE" in args else None
        path = self._path(args["NAME"])
        if args["NAME"][-1] in "/." and names_directory(args["NAME"]):
            raise StatServError(ISDIR, "%s names a directory; TOUCH makes objects, TOUCHDIR "
                                "directories" % args["NAME"])
        self._tree.touch(path, self._clock(), owner=self,
                         comment=args.get("COMMENT"), lifetime=lifetime, autoexpire=autoexpire,
                         type_name=type_name)
        return ["."]

    def _command_put(self, args: Dict[str, str]) -> List[str]:
        lifetime = _number(args["LIFETIME"], "LIFETIME") if "LIFETIME" in args else None
        self._tree.put(self._path(args["NAME"]), args["VALUE"], self._clock(), lifetime=lifetime)
        return ["."]

    def _command_get(self, args: Dict[str, str]) -> List[str]:
        path = self._path(args["NAME"])
        now = self._clock()
        value = self._tree.get(path, now)
        self._tree.collect(self, path, now)  # reading a monitored object collects it
        return [". " + display_value(value)]

    def _command_stat(self, args: Dict[str, str]) -> List[str]:
        attributes = self._tree.stat(self._path(args["NAME"]), self._clock())
        lines = []
        for key, value in attributes.items():
            if key in ("value", "comment"):
                text = display_value(value)
            elif key == "owner":
                text = "" if value is None else str(value)
            elif isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, float):
                text = "%.6f" % value if key == "time" else "%g" % value
            else:
                text = str(value)
            lines.append("* %s=%s" % (key, text))
        return lines + ["."]

    def _command_ls(self, args: Dict[str, str]) -> List[str]:
        path = self._path(args["PATH"]) if "PATH" in args else self._cwd
        now = self._clock()
        entries = self._tree.list_dir(path, now)
        self._tree.collect(self, path, now)  # listing a monitored directory collects it
        return [_entry_line(name, value) for name, value in entries] + ["."]

    def _command_monitor(self, args: Dict[str, str]) -> List[str]:
        deadband = _number(args["DEADBAND"], "DEADBAND") if "DEADBAND" in args else 0.0
        min_period = _number(args["MINPERIOD"], "MINPERIOD") if "MINPERIOD" in args else 0.0
        path = self._path(args["NAME"])
        now = self._clock()
        value = self._tree.monitor(path, self, now, deadband=deadband, min_period=min_period)
        if value is DIRECTORY:  # a directory's value is its listing
            return [_entry_line(name, entry) for name, entry in self._tree.list_dir(path)] + ["."]
        return [". " + display_value(value)]

    def _command_unmonitor(self, args: Dict[str, str]) -> List[str]:
        self._tree.unmonitor(self._path(args["NAME"]), self)
        return ["."]

    def _command_updates(self, args: Dict[str, str]) -> List[str]:
        changes = self._tree.collect(self, None, self._clock())
        return [_entry_line(path, value) for path, value in changes] + ["."]

    def _command_remove(self, args: Dict[str, str]) -> List[str]:
        self._tree.remove(self._path(args["NAME"]), self._clock())
        return ["."]

    def _command_rmdir(self, args: Dict[str, str]) -> List[str]:
        self._tree.remove_dir(self._path(args["PATH"]), self._clock())
        return ["."]

    def _command_trace(self, args: Dict[str, str]) -> List[str]:
        self._tree.tracers.add(self)
        return ["."]

    def _command_untrace(self, args: Dict[str, str]) -> List[str]:
        self._tree.tracers.discard(self)
        return ["."]

    def save_finished(self, code: Optional[str], text: Optional[str]) -> None:
        """The saver's answer to this session's SAVE: success (code None) or `! code text`;
        then the requests that waited behind it are handled."""
        if self._lost or not self._waiting:
            return
        self._waiting = False
        self._output += (".\n" if code is None else "! %s %s\n" % (code, text)).encode("utf-8")
        self.receive_data(b"")
        if self._eof_while_waiting and not self._waiting:
            self.eof_received()
        if self._on_output is not None:
            self._on_output()

    @property
    def waiting(self) -> bool:
        """True while a SAVE of this session is being written."""
        return self._waiting

    def _command_save(self, args: Dict[str, str]) -> List[str]:
        target = self._save_path(args.get("FILE", SAVE_FILE_NAME))
        if self._saver is not None:
            self._saver(target, self)  # raises StatServError when refused
            self._waiting = True
            return []
        text = self._tree.dump()
        temporary = target + ".tmp"
        try:
            with open(temporary, "w", encoding="utf-8", newline="\n") as file:
                file.write(text)
            os.replace(temporary, target)  # a crash mid-write never leaves half a save
        except BaseException as error:
            try:  # whatever failed (the disk, or text that is not UTF-8), no .tmp is left behind
                os.unlink(temporary)
            except OSError:
                pass
            if isinstance(error, OSError):
                raise StatServError(DENIED, "cannot write %s: %s"
                                    % (target, error.strerror)) from None
            raise
        return ["."]

    def _save_path(self, file_name: str) -> str:
        """The file SAVE writes: inside save_dir, never outside it (DENIED)."""
        if self._save_dir is None:
            raise StatServError(DENIED, "SAVE is not enabled on this server")
        if not file_name:
            raise StatServError(SYNTAX, "empty file name")
        parts = file_name.replace("\\", "/").split("/")
        if os.path.isabs(file_name) or file_name.startswith("/") or ".." in parts or "\x00" in file_name:
            raise StatServError(DENIED, "file name must stay inside the save directory")
        base = os.path.realpath(self._save_dir)
        target = os.path.realpath(os.path.join(base, file_name))
        if os.path.dirname(target) != base and not target.startswith(base + os.sep):
            raise StatServError(DENIED, "file name must stay inside the save directory")
        return target

    def _command_shutdown(self, args: Dict[str, str]) -> List[str]:
        if not self._is_local:
            raise StatServError(DENIED, "SHUTDOWN is accepted only on the Unix socket, from the "
                                "DSM's own user or root")
        if self._on_shutdown is None:
            raise StatServError(DENIED, "SHUTDOWN is not available on this server")
        self._on_shutdown()
        # Like LOGOFF: nothing pipelined after SHUTDOWN runs on a server that is going away.
        self._closing = True
        return []

    def _command_help(self, args: Dict[str, str]) -> List[str]:
        width = max(len(command.usage) for command in _COMMANDS.values())
        return ["* %-*s  %s" % (width, command.usage, command.summary)
                for command in _COMMANDS.values()] + ["."]
