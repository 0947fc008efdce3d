"""Wave-2 attack: new inputs of the kinds issues 9 and 10 named, against the merged daemon.

Each test is one *kind* found breaking the DSM after the first fixes, with the inputs that showed it:
state files that are not regular files (a FIFO hung the start for good), serial numbers too long to
be served on every output, and a status with a raw line break inside a string, which got one
error reply per line instead of one per message.
"""
from __future__ import annotations

import json
import os
import signal
import socket

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor import persistence
from DriveStateMonitor.status_protocol import StatusParser

from dsm_harness import END, LOOPBACK, wait_for


def _state_dir(dsm) -> str:
    return dsm.args[dsm.args.index("--state-dir") + 1]


def _numbered(state_dir: str, prefix: str) -> int:
    return max(int(name[len(prefix):].split(".")[0]) for name in os.listdir(state_dir)
               if name.startswith(prefix) and name.split(".")[-1] in ("json", "log"))


# --- state files that are not regular files ------------------------------------------------------
def test_read_state_file_refuses_a_fifo_and_a_device_without_blocking(tmp_path):
    fifo = str(tmp_path / "journal-7.log")
    os.mkfifo(fifo)
    device = str(tmp_path / "snapshot-8.json")
    os.symlink("/dev/zero", device)  # read() of it would never end
    for path in (fifo, device, str(tmp_path)):
        with pytest.raises(OSError):
            persistence.read_state_file(path)
    regular = tmp_path / "snapshot-1.json"
    regular.write_bytes(b"abc")
    assert persistence.read_state_file(str(regular)) == b"abc"


def test_load_state_skips_fifo_and_device_state_files(tmp_path):
    os.mkfifo(str(tmp_path / "journal-3.log"))
    os.symlink("/dev/zero", str(tmp_path / "snapshot-9.json"))
    loaded = persistence.load_state(str(tmp_path))  # returning at all is the point: no hang
    assert loaded.snapshot is None and loaded.records == []
    assert loaded.snapshots_unreadable == 1
    assert str(tmp_path / "journal-3.log") in loaded.damaged


def test_dsm_starts_and_serves_past_a_fifo_and_a_device_in_its_state_dir(dsm_factory):
    dsm = dsm_factory.start()
    for i in range(5):
        message = json.dumps({"serial_number": "KEEP%d" % i, "time_stamp": 1, "status": i})
        assert dsm.send_status(message.encode()) == END
    dsm.signal(signal.SIGTERM)
    assert dsm.wait_exit() == 0
    state_dir = _state_dir(dsm)
    newest = _numbered(state_dir, "snapshot-")
    os.mkfifo(os.path.join(state_dir, "journal-%d.log" % (newest + 2)))
    os.symlink("/dev/zero", os.path.join(state_dir, "snapshot-%d.json" % (newest + 1)))
    again = dsm_factory.start("--state-dir", state_dir)  # wait_ready fails if the start hangs
    assert set(again.query_json("s")) == {"KEEP%d" % i for i in range(5)}
    assert again.send_status(b'{"serial_number": "NEW", "time_stamp": 1, "status": 1}') == END
    assert "not a regular file" in again.log_text()
    again.signal(signal.SIGTERM)
    assert again.wait_exit() == 0


# --- names every output can serve ----------------------------------------------------------------
from urllib.parse import quote  # noqa: E402

from DriveStateMonitor.announcement import Announcement, parse_announcement  # noqa: E402
from DriveStateMonitor.drive_view import MAX_COMPONENT_CHARS, path_component  # noqa: E402
from DriveStateMonitor.intake import MAX_SERIAL_CHARS  # noqa: E402
from DriveStateMonitor.status_protocol import StatusError, parse_status  # noqa: E402
from DriveStateMonitor.statserv_protocol import MAX_LINE_BYTES  # noqa: E402
from DriveStateMonitor.http_protocol import MAX_REQUEST_LINE_BYTES  # noqa: E402

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=MAX_SERIAL_CHARS * 2)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_a_serial_is_accepted_exactly_when_a_url_and_a_tree_line_can_hold_it(serial):
    datagram = json.dumps({"serial_number": serial, "port": 8123}).encode()
    status = json.dumps({"serial_number": serial, "time_stamp": 1, "status": 1}).encode()
    result = parse_announcement(datagram)
    try:
        parse_status(status)
        status_accepted = True
    except StatusError:
        status_accepted = False
    fits = len(serial) <= MAX_SERIAL_CHARS
    assert status_accepted == (fits and serial != "")
    if serial.strip():
        assert isinstance(result, Announcement) == fits, result
    if fits:
        request_line = "GET /api/drives/%s HTTP/1.1" % quote(serial, safe="")
        assert len(request_line.encode()) <= MAX_REQUEST_LINE_BYTES
        get_line = "GET /drives/%s/serial_number" % path_component(serial)
        assert len(get_line.encode()) <= MAX_LINE_BYTES


