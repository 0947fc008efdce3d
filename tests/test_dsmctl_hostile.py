"""What dsmctl does with hostile data: terminal control codes in drive fields, statuses and Status
Server values (escaped for people, exact in --json/--csv), lab peers whose replies cannot be
decoded (one stderr line each, the others printed), and a standard output it cannot write (exit 7,
one line; `| head` quiet). dsmctl runs as a user runs it (a subprocess) against fake DSMs on free
loopback ports that answer exactly the bytes a test gives, and real DSMs where one is needed.
"""
from __future__ import annotations

import csv
import io
import json
import os
import resource
import socketserver
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import pytest
from hypothesis import given, strategies as st

from dsm_harness import (END, LOOPBACK, PACKAGE, TEST_GROUP, announcement, free_udp_port,
                         wait_for)
from DriveStateMonitor import lab
from DriveStateMonitor.dsmctl import cell_text, expand_columns
from DriveStateMonitor.statserv_client import StatServClient
from DriveStateMonitor.terminal_text import TERMINAL_CONTROLS, escape_controls, json_text

DSMCTL = os.path.join(PACKAGE, "dsmctl.py")
# ESC [2J clears the screen, BEL, CR hides what came before, U+009B is a one-character CSI,
# DEL, a right-to-left override, a lone surrogate (JSON "\ud800").
HOSTILE = "x\x1b[2J\x07\r\x9b31m\x7f\u202e\ud800y"
HOSTILE_SHOWN = "x\\x1b[2J\\x07\\x0d\\x9b31m\\x7f\\u202e\\ud800y"
SERIAL = "ZH\x1b]0;owned\x07"            # a serial number that retitles the window
SERIAL_SHOWN = "ZH\\x1b]0;owned\\x07"
DRIVES = {SERIAL: {"state": "alive", "model": HOSTILE, "firmware_version": {"nested": HOSTILE},
                   "network_interfaces": [{"name": "eth\x1b[2J0", "ipv4_addr": HOSTILE}],
                   "last_seen": "2026 Nov 30 10:00:05"}}
STATUSES = {SERIAL: [{"time_stamp": HOSTILE, "status": HOSTILE}]}


def reply_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("ascii")


class FakeDsm:
    """A query port on a free loopback port: each whitespace-separated letter of a request is
    answered with `replies[letter]` and the end byte, then the connection closes."""

    def __init__(self, replies: Dict[str, bytes], name: str = "fake") -> None:
        self.replies = replies
        self.name = name
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(10)
                try:
                    request = self.request.recv(100)
                    for letter in request.decode("ascii", "replace").split():
                        self.request.sendall(outer.replies.get(letter, b"{}") + END)
                except OSError:  # the client left (a reply it refused as too large)
                    pass

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return "%s:%d" % (LOOPBACK, self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fakes():
    started: List[FakeDsm] = []

    def start(replies: Dict[str, bytes], name: str = "fake") -> FakeDsm:
        fake = FakeDsm(replies, name)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def dsmctl(*args: str, stdout: Any = subprocess.PIPE, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, DSMCTL] + list(args), stdin=subprocess.DEVNULL,
                          stdout=stdout, stderr=subprocess.PIPE, timeout=60, **kwargs)


def on(fake: FakeDsm) -> List[str]:
    return ["--host", LOOPBACK, "--query-port", str(fake.port)]


def terminal_safe(data: bytes) -> str:
    """`data` as UTF-8 (strictly), asserted to hold no character a terminal acts on but newlines."""
    text = data.decode("utf-8")
    found = TERMINAL_CONTROLS.findall(text.replace("\n", ""))
    assert not found, (found, text[:500])
    return text


def write_lab(tmp_path, hosts: Dict[str, FakeDsm]) -> str:
    path = tmp_path / "lab"
    path.write_text("".join("%s name=%s\n" % (fake.address, name) for name, fake in hosts.items()))
    return str(path)


# --- one escaping function --------------------------------------------------------------------

def test_escape_controls_escapes_c0_del_c1_separators_bidi_and_surrogates_only():
    assert escape_controls(HOSTILE) == HOSTILE_SHOWN
    assert escape_controls("\x00\t\n\x85\u2028\u200f\u2066") == \
        "\\x00\\x09\\x0a\\x85\\u2028\\u200f\\u2066"
    kept = "plain ASCII \\x1b, caf\u00e9, \u00a0, \u4e2d\u6587, \U0001f600"
    assert escape_controls(kept) == kept


