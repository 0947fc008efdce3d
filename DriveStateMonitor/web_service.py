"""The HTTP port (`--http-port`): routing and connection glue for the page, the JSON API and metrics.

    GET /                       the live page (DriveStateMonitor/web/index.html, app.js, style.css)
    GET /metrics                Prometheus text format (metrics.py)
    GET /api/drives             the `m` reply as JSON
    GET /api/drives/<serial>    one drive's `m` view plus its status history ("statuses")
    GET /api/status             the `s` reply as JSON
    GET /api/lab                the DSMs of --lab FILE and their page URLs ({"hosts": []} without)
    GET /api/events             the change feed as server-sent events (EventStreams, change_feed.py);
                                `?parts=1`: its snapshot in bounded parts (the page asks for it)

The JSON endpoints carry an `ETag` made of the process's epoch and the store's change counters (no
hashing), answer `If-None-Match` with 304 and no body, and send gzip to a client that accepts it
(`Vary: Accept-Encoding`), compressed once per version of the body and shared by every client.

The JSON API (/api/...) allows GET from any origin (CORS `Access-Control-Allow-Origin: *`): a DSM's
page in "whole lab" view fetches every other DSM's /api/drives and /api/status itself
(web/lab.js, docs/lab.md). The API is read-only and public on the port anyway; the page and
/metrics send no such header, so no other origin reads them.

The data comes from callables the daemon passes in (`WebData`), so this module knows neither the
store nor the loop. The static files are read once, when the daemon starts: serving them is a dict
lookup, never file I/O in the loop.
"""
from __future__ import annotations

import collections
import email.utils
import json
import logging
import os
import time
import zlib
from typing import (Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Set, Tuple,
                    Union)
from urllib.parse import parse_qs, unquote

from .change_feed import ChangeFeed, SnapshotRow
from .daemon_log import BadInputLog
from .event_loop import StreamTransport
from .http_protocol import HttpServerConnection, Request, RequestError, server_sent_event
from .pipelining import PipelinedConnection
from .lab import LabHost
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, render_metrics