@settings(max_examples=300, deadline=None)
@given(st.one_of(_TEXT, st.text(max_size=70_000).filter(lambda t: len(t) > 5000), st.integers()))
def test_a_path_component_is_short_safe_and_idempotent(name):
    component = path_component(name)
    assert 1 <= len(component) <= MAX_COMPONENT_CHARS + 1
    assert component.isascii() and "/" not in component and " " not in component
    assert component not in (".", "..")
    assert path_component(component) == component


def test_long_names_from_a_datagram_can_be_asked_for_on_every_port(dsm_factory):
    from test_boundary_contract import free_tcp_port, http_get  # one HTTP client for the suite
    port = free_tcp_port()
    dsm = dsm_factory.start("--http-port", str(port))
    serial = "\u00e9" * MAX_SERIAL_CHARS  # the longest accepted, 12 bytes a character in a URL
    dsm.announce(json.dumps({"serial_number": serial, "k" * 60_000: "long key", "port": 8123,
                             "network_interfaces": [{"name": "n" * 300, "ipv4_addr": "1.2.3.4"}]
                             }).encode())
    dsm.announce(json.dumps({"serial_number": "x" * (MAX_SERIAL_CHARS + 1)}).encode())
    dsm.announce(json.dumps({"serial_number": "AFTER"}).encode())
    wait_for(lambda: "AFTER" in dsm.query_json("m"), 10, "the drive after")
    assert set(dsm.query_json("m")) == {serial, "AFTER"}
    too_long = json.dumps({"serial_number": "y" * (MAX_SERIAL_CHARS + 1), "time_stamp": 1,
                           "status": 1}).encode()
    assert b"longer than %d characters" % MAX_SERIAL_CHARS in dsm.send_status(too_long)

    response = http_get(port, "/api/drives/" + quote(serial, safe=""))
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["serial_number"] == serial

    def listing(path: str):
        with dsm.connect_statserv() as sock:
            sock.sendall(b"LS %s\nLOGOFF\n" % path.encode())
            return [line[2:].split(" = ")[0].rstrip("/")
                    for line in recv_all_text(sock).splitlines() if line.startswith("* ")]
    drive = "/drives/" + path_component(serial)
    names = listing(drive)
    assert len(names) >= 4
    paths = [drive + "/" + name for name in names if name != "interfaces"]
    paths += [drive + "/interfaces/%s/%s" % (iface, field)
              for iface in listing(drive + "/interfaces")
              for field in listing(drive + "/interfaces/" + iface)]
    with dsm.connect_statserv() as sock:
        sock.sendall(b"".join(b"GET %s\n" % path.encode() for path in paths) + b"LOGOFF\n")
        replies = recv_all_text(sock).splitlines()
    assert len(replies) == len(paths) and all(reply.startswith(". ") for reply in replies), replies
    assert '. "long key"' in replies and '. "1.2.3.4"' in replies


def recv_all_text(sock: socket.socket) -> str:
    from dsm_harness import recv_all
    return recv_all(sock, timeout=10).decode("utf-8")


# --- one reply for a message with line breaks inside a string ------------------------------------
# Lines of a traceback; no quote or backslash (one would end the string, or escape the line break:
# a valid Python literal), and no line after the first opening a new object.
_LINE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, blacklist_characters="\\\"'"),
                max_size=40).filter(lambda line: not line.lstrip().startswith("{"))


