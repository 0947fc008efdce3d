"""The live page following a real DSM's change feed (GET /api/events) in headless Chromium: drives
going silent and coming back, statuses arriving, a wipe, the DSM restarting, a feed cut in the
middle of an event, a snapshot in parts (rows shown before the last part; cut part-way; from an
older DSM that sends it whole), fields of any JSON type, and 10,000 drives with a small DOM.

Skipped where /usr/bin/chromium is absent. The 10,000-drive test is heavy (about 10 s): it runs
once per CI run, under Python 3.11 only, or wherever DSM_HEAVY_BROWSER_TESTS=1 (=0 skips it
everywhere); see docs/development.md.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import Any, Dict, List, Optional

import pytest

from dsm_harness import LOOPBACK, TEST_GROUP, announcement, wait_for
from test_web_integration import (ARTIFACTS, Announcer, HeadlessChromium, get_json,
                                  needs_chromium, send_status, start_web_dsm)

HEAVY = os.environ.get("DSM_HEAVY_BROWSER_TESTS",
                       "1" if sys.version_info[:2] == (3, 11) else "0") == "1"
heavy = pytest.mark.skipif(not HEAVY, reason="heavy browser test: runs under Python 3.11 or "
                                             "with DSM_HEAVY_BROWSER_TESTS=1")

PAGE = """(() => {
  const rows = [...document.querySelectorAll("#drive-rows tr")].map((row) => ({
    serial: row.dataset.serial, state: row.dataset.state, seen: row.dataset.statesSeen,
    statusClass: row.dataset.statusClass, text: row.innerText,
    ticks: [...row.querySelectorAll(".tick")].map((tick) => tick.textContent)}));
  const banner = document.getElementById("banner");
  return {rows: rows, connection: document.body.dataset.connection || null,
          feed: document.body.dataset.feed || null, total: document.body.dataset.rows || null,
          banner: banner.hidden ? "" : banner.innerText,
          summary: document.getElementById("summary").innerText,
          shown: document.getElementById("host-shown").innerText};
})()"""


def page(browser: HeadlessChromium) -> Dict[str, Any]:
    return browser.evaluate(PAGE)


def page_when(browser: HeadlessChromium, test, what: str, timeout: float = 20) -> Dict[str, Any]:
    """The page's state once `test(state)` holds (the page draws on its next frame)."""
    return wait_for(lambda: (lambda p: p if p and test(p) else None)(page(browser)),
                    timeout=timeout, what=what)


def by_serial(state: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {row["serial"]: row for row in state["rows"]}


def rows_match_the_dsm(dsm):
    """A test on the page's state: its rows are exactly the DSM's serials (drives and statuses),
    once each, with the DSM's states, and the header counts them."""
    drives = get_json(dsm, "/api/drives")
    statuses = get_json(dsm, "/api/status")
    expected = {serial: drives[serial]["state"] if serial in drives else "unannounced"
                for serial in set(drives) | set(statuses)}

    def test(state: Dict[str, Any]) -> bool:
        serials = [row["serial"] for row in state["rows"]]
        return (len(serials) == len(set(serials)) and
                {row["serial"]: row["state"] for row in state["rows"]} == expected and
                state["total"] == str(len(expected)))
    return test


def set_viewport(browser: HeadlessChromium, width: int, height: int) -> None:
    browser.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                 session=browser.session)


