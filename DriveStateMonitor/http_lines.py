"""HTTP lines on the ports that do not speak HTTP (status, Status Server), sans-IO.

Theory of operation
-------------------
Any web page a lab engineer visits can make the browser send a request to any host and port: a form
POST with `enctype="text/plain"` puts lines of the page's choosing in the body. The status and
Status Server protocols are line-oriented, so the request's head would only earn errors, but the
body's lines would run: a status stored, a `PUT`, a `SAVE` (the "cross-protocol" attack; Redis
closes a connection at a `POST` or `Host:` line since 3.2.7 for exactly this).

So on those ports a line that is HTTP ends the connection: the protocol is handed nothing from that
line on (not the rest of the head, not the body), the client gets one error naming the HTTP port,
and the line counts as bad input. A line is what begins the connection or follows a LF; it is HTTP
when it is

* a request line, `METHOD SP target SP HTTP/d.d` (RFC 9112 section 3; any method token, with or
  without the CR), or
* a header line whose name is one a browser sends on every request or form POST (`HEADER_NAMES`,
  and every `Sec-*`), followed by `:`, in any case.

No valid status (it starts with `{`) and no Status Server command (its name is a word with no `:`
after it) is either; a Status Server value that would end a line with ` HTTP/1.1` can be quoted.

`HttpLineGuard.receive_data(data)` returns what the protocol may have of `data` and whether an HTTP
line was found (from then on it returns nothing). Complete lines are judged with one C-level
regular-expression search per chunk. The unfinished last line is held back while its start could
still become an HTTP line (`GET /x` could be `GET /x HTTP/1.1`) — until a byte rules that out, its
LF arrives, or it passes MAX_HELD bytes — so the protocol never answers half of a request line
first. A line held that long is passed on unjudged; the browser's `Host:` line follows it anyway.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

# A held line start longer than this is passed on unjudged: nginx's default buffer for a request
# line is 8 KiB (large_client_header_buffers), and so is the Status Server's longest line.
MAX_HELD = 8192

# Header names every browser request or form POST carries (Fetch standard, RFC 9110); `Sec-*` too.
HEADER_NAMES = ("Host", "Origin", "Referer", "User-Agent", "Content-Type", "Content-Length",
                "Cookie", "Accept", "Accept-Encoding", "Accept-Language", "Connection",
                "Cache-Control", "Pragma", "Upgrade-Insecure-Requests", "DNT", "Priority",
                "Transfer-Encoding", "Upgrade")

_TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"  # RFC 9110 5.6.2: the characters of a method token
_REQUEST_LINE = rb"[%s]+ [^\x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]\r?" % _TCHAR
_HEADER_LINE = rb"(?i:(?:%s|sec-[0-9a-z-]*)[ \t]*:)" % "|".join(
    re.escape(name) for name in HEADER_NAMES).encode("ascii")
# A complete HTTP line (it ends with LF) at a given start, or after a LF: the literal LF lets the
# regular-expression engine skip from line to line in C instead of trying every byte.
_HTTP_LINE = re.compile(rb"(?:%s(?=\n)|%s)" % (_REQUEST_LINE, _HEADER_LINE))
_HTTP_LINE_AFTER_LF = re.compile(rb"\n(?:%s(?=\n)|%s)" % (_REQUEST_LINE, _HEADER_LINE))
_HEADER_START = re.compile(_HEADER_LINE)
_WHOLE_LINE = re.compile(rb"(?:%s\Z|%s)" % (_REQUEST_LINE, _HEADER_LINE))
# The start of a line worth holding back: what a browser's request line may still become. Its
# method is upper case (a form sends GET or POST; any other method from a page is preceded by an
# OPTIONS preflight) and its target starts with `/`, `*` or `http` (RFC 9112 3.2). Any other line
# is passed on at once, so garbage keeps its immediate error; judged whole at its LF, an HTTP line
# of another shape is refused all the same when it arrives whole, and a later `Host:` line ends it.
_REQUEST_LINE_START = re.compile(
    rb"[A-Z]+(?: (?:(?:[/*]|h(?:t(?:t(?:p)?)?)?\Z|https?:)[^\x00-\x20\x7f]*"
    rb"(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?)?)?)?\Z")
_HEADER_PREFIXES = tuple(name.lower().encode("ascii") for name in HEADER_NAMES)
_SEC_NAME = re.compile(rb"sec-[0-9a-z-]*\Z")


def _could_become_header(start: bytes) -> bool:
    """True when `start` (no LF yet) may still become a header line of HEADER_NAMES or Sec-*."""
    if len(start) > 64:
        return False
    name = start.lower()
    stripped = name.rstrip(b" \t")
    if stripped != name:  # blanks after the name: only a whole name may come before them
        return stripped in _HEADER_PREFIXES or _SEC_NAME.match(stripped) is not None
    return (any(prefix.startswith(name) for prefix in _HEADER_PREFIXES)
            or b"sec-".startswith(name) or _SEC_NAME.match(name) is not None)


def is_http_line(line: bytes) -> bool:
    """True when `line` (without its LF) is an HTTP request line or a browser's header line."""
    return _WHOLE_LINE.match(line) is not None


