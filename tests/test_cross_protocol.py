"""Ports speak only their protocol (http_lines.py): an HTTP request (a browser's cross-protocol
form POST) on the status or Status Server port ends the connection at its first HTTP line, with one
error naming the HTTP port, counted as bad input; nothing from that line on (head or body) is acted
on. Split at every position, in memory; then over real sockets, and from a real headless Chromium."""
from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor.http_lines import MAX_HELD, HttpLineGuard, is_http_line
from DriveStateMonitor.query_protocol import FOREIGN_HTTP, QueryParser
from DriveStateMonitor.statserv_service import StatServConnection
from DriveStateMonitor.statserv_tree import Tree
from DriveStateMonitor.status_service import StatusConnection
from dsm_harness import END, LOOPBACK, free_tcp_port, recv_all, wait_for
from test_event_loop import FakeTransport, StatusSink
from test_status_oneshot import served
from test_web_integration import CHROMIUM, CHROMIUM_FLAGS, needs_chromium

STATUS = b'{"serial_number": "XPOST", "time_stamp": 1, "status": "pwned"}'


def form_post(body: bytes, method: bytes = b"POST", target: bytes = b"/") -> bytes:
    """What Chromium sends for a text/plain form POST to a DSM port (its header lines, in order)."""
    return (method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:3110\r\nConnection: keep-alive"
            b"\r\nContent-Length: %d\r\nCache-Control: max-age=0\r\nOrigin: null\r\n"
            b"Content-Type: text/plain\r\nUser-Agent: Mozilla/5.0 HeadlessChrome\r\n"
            b"Accept: text/html\r\nSec-Fetch-Site: cross-site\r\n\r\n" % len(body)) + body


def splits(data: bytes):
    """`data` cut in two at every position, and in three at every pair of positions (short data)."""
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    if len(data) <= 60:
        for i in range(len(data) + 1):
            for j in range(i, len(data) + 1):
                yield [data[:i], data[i:j], data[j:]]


# --- the rule: which lines are HTTP --------------------------------------------------------------
@pytest.mark.parametrize("line", [
    b"POST / HTTP/1.1", b"GET /index.html HTTP/1.0\r", b"PRI * HTTP/2.0", b"OPTIONS * HTTP/1.1",
    b"FOO /x HTTP/1.1", b"m-search * HTTP/1.1", b"CONNECT example.com:80 HTTP/1.1",
    b"Host: labhost:3111", b"host:x", b"HOST : x", b"Origin: null", b"Content-Type: text/plain",
    b"User-Agent: curl/8", b"Sec-Fetch-Mode: navigate", b"Cookie: a=b", b"Referer: http://x/",
])
def test_http_request_and_header_lines_are_http(line):
    assert is_http_line(line)


@pytest.mark.parametrize("line", [
    b"GET /x", b"PUT /a 1", b'PUT /a "HTTP/1.1"', b"PUT /a 1 HTTP/1.1", b"TOUCH /x COMMENT=Host:",
    b"LS", b"m", STATUS, b"{'serial_number': 'A', 'time_stamp': 1, 'status': 'Host: x'}",
    b"hello DSM", b"Traceback (most recent call last):", b"Hostname: x", b"X-Host: y",
    b"GET / HTTP/1", b"GET  / HTTP/1.1",
])
def test_protocol_lines_and_garbage_are_not_http(line):
    assert not is_http_line(line)


# --- the guard: nothing at or after the first HTTP line is passed on ---------------------------
@pytest.mark.parametrize("before", [b"", b"LS /\n", STATUS + b"\n"])
@pytest.mark.parametrize("request_", [
    form_post(STATUS + b"\r\n"), form_post(b"TOUCH /x\r\nPUT /x 1\r\nSAVE\r\n"),
    form_post(STATUS, method=b"PATCH", target=b"/api"),
    b"Host: x\r\n\r\n" + STATUS,  # a header line alone (after a request line too long to hold)
])
def test_the_guard_passes_exactly_what_came_before_the_http_line_at_every_split(before, request_):
    data = before + request_
    for parts in splits(data):
        guard = HttpLineGuard()
        passed, found = b"", False
        for part in parts:
            out, found = guard.receive_data(part)
            passed += out
        held, found_at_end = guard.eof_received()
        assert found and found_at_end and held == b"" and passed == before, parts


