"""A small, strict HTTP/1.1 server protocol (RFC 9110/9112), sans-IO: bytes in, requests out.

Theory of operation
-------------------
One `HttpServerConnection` per TCP connection. The glue feeds it what the socket read
(`receive_data(bytes)`) and gets back, in order, every complete request (`Request`) — several when
the client pipelines — or, at the first thing we will not accept, one `RequestError` carrying the
status code to answer with. After an error, or after a request that ends the connection
(`Connection: close`, HTTP/1.0 without keep-alive), the object reads nothing more: the glue answers
what it got, in order, and closes. It never raises on input and never touches a socket or a clock.

`response(...)` turns a status, headers and a body into the bytes to send, and decides whether the
connection stays open after them (`keep_alive`); HEAD gets the headers of the GET, no body.

We serve GET and HEAD only, so a request body is never used: one with a Content-Length is read and
dropped (up to MAX_BODY_BYTES, else 413); a chunked one is refused (501), since framing it would be
code for nothing we need.

The receive buffer remembers how far it already looked for the end of a line, so a client dripping
one byte at a time costs O(n) in total, not O(n^2) (h11 does the same); and every part of a request
head has a limit, so a client cannot make us hold more than about MAX_HEAD_BYTES of it.
"""
from __future__ import annotations

import re
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

# Limits. nginx's large_client_header_buffers default is 4 x 8 KiB (a request line over 8 KiB gets
# 414); Apache's LimitRequestLine and LimitRequestFieldSize are 8190 bytes and LimitRequestFields
# is 100; h11 caps the whole head at 16 KiB. Our clients are a browser and Prometheus.
MAX_REQUEST_LINE_BYTES = 8190
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
# GET/HEAD bodies have no meaning here; a small one is read past (some clients send `{}`).
MAX_BODY_BYTES = 64 * 1024

