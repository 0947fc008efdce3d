"""A query connection (TCP or Unix socket): queries in, replies out, in order, with back-pressure.

When the connection closes (the rule `nc` one-liners and the lab's old scripts depend on)
-----------------------------------------------------------------------------------------
The original answered one query and closed, so `printf m | nc host 2203` and `echo s | nc -U
dsm.sock` returned at once even with Debian's netcat-openbsd, which never closes its own side
unless given `-N`. We close, too, but only when nothing the client sent is left unanswered:

    after at least one reply, the DSM closes the connection (once the replies are sent) as soon as
    every query received has been answered and no further byte waits in the socket's receive
    buffer (checked with a non-blocking MSG_PEEK). A query letter is answered the moment it
    arrives (query_protocol), so only the tail of a bad token can be unfinished then, and its
    error has been sent.

So several queries sent together (`printf 'm s'`, or a script's one `sendall`) are all answered in
order; a client that closes its side (end of stream) gets every pending reply first; and a client
that connects and sends nothing stays open until `--idle-timeout`. A query written after the
previous reply has been read is not answered on the same connection: connect again, as the
original required (spec `dsm.md`, "Query protocol"). Status connections close by the same rule
(status_service.py); it lives once, in pipelining.answered_and_idle.
"""
from __future__ import annotations

from typing import Callable, List

from .event_loop import StreamTransport
from .pipelining import PipelinedConnection, answered_and_idle
from .query_protocol import Query, QueryParser, encode_reply

AnswerQuery = Callable[[Query, str], bytes]


class QueryConnection(PipelinedConnection):
    """Answers each query of one connection in order; closes once all it sent is answered."""

    def __init__(self, transport: StreamTransport, answer: AnswerQuery) -> None:
        super().__init__(transport)
        self.answer = answer
        self.parser = QueryParser()
        self.replied = False

    def parse(self, data: bytes) -> List[Query]:
        return self.parser.receive_data(data)

    def reply(self, query: Query) -> bytes:
        self.replied = True
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

    def out_of_memory(self) -> None:
        """A MemoryError while answering (StreamTransport.out_of_memory): what waits is dropped,
        the client gets an error; the transport closes after it."""
        self.pending.clear()
        self.parser = QueryParser()
        self.transport.write(encode_reply({
            "error": "out of memory answering this connection (the DSM's memory cap); try again "
                     "later, or see --max-store-bytes"}))

    def done(self) -> bool:
        """True at the client's end of stream, after a request of another protocol (HTTP, Status
        Server: its error ends the connection), or when all it sent is answered (see the top)."""
        if self.eof or self.parser.finished:
            return True
        # A bad token left open by the last chunk (parser.partial) does not keep the connection:
        # its error is sent, and the rest of it could only earn another error.
        return answered_and_idle(self.transport, self.replied, unfinished=False)