LINES = st.lists(st.sampled_from([
    b"LS /", b"GET /x", b"PUT /x 1", b"TOUCH /a", b"GET /x y", b"HELP", STATUS, b"hello",
    b"GET /x HTTP", b'PUT /a "HTTP/1.1"', b"Hostname: x", b"{'a': 'Host: x'}", b"\x04", b"",
    b"POSTMAN", b"H", b"Se",
]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(LINES, st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.data())
def test_the_guard_passes_every_other_byte_unchanged_in_order(lines, newline, final_newline,
                                                                data):
    stream = newline.join(lines) + (newline if final_newline else b"")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    guard = HttpLineGuard()
    passed = b""
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        out, found = guard.receive_data(stream[start:end])
        assert not found
        passed += out
    held, found = guard.eof_received()
    assert not found and passed + held == stream



@settings(max_examples=300, deadline=None)
@given(LINES, st.sampled_from([b"POST / HTTP/1.1", b"host:x", b"HOST : x", b"Origin: null",
                               b"Sec-Fetch-Mode: navigate", b"GET /x HTTP/1.0\r"]),
       st.integers(0, 8), st.data())
def test_an_http_line_among_pipelined_commands_is_found_wherever_it_is(lines, http_line, at,
                                                                       data):
    # Chunks of complete commands without ":" or " HTTP/" skip the regular expression: an HTTP
    # line anywhere among them, in any chunk, is still found and nothing from it on is passed.
    lines = [line for line in lines if not is_http_line(line)]
    at = min(at, len(lines))
    before = b"".join(line + b"\n" for line in lines[:at])
    stream = before + http_line + b"\n" + b"".join(line + b"\n" for line in lines[at:])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    guard = HttpLineGuard()
    passed, found = b"", False
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        out, found = guard.receive_data(stream[start:end])
        passed += out
    held, found_at_end = guard.eof_received()
    assert found and found_at_end and held == b"" and passed == before

def test_a_line_that_cannot_become_http_is_passed_at_once_and_a_long_one_is_not_held():
    guard = HttpLineGuard()
    assert guard.receive_data(b"hello DSM") == (b"hello DSM", False) and not guard.holding
    guard = HttpLineGuard()
    assert guard.receive_data(b"POST /") == (b"", False) and guard.holding
    long_target = b"POST /" + b"a" * MAX_HELD
    assert guard.receive_data(long_target[6:]) == (long_target, False) and not guard.holding
    # its Host: line, which follows, still ends the connection
    assert guard.receive_data(b" HTTP/1.1\r\nHost: x\r\n\r\n" + STATUS) == (b" HTTP/1.1\r\n", True)


# --- the status port's connection ------------------------------------------------------------------
def status_outcome(parts, http_port=8080):
    transport = FakeTransport()
    sink = StatusSink()
    connection = StatusConnection(transport, sink.store, sink.bad_input, http_port=http_port)
    for part in parts:
        connection.data_received(part)
    if not transport.closing:
        connection.eof_received()
    return b"".join(transport.writes), sink.reports, sink.bad, transport.closing


@pytest.mark.parametrize("body", [STATUS, STATUS + b"\r\n", b"a=" + STATUS + b"\r\n",
                                  b"{'serial_number': 'XPOST', 'time_stamp': 1,\r\n 'status': 2}"])
def test_a_post_to_the_status_port_gets_one_error_naming_the_http_port_and_stores_nothing(body):
    data = form_post(body)
    for parts in splits(data):
        reply, stored, bad, closing = status_outcome(parts)
        assert stored == [] and closing, parts
        assert reply.count(END) == 1 and reply.endswith(END), (parts, reply)
        error = json.loads(reply[:-1])["error"]
        assert "HTTP request" in error and "port 8080 (--http-port)" in error
        assert bad == [error]


def test_statuses_before_the_http_line_are_stored_and_answered_first():
    reply, stored, bad, closing = status_outcome([STATUS + b"\n" + form_post(STATUS)])
    assert [report.serial_number for report in stored] == ["XPOST"] and closing
    assert reply.startswith(END) and reply.count(END) == 2 and len(bad) == 1


def test_the_error_says_so_when_the_http_port_is_off():
    reply, _, _, _ = status_outcome([form_post(STATUS)], http_port=None)
    assert "--http-port) is off here" in json.loads(reply[:-1])["error"]


def test_garbage_on_the_status_port_still_gets_its_error_at_once():
    transport = FakeTransport()
    sink = StatusSink()
    connection = StatusConnection(transport, sink.store, sink.bad_input)
    connection.data_received(b"hello DSM")
    assert len(transport.writes) == 1 and b"not a status object" in transport.writes[0]


def test_a_held_line_start_counts_as_a_partial_request():
    transport = FakeTransport()
    sink = StatusSink()
    connection = StatusConnection(transport, sink.store, sink.bad_input)
    connection.data_received(b"POST /x")
    assert transport.writes == [] and connection.has_partial_request()


@pytest.mark.parametrize("data", [form_post(STATUS), form_post(STATUS + b"\r\n"),
                                  b"POST / HTTP/1.1\r\n" + STATUS])
def test_a_post_takes_the_general_path_from_the_one_shot_and_stores_nothing(data):
    # The one-shot path (a lab script's one status) takes only bytes that begin with `{`.
    one_shot = served(data, one_shot=True)
    assert one_shot == served(data, one_shot=False)
    reply, stored, bad, closes = one_shot
    assert stored == [] and len(bad) == 1 and closes == 1
    assert reply.count(END) == 1 and b"HTTP request" in reply


# --- the Status Server port's connection -------------------------------------------------------------
def statserv_outcome(parts, http_port=8080):
    transport = FakeTransport()
    tree = Tree()
    bad = []
    connection = StatServConnection(transport, tree, lambda: 1000.0, is_local=False,
                                    on_shutdown=lambda: None, save_dir=None,
                                    bad_input=lambda source, reason: bad.append(reason),
                                    http_port=http_port)
    for part in parts:
        connection.data_received(part)
    if not transport.closing:
        connection.eof_received()
    return b"".join(transport.writes), tree, bad, transport.closing


@pytest.mark.parametrize("before", [b"", b"TOUCH /mine\n"])
def test_a_post_to_the_statserv_port_runs_none_of_its_lines(before):
    data = before + form_post(b"TOUCH /pwned\r\nPUT /pwned yes\r\nREMOVE /mine\r\n")
    for parts in splits(data):
        reply, tree, bad, closing = statserv_outcome(parts)
        assert closing and tree.kind("/pwned") is None, parts
        assert (tree.kind("/mine") is not None) == bool(before)
        lines = reply.decode().splitlines()
        assert lines[-1].startswith("! PROTOCOL HTTP request on the DSM's Status Server port; "
                                    "HTTP requests go to port 8080 (--http-port)")
        assert lines[:-1] == (["."] if before else []) and len(bad) == 1


def test_statserv_commands_that_look_like_a_request_start_still_run():
    reply, tree, bad, closing = statserv_outcome([b"TOUCH /a\nPUT /a ", b'"HTTP/1.1"\nGET /a\n'])
    assert reply == b'.\n.\n. "HTTP/1.1"\n' and bad == []


# --- the query port: the same rule -----------------------------------------------------------------
@pytest.mark.parametrize("data", [b"FOO / HTTP/1.1\r\nHost: x\r\n\r\nw\n", b"Host: x\r\n\r\nw",
                                  b"POST / HTTP/1.1\r\n\r\nw", b"PATCH /w HTTP/1.1\r\n\r\nw"])
def test_any_http_request_on_the_query_port_is_refused_and_nothing_after_it_runs(data):
    parser = QueryParser()
    queries = parser.receive_data(data)
    assert [query.foreign for query in queries] == [FOREIGN_HTTP] and parser.finished


# --- real sockets: a DSM -----------------------------------------------------------------------------
def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(data)
        return recv_all(sock)  # the DSM closes: the client never has to


def statserv_lines(dsm, *commands: str) -> str:
    with socket.create_connection((LOOPBACK, dsm.statserv_port), timeout=10) as sock:
        sock.sendall(("\n".join(commands) + "\nLOGOFF\n").encode())
        return recv_all(sock).decode()


@pytest.fixture
def web_dsm(dsm_factory):
    return dsm_factory.start("--http-port", str(free_tcp_port()))


def test_raw_requests_to_a_real_dsm_store_and_run_nothing(web_dsm):
    http_port = web_dsm.info["http_port"]
    reply = exchange(web_dsm.status_port, form_post(STATUS + b"\r\n"))
    assert reply.count(END) == 1
    assert "port %d (--http-port)" % http_port in json.loads(reply[:-1])["error"]
    reply = exchange(web_dsm.statserv_port, form_post(b"TOUCH /pwned\r\nSAVE\r\n"))
    assert reply.decode().startswith("! PROTOCOL HTTP request") and reply.count(b"\n") == 1
    reply = exchange(web_dsm.query_port, form_post(b"w\r\n"))
    assert reply.count(END) == 1 and b"port %d" % http_port in reply
    assert web_dsm.query_json("s") == {}
    assert "NONEXISTENT" in statserv_lines(web_dsm, "GET /pwned")
    log = wait_for(lambda: web_dsm.log_text().count("HTTP request on the DSM's") >= 2 and
                   web_dsm.log_text(), what="both refusals logged as bad input")
    assert "bad input from status" in log and "bad input from statserv" in log
    # a lab script's status is still taken, byte for byte as before
    assert web_dsm.send_status(b"{'serial_number': 'ZA1', 'time_stamp': 't', 'status': '001'}") \
        == END


# --- a real browser: a page's form POST to the status and Status Server ports ---------------------
AUTO_POST = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="http://127.0.0.1:%(port)d/">
<input type="hidden" name="%(name)s" value="%(value)s"></form>
<script>document.getElementById("f").submit();</script></body></html>"""


def browser_posts(tmp_path, port: int, name: str, value: str) -> None:
    """Loads a local page whose form posts itself, as text/plain, to `port` (then gives up)."""
    page = tmp_path / ("post-%d.html" % port)
    page.write_text(AUTO_POST % {"port": port, "name": name.replace('"', "&quot;"),
                                 "value": value.replace('"', "&quot;")})
    subprocess.run([CHROMIUM] + CHROMIUM_FLAGS + [
        "--user-data-dir=%s" % (tmp_path / "profile"), "--virtual-time-budget=3000",
        "--timeout=5000", "--dump-dom", page.as_uri()],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=60, check=False)


@needs_chromium
def test_a_browsers_form_post_stores_nothing_on_the_status_and_statserv_ports(web_dsm, tmp_path):
    # text/plain posts `name=value` CRLF: the name carries the lines, the value closes them
    status = '{"serial_number": "XBROWSER", "time_stamp": 1, "status": "pwned", "x": "'
    browser_posts(tmp_path, web_dsm.status_port, status, '"}')
    browser_posts(tmp_path, web_dsm.statserv_port,
                  "TOUCH /pwned\nPUT /pwned yes\nX", "1")
    log = wait_for(lambda: len(re.findall(r"bad input from (status|statserv) [^:]+:\d+: HTTP "
                                          r"request", web_dsm.log_text())) >= 2
                   and web_dsm.log_text(), timeout=60, what="both form POSTs refused")
    assert "HTTP request on the DSM's status port" in log
    assert "HTTP request on the DSM's Status Server port" in log
    assert web_dsm.query_json("s") == {}
    assert "NONEXISTENT" in statserv_lines(web_dsm, "GET /pwned")
