"""The HTTP port of a real DSM: /metrics, /api/*, errors over real sockets, keep-alive, and the live
page in a real headless Chromium (skipped where /usr/bin/chromium is absent)."""
from __future__ import annotations

import base64
import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Optional, Set

import pytest

from dsm_harness import END, LOOPBACK, ROOT, announcement, free_tcp_port, recv_all, wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
# Ports a lab's real DSM (or a drive) may be using on this host: never ours.
RESERVED_PORTS = {2203, 2204, 3110, 3111, 8123}


@pytest.fixture
def web_dsm(dsm_factory):
    return start_web_dsm(dsm_factory)


def start_web_dsm(dsm_factory, *extra: str):
    dsm = dsm_factory.start("--http-port", str(free_tcp_port()), *extra)
    assert dsm.info["http_port"] not in RESERVED_PORTS
    return dsm


def get(dsm, path: str, method: str = "GET", headers: Optional[Dict[str, str]] = None):
    """(response, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(LOOPBACK, dsm.info["http_port"], timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def get_json(dsm, path: str) -> Any:
    response, body = get(dsm, path)
    assert response.status == 200, body
    assert response.getheader("Content-Type") == "application/json"
    return json.loads(body)


def raw_exchange(dsm, data: bytes) -> bytes:
    """Sends `data` and returns everything the DSM sends until it closes the connection."""
    with socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10) as sock:
        sock.sendall(data)
        return recv_all(sock)


def metric(dsm, name: str, **labels: str) -> float:
    parser = pytest.importorskip("prometheus_client.parser")
    response, body = get(dsm, "/metrics")
    assert response.status == 200
    for family in parser.text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError("no sample %s %s" % (name, labels))


def send_status(dsm, serial: str, status: str, stamp: str) -> None:
    message = json.dumps({"serial_number": serial, "time_stamp": stamp, "status": status})
    assert dsm.send_status(message.encode()) == END


def listening_ports(pid: int) -> Set[int]:
    """TCP ports the process `pid` listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# --- the listener -----------------------------------------------------------------------------
def test_http_port_is_written_to_dsm_json_and_bound(web_dsm):
    assert web_dsm.info["http_port"] in listening_ports(web_dsm.pid)


def test_http_port_zero_binds_nothing(dsm_factory):
    dsm = dsm_factory.start("--http-port", "0")
    assert "http_port" not in dsm.info
    assert listening_ports(dsm.pid) == {dsm.query_port, dsm.status_port, dsm.statserv_port}


def test_taken_http_port_fails_start_with_exit_2(dsm_factory):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.bind(("::", 0))
        holder.listen(1)
        dsm = dsm_factory.start("--http-port", str(holder.getsockname()[1]), wait=False)
        assert dsm.wait_exit() == 2
    assert "HTTP port" in dsm.log_text()


# --- /api -------------------------------------------------------------------------------------
def test_api_drives_and_status_match_m_and_s(web_dsm):
    web_dsm.announce(announcement("ZA1"))
    send_status(web_dsm, "ZA1", "001", "2026-11-24 14:22")
    send_status(web_dsm, "ZA1", "002", "2026-11-24 14:23")
    wait_for(lambda: "ZA1" in get_json(web_dsm, "/api/drives"), what="ZA1 in /api/drives")
    assert get_json(web_dsm, "/api/drives") == web_dsm.query_json("m")
    assert get_json(web_dsm, "/api/status") == web_dsm.query_json("s")
    assert get_json(web_dsm, "/api/status") == {"ZA1": [
        {"time_stamp": "2026-11-24 14:22", "status": "001"},
        {"time_stamp": "2026-11-24 14:23", "status": "002"}]}


def test_api_drive_is_its_m_view_plus_statuses(web_dsm):
    web_dsm.announce(announcement("ZA1"))
    send_status(web_dsm, "ZA1", "001", "t1")
    wait_for(lambda: "ZA1" in get_json(web_dsm, "/api/drives"), what="ZA1 in /api/drives")
    drive = get_json(web_dsm, "/api/drives/ZA1")
    m_view = web_dsm.query_json("m")["ZA1"]
    assert drive.pop("statuses") == [{"time_stamp": "t1", "status": "001"}]
    drive.pop("last_seen"), drive.pop("last_seen_epoch")
    m_view.pop("last_seen"), m_view.pop("last_seen_epoch")
    assert drive == m_view


