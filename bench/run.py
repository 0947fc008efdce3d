#!/usr/bin/env python3
"""DSM benchmark suite (standard library only). See bench/README.md.

    python3 bench/run.py            full run (3 runs per figure, ~5-10 min on 2 cores)
    python3 bench/run.py --quick    smoke run (1 run per figure, under a minute)
    python3 bench/run.py --json     the same figures as JSON on stdout
    python3 bench/run.py --only 1,4 only some scenarios (numbers as in the README)

Starts its own DSMs (free loopback ports, --interfaces lo, group 239.1.2.99, private temp dirs) and
stops each by its pid at the end, also on error or Ctrl-C. Load comes from bench/loadgen.py
processes. Every scenario checks its own results (counts, contents); a failed check shows as
CHECK-FAIL in the table and makes the exit code 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DAEMON = os.path.join(ROOT, "DriveStateMonitor", "DriveStateMonitor.py")
LOADGEN = os.path.join(HERE, "loadgen.py")
# The floor (scenario 9): the least a Python selectors daemon must do for the same work.
FLOOR = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "floor_server.py"))
# The floor of the Status Server's line protocol (scenario 6).
STATSERV_FLOOR = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "statserv_floor.py"))
LOOPBACK = "127.0.0.1"
GROUP = "239.1.2.99"
END = b"\x04"
# The production ports: a bench must never touch them (nor /tmp/DriveStateMonitor).
FORBIDDEN_PORTS = {2203, 3110, 3111, 8123}
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: List[subprocess.Popen] = []  # every process we started; stopped by pid at exit
_temp_dirs: List[str] = []


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------------------
def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """SIGTERM to this pid, wait, then SIGKILL to this pid."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        except ProcessLookupError:
            pass
    return proc.returncode


def cleanup() -> None:
    for proc in reversed(_children):
        try:
            stop_process(proc, 5.0)
        except Exception:
            pass
    _children.clear()
    for path in _temp_dirs:
        shutil.rmtree(path, ignore_errors=True)
    _temp_dirs.clear()


def free_udp_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port


def free_tcp_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise BenchError("no VmRSS for pid %d" % pid)


def udp_drops(port: int) -> int:
    """Kernel drops counted on every UDP socket bound to `port` (/proc/net/udp, last column)."""
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port:
                total += int(parts[-1])
    return total


def softnet_drops() -> int:
    """Packets dropped because a CPU's input backlog was full (netdev_max_backlog)."""
    total = 0
    with open("/proc/net/softnet_stat") as f:
        for line in f:
            total += int(line.split()[1], 16)
    return total


