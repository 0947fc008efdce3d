"""The HTTP port (`--http-port`): routing and connection glue for the page, the JSON API and metrics.

    GET /                       the live page (DriveStateMonitor/web/index.html, app.js, style.css)
    GET /metrics                Prometheus text format (metrics.py)
    GET /api/drives             the `m` reply as JSON
    GET /api/drives/<serial>    one drive's `m` view plus its status history ("statuses")
    GET /api/status             the `s` reply as JSON
    GET /api/lab                the DSMs of --lab FILE and their page URLs ({"hosts": []} without)

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
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import unquote

from .daemon_log import BadInputLog
from .event_loop import StreamTransport
from .http_protocol import HttpServerConnection, Request, RequestError
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


class Reply(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: Tuple[Tuple[str, str], ...] = ()


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

    def date(self) -> str:
        """The Date header's value, formatted once per second."""
        second = int(self.clock())
        if self._date[0] != second:
            self._date = (second, email.utils.formatdate(second, usegmt=True))
        return self._date[1]

    def answer(self, request: Request) -> Reply:
        handler, reply = self._route(request)
        if handler.startswith("api_") or (handler != "page" and request.path.startswith("/api/")):
            reply = reply._replace(headers=reply.headers + (ANY_ORIGIN,))
        self.requests[(handler, reply.status)] += 1
        return reply

    def answer_error(self, error: RequestError) -> Reply:
        self.requests[("bad_request", error.status)] += 1
        return error_reply(error.status, error.detail, as_json=False)

    def _route(self, request: Request) -> Tuple[str, Reply]:
        path = request.path
        is_api = path == "/api" or path.startswith("/api/")
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
                                            "/api/drives/<serial>, /api/status and /api/lab" % path, True)
        return "not_found", error_reply(404, "nothing at %s; the page is at /, metrics at "
                                        "/metrics" % path, False)


_BAD_REQUESTS = BadInputLog(log)


def _default_bad_input(source: str, what: str) -> None:
    """Where a WebConnection made without the daemon's log complains: rate-limited as well."""
    _BAD_REQUESTS.complain(time.monotonic(), source, what)


class WebConnection(PipelinedConnection):
    """One HTTP connection: requests answered in order, with back-pressure, closed when due."""

    def __init__(self, transport: StreamTransport, app: WebApp,
                 bad_input: Optional[Callable[[str, str], None]] = None) -> None:
        super().__init__(transport)
        self.app = app
        self.http = HttpServerConnection()
        # Told (source, what) about each malformed request: the daemon's rate-limited bad-input
        # log (daemon_log.BadInputLog), so a flood of them cannot fill the log's disk.
        self.bad_input = bad_input or _default_bad_input

    def parse(self, data: bytes) -> List[Union[Request, RequestError]]:
        return self.http.receive_data(data)

    def reply(self, event: Union[Request, RequestError]) -> Union[bytes, Tuple[bytes, ...]]:
        return self._respond(event)

    def done(self) -> bool:
        return self.eof or not self.http.reading

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
            reply, request = self.app.answer(event), event
        headers: List[Tuple[str, str]] = [("Content-Type", reply.content_type), NOSNIFF]
        headers.extend(reply.headers)
        return self.http.response_parts(request, reply.status, reply.body, headers,
                                        date=self.app.date())