@given(st.text())
def test_any_text_escaped_has_nothing_a_terminal_acts_on_and_encodes(text):
    shown = escape_controls(text)
    assert not TERMINAL_CONTROLS.search(shown)
    shown.encode("utf-8")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(JSON_VALUES)
def test_json_for_a_terminal_is_the_same_data_and_nothing_a_terminal_acts_on(value):
    for ascii_only in (False, True):
        text = json_text(value, ensure_ascii=ascii_only)
        assert json.loads(text) == value
        assert not TERMINAL_CONTROLS.search(text)
        text.encode("utf-8")


# --- every human-readable output escapes; --json and --csv stay exact --------------------------

@pytest.mark.parametrize("args", [
    ["m"], ["m", "--columns", "serial_number,model,firmware_version,*ipv4_addr,status,time_stamp"],
    ["s"], ["s", "-n", "all"], ["m", "--no-header"]])
def test_m_and_s_tables_show_control_codes_escaped(fakes, args):
    fake = fakes({"m": reply_bytes(DRIVES), "s": reply_bytes(STATUSES)})
    result = dsmctl(*(on(fake) + args))
    assert result.returncode == 0, result.stderr
    out = terminal_safe(result.stdout)
    assert SERIAL_SHOWN in out and HOSTILE_SHOWN in out
    if "*ipv4_addr" in args[-1]:
        assert "ETH\\x1b[2J0.IPV4 ADDR" in out.splitlines()[0]


@pytest.mark.parametrize("command", [["m"], ["s"], ["find", SERIAL]])
def test_lab_tables_and_find_show_control_codes_escaped(fakes, command):
    fake = fakes({"m": reply_bytes(DRIVES), "s": reply_bytes(STATUSES)})
    result = dsmctl(*(command + ["--hosts", fake.address]))
    assert result.returncode == 0, result.stderr
    out = terminal_safe(result.stdout)
    assert SERIAL_SHOWN in out and HOSTILE_SHOWN in out


@pytest.mark.parametrize("command", [["m"], ["s"], ["m", "--hosts"], ["s", "--hosts"],
                                     ["find", SERIAL, "--hosts"]])
def test_json_keeps_the_data_exact_and_escapes_it_the_json_way(fakes, command):
    fake = fakes({"m": reply_bytes(DRIVES), "s": reply_bytes(STATUSES)})
    args = command + [fake.address] if command[-1] == "--hosts" else on(fake) + command
    result = dsmctl(*(args + ["--json"]))
    assert result.returncode == 0, result.stderr
    data = json.loads(terminal_safe(result.stdout))
    if command[0] == "find":
        assert data[0]["serial_number"] == SERIAL and data[0]["status"] == HOSTILE
        return
    if "--hosts" in command:
        data = data[fake.address]
    assert data == (DRIVES if command[0] == "m" else STATUSES)


def test_csv_keeps_every_character_but_a_lone_surrogate_which_utf8_cannot_hold(fakes):
    fake = fakes({"m": reply_bytes(DRIVES), "s": reply_bytes(STATUSES)})
    result = dsmctl(*(on(fake) + ["m", "--csv", "--columns", "serial_number,model,status"]))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout.decode("utf-8"), newline="")))
    exact = HOSTILE.replace("\ud800", "\\ud800")
    assert rows == [["serial_number", "model", "status"], [SERIAL, exact, exact]]


def test_a_reply_that_is_not_utf8_is_shown_not_a_traceback(fakes):
    bad = b'{"ZU": {"state": "alive", "model": "bad\xff\xfe\xc2\x9b"}}'
    fake = fakes({"m": bad, "s": b"{}"})
    for args in (["m"], ["m", "--json"]):
        result = dsmctl(*(on(fake) + args))
        assert result.returncode == 0, result.stderr
        out = terminal_safe(result.stdout)
        assert "bad\ufffd\ufffd" in (out if args == ["m"] else json.loads(out)["ZU"]["model"])


