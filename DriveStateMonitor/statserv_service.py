"""A Status Server connection (TCP `--statserv-port` or `<run-dir>/statserv.sock`).

The session (statserv_protocol) owns the meaning; this glue moves its output to the transport — both
replies to the client's own lines and `@`/`#` lines caused by other connections or by expiry — and
applies back-pressure: while HIGH_WATER bytes wait for a slow reader, its lines are not read.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Callable, Optional

from .event_loop import HIGH_WATER, StreamTransport
from .statserv_protocol import StatServSession
from .statserv_tree import Tree

# Monitors coalesce, so only TRACE output or a client that pipelines without reading can pile up;
# past this the client is disconnected rather than letting it hold the memory.
MAX_OUTPUT = 16 * 1024 * 1024


def is_local_peer(addr: Any) -> bool:
    """True for Unix-socket peers and loopback TCP peers (SHUTDOWN is for them only)."""
    if not isinstance(addr, tuple):
        return True
    try:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class StatServConnection:
    """Feeds one connection's bytes to its StatServSession and sends what the session produces."""

    def __init__(self, transport: StreamTransport, tree: Tree, clock: Callable[[], float], *,
                 is_local: bool, on_shutdown: Callable[[], None],
                 save_dir: Optional[str]) -> None:
        self.transport = transport
        self.session = StatServSession(tree, clock, is_local=is_local, on_output=self._send,
                                       on_shutdown=on_shutdown, save_dir=save_dir)

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data)
        self._send()
        if self.session.closing:
            self.transport.close_when_flushed()
        elif self.transport.output_size >= HIGH_WATER:
            self.transport.pause_reading()

    def eof_received(self) -> None:
        self.session.eof_received()
        self._send()
        self.transport.close_when_flushed()

    def writing_drained(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self) -> None:
        self.session.connection_lost()

    def _send(self) -> None:
        output = self.session.data_to_send()
        if output:
            self.transport.write(output)
