#!/usr/bin/env python3
"""The live page in a real browser: what a viewer costs at 10,000 drives, today's page against the
page of commit 295a5b3 (before the change feed), in the same run.

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r bench/requirements-browser.txt
    .venv-bench/bin/python bench/page_bench.py            # both pages, one DSM and a lab of 5
    .venv-bench/bin/python bench/page_bench.py --quick    # shorter windows, smaller data
    .venv-bench/bin/python bench/page_bench.py --json     # figures as JSON on stdout

Playwright drives Debian's Chromium (/usr/bin/chromium, executable_path): nothing downloads a
browser. Every DSM runs on free loopback ports with `--interfaces lo`, a test multicast group and
private temporary dirs, and is stopped by its pid at the end (also on an error or Ctrl-C). The
browser reaches each DSM through a byte-counting proxy (`CountingProxy`, a thread with its own
asyncio loop), so the bytes are what crossed the wire, gzip or not; in the lab, the lab file names
the proxies' ports as the DSMs' HTTP ports, so the page's lab view goes through them too.

Per page (old, new) and per setup (one DSM with DRIVES x STATUSES; a lab of LAB_DSMS x LAB_DRIVES):
- first rows: from navigation start until the first drive rows are in the DOM (MutationObserver)
  and the next frame is painted;
- idle bytes/min: what the viewer pulls in a window with nothing changing, per minute;
- 10 changes/s bytes/min: the same while a status arrives 10 times a second (random drives);
- latency: a status sent to a drive in view until its text is in that row and painted (median);
- main thread: busy % (CDP Performance.getMetrics TaskDuration over the window) and the longest
  task (PerformanceObserver "longtask"), in both windows;
- DOM: elements in the document; the DSM's CPU seconds per minute in each window (/proc).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import io
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OLD_COMMIT = "295a5b3"  # main before issue 20: the polling page
CHROMIUM = "/usr/bin/chromium"
LOOPBACK = "127.0.0.1"
GROUP = "239.1.2.99"
END = b"\x04"
FORBIDDEN_PORTS = {2203, 2204, 3110, 3111, 8123}
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: List[subprocess.Popen] = []
_temp_dirs: List[str] = []


def log(message: str) -> None:
    print("[page-bench %s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    while True:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cleanup() -> None:
    for proc in reversed(_children):
        try:
            stop_process(proc)
        except Exception:
            pass
    _children.clear()
    for path in _temp_dirs:
        shutil.rmtree(path, ignore_errors=True)


def old_code(commit: str = OLD_COMMIT) -> str:
    """The DriveStateMonitor folder of `commit`, unpacked into a temporary dir."""
    base = tempfile.mkdtemp(prefix="dsm-old-page")
    _temp_dirs.append(base)
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "DriveStateMonitor"],
                             stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(base)
    return os.path.join(base, "DriveStateMonitor")


class Dsm:
    """One DSM of `code` (a DriveStateMonitor folder) on free loopback ports, private dirs."""

    def __init__(self, code: str, http_port: int, query_port: int = 0,
                 lab: Optional[str] = None) -> None:
        self.base = tempfile.mkdtemp(prefix="dsm-page-bench")
        _temp_dirs.append(self.base)
        self.run_dir = os.path.join(self.base, "run")
        self.mcast_port = free_port(socket.SOCK_DGRAM)
        self.http_port = http_port
        args = [sys.executable, os.path.join(code, "DriveStateMonitor.py"), "--interfaces", "lo",
                "--query-port", str(query_port), "--status-port", "0", "--statserv-port", "0",
                "--http-port", str(http_port), "--mcast-group", GROUP,
                "--mcast-port", str(self.mcast_port), "--run-dir", self.run_dir,
                "--log-dir", self.base, "--state-dir", os.path.join(self.base, "state"),
                # Nothing expires during the bench: an idle viewer sees no change at all.
                "--drive-lifetime", "3600"]
        if lab:
            args += ["--lab", lab]
        self.log = open(os.path.join(self.base, "dsm.log"), "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _children.append(self.proc)
        self.info = self._wait_ready()

    def _wait_ready(self) -> Dict[str, Any]:
        deadline = time.monotonic() + 20
        path = os.path.join(self.run_dir, "dsm.json")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("DSM exited with %s" % self.proc.returncode)
            try:
                with open(path) as f:
                    info = json.load(f)
                if info.get("pid") == self.proc.pid:
                    return info
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError("DSM did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def count(self, letter: str) -> int:
        with socket.create_connection((LOOPBACK, self.info["query_port"]), timeout=60) as sock:
            sock.sendall(letter.encode())
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        reply = b"".join(chunks)
        return len(json.loads(reply[:-1]))

    def announce_all(self, serials: List[str]) -> None:
        """Every serial heard (sent again where a burst lost some)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            for _ in range(10):
                for start in range(0, len(serials), 500):
                    for serial in serials[start:start + 500]:
                        sock.sendto(announcement(serial), (GROUP, self.mcast_port))
                    time.sleep(0.01)  # bounded bursts: the receive buffer keeps up
                if self.count("m") >= len(serials):
                    return
        raise RuntimeError("the DSM did not hear every drive")

    def statuses(self, messages: List[bytes], batch: int = 500) -> None:
        """Newline-terminated statuses, `batch` per connection, every acknowledgement read."""
        for start in range(0, len(messages), batch):
            part = messages[start:start + batch]
            with socket.create_connection((LOOPBACK, self.info["status_port"]), timeout=60) as s:
                s.sendall(b"".join(message + b"\n" for message in part))
                got = b""
                while got.count(END) < len(part):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    got += chunk
            if got.count(END) != len(part):
                raise RuntimeError("statuses not all acknowledged")

    def status(self, serial: str, value: str) -> None:
        self.statuses([status_message(serial, value, "2026-12-07 21:00:00")])

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def announcement(serial: str) -> bytes:
    return json.dumps({
        "serial_number": serial, "world_wide_name": "5 000c50 " + serial,
        "manufacturer": "Seagate", "model": "ST4000NK0001", "firmware_version": "3.1.7",
        "protocol_version": "3.0.6", "port": 8123, "tlsPort": 8443,
        "network_interfaces": [{"name": "eth0", "mac_addr": "00:c9:58:01:aa:10",
                                "ipv4_addr": "10.20.30.41"}]}).encode()