class HttpLineGuard:
    """Stands before a line-oriented protocol: passes its bytes on until an HTTP line (see top)."""

    __slots__ = ("found", "_held", "_mid_line")

    def __init__(self) -> None:
        self.found = False     # an HTTP line arrived: nothing more is passed on
        self._held = b""       # the start of the unfinished line, while it may become HTTP
        self._mid_line = False  # inside a line already judged not HTTP: pass up to its LF

    @property
    def holding(self) -> bool:
        """True while bytes received are held back (the line's end decides): a partial request."""
        return bool(self._held)

    def receive_data(self, data: bytes) -> Tuple[bytes, bool]:
        """(what the protocol may have, True once an HTTP line has arrived)."""
        if self.found:
            return b"", True
        buf = self._held + data if self._held else data
        self._held = b""
        pos = 0
        if self._mid_line:
            end = buf.find(b"\n")
            if end < 0:
                return buf, False
            pos = end + 1
            self._mid_line = False
        last = buf.rfind(b"\n")
        if last >= pos:
            # Every HTTP line holds " HTTP/" (a request line) or ":" (a header line): complete
            # lines with neither (pipelined commands) need no regular expression, which costs
            # about 0.2 us a line where the two finds cost 0.01 us.
            if buf.find(b":", pos, last + 1) >= 0 or buf.find(b" HTTP/", pos, last + 1) >= 0:
                if _HTTP_LINE.match(buf, pos, last + 1) is not None:
                    return self._refuse(buf, pos)
                http = _HTTP_LINE_AFTER_LF.search(buf, pos, last + 1)
                if http is not None:
                    return self._refuse(buf, http.start() + 1)
            pos = last + 1
        if pos == len(buf):
            return buf, False
        if _HEADER_START.match(buf, pos) is not None:
            return self._refuse(buf, pos)
        if len(buf) - pos <= MAX_HELD and (_REQUEST_LINE_START.match(buf, pos) is not None
                                           or _could_become_header(buf[pos:])):
            self._held = buf[pos:]
            return buf[:pos], False
        self._mid_line = True
        return buf, False

    def eof_received(self) -> Tuple[bytes, bool]:
        """At the end of the stream the held line is complete: (what to pass on, found)."""
        held, self._held = self._held, b""
        if self.found:
            return b"", True
        if held and is_http_line(held):
            self.found = True
            return b"", True
        return held, False

    def _refuse(self, buf: bytes, at: int) -> Tuple[bytes, bool]:
        self.found = True
        return buf[:at], True


def refusal_reason(port_name: str, http_port: Optional[int]) -> str:
    """The one error for an HTTP line on `port_name` ("status", "Status Server")."""
    if http_port is None:
        where = "the DSM's HTTP port (--http-port) is off here"
    else:
        where = "HTTP requests go to port %d (--http-port)" % http_port
    return ("HTTP request on the DSM's %s port; %s. Closing: nothing from this line on is "
            "read" % (port_name, where))
