"""The query protocol (port 2203 and `dsm.sock`), sans-IO.

Theory of operation
-------------------
A query is one letter, `m` (multicast data), `s` (status history) or `w` (wipe), as a whole token:
separated from what is around it by whitespace, newlines, the end byte `\\x04`, or the end of what
has arrived. The original tool took the single letter with no terminator and answered at once, and
lab scripts still send it that way, so a letter is answered the moment it arrives and the next
chunk starts a new token; `nc` users may type `m` + Enter and pipeline `m s` (when the connection
closes: query_service). Upper-case letters are the same queries.

Anything else is answered with one error, at once (no waiting for a terminator that may never
come), and nothing else ever wipes:

* A token that is not a query (`Win64;`, `ms`, random bytes) is a bad query. The run of garbage it
  starts is skipped with one regular-expression search to the next whole-token letter, so a client
  streaming garbage costs one C-level scan and one error per chunk received, never a Python loop
  per byte or an error per token — the DSM's other clients do not slow down.
* A connection that has sent a bad query can no longer wipe: its `w` gets an error. Garbage that
  happens to hold ` w ` (random bytes do, about once per 100 KiB), or a `w` that a chunk boundary
  cut off from the garbage around it, is never taken for a wipe.
* A request of another protocol — an HTTP method (`GET / HTTP/1.1`, `POST`, `HEAD`..., or any
  token that begins a whole HTTP request line, or a browser's header line such as `Host:`), a Status
  Server command (`GET /x`, `LS`, `PUT`...), or a status message (`{...}`) — gets an error naming
  the right port (`Query.foreign` says which protocol), and the parser reads nothing more
  (`finished`): the connection closes once that error is sent. A browser pointed at the query port
  never wipes the DSM.

`QueryParser.receive_data` returns the queries in order; each reply is JSON followed by END_BYTE.
"""
from __future__ import annotations

import json
import re
from typing import List, Mapping, NamedTuple, Optional

from .http_lines import is_http_line
from .statserv_protocol import COMMAND_NAMES

END_BYTE = b"\x04"
VALID_QUERIES = {
    "m": "all current multicast data (drive announcements)",
    "s": "the complete status history",
    "w": "wipe all stored drive data and status histories",
}
# What the error shows of a bad token; the rest is dropped so a flood cannot grow the reply.
BAD_TOKEN_SHOWN = 32

FOREIGN_HTTP = "http"
FOREIGN_STATSERV = "statserv"
FOREIGN_HTTP_OR_STATSERV = "http_or_statserv"  # `GET x` whose line has not ended yet
FOREIGN_STATUS = "status"
WIPE_AFTER_BAD_QUERY = "wipe_after_bad_query"

_SEPARATORS = rb" \t\r\n\x0b\x0c\x04"
_TOKEN = re.compile(rb"[^%s]+" % _SEPARATORS)
_SEPARATOR = re.compile(rb"[%s]" % _SEPARATORS)
# The next letter that stands alone: the end of a run of garbage.
_NEXT_QUERY = re.compile(rb"(?<![^%s])[mswMSW](?![^%s])" % (_SEPARATORS, _SEPARATORS))
_QUERY_TOKENS = {b"m": "m", b"s": "s", b"w": "w", b"M": "m", b"S": "s", b"W": "w"}
# HTTP methods are case-sensitive (RFC 9110 9.1); PRI opens HTTP/2's preface.
_HTTP_ONLY_METHODS = frozenset((b"POST", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
                                b"PRI"))
_HTTP_VERSION = re.compile(rb"[ \t]HTTP/[0-9]")
# Status Server commands are case-insensitive. HELP stays a bad query: the error lists the queries.
_STATSERV_COMMANDS = frozenset(name.encode("ascii") for name in COMMAND_NAMES if name != "HELP")
# A bad token that reaches the end of the data may go on in the next chunk (and is skipped there).
_NO_TOKEN, _IN_BAD = 0, 1


class Query(NamedTuple):
    """One parsed query: `kind` is 'm', 's', 'w', or None for a refused one; then `bad_token`
    shows what was sent and `foreign` names the other protocol it belongs to (FOREIGN_*) or why
    it was refused (WIPE_AFTER_BAD_QUERY), or is "" for a plain bad query."""
    kind: Optional[str]
    bad_token: str = ""
    foreign: str = ""


