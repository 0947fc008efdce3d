#!/usr/bin/env python3
"""The change feed's cost (issue 20): the DSM's CPU per open /api/events viewer at 10,000 drives
with 10 changes a second, the bytes a viewer receives per minute (idle, and at 10 changes/s), the
snapshot, and what gzip and ETags do to the JSON endpoints. Standard library only.

    python3 bench/feed.py            full run (10,000 drives x 20 statuses; about 3 minutes)
    python3 bench/feed.py --quick    smoke run (10,000 drives x 2 statuses, short phases)
    python3 bench/feed.py --json     the figures as JSON on stdout

Like bench/run.py (whose helpers it uses): its own DSM on free loopback ports, --interfaces lo,
private temp dirs, stopped by pid at the end, every load bounded in count and time. The viewers are
plain sockets read by this process with select(); the changes are statuses sent the lab scripts'
way (one connection each) to random serials of the populated DSM.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import select
import socket
import sys
import time
import zlib
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: Dsm, loadgens, cleanup)
import loadgen  # noqa: E402  (bench/loadgen.py: the drives' announcements)

VIEWER_COUNTS = (0, 1, 10, 50)
CHANGES_PER_S = 10


class Viewer:
    """One open GET /api/events, read as fast as it arrives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((bench.LOOPBACK, port), timeout=10)
        self.sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")
        self.sock.setblocking(False)
        self.received = 0
        self.data = bytearray()   # kept until the snapshot is complete
        self.snapshot_at = None   # type: Any

    def read(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            raise bench.BenchError("the DSM closed an event stream")
        self.received += len(chunk)
        if self.snapshot_at is None:
            self.data += chunk
            start = self.data.find(b"event: snapshot")
            if start >= 0 and self.data.find(b"\n\n", start) >= 0:
                self.snapshot_at = time.monotonic()
                self.data = bytearray()

    def close(self) -> None:
        self.sock.close()


def pump(viewers: List[Viewer], until: float) -> None:
    """Reads every viewer until the monotonic time `until`."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        socks = {v.sock: v for v in viewers}
        if not socks:
            time.sleep(min(left, 0.05))
            continue
        ready, _, _ = select.select(list(socks), [], [], min(left, 0.05))
        for sock in ready:
            socks[sock].read()


def open_viewers(port: int, n: int, timeout: float = 120.0) -> List[Viewer]:
    viewers = [Viewer(port) for _ in range(n)]
    deadline = time.monotonic() + timeout
    while any(v.snapshot_at is None for v in viewers):
        if time.monotonic() > deadline:
            raise bench.BenchError("snapshots not received within %.0f s" % timeout)
        pump(viewers, time.monotonic() + 0.05)
    return viewers


def send_status(port: int, serial: str, text: str) -> None:
    with socket.create_connection((bench.LOOPBACK, port), timeout=10) as sock:
        sock.sendall(json.dumps({"serial_number": serial, "time_stamp": 1,
                                 "status": text}).encode())
        if sock.recv(16) != bench.END:
            raise bench.BenchError("status not acknowledged")


def changes_with_viewers(dsm: Any, viewers: List[Viewer], seconds: float,
                         serials: List[str]) -> Dict[str, float]:
    """CHANGES_PER_S statuses a second for `seconds`, viewers read throughout: DSM CPU (% of a
    core) and bytes per viewer."""
    rng = random.Random(20)
    before = [v.received for v in viewers]
    cpu0, t0 = dsm.cpu(), time.monotonic()
    for n in range(int(seconds * CHANGES_PER_S)):  # bounded
        send_status(dsm.status_port, rng.choice(serials), "bench change %d" % n)
        pump(viewers, t0 + (n + 1) / CHANGES_PER_S)
    pump(viewers, time.monotonic() + 0.3)  # the last events arrive
    elapsed = time.monotonic() - t0
    cpu = dsm.cpu() - cpu0
    got = [v.received - b for v, b in zip(viewers, before)]
    return dict(cpu_pct=100.0 * cpu / elapsed, elapsed=elapsed,
                bytes_per_viewer_min=(sum(got) / len(got) * 60.0 / elapsed) if got else 0.0)


def announce_drives(dsm: Any, serials: List[str]) -> int:
    """Announces each serial once (out of loopback, about 4,000 a second), again for those `m`
    lacks (at most 3 rounds: loopback may drop some of a burst); how many `m` has."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(bench.LOOPBACK))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    missing = list(serials)
    try:
        for _ in range(3):
            for index, serial in enumerate(missing):
                sock.sendto(loadgen.announcement(serial, "feed", 0), (bench.GROUP, dsm.mcast_port))
                if index % 40 == 39:
                    time.sleep(0.01)  # pacing, not waiting for a result
            dsm.wait_stable("announcements")
            known = dsm.query_json("m")
            missing = [serial for serial in serials if serial not in known]
            if not missing:
                break
    finally:
        sock.close()
    return len(serials) - len(missing)


def http_get(port: int, path: str, headers: Dict[str, str]) -> Any:
    conn = http.client.HTTPConnection(bench.LOOPBACK, port, timeout=60)
    try:
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response, body, (time.perf_counter() - start) * 1000
    finally:
        conn.close()


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    drives, per_serial = 10_000, (2 if opts.quick else 20)
    phase_s = 5.0 if opts.quick else 20.0
    idle_s = 16.0 if opts.quick else 61.0
    figures: Dict[str, Any] = {"drives": drives, "statuses_per_serial": per_serial}
    try:
        dsm = bench.Dsm("--http-port", str(bench.free_tcp_port()), "--drive-lifetime", "3600",
                        "--history", "20")
        http_port = dsm.info["http_port"]
        bench.log("populating %d drives and %d x %d statuses" % (drives, drives, per_serial))
        # The statuses' serials (loadgen's "FEED-<n>") are the drives' own, as in the lab.
        serials = ["FEED-%d" % n for n in range(drives)]
        figures["drives_heard"] = announce_drives(dsm, serials)
        result = bench.run_loadgens([dict(mode="status_pipelined", port=dsm.status_port,
                                          prefix="FEED", serials=drives,
                                          count=drives * per_serial, duration=120.0,
                                          window=1600)], timeout=240)[0]
        if result["error"]:
            raise bench.BenchError("populating statuses: %s" % result["error"])

        # The JSON endpoints: sizes, gzip (first: compressed now; then: the cached copy), 304.
        for path in ("/api/drives", "/api/status"):
            response, plain, plain_ms = http_get(http_port, path, {})
            _, zipped, first_ms = http_get(http_port, path, {"Accept-Encoding": "gzip"})
            _, _, cached_ms = http_get(http_port, path, {"Accept-Encoding": "gzip"})
            tag = response.getheader("ETag")
            not_modified, empty, ms_304 = http_get(http_port, path, {"If-None-Match": tag})
            start = time.perf_counter()
            zlib.compressobj(1, zlib.DEFLATED, 31).compress(plain)
            local_ms = (time.perf_counter() - start) * 1000
            figures[path] = dict(bytes=len(plain), gzip_bytes=len(zipped), plain_ms=plain_ms,
                                 gzip_first_ms=first_ms, gzip_cached_ms=cached_ms,
                                 zlib_level1_here_ms=local_ms, status_304=not_modified.status,
                                 bytes_304=len(empty), ms_304=ms_304)
            bench.log("%s: %d B, gzip %d B; GET %.1f ms, gzip first %.1f ms, cached %.1f ms, "
                      "304 %.1f ms; zlib level 1 here %.1f ms" % (
                          path, len(plain), len(zipped), plain_ms, first_ms, cached_ms, ms_304,
                          local_ms))

        # The snapshot a new viewer gets.
        start = time.monotonic()
        [first] = open_viewers(http_port, 1)
        figures["snapshot_s"] = first.snapshot_at - start
        figures["snapshot_bytes"] = first.received
        bench.log("snapshot: %d B in %.2f s" % (first.received, figures["snapshot_s"]))

        # An idle viewer: nothing changes (drives do not repeat: --drive-lifetime 3600).
        bench.wait_cpu_idle(dsm.pid)
        before = first.received
        start = time.monotonic()
        pump([first], start + idle_s)
        figures["idle_bytes_per_min"] = (first.received - before) * 60.0 / (time.monotonic() - start)
        bench.log("idle viewer: %.0f B a minute (keepalives)" % figures["idle_bytes_per_min"])
        first.close()

        # CPU with 0, 1, 10, 50 viewers at 10 changes a second.
        runs = {}
        snapshot_cpu = {}
        for count in VIEWER_COUNTS:
            bench.wait_cpu_idle(dsm.pid)
            cpu0 = dsm.cpu()
            viewers = open_viewers(http_port, count)
            if count:
                snapshot_cpu[count] = (dsm.cpu() - cpu0) * 1000 / count
            bench.wait_cpu_idle(dsm.pid)
            runs[count] = changes_with_viewers(dsm, viewers, phase_s, serials)
            for viewer in viewers:
                viewer.close()
            bench.log("%d viewers, %d changes/s: DSM CPU %.1f %%, %.0f B/min per viewer" % (
                count, CHANGES_PER_S, runs[count]["cpu_pct"],
                runs[count]["bytes_per_viewer_min"]))
        figures["changes"] = runs
        figures["snapshot_dsm_cpu_ms"] = snapshot_cpu
        base = runs[0]["cpu_pct"]
        figures["cpu_pct_per_viewer"] = {
            count: (runs[count]["cpu_pct"] - base) / count for count in VIEWER_COUNTS if count}
        figures["dsm_rss_mb"] = dsm.rss()
        dsm.stop()
    finally:
        bench.cleanup()
    if opts.json:
        print(json.dumps(figures, indent=1))
    else:
        print("feed bench: %d drives x %d statuses" % (drives, per_serial))
        for path in ("/api/drives", "/api/status"):
            f = figures[path]
            print("  %-12s %10d B  gzip %9d B  GET %6.1f ms  gzip first %6.1f ms  cached %6.1f "
                  "ms  304 %5.1f ms (%d B)" % (path, f["bytes"], f["gzip_bytes"], f["plain_ms"],
                                               f["gzip_first_ms"], f["gzip_cached_ms"],
                                               f["ms_304"], f["bytes_304"]))
        print("  snapshot     %10d B in %.2f s" % (figures["snapshot_bytes"], figures["snapshot_s"]))
        print("  idle viewer  %10.0f B a minute" % figures["idle_bytes_per_min"])
        print("  DSM CPU per snapshot sent: %s" % ", ".join(
            "%.1f ms (%d viewers opening at once)" % (ms, count)
            for count, ms in sorted(figures["snapshot_dsm_cpu_ms"].items())))
        for count in VIEWER_COUNTS:
            run = figures["changes"][count]
            print("  %2d viewers at %d changes/s: DSM CPU %5.1f %%  %9.0f B/min per viewer%s" % (
                count, CHANGES_PER_S, run["cpu_pct"], run["bytes_per_viewer_min"],
                "" if not count else "  (+%.2f %% of a core per viewer)"
                % figures["cpu_pct_per_viewer"][count]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