REASONS = {
    200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

# RFC 9110 5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
# A request target: visible ASCII only (RFC 9112 3.2); anything else is a bad request.
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
# What a request line may start with: a method's token character, or the empty lines before it.
_REQUEST_START = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\r\n")
# Field values: visible characters, spaces, tabs and obs-text; no NUL, CR, LF or other controls.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_CONTENT_LENGTH = re.compile(rb"[0-9]+\Z")


class Request(NamedTuple):
    """One complete request head. Header names are lower-case; values are latin-1 text."""

    method: str
    target: str
    http_version: Tuple[int, int]
    headers: Tuple[Tuple[str, str], ...]
    keep_alive: bool

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> str:
        """The target's path, without the query string."""
        return self.target.split("?", 1)[0]


class RequestError(NamedTuple):
    """The client sent something we will not accept; answer with `status`, then close."""

    status: int
    detail: str


# What a line whose first byte is not in _REQUEST_START gets, whether the line is whole or not yet.
NOT_A_REQUEST = RequestError(400, "not an HTTP request (want: METHOD /path HTTP/1.1)")


Event = Union[Request, RequestError]


class HttpServerConnection:
    """The server side of one HTTP/1.x connection: parses requests, formats responses."""

    def __init__(self, *, max_request_line: int = MAX_REQUEST_LINE_BYTES,
                 max_head: int = MAX_HEAD_BYTES, max_fields: int = MAX_HEADER_FIELDS,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.max_request_line = max_request_line
        self.max_head = max_head
        self.max_fields = max_fields
        self.max_body = max_body
        self._buffer = bytearray()
        self._scanned = 0          # no newline in _buffer[:_scanned]
        self._lines: List[bytes] = []   # the current request head, line by line
        self._head_bytes = 0
        self._body_left = 0        # bytes of a request body still to drop
        self._done = False         # an error or a last request: read nothing more

    @property
    def reading(self) -> bool:
        """False once nothing more will be parsed (after an error or a closing request)."""
        return not self._done

    @property
    def in_request(self) -> bool:
        """True while a request (head or body) has begun and not ended: --request-timeout."""
        return not self._done and bool(self._buffer or self._lines or self._body_left)

    def receive_data(self, data: bytes) -> List[Event]:
        """Every request completed by `data`, in order; at most one RequestError, last."""
        if self._done:
            return []
        self._buffer += data
        events: List[Event] = []
        start = 0
        while not self._done:
            if self._body_left:
                dropped = min(self._body_left, len(self._buffer) - start)
                self._body_left -= dropped
                start += dropped
                self._scanned = start
                if self._body_left:
                    break
            newline = self._buffer.find(b"\n", max(start, self._scanned))
            if newline < 0:
                self._scanned = len(self._buffer)
                error = self._check_partial_line(len(self._buffer) - start)
                if error is not None:
                    events.append(self._fail(error))
                break
            line = bytes(self._buffer[start:newline])
            start = self._scanned = newline + 1
            event = self._line_received(line)
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        self._scanned = max(0, self._scanned - start)
        if self._done:
            self._buffer = bytearray()
        return events

    # --- parsing ------------------------------------------------------------------------------
    def _check_partial_line(self, partial: int) -> Optional[RequestError]:
        if not self._lines:
            if partial and self._buffer[len(self._buffer) - partial] not in _REQUEST_START:
                # A TLS ClientHello, a binary probe: never a request, said at once rather than
                # after the request deadline (or never, if the client waits for an answer).
                return NOT_A_REQUEST
            if partial > self.max_request_line:
                return RequestError(414, "request line longer than %d bytes"
                                    % self.max_request_line)
        elif self._head_bytes + partial > self.max_head:
            return RequestError(431, "request header fields longer than %d bytes in all"
                                % self.max_head)
        return None

    def _line_received(self, line: bytes) -> Optional[Event]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not self._lines:
            if not line:
                return None  # RFC 9112 2.2: empty lines before a request line are ignored
            if line[0] not in _REQUEST_START:  # as _check_partial_line judges it, however split
                return self._fail(NOT_A_REQUEST)
            if len(line) > self.max_request_line:
                return self._fail(RequestError(414, "request line longer than %d bytes"
                                               % self.max_request_line))
            error = _check_request_line(line)
            if error is not None:  # answered now: no head can make it valid
                return self._fail(error)
            self._lines.append(line)
            self._head_bytes = len(line)
            return None
        if line:
            self._head_bytes += len(line) + 2
            if self._head_bytes > self.max_head:
                return self._fail(RequestError(431, "request header fields longer than %d bytes "
                                               "in all" % self.max_head))
            if len(self._lines) > self.max_fields:
                return self._fail(RequestError(431, "more than %d request header fields"
                                               % self.max_fields))
            self._lines.append(line)
            return None
        lines, self._lines = self._lines, []
        result = _parse_head(lines, self.max_body)
        if isinstance(result, RequestError):
            return self._fail(result)
        request, body_length = result
        self._body_left = body_length
        if not request.keep_alive:
            self._done = True
        return request

    def _fail(self, error: RequestError) -> RequestError:
        self._done = True
        self._lines = []
        return error

    # --- responding ---------------------------------------------------------------------------
    def response(self, request: Optional[Request], status: int, body: bytes,
                 headers: Sequence[Tuple[str, str]] = (), date: Optional[str] = None) -> bytes:
        """The bytes of one response to `request` (None: to a RequestError, closing).

        The connection stays open afterwards only if the request allowed it and the status is not
        an error that left us unsure where the next request starts.
        """
        head, body = self.response_parts(request, status, body, headers, date)
        return head + body if body else head

    def response_parts(self, request: Optional[Request], status: int, body: bytes,
                       headers: Sequence[Tuple[str, str]] = (),
                       date: Optional[str] = None) -> Tuple[bytes, bytes]:
        """`response` as (head, body), the body exactly as given (a memoryview of a cached reply
        stays one, so many clients sending it share its bytes); HEAD: an empty body."""
        keep_alive = request is not None and request.keep_alive
        lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown"))]
        if date is not None:
            lines.append("Date: " + date)
        lines.extend("%s: %s" % (name, value) for name, value in headers)
        if status not in (204, 304):  # RFC 9110 8.6: none on a 204; a 304's would be the 200's
            lines.append("Content-Length: %d" % len(body))
        if not keep_alive:
            lines.append("Connection: close")
        elif request is not None and request.http_version < (1, 1):
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if request is not None and request.method == "HEAD":
            return head, b""
        return head, body


    def stop_reading(self) -> None:
        """Parses nothing more: the connection now carries one long response (an event stream);
        whatever the client sends after it is never answered."""
        self._done = True
        self._lines = []
        self._buffer = bytearray()

    def stream_head(self, status: int, headers: Sequence[Tuple[str, str]] = (),
                    date: Optional[str] = None) -> bytes:
        """The head of a response whose body runs until the connection closes (RFC 9112 6.3,
        point 8: no Content-Length, no chunking), as server-sent events are served."""
        lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown"))]
        if date is not None:
            lines.append("Date: " + date)
        lines.extend("%s: %s" % (name, value) for name, value in headers)
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def server_sent_event(data: bytes, event: Optional[str] = None,
                      event_id: Optional[str] = None) -> bytes:
    """One event of a text/event-stream (HTML Living Standard, "Server-sent events"): optional
    `id:` and `event:` lines, one `data:` line, a blank line. `data` is JSON, whose only line
    breaks can be whitespace between tokens: they become spaces, so the event stays one line."""
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r\n", b" ").replace(b"\n", b" ").replace(b"\r", b" ")
    head = b""
    if event_id is not None:
        head += b"id: " + event_id.encode("ascii") + b"\n"
    if event is not None:
        head += b"event: " + event.encode("ascii") + b"\n"
    return b"".join((head, b"data: ", data, b"\n\n"))


def _check_request_line(line: bytes) -> Optional[RequestError]:
    """Why `line` cannot be a request line we serve, or None."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return RequestError(400, "malformed request line (want: METHOD /path HTTP/1.1)")
    method, target, version = parts
    if not _TOKEN.match(method):
        return RequestError(400, "malformed method")
    version_match = _VERSION.match(version)
    if version_match is None:
        return RequestError(400, "malformed HTTP version")
    if version_match.group(1) != b"1":
        return RequestError(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if not _TARGET.match(target):
        return RequestError(400, "malformed request target")
    return None


def _parse_head(lines: List[bytes], max_body: int) -> Union[Tuple[Request, int], RequestError]:
    """A Request and the length of the body to skip, or why the head is refused."""
    error = _check_request_line(lines[0])
    if error is not None:
        return error
    method, target, version = lines[0].split(b" ")
    version_match = _VERSION.match(version)
    assert version_match is not None  # checked above
    http_version = (int(version_match.group(1)), int(version_match.group(2)))
    headers: List[Tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            # Also obsolete line folding (a line starting with a space): RFC 9112 5.2 allows 400.
            return RequestError(400, "malformed header field line")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            return RequestError(400, "control character in header field %r"
                                % name.decode("ascii"))
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    hosts = [value for name, value in headers if name == "host"]
    if len(hosts) > 1 or (http_version >= (1, 1) and not hosts):
        return RequestError(400, "an HTTP/1.1 request needs exactly one Host header")
    if any(name == "transfer-encoding" for name, _ in headers):
        return RequestError(501, "request bodies with Transfer-Encoding are not accepted")
    lengths = {value for name, value in headers if name == "content-length"}
    body_length = 0
    if lengths:
        if len(lengths) > 1 or not _CONTENT_LENGTH.match(next(iter(lengths)).encode("latin-1")):
            return RequestError(400, "malformed Content-Length")
        digits = next(iter(lengths)).lstrip("0") or "0"
        # Checked by length before int(): a few thousand digits would make int() raise (3.11+)
        # or take quadratic time (3.8-3.10); nothing past MAX_INT_DIGITS is converted anywhere.
        if len(digits) > len(str(max_body)) or int(digits) > max_body:
            return RequestError(413, "request body larger than %d bytes" % max_body)
        body_length = int(digits)
    tokens = {token.strip().lower() for name, value in headers if name == "connection"
              for token in value.split(",")}
    if http_version >= (1, 1):
        keep_alive = "close" not in tokens
    else:
        keep_alive = "keep-alive" in tokens and "close" not in tokens
    target_text = target.decode("ascii")
    if target_text.startswith(("http://", "https://")):
        # absolute-form (RFC 9112 3.2.2): servers must accept it; the authority is ours anyway.
        rest = target_text.split("//", 1)[1]
        target_text = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    elif not target_text.startswith("/") and not (target_text == "*" and method == b"OPTIONS"):
        return RequestError(400, "request target must start with /")
    request = Request(method.decode("ascii"), target_text, http_version, tuple(headers),
                      keep_alive)
    return request, body_length