def status_message(serial: str, status: str, stamp: str) -> bytes:
    return json.dumps({"serial_number": serial, "time_stamp": stamp, "status": status}).encode()


def fill(dsm: Dsm, prefix: str, drives: int, statuses: int) -> List[str]:
    serials = ["%s%05d" % (prefix, number) for number in range(drives)]
    dsm.announce_all(serials)
    # Short codes, as the lab's test scripts send: 001, 002, 010..., one per minute.
    messages = [status_message(serial, "%03d" % (round_ * 7 % 400),
                               "2026-12-07 %02d:%02d:00" % (round_ // 60, round_ % 60))
                for round_ in range(statuses) for serial in serials]
    dsm.statuses(messages)
    return serials


# --- the byte-counting proxy ------------------------------------------------------------------
class CountingProxy:
    """TCP proxies (one listening port per upstream) in one thread with its own asyncio loop;
    counts the bytes sent to the browser and from it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.down = 0  # upstream -> browser
        self.up = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def add(self, listen_port: int, upstream_port: int) -> None:
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(lambda r, w: self._serve(r, w, upstream_port), LOOPBACK,
                                 listen_port), self.loop)
        future.result(10)

    async def _serve(self, reader, writer, upstream_port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, upstream_port)
        except OSError:
            writer.close()
            return

        async def pump(source, sink, downstream: bool) -> None:
            try:
                while True:
                    data = await source.read(65536)
                    if not data:
                        break
                    if downstream:
                        self.down += len(data)
                    else:
                        self.up += len(data)
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                try:
                    sink.close()
                except OSError:
                    pass

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    def reset(self) -> Tuple[int, int]:
        counts = (self.down, self.up)
        self.down = self.up = 0
        return counts

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


# --- the page ---------------------------------------------------------------------------------
# Injected before the page's own scripts: when rows first appear, long tasks, and a watch for one
# row's text (the latency probe). Both pages name their row bodies #drive-rows / #lab-rows.
PROBE = """
window.__bench = {firstRows: null, longest: 0, longSum: 0, watch: null, seenAt: null};
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    window.__bench.longest = Math.max(window.__bench.longest, entry.duration);
    window.__bench.longSum += entry.duration;
  }
}).observe({entryTypes: ["longtask"]});
const __watchRows = () => {
  const observer = new MutationObserver(() => {
    const body = document.getElementById(window.__benchBody || "drive-rows");
    if (!body) return;
    // "On screen": the rows are in the DOM, then the next frame is laid out and painted
    // (a task queued from requestAnimationFrame runs after that paint).
    const afterPaint = (record) => requestAnimationFrame(() => setTimeout(record, 0));
    if (!window.__bench.rowsSeen && body.querySelector("tr[data-serial]")) {
      window.__bench.rowsSeen = true;
      afterPaint(() => { window.__bench.firstRows = performance.now(); });
    }
    const watch = window.__bench.watch;
    if (watch && !watch.found) {
      const row = body.querySelector('tr[data-serial="' + watch.serial + '"]' +
                                     (watch.host ? '[data-host="' + watch.host + '"]' : ""));
      if (row && row.textContent.includes(watch.text)) {
        watch.found = true;
        window.__bench.inDomAt = Date.now();
        afterPaint(() => { window.__bench.seenAt = Date.now(); });
      }
    }
  });
  observer.observe(document, {childList: true, subtree: true,
                                              characterData: true});
};
__watchRows();
"""


def main_thread(cdp) -> float:
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["TaskDuration"]


def measure_window(page, cdp, proxy: CountingProxy, dsms: List[Dsm], seconds: float,
                   change: Optional[Any]) -> Dict[str, float]:
    """One window: bytes, main thread, DSM CPU; `change()` called 10 times a second if given."""
    page.evaluate("window.__bench.longest = 0; window.__bench.longSum = 0;")
    proxy.reset()
    cpu0 = sum(cpu_seconds(dsm.pid) for dsm in dsms)
    task0 = main_thread(cdp)
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        if change is not None:
            change(sent)
            sent += 1
            next_at = start + sent / 10.0
            time.sleep(max(0.0, next_at - time.monotonic()))
        else:
            time.sleep(min(1.0, seconds - (time.monotonic() - start)))
    elapsed = time.monotonic() - start
    task = main_thread(cdp) - task0
    down, up = proxy.reset()
    probe = page.evaluate("window.__bench")
    return {"bytes_per_min": (down + up) * 60.0 / elapsed, "busy_pct": 100.0 * task / elapsed,
            "longest_task_ms": probe["longest"],
            "dsm_cpu_s_per_min": (sum(cpu_seconds(dsm.pid) for dsm in dsms) - cpu0) * 60 / elapsed,
            "changes_per_s": sent / elapsed}


def latency(page, send, serial: str, host: Optional[str], samples: int) -> List[float]:
    """Seconds from sending a status to `serial` until its row shows the status's text."""
    values = []
    for _ in range(samples):
        text = "L%04d" % random.randrange(10000)
        page.evaluate("(w) => { window.__bench.seenAt = null; window.__bench.inDomAt = null;"
                      " window.__bench.watch = w; }",
                      {"serial": serial, "host": host, "text": text})
        sent_at = time.time()
        send(serial, text)
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline:
            # Painted; or at least in the DOM (a page too busy to paint reports that instead).
            seen = page.evaluate("window.__bench.seenAt || window.__bench.inDomAt")
            if seen:
                break
            time.sleep(0.05)
        values.append((seen / 1000.0 - sent_at) if seen else float("inf"))
        time.sleep(0.5)
    return values


