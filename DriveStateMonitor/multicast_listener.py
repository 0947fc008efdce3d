"""MulticastListener.py: hear the drives for a while on its own, then print what was heard as JSON."""
from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import time
from typing import Any, List, Optional

from .announcement import Rejected, parse_announcement
from .drive_store import DriveStore
from .event_loop import (EXIT_INTERRUPT, EXIT_OK, EXIT_SOCKET_CREATE, DatagramReader, EventLoop)
from .interfaces import select_interfaces
from .multicast_socket import MulticastSetupError, open_multicast_socket
from .options import add_multicast_options, non_negative_seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="MulticastListener.py",
        description="Listen to Kinetic drive announcements for a while, then print every drive "
                    "heard as JSON (the shape of the DSM's `m` reply). Runs beside a running DSM.")
    parser.add_argument("-t", "--time", type=non_negative_seconds, default=5.0, metavar="SECONDS",
                        help="how long to listen (default %(default)s)")
    add_multicast_options(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        interfaces = select_interfaces(options.interfaces)
        sock = open_multicast_socket(options.mcast_group, options.mcast_port, interfaces)
    except (ValueError, MulticastSetupError) as exc:
        print("MulticastListener: %s" % exc, file=sys.stderr)
        return EXIT_SOCKET_CREATE
    store = DriveStore()
    rejected: collections.Counter = collections.Counter()
    names = {iface.ifindex: iface.name for iface in interfaces}

    def on_datagram(data: bytes, sender: Any, ifindex: int) -> None:
        iface = names.get(ifindex)
        if iface is None:
            return  # joined by another program on an interface we were not asked to hear
        now = time.time()
        if store.refresh_repeat(data, now, sender[0], iface) is not None:
            return
        parsed = parse_announcement(data)
        if isinstance(parsed, Rejected):
            rejected[parsed.reason] += 1
        else:
            store.record_announcement(parsed.serial_number, parsed.fields, data, now, sender[0],
                                      iface)

    loop = EventLoop()
    reader = DatagramReader(loop, sock, "multicast", on_datagram, with_ifindex=True)
    loop.on_signals([signal.SIGINT, signal.SIGTERM],
                    lambda signum: loop.stop(EXIT_INTERRUPT if signum == signal.SIGINT else EXIT_OK))
    loop.call_later(options.time, lambda: loop.stop(EXIT_OK))
    print("MulticastListener: listening to %s:%d on %s for %g s" % (
        options.mcast_group, options.mcast_port,
        ", ".join(iface.name for iface in interfaces) or "no interface", options.time),
        file=sys.stderr, flush=True)  # Python < 3.9 buffers a piped stderr
    try:
        code = loop.run()
    finally:
        reader.close()
        loop.close()
    print(json.dumps(json.loads(store.multicast_json()), indent=2, sort_keys=True))
    if rejected:
        print("MulticastListener: ignored %d datagram(s) that were not drive announcements (%s)" % (
            sum(rejected.values()), ", ".join("%s: %d" % kv for kv in sorted(rejected.items()))),
            file=sys.stderr)
    return code
