"""Command-line options shared by DriveStateMonitor.py and runDSM (the names are fixed: tools use them)."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Set

from .access import network_list
from .local_dirs import default_log_dir, default_state_dir
from .lab import LabFileError, LabHost, read_lab_file

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_QUERY_PORT = 2203
DEFAULT_STATUS_PORT = 3110
DEFAULT_MCAST_GROUP = "239.1.2.3"
DEFAULT_MCAST_PORT = 8123
DEFAULT_HISTORY = 20
DEFAULT_STATSERV_PORT = 3111
DEFAULT_HTTP_PORT = 2204
DEFAULT_DRIVE_LIFETIME = 60.0
DEFAULT_STATE_DIR = default_state_dir()  # outside the code folder: see local_dirs.py
DEFAULT_RUN_DIR = "/tmp/DriveStateMonitor"
DEFAULT_LOG_DIR = default_log_dir()


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a port number: %r" % text) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("port out of range 0-65535: %d" % value)
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1: %d" % value)
    return value


# The largest number of seconds an option takes (ten years); OverflowError lies beyond.
MAX_SECONDS = 10 * 365.25 * 86400.0


def _finite_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError("not a finite number of seconds: %r" % text)
    if abs(value) > MAX_SECONDS:  # a socket timeout or select() of 1e300 s raises OverflowError
        raise argparse.ArgumentTypeError("at most %d seconds (ten years): %r" % (MAX_SECONDS, text))
    return value


def non_negative_seconds(text: str) -> float:
    value = _finite_seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError("seconds must be 0 or more: %r" % text)
    return value


def positive_seconds(text: str) -> float:
    value = _finite_seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds: %r" % text)
    return value


# Coalescing waits at most this long: the kernel's receive buffer must hold what arrives meanwhile.
# A host that caps SO_RCVBUF at Linux's default (net.core.rmem_max 212992, so 416 KiB) holds 332
# drive-sized datagrams (516 bytes; measured on loopback): 20 ms of 10,000 a second fit.
MAX_COALESCE_S = 0.02
DEFAULT_COALESCE_S = 0.005


def coalesce_seconds(text: str) -> float:
    value = non_negative_seconds(text)
    if value > MAX_COALESCE_S:
        raise argparse.ArgumentTypeError("at most %g seconds: the receive buffer must hold what "
                                         "arrives meanwhile: %r" % (MAX_COALESCE_S, text))
    return value


def lab_file_option(path: str) -> List[LabHost]:
    try:
        return read_lab_file(path)
    except LabFileError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def interface_list(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no interface named")
    return names


def add_multicast_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interfaces", type=interface_list, default=None, metavar="NAME[,NAME...]",
        help="interfaces to hear drive announcements on (default: every interface that is up and "
             "has an IPv4 address at start-up, loopback included)")
    parser.add_argument("--mcast-group", default=DEFAULT_MCAST_GROUP, metavar="ADDR",
                        help="multicast group of the drive announcements (default %(default)s)")
    parser.add_argument("--mcast-port", type=port, default=DEFAULT_MCAST_PORT, metavar="PORT",
                        help="UDP port of the drive announcements (default %(default)s)")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Drive State Monitor: hears Kinetic drive announcements, takes status reports "
                    "from test scripts, and answers queries (m, s, w).")
    add_multicast_options(parser)
    parser.add_argument("--query-port", type=port, default=DEFAULT_QUERY_PORT, metavar="PORT",
                        help="TCP port for the m/s/w queries (default %(default)s; 0 picks a free "
                             "port, written to <run-dir>/dsm.json)")
    parser.add_argument("--status-port", type=port, default=DEFAULT_STATUS_PORT, metavar="PORT",
                        help="TCP port for status reports from test scripts (default %(default)s)")
    parser.add_argument("--statserv-port", type=port, default=DEFAULT_STATSERV_PORT,
                        metavar="PORT",
                        help="TCP port of the Status Server line protocol (default %(default)s; "
                             "also served on <run-dir>/statserv.sock)")
    parser.add_argument("--http-port", type=port, default=DEFAULT_HTTP_PORT, metavar="PORT",
                        help="TCP port of the web page, the JSON API (/api/...) and Prometheus "
                             "metrics (/metrics) (default %(default)s; unlike the other ports, 0 "
                             "turns it off)")
    parser.add_argument("--lab", type=lab_file_option, default=(), metavar="FILE",
                        help="the lab file (docs/lab.md): the page offers the whole lab's drives, "
                             "fetched by the browser from each DSM listed (read at start)")
    parser.add_argument("--drive-lifetime", type=positive_seconds, default=DEFAULT_DRIVE_LIFETIME,
                        metavar="SECONDS",
                        help="a drive not heard for this long reads EXPIRED in the tree and "
                             "\"expired\" in m (default %(default)g)")
    parser.add_argument("--coalesce", type=coalesce_seconds, default=DEFAULT_COALESCE_S,
                        metavar="SECONDS",
                        help="once announcements come closer together than this, read them in "
                             "batches every SECONDS instead of one loop pass each (at most %g; "
                             "0: each as it comes; default %%(default)g)" % MAX_COALESCE_S)
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                        help="snapshot and journal of the whole store, restored at start, and "
                             "the Status Server's SAVE files in its saves/ (default %(default)s)")
    parser.add_argument("--fsync", choices=("always", "everysec", "no"), default="everysec",
                        help="always: a change is acknowledged only once its journal record is "
                             "on disk, and refused while the state dir fails; everysec: fsync "
                             "once a second; no: leave it to the kernel "
                             "(default %(default)s)")
    parser.add_argument("--snapshot-journal-bytes", type=positive_int, default=128 * 1024 * 1024,
                        metavar="BYTES",
                        help="also snapshot (and start a new journal) as soon as the journal has "
                             "grown past this (default %(default)s)")
    parser.add_argument("--state-retry", type=positive_seconds, default=5.0, metavar="SECONDS",
                        help="after the state dir failed (full, read-only, removed), how often to "
                             "try again with a fresh snapshot (default %(default)g)")
    parser.add_argument("--snapshot-interval", type=positive_seconds, default=600.0,
                        metavar="SECONDS",
                        help="how often the whole store is snapshotted (default %(default)g, "
                             "CFHT's 10 minutes; also at every stop)")
    parser.add_argument("--history", type=positive_int, default=DEFAULT_HISTORY, metavar="N",
                        help="statuses kept per serial number, oldest dropped first "
                             "(default %(default)s)")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                        help="lock, pid file, dsm.json and the Unix socket dsm.sock "
                             "(default %(default)s)")
    parser.add_argument("--log-dir", default=DEFAULT_LOG_DIR, metavar="DIR",
                        help="where runDSM writes the dated log file <date>_DSMlog.txt "
                             "(default %(default)s)")
    parser.add_argument("--log-file", default=None, metavar="FILE",
                        help="log to FILE instead of standard error (runDSM sets it; SIGHUP "
                             "reopens it for logrotate)")
    limits = parser.add_argument_group(
        "limits and access", "every limit refuses with a clear error; see docs/operating-safely.md")
    limits.add_argument("--allow", type=network_list, default=None, metavar="CIDR[,CIDR...]",
                        help="networks allowed to connect to the TCP ports (default: any); the "
                             "Unix sockets are always open to whoever may open the socket file")
    limits.add_argument("--wipe-from", choices=("any", "local"), default="any",
                        help="who may send the w query: any client (the original's rule, default) "
                             "or only loopback clients and, on the Unix socket, the DSM's own user or root")
    limits.add_argument("--max-connections", type=positive_int, default=1000, metavar="N",
                        help="open client connections at most; the next is answered with an "
                             "error and closed (default %(default)s)")
    limits.add_argument("--max-connections-per-address", type=positive_int, default=256,
                        metavar="N",
                        help="open connections from one TCP peer address at most, loopback "
                             "included, and never more than half of --max-connections "
                             "(default %(default)s)")
    limits.add_argument("--local-reserve", type=positive_int, default=64, metavar="N",
                        help="the last N connection slots are kept for this host's own clients "
                             "(the Unix sockets, and TCP peers whose address is the connection's "
                             "own local address) (default %(default)s)")
    limits.add_argument("--request-timeout", type=positive_seconds, default=10.0,
                        metavar="SECONDS",
                        help="a request (query, status message, Status Server line, HTTP request) "
                             "must be complete this long after its first byte, else it gets an "
                             "error and the connection is closed (default %(default)g)")
    limits.add_argument("--max-message", type=positive_int, default=1024 * 1024, metavar="BYTES",
                        help="largest status message (default %(default)s)")
    limits.add_argument("--max-line", type=positive_int, default=8192, metavar="BYTES",
                        help="longest Status Server request line (default %(default)s)")
    limits.add_argument("--max-value", type=positive_int, default=4096, metavar="BYTES",
                        help="longest Status Server value or comment (default %(default)s)")
    limits.add_argument("--max-output", type=positive_int, default=64 * 1024 * 1024,
                        metavar="BYTES",
                        help="output waiting for one client at most; a client that does not read "
                             "is disconnected past it (default %(default)s)")
    limits.add_argument("--max-output-total", type=positive_int, default=256 * 1024 * 1024,
                        metavar="BYTES",
                        help="output waiting for all clients together at most; past it the "
                             "connections holding the most are closed first (default %(default)s)")
    limits.add_argument("--max-store-bytes", type=positive_int, default=512 * 1024 * 1024,
                        metavar="BYTES",
                        help="statuses, drive announcements and Status Server objects "
                             "together at most; past it writes are refused with a clear error "
                             "(default %(default)s)")
    limits.add_argument("--idle-timeout", type=positive_seconds, default=300.0, metavar="SECONDS",
                        help="query, status and HTTP connections that complete no request and "
                             "read none of their output this long are closed (default %(default)g)")
    limits.add_argument("--statserv-idle-timeout", type=positive_seconds, default=1800.0,
                        metavar="SECONDS",
                        help="the same for Status Server connections that hold nothing (no "
                             "monitor, TRACE or TOUCHed object); ones that do are never idled out "
                             "and use TCP keepalive (default %(default)g)")
    limits.add_argument("--max-drives", type=positive_int, default=100_000, metavar="N",
                        help="drives and status serial numbers kept at most; announcements of "
                             "further drives are counted and dropped (default %(default)s)")
    limits.add_argument("--max-objects", type=positive_int, default=1_000_000, metavar="N",
                        help="Status Server tree entries at most, /drives included "
                             "(default %(default)s)")
    # Test-only: a query '!crash' raises inside the handler, to exercise the kill switch for real.
    parser.add_argument("--fault-injection", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_options(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> argparse.Namespace:
    """The options; `explicit` holds the dest names given on the command line (memory_limits.py
    lowers only defaults)."""
    options = build_parser(prog).parse_args(argv)
    options.explicit = given_options(argv, prog)
    return options


def given_options(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> Set[str]:
    """The dest names of the options `argv` gives (a default is not given, even if equal)."""
    parser = build_parser(prog)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
