"""A drive simulator for labs, demos and tests: `dsmctl.py simulate --drives N`.

Theory of operation
-------------------
Real Kinetic drives announce themselves by UDP multicast every few seconds with one JSON object
(`../shared/spec/kinetic-announcement.json`: serial number, model, firmware, a world wide name with
spaces, two network interfaces with IPv4/IPv6/MAC addresses, ports). The simulator makes N such
drives from a seed (the same seed gives the same drives, so a restarted simulation is the same lab)
and sends each drive's announcement every `--interval` seconds out of ONE chosen interface
(IP_MULTICAST_IF; default loopback, so it never leaves the host unless told to) with TTL 1, so it
never crosses a router.

`--flaky K` makes the first K drives take turns falling silent: each is silent for `--silence`
seconds (default 75, longer than the DSM's default 60 s drive lifetime, so it reads expired), then
heard again for as long, the K drives staggered. `--statuses` also reports a test-script status for
one drive per round to the status port, the old way (a Python dict with no terminator, then wait
for the `\\x04`), walking through the lab's codes (001 initialised, 002 started, PASS, 000 stopped
cleanly, with now and then a 3XX script failure).

What a drive announces and when it is silent are pure functions of (seed, index, elapsed time);
`run` is the thin loop around them. It runs until Ctrl-C (exit 1, as every script), or for
`--rounds` rounds (exit 0).
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Set, TextIO

from .interfaces import select_interfaces
from .terminal_text import escape_controls
from .options import DEFAULT_MCAST_GROUP, DEFAULT_MCAST_PORT, positive_int, positive_seconds

EXIT_OK = 0
EXIT_INTERRUPT = 1
EXIT_SOCKET = 2
MODELS = [("ST4000NK0001", "3.1.7"), ("ST8000NK0002", "4.0.2"), ("ST4000NK0001", "3.1.6")]
# The lab's status codes in the order a test script goes through them (see docs/status-server.md).
STATUS_CYCLE = ["001", "002", "PASS", "000"]
FAILURE_STATUSES = ["301", "FAIL"]
_SERIAL_CHARS = "0123456789ABCDEFGHJKLMNPQRSTVWXYZ"
# The second octet of the drives' IPv4 addresses (10.<octet>.30.1, ...) is 20 for seed 1 and one
# more for each seed after it, so two simulators with different seeds (up to SEED_NETWORKS apart)
# give their drives different addresses, as two racks of real drives have.
SEED_NETWORKS = 200


def address_octet(seed: int) -> int:
    """The second octet of the IPv4 addresses of the drives made from `seed`: 20 to 219."""
    return 20 + (seed - 1) % SEED_NETWORKS


def make_drives(count: int, seed: int) -> List[Dict[str, Any]]:
    """`count` announcements in the real shape, the same for the same seed; serials are unique,
    and so are addresses: drive n's eth0 is 10.S.(30 + 2 * (n // 250)).(n % 250 + 1), its eth1 the
    next network, with S = address_octet(seed) (distinct for seeds less than SEED_NETWORKS
    apart), for up to 28,000 drives; the MACs are 00:c9:58:S:... numbered the same way."""
    rng = random.Random(seed)
    network = address_octet(seed)
    drives: List[Dict[str, Any]] = []
    serials = set()
    while len(drives) < count:
        serial = "Z" + "".join(rng.choice(_SERIAL_CHARS) for _ in range(7))
        if serial in serials:
            continue
        serials.add(serial)
        model, firmware = rng.choice(MODELS)
        n = len(drives)
        host = (n % 250) + 1
        subnet = 30 + 2 * (n // 250)  # eth0 on 10.20.<subnet>.x, eth1 on the next one
        # The MAC (and the IPv6 address made from it) is numbered like the IPv4 addresses, so it
        # is unique too; the three draws that once made it stay, so serials stay as they were.
        rng.randrange(256), rng.randrange(256), rng.randrange(0, 256, 2)
        mac = [0x00, 0xC9, 0x58, network, (n >> 7) & 0xFF, (n & 0x7F) << 1]
        interfaces = []
        for i in range(2):
            octets = mac[:5] + [mac[5] + i]
            interfaces.append({
                "ipv4_addr": "10.%d.%d.%d" % (network, (subnet + i) % 256, host),
                "ipv6_addr": "fe80::%x:%xff:fe%02x:%02x%02x" % (
                    (octets[0] ^ 2) << 8 | octets[1], octets[2], octets[3], octets[4], octets[5]),
                "mac_addr": ":".join("%02x" % o for o in octets),
                "name": "eth%d" % i,
            })
        drives.append({
            "firmware_version": firmware,
            "manufacturer": "Seagate",
            "model": model,
            "network_interfaces": interfaces,
            "port": 8123,
            "protocol_version": "3.0.6",
            "serial_number": serial,
            "tlsPort": 8443,
            "world_wide_name": "5 000c50 0%08x" % rng.getrandbits(32),
        })
    return drives


def is_silent(index: int, flaky: int, elapsed: float, silence: float) -> bool:
    """True when drive `index` (0-based) is silent `elapsed` seconds into the simulation.

    The first `flaky` drives alternate: heard for `silence` seconds, silent for `silence` seconds,
    each starting its turn a little later than the one before (staggered over one period)."""
    if index >= flaky:
        return False
    since_turn = elapsed - silence * index / flaky
    return since_turn >= silence and int(since_turn // silence) % 2 == 1


def flaky_names(drives: List[Dict[str, Any]], flaky: int, shown: int = 3) -> str:
    """The serial numbers of the `flaky` drives that fall silent (the first ones), for the banner:
    a newcomer told to watch "the flaky drive" must know which it is. At most `shown` named."""
    names = [drive["serial_number"] for drive in drives[:min(flaky, shown)]]
    return ", ".join(names) + (", ..." if flaky > shown else "")


def status_for_round(round_number: int, drives: List[Dict[str, Any]], seed: int) -> Dict[str, str]:
    """The status report of round `round_number`: one drive per round, in turn, stepping through
    STATUS_CYCLE; every seventh report of a drive is a failure instead."""
    drive = drives[round_number % len(drives)]
    step = round_number // len(drives)
    rng = random.Random("%d-%d" % (seed, round_number))
    if step % 7 == 6:
        status = rng.choice(FAILURE_STATUSES)
    else:
        status = STATUS_CYCLE[step % len(STATUS_CYCLE)]
    return {"serial_number": drive["serial_number"],
            "time_stamp": time.strftime("%Y-%m-%d %H:%M:%S"), "status": status}


def open_sender(interface: str) -> socket.socket:
    """A UDP socket sending multicast out of `interface` only (IP_MULTICAST_IF), TTL 1.

    Raises ValueError when the interface is not up or has no IPv4 address; OSError otherwise."""
    chosen = select_interfaces([interface])[0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(chosen.ipv4))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def send_status(address: Any, report: Dict[str, str], timeout: float = 5.0) -> Optional[str]:
    """Reports one status the old way; None when acknowledged, else what went wrong."""
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(str(report).encode("utf-8"))
            reply = b""
            while not reply.endswith(b"\x04"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return "cannot report a status to %s:%d: %s" % (address[0], address[1],
                                                        exc.strerror or exc)
    return None if reply == b"\x04" else "the DSM refused the status: %r" % reply[:200]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulate subcommand's options (dsmctl adds --host and --status-port itself)."""
    parser.add_argument("--drives", type=positive_int, default=5, metavar="N",
                        help="how many drives (default %(default)s)")
    parser.add_argument("--interval", type=positive_seconds, default=5.0, metavar="S",
                        help="seconds between two announcements of a drive (default %(default)g, "
                             "as real drives)")
    parser.add_argument("--interface", default="lo", metavar="NAME",
                        help="the one interface to send on (default %(default)s: the "
                             "announcements never leave this host)")
    parser.add_argument("--mcast-group", default=DEFAULT_MCAST_GROUP, metavar="ADDR",
                        help="the DSM's announcement group (default %(default)s)")
    parser.add_argument("--mcast-port", type=positive_int, default=DEFAULT_MCAST_PORT,
                        metavar="PORT", help="the DSM's announcement port (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, metavar="S",
                        help="the same seed gives the same drives (default %(default)s)")
    parser.add_argument("--flaky", type=int, default=0, metavar="K",
                        help="K drives take turns falling silent and coming back (default 0)")
    parser.add_argument("--silence", type=positive_seconds, default=75.0, metavar="S",
                        help="how long a flaky drive stays silent, and then heard (default "
                             "%(default)g: longer than the DSM's 60 s drive lifetime)")
    parser.add_argument("--statuses", action="store_true",
                        help="also report a test-script status for one drive per round to the "
                             "DSM's status port (--host, --status-port)")
    parser.add_argument("--rounds", type=positive_int, default=None, metavar="N",
                        help="stop after N rounds (default: until Ctrl-C)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print only the first line and errors")


