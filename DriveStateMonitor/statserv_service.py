"""A Status Server connection (TCP `--statserv-port` or `<run-dir>/statserv.sock`).

The session (statserv_protocol) owns the meaning; this glue moves its output to the transport — both
replies to the client's own lines and `@`/`#` lines caused by other connections or by expiry — and
applies back-pressure: while the high-water mark waits for a slow reader, its lines are not read. Monitors
coalesce, so only TRACE output can pile up beyond that; the transport's output cap (--max-output)
disconnects such a client rather than letting it hold the memory.

Every byte passes an HttpLineGuard before the session sees it (http_lines.py): a line of an HTTP
request (a browser's cross-protocol form POST) ends the connection with one `! PROTOCOL` line naming
the HTTP port, and no line from it on reaches the session — whatever fast paths the session has.
"""
from __future__ import annotations

from typing import Callable, Optional

from .event_loop import StreamTransport
from .http_lines import HttpLineGuard, refusal_reason
from .statserv_protocol import MAX_LINE_BYTES, StatServSession
from .statserv_tree import Tree


class StatServConnection:
    """Feeds one connection's bytes to its StatServSession and sends what the session produces."""

    def __init__(self, transport: StreamTransport, tree: Tree, clock: Callable[[], float], *,
                 is_local: bool, on_shutdown: Callable[[], None],
                 save_dir: Optional[str], max_line: int = MAX_LINE_BYTES,
                 saver: Optional[Callable[[str, StatServSession], None]] = None,
                 bad_input: Optional[Callable[[str, str], None]] = None,
                 http_port: Optional[int] = None) -> None:
        self.transport = transport
        self.guard = HttpLineGuard()
        self.bad_input = bad_input  # told (source, reason) about an HTTP request
        self.http_port = http_port  # named in that error (None: HTTP is off)
        self.session = StatServSession(tree, clock, is_local=is_local, on_output=self._output,
                                       on_shutdown=on_shutdown, save_dir=save_dir,
                                       max_line=max_line, saver=saver)

    def data_received(self, data: bytes) -> None:
        if self.guard.found:
            return
        data, http = self.guard.receive_data(data)
        if data:
            self.session.receive_data(data)
        self._send()
        if http:
            self._refuse_http()
        elif self.session.closing:
            self.transport.close_when_flushed()
        elif self.transport.output_size >= self.transport.high_water:
            self.transport.pause_reading()

    def eof_received(self) -> None:
        if self.guard.found:
            return
        held, http = self.guard.eof_received()
        if held:
            self.session.receive_data(held)
        if http:
            self._send()
            self._refuse_http()
            return
        self.session.eof_received()
        self._send()
        if not self.session.waiting:  # else closed once the SAVE it waits for is answered
            self.transport.close_when_flushed()

    def _output(self) -> None:
        """Output made outside data_received: monitor notices, a SAVE's late answer."""
        self._send()
        if self.session.closing:
            self.transport.close_when_flushed()

    def writing_drained(self) -> None:
        if not self.guard.found:
            self.transport.resume_reading()

    def connection_lost(self) -> None:
        self.session.connection_lost()

    def has_partial_request(self) -> bool:
        return self.session.partial_line or self.guard.holding

    def request_timed_out(self, seconds: float) -> None:
        """--request-timeout passed since the line's first byte: `! LIMIT`, close."""
        self._send()
        self.transport.write(b"! LIMIT line not complete within %g s of its first byte "
                             b"(--request-timeout)\n" % seconds)
        self.transport.close_when_flushed()

    def out_of_memory(self) -> None:
        """A MemoryError while handling this connection (StreamTransport.out_of_memory):
        `! LIMIT`; the transport closes after it, releasing the session."""
        self.transport.write(b"! LIMIT out of memory handling this connection (the DSM's memory "
                             b"cap); closing\n")

    def holds_nothing(self) -> bool:
        return self.session.holds_nothing()

    def _refuse_http(self) -> None:
        """One `! PROTOCOL` line for an HTTP line (http_lines.py), then the connection closes."""
        reason = refusal_reason("Status Server", self.http_port)
        if self.bad_input is not None:
            self.bad_input(self.transport.label, reason)
        self.transport.write(b"! PROTOCOL %s\n" % reason.encode("ascii"))
        self.transport.close_when_flushed()

    def _send(self) -> None:
        output = self.session.data_to_send()
        if output:
            self.transport.write(output)
