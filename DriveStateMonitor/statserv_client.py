"""A Status Server client library: CFHT's C API, in Python, over TCP or the DSM's Unix socket.

Theory of operation
-------------------
One StatServClient is one connection, used by one thread. Each call sends one request line and reads
lines until its final `.` (success) or `!` (failure). On the way, `@ name` lines (a monitored object
changed) are remembered for `wait_for_updates`, `#` trace lines are ignored and `*` lines are the body
of LS, STAT, UPDATES and a directory's MONITOR. The socket is blocking; `timeout` bounds each wait
for the server, and a whole response too beyond what MIN_RESPONSE_RATE allows for its size (a
server that drips bytes fails with TIMEOUT); a line longer than MAX_RESPONSE_LINE fails with PROTOCOL.

Errors, CFHT style: no method raises for a failed request. A failure returns None (methods that
return data) or False (the others) and sets `last_error` (an ErrorCode) and `last_error_text`; a
success sets ErrorCode.OK. A valid value can be "" (falsy), so test data results with `is None`.
A value read is a str, or one of the words UNDEFINED, EXPIRED, NONEXISTENT (statserv_tree.ValueWord,
a str subclass: compare with `is` or use `is_valid`); a directory in a listing has the value
DIRECTORY.

Reconnecting: when the connection breaks (an error on send or receive, or end of file), the client
connects again, with `retry_pause` between tries, for at most `reconnect_timeout` seconds. On the new
connection it re-sends REGISTER and every TOUCHDIR, TOUCH and MONITOR it had made, in order, and then
the call in hand. A replayed MONITOR's answer is compared with what this client last saw of each
monitored object and directory entry (the first MONITOR's answer, then each value reported by
`wait_for_updates`, `get` or `ls`): only what differs is reported by the next `wait_for_updates`
(a changed value, a new entry, a vanished entry as NONEXISTENT), so a caller sees every change
made while it was away and never an unchanged value again (CFHT: monitors report changes). A call
is sent again after a reconnect, so a REMOVE that had reached the server before the break answers
NONEXISTENT the second time. A response that does not arrive within `timeout` fails with TIMEOUT and
drops the connection (a late answer would be taken for the next call's); the next call reconnects
and replays.

Line length: the server takes request lines of at most 8 KiB, so a value of mostly non-ASCII text
(3 bytes on the wire per UTF-8 byte) fails with TOOLONG well before the 4096-byte value limit.

Request encoding: names and values are sent URL-encoded (%XX for '%', quotes, '=', control
characters and every non-ASCII byte of the UTF-8 text), and an argument with spaces, or an empty
one, is double-quoted, so any text round-trips and a value can never be taken for a keyword.
"""
from __future__ import annotations

import collections
import enum
import os
import socket
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from .statserv_tree import (DIRECTORY, EXPIRED, NONEXISTENT, UNDEFINED, StatServError, ValueWord,
                            resolve, unescape_text)

__all__ = ["StatServClient", "ErrorCode", "DEFAULT_ADDRESS", "DEFAULT_PORT", "ENVIRONMENT_VARIABLE",
           "encode_argument",
           "parse_value", "is_valid", "parse_address", "Value",
           "UNDEFINED", "EXPIRED", "NONEXISTENT", "DIRECTORY"]

DEFAULT_PORT = 3111
DEFAULT_ADDRESS = "localhost:%d" % DEFAULT_PORT
ENVIRONMENT_VARIABLE = "STATSERV"

Value = str  # a str, or a ValueWord (UNDEFINED, EXPIRED, NONEXISTENT, DIRECTORY)


class ErrorCode(enum.Enum):
    """The outcome of the last call: OK, a server's `!` code, or a client-side failure."""
    OK = "OK"
    SYNTAX = "SYNTAX"
    NONEXISTENT = "NONEXISTENT"
    EXISTS = "EXISTS"
    NOTDIR = "NOTDIR"
    ISDIR = "ISDIR"
    NOTEMPTY = "NOTEMPTY"
    TYPE = "TYPE"
    TOOLONG = "TOOLONG"
    LIMIT = "LIMIT"
    DENIED = "DENIED"
    PROTOCOL = "PROTOCOL"      # the server said so, or it answered something this client cannot read
    CONNECTION = "CONNECTION"  # no connection could be made within reconnect_timeout
    TIMEOUT = "TIMEOUT"        # the server did not answer within timeout