def test_errors_that_repeat_what_a_dsm_sent_are_escaped(fakes, tmp_path):
    refusing = fakes({"m": reply_bytes({"error": "no\x1b]0;owned\x07 \x9b2J"})})
    result = dsmctl(*(on(refusing) + ["m", "--json"]))
    assert result.returncode == 5
    err = terminal_safe(result.stderr)
    assert err.count("\n") == 1 and "no\\x1b]0;owned\\x07 \\x9b2J" in err
    good = fakes({"m": reply_bytes(DRIVES), "s": reply_bytes(STATUSES)})
    result = dsmctl("m", "--lab", write_lab(tmp_path, {"good": good, "refusing": refusing}))
    assert result.returncode == 0
    assert "\\x1b]0;owned\\x07" in terminal_safe(result.stderr)
    unknown = dsmctl(*(on(good) + ["m", "ZQ\x1b[2J"]))
    assert unknown.returncode == 6 and "ZQ\\x1b[2J" in terminal_safe(unknown.stderr)


@pytest.fixture
def hostile_tree(dsm):
    client = StatServClient("test", dsm.statserv_socket, timeout=10)
    assert client.logon()
    assert client.touch("/lab/evil", comment=HOSTILE.replace("\ud800", ""))
    assert client.put("/lab/evil", HOSTILE.replace("\ud800", ""))
    yield dsm, client
    client.logoff()


@pytest.mark.parametrize("command", [["get", "/lab/evil"], ["ls", "/lab"], ["tree", "/lab"],
                                     ["stat", "/lab/evil"]])
def test_status_server_values_are_shown_escaped(hostile_tree, command):
    dsm, _ = hostile_tree
    result = dsmctl("--server", dsm.statserv_socket, *command)
    assert result.returncode == 0, result.stderr
    out = terminal_safe(result.stdout)
    assert "x\\x1b[2J\\x07" in out and "\\x9b31m" in out and "\\x7f" in out and "\\u202e" in out
    if command[0] != "get":  # the value quoted as the server shows it: CR was already \r there
        return
    assert out == HOSTILE_SHOWN.replace("\\ud800", "") + "\n"
    exact = dsmctl("--server", dsm.statserv_socket, "--json", *command)
    assert json.loads(terminal_safe(exact.stdout))["value"] == HOSTILE.replace("\ud800", "")