def wait_cpu_idle(pid: int, timeout: float = 20.0) -> None:
    """Returns once `pid` has used at most one clock tick of CPU in 0.3 s (its input drained)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now - last <= 1.0 / CLK_TCK:
            return
        last = now


class FloorServer:
    """../shared/bench/floor_server.py on free loopback ports (scenario 9)."""

    def __init__(self) -> None:
        self.status_port = free_tcp_port()
        self.query_port = free_tcp_port()
        self.mcast_port = free_udp_port()
        self.proc = subprocess.Popen([sys.executable, FLOOR, str(self.status_port),
                                      str(self.query_port), str(self.mcast_port), GROUP],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _children.append(self.proc)
        deadline = time.monotonic() + 15.0
        while True:
            try:
                self.query("m")
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError("the floor server did not start") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def query(self, letter: str, timeout: float = 30.0) -> bytes:
        with socket.create_connection((LOOPBACK, self.query_port), timeout=timeout) as sock:
            sock.sendall(letter.encode())
            data = recv_all(sock)
        return data[:-1] if data.endswith(END) else data

    def query_json(self, letter: str) -> Any:
        return json.loads(self.query(letter))

    def wipe(self) -> None:
        self.query("w")

    def stop(self) -> Optional[int]:
        return stop_process(self.proc)


class Dsm:
    """One DSM started by the bench on free ports in private temp dirs."""

    def __init__(self, *extra: str, state_dir: Optional[str] = None) -> None:
        self.base = tempfile.mkdtemp(prefix="dsmbench")
        _temp_dirs.append(self.base)
        self.run_dir = os.path.join(self.base, "run")
        self.state_dir = state_dir or os.path.join(self.base, "state")
        self.mcast_port = free_udp_port()
        self.log_path = os.path.join(self.base, "dsm.log")
        args = [sys.executable, DAEMON, "--interfaces", "lo", "--query-port", "0",
                "--status-port", "0", "--statserv-port", "0", "--mcast-group", GROUP,
                "--mcast-port", str(self.mcast_port), "--run-dir", self.run_dir,
                "--log-dir", self.base, "--state-dir", self.state_dir] + default_args() + list(extra)
        self._log = open(self.log_path, "ab")
        self.t_spawn = time.monotonic()
        # Its own session: a Ctrl-C in the terminal reaches the bench, which stops the DSM by pid.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _children.append(self.proc)
        self.info: Dict[str, Any] = {}
        self.startup_s = self._wait_ready()
        self.start_rss_mb = rss_mb(self.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float = 15.0) -> float:
        """Seconds from spawning the process until it answers an `m` query."""
        deadline = self.t_spawn + timeout
        info_path = os.path.join(self.run_dir, "dsm.json")
        while True:
            if self.proc.poll() is not None:
                raise BenchError("DSM exited with %s while starting:\n%s"
                                 % (self.proc.returncode, self.log_text()[-2000:]))
            if time.monotonic() > deadline:
                raise BenchError("DSM did not answer within %.0f s" % timeout)
            if not self.info:
                try:
                    with open(info_path) as f:
                        info = json.load(f)
                    if info.get("pid") == self.pid:
                        self.info = info
                        ports = {info["query_port"], info["status_port"], info["statserv_port"]}
                        if ports & FORBIDDEN_PORTS:
                            raise BenchError("DSM bound a production port: %s" % info)
                except (OSError, ValueError):
                    pass
            if self.info:
                try:
                    with socket.create_connection((LOOPBACK, self.query_port), timeout=2) as s:
                        s.sendall(b"m")
                        s.shutdown(socket.SHUT_WR)
                        reply = recv_all(s)
                    if reply.endswith(END):
                        return time.monotonic() - self.t_spawn
                except OSError:
                    pass
            time.sleep(0.002)

    @property
    def query_port(self) -> int:
        return self.info["query_port"]

    @property
    def status_port(self) -> int:
        return self.info["status_port"]

    @property
    def statserv_port(self) -> int:
        return self.info["statserv_port"]

    @property
    def query_socket(self) -> str:
        return self.info["query_socket"]

    @property
    def statserv_socket(self) -> str:
        return self.info["statserv_socket"]

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mb(self.pid)

    def query(self, letter: str, timeout: float = 30.0) -> bytes:
        with socket.create_connection((LOOPBACK, self.query_port), timeout=timeout) as s:
            s.sendall(letter.encode())
            s.shutdown(socket.SHUT_WR)
            reply = recv_all(s)
        if not reply.endswith(END):
            raise BenchError("query %r: reply does not end with \\x04" % letter)
        return reply[:-1]

    def query_json(self, letter: str) -> Any:
        return json.loads(self.query(letter))

    def wipe(self) -> None:
        self.query_json("w")

    def statserv(self, lines: Sequence[str], timeout: float = 10.0) -> List[str]:
        """Sends request lines; returns the final (`.`/`!`) line of each response."""
        with socket.create_connection((LOOPBACK, self.statserv_port), timeout=timeout) as s:
            s.sendall("".join(line + "\n" for line in lines).encode())
            finals: List[str] = []
            buf = b""
            while len(finals) < len(lines):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                finals.extend(line.decode() for line in done if line[:1] in (b".", b"!"))
            return finals

    def get_value(self, name: str) -> Optional[str]:
        line = self.statserv(["GET " + name])[0]
        if line.startswith('. "'):
            return line[3:-1]
        return None

    def counter(self, name: str) -> int:
        value = self.get_value("/dsm/counters/" + name)
        return int(value) if value is not None else 0

    def wait_stable(self, name: str, timeout: float = 15.0, expect: Optional[int] = None) -> int:
        """A /dsm value that has stopped changing (/dsm is republished every 1 s), or `expect`."""
        deadline = time.monotonic() + timeout
        last = self.counter(name) if "/" not in name else int(self.get_value(name) or 0)
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            if last == expect:
                return last
            time.sleep(0.2)
            now_value = self.counter(name) if "/" not in name else int(self.get_value(name) or 0)
            if now_value != last:
                last, stable_since = now_value, time.monotonic()
            elif time.monotonic() - stable_since >= 1.3:
                return last
        raise BenchError("/dsm value %s still changing after %.0f s" % (name, timeout))

    def stop(self) -> Optional[int]:
        code = stop_process(self.proc)
        self._log.close()
        return code


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class Loadgen:
    """One bench/loadgen.py process; result() is the last JSON line it prints."""

    def __init__(self, args: Dict[str, Any]) -> None:
        self.args = args
        self.proc = subprocess.Popen([sys.executable, LOADGEN, json.dumps(args)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     start_new_session=True)
        _children.append(self.proc)

    def ready(self, timeout: float = 30.0) -> Dict[str, Any]:
        """For modes that print a first line once their load is in place."""
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise BenchError("%s: not ready within %.0f s" % (self.args["mode"], timeout))
        sel.close()
        return json.loads(self.proc.stdout.readline())

    def result(self, timeout: float = 120.0) -> Dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, 2.0)
            raise BenchError("%s load generator did not finish within %.0f s"
                             % (self.args["mode"], timeout)) from None
        lines = [line for line in out.decode().splitlines() if line.strip()]
        if not lines:
            raise BenchError("%s load generator printed nothing (exit %s)"
                             % (self.args["mode"], self.proc.returncode))
        result = json.loads(lines[-1])
        if "fatal" in result:
            raise BenchError("%s load generator failed: %s" % (self.args["mode"], result["fatal"]))
        return result


def run_loadgens(arg_list: List[Dict[str, Any]], timeout: float = 120.0) -> List[Dict[str, Any]]:
    gens = [Loadgen(a) for a in arg_list]
    return [g.result(timeout) for g in gens]


# --- statistics and the table ------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(math.ceil(p / 100.0 * len(ordered))) - 1))
    return ordered[k]


class Row:
    def __init__(self, scenario: str, measure: str, unit: str, target: str = "",
                 ok: Optional[Callable[[float], bool]] = None, fmt: str = "{:.1f}") -> None:
        self.scenario, self.measure, self.unit = scenario, measure, unit
        self.target, self.ok, self.fmt = target, ok, fmt
        self.values: List[float] = []
        self.text: Optional[str] = None  # a row that is not a number ("n/a ...")
        self.checks: List[str] = []  # failed checks
        self.notes: List[str] = []

    def add(self, value: float) -> None:
        self.values.append(value)

    def fail_check(self, what: str) -> None:
        self.checks.append(what)

    def summary(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(scenario=self.scenario, measure=self.measure, unit=self.unit,
                                   target=self.target or None, runs=len(self.values))
        if self.values:
            out.update(median=statistics.median(self.values), min=min(self.values),
                       max=max(self.values))
        else:
            out.update(median=None, min=None, max=None)
        if self.text:
            out["text"] = self.text
        if self.checks:
            result = "CHECK-FAIL"
        elif self.ok is None or not self.values:
            result = ""
        else:
            result = "PASS" if self.ok(out["median"]) else "FAIL"
        out["result"] = result or None
        out["check_failures"] = self.checks
        out["notes"] = self.notes
        return out


class Report:
    def __init__(self) -> None:
        self.rows: List[Row] = []
        self.scenario_errors: List[str] = []

    def row(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def table(self) -> str:
        header = ["#", "measure", "median", "min", "max", "unit", "target", "result"]
        lines = [header]
        for row in self.rows:
            s = row.summary()
            if row.text and not row.values:
                cells = [row.scenario, row.measure, row.text, "", "", "", row.target,
                         s["result"] or ""]
            else:
                def f(v, fmt=row.fmt):
                    return fmt.format(v) if v is not None else "-"
                cells = [row.scenario, row.measure, f(s["median"]), f(s["min"]), f(s["max"]),
                         row.unit, row.target, s["result"] or ""]
            lines.append(cells)
        text_rows = {n + 1 for n, row in enumerate(self.rows) if row.text and not row.values}
        widths = [max(len(str(cells[i])) for n, cells in enumerate(lines) if n not in text_rows)
                  for i in range(len(header))]
        out = []
        for n, cells in enumerate(lines):
            if n in text_rows:
                out.append("  ".join([str(cells[0]).ljust(widths[0]), str(cells[1]).ljust(widths[1]),
                                      cells[2]]).rstrip())
                continue
            out.append("  ".join(str(c).ljust(widths[i]) if i in (0, 1, 5, 6, 7)
                                 else str(c).rjust(widths[i]) for i, c in enumerate(cells)).rstrip())
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        extra = []
        for row in self.rows:
            for c in row.checks:
                extra.append("CHECK FAILED  %s %s: %s" % (row.scenario, row.measure, c))
            for note in row.notes:
                extra.append("note  %s %s: %s" % (row.scenario, row.measure, note))
        for e in self.scenario_errors:
            extra.append("SCENARIO ERROR  %s" % e)
        return "\n".join(out + ([""] + extra if extra else []))

    def failed_checks(self) -> bool:
        return bool(self.scenario_errors) or any(r.checks for r in self.rows)


# --- scenarios ---------------------------------------------------------------------------------------
def host_noise() -> Dict[str, Any]:
    """Load average and DSMs running that the bench did not start (other people's tests)."""
    ours = {p.pid for p in _children}
    foreign = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in ours:
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if b"DriveStateMonitor.py" in f.read():
                    foreign += 1
        except OSError:
            pass
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return dict(loadavg_1min=float(load), other_dsm_processes=foreign)


_help_cache: List[str] = []


def daemon_help() -> str:
    if not _help_cache:
        _help_cache.append(subprocess.run([sys.executable, DAEMON, "--help"],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          timeout=30).stdout.decode())
    return _help_cache[0]


def default_args() -> List[str]:
    """Options every bench DSM gets: listeners with a fixed default port are turned off."""
    args = []
    if "--http-port" in daemon_help():
        args += ["--http-port", "0"]  # 0 turns the HTTP listener off (default 2204)
    return args


class Bench:
    def __init__(self, quick: bool, report: Report) -> None:
        self.quick = quick
        self.reps = 1 if quick else 3
        self.report = report
        self.start_times: List[float] = []
        self.start_rss: List[float] = []
        self.help_text = daemon_help()
        # Scenarios 5 and 6 hold more than 1,000 connections; past the DSM's default
        # --max-connections (1000) it refuses them, so those scenarios raise the limit.
        self.many_conns = (["--max-connections", "4000"]
                           if "--max-connections" in self.help_text else [])
        # All of them come from 127.0.0.1, which one address may not fill on its own by default.
        if "--max-connections-per-address" in self.help_text:
            self.many_conns += ["--max-connections-per-address", "4000"]

    def dsm(self, *extra: str, **kwargs: Any) -> Dsm:
        dsm = Dsm(*extra, **kwargs)
        if "state_dir" not in kwargs:  # a restoring DSM's start says nothing of a fresh one
            self.start_times.append(dsm.startup_s)
            self.start_rss.append(dsm.start_rss_mb)
        return dsm

    def finish(self, dsm: Dsm, rows: Sequence[Row]) -> None:
        if not dsm.alive():
            for r in rows:
                r.fail_check("the DSM died (exit %s): %s" % (dsm.proc.returncode,
                                                            dsm.log_text()[-500:]))
        code = dsm.stop()
        if code not in (0, None):
            rows[0].fail_check("the DSM exited with %s on SIGTERM" % code)
        errors = [line for line in dsm.log_text().splitlines() if " ERROR " in line or " CRITICAL " in line]
        if errors:
            rows[0].fail_check("DSM logged %d error(s), first: %s" % (len(errors), errors[0][:300]))
        warnings = [line for line in dsm.log_text().splitlines() if " WARNING " in line]
        if warnings:
            rows[0].notes.append("DSM logged %d warning(s), first: %s"
                                 % (len(warnings), warnings[0][:200]))

    # 9 ------------------------------------------------------------------------------------------
    def floor_scenario(self) -> None:
        """The DSM and the floor server side by side, same loads, one after the other, each
        measured by its process's user+system CPU per operation (till drained)."""
        R = self.report
        if not os.path.exists(FLOOR):
            R.row("9", "DSM / floor ratios", "", "").text = (
                "skipped: %s not found (the floor rows need ../shared)" % FLOOR)
            return
        d = 1.0 if self.quick else 3.0
        measures = [
            ("status", "script-style status (connect, dict, \\x04, close), 4 senders",
             1.3),
            ("new", "announcement of a new drive (5,000 new drives/s)", 2.0),
            ("repeat", "repeated announcement (1,000 drives, 10,000/s)", 1.5),
        ]
        rows: Dict[str, Dict[str, Row]] = {}
        for key, what, limit in measures:
            rows[key] = {
                "floor": R.row("9", "floor CPU per " + what, "µs", "", None, "{:.1f}"),
                "dsm": R.row("9", "  DSM CPU per operation", "µs", "", None, "{:.1f}"),
                "ratio": R.row("9", "  DSM / floor", "×", "≤ %.1f ×" % limit,
                               (lambda v, limit=limit: v <= limit), "{:.2f}"),
            }
        loss = {
            "floor": R.row("9", "10,000 new drives/s for 2 s: floor lost", "%", "", None,
                           "{:.2f}"),
            "dsm": R.row("9", "  DSM lost", "%", "no loss where the floor loses none", None,
                         "{:.2f}"),
        }
        # The same DSM code reading each datagram in a loop pass of its own, as the floor does: what
        # coalescing (--coalesce, on by default) saves, shown beside the target rows.
        uncoalesced = {
            "dsm": R.row("9", "  DSM with --coalesce 0, per new drive", "µs", "", None, "{:.1f}"),
            "ratio": R.row("9", "  DSM with --coalesce 0 / floor", "×", "", None, "{:.2f}"),
        }
        floor = FloorServer()
        dsm = self.dsm()
        dsm0 = self.dsm("--coalesce", "0")
        targets = {"floor": floor, "dsm": dsm}
        all_rows = [r for lv in rows.values() for r in lv.values()] + list(loss.values())
        try:
            for rep in range(self.reps):
                per_op: Dict[str, Dict[str, float]] = {"floor": {}, "dsm": {}}
                for name, target in targets.items():
                    tag = "F9%s%d" % (name[0], rep)
                    # status: 4 one-shot senders
                    target.wipe()
                    start_at = time.monotonic() + 1.2
                    args = [dict(mode="status_oneshot", port=target.status_port,
                                 prefix="%ss%d" % (tag, j), per_serial=20,
                                 count=int(20000 * d), duration=d, start_at=start_at)
                            for j in range(4)]
                    cpu0 = target.cpu()
                    results = run_loadgens(args, timeout=60 + 4 * d)
                    wait_cpu_idle(target.pid)
                    acked = sum(r["acked"] for r in results)
                    per_op[name]["status"] = 1e6 * (target.cpu() - cpu0) / max(acked, 1)
                    for r in results:
                        if r["error"]:
                            rows["status"][name].fail_check(r["error"])
                    # new drives, below saturation
                    target.wipe()
                    count = int(5000 * d)
                    per_op[name]["new"] = self._floor_announce(
                        target, rows["new"][name], count, 5000, d, count, tag + "n")[0]
                    # repeats: 1,000 drives heard once, then again and again (no change)
                    self._floor_announce(target, rows["repeat"][name], 1000, 5000, 2.0, 1000,
                                         tag + "r")
                    per_op[name]["repeat"] = self._floor_announce(
                        target, rows["repeat"][name], 1000, 10000, d, int(10000 * d), tag + "r",
                        repeat=True)[0]
                    # loss at 10,000 new drives/s for 2 s
                    target.wipe()
                    _, lost_pct = self._floor_announce(target, loss[name], 20000, 10000, 2.0,
                                                       20000, tag + "l")
                    loss[name].add(lost_pct)
                    log("9: %s run %d: %s; lost %.2f %% at 10k new/s"
                        % (name, rep + 1, ", ".join("%s %.1f µs" % kv
                                                    for kv in per_op[name].items()), lost_pct))
                dsm0.wipe()
                count = int(5000 * d)
                new0 = self._floor_announce(dsm0, uncoalesced["dsm"], count, 5000, d, count,
                                            "F9u%dn" % rep)[0]
                uncoalesced["dsm"].add(new0)
                uncoalesced["ratio"].add(new0 / max(per_op["floor"]["new"], 1e-9))
                for key, _, _ in measures:
                    rows[key]["floor"].add(per_op["floor"][key])
                    rows[key]["dsm"].add(per_op["dsm"][key])
                    rows[key]["ratio"].add(per_op["dsm"][key] / max(per_op["floor"][key], 1e-9))
            if loss["floor"].values and max(loss["floor"].values) == 0 and \
                    max(loss["dsm"].values) > 0:
                loss["dsm"].checks.append("the DSM lost announcements where the floor lost none")
        finally:
            floor.stop()
            self.finish(dsm0, list(uncoalesced.values()))
            self.finish(dsm, all_rows)

    def _floor_announce(self, target: Any, row: Row, ndrives: int, rate: int, duration: float,
                        count: int, prefix: str, repeat: bool = False) -> Tuple[float, float]:
        """Sends `count` announcements of `ndrives` drives to `target` at `rate`/s; returns (CPU
        µs per datagram received, % lost). Received: the drives in `m` for new drives (each
        datagram a new serial), datagrams sent minus kernel drops for repeats."""
        drops0 = udp_drops(target.mcast_port) + softnet_drops()
        cpu0 = target.cpu()
        res = run_loadgens([dict(mode="announce", port=target.mcast_port, group=GROUP,
                                 drives=ndrives, rate=rate, duration=duration, count=count,
                                 change_every=1000000, prefix=prefix, run="floor")],
                           timeout=60 + duration)[0]
        wait_cpu_idle(target.pid)
        cpu = target.cpu() - cpu0
        dropped = udp_drops(target.mcast_port) + softnet_drops() - drops0
        if repeat:
            received = res["sent"] - dropped
        else:
            received = sum(1 for serial in target.query_json("m") if serial.startswith(prefix))
        if res["achieved_rate"] < 0.9 * rate:
            row.notes.append("sender reached only %.0f/s of %d/s offered"
                             % (res["achieved_rate"], rate))
        return 1e6 * cpu / max(received, 1), 100.0 * (res["sent"] - received) / max(res["sent"], 1)

    # 1 and 2 ------------------------------------------------------------------------------------
    def status_scenarios(self) -> None:
        R = self.report
        d = 3.0 if not self.quick else 1.0
        levels = (1, 4, 16)
        rows: Dict[int, Dict[str, Row]] = {}
        for conc in levels:
            rows[conc] = {
                "rate": R.row("1", "status one-shot, %d sender(s): updates/s" % conc, "/s",
                              "≥ 20,000" if conc == 4 else "", (lambda v: v >= 20000)
                              if conc == 4 else None, "{:,.0f}"),
                "p50": R.row("1", "  latency p50 (connect..\\x04..close)", "ms", "", None,
                             "{:.3f}"),
                "p99": R.row("1", "  latency p99", "ms", "≤ 1 ms" if conc == 4 else "",
                             (lambda v: v <= 1.0) if conc == 4 else None, "{:.3f}"),
                "cpu": R.row("1", "  DSM CPU (of one core)", "%", "", None, "{:.0f}"),
                "us": R.row("1", "  DSM CPU per update (ceiling = 1e6 / this)", "µs", "", None,
                            "{:.0f}"),
                "gen": R.row("1", "  load generators' CPU (sum, of one core)", "%", "", None,
                             "{:.0f}"),
            }
        pipe_rate = R.row("2", "status pipelined, 200 per connection, 2 senders: updates/s", "/s",
                          "≥ 150,000", lambda v: v >= 150000, "{:,.0f}")
        pipe_cpu = R.row("2", "  DSM CPU (of one core)", "%", "", None, "{:.0f}")
        pipe_us = R.row("2", "  DSM CPU per update", "µs", "", None, "{:.1f}")
        pipe_gen = R.row("2", "  load generators' CPU (sum, of one core)", "%", "", None, "{:.0f}")
        all_rows = [r for lv in rows.values() for r in lv.values()] + [pipe_rate, pipe_cpu]
        dsm = self.dsm("--history", "1000")
        try:
            for conc in levels:
                for rep in range(self.reps):
                    dsm.wipe()
                    per_sender = int(min(100000, 40000 * d / conc + 1000))
                    start_at = time.monotonic() + 1.0 + 0.05 * conc
                    args = [dict(mode="status_oneshot", port=dsm.status_port,
                                 prefix="S1c%dr%ds%d" % (conc, rep, j), per_serial=100,
                                 count=per_sender, duration=d, start_at=start_at)
                            for j in range(conc)]
                    cpu0 = dsm.cpu()
                    results = run_loadgens(args, timeout=60 + 4 * d)
                    cpu1 = dsm.cpu()
                    acked = sum(r["acked"] for r in results)
                    elapsed = max(r["elapsed"] for r in results)
                    lat = [v for r in results for v in r["latencies_us"]]
                    row = rows[conc]
                    row["rate"].add(acked / elapsed)
                    row["p50"].add(percentile(lat, 50) / 1000)
                    row["p99"].add(percentile(lat, 99) / 1000)
                    row["cpu"].add(100 * (cpu1 - cpu0) / elapsed)
                    row["us"].add(1e6 * (cpu1 - cpu0) / max(acked, 1))
                    row["gen"].add(100 * sum(r["cpu"] for r in results) / elapsed)
                    for r in results:
                        if r["error"]:
                            row["rate"].fail_check(r["error"])
                        if r["acked"] >= per_sender:
                            row["rate"].notes.append("a sender hit its count bound (%d)"
                                                     % per_sender)
                    # Every acknowledged status must be in `s`, in order, nothing else.
                    s = dsm.query_json("s")
                    expected: Dict[str, List[str]] = {}
                    for a, r in zip(args, results):
                        for i in range(r["acked"]):
                            expected.setdefault("%s-%d" % (a["prefix"], i // 100), []).append(
                                "%07d" % i)
                    got = {k: [e["status"] for e in v] for k, v in s.items()}
                    if got != expected:
                        missing = sum(len(v) for v in expected.values()) - sum(
                            len(set(v) & set(got.get(k, []))) for k, v in expected.items())
                        row["rate"].fail_check("s differs from the acknowledged statuses "
                                               "(%d acknowledged missing, %d serials in s, "
                                               "%d expected)" % (missing, len(got), len(expected)))
                    log("1: %d sender(s) run %d: %d acked, %.0f/s, p99 %.2f ms"
                        % (conc, rep + 1, acked, acked / elapsed, percentile(lat, 99) / 1000))
            count = 40000 if self.quick else 150000
            for rep in range(self.reps):
                dsm.wipe()
                start_at = time.monotonic() + 0.5
                args = [dict(mode="status_pipelined", port=dsm.status_port,
                             prefix="S2r%dc%d" % (rep, c), serials=1000, count=count,
                             duration=15.0, window=4000, batch=200, start_at=start_at)
                        for c in range(2)]
                cpu0 = dsm.cpu()
                results = run_loadgens(args, timeout=60)
                cpu1 = dsm.cpu()
                acked = sum(r["acked"] for r in results)
                elapsed = max(r["elapsed"] for r in results)
                pipe_rate.add(acked / elapsed)
                pipe_cpu.add(100 * (cpu1 - cpu0) / elapsed)
                pipe_us.add(1e6 * (cpu1 - cpu0) / max(acked, 1))
                pipe_gen.add(100 * sum(r["cpu"] for r in results) / elapsed)
                for r in results:
                    if r["error"] or r["error_replies"] or r["acked"] != r["sent"]:
                        pipe_rate.fail_check("sent %d, acked %d, error replies %d, %s"
                                             % (r["sent"], r["acked"], r["error_replies"],
                                                r["error"]))
                s = dsm.query_json("s")
                bad = 0
                for a, r in zip(args, results):
                    for k in range(1000):
                        want = ["%07d" % i for i in range(k, r["sent"], 1000)]
                        got = [e["status"] for e in s.get("%s-%d" % (a["prefix"], k), [])]
                        if got != want:
                            bad += 1
                if bad or len(s) != 2000:
                    pipe_rate.fail_check("%d serial(s) in s differ from what was acknowledged "
                                         "(%d serials in s)" % (bad, len(s)))
                log("2: run %d: %d acked in %.2f s = %.0f/s" % (rep + 1, acked, elapsed,
                                                               acked / elapsed))
        finally:
            self.finish(dsm, all_rows)

    # 3 ------------------------------------------------------------------------------------------
    def announcement_scenario(self) -> None:
        R = self.report
        d = 3.0 if not self.quick else 1.0
        ndrives = 1000
        rows = {}
        for rate in (10000, 20000, 50000):
            target, ok = (("≤ 1% lost", lambda v: v <= 1.0) if rate == 50000
                          else ("no loss", lambda v: v == 0))
            rows[rate] = {
                "achieved": R.row("3", "announce %d drives at %dk/s offered: sent/s"
                                  % (ndrives, rate // 1000), "/s", "", None, "{:,.0f}"),
                "lost": R.row("3", "  lost (sent - counted by DSM)", "%", target, ok, "{:.2f}"),
                "sdrop": R.row("3", "  of which: DSM socket buffer full (/proc/net/udp)", "%", "",
                               None, "{:.2f}"),
                "bdrop": R.row("3", "  of which: kernel input backlog full (softnet_stat)", "%",
                               "", None, "{:.2f}"),
                "cpu": R.row("3", "  DSM CPU (of one core, while sending)", "%", "", None,
                             "{:.0f}"),
                "us": R.row("3", "  DSM CPU per datagram counted (till drained)", "µs", "",
                            None, "{:.1f}"),
            }
        all_rows = [r for lv in rows.values() for r in lv.values()]
        dsm = self.dsm()
        c0: Optional[int] = None
        try:
            for rate, row in rows.items():
                for rep in range(self.reps):
                    dsm.wipe()
                    if c0 is None:
                        c0 = dsm.wait_stable("announcements")
                    k0, n0 = udp_drops(dsm.mcast_port), softnet_drops()
                    cpu0 = dsm.cpu()
                    run = "r%dk%d" % (rate // 1000, rep)
                    res = run_loadgens([dict(mode="announce", port=dsm.mcast_port, group=GROUP,
                                             drives=ndrives, rate=rate, duration=d,
                                             count=int(rate * d), change_every=20,
                                             prefix="BENCH3", run=run)], timeout=60 + d)[0]
                    cpu1 = dsm.cpu()
                    c1 = dsm.wait_stable("announcements", expect=c0 + res["sent"])
                    cpu2 = dsm.cpu()
                    sdrop = udp_drops(dsm.mcast_port) - k0
                    bdrop = softnet_drops() - n0
                    kdrop = sdrop + bdrop
                    counted = c1 - c0
                    sent = res["sent"]
                    lost = sent - counted
                    row["achieved"].add(res["achieved_rate"])
                    row["lost"].add(100.0 * lost / sent)
                    row["sdrop"].add(100.0 * sdrop / sent)
                    row["bdrop"].add(100.0 * bdrop / sent)
                    row["cpu"].add(100 * (cpu1 - cpu0) / res["elapsed"])
                    # The wait for the counter includes a few idle seconds (~0.1 % CPU): negligible.
                    row["us"].add(1e6 * (cpu2 - cpu0) / max(c1 - c0, 1))
                    if res["achieved_rate"] < 0.95 * rate:
                        row["achieved"].notes.append("sender reached only %.0f/s of %d/s offered"
                                                     % (res["achieved_rate"], rate))
                    if res["send_errors"]:
                        row["achieved"].notes.append("%d sendto errors" % res["send_errors"])
                    if lost < 0:
                        row["lost"].fail_check("DSM counted %d datagrams but %d were sent"
                                               % (counted, sent))
                    if lost != kdrop:
                        row["lost"].notes.append(
                            "run %d: %d lost but the kernel counted %d drops (the rest went "
                            "missing elsewhere, or other traffic shared the backlog)"
                            % (rep + 1, lost, kdrop))
                    m = dsm.query_json("m")
                    want = res["last_variant"]
                    missing = [s for s in want if s not in m]
                    stale = [s for s in want if s in m and
                             (m[s].get("bench_run") != run or
                              m[s].get("bench_variant") != want[s])]
                    if missing or len(m) != ndrives:
                        row["lost"].fail_check("m has %d drives, %d of %d missing"
                                               % (len(m), len(missing), ndrives))
                    if stale and lost == 0:
                        row["lost"].fail_check("%d drives in m do not show their last "
                                               "announcement" % len(stale))
                    c0 = c1
                    log("3: %d/s run %d: sent %d (%.0f/s), DSM counted %d, lost %d, kernel drops: "
                        "socket %d, backlog %d" % (rate, rep + 1, sent, res["achieved_rate"],
                                                   counted, lost, sdrop, bdrop))
        finally:
            self.finish(dsm, all_rows)

    # 4, 5 and 7 (drives/statuses memory) ----------------------------------------------------------
    def query_scenarios(self) -> None:
        R = self.report
        repeat = 5 if self.quick else 20
        m1k = R.row("4", "m, 1,000 drives (one changed before each)", "ms", "", None, "{:.2f}")
        m1k_max = R.row("4", "  max", "ms", "", None, "{:.2f}")
        m1k_b = R.row("4", "  bytes", "B", "", None, "{:,.0f}")
        m10k = R.row("4", "m, 10,000 drives (one changed before each)", "ms", "≤ 20 ms",
                     lambda v: v <= 20, "{:.2f}")
        m10k_max = R.row("4", "  max", "ms", "", None, "{:.2f}")
        m10k_b = R.row("4", "  bytes", "B", "", None, "{:,.0f}")
        m10kc = R.row("4", "m, 10,000 drives, nothing changed (cached)", "ms", "", None, "{:.2f}")
        s1k = R.row("4", "s, 1,000 serials x 20 (one status added before each)", "ms", "≤ 4 ms",
                    lambda v: v <= 4, "{:.2f}")
        s1k_max = R.row("4", "  max", "ms", "", None, "{:.2f}")
        s1k_b = R.row("4", "  bytes", "B", "", None, "{:,.0f}")
        s1kc = R.row("4", "s, 1,000 x 20, nothing changed (cached)", "ms", "", None, "{:.2f}")
        iso = {}
        for op in ("status", "m", "s"):
            iso[op] = (
                R.row("5", "isolation: %s p99, quiet DSM" % op, "ms", "", None, "{:.2f}"),
                R.row("5", "  %s p99 with 1,000 idle conns + m hog" % op, "ms", "≤ 5 ms",
                      lambda v: v <= 5, "{:.2f}"),
            )
        iso_rss = R.row("5", "  DSM RSS growth while the hog waits", "MB", "", None, "{:.1f}")
        mem = R.row("7", "RSS with 10,000 drives + 1,000 x 20 statuses", "MB", "≤ 60 MB",
                    lambda v: v <= 60, "{:.1f}")
        tree_n = R.row("7", "  tree objects then (/drives is a view: not counted)", "", "",
                       None, "{:,.0f}")
        per_drive = R.row("7", "  RSS per further drive (10,000 more)", "KB", "≤ 2 KB",
                          lambda v: v <= 2, "{:.2f}")
        all_rows = [m1k, m10k, s1k, iso["status"][0], mem]
        dsm = self.dsm("--drive-lifetime", "3600", *self.many_conns)
        if self.many_conns:
            iso["status"][1].notes.append("run with %s (1,000 idle connections + probes pass the "
                                          "default limit of 1000)" % " ".join(self.many_conns))
        try:
            heard = [0]

            def populate(n: int) -> None:
                res = run_loadgens([dict(mode="announce", port=dsm.mcast_port, group=GROUP,
                                         drives=n, rate=4000, duration=30.0, count=n,
                                         change_every=10 ** 9, prefix="BENCH4", run="q")])[0]
                counted = dsm.wait_stable("announcements", expect=heard[0] + res["sent"])
                heard[0] = counted
                m = dsm.query_json("m")
                if len(m) != n:
                    raise BenchError("populate: m has %d drives, wanted %d (DSM counted %d "
                                     "announcements, %d sent)" % (len(m), n, counted, res["sent"]))

            def timing(row: Row, row_max: Optional[Row], row_b: Optional[Row], **args: Any) -> None:
                res = run_loadgens([dict(mode="query_timing", target=dsm.query_port,
                                         repeat=repeat, duration=120.0, **args)], timeout=240)[0]
                ms = [t / 1000 for t in res["times_us"]]
                for v in ms:
                    row.add(v)
                if row_max is not None:
                    row_max.add(max(ms))
                if row_b is not None:
                    row_b.add(statistics.median(res["sizes"]))
                if res["error_count"]:
                    row.fail_check("%d bad replies: %s" % (res["error_count"], res["errors"][:3]))
                log("4: %s: median %.2f ms, max %.2f ms, %d bytes"
                    % (row.measure, statistics.median(ms), max(ms), res["sizes"][-1]))

            populate(1000)
            common = dict(group=GROUP, mcast_port=dsm.mcast_port, prefix="BENCH4", run="q")
            timing(m1k, m1k_max, m1k_b, letter="m", change="announce", drives=1000,
                   expect_keys=1000, **common)
            populate(10000)
            timing(m10k, m10k_max, m10k_b, letter="m", change="announce", drives=10000,
                   expect_keys=10000, **common)
            timing(m10kc, None, None, letter="m", change="none", expect_keys=10000)
            res = run_loadgens([dict(mode="status_pipelined", port=dsm.status_port,
                                     prefix="Q4", serials=1000, count=20000, duration=30.0,
                                     window=4000, batch=200)])[0]
            if res["acked"] != 20000 or res["error_replies"]:
                raise BenchError("populating statuses: %s" % res)
            timing(s1k, s1k_max, s1k_b, letter="s", change="status", status_port=dsm.status_port,
                   prefix="Q4", serials=1000, history=20, expect_keys=1000)
            timing(s1kc, None, None, letter="s", change="none", expect_keys=1000)

            # 7: memory with 10,000 drives and 1,000 x 20 statuses.
            tree_objects = int(dsm.get_value("/dsm/tree_objects") or 0)
            tree_n.add(tree_objects)
            mem.add(dsm.rss())
            log("7: RSS %.1f MB with 10,000 drives, 1,000 x 20 statuses, %d tree objects"
                % (dsm.rss(), tree_objects))

            # 5: isolation.
            d = 2.0 if self.quick else 4.0
            for rep in range(self.reps):
                probe = dict(mode="probe", query_port=dsm.query_port,
                             status_port=dsm.status_port, duration=d, count=100000,
                             drives=10000, pause=0.002)
                base = run_loadgens([dict(probe, prefix="P5q%d" % rep)], timeout=60 + d)[0]
                idle = Loadgen(dict(mode="idle", per_target=200, duration=d + 3.0,
                                    targets=[dsm.query_port, dsm.status_port, dsm.statserv_port,
                                             dsm.query_socket, dsm.statserv_socket]))
                hog = Loadgen(dict(mode="hog", target=dsm.query_port, count=10 ** 6,
                                   duration=d + 3.0))
                idle_ready = idle.ready()["ready"]
                hog_sent = hog.ready()["ready"]
                time.sleep(0.3)
                rss0 = dsm.rss()
                loaded = run_loadgens([dict(probe, prefix="P5l%d" % rep)], timeout=60 + d)[0]
                iso_rss.add(dsm.rss() - rss0)
                idle_res = idle.result(60)
                hog.result(60)
                for op, (qrow, lrow) in iso.items():
                    qrow.add(percentile(base["latencies_us"][op], 99) / 1000)
                    lrow.add(percentile(loaded["latencies_us"][op], 99) / 1000)
                for name, res in (("quiet", base), ("loaded", loaded)):
                    if res["error_count"]:
                        iso["status"][1].fail_check("%s probe: %d bad replies: %s"
                                                    % (name, res["error_count"], res["errors"][:3]))
                if idle_ready != 1000 or idle_res["closed_by_dsm"] or idle_res["unexpected_data"]:
                    iso["status"][1].fail_check("idle connections: %s" % idle_res)
                if hog_sent < 1000:
                    iso["status"][1].notes.append("the hog pipelined only %d m's" % hog_sent)
                log("5: run %d: p99 quiet m %.2f s %.2f status %.2f; loaded m %.2f s %.2f "
                    "status %.2f ms (hog sent %d m's, %d idle)"
                    % ((rep + 1,) + tuple(percentile(r["latencies_us"][op], 99) / 1000
                                          for r in (base, loaded) for op in ("m", "s", "status"))
                       + (hog_sent, idle_ready)))

            # 7: what each further drive costs (last: scenario 5 wants 10,000 drives in m).
            rss_before = dsm.rss()
            populate(20000)
            per_drive.add((dsm.rss() - rss_before) * 1024 / 10000)
            log("7: RSS %.1f MB with 20,000 drives (%.2f KB per further drive)"
                % (dsm.rss(), per_drive.values[-1]))
        finally:
            self.finish(dsm, all_rows)

    # 6 ------------------------------------------------------------------------------------------
    def statserv_scenario(self) -> None:
        """The DSM's Status Server, the floor (../shared/bench/statserv_floor.py) and Redis side by
        side: the same load generator against each, interleaved run by run."""
        R = self.report
        rtt = R.row("6", "Status Server GET/PUT one at a time: p50", "ms", "≤ 0.1 ms",
                    lambda v: v <= 0.1, "{:.3f}")
        rtt99 = R.row("6", "  p99", "ms", "", None, "{:.3f}")
        pipe = R.row("6", "Status Server GET/PUT pipelined, 1 conn: ops/s", "/s", "≥ 150,000",
                     lambda v: v >= 150000, "{:,.0f}")
        pipe_cpu = R.row("6", "  DSM CPU (of one core)", "%", "", None, "{:.0f}")
        pipe_op = R.row("6", "  DSM CPU per pipelined op", "µs", "", None, "{:.2f}")
        mon = R.row("6", "1,000 monitors: PUT until the last `@` line", "ms", "≤ 50 ms",
                    lambda v: v <= 50, "{:.1f}")
        mon50 = R.row("6", "  until the median monitor's `@` line", "ms", "", None, "{:.1f}")
        mon_put = R.row("6", "  until the PUT's own reply", "ms", "", None, "{:.1f}")
        count_rtt = 5000 if self.quick else 20000
        # CPU time is counted in 10 ms ticks: a million operations give the floor ~30 of them.
        count_pipe = 60000 if self.quick else 1000000
        dsm = self.dsm(*self.many_conns)
        if self.many_conns:
            mon.notes.append("run with %s (1,000 monitors + the writer pass the default limit "
                             "of 1000)" % " ".join(self.many_conns))
        others = []  # (label, port, proto, rows, cpu, stop)
        try:
            others = self._statserv_peers()
            for _ in range(self.reps):
                self._kv_bench(dsm.statserv_port, "statserv", rtt, rtt99, pipe, pipe_cpu,
                               count_rtt, count_pipe, dsm.cpu, pipe_op)
                for _, port, proto, rows, cpu, _ in others:
                    self._kv_bench(port, proto, rows[0], rows[1], rows[2], None, count_rtt,
                                   count_pipe, cpu, rows[3])
            self._statserv_ratios(rtt, pipe, pipe_op, others)
            for rep in range(self.reps):
                res = run_loadgens([dict(mode="monitors", port=dsm.statserv_port,
                                         name="/bench/mon%d" % rep, monitors=1000,
                                         timeout=10.0)], timeout=120)[0]
                if res["opened"] != 1000:
                    mon.fail_check("only %d of 1000 monitor connections opened (%s; loadgen "
                                   "fd limit %d)" % (res["opened"], res["connect_error"],
                                                     res["nofile"]))
                if res["notified"] != res["opened"] or res["bad_initial"] or \
                        res["unexpected_lines"] or res["closed_by_server"]:
                    mon.fail_check("%d of %d monitors notified; %d bad MONITOR replies, %d "
                                   "unexpected lines, %d closed by the DSM"
                                   % (res["notified"], res["opened"], res["bad_initial"],
                                      res["unexpected_lines"], res["closed_by_server"]))
                if res["times_us"]:
                    mon.add(res["times_us"][-1] / 1000)
                    mon50.add(percentile(res["times_us"], 50) / 1000)
                if res["put_reply_us"] is not None:
                    mon_put.add(res["put_reply_us"] / 1000)
                log("6: monitors run %d: %d notified, last after %.1f ms"
                    % (rep + 1, res["notified"], res["times_us"][-1] / 1000
                       if res["times_us"] else float("nan")))
        finally:
            for _, _, _, _, _, stop in others:
                stop()
            self.finish(dsm, [rtt, pipe, mon])

    def _statserv_peers(self) -> List[Tuple[str, int, str, List[Row], Callable[[], float],
                                            Callable[[], Any]]]:
        """The floor and Redis, started on free loopback ports, each with its rows; a row saying
        n/a for what is not installed."""
        R = self.report
        peers = []
        if os.path.exists(STATSERV_FLOOR):
            rows = [R.row("6", "floor GET/PUT one at a time: p50", "ms", "", None, "{:.3f}"),
                    R.row("6", "  p99", "ms", "", None, "{:.3f}"),
                    R.row("6", "floor GET/PUT pipelined, 1 conn: ops/s", "/s", "", None,
                          "{:,.0f}"),
                    R.row("6", "  floor CPU per pipelined op", "µs", "", None, "{:.2f}")]
            base = tempfile.mkdtemp(prefix="dsmbench-floor")
            _temp_dirs.append(base)
            proc = subprocess.Popen([sys.executable, STATSERV_FLOOR, "0",
                                     os.path.join(base, "journal")], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            _children.append(proc)
            line = proc.stdout.readline() if proc.stdout is not None else b""
            if not line.strip().isdigit():
                raise BenchError("the Status Server floor did not start")
            peers.append(("floor", int(line), "statserv", rows,
                          lambda pid=proc.pid: cpu_seconds(pid),
                          lambda proc=proc: stop_process(proc)))
        else:
            R.row("6", "floor", "", "", None).text = "n/a (%s not found)" % STATSERV_FLOOR
        server = shutil.which("redis-server")
        if server:
            rows = [R.row("6", "Redis GET/SET one at a time: p50", "ms", "", None, "{:.3f}"),
                    R.row("6", "  p99", "ms", "", None, "{:.3f}"),
                    R.row("6", "Redis GET/SET pipelined, 1 conn: ops/s", "/s", "", None,
                          "{:,.0f}"),
                    R.row("6", "  Redis CPU per pipelined op", "µs", "", None, "{:.2f}")]
            port = free_tcp_port()
            base = tempfile.mkdtemp(prefix="dsmbench-redis")
            _temp_dirs.append(base)
            proc = subprocess.Popen([server, "--port", str(port), "--bind", LOOPBACK, "--save",
                                     "", "--appendonly", "no", "--dir", base],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            _children.append(proc)
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((LOOPBACK, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        stop_process(proc)
                        raise BenchError("redis-server did not start") from None
                    time.sleep(0.05)
            peers.append(("Redis", port, "redis", rows, lambda pid=proc.pid: cpu_seconds(pid),
                          lambda proc=proc: stop_process(proc)))
        else:
            R.row("6", "Redis, same load generator", "", "", None).text = \
                "n/a (redis-server not installed)"
        return peers

    def _statserv_ratios(self, rtt: Row, pipe: Row, pipe_op: Row, peers: Sequence[Any]) -> None:
        """DSM/floor (with the issue-21 targets) and DSM/Redis ratios of the medians."""
        R = self.report
        for label, _, _, rows, _, _ in peers:
            is_floor = label == "floor"
            pairs = [("p50", rtt, rows[0], "≤ 1.3 x" if is_floor else "",
                      (lambda v: v <= 1.3) if is_floor else None),
                     ("pipelined ops/s", pipe, rows[2], "", None),
                     ("CPU per pipelined op", pipe_op, rows[3], "≤ 3 x" if is_floor else "",
                      (lambda v: v <= 3.0) if is_floor else None)]
            for what, mine, theirs, target, ok in pairs:
                row = R.row("6", "  DSM/%s %s ratio" % (label, what), "x", target, ok, "{:.2f}")
                if mine.values and theirs.values and statistics.median(theirs.values) > 0:
                    row.add(statistics.median(mine.values) / statistics.median(theirs.values))

    def _kv_bench(self, port: int, proto: str, rtt: Row, rtt99: Row, pipe: Row,
                  pipe_cpu: Optional[Row], count_rtt: int, count_pipe: int,
                  cpu: Callable[[], float], pipe_op: Optional[Row] = None) -> None:
        """One run of each load (one at a time, then pipelined) against `port`."""
        key = "/bench/kv" if proto == "statserv" else "bench:kv"
        res = run_loadgens([dict(mode="statserv_rtt", proto=proto, port=port, key=key,
                                 count=count_rtt, duration=30.0)], timeout=90)[0]
        lat = res["latencies_us"]
        rtt.add(percentile(lat, 50) / 1000)
        rtt99.add(percentile(lat, 99) / 1000)
        if res["errors"] or len(lat) != count_rtt:
            rtt.fail_check("%d wrong replies, %d of %d done" % (res["errors"], len(lat),
                                                                count_rtt))
        cpu0 = cpu()
        res = run_loadgens([dict(mode="statserv_pipelined", proto=proto, port=port, key=key,
                                 count=count_pipe, duration=60.0, window=5000,
                                 batch=500)], timeout=150)[0]
        cpu1 = cpu()
        pipe.add(res["answered"] / res["elapsed"])
        if pipe_cpu is not None:
            pipe_cpu.add(100 * (cpu1 - cpu0) / res["elapsed"])
        if pipe_op is not None:
            pipe_op.add(1e6 * (cpu1 - cpu0) / max(res["answered"], 1))
        if res["errors"] or res["answered"] != count_pipe:
            pipe.fail_check("%d wrong replies, %d of %d answered"
                            % (res["errors"], res["answered"], count_pipe))
        log("6 (%s, port %d): p50 %.3f ms, pipelined %.0f ops/s, %.2f µs CPU per op"
            % (proto, port, percentile(lat, 50) / 1000, res["answered"] / res["elapsed"],
               1e6 * (cpu1 - cpu0) / max(res["answered"], 1)))

    # 7 (tree objects) ------------------------------------------------------------------------------
    def tree_memory_scenario(self) -> None:
        R = self.report
        start = R.row("7", "RSS at start (every fresh DSM the bench started)", "MB", "", None, "{:.1f}")
        tree = R.row("7", "RSS with 100,000 tree objects (TOUCH+PUT)", "MB", "≤ 200 MB",
                     lambda v: v <= 200, "{:.1f}")
        fill = R.row("7", "  TOUCH+PUT pipelined: objects/s", "/s", "", None, "{:,.0f}")
        for _ in range(self.reps):
            dsm = self.dsm()
            try:
                res = run_loadgens([dict(mode="tree_fill", port=dsm.statserv_port,
                                         base="/bench/tree", count=100000, duration=120.0)],
                                   timeout=180)[0]
                if res["errors"] or res["objects"] != 100000 or res["answered"] != 200000:
                    tree.fail_check("fill: %s" % res)
                n = dsm.wait_stable("/dsm/tree_objects")
                if n < 100000:
                    tree.fail_check("/dsm/tree_objects is %d" % n)
                probe = dsm.get_value("/bench/tree/d0099/o0999")
                if probe != "v99999":
                    tree.fail_check("GET of the last object: %r" % probe)
                tree.add(dsm.rss())
                fill.add(res["objects"] / res["elapsed"])
                log("7: RSS %.1f MB with %d tree objects" % (dsm.rss(), n))
            finally:
                self.finish(dsm, [tree])
        for v in self.start_rss:
            start.add(v)

    # 8 ------------------------------------------------------------------------------------------
    def startup_scenario(self) -> None:
        R = self.report
        row = R.row("8", "start-up: spawn until it answers m", "s", "≤ 0.3 s",
                    lambda v: v <= 0.3, "{:.3f}")
        for _ in range(self.reps):
            dsm = self.dsm()
            row.add(dsm.startup_s)
            self.finish(dsm, [row])
        restore = R.row("8", "restore 100,000 objects from --state-dir", "s", "≤ 2 s",
                        lambda v: v <= 2, "{:.2f}")
        if "--fsync" not in self.help_text:
            restore.text = "n/a (no restore yet)"
            return
        for _ in range(self.reps):
            state = tempfile.mkdtemp(prefix="dsmbench-state")
            _temp_dirs.append(state)
            dsm = self.dsm(state_dir=state)
            try:
                res = run_loadgens([dict(mode="tree_fill", port=dsm.statserv_port,
                                         base="/bench/tree", count=100000, duration=120.0)],
                                   timeout=180)[0]
                if res["errors"]:
                    restore.fail_check("fill: %s" % res)
                dsm.statserv(["SAVE"], timeout=60)
            finally:
                self.finish(dsm, [restore])
            t0 = time.monotonic()
            dsm2 = self.dsm(state_dir=state)
            try:
                deadline = t0 + 30
                while dsm2.get_value("/bench/tree/d0099/o0999") != "v99999":
                    if time.monotonic() > deadline:
                        restore.fail_check("the last object was not restored within 30 s")
                        break
                    time.sleep(0.005)
                else:
                    restore.add(time.monotonic() - t0)
            finally:
                self.finish(dsm2, [restore])


SCENARIOS = {
    "9": "floor_scenario",
    "8": "startup_scenario",
    "1": "status_scenarios",  # 1 and 2 share a DSM
    "3": "announcement_scenario",
    "4": "query_scenarios",  # 4, 5 and the drives part of 7 share a populated DSM
    "6": "statserv_scenario",
    "7": "tree_memory_scenario",
}
ALIASES = {"2": "1", "5": "4"}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run per figure, short loads")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers")
    opts = parser.parse_args(argv)
    wanted = {ALIASES.get(s.strip(), s.strip()) for s in opts.only.split(",") if s.strip()}

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    report = Report()
    bench = Bench(opts.quick, report)
    t0 = time.monotonic()
    noise_before = host_noise()
    noise_after = noise_before
    interrupted = False
    try:
        for number, method in SCENARIOS.items():
            if wanted and number not in wanted:
                continue
            log("scenario %s (%s)" % (number, method))
            try:
                getattr(bench, method)()
            except BenchError as exc:
                report.scenario_errors.append("%s: %s" % (number, exc))
                log("scenario %s failed: %s" % (number, exc))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping every process the bench started")
    finally:
        try:
            noise_after = host_noise()
        except Exception:
            pass
        cleanup()
    elapsed = time.monotonic() - t0
    if opts.json:
        print(json.dumps(dict(quick=opts.quick, runs_per_figure=bench.reps,
                              elapsed_s=round(elapsed, 1), interrupted=interrupted,
                              host=dict(cpus=os.cpu_count(), python=sys.version.split()[0],
                                        before=noise_before, after=noise_after),
                              rows=[r.summary() for r in report.rows],
                              scenario_errors=report.scenario_errors), indent=1))
    else:
        print("DSM benchmark (%s, %d run(s) per figure, %.0f s, %d CPUs, Python %s)"
              % ("quick" if opts.quick else "full", bench.reps, elapsed, os.cpu_count() or 0,
                 sys.version.split()[0]))
        print("host before: load %(loadavg_1min).2f, %(other_dsm_processes)d DSM(s) not ours"
              % noise_before + "; after: load %(loadavg_1min).2f, %(other_dsm_processes)d DSM(s) "
              "not ours" % noise_after)
        print(report.table())
    if interrupted:
        return 130
    return 1 if report.failed_checks() else 0


if __name__ == "__main__":
    sys.exit(main())
