"""StatusListener.py: take status reports on their own, printing each one stored as a JSON line."""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
from typing import Any, List, Optional

from .daemon import StartupError, open_tcp_listener, peer_label
from .event_loop import EXIT_INTERRUPT, EXIT_OK, EventLoop, Listener, StreamTransport
from .options import DEFAULT_STATUS_PORT, port
from .status_protocol import StatusReport
from .status_service import StatusConnection


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="StatusListener.py",
        description="Take status reports (as the DSM's status port does) without a DSM and print "
                    "each one as a JSON line, to check what a test script sends.")
    parser.add_argument("--status-port", type=port, default=DEFAULT_STATUS_PORT, metavar="PORT",
                        help="TCP port to listen on (default %(default)s)")
    options = parser.parse_args(argv)
    try:
        sock = open_tcp_listener(options.status_port, "status")
    except StartupError as exc:
        print("StatusListener: %s" % exc, file=sys.stderr)
        return exc.exit_code
    loop = EventLoop()

    def store(report: StatusReport, source: str) -> Optional[str]:
        print(json.dumps({"source": source, "serial_number": report.serial_number,
                          "time_stamp": report.time_stamp, "status": report.status}), flush=True)
        return None

    def bad_input(source: str, reason: str) -> None:
        print("StatusListener: refused from %s: %s" % (source, reason), file=sys.stderr, flush=True)

    def accept(conn: socket.socket, addr: Any) -> None:
        transport = StreamTransport(loop, conn, peer_label("status", addr))
        transport.start(StatusConnection(transport, lambda report: store(report, transport.label),
                                         bad_input))

    listener = Listener(loop, sock, "status", accept)
    loop.on_signals([signal.SIGINT, signal.SIGTERM],
                    lambda signum: loop.stop(EXIT_INTERRUPT if signum == signal.SIGINT else EXIT_OK))
    print("StatusListener: listening on TCP port %d" % sock.getsockname()[1], file=sys.stderr,
          flush=True)
    try:
        return loop.run()
    finally:
        listener.close()
        loop.close()