def _frames(parser: StatusParser, data: bytes, cuts) -> list:
    out, last = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += parser.receive_data(data[last:cut])
        last = cut
    return out + parser.eof_received()


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINE, min_size=2, max_size=8), newline=st.sampled_from(["\n", "\r\n"]),
       cuts=st.lists(st.integers(0, 600), max_size=6), closing=st.sampled_from(["\x04", "\n", ""]))
def test_a_message_broken_by_line_breaks_in_a_string_gets_exactly_one_reply(lines, newline, cuts,
                                                                                closing):
    # A lab script building its JSON by hand with a traceback in `status`: the original answered
    # one error; then every line of the traceback got its own.
    broken = '{"serial_number": "A", "time_stamp": 1, "status": "%s"}' % newline.join(lines)
    good = b'{"serial_number": "B", "time_stamp": 2, "status": 1}'
    data = broken.encode() + closing.encode() + b"\n" + good + b"\x04"
    frames = _frames(StatusParser(), data, cuts)
    assert [frame.message for frame in frames] == [None, good], frames
    assert frames[0].error.startswith("line break inside a string")


def test_after_a_broken_message_an_end_byte_makes_garbage_an_error_again():
    parser = StatusParser()
    frames = parser.receive_data(b'{"a": "x\ny"}\x04garbage\n{"b": 1}\n')
    assert [(frame.message, bool(frame.error)) for frame in frames] == [
        (None, True), (None, True), (b'{"b": 1}', False)]


def test_real_dsm_answers_a_pasted_traceback_once_and_stores_the_next_status(dsm):
    traceback = 'Traceback (most recent call last):\n  File "t.py", line 3\nValueError: "bad"'
    message = ('{"serial_number": "TB", "time_stamp": 1, "status": "%s"}' % traceback).encode()
    # Sent together (a status connection closes once all it sent is answered): the broken message
    # gets one error, its stray lines none, and the status after it its own ack.
    with socket.create_connection((LOOPBACK, dsm.status_port), timeout=10) as sock:
        sock.sendall(message + b'\n{"serial_number": "NEXT", "time_stamp": 2, "status": 1}')
        replies = b""
        while replies.count(END) < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            replies += chunk
    first, _, second = replies.partition(END)
    assert b'"error"' in first and first.count(b'"error"') == 1, replies
    assert second == END, replies
    assert set(dsm.query_json("s")) == {"NEXT"}


# --- a SAVE flood under new names -----------------------------------------------------------------
def test_save_flood_under_new_names_is_refused_past_the_file_count(tmp_path):
    from DriveStateMonitor.event_loop import EventLoop
    from DriveStateMonitor.save_writer import SaveWriter
    from DriveStateMonitor.statserv_tree import StatServError, Tree
    from test_save_writer import Session, run_until
    saves = os.path.join(os.path.realpath(str(tmp_path)), "saves")
    os.makedirs(saves)
    for n in range(5):  # tiny files: far under the bytes limit
        with open(os.path.join(saves, "old%d" % n), "w") as f:
            f.write("x")
    loop = EventLoop()
    try:
        writer = SaveWriter(loop, Tree(), saves, max_files=6)
        session = Session()
        writer.start(os.path.join(saves, "new0"), session)  # the sixth file
        run_until(loop, lambda: session.answers)
        assert session.answers == [(None, None)]
        with pytest.raises(StatServError) as error:
            writer.start(os.path.join(saves, "new1"), Session())
        assert error.value.code == "LIMIT" and "6 files" in str(error.value)
        again = Session()
        writer.start(os.path.join(saves, "old0"), again)  # over an existing name: still fine
        run_until(loop, lambda: again.answers)
        assert again.answers == [(None, None)]
        assert len(os.listdir(saves)) == 6 and writer.refused == 1
    finally:
        loop.close()


# --- a snapshot from a newer DSM ------------------------------------------------------------------
def _as_newer_format(path: str, file_format: int) -> None:
    import zlib
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    body = lines[0][9:].replace(b'"file_format":%d' % persistence.SNAPSHOT_FORMAT,
                                b'"file_format":%d' % file_format)
    assert body != lines[0][9:]
    lines[0] = b"%08x " % zlib.crc32(body) + body  # intact: only the format is new
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))


