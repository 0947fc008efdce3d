"""A lab of DSMs: the lab file, and asking every DSM of it at once.

Theory of operation
-------------------
A DSM only knows its own host. A lab is many hosts, each with its own independent DSM; nothing
new runs centrally. The lab is a plain text file listing the DSMs, and a client that wants the
lab's view asks every DSM itself, all at once, and merges the answers (dsmctl.py with --lab or
--hosts, the live page's "whole lab" view, and prometheus/lab_file_sd.py for Prometheus).

The lab file: one DSM per line, `#` starts a comment, blank lines are skipped:

    labhost1                       # query port 2203, HTTP port 2204
    labhost2:2213 name=bench-2     # query port 2213, shown as "bench-2"
    [fd00::7]:2203 http=8080       # the page and /metrics on port 8080

`host` or `host:port` (the query port; `[v6]:port` for IPv6), then optional `key=value` words:
`name=` (the label shown in the HOST column; default host or host:port) and `http=` (the HTTP
port, for the page and Prometheus; default 2204). A bad line refuses the whole file, naming the
file and line, so a typo never silently drops a host from the lab.

Where the lab file is found: `--lab FILE`; `--lab` with no file, or a command that is lab-wide by
nature (`dsmctl.py find`), takes $DSM_LAB, else the first of DEFAULT_LAB_FILES that exists.

Asking the lab (`ask_lab`): one selector, one non-blocking socket per DSM: connect, send the
query letters, read until as many end bytes as letters arrived (the DSM then closes). Every DSM
gets the same deadline, so 100 DSMs answer in about the slowest one's time and never more than
`timeout`. Host names are resolved in daemon threads (getaddrinfo has no non-blocking form; a
client may use threads, the daemon does not), which wake the selector through a socket pair; a
name that does not resolve, a refused connection, a timeout, an oversized or malformed reply (not
JSON, nested too deep to parse, not an object of objects, a field of the wrong type) is that host's
error, never the command's.
"""
from __future__ import annotations

import errno
import json
import os
import re
import selectors
import socket
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

DEFAULT_QUERY_PORT = 2203
DEFAULT_HTTP_PORT = 2204
ENVIRONMENT_VARIABLE = "DSM_LAB"
# Searched in order when no file is named: the user's own, then the host's.
DEFAULT_LAB_FILES = (os.path.join("~", ".config", "dsm", "lab"), "/etc/dsm/lab")
END_BYTE = b"\x04"
# A DSM never queues more than its --max-output (default 64 MiB) for one client: a longer reply
# is not a DSM's, and 100 hosts at this limit still fit in memory.
MAX_REPLY_BYTES = 64 * 1024 * 1024
# A lab file is a list of hosts: anything bigger is the wrong file.
MAX_LAB_FILE_BYTES = 1024 * 1024
MAX_LAB_HOSTS = 10_000
# Hostnames (RFC 1123 letters, digits, hyphens, dots; underscores as some labs use), IPv4.
_HOST_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
_LABEL = re.compile(r"^[^\s\x00-\x1f\x7f]{1,64}$")


class LabFileError(ValueError):
    """A lab file (or --hosts list) that cannot be used; the message names the file and line."""


class LabHost(NamedTuple):
    """One DSM of the lab."""

    host: str                # a host name or IP address (IPv6 without brackets)
    query_port: int
    http_port: int
    name: str                # the label shown for it (HOST column, page, Prometheus `dsm_host`)
    line: int = 0            # where it came from in the lab file (0: --hosts)

    @property
    def address(self) -> str:
        """host:port of the query port, IPv6 in brackets."""
        return join_host_port(self.host, self.query_port)

    @property
    def http_address(self) -> str:
        return join_host_port(self.host, self.http_port)


def join_host_port(host: str, port: int) -> str:
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("not a port number (1-65535): %r" % text)
    return int(text)