def test_watch_shows_a_change_escaped(hostile_tree):
    dsm, client = hostile_tree
    watch = subprocess.Popen([sys.executable, DSMCTL, "--server", dsm.statserv_socket, "watch",
                              "/lab/evil", "--count", "1", "--timeout", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Changed until the watch (MONITOR registered at some point) has printed its one line.
        wait_for(lambda: client.put("/lab/evil", "\x1b[2J\x9b" + str(os.urandom(2).hex()))
                 and watch.poll() is not None, 20, "the watch to print the change")
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
    assert watch.returncode == 0, err
    line = terminal_safe(out)
    assert '/lab/evil = "\\x1b[2J\\x9b' in line


def test_the_simulators_lines_are_escaped(tmp_path):
    result = dsmctl("simulate", "--interface", "lo\x1b[2J", "--rounds", "1",
                    "--mcast-group", TEST_GROUP, "--mcast-port", str(free_udp_port()))
    assert result.returncode == 2
    assert "lo\\x1b[2J" in terminal_safe(result.stderr)


# --- lab replies that cannot be decoded: one line for that host, the others printed ------------

# Deep enough for every Python's parser to give up (RecursionError): 3.13's takes 5,000 levels.
DEEP = 100000
BAD_M_REPLIES = {
    "deep-list": b"[" * DEEP,
    "deep-object": b'{"a":' * DEEP,
    "deep-balanced": b"[" * DEEP + b"]" * DEEP,
    "not-json": b"<html>\x1b[2J</html>",
    "a-list": b"[1, 2]",
    "object-of-numbers": b'{"ZN": 5}',
    "interfaces-a-number": b'{"ZN": {"network_interfaces": 5}}',
    "interfaces-of-strings": b'{"ZN": {"network_interfaces": ["eth0"]}}',
}
BAD_S_REPLIES = {
    "history-a-string": b'{"ZN": "002"}',
    "history-of-numbers": b'{"ZN": [2]}',
    "deep-s": b"[" * DEEP,
}


def test_every_undecodable_peer_is_one_line_and_the_good_dsms_rows_are_printed(
        dsm, fakes, tmp_path):
    dsm.announce(announcement("ZGOOD1"))
    wait_for(lambda: "ZGOOD1" in dsm.query_json("m"), 10, "ZGOOD1 in m")
    hosts = {"good": type("Real", (), {"address": "%s:%d" % (LOOPBACK, dsm.query_port)})()}
    for name, bad in BAD_M_REPLIES.items():
        hosts[name] = fakes({"m": bad, "s": b"{}"})
    for name, bad in BAD_S_REPLIES.items():
        hosts[name] = fakes({"m": b"{}", "s": bad})
    path = write_lab(tmp_path, hosts)
    m_bad = set(BAD_M_REPLIES)
    s_bad = set(BAD_S_REPLIES)
    for args, failing in ((["m"], m_bad | s_bad), (["m", "--csv"], m_bad | s_bad),
                          (["m", "--json"], m_bad), (["s"], s_bad), (["s", "--json"], s_bad),
                          (["find", "ZGOOD1"], m_bad | s_bad),
                          (["find", "ZGOOD1", "--json"], m_bad | s_bad)):
        result = dsmctl(*(args + ["--lab", path]))
        assert result.returncode == 0, (args, result.stderr)
        err = terminal_safe(result.stderr).splitlines()
        assert sorted(line.split()[1] for line in err) == sorted(failing), (args, err)
        assert all(line.startswith("dsmctl: ") and "Traceback" not in line for line in err)
        out = terminal_safe(result.stdout)
        if args[0] == "s":
            continue  # the good DSM has no status
        if "--json" in args:
            data = json.loads(out)
            assert ("ZGOOD1" in data["good"]) if args[0] == "m" else data[0]["host"] == "good"
        else:
            assert "ZGOOD1" in out and "good" in out
    strict = dsmctl("m", "--lab", path, "--strict")
    assert strict.returncode == 2 and "DSMs did not answer" in strict.stderr.decode()


def test_a_lab_of_only_undecodable_peers_exits_2(fakes, tmp_path):
    hosts = {name: fakes({"m": bad, "s": b"{}"}) for name, bad in BAD_M_REPLIES.items()}
    result = dsmctl("m", "--lab", write_lab(tmp_path, hosts))
    assert result.returncode == 2 and result.stdout == b""
    err = terminal_safe(result.stderr).splitlines()
    assert len(err) == len(hosts) + 1 and "Traceback" not in result.stderr.decode()


def test_a_peer_reply_over_the_limit_is_its_hosts_error(fakes, tmp_path):
    good = fakes({"m": reply_bytes({"ZG": {"state": "alive"}}), "s": b"{}"})
    huge = fakes({"m": b'"' + b"x" * (lab.MAX_REPLY_BYTES + 10) + b'"', "s": b"{}"})
    result = dsmctl("m", "--lab", write_lab(tmp_path, {"good": good, "huge": huge}))
    assert result.returncode == 0
    assert result.stderr.decode().splitlines() == [
        "dsmctl: huge (%s): reply larger than %d bytes: refused"
        % (huge.address, lab.MAX_REPLY_BYTES)]
    assert "ZG" in result.stdout.decode()


def test_one_dsm_answering_too_deep_is_exit_5_with_one_line(fakes):
    fake = fakes({"m": b"[" * DEEP, "s": b"{}"})
    result = dsmctl(*(on(fake) + ["m"]))
    assert result.returncode == 5
    assert result.stderr.decode().splitlines() == [
        "dsmctl: the DSM at %s answered m with JSON nested too deep to read (%d bytes)"
        % (fake.address, DEEP)]


@given(JSON_VALUES, JSON_VALUES)
def test_any_json_reply_is_refused_or_read_and_shown_without_raising(m_value, s_value):
    data = json.dumps(m_value).encode() + END + json.dumps(s_value).encode() + END
    replies, error = lab.parse_replies(data, "ms")
    assert (replies is None) != (error is None)
    if replies is None:
        return
    drives, statuses = replies
    answer = lab.HostAnswer(lab.LabHost(LOOPBACK, 1, 2, "h"), replies, None, 0.0)
    rows = lab.find_drives([answer], list(drives) + list(statuses))
    for row in rows:
        [escape_controls(cell_text(row[name])) for name in row]
    table_rows = []
    for serial, drive in drives.items():
        row = dict(drive)
        row.setdefault("serial_number", serial)
        history = statuses.get(serial)
        if history:
            row["_latest"] = history[-1]
        table_rows.append(row)
    columns = expand_columns(["serial_number", "state", "model", "ipv4_addr", "*ipv4_addr",
                              "status", "eth0.mac_addr"], table_rows)
    for row in table_rows:
        [escape_controls(cell_text(get(row))) for _, get in columns]


# --- standard output that cannot be written ----------------------------------------------------

@pytest.fixture
def dsm_fake(fakes):
    return fakes({"m": reply_bytes(DRIVES), "s": reply_bytes(STATUSES),
                  "w": reply_bytes({"wiped": {"drives": 1}})})


def dsm_commands(fake: FakeDsm) -> List[List[str]]:
    return [on(fake) + ["m"], on(fake) + ["m", "--json"], on(fake) + ["s", "--csv"],
            on(fake) + ["w", "--yes"], ["m", "--hosts", fake.address],
            ["find", SERIAL, "--hosts", fake.address], ["--help"], ["simulate", "--help"],
            ["simulate", "--rounds", "1", "--interval", "0.1", "--mcast-group", TEST_GROUP,
             "--mcast-port", str(free_udp_port())]]


def statserv_commands(dsm) -> List[List[str]]:
    server = ["--server", dsm.statserv_socket]
    return [server + ["get", "/dsm/pid"], server + ["ls", "/dsm"], server + ["tree", "/dsm"],
            server + ["stat", "/dsm/pid"], server + ["get", "--json", "/dsm/pid"]]


def test_a_full_disk_is_one_line_and_exit_7_for_every_command(dsm_fake, dsm):
    for command in dsm_commands(dsm_fake) + statserv_commands(dsm):
        with open("/dev/full", "w") as full:
            result = dsmctl(*command, stdout=full)
        assert (result.returncode, result.stderr.decode()) == (
            7, "dsmctl: cannot write standard output: no space left on device\n"), command


def test_a_closed_standard_output_is_reported_and_a_silent_command_still_works(dsm_fake, dsm):
    def closed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, DSMCTL]
                              + list(args), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=60)

    for command in dsm_commands(dsm_fake) + statserv_commands(dsm):
        result = closed(*command)
        assert (result.returncode, result.stderr.decode()) == (
            7, "dsmctl: cannot write standard output: it is closed\n"), command
    quiet = closed("--host", LOOPBACK, "--status-port", str(dsm.status_port), "send-status",
                   "ZQUIET", "002")
    assert (quiet.returncode, quiet.stderr) == (0, b"")
    assert "ZQUIET" in dsm.query_json("s")


