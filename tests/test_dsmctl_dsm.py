"""dsmctl.py's DSM commands (m, s, w, send-status), run as a user runs them (a subprocess) against
real DSMs on free loopback ports, plus small fake DSMs for what a real one does not do on demand
(never answering, an error reply, a slow reply). Waiting is on conditions with deadlines, never
fixed sleeps.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Callable, List, Optional

import pytest

from dsm_harness import LOOPBACK, PACKAGE, announcement, free_tcp_port, run_script, wait_for
from DriveStateMonitor import dsmctl

DSMCTL = os.path.join(PACKAGE, "dsmctl.py")
HINT = " \u2014 is it running? (./runDSM)"
TWO_INTERFACES = [
    {"name": "eth0", "mac_addr": "00:c9:58:01:aa:10", "ipv4_addr": "10.20.30.41"},
    {"name": "eth1", "mac_addr": "00:c9:58:01:aa:11", "ipv4_addr": "10.20.31.41"},
]


def ports(dsm) -> List[str]:
    return ["--host", LOOPBACK, "--query-port", str(dsm.query_port),
            "--status-port", str(dsm.status_port)]


def ctl(dsm, *args: str, stdin: Optional[str] = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """dsmctl against `dsm` (None: no DSM options); `stdin`: text piped in (else /dev/null)."""
    command = [sys.executable, DSMCTL] + (ports(dsm) if dsm is not None else []) + list(args)
    if stdin is None:
        return run_script(command, **kwargs)
    return subprocess.run(command, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=30, universal_newlines=True, **kwargs)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def table(result: subprocess.CompletedProcess) -> List[List[str]]:
    """The table's lines split into cells (no cell holds two spaces in these tests)."""
    return [[cell.strip() for cell in line.split("  ") if cell.strip()]
            for line in ok(result).stdout.splitlines()]


def csv_rows(result: subprocess.CompletedProcess) -> List[List[str]]:
    return list(csv.reader(io.StringIO(ok(result).stdout)))


def add_drives(dsm, *serials: str, **extra: Any) -> None:
    for serial in serials:
        dsm.announce(announcement(serial, **extra))
    wait_for(lambda: set(serials) <= set(dsm.query_json("m")), 10, "the drives %s" % (serials,))


def report(dsm, serial: str, status: str, stamp: str) -> None:
    reply = dsm.send_status(json.dumps({"serial_number": serial, "time_stamp": stamp,
                                        "status": status}).encode())
    assert reply == b"\x04", reply


@pytest.fixture
def lab(dsm):
    """A DSM with three drives (ZC has two interfaces) and statuses for ZA (three) and ZB."""
    add_drives(dsm, "ZB", "ZA")
    add_drives(dsm, "ZC", network_interfaces=TWO_INTERFACES, firmware_version="3.2.0")
    for index, status in enumerate(("001", "002", "003")):
        report(dsm, "ZA", status, "2026-11-24 14:2%d" % index)
    report(dsm, "ZB", "000", "2026-11-24 15:00")
    return dsm


# --- m -----------------------------------------------------------------------------------------

def test_m_prints_a_table_sorted_by_serial_with_the_newest_status(lab):
    lines = table(ctl(lab, "m"))
    assert lines[0] == ["SERIAL", "STATE", "MODEL", "FIRMWARE", "IPV4", "LAST SEEN", "STATUS"]
    assert [line[0] for line in lines[1:]] == ["ZA", "ZB", "ZC"]
    za, zb, zc = lines[1:]
    assert za[1:5] == ["alive", "ST4000NK0001", "3.1.7", "10.20.30.41"] and za[-1] == "003"
    assert zb[-1] == "000"
    assert zc[3:5] == ["3.2.0", "10.20.30.41 10.20.31.41"] and zc[-1] == "-"
    last_seen = lab.query_json("m")["ZA"]["last_seen"]
    assert za[5] == last_seen


def test_drives_is_an_alias_of_m(lab):
    assert ok(ctl(lab, "drives")).stdout == ok(ctl(lab, "m")).stdout


def test_m_json_is_the_dsm_s_own_json(lab):
    result = ok(ctl(lab, "m", "--json"))
    assert json.loads(result.stdout) == lab.query_json("m")
    before = ok(ctl(lab, "--json", "m", "ZC", "ZA"))
    chosen = json.loads(before.stdout)
    assert list(chosen) == ["ZA", "ZC"]
    assert chosen["ZC"]["network_interfaces"] == TWO_INTERFACES