@needs_chromium
def test_page_follows_drives_silent_and_back_statuses_and_a_wipe_at_1366_px(dsm_factory):
    dsm = start_web_dsm(dsm_factory, "--drive-lifetime", "1")
    announcer = Announcer(dsm, {"ZA10F3K2": announcement("ZA10F3K2"),
                                "ZB20G4L7": announcement("ZB20G4L7")})
    browser: Optional[HeadlessChromium] = None
    try:
        send_status(dsm, "ZU99", "FAIL", "2026-11-24 14:00:00")  # statuses, never announced
        wait_for(lambda: len(get_json(dsm, "/api/drives")) == 2, what="both drives heard")
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, dsm.info["http_port"]))
        set_viewport(browser, 1366, 768)
        state = page_when(browser, lambda p: len(p["rows"]) == 3, "three rows")
        assert state["feed"] == "live" and state["connection"] == "ok"
        # The header counts what the rows show, the unannounced serial too.
        assert state["summary"].startswith("2 drives: 2 alive, 0 expired \u00b7 1 unannounced")
        assert state["shown"] == "3 rows"
        assert by_serial(state)["ZU99"]["state"] == "unannounced"

        # Statuses arriving: 20 of them; the newest show (the cell keeps the last 10 and a count).
        for number in range(20):
            send_status(dsm, "ZA10F3K2", "%03d" % number, "2026-11-24 14:%02d:00" % number)
        state = page_when(browser, lambda p: by_serial(p)["ZA10F3K2"]["ticks"][-1:] == ["019"],
                          "the newest status on the page")
        row = by_serial(state)["ZA10F3K2"]
        assert row["ticks"] == ["%03d" % n for n in range(10, 20)]
        assert "+10" in row["text"] and "2026-11-24 14:19:00" in row["text"]
        newest = browser.evaluate("""(() => {
            const row = document.querySelector('#drive-rows tr[data-serial="ZA10F3K2"]');
            const ticks = row.querySelectorAll(".tick");
            const box = ticks[ticks.length - 1].getBoundingClientRect();
            const cell = row.querySelector(".timeline").getBoundingClientRect();
            return {left: box.left, right: box.right, cellLeft: cell.left, cellRight: cell.right,
                    width: window.innerWidth};
        })()""")
        assert newest["width"] == 1366
        assert newest["cellLeft"] <= newest["left"] and newest["right"] <= newest["cellRight"]
        assert newest["right"] <= newest["width"]

        # Silent, then heard again.
        announcer.silence("ZA10F3K2")
        page_when(browser, lambda p: by_serial(p)["ZA10F3K2"]["state"] == "expired",
                  "ZA10F3K2 expired")
        with announcer.lock:
            announcer.payloads["ZA10F3K2"] = announcement("ZA10F3K2")
        state = page_when(browser, lambda p: by_serial(p)["ZA10F3K2"]["state"] == "alive",
                          "ZA10F3K2 alive again")
        assert by_serial(state)["ZA10F3K2"]["seen"] == "alive expired alive"
        page_when(browser, rows_match_the_dsm(dsm), "the page's rows to be the DSM's")
        browser.screenshot(os.path.join(ARTIFACTS, "page_1366.png"))

        # A wipe: every row goes, then what is heard after it comes back.
        announcer.stop()
        dsm.query(b"w")
        state = page_when(browser, lambda p: not p["rows"], "no rows after the wipe")
        assert state["summary"].startswith("0 drives: 0 alive, 0 expired \u00b7 0 unannounced")
        send_status(dsm, "ZW1", "PASS", "2026-11-24 15:00:00")
        state = page_when(browser, lambda p: [r["serial"] for r in p["rows"]] == ["ZW1"],
                          "the one row after the wipe")
        assert state["feed"] == "live"
    finally:
        announcer.stop()
        if browser is not None:
            browser.close()