_SERVER_CODES = {code.value: code for code in ErrorCode
                 if code not in (ErrorCode.OK, ErrorCode.CONNECTION, ErrorCode.TIMEOUT)}
_WORDS: Dict[str, ValueWord] = {word: word for word in (UNDEFINED, EXPIRED, NONEXISTENT)}
# Printable ASCII but for the characters the server's splitter or decoder gives a meaning to.
_PLAIN_BYTES = frozenset(range(0x21, 0x7F)) - frozenset(b"%\"'=")
_STAT_INTEGERS = frozenset({"entries", "revision", "usecount", "monitors"})
_STAT_FLOATS = frozenset({"lifetime", "time"})
_RECV_SIZE = 65536
# A response must arrive within `timeout` plus what this rate allows for its size (Apache's
# mod_reqtimeout MinRate): a server that drips a byte at a time fails with TIMEOUT instead of
# holding the caller for good; a large TREE over a slow link still completes.
MIN_RESPONSE_RATE = 64 * 1024
# No line of the protocol comes near this (a request line is at most --max-line, 8 KiB, a value
# --max-value): a longer one is a server gone wrong, not a reply to keep reading into memory.
MAX_RESPONSE_LINE = 16 * 1024 * 1024
_SHORTEST_WAIT = 0.001  # seconds; socket timeouts of 0 make the socket non-blocking instead


# ---------------------------------------------------------------------------------------------
# Encoding and decoding, no I/O


def encode_argument(text: str) -> str:
    """`text` as one request argument: URL-encoded, double-quoted if it holds spaces or is empty.

    Raises UnicodeEncodeError for text that is not valid Unicode (a lone surrogate)."""
    encoded = "".join(chr(byte) if byte in _PLAIN_BYTES or byte == 0x20 else "%%%02X" % byte
                      for byte in text.encode("utf-8"))
    if not encoded or " " in encoded:
        return '"%s"' % encoded
    return encoded


def parse_value(text: str) -> Value:
    """A value as the server shows it (`"text"` with escapes, or a bare word) as a str/ValueWord."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return unescape_text(text[1:-1])
    word = _WORDS.get(text)
    return word if word is not None else ValueWord(text)


def is_valid(value: Any) -> bool:
    """True for a real value, False for None and the words UNDEFINED, EXPIRED, NONEXISTENT."""
    return value is not None and type(value) is not ValueWord


def parse_address(address: str) -> Union[str, Tuple[str, int]]:
    """A Unix socket path (anything with '/') or (host, port) from "host:port", "host", "[v6]:port".

    Raises ValueError for a port that is not a number in 1-65535."""
    if "/" in address:
        return address
    host, port_text = address, ""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("not a port number in %r" % address)
        port = int(port_text)
    return (host or "localhost", port)


def _entry(line: str) -> Tuple[str, Value]:
    """`name = value` or `name/` (a directory), a `*` line of LS, UPDATES or MONITOR."""
    name, separator, value = line.partition(" = ")
    if separator:
        return name, parse_value(value)
    return line.rstrip("/") or "/", DIRECTORY


def _stat_attribute(line: str) -> Tuple[str, Any]:
    key, _, text = line.partition("=")
    if key in ("value", "comment"):
        return key, parse_value(text)
    try:
        if key in _STAT_INTEGERS:
            return key, int(text)
        if key in _STAT_FLOATS:
            return key, float(text)
    except ValueError:
        pass
    if key == "autoexpire":
        return key, text == "1"
    return key, text


class _Response:
    __slots__ = ("ok", "payload", "lines", "code", "text")

    def __init__(self, ok: bool, payload: str, lines: List[str], code: ErrorCode = ErrorCode.OK,
                 text: str = "") -> None:
        self.ok = ok
        self.payload = payload
        self.lines = lines
        self.code = code
        self.text = text


class _Broken(Exception):
    """The connection is unusable: closed by the server, a socket error, or an unreadable reply."""


class _Failed(Exception):
    """A call fails without a server response: carries the ErrorCode and text to report."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


