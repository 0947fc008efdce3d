"""A lab of three real DSMs on loopback ports: dsmctl.py m/s/find across it, the JSON API's CORS
and /api/lab, and the page's whole-lab view in headless Chromium with one DSM stopped mid-test."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import Any, List

import pytest

from dsm_harness import LOOPBACK, PACKAGE, announcement, run_script, wait_for
from test_web_integration import (ARTIFACTS, HeadlessChromium, free_tcp_port, get, get_json,
                                  needs_chromium, send_status)

DSMCTL = os.path.join(PACKAGE, "dsmctl.py")
NAMES = ("bench-a", "bench-b", "bench-c")


class Lab:
    """Three DSMs that list each other in one lab file (their HTTP ports chosen up front)."""

    def __init__(self, dsm_factory, tmp_path) -> None:
        self.path = str(tmp_path / "lab")
        # Ports chosen up front can be taken before a DSM binds them (by another process, or as
        # an earlier DSM's own port 0): then the whole lab starts again on new ones, a few times.
        for attempt in range(3):
            try:
                self.dsms = self._start(dsm_factory)
                return
            except AssertionError as failure:
                if "Address already in use" not in str(failure) or attempt == 2:
                    raise

    def _start(self, dsm_factory) -> dict:
        http_ports = [free_tcp_port() for _ in NAMES]
        query_ports = [free_tcp_port() for _ in NAMES]
        with open(self.path, "w") as f:
            f.write("# the test lab\n")
            for name, query, http in zip(NAMES, query_ports, http_ports):
                f.write("%s:%d name=%s http=%d\n" % (LOOPBACK, query, name, http))
        dsms = {}
        try:
            for name, query, http in zip(NAMES, query_ports, http_ports):
                dsms[name] = dsm_factory.start("--query-port", str(query), "--http-port", str(http),
                                               "--lab", self.path)
        except AssertionError:
            for dsm in dsms.values():
                dsm.stop()
            raise
        return dsms

    def fill(self) -> None:
        """ZA10F3K2 heard by bench-a and bench-b; ZB20G4L7 on bench-b; ZC30H5M8 on bench-c with
        statuses; a status for a drive bench-a never heard."""
        a, b, c = (self.dsms[name] for name in NAMES)
        a.announce(announcement("ZA10F3K2"))
        b.announce(announcement("ZA10F3K2"))
        b.announce(announcement("ZB20G4L7", model="ST8000NK0002"))
        c.announce(announcement("ZC30H5M8"))
        send_status(c, "ZC30H5M8", "003", "2026-11-30 03:00:00")
        send_status(c, "ZC30H5M8", "PASS", "2026-11-30 03:10:00")
        send_status(a, "ZD40J6N9", "FAIL", "2026-11-30 03:20:00")
        for name, count in (("bench-a", 1), ("bench-b", 2), ("bench-c", 1)):
            wait_for(lambda name=name, count=count: len(self.dsms[name].query_json("m")) == count,
                     what="%s to hear its drives" % name)


@pytest.fixture
def lab(dsm_factory, tmp_path):
    made = Lab(dsm_factory, tmp_path)
    made.fill()
    return made


def dsmctl(*args: str, **kwargs: Any):
    return run_script([sys.executable, DSMCTL] + list(args), **kwargs)


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# --- dsmctl across the lab --------------------------------------------------------------------
def test_m_across_the_lab_has_a_host_column_and_every_dsms_drives(lab):
    result = dsmctl("m", "--lab", lab.path, "--columns", "serial,state,status")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines == [["HOST", "SERIAL", "STATE", "STATUS"],
                     ["bench-a", "ZA10F3K2", "alive", "-"],
                     ["bench-b", "ZA10F3K2", "alive", "-"],
                     ["bench-b", "ZB20G4L7", "alive", "-"],
                     ["bench-c", "ZC30H5M8", "alive", "PASS"],
                     ["bench-a", "ZD40J6N9", "-", "FAIL"]]


def test_csv_and_json_keep_the_host(lab):
    rows = list(csv.reader(io.StringIO(dsmctl("m", "--csv", "--lab", lab.path,
                                              "ZA10F3K2").stdout)))
    assert rows[0][:2] == ["host", "serial_number"]
    assert [row[:2] for row in rows[1:]] == [["bench-a", "ZA10F3K2"], ["bench-b", "ZA10F3K2"]]
    data = json.loads(dsmctl("m", "--json", "--lab", lab.path).stdout)
    assert sorted(data) == list(NAMES)
    assert sorted(data["bench-b"]) == ["ZA10F3K2", "ZB20G4L7"]
    assert data["bench-b"]["ZB20G4L7"]["model"] == "ST8000NK0002"
    statuses = json.loads(dsmctl("s", "--json", "-n", "all", "--lab", lab.path).stdout)
    assert statuses["bench-c"]["ZC30H5M8"][-1] == {"time_stamp": "2026-11-30 03:10:00",
                                                   "status": "PASS"}
    assert statuses["bench-b"] == {}


def test_s_across_the_lab_lists_each_hosts_statuses(lab):
    result = dsmctl("s", "-n", "all", "--hosts", ",".join(
        "%s:%d" % (LOOPBACK, lab.dsms[name].query_port) for name in NAMES))
    assert result.returncode == 0, result.stderr
    a, c = ("%s:%d" % (LOOPBACK, lab.dsms[name].query_port) for name in ("bench-a", "bench-c"))
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["HOST", "SERIAL", "TIME", "STAMP", "STATUS"],
        [c, "ZC30H5M8", "2026-11-30", "03:00:00", "003"],
        [c, "ZC30H5M8", "2026-11-30", "03:10:00", "PASS"],
        [a, "ZD40J6N9", "2026-11-30", "03:20:00", "FAIL"]]


def test_find_shows_a_drive_on_every_host_that_hears_it(lab):
    result = dsmctl("find", "ZA10F3K2", "ZC30H5M8", "NOPE", "--lab", lab.path, "--json")
    assert result.returncode == 6, result.stderr  # a serial no DSM knows: as m and s
    rows = json.loads(result.stdout)
    assert [(row["serial_number"], row["host"]) for row in rows] == [
        ("ZA10F3K2", "bench-a"), ("ZA10F3K2", "bench-b"), ("ZC30H5M8", "bench-c")]
    assert all(row["interface"] == "lo" and row["source_address"] == LOOPBACK for row in rows)
    assert rows[2]["status"] == "PASS" and rows[2]["state"] == "alive"
    assert result.stderr == "dsmctl: not heard by any DSM asked: NOPE\n"
    table = dsmctl("find", "ZA10F3K2", env=dict(os.environ, DSM_LAB=lab.path))
    assert table.returncode == 0, table.stderr
    assert table.stdout.split("\n")[0].split()[:4] == ["HOST", "SERIAL", "INTERFACE", "SOURCE"]
    assert len(table.stdout.splitlines()) == 3


@pytest.mark.skipif(os.path.exists("/etc/dsm/lab"), reason="this host has a lab file")
def test_find_without_a_lab_file_asks_the_host_dsm(lab, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("DSM_LAB", None)
    b = lab.dsms["bench-b"]
    result = dsmctl("find", "ZB20G4L7", "--host", "%s:%d" % (LOOPBACK, b.query_port), "--csv",
                    env=env)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[1][:3] == ["%s:%d" % (LOOPBACK, b.query_port), "ZB20G4L7", "lo"]
    unix = dsmctl("find", "ZB20G4L7", "--unix", b.run_dir, env=env)
    assert unix.returncode == 2 and "use --host instead of --unix" in unix.stderr


def test_a_stopped_dsm_is_one_line_on_stderr_and_exit_0_unless_strict(lab):
    lab.dsms["bench-b"].stop()
    result = dsmctl("m", "--lab", lab.path, "--timeout", "5")
    no_traceback(result)
    assert result.returncode == 0
    assert result.stderr.startswith("dsmctl: bench-b (127.0.0.1:%d): connection refused"
                                    % lab.dsms["bench-b"].query_port)
    assert len(result.stderr.splitlines()) == 1
    assert "bench-a" in result.stdout and "bench-b" not in result.stdout
    strict = dsmctl("m", "--lab", lab.path, "--strict")
    no_traceback(strict)
    assert strict.returncode == 2
    assert strict.stderr.splitlines()[-1] == "dsmctl: 1 of 3 DSMs did not answer"
    for name in ("bench-a", "bench-c"):
        lab.dsms[name].stop()
    none = dsmctl("find", "ZA10F3K2", "--lab", lab.path)
    no_traceback(none)
    assert none.returncode == 2 and none.stdout == ""
    assert none.stderr.splitlines()[-1] == "dsmctl: 3 of 3 DSMs did not answer"


def test_bad_lab_file_is_refused_with_its_line_number(tmp_path, dsm_factory):
    bad = tmp_path / "lab"
    bad.write_text("labhost1\nlabhost2:70000\n")
    result = dsmctl("m", "--lab", str(bad))
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr == "dsmctl: %s:2: not a port number (1-65535): '70000'\n" % bad
    daemon = dsm_factory.start("--lab", str(bad), wait=False)
    assert daemon.wait_exit() == 2
    assert "%s:2: not a port number" % bad in daemon.log_text()


def test_unknown_host_is_that_hosts_error_not_the_commands(lab):
    result = dsmctl("m", "--hosts", "no-such-host.invalid,%s:%d"
                    % (LOOPBACK, lab.dsms["bench-c"].query_port))
    no_traceback(result)
    assert result.returncode == 0
    assert result.stderr.startswith("dsmctl: no-such-host.invalid (no-such-host.invalid:2203): "
                                    "unknown host")
    assert "ZC30H5M8" in result.stdout


# --- the JSON API for other origins -----------------------------------------------------------
def test_api_lab_lists_the_lab_and_the_json_api_allows_any_origin(lab):
    a = lab.dsms["bench-a"]
    hosts = get_json(a, "/api/lab")["hosts"]
    assert [host["name"] for host in hosts] == list(NAMES)
    assert hosts[1] == {"name": "bench-b", "host": LOOPBACK,
                        "query_port": lab.dsms["bench-b"].query_port,
                        "http_port": lab.dsms["bench-b"].info["http_port"],
                        "url": "http://%s:%d" % (LOOPBACK, lab.dsms["bench-b"].info["http_port"])}
    origin = {"Origin": "http://elsewhere.example"}
    for path in ("/api/drives", "/api/status", "/api/drives/ZA10F3K2", "/api/lab", "/api/nope"):
        response, _ = get(a, path, headers=origin)
        assert response.getheader("Access-Control-Allow-Origin") == "*", path
    for path in ("/", "/metrics", "/lab.js", "/nothing"):
        response, _ = get(a, path, headers=origin)
        assert response.getheader("Access-Control-Allow-Origin") is None, path
    response, _ = get(a, "/")
    policy = response.getheader("Content-Security-Policy")
    assert "connect-src 'self' " + " ".join(host["url"] for host in hosts) + ";" in policy


def test_without_a_lab_api_lab_is_empty_and_the_page_policy_unchanged(dsm_factory):
    dsm = dsm_factory.start("--http-port", str(free_tcp_port()))
    assert get_json(dsm, "/api/lab") == {"hosts": []}
    response, _ = get(dsm, "/")
    assert "connect-src 'self';" in response.getheader("Content-Security-Policy")


# --- the whole-lab page in a real browser -----------------------------------------------------
LAB_PAGE = """(() => {
  const rows = [...document.querySelectorAll("#lab-rows tr")].map((row) =>
    [row.dataset.host, row.dataset.serial, row.dataset.state, row.dataset.statusClass]);
  const banners = [...document.querySelectorAll("#lab-banners .lab-banner")].map((banner) =>
    [banner.dataset.host, banner.innerText]);
  return {view: document.body.dataset.view, rows: rows, banners: banners,
          switchShown: !document.getElementById("view-switch").hidden,
          summary: document.getElementById("lab-summary").innerText};
})()"""


def set_filter(browser: HeadlessChromium, element: str, value: str) -> None:
    browser.evaluate("""(() => { const e = document.getElementById(%s); e.value = %s;
        e.dispatchEvent(new Event("input", {bubbles: true})); })()"""
                     % (json.dumps(element), json.dumps(value)))


def lab_rows(browser: HeadlessChromium) -> List[List[str]]:
    return browser.evaluate(LAB_PAGE)["rows"]


def same_ports_and_state(dsm) -> List[str]:
    """The options that start `dsm` again as the same DSM: its ports, lab file and state dir."""
    kept = []
    for option in ("--query-port", "--http-port", "--lab", "--state-dir"):
        value = [value for name, value in zip(dsm.args, dsm.args[1:]) if name == option][-1]
        kept += [option, value]
    return kept


def rows_become(browser: HeadlessChromium, expected: List[List[str]], what: str,
                columns: int = 4) -> None:
    """Waits until the lab table's rows (their first `columns` fields) are `expected`: the page
    draws on the next frame, not inside the call that changed the data or the filters."""
    wait_for(lambda: [row[:columns] for row in lab_rows(browser)] == expected, timeout=20,
             what=what)


@needs_chromium
def test_page_shows_the_whole_lab_and_a_banner_for_a_stopped_dsm(lab, dsm_factory):
    a = lab.dsms["bench-a"]
    browser = HeadlessChromium("http://%s:%d/" % (LOOPBACK, a.info["http_port"]))
    try:
        page = wait_for(lambda: (lambda p: p if p and p["switchShown"] else None)(
            browser.evaluate(LAB_PAGE)), timeout=20, what="the view switch")
        assert page["view"] == "host"
        browser.evaluate('document.getElementById("view-lab").click()')
        every = [["bench-a", "ZA10F3K2", "alive", "none"], ["bench-b", "ZA10F3K2", "alive", "none"],
                 ["bench-b", "ZB20G4L7", "alive", "none"], ["bench-c", "ZC30H5M8", "alive", "pass"],
                 ["bench-a", "ZD40J6N9", "unannounced", "fail"]]
        rows_become(browser, every, "every DSM's drives on the page")
        assert browser.evaluate("getComputedStyle(document.getElementById('drives')).display") \
            == "none"

        set_filter(browser, "filter-serial", "za10")
        rows_become(browser, [["bench-a", "ZA10F3K2"], ["bench-b", "ZA10F3K2"]], "serial filter", 2)
        set_filter(browser, "filter-serial", "")
        set_filter(browser, "filter-host", "bench-b")
        rows_become(browser, [["bench-b", "ZA10F3K2"], ["bench-b", "ZB20G4L7"]], "host filter", 2)
        set_filter(browser, "filter-host", "")
        set_filter(browser, "filter-state", "unannounced")
        rows_become(browser, [["bench-a", "ZD40J6N9"]], "state filter", 2)
        set_filter(browser, "filter-state", "")
        set_filter(browser, "filter-status", "pass")
        rows_become(browser, [["bench-c", "ZC30H5M8"]], "status filter", 2)
        set_filter(browser, "filter-status", "")
        set_filter(browser, "lab-sort", "host")
        rows_become(browser, sorted(every, key=lambda row: (row[0], row[1])), "sorted by host")
        set_filter(browser, "lab-sort", "serial")
        rows_become(browser, every, "sorted by serial again")
        browser.screenshot(os.path.join(ARTIFACTS, "lab_page.png"))

        c = lab.dsms["bench-c"]
        c.stop()
        page = wait_for(lambda: (lambda p: p if p["banners"] else None)(
            browser.evaluate(LAB_PAGE)), timeout=20, what="a banner for bench-c")
        assert [banner[0] for banner in page["banners"]] == ["bench-c"]
        # Its feed, now ended, had asked for the snapshot in parts (docs/protocol.md).
        ended = wait_for(lambda: browser.evaluate(
            'performance.getEntriesByType("resource").map((e) => e.name)'
            '.filter((name) => name.includes("/api/events"))'), timeout=10,
            what="the ended feed in the page's resource timing")
        assert ended and all(name.endswith("/api/events?parts=1") for name in ended), ended
        assert "does not answer" in page["banners"][0][1]
        # The others stay on screen; bench-c's last data stays too, marked stale.
        assert [row[:2] for row in page["rows"]] == [row[:2] for row in every]
        wait_for(lambda: browser.evaluate(
            'document.querySelector("#lab-rows tr[data-host=bench-c]").classList.contains('
            '"stale")'), timeout=10, what="bench-c's rows in grey")
        wait_for(lambda: "2 of 3 DSMs answering" in browser.evaluate(LAB_PAGE)["summary"],
                 timeout=10, what="the summary to count 2 DSMs answering")
        # ... and keep following their feeds.
        send_status(a, "ZA10F3K2", "FAIL", "2026-11-30 04:00:00")
        rows_become(browser, [every[0][:3] + ["fail"]] + every[1:],
                    "bench-a's new status while bench-c is down")
        browser.screenshot(os.path.join(ARTIFACTS, "lab_page_one_dsm_stopped.png"))

        # bench-c back (same ports, same state): its feed resumes, the banner goes, no duplicates.
        back = dsm_factory.start(*same_ports_and_state(c), mcast_port=c.mcast_port)
        lab.dsms["bench-c"] = back
        wait_for(lambda: not browser.evaluate(LAB_PAGE)["banners"], timeout=20,
                 what="bench-c's banner to go")
        rows_become(browser, [every[0][:3] + ["fail"]] + every[1:], "bench-c's rows back")
        assert not browser.evaluate('document.querySelector("#lab-rows tr[data-host=bench-c]")'
                                    '.classList.contains("stale")')

        browser.evaluate('document.getElementById("view-host").click()')
        assert browser.evaluate(LAB_PAGE)["view"] == "host"
        assert browser.evaluate("getComputedStyle(document.getElementById('drives')).display") \
            != "none"
    finally:
        browser.close()
