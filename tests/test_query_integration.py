"""End-to-end tests of the query protocol (`m`, `s`, `w`) on the TCP port and on `<run-dir>/dsm.sock`.

Every test talks to a real DSM process started on free ports; every wait has a deadline.
"""
from __future__ import annotations

import json
import re
import socket
import struct
import time
from typing import Any, Dict, Iterable, List

import pytest

from dsm_harness import END, announcement, recv_all, recv_until_end, wait_for

TRANSPORTS = ["tcp", "unix"]


# --- helpers ----------------------------------------------------------------------------------
def connect(dsm, transport: str) -> socket.socket:
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(dsm.unix_socket)
        return sock
    return dsm.connect_query()


def query(dsm, transport: str, data: bytes) -> bytes:
    return dsm.query(data, unix=transport == "unix")


def replies(data: bytes) -> List[Any]:
    """Splits a stream of `JSON + \\x04` replies; JSON never holds a raw \\x04 (it is escaped)."""
    assert data.endswith(END), data[-200:]
    return [json.loads(part) for part in data[:-1].split(END)]


def m_of(dsm) -> Dict[str, Any]:
    return dsm.query_json("m")


def announce_all(dsm, serials: Iterable[str], batch: int = 50, rounds: int = 5) -> None:
    """Announces every serial and waits until `m` shows them all.

    Loopback datagrams can be dropped when the DSM's receive buffer is full, so each batch is re-sent
    (a byte-identical repeat is harmless) a bounded number of times.
    """
    serials = list(serials)
    for start in range(0, len(serials), batch):
        chunk = serials[start:start + batch]
        for attempt in range(rounds):
            present = m_of(dsm)
            missing = [s for s in chunk if s not in present]
            if not missing:
                break
            for serial in missing:
                dsm.announce(announcement(serial))
            try:
                wait_for(lambda chunk=chunk: all(s in m_of(dsm) for s in chunk), timeout=3,
                         what="batch of %d drives in m" % len(chunk))
                break
            except AssertionError:
                if attempt == rounds - 1:
                    raise


def store_statuses(dsm, statuses: Iterable[tuple]) -> None:
    """Stores (serial, time_stamp, status) tuples sent together on one status connection (it
    closes once all are answered), checking that each got its ack."""
    statuses = list(statuses)
    batch = b"".join(json.dumps({"serial_number": serial, "time_stamp": stamp,
                                 "status": status}).encode() + b"\n"
                     for serial, stamp, status in statuses)
    with socket.create_connection(("127.0.0.1", dsm.status_port), timeout=10) as sock:
        sock.sendall(batch)
        assert recv_until_end(sock, count=len(statuses)) == END * len(statuses)


def assert_wiped(parts: List[Any], drives: int, status_serials: int, statuses: int) -> None:
    """One `w` reply: {"wiped": {"drives": N, "status_serials": M, "statuses": K, ...}}."""
    assert len(parts) == 1, parts
    wiped = parts[0]["wiped"]
    assert {key: wiped.get(key) for key in ("drives", "status_serials", "statuses")} == {
        "drives": drives, "status_serials": status_serials, "statuses": statuses}, parts[0]


@pytest.fixture
def populated(dsm):
    """A DSM with two drives and two status histories, so `m` and `s` replies differ."""
    announce_all(dsm, ["QA1", "QA2"])
    store_statuses(dsm, [("QA1", 1, "001"), ("QA1", 2, "002"), ("QB9", 3, "000")])
    return dsm


# --- empty store ------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_empty_store_replies_empty_object_and_end_byte(dsm, transport):
    assert query(dsm, transport, b"m") == b"{}" + END
    assert query(dsm, transport, b"s") == b"{}" + END
    assert_wiped(replies(query(dsm, transport, b"w")), 0, 0, 0)


def test_unix_socket_lives_in_the_run_dir(dsm):
    assert dsm.unix_socket == dsm.run_dir + "/dsm.sock"
    assert dsm.info.get("query_socket", dsm.unix_socket).endswith("/dsm.sock")


# --- same answers on both transports -----------------------------------------------------------
def test_tcp_and_unix_give_the_same_data(populated):
    dsm = populated
    for letter in (b"m", b"s"):
        tcp = query(dsm, "tcp", letter)
        unix = query(dsm, "unix", letter)
        assert tcp == unix
    drives = m_of(dsm)
    assert set(drives) == {"QA1", "QA2"}
    assert dsm.query_json("s") == {
        "QA1": [{"time_stamp": 1, "status": "001"}, {"time_stamp": 2, "status": "002"}],
        "QB9": [{"time_stamp": 3, "status": "000"}],
    }