class CuttingProxy:
    """A TCP proxy in front of the DSM's HTTP port (the page is loaded through it: one origin).
    It notes each /api/events request's Last-Event-ID and the first event each stream sends, and,
    once armed, cuts the next stream in the middle of its next change event: it passes on the
    event's first half and closes both sides, as a network failure would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.streams: List[Dict[str, Optional[str]]] = []  # {"last_id", "first_event"}
        self.armed = threading.Event()
        self.cuts = 0
        self.sockets: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
            except OSError:
                client.close()  # the DSM is down: so is the proxy's answer
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            stream: Dict[str, Any] = {}
            threading.Thread(target=self._requests, args=(client, upstream, stream),
                             daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, stream),
                             daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, stream: Dict) -> None:
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if b"GET /api/events" in data:
                    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
                    last_id = [line.split(":", 1)[1].strip() for line in head.split("\r\n")
                               if line.lower().startswith("last-event-id:")]
                    stream["record"] = {"last_id": last_id[0] if last_id else None,
                                        "first_event": None}
                    with self.lock:
                        self.streams.append(stream["record"])
                upstream.sendall(data)
        except OSError:
            pass
        self._close(client, upstream)

    def _responses(self, upstream: socket.socket, client: socket.socket, stream: Dict) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                record = stream.get("record")
                if record is not None and record["first_event"] is None and b"event: " in data:
                    record["first_event"] = data.split(b"event: ", 1)[1].split(b"\n")[0].decode()
                at = data.find(b"event: change\n")
                if record is not None and self.armed.is_set() and at >= 0:
                    end = data.find(b"\n\n", at)
                    end = len(data) if end < 0 else end
                    client.sendall(data[:at + (end - at) // 2])
                    self.armed.clear()
                    with self.lock:
                        self.cuts += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        self._close(client, upstream)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            self._close(*self.sockets)


@needs_chromium
def test_page_resumes_after_a_cut_mid_event_and_after_the_dsm_restarts(dsm_factory):
    dsm = start_web_dsm(dsm_factory)
    for serial in ("ZR1", "ZR2", "ZR3"):
        dsm.announce(announcement(serial))
    send_status(dsm, "ZR1", "001", "2026-11-24 14:00:00")
    wait_for(lambda: len(get_json(dsm, "/api/drives")) == 3, what="three drives heard")
    proxy = CuttingProxy(dsm.info["http_port"])
    browser: Optional[HeadlessChromium] = None
    try:
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, proxy.port))
        page_when(browser, rows_match_the_dsm(dsm), "the page's rows to be the DSM's")
        assert [s["first_event"] for s in proxy.streams] == ["snapshot-start"]

        # Cut in the middle of the event that carries ZR2's status: the page resumes from the id
        # it had (Last-Event-ID), gets that change again, and nothing is lost or doubled.
        proxy.armed.set()
        send_status(dsm, "ZR2", "PASS", "2026-11-24 14:01:00")
        state = page_when(browser, lambda p: by_serial(p)["ZR2"]["ticks"] == ["PASS"],
                          "ZR2's status after the cut")
        assert proxy.cuts == 1
        assert len(proxy.streams) == 2
        resumed = proxy.streams[1]
        assert resumed["last_id"] and resumed["first_event"] == "change", proxy.streams
        assert [row["serial"] for row in state["rows"]] == ["ZR1", "ZR2", "ZR3"]

        # The DSM restarts (same port, same state): a banner while it is away, then a snapshot of
        # the new process (its epoch differs), the same rows once each, and changes again.
        state_dir = [v for k, v in zip(dsm.args, dsm.args[1:]) if k == "--state-dir"][-1]
        dsm.stop()
        state = page_when(browser, lambda p: p["connection"] == "unreachable",
                          "the banner while the DSM is down")
        assert "unreachable" in state["banner"]
        assert [row["serial"] for row in state["rows"]] == ["ZR1", "ZR2", "ZR3"]  # last data kept
        back = dsm_factory.start("--http-port", str(dsm.info["http_port"]),
                                 "--state-dir", state_dir, mcast_port=dsm.mcast_port)
        page_when(browser, lambda p: p["connection"] == "ok" and not p["banner"],
                  "the page back on the feed", timeout=30)
        assert proxy.streams[-1]["last_id"] == resumed["last_id"] or proxy.streams[-1]["last_id"]
        assert proxy.streams[-1]["first_event"] == "snapshot-start"
        page_when(browser, rows_match_the_dsm(back), "the restarted DSM's rows, once each")
        send_status(back, "ZR3", "FAIL", "2026-11-24 14:02:00")
        state = page_when(browser, lambda p: by_serial(p)["ZR3"]["ticks"] == ["FAIL"],
                          "a status sent to the restarted DSM")
        assert by_serial(state)["ZR2"]["ticks"] == ["PASS"]
    finally:
        if browser is not None:
            browser.close()
        proxy.close()


class PartsProxy:
    """A TCP proxy in front of the DSM's HTTP port for the snapshot in parts. `mode`:
    "hold": passes each stream up to the end of its first `snapshot-part` event, then holds the
    rest until `release`; "cut": passes the first stream up to the middle of its second
    `snapshot-part` event and closes both sides (a network failure); "whole": removes `parts=1`
    from each request, as a DSM from before the parts would ignore it (one `snapshot`)."""

    def __init__(self, upstream_port: int, mode: str) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.released = threading.Event()
        self.held = threading.Event()
        self.lock = threading.Lock()
        self.first_events: List[str] = []
        self.sockets: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if self.mode == "whole":
                    data = data.replace(b"?parts=1&", b"?").replace(b"?parts=1", b"")
                upstream.sendall(data)
        except OSError:
            pass
        CuttingProxy._close(client, upstream)

    def _responses(self, upstream: socket.socket, client: socket.socket) -> None:
        received = b""
        passing = True  # passed through as it comes once the point of interest is past
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                received += data
                if passing and b"text/event-stream" in received and self.mode != "whole":
                    marker = b"event: snapshot-part\n"
                    at = received.find(marker)
                    if self.mode == "cut":
                        at = received.find(marker, at + 1) if at >= 0 else -1
                    end = received.find(b"\n\n", at) if at >= 0 else -1
                    if end < 0:
                        continue  # not there yet: keep reading
                    with self.lock:
                        first = self.first_events
                        first.append(received.split(b"event: ", 1)[1].split(b"\n")[0].decode())
                    if self.mode == "cut" and len(first) == 1:
                        client.sendall(received[:at + (end - at) // 2])
                        break
                    if self.mode == "hold":
                        client.sendall(received[:end + 2])
                        received = received[end + 2:]
                        self.held.set()
                        self.released.wait(30)
                    passing = False
                client.sendall(received)
                received = b""
        except OSError:
            pass
        CuttingProxy._close(client, upstream)

    def close(self) -> None:
        self.released.set()
        self.listener.close()
        with self.lock:
            CuttingProxy._close(*self.sockets)


PART_ROWS = 500  # change_feed.DEFAULT_PART_ROWS: the test's drives need three parts
PARTED_SERIALS = ["ZP%04d" % number for number in range(PART_ROWS * 2 + 100)]


def every_parted_row(state: Dict[str, Any]) -> bool:
    """Every serial once (rows are keyed by serial: a count short of it is a row lost), alive."""
    total = len(PARTED_SERIALS)
    return state.get("total") == str(total) and state["summary"].startswith(
        "%d drives: %d alive, 0 expired \u00b7 0 unannounced" % (total, total))


@pytest.fixture
def parted_dsm(dsm_factory):
    from DriveStateMonitor.change_feed import DEFAULT_PART_ROWS
    assert DEFAULT_PART_ROWS == PART_ROWS
    dsm = start_web_dsm(dsm_factory)
    announce_many(dsm, PARTED_SERIALS)
    return dsm


@needs_chromium
def test_page_shows_the_first_parts_rows_before_the_last_part_arrives(parted_dsm):
    proxy = PartsProxy(parted_dsm.info["http_port"], "hold")
    browser: Optional[HeadlessChromium] = None
    try:
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, proxy.port))
        wait_for(proxy.held.is_set, timeout=20, what="the first part passed, the rest held")
        state = page_when(browser, lambda p: p["total"] == str(PART_ROWS) and p["rows"],
                          "the first part's rows on screen while the rest is held")
        assert state["rows"][0]["serial"] == "ZP0000" and state["feed"] == "live"
        proxy.released.set()
        page_when(browser, every_parted_row, "every part applied")
        assert proxy.first_events == ["snapshot-start"]
    finally:
        if browser is not None:
            browser.close()
        proxy.close()


@needs_chromium
def test_snapshot_cut_part_way_then_whole_from_an_older_dsm_leaves_each_row_once(parted_dsm):
    # Cut in the middle of the second part: the page keeps the first part's rows, reconnects,
    # gets a whole new snapshot and ends with every row once.
    proxy = PartsProxy(parted_dsm.info["http_port"], "cut")
    browser: Optional[HeadlessChromium] = None
    try:
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, proxy.port))
        page_when(browser, every_parted_row, "every row after the cut")
        assert len(proxy.first_events) >= 2  # cut once, then a stream that went through
        send_status(parted_dsm, "ZP0999", "PASS", "2026-11-24 14:00:00")
        browser.evaluate('(() => { const f = document.getElementById("host-filter-serial");'
                         ' f.value = "ZP0999";'
                         ' f.dispatchEvent(new Event("input", {bubbles: true})); })()')
        page_when(browser, lambda p: [r["ticks"] for r in p["rows"]] == [["PASS"]],
                  "a change after the cut snapshot")
    finally:
        if browser is not None:
            browser.close()
        proxy.close()
    # A DSM that ignores ?parts=1 (one `snapshot`, as before the parts): the same rows.
    proxy = PartsProxy(parted_dsm.info["http_port"], "whole")
    browser = None
    try:
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, proxy.port))
        state = page_when(browser, every_parted_row, "every row, whole snapshot")
        assert state["feed"] == "live"
    finally:
        if browser is not None:
            browser.close()
        proxy.close()


HOSTILE_VALUES = [
    'null', '0', '-1.5e300', 'true', '""', '"x"', '[]', '[1, [2, {"a": null}]]', '{}',
    '{"toString": 1}', '{"toString": 1, "valueOf": 2}', '{"__proto__": {"x": 1}}',
    '{"constructor": "y"}', json.dumps("\u202e\x1b[2J<script>alert(1)</script>"),
    json.dumps("Z" * 100000), "[" * 200 + "]" * 200,
]

RENDER_HOSTILE = """(() => {
  const values = %s.map((text) => JSON.parse(text));
  const failures = [];
  const texts = [];
  for (const value of values) {
    try {
      // The value in every field a drive, an interface and a status entry have, and as a whole
      // drive, a whole status list and a status entry.
      const drive = {state: value, model: value, last_seen: value, last_seen_epoch: value,
                     network_interfaces: [value, {name: value, ipv4_addr: value}]};
      const histories = [[{status: value, time_stamp: value}], [value], value];
      for (const history of histories) {
        for (const whole of [drive, value]) {
          for (const withHost of [false, true]) {
            const row = deriveRow("h", "S", whole, history);
            const element = rowElement(row, withHost, 0);
            texts.push(element.innerText.length);
          }
        }
      }
      texts.push(safeText(value).length);
      statusMeaning(value);
      statusClass(safeText(value));
    } catch (error) {
      failures.push(String(error && error.message));
    }
  }
  return {failures: failures, longest: Math.max(...texts)};
})()"""


@needs_chromium
def test_any_json_value_in_any_field_renders_and_the_page_polls_without_eventsource(
        dsm_factory):
    dsm = start_web_dsm(dsm_factory)
    # What the DSM keeps of odd types is intake's business (docs/protocol.md: text fields are
    # strings, numbers or null, else the announcement is refused; a status of another type is
    # kept as its JSON text); whatever it serves, the page must draw it, and the rows next to it.
    # (Objects and arrays in every field, as an older DSM of a lab may serve them, are drawn by
    # the page's own functions below: HOSTILE_VALUES.)
    dsm.announce(announcement("ZODD1", model=12345, firmware_version=None,
                              network_interfaces=[{"name": 5, "ipv4_addr": None,
                                                   "mac_addr": "<b>&amp;" * 50}]))
    dsm.announce(announcement("ZPLAIN"))
    for status in ('{"toString": 1}', "[1, 2]", "null", "7"):
        message = '{"serial_number": "ZODD2", "time_stamp": %s, "status": %s}' % (status, status)
        dsm.send_status(message.encode())
    send_status(dsm, "ZODD2", "Y" * 5000, "2026-11-24 14:00:00")
    wait_for(lambda: {"ZODD1", "ZPLAIN"} <= set(get_json(dsm, "/api/drives")),
             what="both drives heard")
    browser: Optional[HeadlessChromium] = None
    try:
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, dsm.info["http_port"]))
        state = page_when(browser, rows_match_the_dsm(dsm), "every row on the page")
        assert state["connection"] == "ok" and state["feed"] == "live"
        assert "ZPLAIN" in by_serial(state) and "ST4000NK0001" in by_serial(state)["ZPLAIN"]["text"]
        long_row = by_serial(state)["ZODD2"]
        assert len(long_row["text"]) < 2000  # a 5,000-character status is cut for the cell

        # Every field, every JSON type, in the page's own functions.
        result = browser.evaluate(RENDER_HOSTILE % json.dumps(HOSTILE_VALUES))
        assert result["failures"] == []
        assert 0 < result["longest"] < 3000  # a 100,000-character string is cut

        # Where EventSource is missing, the page polls /api/drives and /api/status instead.
        browser.call("Page.enable", {}, session=browser.session)
        browser.call("Page.addScriptToEvaluateOnNewDocument",
                     {"source": "delete window.EventSource;"}, session=browser.session)
        browser.call("Page.navigate", {"url": "http://%s:%d/" % (LOOPBACK, dsm.info["http_port"])},
                     session=browser.session)
        page_when(browser, lambda p: p.get("feed") == "polling" and rows_match_the_dsm(dsm)(p),
                  "the page polling")
        send_status(dsm, "ZPLAIN", "PASS", "2026-11-24 14:05:00")
        page_when(browser, lambda p: by_serial(p)["ZPLAIN"]["ticks"] == ["PASS"],
                  "a status seen by polling")
    finally:
        if browser is not None:
            browser.close()


DOM_SIZE = """(() => ({rows: document.querySelectorAll("#drive-rows tr").length,
  nodes: document.getElementsByTagName("*").length, total: document.body.dataset.rows || null,
  serials: [...document.querySelectorAll("#drive-rows tr")].map((row) => row.dataset.serial),
  summary: document.getElementById("summary").innerText}))()"""


def announce_many(dsm, serials: List[str]) -> None:
    """Every serial announced (again where the DSM did not hear it: UDP may drop a burst)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        missing = list(serials)
        for _ in range(5):
            for serial in missing:
                sock.sendto(announcement(serial), (TEST_GROUP, dsm.mcast_port))
            try:
                wait_for(lambda: len(get_json(dsm, "/api/drives")) >= len(serials), timeout=10,
                         what="every drive heard")
                return
            except AssertionError:
                heard = get_json(dsm, "/api/drives")
                missing = [serial for serial in serials if serial not in heard]
    raise AssertionError("%d drives never heard" % len(missing))


