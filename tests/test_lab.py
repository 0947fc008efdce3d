"""lab.py: the lab file format, and asking many DSMs at once (fake DSMs on loopback listeners:
answering, never answering, answering too much, not JSON, refusing, unknown host names)."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Callable, List, Optional

import pytest
from hypothesis import given, settings, strategies as st

from dsm_harness import LOOPBACK
from DriveStateMonitor import lab
from DriveStateMonitor.lab import LabFileError, LabHost, ask_lab, parse_lab

END = b"\x04"


# --- the lab file -----------------------------------------------------------------------------
def test_lab_file_lines_hosts_ports_names_and_comments():
    hosts = parse_lab("# the lab\n"
                      "labhost1\n"
                      "\n"
                      "labhost2:2213 name=bench-2   # second bench\n"
                      "  10.0.0.7 http=8080 name=rack7\n"
                      "[fd00::7]:2203\n"
                      "[::1] http=2300\n")
    assert hosts == [
        LabHost("labhost1", 2203, 2204, "labhost1", 2),
        LabHost("labhost2", 2213, 2204, "bench-2", 4),
        LabHost("10.0.0.7", 2203, 8080, "rack7", 5),
        LabHost("fd00::7", 2203, 2204, "[fd00::7]:2203", 6),
        LabHost("::1", 2203, 2300, "[::1]", 7),
    ]
    assert hosts[3].address == "[fd00::7]:2203" and hosts[2].http_address == "10.0.0.7:8080"


@pytest.mark.parametrize("line, why", [
    ("labhost1:99999", "not a port number"),
    ("labhost1:", "no port after the colon"),
    ("labhost1:abc", "not a port number"),
    ("fd00::7", "IPv6 address goes in brackets"),
    ("[fd00::zz]:2203", "not an IPv6 address"),
    ("[fd00::7", "not [IPv6]:PORT"),
    ("lab host", "not key=value"),
    ("labhost1 colour=red", "unknown key 'colour'"),
    ("labhost1 name=a name=b", "name= given twice"),
    ("labhost1 name=", "name= must be"),
    ("labhost1 http=0", "not a port number"),
    ("lab/host", "not a host name"),
    ("-labhost", "not a host name"),
    ("a..b", "not a host name"),
])
def test_bad_line_is_refused_with_its_line_number(line, why):
    with pytest.raises(LabFileError) as error:
        parse_lab("# lab\nlabhost0\n" + line + "\n", "lab.txt")
    assert str(error.value).startswith("lab.txt:3: ")
    assert why in str(error.value)


def test_the_same_dsm_or_name_twice_is_refused_naming_both_lines():
    with pytest.raises(LabFileError, match=r"^lab:3: the DSM LabHost1:2203 is already on line 1$"):
        parse_lab("labhost1\nlabhost2\nLabHost1:2203\n", "lab")
    with pytest.raises(LabFileError, match=r"^lab:2: the name b is already on line 1$"):
        parse_lab("h1 name=b\nh2 name=b\n", "lab")


def test_a_lab_file_without_hosts_is_refused():
    with pytest.raises(LabFileError, match="lists no DSM"):
        parse_lab("# nothing yet\n\n", "lab")


def test_read_lab_file_refuses_unreadable_binary_and_huge_files(tmp_path):
    with pytest.raises(LabFileError, match="cannot read the lab file"):
        lab.read_lab_file(str(tmp_path / "missing"))
    binary = tmp_path / "binary"
    binary.write_bytes(b"labhost1\nlabhost2\n\xff\xfe\n")
    with pytest.raises(LabFileError, match=r"binary:3: not UTF-8"):
        lab.read_lab_file(str(binary))
    huge = tmp_path / "huge"
    huge.write_bytes(b"#" * (lab.MAX_LAB_FILE_BYTES + 1))
    with pytest.raises(LabFileError, match="larger than"):
        lab.read_lab_file(str(huge))
    good = tmp_path / "good"
    good.write_bytes(b"\xef\xbb\xbflabhost1 name=a\n")  # a BOM, as Windows editors write
    assert lab.read_lab_file(str(good)) == [LabHost("labhost1", 2203, 2204, "a", 1)]


def test_hosts_option_is_a_lab_file_on_one_line():
    assert lab.parse_hosts_option("h1, h2:2213,[::1]:9") == [
        LabHost("h1", 2203, 2204, "h1", 1), LabHost("h2", 2213, 2204, "h2:2213", 2),
        LabHost("::1", 9, 2204, "[::1]:9", 3)]
    for bad in ("h1,,h2", "h1 name=x", "", "h1:0"):
        with pytest.raises(LabFileError):
            lab.parse_hosts_option(bad)


def test_default_lab_file_is_the_environment_variable_then_the_default_files(tmp_path,
                                                                          monkeypatch):
    assert lab.default_lab_file({"DSM_LAB": "/x/lab"}) == "/x/lab"
    home = tmp_path / "home"
    (home / ".config" / "dsm").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(lab, "DEFAULT_LAB_FILES", (lab.DEFAULT_LAB_FILES[0],
                                                   str(tmp_path / "etc-lab")))
    assert lab.default_lab_file({}) is None
    (tmp_path / "etc-lab").write_text("h1\n")
    assert lab.default_lab_file({}) == str(tmp_path / "etc-lab")
    (home / ".config" / "dsm" / "lab").write_text("h2\n")
    assert lab.default_lab_file({}) == str(home / ".config" / "dsm" / "lab")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_with_a_line_number(text):
    try:
        hosts = parse_lab(text, "f")
    except LabFileError as error:
        assert str(error).startswith("f:")
    else:
        assert hosts and all(0 < host.query_port < 65536 for host in hosts)


# --- asking many DSMs -------------------------------------------------------------------------
class FakeDsms:
    """Loopback listeners served by one thread; each listener's `behaviour(request)` gives the
    bytes to send back (None: never answer, keep the connection open)."""

    def __init__(self) -> None:
        self.listeners: List[socket.socket] = []
        self.behaviours = {}
        self.held: List[socket.socket] = []
        self.stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def add(self, behaviour: Callable[[bytes], Optional[bytes]]) -> LabHost:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOOPBACK, 0))
        sock.listen(64)
        sock.setblocking(False)
        self.listeners.append(sock)
        self.behaviours[sock] = behaviour
        port = sock.getsockname()[1]
        return LabHost(LOOPBACK, port, 2204, "fake%d" % len(self.listeners))

    def start(self) -> "FakeDsms":
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self) -> None:
        import selectors
        selector = selectors.DefaultSelector()
        for sock in self.listeners:
            selector.register(sock, selectors.EVENT_READ)
        while not self.stopping.is_set():
            for key, _ in selector.select(0.05):
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                conn.settimeout(5)
                try:
                    request = conn.recv(100)
                except OSError:
                    conn.close()
                    continue
                reply = self.behaviours[key.fileobj](request)
                if reply is None:
                    self.held.append(conn)
                    continue
                try:
                    conn.sendall(reply)
                except OSError:
                    pass
                conn.close()
        selector.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
        for sock in self.listeners + self.held:
            sock.close()


@pytest.fixture
def fakes():
    servers = FakeDsms()
    yield servers
    servers.stop()


def answering(drives: dict) -> Callable[[bytes], bytes]:
    def reply(request: bytes) -> bytes:
        return b"".join(json.dumps(drives if letter == "m" else {}).encode() + END
                        for letter in request.decode())
    return reply


def test_every_host_answers_in_order_with_its_own_replies(fakes):
    hosts = [fakes.add(answering({"ZA%d" % n: {"state": "alive"}})) for n in range(3)]
    fakes.start()
    answers = ask_lab(hosts, "ms", timeout=10)
    assert [answer.host for answer in answers] == hosts
    assert [answer.error for answer in answers] == [None, None, None]
    assert [answer.replies for answer in answers] == [
        [{"ZA%d" % n: {"state": "alive"}}, {}] for n in range(3)]


def test_each_failure_is_its_hosts_error_and_the_others_still_answer(fakes):
    good = fakes.add(answering({"ZA1": {}}))
    silent = fakes.add(lambda request: None)
    not_json = fakes.add(lambda request: b"<html>" + END)
    refusing = fakes.add(lambda request: b'{"error": "no such query"}' + END)
    short = fakes.add(lambda request: b"{}")  # closes before the end byte
    oversize = fakes.add(lambda request: b"[" + b" " * 5000 + END)
    fakes.start()
    with socket.socket() as closed:
        closed.bind((LOOPBACK, 0))
        refused = LabHost(LOOPBACK, closed.getsockname()[1], 2204, "refused")
    unknown = LabHost("no-such-host.invalid", 2203, 2204, "unknown")
    hosts = [good, silent, not_json, refusing, short, oversize, refused, unknown]
    answers = ask_lab(hosts, "m", timeout=1.5, max_reply_bytes=4096)
    errors = {answer.host.name: answer.error for answer in answers}
    assert errors[good.name] is None and answers[0].replies == [{"ZA1": {}}]
    assert errors[silent.name].startswith("no answer within 1.5 s (waiting for its answer")
    assert "not JSON" in errors[not_json.name]
    assert errors[refusing.name] == "refused m: no such query"
    assert errors[short.name] == "closed the connection after 0 of 1 answers"
    assert errors[oversize.name] == "reply larger than 4096 bytes: refused"
    assert errors["refused"].startswith("connection refused")
    assert errors["unknown"].startswith("unknown host")


def test_a_hundred_hosts_answer_in_about_the_slowest_hosts_time(fakes):
    """80 answer at once, 20 never answer: all 100 are done when the timeout ends, not 20
    timeouts later, and the 80 answers are all there."""
    hosts = [fakes.add(answering({"Z%03d" % n: {}})) for n in range(80)]
    hosts += [fakes.add(lambda request: None) for _ in range(20)]
    fakes.start()
    started = time.monotonic()
    answers = ask_lab(hosts, "m", timeout=2.0)
    took = time.monotonic() - started
    assert sum(answer.error is None for answer in answers) == 80
    assert all(answer.error.startswith("no answer within 2 s") for answer in answers[80:])
    assert 2.0 <= took < 2.0 + 3.0, took  # one timeout (plus a loaded machine's slack), not 20


def test_a_host_name_that_never_resolves_is_bounded_by_the_timeout(monkeypatch):
    """A resolver that hangs (a dead DNS server) costs that host the timeout, nothing more."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "hangs.example" and not kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            release.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        started = time.monotonic()
        answers = ask_lab([LabHost("hangs.example", 2203, 2204, "hangs")], "m", timeout=0.5)
        assert time.monotonic() - started < 5
        assert answers[0].error == "no answer within 0.5 s (resolving its name)"
    finally:
        release.set()