# ---------------------------------------------------------------------------------------------
# The client


class StatServClient:
    """One connection to a Status Server; see the module docstring for errors and reconnecting.

    `address`: "host:port" or a Unix socket path; default $STATSERV, else localhost:3111. Not
    thread-safe."""

    def __init__(self, program: str, address: Optional[str] = None, *, timeout: float = 10.0,
                 retry_pause: float = 0.5, reconnect_timeout: float = 30.0) -> None:
        self.program = program
        self.address = address or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_ADDRESS
        self._target = parse_address(self.address)
        self.timeout = timeout
        self.retry_pause = retry_pause
        self.reconnect_timeout = reconnect_timeout
        self.last_error = ErrorCode.OK
        self.last_error_text = ""
        self.reconnects = 0  # how many times a broken connection was made again
        self._sock: Optional[socket.socket] = None
        self._has_connected = False  # after the first connection, a new one is a reconnect
        self._inbox = bytearray()
        self._searched = 0
        self._received = 0  # bytes read since the connection opened: a response's pace
        # (command, absolute path) -> request line, in the order first made: replayed on reconnect.
        self._intents: "collections.OrderedDict[Tuple[str, str], str]" = collections.OrderedDict()
        self._notices: Dict[str, None] = {}         # `@` names not yet collected, in arrival order
        self._replayed: Dict[str, Value] = {}       # what replayed MONITORs answered, changed
        # What the caller last saw of each monitored object and directory entry, for the replay.
        self._seen: Dict[str, Value] = {}
        self._deadbands: Dict[str, float] = {}      # monitored path -> its DEADBAND, if any

    def __enter__(self) -> "StatServClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.logoff()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # -- logon / logoff ------------------------------------------------------------------------

    def logon(self) -> bool:
        """Connect (one try) and REGISTER this process's pid and program name."""
        self._close()
        try:
            self._connect()
        except _Failed as failure:
            return self._fail(failure.code, failure.text)
        return self._ok(True)

    def logoff(self) -> bool:
        """Send LOGOFF and close; forget every TOUCH, TOUCHDIR and MONITOR (nothing is replayed)."""
        if self._sock is not None:
            try:
                self._sock.sendall(b"LOGOFF\n")
            except OSError:
                pass
        self._close()
        self._has_connected = False
        self._intents.clear()
        self._notices.clear()
        self._replayed.clear()
        self._seen.clear()
        self._deadbands.clear()
        return self._ok(True)

    # -- values --------------------------------------------------------------------------------

    def get(self, name: str) -> Optional[Value]:
        """The value of `name`: a str, or UNDEFINED / EXPIRED; None on failure."""
        response = self._request("GET", name)
        if response is None:
            return None
        path = self._absolute(name)
        self._notices.pop(path, None)  # GET collects a monitored object
        value = parse_value(response.payload)
        if path in self._seen:
            self._seen[path] = value
        return self._ok(value)

    def get_int(self, name: str) -> Optional[int]:
        """The value as an int; None on failure (TYPE if it is not an integer or not valid)."""
        return self._get_number(name, int, "an integer")

    def get_float(self, name: str) -> Optional[float]:
        """The value as a float; None on failure (TYPE if it is not a number or not valid)."""
        return self._get_number(name, float, "a number")

    def _get_number(self, name: str, convert: Any, what: str) -> Any:
        value = self.get(name)
        if value is None:
            return None
        if not is_valid(value):
            return self._fail(ErrorCode.TYPE, "%s is %s, not %s" % (name, value, what), None)
        try:
            return convert(value.strip())
        except ValueError:
            return self._fail(ErrorCode.TYPE, "%s holds %r, not %s" % (name, value[:40], what),
                              None)

    def put(self, name: str, value: Any, lifetime: Optional[float] = None) -> bool:
        """Update an existing object (NONEXISTENT if absent: TOUCH it first).

        `value` is sent as text: a str as is, a bool as TRUE/FALSE, a number as repr() does."""
        if isinstance(value, bool):
            text = "TRUE" if value else "FALSE"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = str(value)
        options = {} if lifetime is None else {"LIFETIME": _number_text(lifetime)}
        return self._request("PUT", name, text, **options) is not None and self._ok(True)

    def put_string(self, name: str, value: str, lifetime: Optional[float] = None) -> bool:
        return self.put(name, str(value), lifetime)

    def put_int(self, name: str, value: int, lifetime: Optional[float] = None) -> bool:
        return self.put(name, "%d" % value, lifetime)

    def put_float(self, name: str, value: float, fmt: str = "%g",
                  lifetime: Optional[float] = None) -> bool:
        """PUT the number formatted with `fmt` (printf style, CFHT's default %g)."""
        return self.put(name, fmt % value, lifetime)

    # -- the tree ------------------------------------------------------------------------------

    def touch(self, name: str, comment: Optional[str] = None, lifetime: Optional[float] = None,
              autoexpire: bool = False, type: Optional[str] = None) -> bool:
        """Create the object (UNDEFINED) if absent and hold it; replayed after a reconnect.

        `type`: string, int, float or bool."""
        options: Dict[str, str] = {}
        if comment is not None:
            options["COMMENT"] = comment
        if lifetime is not None:
            options["LIFETIME"] = _number_text(lifetime)
        if autoexpire:
            options["AUTOEXPIRE"] = "1"
        if type is not None:
            options["TYPE"] = type
        return self._intent("TOUCH", name, options)

    def touchdir(self, path: str, comment: Optional[str] = None) -> bool:
        """Create the directory (and parents) if absent and hold it; replayed after a reconnect."""
        return self._intent("TOUCHDIR", path, {} if comment is None else {"COMMENT": comment})

    def remove(self, name: str) -> bool:
        """Remove an object; a TOUCH of it is no longer replayed."""
        if self._request("REMOVE", name) is None:
            return False
        self._forget("TOUCH", name)
        return self._ok(True)

    def rmdir(self, path: str) -> bool:
        """Remove an empty directory; a TOUCHDIR of it is no longer replayed."""
        if self._request("RMDIR", path) is None:
            return False
        self._forget("TOUCHDIR", path)
        return self._ok(True)

    def ls(self, path: Optional[str] = None) -> Optional[List[Tuple[str, Value]]]:
        """A directory's entries as (name, value), sorted; a subdirectory's value is DIRECTORY."""
        response = self._request("LS", path) if path is not None else self._request("LS")
        if response is None:
            return None
        entries = [_entry(line) for line in response.lines]
        if path is not None:
            directory = self._absolute(path)
            self._notices.pop(directory, None)  # LS collects a monitored directory
            if self._seen.get(directory) is DIRECTORY:
                self._see_listing(directory, entries)
        return self._ok(entries)

    def stat(self, name: str) -> Optional[Dict[str, Any]]:
        """Every attribute: name, kind, type, value, comment, lifetime, autoexpire, owner, time,
        revision, usecount, monitors (a directory: entries instead of value and type)."""
        response = self._request("STAT", name)
        if response is None:
            return None
        return self._ok(dict(_stat_attribute(line) for line in response.lines))

    # -- monitors ------------------------------------------------------------------------------

    def monitor(self, name: str, deadband: Optional[float] = None,
                minperiod: Optional[float] = None) -> Any:
        """Monitor an object or a directory; replayed after a reconnect.

        Returns the current value (a str or a word, NONEXISTENT if absent) of an object, or the
        entries of a directory as ls() gives them; None on failure."""
        options: Dict[str, str] = {}
        if deadband is not None:
            options["DEADBAND"] = _number_text(deadband)
        if minperiod is not None:
            options["MINPERIOD"] = _number_text(minperiod)
        response = self._request("MONITOR", name, **options)
        if response is None:
            return None
        self._remember("MONITOR", name, options)
        if deadband:
            self._deadbands[self._absolute(name)] = float(deadband)
        else:
            self._deadbands.pop(self._absolute(name), None)
        answer = _monitor_answer(response)
        self._see_answer(self._absolute(name), answer)
        return self._ok(answer)

    def unmonitor(self, name: str) -> bool:
        """Stop monitoring `name`."""
        self._forget("MONITOR", name)
        self._seen.pop(self._absolute(name), None)
        self._deadbands.pop(self._absolute(name), None)
        if self._request("UNMONITOR", name) is None:
            return False
        return self._ok(True)

    def wait_for_updates(self, timeout: Optional[float]) -> Optional[List[Tuple[str, Value]]]:
        """Wait up to `timeout` seconds (None: for ever) for monitored objects to change; return
        [(absolute path, latest value)], one pair per path, [] if nothing changed in time, None on
        failure. A directory monitor reports its changed entries (a vanished one as NONEXISTENT)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        polled = False  # even wait_for_updates(0) reads what has already arrived
        while True:
            if self._notices or self._replayed:
                updates = self._collect_updates()
                if updates is None or updates:
                    return updates
            if polled and deadline is not None and time.monotonic() >= deadline:
                return self._ok([])
            try:
                self._await_notice(deadline)
            except _Failed as failure:
                return self._fail(failure.code, failure.text, None)
            polled = True

    def _collect_updates(self) -> Optional[List[Tuple[str, Value]]]:
        replayed = self._replayed
        self._replayed = {}
        self._notices.clear()
        response = self._request("UPDATES")
        if response is None:
            self._replayed.update(replayed)
            return None
        # The @ lines read with the response are for changes this UPDATES has just collected.
        self._notices.clear()
        latest: Dict[str, Value] = dict(replayed)
        for line in response.lines:
            path, value = _entry(line)
            latest[path] = value
        self._seen.update(latest)
        return self._ok(list(latest.items()))

    def _see_answer(self, path: str, answer: Any) -> None:
        """Remember a MONITOR answer as what the caller has seen of `path` (and its entries)."""
        if isinstance(answer, list):
            self._seen[path] = DIRECTORY
            self._see_listing(path, answer)
        else:
            self._seen[path] = answer

    def _see_listing(self, directory: str, entries: List[Tuple[str, Value]]) -> None:
        prefix = directory.rstrip("/") + "/"
        for key in [key for key in self._seen
                    if key.startswith(prefix) and "/" not in key[len(prefix):]]:
            del self._seen[key]
        for name, value in entries:
            self._seen[_join(directory, name)] = value

    def _note_replayed(self, path: str, answer: Any) -> None:
        """Keep for wait_for_updates what a replayed MONITOR answers that the caller has not
        seen: a changed value, a new entry, an entry gone (NONEXISTENT)."""
        is_directory = isinstance(answer, list)
        current = {_join(path, name): value for name, value in answer} if is_directory else {}
        prefix = path.rstrip("/") + "/"
        gone = [key for key, value in self._seen.items()
                if key.startswith(prefix) and "/" not in key[len(prefix):]
                and key not in current and value is not NONEXISTENT]
        changes = [(key, NONEXISTENT) for key in gone] + list(current.items())
        changes.append((path, DIRECTORY if is_directory else answer))
        deadband = self._deadbands.get(path, 0.0)
        for key, value in changes:
            seen = self._seen.get(key)
            if seen is None or type(seen) is not type(value) or seen != value:
                if not _within(deadband, seen, value):  # the monitor's DEADBAND, as the server's
                    self._replayed[key] = value

    def _await_notice(self, deadline: Optional[float]) -> None:
        """Read unsolicited lines until an `@` arrives or `deadline` passes; reconnects."""
        reconnect_deadline = None
        while not (self._notices or self._replayed):
            if self._sock is None:
                if reconnect_deadline is None:
                    reconnect_deadline = time.monotonic() + self.reconnect_timeout
                self._connect(reconnect_deadline)
                continue
            remaining = None
            if deadline is not None:  # at least a moment: a timeout of 0 would mean non-blocking
                remaining = max(deadline - time.monotonic(), _SHORTEST_WAIT)
            try:
                line = self._read_line(remaining)
            except socket.timeout:
                return
            except _Broken:
                self._close()
                continue
            if line.startswith("@ "):
                self._notices[line[2:]] = None
            elif not line.startswith("#"):
                self._close()  # out of step with the server: start over on a new connection
                raise _Failed(ErrorCode.PROTOCOL, "unexpected line from the server: %r"
                              % line[:80])
            elif deadline is not None and time.monotonic() >= deadline:
                return  # trace lines must not stretch the wait

    # -- requests ------------------------------------------------------------------------------

    def _intent(self, command: str, name: str, options: Dict[str, str]) -> bool:
        if self._request(command, name, **options) is None:
            return False
        self._remember(command, name, options)
        return self._ok(True)

    def _remember(self, command: str, name: str, options: Dict[str, str]) -> None:
        path = self._absolute(name)
        self._intents[(command, path)] = _request_line(command, [path], options)

    def _forget(self, command: str, name: str) -> None:
        self._intents.pop((command, self._absolute(name)), None)

    @staticmethod
    def _absolute(name: str) -> str:
        try:
            return resolve(name)  # this client never CDs: names are relative to /
        except StatServError:
            return name

    def _request(self, command: str, *arguments: str, **options: str) -> Optional[_Response]:
        """Send one request and return its success response; None (last_error set) on failure."""
        try:
            line = _request_line(command, list(arguments), options)
        except UnicodeEncodeError as error:
            return self._fail(ErrorCode.SYNTAX, "cannot encode the request: %s" % error, None)
        try:
            response = self._exchange(line)
        except _Failed as failure:
            return self._fail(failure.code, failure.text, None)
        if not response.ok:
            return self._fail(response.code, response.text, None)
        return response

    def _exchange(self, line: str) -> _Response:
        """Send `line` and read its response, reconnecting (and replaying) while the connection
        breaks, until reconnect_timeout after the first break."""
        data = (line + "\n").encode("ascii")
        reconnect_deadline = None
        while True:
            if self._sock is None:
                if reconnect_deadline is None:
                    reconnect_deadline = time.monotonic() + self.reconnect_timeout
                self._connect(reconnect_deadline)
            try:
                self._send(data)
                return self._read_response()
            except _Broken as error:
                self._close()
                now = time.monotonic()
                if reconnect_deadline is None:
                    reconnect_deadline = now + self.reconnect_timeout
                elif now >= reconnect_deadline:
                    raise _Failed(ErrorCode.CONNECTION, "connection to %s lost: %s"
                                  % (self.address, error)) from None
            except socket.timeout:
                self._close()
                raise _Failed(ErrorCode.TIMEOUT, "no answer from %s within %g s"
                              % (self.address, self.timeout)) from None
            except BaseException:
                self._close()  # interrupted mid-response: the connection is out of step
                raise

    # -- connecting ----------------------------------------------------------------------------

    def _connect(self, deadline: Optional[float] = None) -> None:
        """Connect, REGISTER and replay; try again every retry_pause until `deadline` (None: one
        try). Raises _Failed(CONNECTION), also when the new server does not answer the replay."""
        is_reconnect = self._has_connected
        while True:
            try:
                self._open()
                self._register_and_replay()
                self._has_connected = True
                if is_reconnect:
                    self.reconnects += 1
                return
            except (OSError, _Broken) as error:
                self._close()
                reason = error
            if deadline is None or time.monotonic() + self.retry_pause > deadline:
                raise _Failed(ErrorCode.CONNECTION, "cannot connect to %s: %s"
                              % (self.address, reason))
            time.sleep(self.retry_pause)

    def _open(self) -> None:
        target = self._target
        if isinstance(target, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(target)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(target, timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._inbox = bytearray()
        self._searched = 0

    def _register_and_replay(self) -> None:
        """REGISTER, then every remembered TOUCHDIR/TOUCH/MONITOR, pipelined in one send.

        A replayed request the server now refuses is dropped from the replay list; what a MONITOR
        answers is kept for wait_for_updates."""
        self._notices.clear()  # the old server's notices: the replayed MONITORs stand for them
        lines = [_request_line("REGISTER", [str(os.getpid()), self.program], {})]
        keys = list(self._intents)
        lines += [self._intents[key] for key in keys]
        self._send(("\n".join(lines) + "\n").encode("ascii"))
        self._read_response()  # REGISTER's; a refusal (an odd program name) is not fatal
        for key in keys:
            response = self._read_response()
            command, path = key
            if not response.ok:
                self._intents.pop(key, None)
            elif command == "MONITOR":
                self._note_replayed(path, _monitor_answer(response))

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        self._inbox = bytearray()
        self._searched = 0

    # -- wire ----------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)
        except socket.timeout:
            raise
        except OSError as error:
            raise _Broken(str(error)) from None

    def _read_response(self) -> _Response:
        """Lines up to the final `.` or `!`; `@` remembered, `#` skipped, `*` collected."""
        lines: List[str] = []
        pace = (time.monotonic(), self._received)
        while True:
            line = self._read_line(self.timeout, pace)
            first = line[:1]
            if first == "@":
                self._notices[line[2:]] = None
            elif first == "#":
                continue
            elif first == "*":
                lines.append(line[2:])
            elif first == ".":
                return _Response(True, line[2:], lines)
            elif first == "!":
                code_text, _, text = line[2:].partition(" ")
                code = _SERVER_CODES.get(code_text, ErrorCode.PROTOCOL)
                return _Response(False, "", lines, code, text if code_text in _SERVER_CODES
                                 else line[2:])
            else:
                raise _Broken("unexpected line from the server: %r" % line[:80])

    def _read_line(self, timeout: Optional[float],
                   pace: Optional[Tuple[float, int]] = None) -> str:
        """The next line without its newline; socket.timeout after `timeout` s (and, with `pace`,
        the response's start time and bytes read before it, once the response is slower than
        MIN_RESPONSE_RATE), _Broken at EOF, _Failed(PROTOCOL) for a line past MAX_RESPONSE_LINE."""
        sock = self._sock
        assert sock is not None
        inbox = self._inbox
        while True:
            end = inbox.find(b"\n", self._searched)
            if end >= 0:
                line = bytes(inbox[:end])
                del inbox[:end + 1]
                self._searched = 0
                return line.rstrip(b"\r").decode("utf-8", "replace")
            self._searched = len(inbox)  # a long line dripping in is searched once: O(n)
            if len(inbox) > MAX_RESPONSE_LINE:
                self._close()  # out of step with the server: the next call starts over
                raise _Failed(ErrorCode.PROTOCOL, "the server sent a line longer than %d bytes"
                              % MAX_RESPONSE_LINE)
            wait = timeout
            if pace is not None and timeout:
                left = pace[0] + timeout + (self._received - pace[1]) / MIN_RESPONSE_RATE \
                    - time.monotonic()
                if left <= 0:
                    raise socket.timeout("slower than %d KiB/s" % (MIN_RESPONSE_RATE // 1024))
                wait = max(min(timeout, left), _SHORTEST_WAIT)
            try:
                sock.settimeout(wait)
                chunk = sock.recv(_RECV_SIZE)
            except socket.timeout:
                raise
            except OSError as error:
                raise _Broken(str(error)) from None
            if not chunk:
                raise _Broken("the server closed the connection")
            self._received += len(chunk)
            inbox += chunk

    # -- outcome -------------------------------------------------------------------------------

    def _ok(self, result: Any) -> Any:
        self.last_error = ErrorCode.OK
        self.last_error_text = ""
        return result

    def _fail(self, code: ErrorCode, text: str, result: Any = False) -> Any:
        self.last_error = code
        self.last_error_text = text
        return result


def _request_line(command: str, arguments: List[str], options: Dict[str, str]) -> str:
    parts = [command] + [encode_argument(argument) for argument in arguments]
    parts += ["%s=%s" % (key, encode_argument(value)) for key, value in options.items()]
    return " ".join(parts)


def _number_text(number: float) -> str:
    return repr(float(number)) if isinstance(number, float) else str(number)


def _monitor_answer(response: _Response) -> Any:
    if response.payload:
        return parse_value(response.payload)
    return [_entry(line) for line in response.lines]


def _within(deadband: float, seen: Any, value: Any) -> bool:
    """True when both are valid numbers less than `deadband` apart (no deadband: False)."""
    if not deadband or not is_valid(seen) or not is_valid(value):
        return False
    try:
        return abs(float(value) - float(seen)) < deadband
    except (TypeError, ValueError):
        return False


def _join(directory: str, name: str) -> str:
    return directory + name if directory == "/" else directory + "/" + name