def wait_page(page, expression: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError("timed out waiting for %s" % expression)


def run_page(browser, label: str, url: str, body_id: str, proxy: CountingProxy, dsms: List[Dsm],
             serials: List[Tuple[Dsm, str, Optional[str]]], window: float, samples: int,
             shot: Optional[str], view_lab: bool) -> Dict[str, Any]:
    """Opens `url` in a fresh 1366x768 page and measures it."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.add_init_script("window.__benchBody = %s;\n%s" % (json.dumps(body_id), PROBE))
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")
    proxy.reset()
    log("%s: opening %s" % (label, url))
    page.goto(url, wait_until="commit")
    # Polled from here: the page's CSP forbids the eval that page.wait_for_function uses.
    first = wait_page(page, "window.__bench.firstRows", 120) / 1000.0
    load_longest = page.evaluate("window.__bench.longest")
    # Let the first load settle (the old page keeps polling), then measure.
    time.sleep(3)
    result: Dict[str, Any] = {"first_rows_s": first, "load_longest_task_ms": load_longest}
    if shot:
        os.makedirs(os.path.dirname(shot), exist_ok=True)
        try:
            page.screenshot(path=shot, timeout=120000)
            result["screenshot"] = shot
        except Exception as exc:  # a page too busy to paint within 2 min: say so, measure on
            log("%s: no screenshot: %s" % (label, str(exc).splitlines()[0]))
            result["screenshot"] = None
    log("%s: first rows after %.2f s; idle window %.0f s" % (label, first, window))
    result["idle"] = measure_window(page, cdp, proxy, dsms, window, None)

    def change(number: int) -> None:
        dsm, serial, _ = serials[random.randrange(len(serials))]
        dsm.status(serial, "%03d" % (number % 400))
    log("%s: 10 changes/s window %.0f s" % (label, window))
    result["changing"] = measure_window(page, cdp, proxy, dsms, window, change)
    in_view = serials[0]
    log("%s: latency, %d samples" % (label, samples))
    values = latency(page, lambda serial, text: in_view[0].status(serial, text), in_view[1],
                     in_view[2], samples)
    result["latency_s"] = statistics.median(values)
    result["latency_max_s"] = max(values)
    result["dom_elements"] = page.evaluate("document.getElementsByTagName('*').length")
    context.close()
    return result


# --- setups -----------------------------------------------------------------------------------
def one_dsm(browser, code: str, label: str, drives: int, statuses: int, window: float,
            samples: int, shot: Optional[str]) -> Dict[str, Any]:
    proxy = CountingProxy()
    dsm = Dsm(code, free_port())
    try:
        log("%s: loading %d drives x %d statuses" % (label, drives, statuses))
        started = time.monotonic()
        serials = fill(dsm, "ZT", drives, statuses)
        log("%s: loaded in %.0f s" % (label, time.monotonic() - started))
        port = free_port()
        proxy.add(port, dsm.http_port)
        return run_page(browser, label, "http://%s:%d/" % (LOOPBACK, port), "drive-rows", proxy,
                        [dsm], [(dsm, serial, None) for serial in serials], window, samples,
                        shot, False)
    finally:
        dsm.stop()
        proxy.close()


def lab(browser, code: str, label: str, dsms_n: int, drives: int, statuses: int, window: float,
        samples: int, shot: Optional[str]) -> Dict[str, Any]:
    proxy = CountingProxy()
    base = tempfile.mkdtemp(prefix="dsm-page-lab")
    _temp_dirs.append(base)
    names = ["dsm%d" % number for number in range(dsms_n)]
    http = [free_port() for _ in names]
    query = [free_port() for _ in names]
    front = [free_port() for _ in names]  # the proxies: what the lab file calls the HTTP ports
    path = os.path.join(base, "lab")
    with open(path, "w") as f:
        for name, q, p in zip(names, query, front):
            f.write("%s:%d name=%s http=%d\n" % (LOOPBACK, q, name, p))
    dsms: List[Dsm] = []
    try:
        for _name, q, h, p in zip(names, query, http, front):
            dsms.append(Dsm(code, h, q, lab=path))
            proxy.add(p, h)
        serials = []
        for number, (name, dsm) in enumerate(zip(names, dsms)):
            log("%s: loading %s: %d drives x %d statuses" % (label, name, drives, statuses))
            # Each DSM its own drives (prefix by DSM), sorted: every DSM has rows in view.
            serials += [(dsm, serial, name) for serial in fill(dsm, "ZL%d" % number, drives,
                                                                 statuses)]
        serials.sort(key=lambda item: item[1])
        result = run_page(browser, label, "http://%s:%d/#lab" % (LOOPBACK, front[0]), "lab-rows",
                          proxy, dsms, serials, window, samples, shot, True)
        return result
    finally:
        for dsm in dsms:
            dsm.stop()
        proxy.close()


def table(results: Dict[str, Dict[str, Any]]) -> str:
    rows = [
        ("first rows on screen", "first_rows_s", None, "%.2f s"),
        ("longest task while loading", "load_longest_task_ms", None, "%.0f ms"),
        ("idle viewer, bytes a minute", "bytes_per_min", "idle", "bytes"),
        ("10 changes/s viewer, bytes a minute", "bytes_per_min", "changing", "bytes"),
        ("a change on screen (median)", "latency_s", None, "%.2f s"),
        ("a change on screen (max)", "latency_max_s", None, "%.2f s"),
        ("main thread busy, idle", "busy_pct", "idle", "%.1f %%"),
        ("main thread busy, 10 changes/s", "busy_pct", "changing", "%.1f %%"),
        ("longest task, idle", "longest_task_ms", "idle", "%.0f ms"),
        ("longest task, 10 changes/s", "longest_task_ms", "changing", "%.0f ms"),
        ("DOM elements", "dom_elements", None, "%d"),
        ("DSM CPU per minute, idle viewer", "dsm_cpu_s_per_min", "idle", "%.2f s"),
        ("DSM CPU per minute, 10 changes/s", "dsm_cpu_s_per_min", "changing", "%.2f s"),
    ]
    columns = list(results)
    lines = ["| | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for title, key, window, form in rows:
        cells = []
        for column in columns:
            data = results[column]
            value = (data.get(window) or {}).get(key) if window else data.get(key)
            if value is None:
                cells.append("")
            elif form == "bytes":
                cells.append("%.2f MB" % (value / 1e6) if value >= 1e6 else "%.1f KB" % (value / 1e3))
            else:
                cells.append(form % value)
        lines.append("| %s | %s |" % (title, " | ".join(cells)))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows, 1/10 of the data")
    parser.add_argument("--json", action="store_true", help="figures as JSON on stdout")
    parser.add_argument("--only", choices=("host", "lab"), help="one setup only")
    parser.add_argument("--shots", default=os.path.join(os.path.dirname(ROOT), "feed-page-shots"),
                        help="where the 10,000-drive screenshots go (default: %(default)s)")
    parser.add_argument("--old", default=OLD_COMMIT, metavar="COMMIT",
                        help="the commit whose page is 'old' (default: %(default)s, the polling "
                             "page before issue 20)")
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("page_bench: needs playwright (pip install -r bench/requirements-browser.txt)",
              file=sys.stderr)
        return 2
    if not os.path.exists(CHROMIUM):
        print("page_bench: needs %s" % CHROMIUM, file=sys.stderr)
        return 2
    scale = 10 if args.quick else 1
    window = 10.0 if args.quick else 30.0
    samples = 3 if args.quick else 7
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    old = old_code(args.old)
    new = os.path.join(ROOT, "DriveStateMonitor")
    results: Dict[str, Dict[str, Any]] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=["--no-sandbox", "--disable-gpu"])
            try:
                runs = []
                for name, code in (("old page (%s)" % args.old, old), ("new page", new)):
                    if args.only in (None, "host"):
                        runs.append(("%s, 1 DSM" % name, one_dsm, code, name, 1, 10000 // scale,
                                     "%s-10000-drives.png" % name.split()[0]))
                    if args.only in (None, "lab"):
                        runs.append(("%s, lab 5 DSMs" % name, lab, code, name, 5, 2000 // scale,
                                     "%s-lab-5x2000.png" % name.split()[0]))
                # Old and new of one setup one after the other, the host first.
                runs.sort(key=lambda run: (run[4], "new" in run[0]))
                for title, setup, code, name, dsms_n, drives, shot_name in runs:
                    shot = os.path.join(args.shots, shot_name)
                    try:
                        if setup is lab:
                            results[title] = lab(browser, code, name, dsms_n, drives, 20, window,
                                                 samples, shot)
                        else:
                            results[title] = one_dsm(browser, code, name, drives, 20, window,
                                                     samples, shot)
                    except Exception as exc:
                        log("%s: failed: %s" % (title, exc))
                        results[title] = {"error": str(exc).splitlines()[0]}
                    log("%s: %s" % (title, json.dumps(results[title])))
            finally:
                browser.close()
    finally:
        cleanup()
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        cleanup()
        sys.exit(1)