def test_a_read_only_standard_output_is_reported(dsm_fake):
    with open(os.devnull) as read_only:
        result = dsmctl(*(on(dsm_fake) + ["m"]), stdout=read_only)
    assert (result.returncode, result.stderr.decode()) == (
        7, "dsmctl: cannot write standard output: bad file descriptor\n")


def test_head_reading_one_line_of_a_long_output_is_quiet_and_exit_0(fakes):
    many = {"Z%06d" % n: {"state": "alive", "model": "ST4000NK0001" * 4} for n in range(5000)}
    fake = fakes({"m": reply_bytes(many), "s": b"{}"})
    for args in (["m"], ["m", "--csv"], ["m", "--json"], ["m", "--hosts", fake.address]):
        command = " ".join([sys.executable, DSMCTL] + (args if "--hosts" in args
                                                         else on(fake) + args))
        result = subprocess.run(["bash", "-c", "set -o pipefail; %s | head -1" % command],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=60)
        assert (result.returncode, result.stderr) == (0, b""), args
        assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("command", [["m", "ZNOPE"], ["s", "ZNOPE"], ["find", "ZNOPE"],
                                     ["m", "ZNOPE", "--json"]])
def test_a_serial_no_dsm_knows_exits_6_across_the_lab_as_for_one_dsm(fakes, command):
    fake = fakes({"m": reply_bytes(DRIVES), "s": reply_bytes(STATUSES)})
    result = dsmctl(*(command + ["--hosts", fake.address]))
    assert result.returncode == 6, result.stderr
    assert result.stderr.decode().count("ZNOPE") == 1


