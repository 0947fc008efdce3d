"""A query connection (TCP or Unix socket): queries in, replies out, in order, with back-pressure."""
from __future__ import annotations

from typing import Callable, List

from .event_loop import StreamTransport
from .pipelining import PipelinedConnection
from .query_protocol import Query, QueryParser, encode_reply

AnswerQuery = Callable[[Query, str], bytes]


class QueryConnection(PipelinedConnection):
    """Answers each query of one connection in order; closes after the client's end of stream."""

    def __init__(self, transport: StreamTransport, answer: AnswerQuery) -> None:
        super().__init__(transport)
        self.answer = answer
        self.parser = QueryParser()

    def done(self) -> bool:
        # A request of another protocol (HTTP, Status Server) ends the connection after its error.
        return self.eof or self.parser.finished

    def parse(self, data: bytes) -> List[Query]:
        return self.parser.receive_data(data)

    def reply(self, query: Query) -> bytes:
        return self.answer(query, self.transport.label)

    def has_partial_request(self) -> bool:
        return self.parser.partial

    def request_timed_out(self, seconds: float) -> None:
        """--request-timeout passed since the first byte of an unfinished query: error, close."""
        self.pending.clear()
        self.transport.write(encode_reply({
            "error": "query not complete within %g s of its first byte (--request-timeout); "
                     "closing" % seconds}))
        self.transport.close_when_flushed()
