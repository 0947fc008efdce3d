"""What a newcomer's trial of the README found (wave 2, piece N), each fixed and kept fixed:

- the live page's empty-table hint was there twice (one never shown) and named port 3110 even for
  a DSM on another status port; now one hint, no fixed port, shown while no drive is known;
- the simulator's banner said "1 flaky" without saying which drive, while the README has you watch
  "the flaky drive"; it names them now;
- `send-status` stamped "2026-11-30T10:01:05" where test scripts and the simulator write
  "2026-11-30 10:01:05" (one format in one `s` table);
- `stopDSM` of another user's DSM said only "it belongs to another user"; it names the pid, the
  user and the fix now;
- a run dir another user left behind was reported with its fix twice, and by uid only;
- `./runDSM | head -1` ended "[Errno 32] Broken pipe", exit 2, for a DSM that had started;
- a user with an unwritable home was told of the log dir, and of the state dir only next time.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from DriveStateMonitor import drive_simulator
from DriveStateMonitor.launcher import stop_dsm
from DriveStateMonitor import start_report
from DriveStateMonitor.start_report import start_failure
from dsm_harness import PACKAGE, TEST_GROUP, free_udp_port, short_temp_dir, wait_for
from test_web_integration import HeadlessChromium, needs_chromium, start_web_dsm

DSMCTL = os.path.join(PACKAGE, "dsmctl.py")
INDEX_HTML = os.path.join(PACKAGE, "web", "index.html")
DEFAULT_PORTS = ("2203", "3110", "3111", "2204", "8123")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids = []
        self.empty_text = []
        self._in_empty = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.append(attributes["id"])
        if attributes.get("id") == "empty":
            self._in_empty += 1

    def handle_endtag(self, tag):
        if tag == "p" and self._in_empty:
            self._in_empty -= 1

    def handle_data(self, data):
        if self._in_empty:
            self.empty_text.append(data)


def test_the_page_has_one_empty_hint_naming_no_fixed_port():
    parser = _Ids()
    with open(INDEX_HTML) as f:
        parser.feed(f.read())
    assert len(parser.ids) == len(set(parser.ids)), sorted(parser.ids)  # ids are unique
    hint = " ".join("".join(parser.empty_text).split())
    assert "simulate --drives 5" in hint and "runDSM" in hint
    for port in DEFAULT_PORTS:  # this DSM's ports may be any: runDSM printed them
        assert port not in hint, (port, hint)


@needs_chromium
def test_an_empty_dsm_s_page_shows_the_hint_and_the_colour_legend(dsm_factory):
    dsm = start_web_dsm(dsm_factory)
    # The page keeps its change feed open (--dump-dom would wait for it forever): read the DOM
    # over DevTools once the page is connected.
    browser = HeadlessChromium("http://127.0.0.1:%d/" % dsm.info["http_port"])
    try:
        dom = wait_for(lambda: (lambda d: d if d and 'data-refreshes=' in d else None)(
            browser.evaluate("document.documentElement.outerHTML")), timeout=20,
            what="the page to draw its first data")
    finally:
        browser.close()
    assert 'data-connection="ok"' in dom, dom[-2000:]
    hint = re.search(r'<p id="empty"[^>]*>', dom).group(0)
    assert "hidden" not in hint  # no drive known: the hint is shown
    legend = dom[dom.index('id="legend"'):]
    for meaning in ("PASS", "FAIL", "3XX script failure", "01X trouble reaching the DSM"):
        assert meaning in legend, meaning


def test_the_simulator_banner_names_the_flaky_drives():
    drives = drive_simulator.make_drives(5, seed=1)
    result = subprocess.run(
        [sys.executable, DSMCTL, "simulate", "--drives", "5", "--flaky", "2", "--rounds", "1",
         "--interval", "0.1", "--mcast-group", TEST_GROUP, "--mcast-port", str(free_udp_port())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
        universal_newlines=True)
    assert result.returncode == 0, result.stderr
    assert "; 2 flaky (%s, %s);" % (drives[0]["serial_number"], drives[1]["serial_number"]) \
        in result.stdout.splitlines()[0]
    # The README's watch example watches the default simulation's flaky drive by name.
    assert drive_simulator.flaky_names(drives, 1) == "Z84G7YVX"
    assert drive_simulator.flaky_names(drives, 5) == ", ".join(
        d["serial_number"] for d in drives[:3]) + ", ..."


def test_send_status_stamps_now_in_the_lab_s_form(dsm):
    result = subprocess.run(
        [sys.executable, DSMCTL, "--host", "127.0.0.1:%d" % dsm.status_port, "send-status",
         "ZSTAMP1", "002"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
        universal_newlines=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    stamp = dsm.query_json("s")["ZSTAMP1"][0]["time_stamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", stamp), stamp


@needs_root
def test_stop_dsm_of_another_user_names_the_pid_the_user_and_the_fix(dsm):
    nobody = pwd.getpwnam("nobody")
    os.chmod(os.path.dirname(dsm.run_dir), 0o755)  # others may look, as in /tmp
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # stopDSM as nobody (its Python under /root is not nobody's to run)
        code = 99
        try:
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w")  # pytest's capture is not fd 2
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            code = stop_dsm(["--run-dir", dsm.run_dir])
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        stderr = f.read().decode()
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 4, stderr
    assert "pid %d" % dsm.pid in stderr and "user root" in stderr, stderr
    assert "sudo ./stopDSM" in stderr and "Traceback" not in stderr
    assert dsm.proc.poll() is None  # still running


def test_a_start_failure_naming_its_option_is_not_told_the_fix_twice():
    log = ("2026-11-30 04:13:00,000 ERROR dsm: the run dir /tmp/D (--run-dir) belongs to uid 0 "
           "(root), not to this user, uid 65534 (nobody); choose another --run-dir (or have its "
           "owner remove it)\n")
    text = start_failure(2, log, "/x/log.txt")
    assert text.count("--run-dir") == 2 and "fix:" not in text  # "(--run-dir)" and the fix
    taken = start_failure(2, "2026 ERROR dsm: cannot bind the status port 3110: Address already "
                             "in use\n", "/x/log.txt")
    assert "fix: choose another with --status-port PORT" in taken.splitlines()[2]


def test_run_dsm_into_a_closed_pipe_still_reports_the_start_as_it_went():
    """`./runDSM | head -1` used to end "runDSM: [Errno 32] Broken pipe", exit 2, for a DSM that
    had started."""
    base = short_temp_dir()
    run_dir = os.path.join(base, "run")
    args = [sys.executable, os.path.join(PACKAGE, "runDSM"), "--interfaces", "lo",
            "--query-port", "0", "--status-port", "0", "--statserv-port", "0", "--http-port", "0",
            "--mcast-group", TEST_GROUP, "--mcast-port", str(free_udp_port()),
            "--run-dir", run_dir, "--log-dir", os.path.join(base, "logs"),
            "--state-dir", os.path.join(base, "state")]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before runDSM says anything
    try:
        result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=write_end,
                                stderr=subprocess.PIPE, timeout=60, universal_newlines=True)
        os.close(write_end)
        assert (result.returncode, result.stderr) == (0, "")
        assert start_report.read_info(run_dir)["pid"] > 0  # it did start
    finally:
        stopped = subprocess.run([sys.executable, os.path.join(PACKAGE, "stopDSM"), "--run-dir",
                                  run_dir], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
    assert stopped.returncode == 0


def test_run_dsm_names_every_dir_it_cannot_use_at_once(tmp_path):
    """A lab user whose home is not writable (nobody's is /nonexistent) lacks both the log and the
    state dir: runDSM used to name only the log dir, and the state dir only on the next try."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, os.path.join(PACKAGE, "runDSM"), "--interfaces", "lo",
         "--run-dir", str(tmp_path / "run"), "--log-dir", str(blocker / "logs"),
         "--state-dir", str(blocker / "state")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
        universal_newlines=True)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "--log-dir DIR" in lines[0] and "--state-dir DIR" in lines[1], lines
    assert not (tmp_path / "run" / "dsm.json").exists()  # nothing started