def test_api_drive_known_only_by_statuses_and_percent_encoded(web_dsm):
    send_status(web_dsm, "5 000c50 0a1b", "PASS", "t1")
    assert get_json(web_dsm, "/api/drives/5%20000c50%200a1b") == {
        "serial_number": "5 000c50 0a1b", "statuses": [{"time_stamp": "t1", "status": "PASS"}]}


def test_unknown_serial_is_404_json(web_dsm):
    response, body = get(web_dsm, "/api/drives/NOPE")
    assert response.status == 404
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"error": "no drive with serial number 'NOPE'", "status": 404}


# --- /metrics ---------------------------------------------------------------------------------
def test_metrics_parse_and_count_what_happened(web_dsm):
    web_dsm.announce(announcement("ZA1", model="ST8000", firmware_version="4.0.1"))
    web_dsm.announce(b"not json")
    send_status(web_dsm, "ZA1", "001", "t1")
    wait_for(lambda: web_dsm.query_json("m"), what="ZA1 in m")
    assert metric(web_dsm, "dsm_drives_known") == 1
    assert metric(web_dsm, "dsm_drives_alive") == 1
    assert metric(web_dsm, "dsm_drive_info", serial="ZA1", model="ST8000",
                  firmware="4.0.1") == 1
    assert metric(web_dsm, "dsm_drive_last_seen_timestamp_seconds", serial="ZA1") > 1e9
    assert metric(web_dsm, "dsm_announcements_total") == 2
    assert metric(web_dsm, "dsm_announcements_rejected_total", reason="not_json") == 1
    assert metric(web_dsm, "dsm_status_updates_total") == 1
    assert metric(web_dsm, "dsm_queries_total", kind="m") >= 1
    assert metric(web_dsm, "dsm_connections_accepted_total", kind="http") >= 1
    assert metric(web_dsm, "dsm_connections_open", kind="http") >= 1  # this very request
    assert metric(web_dsm, "dsm_tree_objects") > 0
    assert metric(web_dsm, "dsm_journal_healthy") == 1
    assert metric(web_dsm, "dsm_event_loop_lag_seconds_count") >= 1
    assert metric(web_dsm, "dsm_http_requests_total", handler="metrics", code="200") >= 1
    response, _ = get(web_dsm, "/metrics")
    assert response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"


def test_tree_monitors_are_counted(web_dsm):
    with web_dsm.connect_statserv() as sock:
        sock.sendall(b"MONITOR /dsm/pid\n")
        sock.settimeout(10)
        wait_for(lambda: sock.recv(4096), what="the MONITOR answer")
        assert metric(web_dsm, "dsm_tree_monitors") == 1


def test_loop_lag_probe_keeps_firing(web_dsm):
    first = metric(web_dsm, "dsm_event_loop_lag_seconds_count")
    wait_for(lambda: metric(web_dsm, "dsm_event_loop_lag_seconds_count") > first, timeout=5,
             what="a second loop-lag sample")


# --- HTTP errors over real sockets ------------------------------------------------------------
def test_unknown_path_is_404_and_page_names_are_served(web_dsm):
    response, body = get(web_dsm, "/nothing-here")
    assert response.status == 404 and b"nothing at /nothing-here" in body
    response, body = get(web_dsm, "/api/other")
    assert response.status == 404 and json.loads(body)["status"] == 404
    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"),
                       ("/style.css", "text/css")):
        response, body = get(web_dsm, path)
        assert response.status == 200 and response.getheader("Content-Type").startswith(kind)
        assert body


def test_post_is_405_with_allow(web_dsm):
    response, body = get(web_dsm, "/api/drives", method="POST")
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"
    assert json.loads(body)["error"].startswith("method POST not allowed")