def parse_host_port(text: str, default_port: int = DEFAULT_QUERY_PORT) -> Tuple[str, int]:
    """(host, port) from `host`, `host:port`, `[v6]` or `[v6]:port`; ValueError saying why."""
    port_text = ""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError("not [IPv6]:PORT: %r" % text)
        port_text = rest[1:]
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            raise ValueError("not an IPv6 address: %r" % host) from None
        if rest == ":":
            raise ValueError("no port after the colon: %r" % text)
    elif text.count(":") > 1:
        raise ValueError("an IPv6 address goes in brackets, [%s]:PORT" % text)
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            raise ValueError("no port after the colon: %r" % text)
        if not _HOST_NAME.match(host) or ".." in host:
            raise ValueError("not a host name or address: %r" % host)
    return host, _port(port_text) if port_text else default_port


def parse_lab_line(text: str, line: int = 0) -> Optional[LabHost]:
    """One line of a lab file: a LabHost, None for a blank or comment line; ValueError if bad."""
    words = text.split("#", 1)[0].split()
    if not words:
        return None
    host, query_port = parse_host_port(words[0])
    options: Dict[str, str] = {}
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if not equals:
            raise ValueError("%r is not key=value (after the address only name=LABEL and "
                             "http=PORT may follow)" % word)
        if key not in ("name", "http"):
            raise ValueError("unknown key %r (only name= and http=)" % key)
        if key in options:
            raise ValueError("%s= given twice" % key)
        options[key] = value
    name = options.get("name", words[0])
    if not _LABEL.match(name):
        raise ValueError("name= must be 1 to 64 printable characters without spaces: %r" % name)
    http_port = _port(options["http"]) if "http" in options else DEFAULT_HTTP_PORT
    return LabHost(host, query_port, http_port, name, line)


