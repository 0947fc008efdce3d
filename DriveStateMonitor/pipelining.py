"""Request/reply connections with pipelining and back-pressure (queries, HTTP).

Requests are answered in order, one reply each. Replies are produced only while less than the
transport's high-water mark waits to be sent; past that, reading pauses until the client catches
up — so a client that pipelines big requests and never reads holds about one reply's worth of
memory, not thousands. After the client's end of stream, what it asked before is answered, then the
connection closes.

`answered_and_idle` is the one close rule of the DSM's own request/reply connections (queries and
statuses): see its docstring and query_service.py.
"""
from __future__ import annotations

import collections
import socket
from typing import Any, Deque, Iterable, Tuple, Union

from .event_loop import StreamTransport


def more_input_waiting(transport: StreamTransport) -> bool:
    """True when at least one byte from the client waits unread (a non-blocking MSG_PEEK)."""
    sock = getattr(transport, "sock", None)
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False  # nothing waiting
    except OSError:
        return False  # reset: closing is right anyway


def answered_and_idle(transport: StreamTransport, replied: bool, unfinished: bool) -> bool:
    """The close rule shared by query (port 2203, Unix socket) and status (port 3110) connections.

    True, so the connection should close once its output is sent, when at least one reply has been
    written (`replied`), no request is half-received (`unfinished`: a status message whose closing
    brace has not arrived yet; never the tail of a bad request whose error was sent), and no
    further byte waits in the socket's receive buffer. The original answered and closed (spec
    dsm.md, "Query protocol", "Status protocol"), so `nc` one-liners (netcat-openbsd never closes
    its side) return at once, while several requests sent together are all answered first.
    """
    return replied and not unfinished and not more_input_waiting(transport)


class PipelinedConnection:
    """Subclasses say how bytes become requests (`parse`) and requests replies (`reply`)."""

    def __init__(self, transport: StreamTransport) -> None:
        self.transport = transport
        self.pending: Deque[Any] = collections.deque()
        self.eof = False

    def parse(self, data: bytes) -> Iterable[Any]:
        raise NotImplementedError

    def reply(self, request: Any) -> Union[bytes, Tuple[bytes, ...]]:
        """The reply to one request: bytes, or a tuple of parts written as they are (shared bytes
        stay shared)."""
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
            if isinstance(reply, tuple):  # parts, each written as it is (shared bytes stay shared)
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