# --- framing: whitespace, newlines, pipelining ----------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("sent,expected", [
    (b"m\n", "m"),
    (b"m\r\n", "m"),
    (b"  \t\r\n m \r\n\n", "m"),
    (b"m\ns\n", "ms"),
    (b"m\r\ns\r\nm\r\n", "msm"),
    (b"m s\tm\n\ns", "msms"),
    (b"\n\n\r\n", ""),
])
def test_whitespace_between_queries_is_ignored_and_replies_come_in_order(populated, transport, sent,
                                                                        expected):
    dsm = populated
    want = {"m": m_of(dsm), "s": dsm.query_json("s")}
    data = query(dsm, transport, sent)
    if not expected:
        assert data == b""
        return
    assert replies(data) == [want[letter] for letter in expected]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("sent,letters", [(b"m", "m"), (b"s\n", "s"), (b"m\r\n", "m"),
                                          (b" s ", "s"), (b"m s\n", "ms"), (b"s\nm\ns", "sms")])
def test_connection_closes_once_everything_sent_is_answered(populated, transport, sent, letters):
    """The original closed after its reply, so `printf m | nc host 2203` returns at once: the DSM
    closes as soon as all a client sent is answered, without waiting for the client's side."""
    dsm = populated
    want = {"m": m_of(dsm), "s": dsm.query_json("s")}
    with connect(dsm, transport) as sock:
        sock.sendall(sent)  # and no end of stream from our side
        data = recv_all(sock, timeout=5)  # returns only once the DSM has closed
    assert replies(data) == [want[letter] for letter in letters]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connection_with_nothing_answered_yet_stays_open(populated, transport):
    """Separators alone are no query: the DSM waits for one (up to --idle-timeout)."""
    dsm = populated
    with connect(dsm, transport) as sock:
        sock.sendall(b"\n \r\n")
        sock.sendall(b"s")
        assert replies(recv_all(sock, timeout=5)) == [dsm.query_json("s")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_original_style_single_m_without_newline_connection_kept_open(populated, transport):
    """The lab scripts: send `m` alone, keep the connection open, read until \\x04."""
    dsm = populated
    with connect(dsm, transport) as sock:
        sock.sendall(b"m")
        reply = recv_until_end(sock, timeout=5)
    assert reply.endswith(END) and reply.count(END) == 1
    assert set(json.loads(reply[:-1])) == {"QA1", "QA2"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pending_replies_are_sent_after_end_of_stream_then_the_dsm_closes(dsm, transport):
    announce_all(dsm, ["EOF%03d" % i for i in range(150)])
    single = query(dsm, transport, b"m")
    assert len(single) > 30000
    with connect(dsm, transport) as sock:
        sock.sendall(b"m\n" * 40 + b"s\nm")
        sock.shutdown(socket.SHUT_WR)
        data = recv_all(sock, timeout=20)  # returns only once the DSM has closed
    parts = replies(data)
    assert len(parts) == 42
    assert all(part == json.loads(single[:-1]) for part in parts[:40] + parts[41:])
    assert parts[40] == {}


# --- bad queries ------------------------------------------------------------------------------
def assert_names_valid_queries(reply: Any) -> None:
    assert isinstance(reply, dict) and isinstance(reply.get("error"), str), reply
    text = json.dumps(reply)
    for letter in "msw":
        assert re.search(r"(?<![A-Za-z])%s(?![A-Za-z])" % letter, reply["error"]) or \
            re.search(r'"%s"' % letter, text), (letter, reply)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("bad", [b"x", b"help", b"?", b"mm\x00", b"\xff\xfe", b"list"])
def test_bad_query_gets_json_error_and_the_rest_is_still_answered(populated, transport, bad):
    dsm = populated
    want_m = m_of(dsm)
    with connect(dsm, transport) as sock:
        sock.sendall(bad + b"\nm\n")
        parts = replies(recv_all(sock, timeout=5))
        errors = [part for part in parts if "error" in part]
        assert len(errors) == 1, parts
        assert_names_valid_queries(errors[0])
        assert parts[-1] == want_m
    # the bad query changed nothing
    assert m_of(dsm) == want_m


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_query_without_newline_is_answered_at_once(dsm, transport):
    with connect(dsm, transport) as sock:
        sock.sendall(b"bogus")
        assert_names_valid_queries(replies(recv_until_end(sock, timeout=5))[0])


def test_bad_query_in_a_pipeline_keeps_the_order(populated):
    dsm = populated
    want_m, want_s = m_of(dsm), dsm.query_json("s")
    parts = replies(dsm.query(b"m\nnope\ns\n"))
    assert len(parts) == 3
    assert parts[0] == want_m
    assert_names_valid_queries(parts[1])
    assert parts[2] == want_s


# --- wipe -------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wipe_says_how_much_it_wiped_and_empties_the_store(dsm, transport):
    announce_all(dsm, ["W1", "W2", "W3"])
    store_statuses(dsm, [("W1", 1, "001"), ("W1", 2, "002"), ("W1", 3, "003"),
                         ("S9", 4, "001"), ("S9", 5, "000")])
    assert_wiped(replies(query(dsm, transport, b"w")), 3, 2, 5)
    assert query(dsm, transport, b"m") == b"{}" + END
    assert query(dsm, transport, b"s") == b"{}" + END
    assert_wiped(replies(query(dsm, transport, b"w\n")), 0, 0, 0)
    # the store fills again after a wipe, including a drive that announces the same bytes again
    announce_all(dsm, ["W1"])
    store_statuses(dsm, [("W1", 6, "002")])
    assert set(m_of(dsm)) == {"W1"}
    assert dsm.query_json("s") == {"W1": [{"time_stamp": 6, "status": "002"}]}


def test_wipe_in_a_pipeline_is_ordered_with_the_other_queries(populated):
    dsm = populated
    want_m, want_s = m_of(dsm), dsm.query_json("s")
    parts = replies(dsm.query(b"m s w m s"))
    assert len(parts) == 5
    assert parts[:2] == [want_m, want_s]
    assert_wiped(parts[2:3], 2, 2, 3)
    assert parts[3:] == [{}, {}]


# --- a client that does not read -------------------------------------------------------------
def test_client_that_pipelines_and_never_reads_does_not_hold_up_others(dsm):
    serials = ["FL%04d" % i for i in range(300)]
    announce_all(dsm, serials)
    store_statuses(dsm, [("FL0000", 1, "001")])
    single_m = dsm.query(b"m")
    assert len(single_m) > 60000
    want_m = json.loads(single_m[:-1])

    flooder = dsm.connect_query()
    try:
        flooder.setblocking(False)
        chunk = b"m\n" * 32768
        sent_total = 0
        deadline = time.monotonic() + 10
        # Push queries until the kernel will not take more (the DSM stopped reading) or 16 MiB.
        for _ in range(256):
            if time.monotonic() > deadline:
                break
            try:
                sent_total += flooder.send(chunk)
            except BlockingIOError:
                break
        assert sent_total > 100000

        # Others are answered promptly while the flooder sits on its replies.
        for _ in range(5):
            started = time.monotonic()
            assert dsm.query(b"m") == single_m
            statuses = json.loads(dsm.query(b"s", unix=True)[:-1])
            assert statuses["FL0000"] == [{"time_stamp": 1, "status": "001"}]
            assert dsm.send_status(b"{'serial_number': 'OTHER', 'time_stamp': 2, "
                                   b"'status': '002'}") == END
            assert time.monotonic() - started < 3.0

        # The flooder is still served in order once it reads: its first replies are whole `m`s.
        flooder.setblocking(True)
        flooder.settimeout(10)
        first = recv_until_end(flooder, count=3)
        assert [json.loads(part) for part in first.split(END)[:3]] == [want_m] * 3
    finally:
        flooder.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        flooder.close()
    # After the flooder vanished with replies queued, the DSM is still healthy.
    assert wait_for(lambda: dsm.query(b"m") == single_m, timeout=5, what="m after the flooder left")
    assert dsm.proc.poll() is None


# --- other protocols and garbage never wipe (issue 10) -------------------------------------------
BROWSER_REQUEST = (b"GET / HTTP/1.1\r\nHost: labhost:2203\r\nConnection: keep-alive\r\n"
                   b"User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36\r\n"
                   b"Accept: text/html,*/*;q=0.8\r\n\r\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("request_line, port_key", [
    (BROWSER_REQUEST, "statserv_port"),  # HTTP is off in the harness: the reply says so
    (b"LS /drives\n", "statserv_port"), (b"PUT /x 1\n", "statserv_port"),
    (b"{'serial_number': 'A', 'time_stamp': 1, 'status': 2}", "status_port"),
])
def test_request_of_another_protocol_gets_the_right_port_and_is_closed_without_wiping(
        populated, transport, request_line, port_key):
    dsm = populated
    before = m_of(dsm)
    with connect(dsm, transport) as sock:
        sock.sendall(request_line + b"w\n")
        data = recv_all(sock, timeout=10)  # the DSM closes after the error
    [reply] = replies(data)
    port = {"statserv_port": dsm.statserv_port, "status_port": dsm.status_port}[port_key]
    if request_line is BROWSER_REQUEST:
        assert "HTTP requests" in reply["error"] and "off here" in reply["error"]
    else:
        assert "port %d" % port in reply["error"], reply
    assert m_of(dsm) == before


def test_random_bytes_never_wipe_a_real_dsm(populated):
    dsm = populated
    before = m_of(dsm)
    rng = __import__("random").Random(99)
    for _ in range(30):
        garbage = b"#" + bytes(rng.getrandbits(8) for _ in range(rng.randint(100, 50_000)))
        with dsm.connect_query() as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            data = recv_all(sock, timeout=10)
        assert data.endswith(END)
        assert not any("wiped" in part for part in replies(data))
    assert m_of(dsm) == before