def test_m_csv_has_a_header_and_one_row_per_drive(lab):
    rows = csv_rows(ctl(lab, "m", "--csv"))
    assert rows[0] == list(dsmctl.DEFAULT_COLUMNS)
    assert [row[0] for row in rows[1:]] == ["ZA", "ZB", "ZC"]
    assert rows[1][rows[0].index("status")] == "003"
    assert rows[3][rows[0].index("ipv4_addr")] == "10.20.30.41 10.20.31.41"
    bare = csv_rows(ctl(lab, "m", "--csv", "--no-header"))
    assert bare == rows[1:]


def test_m_columns_project_and_expand_each_interface(lab):
    rows = csv_rows(ctl(lab, "m", "--csv", "--columns", "serial_number, *ipv4_addr"))
    assert rows == [["serial_number", "eth0.ipv4_addr", "eth1.ipv4_addr"],
                    ["ZA", "10.20.30.41", ""], ["ZB", "10.20.30.41", ""],
                    ["ZC", "10.20.30.41", "10.20.31.41"]]
    one = csv_rows(ctl(lab, "m", "ZC", "--csv", "--columns",
                       "serial,eth1.ipv4_addr,model,time_stamp"))
    assert one == [["serial_number", "eth1.ipv4_addr", "model", "time_stamp"],
                   ["ZC", "10.20.31.41", "ST4000NK0001", ""]]
    lines = table(ctl(lab, "m", "ZA", "--columns", "serial_number,status,time_stamp"))
    assert lines == [["SERIAL", "STATUS", "TIME STAMP"], ["ZA", "003", "2026-11-24 14:22"]]


def test_m_filters_by_serial_numbers_given_as_arguments(lab):
    lines = table(ctl(lab, "m", "ZC", "ZA"))
    assert [line[0] for line in lines[1:]] == ["ZA", "ZC"]


def test_m_filters_by_serial_numbers_piped_on_stdin(lab):
    result = ctl(lab, "m", "--csv", "--columns", "serial_number", stdin="ZB\n\nZC\n")
    assert csv_rows(result) == [["serial_number"], ["ZB"], ["ZC"]]
    explicit = ctl(lab, "m", "-", "ZA", "--csv", "--no-header", "--columns", "serial_number",
                   stdin="ZC\n")
    assert csv_rows(explicit) == [["ZA"], ["ZC"]]
    everything = ctl(lab, "m", "--all", "--csv", "--no-header", "--columns", "serial_number",
                     stdin="ZB\n")
    assert csv_rows(everything) == [["ZA"], ["ZB"], ["ZC"]]