class QueryParser:
    """Turns the bytes of one connection into queries, in order."""

    def __init__(self) -> None:
        self._open_token = _NO_TOKEN  # the last chunk ended inside a bad token
        self.sent_bad_query = False   # from then on, `w` is refused
        self.finished = False         # a request of another protocol: nothing more is parsed

    @property
    def partial(self) -> bool:
        """True inside a token not yet ended (the --request-timeout clock runs)."""
        return self._open_token != _NO_TOKEN

    def receive_data(self, data: bytes) -> List[Query]:
        """Returns every query that `data` completes (nothing once `finished`)."""
        queries: List[Query] = []
        if self.finished or not data:
            return queries
        pos = self._continue_token(data) if self._open_token != _NO_TOKEN else 0
        length = len(data)
        skipping = False  # inside a run of garbage already answered
        while pos < length:
            if skipping:
                found = _NEXT_QUERY.search(data, pos)
                if found is None:
                    if _SEPARATOR.match(data, length - 1) is None:
                        self._open_token = _IN_BAD
                    break
                pos = found.start()
                skipping = False
            token = _TOKEN.search(data, pos)
            if token is None:
                break
            start, pos = token.span()
            text = token.group()
            kind = _QUERY_TOKENS.get(text)
            if kind is not None:
                if kind == "w" and self.sent_bad_query:
                    queries.append(Query(None, "w", WIPE_AFTER_BAD_QUERY))
                else:
                    queries.append(Query(kind))
                continue
            foreign = _foreign_protocol(text, data, start)
            queries.append(Query(None, _shown(text), foreign))
            if foreign:
                self.finished = True
                break
            self.sent_bad_query = True
            if pos == length:
                self._open_token = _IN_BAD
            skipping = True
        return queries

    def _continue_token(self, data: bytes) -> int:
        """Where the bad token left open by the last chunk ends in `data` (0 if it had ended)."""
        separator = _SEPARATOR.search(data)
        if separator is None:
            return len(data)
        self._open_token = _NO_TOKEN
        return separator.start()


def _shown(token: bytes) -> str:
    return token[:BAD_TOKEN_SHOWN].decode("utf-8", "replace")


def _foreign_protocol(token: bytes, data: bytes, start: int) -> str:
    """The protocol whose request starts with `token` (at `start` in `data`), or ""."""
    if token.startswith(b"{"):
        return FOREIGN_STATUS
    if token in _HTTP_ONLY_METHODS:
        return FOREIGN_HTTP
    if token.upper() not in _STATSERV_COMMANDS:
        # Any other method token in a whole request line, or a browser's header line (the same
        # rule as the status and Status Server ports: http_lines.py).
        line_end = data.find(b"\n", start)
        return FOREIGN_HTTP if is_http_line(
            data[start:line_end if line_end >= 0 else start + 8192]) else ""
    if token not in (b"GET", b"PUT", b"TRACE"):  # not an HTTP method too
        return FOREIGN_STATSERV
    line_end = data.find(b"\n", start)
    line = data[start:line_end if line_end >= 0 else start + 8192]
    if _HTTP_VERSION.search(line):
        return FOREIGN_HTTP
    return FOREIGN_STATSERV if line_end >= 0 else FOREIGN_HTTP_OR_STATSERV


def error_reply(bad_token: str, foreign: str = "",
                ports: Optional[Mapping[str, int]] = None) -> bytes:
    """The JSON error (with END_BYTE) for a refused query, naming the valid ones — and, for a
    request of another protocol, the port it belongs on (`ports`: query_port, status_port,
    statserv_port, http_port as the daemon has them; http_port absent when HTTP is off)."""
    ports = ports or {}
    if foreign == WIPE_AFTER_BAD_QUERY:
        error = ("w refused: this connection sent something that is not a query, so a w on it "
                 "may be a stray byte; send w on a connection of its own")
    elif foreign:
        error = "this is the DSM's query port; %s" % _right_port(foreign, ports)
    else:
        error = "unknown query %r; valid queries are m, s and w" % bad_token
    return encode_reply({"error": error, "valid_queries": VALID_QUERIES})


def _right_port(foreign: str, ports: Mapping[str, int]) -> str:
    def port(key: str, what: str, option: str) -> str:
        number = ports.get(key)
        if number is None:
            return "%s go to the port given by %s (off here)" % (what, option)
        return "%s go to port %d (%s)" % (what, number, option)

    http = port("http_port", "HTTP requests", "--http-port")
    statserv = port("statserv_port", "Status Server commands", "--statserv-port")
    if foreign == FOREIGN_HTTP:
        return http
    if foreign == FOREIGN_STATSERV:
        return statserv
    if foreign == FOREIGN_STATUS:
        return port("status_port", "status messages", "--status-port")
    return "%s; %s" % (http, statserv)


def encode_reply(value: object) -> bytes:
    return json.dumps(value).encode("utf-8") + END_BYTE
