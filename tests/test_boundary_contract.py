"""The boundary contract end to end: whatever any port accepts is served on every output.

For generated inputs on every port — announcement datagrams, statuses (JSON and Python literals,
pretty-printed or not), Status Server PUTs, HTTP requests — fed to a DriveStateMonitor in process,
every output must still work afterwards: `m`, `s`, /api/drives, /api/drives/<serial>, /api/status
(strict JSON), /metrics (strict UTF-8, parsed by prometheus_client), SAVE (and the saved file
loads), snapshot + restore (the restored DSM answers the same), GET/LS/STAT over the whole tree, and
dsmctl.py's m/s views. A few integration cases then send the issue's inputs to a real daemon.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, Iterator, List
from unittest import mock
from urllib.parse import quote

import pytest

from DriveStateMonitor.announcement import REJECT_REASONS
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from DriveStateMonitor import dsmctl
from DriveStateMonitor.daemon import DriveStateMonitor
from DriveStateMonitor.intake import MAX_INT_DIGITS
from DriveStateMonitor.http_protocol import HttpServerConnection, Request, RequestError
from DriveStateMonitor.metrics import render_metrics
from DriveStateMonitor.options import parse_options
from DriveStateMonitor.persistence import write_snapshot
from DriveStateMonitor.query_protocol import Query
from DriveStateMonitor.status_protocol import StatusError, StatusParser, parse_status
from DriveStateMonitor.statserv_protocol import StatServSession
from DriveStateMonitor.statserv_tree import Tree
from DriveStateMonitor.web_service import WebApp, WebData

from dsm_harness import END, LOOPBACK, PACKAGE, free_tcp_port, recv_all, recv_until_end, wait_for

NOW = 1_700_000_000.0
DSMCTL = os.path.join(PACKAGE, "dsmctl.py")


# --- an in-process DSM ----------------------------------------------------------------------------
@contextlib.contextmanager
def in_process_dsm(state_dir: str, *extra: str) -> Iterator[DriveStateMonitor]:
    """A DriveStateMonitor with its stores and journal, no sockets: inputs go straight in."""
    run_dir = os.path.join(os.path.dirname(state_dir), "run")
    options = parse_options(["--state-dir", state_dir, "--run-dir", run_dir, "--interfaces", "lo",
                             "--fsync", "no"] + list(extra))
    daemon = DriveStateMonitor(options, clock=lambda: NOW)
    daemon._restore()
    daemon._iface_names = {1: "lo"}
    try:
        yield daemon
    finally:
        daemon.journal.close()
        daemon.loop.close()


def strict_json(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError("non-JSON constant %s in output" % name)
    # The HTTP API may hand out a view of the cached reply (shared by slow readers).
    return json.loads(bytes(data).decode("utf-8"), parse_constant=refuse)


def statserv(daemon: DriveStateMonitor, lines: bytes, save_dir: str = "") -> List[str]:
    session = StatServSession(daemon.tree, lambda: NOW, is_local=True, save_dir=save_dir or None)
    session.receive_data(lines)
    output = session.data_to_send().decode("utf-8")  # strict: every reply is UTF-8
    session.connection_lost()
    return output.splitlines()


def web_app(daemon: DriveStateMonitor) -> WebApp:
    return WebApp(WebData(daemon._http_drives_json, daemon._http_drive_json,
                          daemon._http_status_json, daemon.metrics_facts), {}, lambda: NOW)


def get(app: WebApp, path: str):
    return app.answer(Request("GET", path, (1, 1), (("host", "dsm"),), True))


def serve_everything(daemon: DriveStateMonitor, work_dir: str) -> None:
    """Asserts that every output of `daemon` can be served, whatever it holds."""
    m = daemon.answer_query(Query("m"), "test")
    s = daemon.answer_query(Query("s"), "test")
    assert m.endswith(END) and s.endswith(END)
    drives, statuses = strict_json(m[:-1]), strict_json(s[:-1])

    app = web_app(daemon)
    for path in ["/api/drives", "/api/status"] + ["/api/drives/" + quote(serial, safe="")
                                                  for serial in set(drives) | set(statuses)]:
        reply = get(app, path)
        assert reply.status == 200, (path, reply)
        strict_json(reply.body)
    metrics = get(app, "/metrics")
    assert metrics.status == 200
    families = list(text_string_to_metric_families(metrics.body.decode("utf-8")))
    assert any(family.name == "dsm_drive_info" for family in families)
    render_metrics(daemon.metrics_facts()).encode("utf-8")

    # SAVE, and the file it wrote loads
    save_dir = os.path.join(work_dir, "save")
    os.makedirs(save_dir, exist_ok=True)
    assert statserv(daemon, b"SAVE\n", save_dir) == ["."]
    assert sorted(os.listdir(save_dir)) == ["statserv.save"]  # no .tmp left behind
    with open(os.path.join(save_dir, "statserv.save"), encoding="utf-8") as f:
        # /drives values are derived from the drive store, whose own limits (a status's size)
        # are larger than a client object's --max-value: the reader takes what SAVE wrote.
        Tree.load(f.read(), max_value_bytes=1 << 24)

    # GET, LS and STAT over the whole tree
    directories, seen = ["/"], 0
    while directories and seen < 2000:
        path = directories.pop()
        listing = statserv(daemon, b"LS %s\n" % quote(path, safe="/").encode())
        assert listing[-1] == ".", (path, listing)
        for line in listing[:-1]:
            seen += 1
            name = line[2:].split(" = ", 1)[0]
            if line.endswith("/") and " = " not in line:
                directories.append(name if name.startswith("/") else path.rstrip("/") + "/" + name)
                continue
            full = name if name.startswith("/") else path.rstrip("/") + "/" + name
            for command in (b"GET", b"STAT"):
                reply = statserv(daemon, b"%s %s\n" % (command, quote(full, safe="/").encode()))
                assert not reply[-1].startswith("! PROTOCOL"), (command, full, reply)

    # dsmctl's views of m and s
    def fake_query(options: Any, letters: str) -> list:
        return [(reply, strict_json(reply[:-1])) for reply in
                (daemon.answer_query(Query(letter), "dsmctl") for letter in letters)]

    with mock.patch.object(dsmctl, "query", fake_query):
        for argv in (["m", "--all"], ["m", "--all", "--csv"], ["m", "--all", "--json"],
                     ["s", "--all", "-n", "all"], ["s", "--all", "--json"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert dsmctl.main(argv) == 0, argv
            out.getvalue().encode("utf-8")

    # snapshot + restore answers the same
    restored_dir = os.path.join(work_dir, "restored", "state")
    os.makedirs(restored_dir)
    snapshot = daemon.state.snapshot(NOW)
    write_snapshot(restored_dir, 1, snapshot)
    with in_process_dsm(restored_dir) as restored:
        assert strict_json(restored.answer_query(Query("m"), "t")[:-1]) == drives
        assert strict_json(restored.answer_query(Query("s"), "t")[:-1]) == statuses


# --- generated inputs ----------------------------------------------------------------------------
# Every code point, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(blacklist_categories=()), max_size=12)
numbers = st.one_of(st.integers(), st.integers(min_value=-10 ** 5000, max_value=10 ** 5000),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "1" * 4301]))
leaf = st.one_of(st.none(), st.booleans(), numbers, any_text)


def nested(depth: int, inner: Any) -> Any:
    for _ in range(depth):
        inner = {"n": inner}
    return inner


json_like = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(any_text, inner, max_size=3), max_leaves=10)
deep = st.builds(nested, st.sampled_from([5, 31, 33, 200, 980]), leaf)
value = st.one_of(json_like, deep)


def to_json_text(value: Any, indent: Any = None) -> str:
    """JSON text, with raw number tokens for the sampled strings (`1e400`, `NaN`...)."""
    text = json.dumps(value, indent=indent, allow_nan=True, default=str)
    for token in ("1e400", "-1e400", "NaN", "Infinity", "1" * 4301):
        text = text.replace('"%s"' % token, token)
    return text


@st.composite
def announcements(draw: Any) -> bytes:
    fields = {"serial_number": draw(st.one_of(any_text.filter(str.strip), st.integers())),
              "model": draw(st.one_of(any_text, value)), "port": draw(st.one_of(numbers, value))}
    fields.update(draw(st.dictionaries(any_text, value, max_size=3)))
    try:
        return to_json_text(fields).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        return b'{"serial_number": "X"}'


@st.composite
def statuses(draw: Any) -> bytes:
    status = {"serial_number": draw(st.one_of(any_text, st.integers())),
              "time_stamp": draw(st.one_of(numbers, any_text)), "status": draw(value)}
    form = draw(st.sampled_from(["json", "indented", "python"]))
    try:
        if form == "python":
            return str(status).encode("utf-8", "surrogatepass")
        return to_json_text(status, indent=2 if form == "indented" else None).encode("utf-8")
    except (RecursionError, ValueError):
        return b"{}"


puts = st.tuples(st.sampled_from(["string", "int", "float", "bool"]),
                 st.one_of(any_text, st.sampled_from(["1e400", "inf", "nan", "-inf", "9" * 5000,
                                                      "1" * 4300, "TRUE", "0x10", "1_0"])))
http_requests = st.one_of(
    st.builds(lambda path: b"GET /api/drives/%s HTTP/1.1\r\nHost: d\r\n\r\n" % path,
              st.binary(max_size=40).map(lambda b: quote(b, safe="").encode())),
    st.builds(lambda name, val: b"GET /metrics HTTP/1.1\r\nHost: d\r\n%s: %s\r\n\r\n" % (name, val),
              st.sampled_from([b"Content-Length", b"Connection", b"X"]),
              st.one_of(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
                        st.just(b"9" * 5000))))


@given(st.lists(announcements(), max_size=4), st.lists(statuses(), max_size=4),
       st.lists(puts, max_size=3), st.lists(http_requests, max_size=3))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_whatever_any_port_accepts_every_output_serves(datagrams, messages, put_values, requests):
    work_dir = tempfile.mkdtemp(prefix="dsm-contract-")
    try:
        with in_process_dsm(os.path.join(work_dir, "state")) as daemon:
            for datagram in datagrams:
                daemon._on_datagram(datagram, ("127.0.0.1", 8123), 1)
            for message in messages:
                parser = StatusParser()
                framed = parser.receive_data(message) + parser.eof_received()
                assert len(framed) <= 1  # one message, at most one reply
                for frame in framed:
                    if frame.message is None:
                        continue
                    try:
                        report = parse_status(frame.message)
                    except StatusError:
                        continue
                    daemon.store_status(report)
            for index, (type_name, text) in enumerate(put_values):
                encoded = quote(text.encode("utf-8", "surrogatepass"), safe="").encode()
                statserv(daemon, b"TOUCH /t/o%d TYPE=%s\nPUT /t/o%d %s\n"
                         % (index, type_name.encode(), index, encoded))
            app = web_app(daemon)
            for data in requests:
                for event in HttpServerConnection().receive_data(data):
                    if isinstance(event, RequestError):
                        assert 400 <= event.status < 600
                    else:
                        assert app.answer(event).status in (200, 404)
            serve_everything(daemon, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


# --- the issue's own inputs, in process (each fails without its fix) ----------------------------
ISSUE_DATAGRAMS = [
    b'{"serial_number": "SURR", "model": "\\ud800"}',
    b'{"serial_number": "INF", "port": 1e400}',
    b'{"serial_number": "DEEP", "x": ' + b'{"a": ' * 980 + b"1" + b"}" * 980 + b"}",
    b'{"serial_number": "BIG", "x": ' + b"9" * 4400 + b"}",
]
ISSUE_STATUSES = [
    b'{"serial_number": "S1", "time_stamp": 1, "status": "\\ud800"}',
    b"{'serial_number': 'S2', 'time_stamp': 1, 'status': '\\ud800'}",
    b'{"serial_number": "S3", "time_stamp": 1e400, "status": 1}',
    b"{'serial_number': 'S4', 'time_stamp': 1, 'status': {1: 'a', 'b': 2}}",
]


def test_the_issues_inputs_are_refused_and_every_output_still_serves(tmp_path):
    with in_process_dsm(str(tmp_path / "state")) as daemon:
        for datagram in ISSUE_DATAGRAMS:
            daemon._on_datagram(datagram, ("127.0.0.1", 8123), 1)
        for message in ISSUE_STATUSES:
            with pytest.raises(StatusError):
                parse_status(message)
        assert strict_json(daemon.answer_query(Query("m"), "t")[:-1]) == {}
        # Each is refused; which reason depends on where the Python's own JSON parser stops
        # (a nesting depth it cannot recurse into is "not JSON" on some versions).
        rejected = sum(daemon.counters["announcements_rejected_" + reason]
                       for reason in REJECT_REASONS)
        assert rejected == len(ISSUE_DATAGRAMS)
        assert daemon.counters["announcements_rejected_unservable"] >= 3
        assert daemon.loop.handler_failures == 0
        serve_everything(daemon, str(tmp_path))


def test_save_failing_on_its_text_leaves_no_temporary_file(tmp_path):
    tree = Tree()
    session = StatServSession(tree, lambda: NOW, is_local=True, save_dir=str(tmp_path))
    with mock.patch.object(tree, "dump", return_value="bad \ud800 text"):
        session.receive_data(b"SAVE\n")
    assert session.data_to_send().startswith(b"! ")
    assert os.listdir(str(tmp_path)) == []


# --- against a real daemon -----------------------------------------------------------------------
def http_get(port: int, path: str, extra: bytes = b"") -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: d\r\nConnection: close\r\n%s\r\n"
                     % (path.encode(), extra))
        return recv_all(sock, timeout=10)


def test_real_dsm_refuses_the_issues_inputs_and_keeps_serving_after_a_restart(dsm_factory):
    port = free_tcp_port()
    dsm = dsm_factory.start("--http-port", str(port))
    state_dir = dsm.args[dsm.args.index("--state-dir") + 1]
    dsm.announce(b'{"serial_number": "GOOD", "model": "caf\\u00e9 \\ud83d\\ude00", "port": 8123}')
    for datagram in ISSUE_DATAGRAMS:
        dsm.announce(datagram)
    wait_for(lambda: "GOOD" in dsm.query_json("m"), 10, "the good drive")
    pretty = json.dumps({"serial_number": "PRETTY", "time_stamp": 1,
                         "status": {"a": [1, 2], "b": "ok"}}, indent=2).encode()
    with socket.create_connection((LOOPBACK, dsm.status_port), timeout=10) as sock:
        sock.sendall(pretty)  # the old way: no terminator, wait for the end byte
        assert recv_until_end(sock, timeout=10) == END
    crasher = (b"{'serial_number': 'A', 'time_stamp': 1, 'status': "
               + b"+".join([b"1"] * 200_000) + b"}")
    for message in ISSUE_STATUSES + [crasher]:
        reply = dsm.send_status(message)
        assert reply.endswith(END) and b'"error"' in reply, reply[:200]
    for _ in range(8):  # more scrapes than the kill switch ever allowed
        response = http_get(port, "/metrics")
        assert response.startswith(b"HTTP/1.1 200")
        list(text_string_to_metric_families(response.split(b"\r\n\r\n", 1)[1].decode("utf-8")))
    for path in ("/api/drives", "/api/status", "/api/drives/GOOD"):
        response = http_get(port, path)
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        strict_json(response.split(b"\r\n\r\n", 1)[1])
    assert http_get(port, "/", b"Content-Length: " + b"9" * 5000 + b"\r\n").startswith(
        b"HTTP/1.1 413")
    with dsm.connect_statserv() as sock:
        sock.sendall(b"SAVE\nLOGOFF\n")
        assert recv_all(sock, timeout=10) == b".\n"
    result = subprocess.run([sys.executable, DSMCTL, "--host", "%s:%d" % (LOOPBACK, dsm.query_port),
                             "m", "--all"], capture_output=True, timeout=30)
    assert result.returncode == 0 and b"GOOD" in result.stdout, result
    before_m, before_s = dsm.query_json("m"), dsm.query_json("s")
    assert set(before_m) == {"GOOD"} and set(before_s) == {"PRETTY"}
    log = dsm.log_text()
    assert "Traceback" not in log and "kill switch" not in log

    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0
    again = dsm_factory.start("--state-dir", state_dir)
    assert set(again.query_json("m")) == {"GOOD"}
    assert again.query_json("s") == before_s


@pytest.mark.parametrize("digits", [MAX_INT_DIGITS + 1, 8000])
def test_status_server_int_with_too_many_digits_is_a_type_error_on_every_python(digits, tmp_path):
    # 3.8-3.10 converted it; a snapshot holding it could then not be read by 3.11+.
    with in_process_dsm(str(tmp_path / "state"), "--max-value", "20000") as daemon:
        reply = statserv(daemon, b"TOUCH /n TYPE=int\nPUT /n %s\nPUT /n %s\nGET /n\n"
                         % (b"9" * digits, b"9" * MAX_INT_DIGITS))
        assert reply[0] == "." and reply[1].startswith("! TYPE") and reply[2] == "."
        assert reply[3] == '. "%s"' % ("9" * MAX_INT_DIGITS)