@pytest.mark.parametrize("request_bytes, status", [
    (b"garbage\r\n\r\n", b"400 Bad Request"),
    (b"GET / HTTP/1.1\r\n\r\n", b"400 Bad Request"),
    (b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: 99999999\r\n\r\n", b"413 Content Too Large"),
    (b"GET / HTTP/1.1\r\nHost: d\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
     b"431 Request Header Fields Too Large"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414 URI Too Long"),
    (b"GET / HTTP/3.0\r\nHost: d\r\n\r\n", b"505 HTTP Version Not Supported"),
])
def test_bad_requests_get_an_error_and_the_connection_closes(web_dsm, request_bytes, status):
    reply = raw_exchange(web_dsm, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status + b"\r\n"), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close" in head
    assert body.startswith(status[:3] + b" ") and len(body) > 10  # a clear explanation


def test_dsm_survives_bad_requests_and_counts_them(web_dsm):
    raw_exchange(web_dsm, b"\x00\xff\r\n\r\n")
    assert metric(web_dsm, "dsm_http_requests_total", handler="bad_request", code="400") == 1
    assert get_json(web_dsm, "/api/drives") == {}


# --- keep-alive, pipelining, HEAD -------------------------------------------------------------
def test_keep_alive_serves_many_requests_on_one_connection(web_dsm):
    conn = http.client.HTTPConnection(LOOPBACK, web_dsm.info["http_port"], timeout=10)
    try:
        for path in ("/api/drives", "/api/status", "/metrics", "/nope", "/api/drives"):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert not response.will_close
        first_socket = conn.sock
        conn.request("GET", "/api/status")
        conn.getresponse().read()
        assert conn.sock is first_socket
    finally:
        conn.close()
    assert metric(web_dsm, "dsm_connections_accepted_total", kind="http") <= 2


def test_pipelined_requests_are_answered_in_order_then_close(web_dsm):
    requests = b"".join(b"GET /api/drives/S%d HTTP/1.1\r\nHost: d\r\n\r\n" % i for i in range(5))
    reply = raw_exchange(web_dsm, requests + b"GET /api/status HTTP/1.1\r\nHost: d\r\n"
                                               b"Connection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 404 Not Found") == 5
    order = [reply.index(b"'S%d'" % i) for i in range(5)]
    assert order == sorted(order)
    assert reply.rstrip().endswith(b"{}")
    assert reply.count(b"Connection: close") == 1


def test_head_has_the_get_headers_and_no_body(web_dsm):
    get_response, get_body = get(web_dsm, "/")
    head_reply = raw_exchange(web_dsm, b"HEAD / HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    assert head_reply.endswith(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(get_body) in head_reply


def test_http10_request_is_answered_and_closed(web_dsm):
    reply = raw_exchange(web_dsm, b"GET /api/status HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n{}")


def test_connection_limit_refuses_with_503(dsm_factory):
    dsm = start_web_dsm(dsm_factory, "--max-connections", "1")
    with socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10) as held:
        held.sendall(b"GET /api/status HTTP/1.1\r\nHost: d\r\n\r\n")
        held.recv(4096)
        # Nothing sent: the refusal comes at once, and unread input would reset the connection.
        with socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10) as refused:
            reply = recv_all(refused)
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"too many connections" in reply


# --- the live page in a real browser ----------------------------------------------------------
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="needs Debian's chromium at /usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1200,800"]


PIPE_WRAPPER = """
import fcntl, os, sys
# Both ends move above fd 9 first (F_DUPFD never reuses an open fd): placing one at 3 or 4 cannot
# overwrite the other.
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
os.dup2(ends[0], 3)
os.dup2(ends[1], 4)
os.execv(sys.argv[3], sys.argv[3:])
"""


