"""Request/reply connections with pipelining and back-pressure (queries, HTTP).

Requests are answered in order, one reply each. Replies are produced only while less than the
transport's high-water mark waits to be sent; past that, reading pauses until the client catches
up — so a client that pipelines big requests and never reads holds about one reply's worth of
memory, not thousands. After the client's end of stream, what it asked before is answered, then the
connection closes.
"""
from __future__ import annotations

import collections
from typing import Any, Deque, Iterable

from .event_loop import StreamTransport


class PipelinedConnection:
    """Subclasses say how bytes become requests (`parse`) and requests replies (`reply`)."""

    def __init__(self, transport: StreamTransport) -> None:
        self.transport = transport
        self.pending: Deque[Any] = collections.deque()
        self.eof = False

    def parse(self, data: bytes) -> Iterable[Any]:
        raise NotImplementedError

    def reply(self, request: Any) -> bytes:
        raise NotImplementedError

    def done(self) -> bool:
        """True when no further request can come (the client's end of stream, by default)."""
        return self.eof

    def data_received(self, data: bytes) -> None:
        self.pending.extend(self.parse(data))
        self._answer_pending()

    def eof_received(self) -> None:
        self.eof = True
        self._answer_pending()

    def writing_drained(self) -> None:
        self._answer_pending()

    def connection_lost(self) -> None:
        self.pending.clear()

    def _answer_pending(self) -> None:
        transport = self.transport
        while self.pending and transport.output_size < transport.high_water and not transport.closed:
            reply = self.reply(self.pending.popleft())
            if type(reply) is tuple:  # parts, each written as it is (shared bytes stay shared)
                for part in reply:
                    transport.write(part)
            else:
                transport.write(reply)
        if transport.closed:
            return
        if self.pending:
            transport.pause_reading()
        elif self.done():
            transport.close_when_flushed()
        else:
            transport.resume_reading()