log = logging.getLogger("dsm.http")

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".png": "image/png", ".ico": "image/x-icon"}
# Live data must never come from a cache; the page may be revalidated.
NO_STORE = ("Cache-Control", "no-store")
NOSNIFF = ("X-Content-Type-Options", "nosniff")
# The page loads nothing from elsewhere: say so, and a drive field can never pull in a script.
PAGE_POLICY = ("Content-Security-Policy",
               "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "frame-ancestors 'none'")
ALLOWED_METHODS = ("GET", "HEAD")
# Read-only JSON for any origin: the lab view of another DSM's page (see the module docstring).
ANY_ORIGIN = ("Access-Control-Allow-Origin", "*")
# The answer to a CORS preflight (OPTIONS) for /api/: a page of another DSM may send the
# validators and the feed's resumption header itself (Fetch standard, "CORS protocol").
PREFLIGHT = (("Access-Control-Allow-Methods", "GET, HEAD"),
             ("Access-Control-Allow-Headers", "If-None-Match, Last-Event-ID, Cache-Control"),
             ("Access-Control-Max-Age", "86400"))


def lab_json(hosts: Tuple[LabHost, ...]) -> bytes:
    """/api/lab: {"hosts": [{name, host, query_port, http_port, url}]}, in lab-file order."""
    return json.dumps({"hosts": [
        {"name": host.name, "host": host.host, "query_port": host.query_port,
         "http_port": host.http_port, "url": "http://%s" % host.http_address}
        for host in hosts]}).encode("utf-8")


def page_policy(hosts: Tuple[LabHost, ...]) -> Tuple[str, str]:
    """PAGE_POLICY, with each lab DSM's HTTP origin added to connect-src (and nothing else)."""
    if not hosts:
        return PAGE_POLICY
    origins = " ".join("http://%s" % host.http_address for host in hosts)
    return (PAGE_POLICY[0], PAGE_POLICY[1].replace("connect-src 'self'",
                                                   "connect-src 'self' " + origins))


class StaticFile(NamedTuple):
    body: bytes
    content_type: str


class WebData(NamedTuple):
    """What the routes read, supplied by the daemon."""

    drives_json: Callable[[], bytes]                  # the `m` JSON
    drive_json: Callable[[str], Optional[bytes]]      # one drive + statuses; None if unknown
    status_json: Callable[[], bytes]                  # the `s` JSON
    metrics_facts: Callable[[], Mapping[str, Any]]    # see metrics.render_metrics
    lab_hosts: Tuple[LabHost, ...] = ()               # --lab: the DSMs of the page's lab view
    # (drives_version, statuses_version): counters that move whenever the bodies do (ETags).
    versions: Optional[Callable[[], Tuple[int, int]]] = None
    epoch: str = "0"                                  # fixed for the process (change_feed.py)


class Reply(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: Tuple[Tuple[str, str], ...] = ()


# zlib level 1: 11 MB of `s` JSON in about 50 ms, a twentieth of its size (docs/performance.md);
# higher levels cost several times the CPU for a few per cent less. Bodies under a packet are sent
# as they are.
GZIP_LEVEL = 1
GZIP_MIN_BYTES = 1024
VARY = ("Vary", "Accept-Encoding")
# Tagged replies may be kept, but only used after asking again (RFC 9111 5.2.2.4): a browser's own
# cache then sends If-None-Match by itself and a page's plain fetch() gets the 304's savings.
REVALIDATE = ("Cache-Control", "no-cache")


def gzip_bytes(body: bytes) -> bytes:
    """`body` in gzip format (RFC 1952), at GZIP_LEVEL."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def accepts_gzip(request: Request) -> bool:
    """True when Accept-Encoding lists gzip (or x-gzip) with a non-zero q (RFC 9110 12.5.3)."""
    for value in (v for name, v in request.headers if name == "accept-encoding"):
        for item in value.split(","):
            coding, _, params = item.strip().partition(";")
            if coding.strip().lower() not in ("gzip", "x-gzip"):
                continue
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    if float(q[2:]) <= 0:
                        continue
                except ValueError:
                    continue
            return True
    return False


def etag_matches(request: Request, tag: str) -> bool:
    """True when If-None-Match names `tag` (either representation: identity or gzip) or is `*`
    (RFC 9110 13.1.2; the weak comparison, so a W/ prefix is ignored)."""
    value = request.header("if-none-match")
    if value is None:
        return False
    for candidate in value.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate in ('"%s"' % tag, '"%s-gzip"' % tag):
            return True
    return False


def load_static_files(directory: str = WEB_DIR) -> Dict[str, StaticFile]:
    """Every file of `directory` by its URL path (`/name`; `/` is index.html), read now."""
    files: Dict[str, StaticFile] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        log.warning("no web page: cannot read %s: %s", directory, exc.strerror or exc)
        names = []
    for name in names:
        path = os.path.join(directory, name)
        content_type = CONTENT_TYPES.get(os.path.splitext(name)[1])
        if content_type is None or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            files["/" + name] = StaticFile(f.read(), content_type)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    else:
        files["/"] = StaticFile(b"<!doctype html><title>DSM</title><p>The page's files are "
                                b"missing (DriveStateMonitor/web/); <a href=\"/api/drives\">"
                                b"/api/drives</a> and <a href=\"/metrics\">/metrics</a> work.\n",
                                CONTENT_TYPES[".html"])
    return files


def error_reply(status: int, message: str, as_json: bool) -> Reply:
    if as_json:
        body = json.dumps({"error": message, "status": status}).encode("utf-8")
        return Reply(status, JSON_TYPE, body, (NO_STORE,))
    return Reply(status, TEXT_TYPE, ("%d %s\n" % (status, message)).encode("utf-8"), (NO_STORE,))


def http_refusal(code: str, why: str) -> bytes:
    """The whole response for a connection the daemon refuses (DENIED: 403, LIMIT: 503)."""
    status = 403 if code == "DENIED" else 503
    return HttpServerConnection().response(None, status, (why + "\n").encode("utf-8"),
                                           [("Content-Type", TEXT_TYPE)])


class WebApp:
    """Routes a request to its handler; counts answers by handler and status code."""

    def __init__(self, data: WebData, static: Mapping[str, StaticFile],
                 clock: Callable[[], float]) -> None:
        self.data = data
        self.static = static
        self.clock = clock
        self.requests: Dict[Tuple[str, int], int] = collections.Counter()
        self._date = (-1, "")
        self.lab_json = lab_json(data.lab_hosts)
        self.page_policy = page_policy(data.lab_hosts)
        self.streams: Optional["EventStreams"] = None  # /api/events, when the daemon serves it
        # path -> (tag, gzip body): the last compressed version of each big body.
        self._gzipped: Dict[str, Tuple[str, bytes]] = {}

    def date(self) -> str:
        """The Date header's value, formatted once per second."""
        second = int(self.clock())
        if self._date[0] != second:
            self._date = (second, email.utils.formatdate(second, usegmt=True))
        return self._date[1]

    def answer(self, request: Request) -> Reply:
        handler, reply = self._route(request)
        if reply.status == 200 and handler.startswith("api_"):
            reply = self._validated(request, reply)
        if handler.startswith("api_") or (handler != "page" and request.path.startswith("/api/")):
            reply = reply._replace(headers=reply.headers + (ANY_ORIGIN,))
        self.requests[(handler, reply.status)] += 1
        return reply

    def etag(self, path: str) -> Optional[str]:
        """The current entity tag of a JSON endpoint's body (unquoted), or None (not tagged)."""
        versions = self.data.versions
        if versions is None:
            return None
        drives, statuses = versions()
        if path == "/api/drives":
            return "%s-d%d" % (self.data.epoch, drives)
        if path == "/api/status":
            return "%s-s%d" % (self.data.epoch, statuses)
        if path == "/api/lab":
            return "%s-lab" % self.data.epoch
        if path.startswith("/api/drives/"):
            return "%s-d%d-s%d" % (self.data.epoch, drives, statuses)
        return None

    def _validated(self, request: Request, reply: Reply) -> Reply:
        """`reply` with its ETag: 304 when If-None-Match holds it, else gzip if accepted."""
        path = request.path
        tag = self.etag(path)
        headers = reply.headers + (VARY,)
        if tag is not None:
            headers = tuple(REVALIDATE if header == NO_STORE else header for header in headers)
        if tag is not None:
            if etag_matches(request, tag):
                return Reply(304, reply.content_type, b"", headers + (("ETag", '"%s"' % tag),))
        if not accepts_gzip(request) or len(reply.body) < GZIP_MIN_BYTES:
            if tag is not None:
                headers += (("ETag", '"%s"' % tag),)
            return reply._replace(headers=headers)
        cached = self._gzipped.get(path)
        if tag is not None and cached is not None and cached[0] == tag:
            body = cached[1]
        else:
            body = gzip_bytes(reply.body)
            if tag is not None and not path.startswith("/api/drives/"):
                self._gzipped[path] = (tag, body)
        headers += (("Content-Encoding", "gzip"),)
        if tag is not None:
            headers += (("ETag", '"%s-gzip"' % tag),)
        return reply._replace(body=body, headers=headers)

    def answer_error(self, error: RequestError) -> Reply:
        self.requests[("bad_request", error.status)] += 1
        return error_reply(error.status, error.detail, as_json=False)

    def _route(self, request: Request) -> Tuple[str, Reply]:
        path = request.path
        is_api = path == "/api" or path.startswith("/api/")
        if request.method == "OPTIONS" and is_api:
            return "api_preflight", Reply(204, JSON_TYPE, b"", PREFLIGHT)
        if request.method not in ALLOWED_METHODS:
            reply = error_reply(405, "method %s not allowed; use GET or HEAD" % request.method,
                                is_api)
            return "bad_request", reply._replace(headers=reply.headers + (
                ("Allow", ", ".join(ALLOWED_METHODS)),))
        if path == "/metrics":
            text = render_metrics(self.data.metrics_facts()).encode("utf-8")
            return "metrics", Reply(200, METRICS_CONTENT_TYPE, text, (NO_STORE,))
        if path == "/api/drives":
            return "api_drives", Reply(200, JSON_TYPE, self.data.drives_json(), (NO_STORE,))
        if path == "/api/status":
            return "api_status", Reply(200, JSON_TYPE, self.data.status_json(), (NO_STORE,))
        if path == "/api/lab":
            return "api_lab", Reply(200, JSON_TYPE, self.lab_json, (NO_STORE,))
        if path.startswith("/api/drives/"):
            serial = unquote(path[len("/api/drives/"):], errors="replace")
            body = self.data.drive_json(serial) if serial else None
            if body is None:
                return "api_drive", error_reply(404, "no drive with serial number %r" % serial,
                                                True)
            return "api_drive", Reply(200, JSON_TYPE, body, (NO_STORE,))
        static = self.static.get(path)
        if static is not None:
            headers: Tuple[Tuple[str, str], ...] = (("Cache-Control", "no-cache"),)
            if static.content_type.startswith("text/html"):
                headers += (self.page_policy,)
            return "page", Reply(200, static.content_type, static.body, headers)
        if is_api:
            return "not_found", error_reply(404, "no API endpoint %s; there are /api/drives, "
                                            "/api/drives/<serial>, /api/status, /api/lab and "
                                            "/api/events" % path, True)
        return "not_found", error_reply(404, "nothing at %s; the page is at /, metrics at "
                                        "/metrics" % path, False)


_BAD_REQUESTS = BadInputLog(log)


def _default_bad_input(source: str, what: str) -> None:
    """Where a WebConnection made without the daemon's log complains: rate-limited as well."""
    _BAD_REQUESTS.complain(time.monotonic(), source, what)


# The stream's first line: a browser reconnects 2 s after losing it (the page's old poll period).
RETRY_MS = 2000
# A comment line when nothing else was sent for this long, so proxies and browsers keep the
# connection, and a viewer can tell a quiet DSM from a dead link (nginx's proxy_read_timeout and
# many load balancers give up after 60 s).
KEEPALIVE_S = 15.0
KEEPALIVE = b": keepalive\n\n"
RESYNC = server_sent_event(b'{"reason": "too slow"}', "resync")
# After the last stream closed, changes are still encoded this long, so a page that reconnects
# (2 s later, or after a network blip) resumes from the window instead of a snapshot; past it, a
# DSM nobody watches does no JSON work for the feed (ChangeFeed.skip).
UNWATCHED_GRACE_S = 300.0
STREAM_HEADERS = (("Content-Type", "text/event-stream"), NO_STORE, NOSNIFF, ANY_ORIGIN)


class EventStreams:
    """The open `/api/events` streams and what they share: the change feed, the last snapshot.

    Once per loop pass the daemon hands `publish` the serials the store marked; the event is
    encoded once (change_feed.ChangeFeed) and the same bytes go to every stream. A stream whose
    unsent output reached its transport's high-water mark is not written to: it catches up from
    the feed's window when its client has read (`writing_drained`), so a slow viewer holds at most
    the mark plus one event. One whose next event has left the window meanwhile is too slow: it
    gets the `resync` event and is closed once that is sent (or by --idle-timeout if its client
    never reads again). All output goes through the transports, inside --max-output and
    --max-output-total like any reply.
    """

    def __init__(self, feed: ChangeFeed, drives_json: Callable[[], bytes],
                 status_json: Callable[[], bytes], drive_row: Callable[[str], Optional[bytes]],
                 status_row: Callable[[str], Optional[bytes]],
                 snapshot_rows: Callable[[], Iterable[SnapshotRow]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.feed = feed
        self.clock = clock  # monotonic s: how long nobody has watched
        self.drives_json = drives_json
        self.status_json = status_json
        self.drive_row = drive_row
        self.status_row = status_row
        self.snapshot_rows = snapshot_rows  # every row, for a snapshot in parts
        self.open: Set["EventStream"] = set()
        self.resyncs = 0     # streams closed as too slow
        self.opened = 0      # streams opened since start
        self._snapshot: Tuple[Any, bytes] = (None, b"")
        self._snapshot_parts: Tuple[Any, List[bytes]] = (None, [])
        # None while a stream is open; a new process has never been watched: no client holds an
        # id of its epoch, so nothing needs encoding until the first stream opens.
        self._unwatched_since: Optional[float] = float("-inf")

    def snapshot(self) -> bytes:
        """The encoded snapshot event of the current state, built at most once per revision and
        second: viewers opening together (a lab's screens after a restart) share one, even while
        repeat announcements move `last_seen` (not a change: it may be a second old)."""
        key = (self.feed.rev, int(self.clock()))
        if self._snapshot[0] != key:
            data = self.feed.snapshot_data(self.drives_json(), self.status_json())
            self._snapshot = (key, server_sent_event(data, "snapshot",
                                                     self.feed.event_id(self.feed.rev)))
        return self._snapshot[1]

    def snapshot_parts(self) -> List[bytes]:
        """The same snapshot as framed events in bounded parts (ChangeFeed.snapshot_parts),
        shared as `snapshot` is: built at most once per revision and second."""
        key = (self.feed.rev, int(self.clock()))
        if self._snapshot_parts[0] != key:
            self._snapshot_parts = (key, self.feed.snapshot_parts(self.snapshot_rows(),
                                                                  server_sent_event))
        return self._snapshot_parts[1]

    def start(self, transport: StreamTransport, last_id: Optional[str],
              parts: bool = False) -> "EventStream":
        """Opens a stream on `transport` (its head already written): the retry line, then either
        the events after `last_id` (still in the window) or a snapshot (in parts if `parts`)."""
        stream = EventStream(self, transport)
        transport.write(b"retry: %d\n\n" % RETRY_MS)
        missed = self.feed.since(last_id)
        if missed is None and parts:
            for encoded in self.snapshot_parts():
                transport.write(encoded)
        elif missed is None:
            transport.write(self.snapshot())
        else:
            for encoded in missed:
                transport.write(encoded)
        stream.next_rev = self.feed.rev + 1
        self.open.add(stream)
        self._unwatched_since = None
        self.opened += 1
        return stream

    def publish(self, drives_touched: Iterable[str], statuses_touched: Iterable[str],
                wiped: bool) -> int:
        """Numbers this pass's changes as one event and sends it to every open stream; its rev.
        Nobody watching for UNWATCHED_GRACE_S: numbered, not encoded (ChangeFeed.skip)."""
        self._snapshot = (None, b"")  # stale now: its memory goes with the last stream sent it
        self._snapshot_parts = (None, [])
        if not self.open:
            now = self.clock()
            if self._unwatched_since is None:
                self._unwatched_since = now
            elif now - self._unwatched_since > UNWATCHED_GRACE_S:
                return self.feed.skip()
        rev, _ = self.feed.publish(drives_touched, statuses_touched, wiped, self.drive_row,
                                   self.status_row, self._encode_change)
        for stream in list(self.open):
            stream.pump()
        return rev

    @staticmethod
    def _encode_change(event_id: str, data: bytes) -> bytes:
        return server_sent_event(data, "change", event_id)

    def keepalive(self) -> None:
        """Every KEEPALIVE_S (a loop timer): a comment to each stream that was sent nothing since
        the last call and has nothing unsent."""
        for stream in list(self.open):
            if not stream.sent and stream.transport.output_size == 0:
                stream.transport.write(KEEPALIVE)
            stream.sent = False


class EventStream:
    """One open /api/events response: where it is in the feed, and whether it kept up."""

    def __init__(self, streams: EventStreams, transport: StreamTransport) -> None:
        self.streams = streams
        self.transport = transport
        self.next_rev = 0     # the revision of the next change event to send
        self.sent = True      # something was written since the last keepalive tick
        self.ended = False    # resynced or closed: nothing more is written

    def pump(self) -> None:
        """Writes the events it has not had while its unsent output stays under the high-water
        mark; `resync` if those events have left the window."""
        transport, feed = self.transport, self.streams.feed
        if self.ended:
            return
        if transport.closed:
            self.closed()
            return
        while self.next_rev <= feed.rev:
            if self.next_rev < feed.oldest_rev:
                self.resync()
                return
            if transport.output_size >= transport.high_water:
                return  # wait for writing_drained
            events = feed.events_from(self.next_rev)
            assert events is not None  # checked against oldest_rev above
            for encoded in events:
                if transport.output_size >= transport.high_water:
                    break
                transport.write(encoded)
                self.next_rev += 1
                self.sent = True
                if transport.closed:  # reset by --max-output
                    self.closed()
                    return

    def resync(self) -> None:
        """Too slow: one `resync` event, then closed when it is sent (the client reconnects)."""
        self.closed()
        self.streams.resyncs += 1
        log.info("%s: event stream too slow (%d bytes unsent, its next event left the window); "
                 "resync", self.transport.label, self.transport.output_size)
        self.transport.write(RESYNC)
        self.transport.close_when_flushed()

    def closed(self) -> None:
        self.ended = True
        streams = self.streams
        streams.open.discard(self)
        if not streams.open and streams._unwatched_since is None:
            streams._unwatched_since = streams.clock()


def events_last_id(request: Request) -> Optional[str]:
    """Where a client resumes: its Last-Event-ID header, else `?since=ID`, else None."""
    last_id = request.header("last-event-id")
    if last_id is None and "?" in request.target:
        since = parse_qs(request.target.split("?", 1)[1]).get("since")
        last_id = since[0] if since else None
    return last_id


def events_in_parts(request: Request) -> bool:
    """True when the client asks for the snapshot in parts (`?parts=1`); without it, one
    `snapshot` event, as pages and scripts written before the parts expect."""
    if "?" not in request.target:
        return False
    return parse_qs(request.target.split("?", 1)[1]).get("parts", [""])[-1] == "1"


class WebConnection(PipelinedConnection):
    """One HTTP connection: requests answered in order, with back-pressure, closed when due.
    After `GET /api/events` it carries that one event stream until either side closes it."""

    def __init__(self, transport: StreamTransport, app: WebApp,
                 bad_input: Optional[Callable[[str, str], None]] = None) -> None:
        super().__init__(transport)
        self.app = app
        self.http = HttpServerConnection()
        # Told (source, what) about each malformed request: the daemon's rate-limited bad-input
        # log (daemon_log.BadInputLog), so a flood of them cannot fill the log's disk.
        self.bad_input = bad_input or _default_bad_input
        self.stream: Optional[EventStream] = None

    def parse(self, data: bytes) -> List[Union[Request, RequestError]]:
        return self.http.receive_data(data)

    def reply(self, event: Union[Request, RequestError]) -> Union[bytes, Tuple[bytes, ...]]:
        return self._respond(event)

    def done(self) -> bool:
        if self.stream is not None:
            return self.eof  # the client left: close
        return self.eof or not self.http.reading

    def writing_drained(self) -> None:
        if self.stream is not None:
            self.stream.pump()
        else:
            super().writing_drained()

    def connection_lost(self) -> None:
        super().connection_lost()
        if self.stream is not None:
            self.stream.closed()

    def idle_exempt(self) -> bool:
        """True while this is an open event stream with nothing unsent: quiet on purpose, not
        idle (--idle-timeout). A stream whose client stopped reading is not exempt."""
        return self.stream is not None and not self.stream.ended and \
            self.transport.output_size == 0

    def has_partial_request(self) -> bool:
        return self.http.in_request

    def request_timed_out(self, seconds: float) -> None:
        """--request-timeout passed since the request's first byte: 408, close (RFC 9110 15.5.9)."""
        self.pending.clear()
        for part in self._respond(RequestError(  # (the sweep has complained of it already)
                408, "request not complete within %g s of its first byte" % seconds),
                complain=False):
            self.transport.write(part)
        self.transport.close_when_flushed()

    def _respond(self, event: Union[Request, RequestError],
                 complain: bool = True) -> Tuple[bytes, bytes]:
        if isinstance(event, RequestError):
            reply, request = self.app.answer_error(event), None
            if complain:
                self.bad_input(self.transport.label, "HTTP %d: %s" % (event.status, event.detail))
        else:
            if event.path == "/api/events" and self.app.streams is not None and \
                    event.method in ("GET", "HEAD"):
                return self._start_stream(event), b""
            reply, request = self.app.answer(event), event
        headers: List[Tuple[str, str]] = [NOSNIFF]
        if reply.status not in (204, 304):
            headers.insert(0, ("Content-Type", reply.content_type))
        headers.extend(reply.headers)
        return self.http.response_parts(request, reply.status, reply.body, headers,
                                        date=self.app.date())

    def _start_stream(self, request: Request) -> bytes:
        """Answers GET /api/events: the head, then the connection is the stream's (HEAD: the head,
        then closed). Requests pipelined after it are never answered."""
        assert self.app.streams is not None
        self.app.requests[("api_events", 200)] += 1
        self.http.stop_reading()
        self.pending.clear()
        head = self.http.stream_head(200, STREAM_HEADERS, date=self.app.date())
        if request.method == "HEAD":
            return head
        self.transport.write(head)
        self.stream = self.app.streams.start(self.transport, events_last_id(request),
                                             events_in_parts(request))
        return b""
