#!/usr/bin/env python3
"""How long `dsmctl.py m --lab` takes for a big lab: DriveStateMonitor/lab.py's ask_lab against
N fake DSMs on loopback (one separate server process, so the client has its own core), each
answering `ms` with D drives shaped like a real `m` reply, plus S DSMs that accept and never answer.

    python3 bench/lab_fanout.py [--hosts 100] [--drives 200] [--silent 10] [--timeout 3] [--runs 3]

Prints, per run, the wall time with every DSM answering, and with the silent ones added (which must
be about --timeout: the answering ones do not wait for each other, the silent ones end together).
Targets: all answering in under 1 s; with silent ones, under timeout + 0.5 s. Standard library
only; loopback only; the server process is stopped by its pid, also on an error. Exit code 1 if a
target is missed or an answer is wrong.
"""
import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from DriveStateMonitor.lab import LabHost, ask_lab  # noqa: E402

END = b"\x04"


def drive(serial: str) -> dict:
    return {"serial_number": serial, "world_wide_name": "5 000c50 %s" % serial,
            "manufacturer": "Seagate", "model": "ST4000NK0001", "firmware_version": "3.1.7",
            "protocol_version": "3.0.6", "port": 8123, "tlsPort": 8443,
            "network_interfaces": [{"name": "eth0", "mac_addr": "00:c9:58:01:aa:10",
                                    "ipv4_addr": "10.20.30.41"},
                                   {"name": "eth1", "mac_addr": "00:c9:58:01:aa:11",
                                    "ipv4_addr": "10.20.31.41"}],
            "last_seen": "2026 Nov 30 03:00:00", "last_seen_epoch": 1796007600.0,
            "source_address": "10.20.30.41", "interface": "eth0", "state": "alive"}


def serve(hosts: int, drives: int, silent: int, deadline: float) -> None:
    """The server process: prints its ports as one JSON line, serves until `deadline`."""
    selector = selectors.DefaultSelector()
    ports = []
    for number in range(hosts + silent):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, ("listen", number < hosts, number))
        ports.append(sock.getsockname()[1])
    print(json.dumps({"answering": ports[:hosts], "silent": ports[hosts:]}), flush=True)
    replies = [json.dumps({"Z%03d%05d" % (h, d): drive("Z%03d%05d" % (h, d))
                           for d in range(drives)}).encode() + END + b"{}" + END
               for h in range(hosts)]
    held = []
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.2):
            kind, answers, number = key.data
            if kind == "listen":
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                if not answers:
                    held.append(conn)
                    continue
                conn.setblocking(True)
                conn.settimeout(5)
                try:
                    conn.recv(16)
                    conn.sendall(replies[number])
                except OSError:
                    pass
                conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--drives", type=int, default=200)
    parser.add_argument("--silent", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.hosts, options.drives, options.silent, time.monotonic() + float(options.serve))
        return 0
    budget = options.runs * (options.timeout + 30) + 30
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(budget), "--hosts",
                               str(options.hosts), "--drives", str(options.drives), "--silent",
                               str(options.silent)], stdout=subprocess.PIPE,
                              universal_newlines=True)
    failed = False
    try:
        ports = json.loads(server.stdout.readline())
        answering = [LabHost("127.0.0.1", port, 2204, "h%d" % n)
                     for n, port in enumerate(ports["answering"])]
        silent = [LabHost("127.0.0.1", port, 2204, "s%d" % n)
                  for n, port in enumerate(ports["silent"])]
        print("%d DSMs x %d drives each (%d KiB a reply), %d silent, --timeout %g"
              % (options.hosts, options.drives, len(json.dumps(drive("Z"))) * options.drives
                 // 1024, options.silent, options.timeout))
        for run in range(options.runs):
            for label, hosts, target in (("all answering", answering, 1.0),
                                         ("with silent ones", answering + silent,
                                          options.timeout + 0.5)):
                started = time.monotonic()
                answers = ask_lab(hosts, "ms", timeout=options.timeout)
                took = time.monotonic() - started
                good = sum(answer.error is None and len(answer.replies[0]) == options.drives
                           for answer in answers)
                ok = good == len(answering) and took < target
                failed |= not ok
                print("run %d  %-17s %6.3f s  %d/%d answered  target < %.1f s  %s"
                      % (run + 1, label, took, good, len(hosts), target, "PASS" if ok else "FAIL"))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