def run(options: argparse.Namespace, status_address: Any, out: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Runs the simulation; returns the exit code (0 after --rounds, 1 on Ctrl-C, 2 no socket).
    Its lines go to `out` (default: sys.stdout when called), escaped (escape_controls) like every
    dsmctl line: the interface, group and reasons come from the command line and the system."""
    out = sys.stdout if out is None else out

    def say(line: str, stream: Optional[TextIO] = None) -> None:
        print(escape_controls(line), file=stream or out, flush=True)

    if not 0 <= options.flaky <= options.drives:
        say("dsmctl: --flaky must be between 0 and --drives (%d)" % options.drives, sys.stderr)
        return EXIT_SOCKET
    drives = make_drives(options.drives, options.seed)
    payloads = [json.dumps(drive).encode("utf-8") for drive in drives]
    try:
        sender = open_sender(options.interface)
    except (ValueError, OSError) as exc:
        say("dsmctl: cannot send on interface %s: %s (choose one with --interface)"
            % (options.interface, exc), sys.stderr)
        return EXIT_SOCKET
    target = (options.mcast_group, options.mcast_port)
    say("simulating %d drive%s (%s...) on %s to %s:%d every %g s%s%s; Ctrl-C stops" % (
        len(drives), "" if len(drives) == 1 else "s", drives[0]["serial_number"],
        options.interface, options.mcast_group, options.mcast_port, options.interval,
        "; %d flaky (%s)" % (options.flaky, flaky_names(drives, options.flaky))
        if options.flaky else "",
        "; statuses to %s:%d" % status_address if options.statuses else ""))
    silent_before: Set[int] = set()  # indexes into drives
    status_failing = False
    started = clock()
    round_number = 0
    try:
        with sender:
            while options.rounds is None or round_number < options.rounds:
                elapsed = clock() - started
                silent = {i for i in range(len(drives))
                          if is_silent(i, options.flaky, elapsed, options.silence)}
                for index, payload in enumerate(payloads):
                    if index in silent:
                        continue
                    try:
                        sender.sendto(payload, target)
                    except OSError as exc:
                        say("dsmctl: cannot send to %s:%d: %s" % (target + (exc,)), sys.stderr)
                        return EXIT_SOCKET
                if not options.quiet:
                    for index in sorted(silent ^ silent_before):
                        say("%s %s" % (drives[index]["serial_number"],
                                       "falls silent" if index in silent else "is heard again"))
                silent_before = silent
                if options.statuses:
                    problem = send_status(status_address, status_for_round(round_number, drives,
                                                                            options.seed))
                    if problem and not status_failing:  # once, not every round
                        say("dsmctl: %s (the drives go on announcing; said again only after "
                            "a status got through)" % problem, sys.stderr)
                    status_failing = bool(problem)
                round_number += 1
                if options.rounds is None or round_number < options.rounds:
                    sleep(max(0.0, started + round_number * options.interval - clock()))
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    return EXIT_OK