class HeadlessChromium:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: it reads
    NUL-terminated JSON commands on fd 3 and writes replies on fd 4): no extra package needed, and
    the page can be watched as it changes instead of dumped once."""

    def __init__(self, url: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="dsm-chromium")
        self._to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, self._from_chrome_w = os.pipe()
        # A tiny Python wrapper puts our pipe ends at fds 3 and 4, where Chromium expects them.
        command = [sys.executable, "-c", PIPE_WRAPPER, str(self._to_chrome_r),
                   str(self._from_chrome_w), CHROMIUM] + CHROMIUM_FLAGS + [
                   "--remote-debugging-pipe", "--user-data-dir=" + self.profile, "about:blank"]
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     pass_fds=(self._to_chrome_r, self._from_chrome_w))
        os.close(self._to_chrome_r)
        os.close(self._from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: Optional[Dict[str, Any]] = None,
             session: Optional[str] = None, timeout: float = 20.0) -> Dict[str, Any]:
        self._next_id += 1
        message: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise AssertionError("%s failed: %s" % (method, reply["error"]))
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("Chromium did not answer %s in %.0f s" % (method, timeout))
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise AssertionError("Chromium exited")
                self._buffer += chunk

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           session=self.session)
        return result["result"].get("value")

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=self.session)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


ROW_STATE = """(() => {
  const rows = {};
  for (const row of document.querySelectorAll("#drive-rows tr")) {
    rows[row.dataset.serial] = {state: row.dataset.state, seen: row.dataset.statesSeen,
                                text: row.innerText,
                                ticks: row.querySelectorAll(".tick").length};
  }
  return {rows: rows, connection: document.body.dataset.connection || null,
          banner: document.getElementById("banner").hidden ? "" :
                  document.getElementById("banner").innerText};
})()"""


class Announcer:
    """Announces drives every 0.2 s from a thread, as drives do (faster), until told to stop."""

    def __init__(self, dsm, payloads: Dict[str, bytes]) -> None:
        self.dsm = dsm
        self.payloads = dict(payloads)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                payloads = list(self.payloads.values())
            for payload in payloads:
                self.dsm.announce(payload)
            self.stopping.wait(0.2)

    def silence(self, serial: str) -> None:
        with self.lock:
            del self.payloads[serial]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)


@needs_chromium
def test_live_page_follows_drives_and_shows_when_dsm_is_unreachable(dsm_factory):
    dsm = start_web_dsm(dsm_factory, "--drive-lifetime", "1")
    announcer = Announcer(dsm, {
        "ZA10F3K2": announcement("ZA10F3K2"),
        "ZB20G4L7": announcement("ZB20G4L7", model="ST8000NK0002", firmware_version="4.0.1",
                                 network_interfaces=[
                                     {"name": "eth0", "ipv4_addr": "10.20.30.52"},
                                     {"name": "eth1", "ipv4_addr": "10.20.31.52"}]),
    })
    browser: Optional[HeadlessChromium] = None
    try:
        for number, status in enumerate(("001", "002", "002", "003", "PASS")):
            send_status(dsm, "ZA10F3K2", status, "2026-11-24 14:2%d:00" % number)
        send_status(dsm, "ZB20G4L7", "FAIL", "2026-11-24 14:30:00")
        wait_for(lambda: len(get_json(dsm, "/api/drives")) == 2, what="both drives heard")

        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, dsm.info["http_port"]))
        page = wait_for(lambda: _page_with(browser, "ZA10F3K2", "alive"), timeout=20,
                        what="the page to list ZA10F3K2 alive")
        row = page["rows"]["ZA10F3K2"]
        assert "ST4000NK0001" in row["text"] and "eth0 10.20.30.41" in row["text"]
        assert "PASS" in row["text"] and row["ticks"] == 5
        other = page["rows"]["ZB20G4L7"]
        assert "eth0 10.20.30.52" in other["text"] and "eth1 10.20.31.52" in other["text"]
        assert "FAIL" in other["text"] and other["ticks"] == 1
        assert page["connection"] == "ok" and page["banner"] == ""

        announcer.silence("ZA10F3K2")
        page = wait_for(lambda: _page_with(browser, "ZA10F3K2", "expired"), timeout=15,
                        what="the page to show ZA10F3K2 expired")
        # The same page, never reloaded, saw the drive alive and then expired.
        assert page["rows"]["ZA10F3K2"]["seen"] == "alive expired"
        assert page["rows"]["ZB20G4L7"]["state"] == "alive"
        browser.screenshot(os.path.join(ARTIFACTS, "web_page.png"))

        announcer.stop()
        dsm.stop()
        page = wait_for(lambda: _unreachable(browser), timeout=15,
                        what="the page to say the DSM is unreachable")
        assert "unreachable" in page["banner"]
        assert "ZA10F3K2" in page["rows"]  # the last data stays on screen
        browser.screenshot(os.path.join(ARTIFACTS, "web_page_unreachable.png"))
    finally:
        announcer.stop()
        if browser is not None:
            browser.close()


def _page_with(browser: HeadlessChromium, serial: str, state: str) -> Any:
    page = browser.evaluate(ROW_STATE)
    row = page["rows"].get(serial) if page else None
    return page if row and row["state"] == state else None


def _unreachable(browser: HeadlessChromium) -> Any:
    page = browser.evaluate(ROW_STATE)
    return page if page and page["connection"] == "unreachable" and page["banner"] else None


@needs_chromium
def test_page_dom_lists_drives(web_dsm):
    # The page keeps its change feed open, so `chromium --dump-dom --virtual-time-budget` (which
    # waits for the network to go quiet) never returns: the DOM is read over DevTools instead.
    web_dsm.announce(announcement("ZC30H5M8"))
    send_status(web_dsm, "ZC30H5M8", "042", "t1")
    wait_for(lambda: "ZC30H5M8" in get_json(web_dsm, "/api/drives"), what="ZC30H5M8 heard")
    browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, web_dsm.info["http_port"]))
    try:
        dom = wait_for(lambda: (lambda d: d if d and ">042<" in d else None)(
            browser.evaluate("document.documentElement.outerHTML")), timeout=20,
            what="the page to show ZC30H5M8's status")
    finally:
        browser.close()
    assert 'data-serial="ZC30H5M8"' in dom and 'data-state="alive"' in dom
    assert 'data-connection="ok"' in dom
