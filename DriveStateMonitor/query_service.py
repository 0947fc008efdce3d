"""A query connection (TCP or Unix socket): queries in, replies out, in order, with back-pressure."""
from __future__ import annotations

import collections
from typing import Callable, Deque

from .event_loop import StreamTransport
from .query_protocol import Query, QueryParser

AnswerQuery = Callable[[Query, str], bytes]


class QueryConnection:
    """Answers each query of one connection in order; closes after the client's end of stream.

    Replies are produced only while less than the transport's high-water mark waits to be sent;
    past that, reading pauses until the client catches up, so a client that pipelines `m` and never
    reads holds one reply's worth of memory, not thousands.
    """

    def __init__(self, transport: StreamTransport, answer: AnswerQuery) -> None:
        self.transport = transport
        self.answer = answer
        self.parser = QueryParser()
        self.pending: Deque[Query] = collections.deque()
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.pending.extend(self.parser.receive_data(data))
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
            transport.write(self.answer(self.pending.popleft(), transport.label))
        if transport.closed:
            return
        if self.pending:
            transport.pause_reading()
        elif self.eof:
            transport.close_when_flushed()
        else:
            transport.resume_reading()