@needs_chromium
@heavy
def test_ten_thousand_drives_keep_the_dom_small(dsm_factory):
    dsm = start_web_dsm(dsm_factory)
    serials = ["ZT%05d" % number for number in range(10000)]
    announce_many(dsm, serials)
    browser: Optional[HeadlessChromium] = None
    try:
        browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, dsm.info["http_port"]))
        set_viewport(browser, 1366, 768)
        size = wait_for(lambda: (lambda s: s if s and s.get("total") == "10000" and s["rows"] else None)(
            browser.evaluate(DOM_SIZE)), timeout=30, what="10,000 rows loaded")
        assert size["summary"].startswith("10000 drives: 10000 alive")
        assert size["serials"][0] == "ZT00000"
        assert 5 <= size["rows"] <= 60 and size["nodes"] < 1500, size
        browser.screenshot(os.path.join(ARTIFACTS, "page_10000_drives.png"))

        # Scrolled to the end: the last rows are drawn, and still only those in view.
        browser.evaluate('(() => { const s = document.getElementById("host-scroll");'
                         ' s.scrollTop = s.scrollHeight; })()')
        size = wait_for(lambda: (lambda s: s if "ZT09999" in s["serials"] else None)(
            browser.evaluate(DOM_SIZE)), timeout=10, what="the last row drawn")
        assert size["rows"] <= 60 and size["nodes"] < 1500, size
        visible = browser.evaluate("""(() => {
            const row = document.querySelector('#drive-rows tr[data-serial="ZT09999"]');
            const box = row.getBoundingClientRect();
            const view = document.getElementById("host-scroll").getBoundingClientRect();
            return box.top >= view.top && box.bottom <= view.bottom + 1; })()""")
        assert visible

        # A change to one drive among 10,000 reaches its row.
        send_status(dsm, "ZT09999", "PASS", "2026-11-24 14:00:00")
        wait_for(lambda: browser.evaluate(
            'document.querySelector(\'#drive-rows tr[data-serial="ZT09999"]\')'
            '.dataset.statusClass') == "pass", timeout=10, what="ZT09999's status")
    finally:
        if browser is not None:
            browser.close()