def test_find_drives_shows_a_drive_on_every_host_that_hears_it():
    a, b = LabHost("a", 1, 2, "a"), LabHost("b", 1, 2, "b")
    drive = {"state": "alive", "interface": "eth1", "source_address": "10.1.1.5",
             "last_seen": "2026 Nov 30 03:00:00",
             "network_interfaces": [{"name": "eth0", "ipv4_addr": "10.1.1.5"}, "junk"]}
    answers = [lab.HostAnswer(a, [{"ZA1": drive}, {"ZA1": [{"time_stamp": "t", "status": "7"}]}],
                              None, 0.1),
               lab.HostAnswer(b, None, "connection refused", 0.1),
               lab.HostAnswer(b, [{"ZA1": dict(drive, state="expired")}, {"ZB2": ["odd"]}],
                              None, 0.1)]
    rows = lab.find_drives(answers, ["ZB2", "ZA1", "ZZ9"])
    assert [(row["serial_number"], row["host"], row["state"]) for row in rows] == [
        ("ZB2", "b", "unannounced"), ("ZA1", "a", "alive"), ("ZA1", "b", "expired")]
    assert rows[1]["interface"] == "eth1" and rows[1]["source_address"] == "10.1.1.5"
    assert rows[1]["ipv4_addr"] == "10.1.1.5" and rows[1]["status"] == "7"
    assert rows[0]["status"] == "odd"
