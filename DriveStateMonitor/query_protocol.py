"""The query protocol (port 2203 and `dsm.sock`), sans-IO.

Theory of operation
-------------------
A query is one letter: `m` (multicast data), `s` (status history) or `w` (wipe). The original tool
took the single letter with no terminator and answered at once, and lab scripts still send it that
way, so a letter is a complete query the moment it arrives. Whitespace, newlines and the end byte
`\\x04` between queries are ignored, so `nc` users can type `m` + Enter and pipeline `m s`.

Anything else is a bad query: the first unexpected byte produces one error at once (no waiting for a
terminator that may never come) and the rest of that token, up to the next whitespace, is discarded
without a second error. `QueryParser.receive_data` returns the queries in order; each reply is
JSON followed by END_BYTE.
"""
from __future__ import annotations

import json
from typing import List, NamedTuple, Optional

END_BYTE = b"\x04"
VALID_QUERIES = {
    "m": "all current multicast data (drive announcements)",
    "s": "the complete status history",
    "w": "wipe all stored drive data and status histories",
}
# What the error shows of a bad token; the rest is dropped so a flood cannot grow the reply.
BAD_TOKEN_SHOWN = 32
_SEPARATORS = frozenset(b" \t\r\n\x0b\x0c\x04")
_QUERY_BYTES = {ord("m"): "m", ord("s"): "s", ord("w"): "w",
                ord("M"): "m", ord("S"): "s", ord("W"): "w"}


class Query(NamedTuple):
    """One parsed query: `kind` is 'm', 's', 'w', or None for a bad one (then `bad_token` is set)."""
    kind: Optional[str]
    bad_token: str = ""


class QueryParser:
    """Turns the bytes of one connection into queries, in order."""

    def __init__(self) -> None:
        self._discarding = False  # inside a bad token already answered

    @property
    def partial(self) -> bool:
        """True inside a token not yet ended (the --request-timeout clock runs)."""
        return self._discarding

    def receive_data(self, data: bytes) -> List[Query]:
        """Returns every query that `data` completes."""
        queries: List[Query] = []
        i, n = 0, len(data)
        while i < n:
            byte = data[i]
            if byte in _SEPARATORS:
                self._discarding = False
                i += 1
                continue
            if self._discarding:
                i += 1
                continue
            kind = _QUERY_BYTES.get(byte)
            if kind is not None:
                queries.append(Query(kind))
                i += 1
                continue
            end = i
            while end < n and data[end] not in _SEPARATORS:
                end += 1
            shown = data[i:min(end, i + BAD_TOKEN_SHOWN)].decode("utf-8", "replace")
            queries.append(Query(None, shown))
            self._discarding = end == n  # the token may go on in the next chunk
            i = end
        return queries


def error_reply(bad_token: str) -> bytes:
    """The JSON error (with END_BYTE) for a bad query, naming the valid ones."""
    return encode_reply({
        "error": "unknown query %r; valid queries are m, s and w" % bad_token,
        "valid_queries": VALID_QUERIES,
    })


def encode_reply(value: object) -> bytes:
    return json.dumps(value).encode("utf-8") + END_BYTE