def test_an_unused_open_pipe_on_stdin_is_no_filter(lab):
    """As `ssh host dsmctl.py m` leaves it: a pipe nobody writes to or closes."""
    proc = subprocess.Popen([sys.executable, DSMCTL] + ports(lab) + [
        "m", "--csv", "--no-header", "--columns", "serial_number"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        proc.wait(timeout=20)  # stdin stays open (communicate() would close it): small output
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert (proc.returncode, out, err) == (0, "ZA\nZB\nZC\n", "")


def test_an_explicit_empty_list_shows_no_drive(lab, tmp_path):
    assert ok(ctl(lab, "m", "-", "--csv", "--no-header", stdin="")).stdout == ""
    empty = tmp_path / "empty.csv"
    empty.write_text("serial_number\n")
    assert ok(ctl(lab, "s", "--drive-list", str(empty), "--no-header")).stdout == ""
    implicit = ok(ctl(lab, "m", "--csv", "--no-header", "--columns", "serial", stdin=""))
    assert implicit.stdout == "ZA\nZB\nZC\n"


def test_m_filters_by_a_drive_list_csv(lab, tmp_path):
    drive_list = tmp_path / "mine.csv"
    drive_list.write_text("serial_number,owner\n# bench 3\nZC,alice\nZA , bob\n")
    result = ctl(lab, "m", "--drive-list", str(drive_list), "--csv", "--no-header",
                 "--columns", "serial_number")
    assert csv_rows(result) == [["ZA"], ["ZC"]]
    piped = ctl(lab, "m", "--drive-list", "-", "--csv", "--no-header", "--columns",
                "serial_number", stdin="Serial Number,x\nZB,1\n")
    assert csv_rows(piped) == [["ZB"]]
    missing = ctl(lab, "m", "--drive-list", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "cannot read the drive list" in missing.stderr


@pytest.mark.parametrize("command", ["m", "s"])
def test_m_and_s_of_a_serial_number_the_dsm_does_not_know_exit_6(lab, command):
    extra = ["--columns", "serial_number"] if command == "m" else []
    result = ctl(lab, command, "ZA", "ZQ", "--csv", "--no-header", *extra)
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert result.stdout.startswith("ZA")  # the known one is still shown
    assert result.stderr == "dsmctl: not known to the DSM (no announcement heard, no status " \
                            "reported): ZQ\n"
    alone = ctl(lab, command, "UNKNOWN_SERIAL")
    assert alone.returncode == 6 and "UNKNOWN_SERIAL" in alone.stderr


def test_m_with_an_unknown_column_is_an_error_listing_the_valid_ones(lab):
    result = ctl(lab, "m", "--columns", "serial_number,modle")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("dsmctl: unknown column 'modle'; valid columns: ")
    for name in ("serial_number", "model", "state", "last_seen", "status", "*F", "eth0.F"):
        assert name in result.stderr
    # Fields a drive really announces, interface forms and aliases are all accepted.
    good = ok(ctl(lab, "m", "--columns", "serial,model,*ipv4_addr,eth0.mac,ipv4,status",
                  "--csv"))
    assert good.stdout.splitlines()[0].startswith("serial_number,model,")


def test_m_all_with_serial_numbers_is_a_usage_error(lab):
    result = ctl(lab, "m", "--all", "ZA")
    assert result.returncode == 2 and "--all" in result.stderr


def test_m_csv_and_json_do_not_go_together(lab):
    assert ctl(lab, "m", "--csv", "--json").returncode == 2


def test_m_shows_a_drive_that_only_reported_statuses(dsm):
    report(dsm, "ZONLY", "002", "2026-11-24 16:00")
    rows = csv_rows(ctl(dsm, "m", "--csv", "--columns", "serial_number,state,status"))
    assert rows == [["serial_number", "state", "status"], ["ZONLY", "", "002"]]


def test_m_shows_an_expired_drive(dsm_factory):
    dsm = dsm_factory.start("--drive-lifetime", "0.3")
    add_drives(dsm, "ZOLD")
    result = wait_for(lambda: (lambda r: r if "expired" in r.stdout else None)(
        ctl(dsm, "m", "--csv", "--no-header", "--columns", "serial_number,state")), 10,
        "the drive to expire")
    assert result.stdout == "ZOLD,expired\n"


def test_m_of_an_empty_dsm(dsm):
    assert ok(ctl(dsm, "m", "--json")).stdout == "{}\n"
    assert csv_rows(ctl(dsm, "m", "--csv")) == [list(dsmctl.DEFAULT_COLUMNS)]


# --- s -----------------------------------------------------------------------------------------

def test_s_prints_the_newest_status_of_each_drive(lab):
    assert table(ctl(lab, "s")) == [["SERIAL", "TIME STAMP", "STATUS"],
                                    ["ZA", "2026-11-24 14:22", "003"],
                                    ["ZB", "2026-11-24 15:00", "000"]]
    assert ok(ctl(lab, "statuses")).stdout == ok(ctl(lab, "s")).stdout


def test_s_n_prints_the_last_n_oldest_first(lab):
    rows = csv_rows(ctl(lab, "s", "-n", "2", "--csv", "ZA"))
    assert rows == [["serial_number", "time_stamp", "status"],
                    ["ZA", "2026-11-24 14:21", "002"], ["ZA", "2026-11-24 14:22", "003"]]


def test_s_json(lab):
    assert json.loads(ok(ctl(lab, "s", "-n", "all", "--json")).stdout) == lab.query_json("s")
    assert json.loads(ok(ctl(lab, "s", "--json", "ZA")).stdout) == {
        "ZA": [{"time_stamp": "2026-11-24 14:22", "status": "003"}]}
    piped = json.loads(ok(ctl(lab, "s", "-n", "5", "--json", stdin="ZB\n")).stdout)
    assert piped == {"ZB": [{"time_stamp": "2026-11-24 15:00", "status": "000"}]}


def test_s_n_must_be_a_count(lab):
    assert ctl(lab, "s", "-n", "0").returncode == 2
    assert ctl(lab, "s", "-n", "some").returncode == 2


# --- w -----------------------------------------------------------------------------------------

def test_w_yes_wipes_and_says_what(lab):
    result = ok(ctl(lab, "w", "--yes"))
    assert result.stdout.startswith("wiped in the DSM at 127.0.0.1:%d: drives: 3, status serials: "
                                    "2, statuses: 4" % lab.query_port)
    assert lab.query_json("m") == {} and lab.query_json("s") == {}


def test_wipe_json_prints_the_dsm_s_answer(lab):
    answer = json.loads(ok(ctl(lab, "wipe", "-y", "--json")).stdout)
    assert answer["wiped"]["drives"] == 3 and answer["wiped"]["statuses"] == 4


def test_w_without_a_terminal_refuses_unless_yes(lab):
    result = ctl(lab, "w")
    assert (result.returncode, result.stdout) == (2, "")
    assert "add --yes" in result.stderr
    piped = ctl(lab, "w", stdin="y\n")
    assert piped.returncode == 2
    assert set(lab.query_json("m")) == {"ZA", "ZB", "ZC"}


def run_on_terminal(args: List[str], answer: str) -> subprocess.CompletedProcess:
    """dsmctl with a pseudo-terminal as standard input: `answer` is typed once it asks."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, DSMCTL] + args, stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
        os.close(slave)
        slave = -1
        with proc:
            os.write(master, answer.encode())  # waits in the terminal until dsmctl reads it
            out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(args, proc.returncode, out, err)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_w_on_a_terminal_asks_first(lab):
    declined = run_on_terminal(ports(lab) + ["w"], "n\n")
    assert declined.returncode == 0, declined.stderr
    assert "Wipe every drive and status in the DSM at 127.0.0.1:%d? [y/N]" % lab.query_port \
        in declined.stderr
    assert "nothing wiped" in declined.stderr and declined.stdout == ""
    assert set(lab.query_json("m")) == {"ZA", "ZB", "ZC"}
    accepted = run_on_terminal(ports(lab) + ["w"], "y\n")
    assert accepted.returncode == 0 and accepted.stdout.startswith("wiped in the DSM at ")
    assert lab.query_json("m") == {}


# --- send-status -------------------------------------------------------------------------------

def test_send_status_stores_it_and_prints_nothing(dsm):
    result = ctl(dsm, "send-status", "ZS1", "002", "--time-stamp", "2026-11-24 14:22")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert dsm.query_json("s") == {"ZS1": [{"time_stamp": "2026-11-24 14:22", "status": "002"}]}


def test_send_status_stamps_now_by_default(dsm):
    before = datetime.datetime.now().replace(microsecond=0)
    ok(ctl(dsm, "send-status", "ZS2", "001"))
    after = datetime.datetime.now()
    stamp = dsm.query_json("s")["ZS2"][0]["time_stamp"]
    assert before <= datetime.datetime.fromisoformat(stamp) <= after


def test_send_status_refused_exits_5_with_the_dsm_s_error(dsm_factory):
    dsm = dsm_factory.start("--max-message", "100")
    result = ctl(dsm, "send-status", "ZS3", "x" * 200)
    assert (result.returncode, result.stdout) == (5, "")
    assert result.stderr.startswith("dsmctl: the DSM at 127.0.0.1:%d refused the status: "
                                    % dsm.status_port)
    assert "longer than 100 bytes" in result.stderr
    assert dsm.query_json("s") == {}


def test_host_with_a_port_replaces_the_port_options(dsm):
    ok(ctl(None, "--host", "%s:%d" % (LOOPBACK, dsm.status_port), "send-status", "ZH", "003"))
    result = ok(ctl(None, "s", "--csv", "--no-header", "--host",
                    "%s:%d" % (LOOPBACK, dsm.query_port)))
    assert result.stdout.startswith("ZH,") and result.stdout.endswith(",003\n")
    bad = ctl(None, "m", "--host", "localhost:99999")
    assert bad.returncode == 2 and "--host" in bad.stderr


# --- the Unix socket ---------------------------------------------------------------------------

def test_unix_socket_path_or_run_dir(lab):
    by_path = ok(ctl(None, "--unix", lab.unix_socket, "m", "--json"))
    assert json.loads(by_path.stdout) == lab.query_json("m")
    by_dir = ok(ctl(None, "s", "--unix", lab.run_dir, "--csv", "--no-header"))
    assert by_dir.stdout.splitlines()[0] == "ZA,2026-11-24 14:22,003"
    ok(ctl(None, "--unix", lab.run_dir, "w", "--yes"))
    assert lab.query_json("m") == {}


# --- cannot connect, timeouts, refusals ----------------------------------------------------------

def test_a_closed_port_exits_2_with_a_clear_message():
    port = free_tcp_port()
    for command in (["m"], ["s"], ["w", "--yes"], ["m", "--json"]):
        result = ctl(None, "--host", LOOPBACK, "--query-port", str(port), *command)
        assert (result.returncode, result.stdout) == (2, ""), command
        assert result.stderr == ("dsmctl: cannot reach the DSM at 127.0.0.1:%d: connection "
                                 "refused%s\n" % (port, HINT)), command
    status = ctl(None, "--host", "%s:%d" % (LOOPBACK, port), "send-status", "Z", "001")
    assert status.returncode == 2
    assert status.stderr == ("dsmctl: cannot reach the DSM's status port at 127.0.0.1:%d: "
                             "connection refused%s\n" % (port, HINT))


def test_a_missing_unix_socket_exits_2(tmp_path):
    result = ctl(None, "--unix", str(tmp_path / "dsm.sock"), "m")
    assert result.returncode == 2
    assert result.stderr == "dsmctl: cannot reach the DSM at %s: no such socket%s\n" % (
        tmp_path / "dsm.sock", HINT)


class FakeDsm:
    """A listening socket on a free loopback port that runs `behave(connection)` for each client,
    in a thread; closed when the test ends."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.behave = behave
        self.accepted = threading.Event()
        self.stop = threading.Event()
        self.connections: List[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        self.connections.append(connection)
        self.accepted.set()
        try:
            self.behave(connection)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for connection in self.connections:
            connection.close()
        self.thread.join(10)


@pytest.fixture
def fake():
    made: List[FakeDsm] = []

    def start(behave: Callable[[socket.socket], None]) -> FakeDsm:
        server = FakeDsm(behave)
        made.append(server)
        return server
    yield start
    for server in made:
        server.close()


def never_answer(fake_dsm_stop: threading.Event) -> Callable[[socket.socket], None]:
    def behave(connection: socket.socket) -> None:
        fake_dsm_stop.wait(30)
    return behave


def test_no_answer_in_time_exits_3(fake):
    stop = threading.Event()
    server = fake(never_answer(stop))
    try:
        result = ctl(None, "--host", "%s:%d" % (LOOPBACK, server.port), "--request-timeout",
                     "0.3", "m")
    finally:
        stop.set()
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == ("dsmctl: the DSM at 127.0.0.1:%d did not answer within 0.3 s "
                             "(waiting to answer m and s)\n" % server.port)


def test_a_connection_closed_before_the_answer_exits_3(fake):
    def close_at_once(connection: socket.socket) -> None:
        connection.recv(16)
        connection.sendall(b'{"ZA": ')  # half an answer
        connection.close()
    server = fake(close_at_once)
    result = ctl(None, "--host", "%s:%d" % (LOOPBACK, server.port), "s")
    assert result.returncode == 3
    assert "closed the connection before answering" in result.stderr


def test_an_error_answer_exits_5(fake):
    def refuse(connection: socket.socket) -> None:
        connection.recv(16)
        connection.sendall(b'{"error": "w (wipe) is only accepted from this host"}\x04')
        connection.recv(16)
    server = fake(refuse)
    result = ctl(None, "--host", "%s:%d" % (LOOPBACK, server.port), "w", "--yes")
    assert (result.returncode, result.stdout) == (5, "")
    assert result.stderr == ("dsmctl: the DSM at 127.0.0.1:%d refused w: w (wipe) is only "
                             "accepted from this host\n" % server.port)


def test_the_original_dsm_s_plain_text_wipe_answer_is_shown(fake):
    def original(connection: socket.socket) -> None:
        connection.recv(16)
        connection.sendall(b"Wipe DSM Success\x04")
        connection.recv(16)
    server = fake(original)
    result = ok(ctl(None, "--host", "%s:%d" % (LOOPBACK, server.port), "w", "--yes"))
    assert result.stdout == "wiped in the DSM at 127.0.0.1:%d: Wipe DSM Success\n" % server.port


def test_ctrl_c_while_waiting_exits_1(fake):
    stop = threading.Event()
    server = fake(never_answer(stop))
    proc = subprocess.Popen([sys.executable, DSMCTL, "--host", "%s:%d" % (LOOPBACK, server.port),
                             "m"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert server.accepted.wait(10)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
        assert proc.returncode == 1
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_slow_answer_gets_a_note_on_a_terminal(fake):
    """The fake DSM answers only once the note has appeared on the terminal: no fixed wait."""
    master, slave = pty.openpty()
    seen = bytearray()
    noted = threading.Event()

    def slow(connection: socket.socket) -> None:
        assert connection.recv(16) == b"m"
        noted.wait(20)
        connection.sendall(b'{"ZSLOW": {"serial_number": "ZSLOW"}}\x04')
        connection.recv(16)

    server = fake(slow)
    proc = subprocess.Popen([sys.executable, DSMCTL, "--host", "%s:%d" % (LOOPBACK, server.port),
                             "m", "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    try:
        def note_shown() -> bool:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:
                    pass
            return b"waiting for the DSM at 127.0.0.1:%d to answer m" % server.port in seen
        wait_for(note_shown, 15, "the progress note")
        noted.set()
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert json.loads(out) == {"ZSLOW": {"serial_number": "ZSLOW"}}
    finally:
        noted.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def test_no_note_without_a_terminal(lab):
    assert ok(ctl(lab, "m")).stderr == ""


# --- help and the pieces, in process -------------------------------------------------------------

def test_help_documents_the_new_commands_and_exit_codes():
    text = " ".join(ok(run_script([sys.executable, DSMCTL, "--help"])).stdout.split())
    for phrase in ("m (drives)", "s (statuses)", "w (wipe)", "send-status", "--host",
                   "--unix", "2 cannot connect to the DSM", "3 the connection broke",
                   "5 the server refused", "w without --yes"):
        assert phrase in text, phrase
    for command in ("m", "s", "w", "send-status"):
        sub = ok(run_script([sys.executable, DSMCTL, command, "--help"]))
        assert "exit codes:" in sub.stdout
    assert "Exit codes:" in dsmctl.__doc__ and "send-status" in dsmctl.__doc__


def test_read_serials_takes_the_first_csv_column():
    lines = ["serial_number,ipv4\n", "\n", "# a comment\n", "ZA,10.0.0.1\n", ' "ZB" ,x\n', "ZC\n"]
    assert dsmctl.read_serials(lines) == ["ZA", "ZB", "ZC"]
    assert dsmctl.read_serials(["Serial\n", "Z1\n"]) == ["Z1"]
    assert dsmctl.read_serials(["Z1\n", "serial\n"]) == ["Z1", "serial"]


def test_expand_columns():
    rows = [{"serial_number": "A", "network_interfaces": [{"name": "eth1", "ipv4_addr": "1"}]},
            {"serial_number": "B", "network_interfaces": [{"name": "eth0", "ipv4_addr": "2"},
                                                          {"ipv4_addr": "3"}],
             "_latest": {"status": "002", "time_stamp": "t"}}]
    columns = dsmctl.expand_columns(["serial", "*ipv4", "ipv4_addr", "status", "eth0.ipv4_addr"],
                                    rows)
    assert [heading for heading, _ in columns] == [
        "serial_number", "eth1.ipv4_addr", "eth0.ipv4_addr", "if1.ipv4_addr", "ipv4_addr",
        "status", "eth0.ipv4_addr"]
    assert [[get(row) for _, get in columns] for row in rows] == [
        ["A", "1", None, None, "1", None, None], ["B", None, "2", "3", "2 3", "002", "2"]]


@pytest.mark.parametrize("text, expected", [
    ("localhost", ("localhost", 2203)), ("dsm1:4000", ("dsm1", 4000)), ("[::1]:5", ("::1", 5)),
    ("::1", ("::1", 2203)), (":7", ("localhost", 7))])
def test_host_option(text, expected):
    options = dsmctl.build_parser().parse_args(["--host", text, "m"])
    assert dsmctl.dsm_address(options, 2203) == expected


def test_bad_host_option():
    options = dsmctl.build_parser().parse_args(["--host", "h:port", "m"])
    with pytest.raises(ValueError):
        dsmctl.dsm_address(options, 2203)