def test_a_newer_format_snapshot_is_reported_with_what_it_holds_and_an_older_one_used(tmp_path,
                                                                                       caplog):
    state_dir = str(tmp_path)
    old = {"statuses": {"OLD": ['{"time_stamp": 1, "status": 1}']}, "drives": [], "tree": []}
    persistence.write_snapshot(state_dir, 1, old)
    newer = {"statuses": {"S%d" % i: ['{"time_stamp": 1, "status": %d}' % i] for i in range(7)},
             "drives": [], "tree": []}
    persistence.write_snapshot(state_dir, 2, newer)
    _as_newer_format(persistence.snapshot_path(state_dir, 2), persistence.SNAPSHOT_FORMAT + 1)
    with caplog.at_level("CRITICAL", logger="dsm.state"):
        loaded = persistence.load_state(state_dir)
    assert loaded.snapshot_seq == 1 and set(loaded.snapshot["statuses"]) == {"OLD"}
    assert loaded.items_skipped == 7 and loaded.snapshots_unreadable == 1
    assert persistence.snapshot_path(state_dir, 2) in loaded.damaged  # kept, renamed aside later
    assert any("file format %d" % (persistence.SNAPSHOT_FORMAT + 1) in record.getMessage()
               and "7 items" in record.getMessage() for record in caplog.records)


# --- HTTP: what can never be a request is answered at once --------------------------------------
from DriveStateMonitor.http_protocol import HttpServerConnection, RequestError  # noqa: E402

TLS_CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(range(32))


@pytest.mark.parametrize("data", [TLS_CLIENT_HELLO, b"\x00\x01", b" GET / HTTP/1.1",
                                  b"GET /keep/a\n", b"m\n", b"GET / HTTP/2.0\r\n",
                                  b"PRI * HTTP/2.0\r\n", b"GET /\x7f HTTP/1.1\r\n"])
def test_bytes_that_can_never_start_a_request_are_refused_without_waiting_for_more(data):
    connection = HttpServerConnection()
    events = connection.receive_data(data)
    assert len(events) == 1 and isinstance(events[0], RequestError), events
    assert events[0].status in (400, 505) and not connection.reading


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60))
def test_a_valid_request_split_anywhere_is_never_refused_early(cut):
    data = b"\r\nGET /api/drives?x=1 HTTP/1.1\r\nHost: d\r\nX-A: b\r\n\r\n"
    connection = HttpServerConnection()
    events = connection.receive_data(data[:cut]) + connection.receive_data(data[cut:])
    assert [type(event).__name__ for event in events] == ["Request"]


def test_real_dsm_answers_a_tls_client_hello_on_the_http_port_at_once(dsm_factory):
    from test_boundary_contract import free_tcp_port
    from dsm_harness import recv_all
    port = free_tcp_port()
    dsm_factory.start("--http-port", str(port), "--request-timeout", "60")
    for probe in (TLS_CLIENT_HELLO, b"GET /keep/a\n"):
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(probe)  # and waits, as a TLS client does: no half-close
            reply = recv_all(sock, timeout=10)  # well before the 60 s request deadline
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:100]
    from prometheus_client.parser import text_string_to_metric_families
    from test_boundary_contract import http_get
    body = http_get(port, "/metrics").split(b"\r\n\r\n", 1)[1].decode("utf-8")
    failures = [sample.value for family in text_string_to_metric_families(body)
                for sample in family.samples if sample.name == "dsm_handler_failures_total"]
    assert failures == [0.0]  # a refusal, not a handler failure


def test_an_old_state_file_that_is_a_fifo_is_judged_damaged_without_blocking(tmp_path):
    # retire_old_files checks files the load never read before removing them; a FIFO under a
    # journal's or snapshot's name must be judged at once, not opened and waited on.
    import signal as _signal
    from DriveStateMonitor.persistence import _file_intact, journal_path, snapshot_path
    fifos = [journal_path(str(tmp_path), 1), snapshot_path(str(tmp_path), 1)]
    for path in fifos:
        os.mkfifo(path)
    _signal.signal(_signal.SIGALRM, lambda *_: pytest.fail("blocked on a FIFO"))
    _signal.alarm(5)  # bound: a regression would block in open()
    try:
        assert [_file_intact(path) for path in fifos] == [False, False]
    finally:
        _signal.alarm(0)
