"""A status connection (port 3110): each framed message stored and acknowledged, or refused.

The original acknowledged one status and closed (spec dsm.md, "Status protocol"). We close with the
rule query connections use (pipelining.answered_and_idle): once every message received has its
`\x04` or error, no message is half-received and no further byte waits, the connection closes
after the replies are sent — so `echo "{...}" | nc host 3110` returns at once with netcat-openbsd,
while several statuses sent in one write are all answered, in order, first. A status written after
the previous ack was read goes on a new connection, as with the original.
"""
from __future__ import annotations

from typing import Callable, Optional

from .event_loop import StreamTransport
from .http_lines import HttpLineGuard, refusal_reason
from .pipelining import answered_and_idle
from .status_protocol import (END_BYTE, StatusError, StatusParser, StatusReport, error_reply,
                              parse_status)

ACK = END_BYTE
OUT_OF_MEMORY = ("out of memory handling this connection's statuses (the DSM's memory cap); this "
                 "status is not acknowledged: send it again later")

# Stores a report; returns None when stored, or the reason it was refused (daemon.store_status).
StoreStatus = Callable[[StatusReport], Optional[str]]
# Told about each refused message: (source, reason).
ReportBadInput = Callable[[str, str], None]


class StatusConnection:
    """Frames, parses and stores the statuses of one connection, answering `\\x04` or an error each."""

    def __init__(self, transport: StreamTransport, store: StoreStatus,
                 bad_input: ReportBadInput, max_message: Optional[int] = None,
                 http_port: Optional[int] = None) -> None:
        self.transport = transport
        self.store = store
        self.bad_input = bad_input
        self.max_message = max_message
        self.parser = StatusParser(max_message) if max_message else StatusParser()
        self.guard = HttpLineGuard()
        self.http_port = http_port  # named in the error for an HTTP request (None: HTTP is off)
        self.replied = False

    def data_received(self, data: bytes) -> None:
        if self.guard.found:
            return
        data, http = self.guard.receive_data(data)
        # One write for all the replies a chunk completes: pipelined statuses cost one append.
        replies = [self._answer(framed.message, framed.error)
                   for framed in self.parser.receive_data(data)] if data else []
        transport = self.transport
        if http:
            replies.append(self._refuse_http())
        if replies:
            self.replied = True
            transport.write(b"".join(replies))
        if http:
            transport.close_when_flushed()
        elif transport.output_size >= transport.high_water:
            # A client that sends without reading its acks waits for itself, not us.
            transport.pause_reading()
        elif answered_and_idle(transport, self.replied, self._unfinished):
            transport.close_when_flushed()

    def eof_received(self) -> None:
        if not self.guard.found:
            held, http = self.guard.eof_received()
            framed_all = (self.parser.receive_data(held) if held else []) + \
                ([] if http else self.parser.eof_received())
            for framed in framed_all:
                self.transport.write(self._answer(framed.message, framed.error))
            if http:
                self.transport.write(self._refuse_http())
        self.transport.close_when_flushed()

    def writing_drained(self) -> None:
        if self.guard.found or answered_and_idle(self.transport, self.replied, self._unfinished):
            self.transport.close_when_flushed()
        else:
            self.transport.resume_reading()

    def connection_lost(self) -> None:
        pass

    @property
    def _unfinished(self) -> bool:
        return self.parser.in_message or self.guard.holding

    def has_partial_request(self) -> bool:
        return self.parser.partial or self.guard.holding

    def _refuse_http(self) -> bytes:
        """The one error for an HTTP line (http_lines.py); the connection closes after it."""
        reason = refusal_reason("status", self.http_port)
        self.bad_input(self.transport.label, reason)
        return error_reply(reason)

    def request_timed_out(self, seconds: float) -> None:
        """--request-timeout passed since the message's first byte: error, close; not stored."""
        self.transport.write(error_reply("status message not complete within %g s of its first "
                                         "byte (--request-timeout); not stored" % seconds))
        self.transport.close_when_flushed()

    def out_of_memory(self) -> None:
        """A MemoryError while handling this connection (StreamTransport.out_of_memory): the
        parser's buffers are dropped, the client gets an error; the transport closes after it."""
        self.parser = StatusParser(self.max_message) if self.max_message else StatusParser()
        self.replied = True
        self.transport.write(error_reply(OUT_OF_MEMORY))

    def _answer(self, message: Optional[bytes], error: Optional[str]) -> bytes:
        """Stores one framed message; the reply: the end byte, or the error and the end byte."""
        if message is not None:
            try:
                report = parse_status(message)
            except StatusError as exc:
                error = str(exc)
            else:
                error = self.store(report)
                if error is None:
                    return ACK
        reason = error or "not a status"
        self.bad_input(self.transport.label, reason)
        return error_reply(reason)
