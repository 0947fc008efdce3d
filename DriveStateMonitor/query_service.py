"""A query connection (TCP or Unix socket): queries in, replies out, in order, with back-pressure.

When the connection closes (the rule `nc` one-liners and the lab's old scripts depend on)
-----------------------------------------------------------------------------------------
The original answered one query and closed, so `printf m | nc host 2203` and `echo s | nc -U
dsm.sock` returned at once even with Debian's netcat-openbsd, which never closes its own side
unless given `-N`. We close, too, but only when nothing the client sent is left unanswered:

    after at least one reply, the DSM closes the connection (once the replies are sent) as soon as
    every query received has been answered, the parser holds no partial token, and no further byte
    waits in the socket's receive buffer (checked with a non-blocking MSG_PEEK).

So several queries sent together (`printf 'm s'`, or a script's one `sendall`) are all answered in
order; a client that closes its side (end of stream) gets every pending reply first; and a client
that connects and sends nothing stays open until `--idle-timeout`. A query written after the
previous reply has been read is not answered on the same connection: connect again, as the
original required (spec `dsm.md`, "Query protocol").
"""
from __future__ import annotations

import socket
from typing import Callable, List

from .event_loop import StreamTransport
from .pipelining import PipelinedConnection
from .query_protocol import Query, QueryParser

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

    def done(self) -> bool:
        """True at the client's end of stream, or when all it sent is answered (see the top)."""
        if self.eof:
            return True
        return self.replied and self._parser_idle() and not self._more_input_waiting()

    def _parser_idle(self) -> bool:
        # The parser may expose whether it holds part of a token; if it does not, it holds none.
        is_idle = getattr(self.parser, "is_idle", None)
        return bool(is_idle()) if callable(is_idle) else True

    def _more_input_waiting(self) -> bool:
        sock = getattr(self.transport, "sock", None)
        if sock is None:
            return False
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False  # nothing waiting
        except OSError:
            return False  # reset: closing is right anyway