def parse_lab(text: str, source: str = "lab file") -> List[LabHost]:
    """Every DSM of a lab file's text, in file order. LabFileError "SOURCE:LINE: why" for a bad
    line, a DSM (address) or name listed twice, or a file that lists none."""
    hosts: List[LabHost] = []
    seen: Dict[Any, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            host = parse_lab_line(line, number)
        except ValueError as error:
            raise LabFileError("%s:%d: %s" % (source, number, error)) from None
        if host is None:
            continue
        for key, what in (((host.host.lower(), host.query_port), "the DSM %s" % host.address),
                          (("name", host.name), "the name %s" % host.name)):
            if key in seen:
                raise LabFileError("%s:%d: %s is already on line %d"
                                   % (source, number, what, seen[key]))
            seen[key] = number
        hosts.append(host)
        if len(hosts) > MAX_LAB_HOSTS:
            raise LabFileError("%s:%d: more than %d DSMs" % (source, number, MAX_LAB_HOSTS))
    if not hosts:
        raise LabFileError("%s: lists no DSM (one host or host:port a line)" % source)
    return hosts


def parse_hosts_option(text: str) -> List[LabHost]:
    """--hosts h1,h2:2213: the same as a lab file with one host a line (no name= or http=)."""
    lines = [word.strip() for word in text.split(",")]
    if any(not word or "=" in word or " " in word for word in lines):
        raise LabFileError("--hosts: a comma-separated list of host or host:port, got %r" % text)
    return parse_lab("\n".join(lines), "--hosts")


def default_lab_file(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """$DSM_LAB, else the first of DEFAULT_LAB_FILES that exists, else None."""
    if environ.get(ENVIRONMENT_VARIABLE):
        return environ[ENVIRONMENT_VARIABLE]
    for path in DEFAULT_LAB_FILES:
        path = os.path.expanduser(path)
        if os.path.isfile(path):
            return path
    return None


def read_lab_file(path: str) -> List[LabHost]:
    """The lab file at `path`: LabFileError if it cannot be read or has a bad line."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LAB_FILE_BYTES + 1)
    except OSError as error:
        raise LabFileError("cannot read the lab file %s: %s"
                           % (path, error.strerror or error)) from None
    if len(data) > MAX_LAB_FILE_BYTES:
        raise LabFileError("%s: larger than %d bytes: not a lab file" % (path, MAX_LAB_FILE_BYTES))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise LabFileError("%s:%d: not UTF-8 text" % (path, line)) from None
    return parse_lab(text, path)


# ---------------------------------------------------------------------------------------------
# Asking every DSM at once


class HostAnswer(NamedTuple):
    """One DSM's answer: `replies` (one parsed JSON object per query letter) or `error`."""

    host: LabHost
    replies: Optional[List[Any]]
    error: Optional[str]
    seconds: float


class Answered(NamedTuple):
    """A DSM that answered: its host, and one parsed reply per query letter."""

    host: LabHost
    replies: List[Any]


class _Exchange:
    """The state of one DSM's exchange: resolving, connecting, sending, reading, done."""

    def __init__(self, host: LabHost, request: bytes) -> None:
        self.host = host
        self.request = request
        self.addresses: Optional[List[Any]] = None   # getaddrinfo results, once resolved
        self.resolve_error: Optional[str] = None
        self.sock: Optional[socket.socket] = None
        self.sent = 0
        self.data = bytearray()
        self.ends = 0
        self.result: Optional[HostAnswer] = None
        self.last_error = ""


def _numeric_addresses(host: LabHost) -> Optional[List[Any]]:
    """getaddrinfo for a literal IP address (instant, no DNS), else None."""
    try:
        return socket.getaddrinfo(host.host, host.query_port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None


def _reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is its DSM running?)"
    if isinstance(error, socket.gaierror):
        return "unknown host (%s)" % (error.strerror or error)
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return (text[:1].lower() + text[1:]) or type(error).__name__


def ask_lab(hosts: Iterable[LabHost], letters: str, timeout: float = 10.0,
            max_reply_bytes: int = MAX_REPLY_BYTES,
            clock: Any = time.monotonic) -> List[HostAnswer]:
    """Sends the query `letters` (such as "ms") to every DSM at once and returns one HostAnswer
    per host, in the order given. Each host has `timeout` seconds from the start for all of it
    (resolve, connect, the whole reply); its replies are the parsed JSON objects, one per letter.
    An error of one host (unknown name, refused, timed out, reply over `max_reply_bytes`, not
    JSON, an {"error": ...} answer) is its HostAnswer's `error`; this never raises for them."""
    request = " ".join(letters).encode("ascii")  # whole tokens: "ms" would be one bad query
    start = clock()
    deadline = start + timeout
    exchanges = [_Exchange(host, request) for host in hosts]
    selector = selectors.DefaultSelector()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    selector.register(wake_r, selectors.EVENT_READ, None)
    lock = threading.Lock()
    try:
        for exchange in exchanges:
            exchange.addresses = _numeric_addresses(exchange.host)
            if exchange.addresses is not None:
                _connect(exchange, selector, clock() - start)
            else:
                threading.Thread(target=_resolve, args=(exchange, lock, wake_w),
                                 daemon=True, name="resolve %s" % exchange.host.host).start()
        while True:
            now = clock()
            with lock:
                for exchange in exchanges:
                    if exchange.result is None and exchange.sock is None:
                        if exchange.resolve_error is not None:
                            _finish(exchange, selector, now - start, exchange.resolve_error)
                        elif exchange.addresses is not None:
                            _connect(exchange, selector, now - start)
            pending = [exchange for exchange in exchanges if exchange.result is None]
            if not pending:
                break
            if now >= deadline:
                for exchange in pending:
                    _finish(exchange, selector, now - start, _timeout_reason(exchange, timeout))
                break
            for key, events in selector.select(deadline - now):
                if key.data is None:
                    try:
                        wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    continue
                _step(key.data, events, selector, clock() - start, letters, max_reply_bytes)
    finally:
        for exchange in exchanges:
            if exchange.sock is not None:
                _close(exchange, selector)
        selector.close()
        wake_r.close()
        wake_w.close()
    # The loop above ends only when every exchange has finished (answered, failed or timed out).
    return [exchange.result for exchange in exchanges if exchange.result is not None]


def _resolve(exchange: _Exchange, lock: threading.Lock, wake: socket.socket) -> None:
    """In a daemon thread: the host's addresses, or why not; then wakes the selector."""
    try:
        found = socket.getaddrinfo(exchange.host.host, exchange.host.query_port,
                                   type=socket.SOCK_STREAM)
        error = None if found else "unknown host (no address)"
    except (OSError, UnicodeError) as failure:
        found, error = [], _reason(failure)
    with lock:
        exchange.addresses, exchange.resolve_error = found, error
    try:
        wake.send(b"\0")
    except OSError:  # ask_lab already returned (timed out): nobody to wake
        pass


def _timeout_reason(exchange: _Exchange, timeout: float) -> str:
    if exchange.addresses is None:
        doing = "resolving its name"
    elif exchange.sock is None or exchange.sent == 0:
        doing = "connecting"
    else:
        doing = "waiting for its answer (%d bytes so far)" % len(exchange.data)
    return "no answer within %g s (%s)" % (timeout, doing)


def _connect(exchange: _Exchange, selector: selectors.BaseSelector, elapsed: float) -> None:
    """Starts a non-blocking connect to the next address left; the host's error when none is."""
    while exchange.addresses:
        family, kind, proto, _, address = exchange.addresses.pop(0)
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            exchange.sock = sock
            selector.register(sock, selectors.EVENT_WRITE, exchange)
            return
        sock.close()
        exchange.last_error = _reason(OSError(code, os.strerror(code)))
    _finish(exchange, selector, elapsed, exchange.last_error or "no address to connect to")


def _step(exchange: _Exchange, events: int, selector: selectors.BaseSelector, elapsed: float,
          letters: str, max_reply_bytes: int) -> None:
    """One readiness event of one DSM's socket."""
    sock = exchange.sock
    assert sock is not None
    try:
        if exchange.sent < len(exchange.request):
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            exchange.sent += sock.send(exchange.request[exchange.sent:])
            if exchange.sent == len(exchange.request):
                selector.modify(sock, selectors.EVENT_READ, exchange)
            return
        chunk = sock.recv(1 << 20)
    except (BlockingIOError, InterruptedError):
        return
    except OSError as error:
        if exchange.sent == 0 and exchange.addresses:  # refused on one address: try the next
            exchange.last_error = _reason(error)
            _close(exchange, selector)
            _connect(exchange, selector, elapsed)
            return
        _finish(exchange, selector, elapsed, _reason(error))
        return
    if not chunk:
        _finish(exchange, selector, elapsed, "closed the connection after %d of %d answers"
                % (exchange.ends, len(letters)))
        return
    exchange.data += chunk
    exchange.ends += chunk.count(END_BYTE)
    if len(exchange.data) > max_reply_bytes:
        _finish(exchange, selector, elapsed, "reply larger than %d bytes: refused"
                % max_reply_bytes)
    elif exchange.ends >= len(letters):
        _finish(exchange, selector, elapsed, None, letters)


def _close(exchange: _Exchange, selector: selectors.BaseSelector) -> None:
    if exchange.sock is not None:
        selector.unregister(exchange.sock)
        exchange.sock.close()
        exchange.sock = None


def _finish(exchange: _Exchange, selector: selectors.BaseSelector, elapsed: float,
            error: Optional[str], letters: str = "") -> None:
    _close(exchange, selector)
    replies = None
    if error is None:
        replies, error = parse_replies(bytes(exchange.data), letters)
    exchange.result = HostAnswer(exchange.host, replies, error, elapsed)
    exchange.data = bytearray()


def parse_replies(data: bytes, letters: str) -> Tuple[Optional[List[Any]], Optional[str]]:
    """(one JSON object per letter, None) from a DSM's replies, or (None, why not): not JSON,
    nested too deep for the parser (RecursionError: 5,000 `[` are a few KB), an {"error": ...}
    answer, or not the shape of a DSM's reply (reply_shape_error). Never raises for a reply."""
    replies = []
    for letter, raw in zip(letters, data.split(END_BYTE)):
        text = raw.decode("utf-8", "replace").strip()
        try:
            value = json.loads(text)
        except ValueError:
            return None, "answered %s with something that is not JSON: %.100r" % (letter, text)
        except RecursionError:
            return None, "answered %s with JSON nested too deep to read (%d bytes)" % (
                letter, len(raw))
        if isinstance(value, dict) and "error" in value:
            return None, "refused %s: %.200s" % (letter, value["error"])
        if not isinstance(value, dict):
            return None, "answered %s with %.100r, not a JSON object" % (letter, text)
        wrong = reply_shape_error(letter, value)
        if wrong:
            return None, "answered %s with %s" % (letter, wrong)
        replies.append(value)
    return replies, None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def reply_shape_error(letter: str, reply: Dict[str, Any]) -> Optional[str]:
    """What in a DSM's `m` or `s` reply is not of the type its readers take (dsmctl, find), or
    None. m: {serial: {field: any JSON value, "network_interfaces": [{...}, ...]}}; s: {serial:
    [{"time_stamp": ..., "status": ...}, ...]} (spec/dsm.md). A field's own value may be of any
    type: it is shown as its JSON text."""
    for serial, item in reply.items():
        if letter == "m":
            if not isinstance(item, dict):
                return "%s for drive %.40r, not an object" % (_kind(item), serial)
            interfaces = item.get("network_interfaces")
            if interfaces is not None and not (isinstance(interfaces, list) and all(
                    isinstance(entry, dict) for entry in interfaces)):
                return "network_interfaces of drive %.40r not a list of objects" % serial
        elif letter == "s":
            if not isinstance(item, list):
                return "%s for drive %.40r, not a list of statuses" % (_kind(item), serial)
            if not all(isinstance(entry, dict) for entry in item):
                return "a status of drive %.40r that is not an object" % serial
    return None


# ---------------------------------------------------------------------------------------------
# Where each drive is heard


def find_drives(answers: Iterable[Union[HostAnswer, Answered]], serials: Iterable[str]
                ) -> List[Dict[str, Any]]:
    """One row per (DSM, drive) that knows one of `serials` (from its m and s replies, in that
    order): host, serial_number, interface, address, state, last_seen, status, time_stamp. A drive
    heard by two DSMs gives two rows; a serial no DSM knows gives none. Sorted by serial, then
    host, in the order the answers came."""
    wanted = list(dict.fromkeys(serials))
    ordered: List[Tuple[Tuple[int, int], Dict[str, Any]]] = []  # (serial's place, answer's), row
    for order, answer in enumerate(answers):
        if answer.replies is None:
            continue
        drives, statuses = answer.replies[0], answer.replies[1] if len(answer.replies) > 1 else {}
        for serial in wanted:
            drive = drives.get(serial)
            history = statuses.get(serial)
            if not isinstance(drive, dict) and not history:
                continue
            drive = drive if isinstance(drive, dict) else {}
            latest = history[-1] if isinstance(history, list) and history else {}
            latest = latest if isinstance(latest, dict) else {"status": latest}
            interfaces = [item for item in drive.get("network_interfaces") or []
                          if isinstance(item, dict)]
            ordered.append(((wanted.index(serial), order), {
                "host": answer.host.name, "serial_number": serial,
                # where the announcement arrived, when the DSM says (its `interface` field)
                "interface": drive.get("interface") or "",
                "source_address": drive.get("source_address") or "",
                "ipv4_addr": " ".join(str(item["ipv4_addr"]) for item in interfaces
                                      if item.get("ipv4_addr")),
                "state": drive.get("state") or ("unannounced" if not drive else ""),
                "last_seen": drive.get("last_seen") or "",
                "status": latest.get("status"), "time_stamp": latest.get("time_stamp")}))
    ordered.sort(key=lambda item: item[0])
    return [row for _, row in ordered]