def test_an_unwritable_standard_error_keeps_each_command_s_own_exit_code(dsm_fake, dsm):
    """stderr full (`2>/dev/full`) or closed (`2>&-`): the error line is dropped, the exit code
    is the command's (before: 1, a keyboard interrupt's, from a traceback nobody could see), and
    with stderr closed no error text lands on standard output (print(file=None) writes there: a
    script's `value=$(dsmctl.py get X 2>&-)` got the error as the value)."""
    server = ["--server", dsm.statserv_socket]
    cases = [(server + ["get", "/no/such/object"], 5), (on(dsm_fake) + ["m", "ZNOSUCH"], 6),
             (["--host", "%s:1" % LOOPBACK, "m"], 2), (server + ["get", "/dsm/pid"], 0),
             (["no-such-command"], 2)]
    for command, code in cases:
        with open("/dev/full", "w") as full:
            result = subprocess.run([sys.executable, DSMCTL] + command, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=full, timeout=60)
        assert result.returncode == code, (command, result.returncode)
        closed = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, DSMCTL]
                                + command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                timeout=60)
        assert closed.returncode == code, (command, closed.returncode)
        assert b"dsmctl:" not in closed.stdout and b"Traceback" not in closed.stdout, command
    both = subprocess.run(["sh", "-c", 'exec "$@" >/dev/full 2>&-', "sh", sys.executable, DSMCTL]
                          + server + ["get", "/dsm/pid"], stdin=subprocess.DEVNULL, timeout=60)
    assert both.returncode == 7


class RawPeer:
    """A loopback server that answers every connection with `behave(sock)` (in a thread): a DSM
    or Status Server gone wrong. Stopped (listener closed, threads left to die) by the test."""

    def __init__(self, behave) -> None:
        outer = self
        self.stopping = threading.Event()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(10)
                try:
                    behave(self.request, outer.stopping)
                except OSError:  # the client gave up: what the test wants
                    pass

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def _drip(first: bytes, handshake: bytes = b""):
    """Reads a request, sends `handshake` whole, then `first`, then a byte every 0.2 s (bounded:
    at most 300 of them, or until the test stops the peer)."""
    def behave(sock, stopping) -> None:
        sock.recv(4096)
        if handshake:
            sock.sendall(handshake)
            sock.recv(4096)
        sock.sendall(first)
        for _ in range(300):
            if stopping.wait(0.2):
                return
            sock.sendall(b"x")
    return behave


def _flood(sock, stopping) -> None:
    """Reads a request, then sends a line that never ends, as fast as the client reads (bounded:
    1 GiB, or until the client leaves)."""
    sock.recv(4096)
    blob = b"x" * 65536
    for _ in range(16384):
        if stopping.is_set():
            return
        sock.sendall(blob)


@pytest.mark.parametrize("command", [["m"], ["s"], ["m", "--json"], ["w", "--yes"]])
def test_a_dsm_that_drips_its_answer_fails_in_bounded_time_with_exit_3(command):
    """A peer that sends a byte every 0.2 s kept `dsmctl --host PEER m` waiting for ever (each
    byte restarted --request-timeout). Past the timeout a reply must arrive at 64 KiB/s or more."""
    peer = RawPeer(_drip(b'{"A": {"model": "'))
    try:
        started = time.monotonic()
        result = dsmctl("--host", "%s:%d" % (LOOPBACK, peer.port), "--request-timeout", "1",
                        *command)
        assert time.monotonic() - started < 15
        assert result.returncode == 3, result.stderr
        assert b"did not answer within" in result.stderr and b"KiB/s" in result.stderr
    finally:
        peer.stop()


def test_a_status_server_that_drips_or_floods_fails_in_bounded_time_and_memory():
    """The Status Server client (dsmctl get/ls/tree/stat, and lab scripts): a server that drips
    its reply held it for ever; one that sends a line without end grew it without bound (7.9 GB
    in 20 s seen). Now TIMEOUT past the pace, and PROTOCOL past 16 MiB in one line."""
    ok_register = b". registered\n"
    for behave, code, text in [(_drip(b"* a", ok_register), 3, b"no answer"),
                               (_drip(b"* a"), 2, b"cannot connect"),
                               (_flood, 2, b"longer than")]:
        peer = RawPeer(behave)
        try:
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, DSMCTL, "--server", "%s:%d" % (LOOPBACK, peer.port),
                 "--request-timeout", "1", "get", "/x"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)))
            assert time.monotonic() - started < 15
            assert text in result.stderr, result.stderr
            assert result.returncode in (code, 2, 3), result.returncode
        finally:
            peer.stop()
