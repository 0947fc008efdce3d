"""/api/events over a real event loop and real sockets (socketpairs), without a daemon: the stream's
head and events, a pipelined request never answered, HEAD, keepalive comments, a slow reader held
at the high-water mark and then resynced and closed, ETag/304 and gzip of the JSON endpoints."""
from __future__ import annotations

import gzip
import json
import socket
from typing import List, Optional, Tuple

import pytest

from DriveStateMonitor.change_feed import DEFAULT_PART_ROWS, ChangeFeed
from DriveStateMonitor.event_loop import EventLoop, StreamTransport
from DriveStateMonitor.http_protocol import Request
from DriveStateMonitor.web_service import (KEEPALIVE, RESYNC, UNWATCHED_GRACE_S, EventStreams,
                                           WebApp, WebConnection, WebData, accepts_gzip)
from dsm_harness import wait_for
from test_change_feed import JsonRows, parse_events


class Rows(JsonRows):
    """The rows the endpoints show, with the versions WebData asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def versions(self) -> Tuple[int, int]:
        return self.version, self.version


class Served:
    """One WebApp with EventStreams on a real loop; clients connect through socketpairs."""

    def __init__(self, max_events: int = 1024, max_output: Optional[int] = None) -> None:
        self.loop = EventLoop()
        self.rows = Rows()
        self.feed = ChangeFeed("ep", max_events=max_events)
        self.streams = EventStreams(self.feed, self.rows.drives_json, self.rows.status_json,
                                    self.rows.drive_row, self.rows.status_row,
                                    self.rows.snapshot_rows)
        self.app = WebApp(WebData(self.rows.drives_json, lambda serial: None,
                                  self.rows.status_json, lambda: {}, (), self.rows.versions,
                                  "ep"), {}, lambda: 0.0)
        self.app.streams = self.streams
        self.max_output = max_output
        self.transports: List[StreamTransport] = []

    def connect(self, rcvbuf: Optional[int] = None) -> socket.socket:
        ours, theirs = socket.socketpair()
        if rcvbuf is not None:
            for sock in (ours, theirs):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        transport = StreamTransport(self.loop, ours, "http test", max_output=self.max_output)
        transport.start(WebConnection(transport, self.app))
        self.transports.append(transport)
        theirs.settimeout(5)
        return theirs

    def change(self, serial: str, value: object) -> None:
        self.rows.drives[serial] = value
        self.rows.version += 1
        self.streams.publish({serial}, (), False)

    def run_until(self, condition, what: str) -> None:
        for _ in range(2000):  # bounded passes
            if condition():
                return
            self.loop.run_once(max_wait=0.01)
        raise AssertionError("never: " + what)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.loop.close()


@pytest.fixture
def served():
    served = Served()
    yield served
    served.close()


def read_until(served: Served, sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    received = bytearray()
    sock.setblocking(False)

    def got() -> bool:
        try:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return True
            received.extend(chunk)
        except BlockingIOError:
            pass
        return received.count(marker) >= count

    served.run_until(got, "%d x %r" % (count, marker))
    return bytes(received)


def test_stream_head_snapshot_then_change_and_pipelined_request_is_not_answered(served):
    served.rows.drives["A"] = {"n": 1}
    sock = served.connect()
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\nGET /api/drives HTTP/1.1\r\n"
                 b"Host: x\r\n\r\n")
    first = read_until(served, sock, b"\n\n", 2)
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/event-stream" in head and b"Content-Length" not in head
    assert b"Cache-Control: no-store" in head and b"Access-Control-Allow-Origin: *" in head
    assert body.startswith(b"retry: 2000\n\n")
    served.change("B", {"n": 2})
    stream = body + read_until(served, sock, b"event: change")
    events = parse_events(stream[len(b"retry: 2000\n\n"):])
    assert [e["event"] for e in events] == ["snapshot", "change"]
    assert json.loads(events[0]["data"])["drives"] == {"A": {"n": 1}}
    assert json.loads(events[1]["data"])["drives"] == {"B": {"n": 2}}
    assert events[1]["id"] == "ep-1"
    assert stream.count(b"HTTP/1.1") == 0  # the pipelined GET /api/drives got no answer
    assert len(served.streams.open) == 1


def test_parts_query_gets_the_snapshot_in_bounded_parts_then_changes(served):
    for n in range(DEFAULT_PART_ROWS * 2 + 10):
        served.rows.drives["D%04d" % n] = {"n": n}
    served.rows.statuses["D0001"] = [{"status": "ok"}]
    sock = served.connect()
    sock.sendall(b"GET /api/events?parts=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    body = read_until(served, sock, b"event: snapshot-end").partition(b"\r\n\r\n")[2]
    served.change("B", {"n": -1})
    body += read_until(served, sock, b"event: change")
    events = parse_events(body[len(b"retry: 2000\n\n"):])
    assert [e["event"] for e in events] == ["snapshot-start"] + ["snapshot-part"] * 3 + \
        ["snapshot-end", "change"]
    assert [e.get("id") for e in events] == [None] * 4 + ["ep-0", "ep-1"]
    parts = [json.loads(e["data"]) for e in events[1:4]]
    assert [len(part["drives"]) for part in parts] == [DEFAULT_PART_ROWS, DEFAULT_PART_ROWS, 10]
    assert parts[0]["status"] == {"D0001": [{"status": "ok"}]}
    joined = {serial: row for part in parts for serial, row in part["drives"].items()}
    assert joined == {serial: row for serial, row in served.rows.drives.items() if serial != "B"}
    assert b"event: snapshot\n" not in body


def test_viewers_asking_for_parts_together_share_the_same_parts(served):
    served.rows.drives["A"] = {"n": 1}
    first = served.streams.snapshot_parts()
    assert served.streams.snapshot_parts() is first and len(first) == 3
    served.change("A", {"n": 2})
    assert served.streams.snapshot_parts() is not first


def test_last_event_id_in_window_gets_only_what_it_missed(served):
    watching = served.connect()  # a DSM nobody ever watched keeps no window (see below)
    watching.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    read_until(served, watching, b"event: snapshot")
    for n in range(3):
        served.change("A", {"n": n})
    sock = served.connect()
    sock.sendall(b"GET /api/events?since=ep-0 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: ep-1\r\n\r\n")
    data = read_until(served, sock, b"event: change", 2).partition(b"\r\n\r\n")[2]
    events = parse_events(data.split(b"\n\n", 1)[1])
    assert [e["id"] for e in events] == ["ep-2", "ep-3"]  # the header won over ?since=
    assert "snapshot" not in data.decode()


def test_head_gets_the_stream_headers_only_then_close(served):
    sock = served.connect()
    sock.sendall(b"HEAD /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_until(served, sock, b"\r\n\r\n")
    served.run_until(lambda: served.transports[0].closed, "closed")
    assert data.endswith(b"\r\n\r\n") and b"text/event-stream" in data
    assert not served.streams.open


def test_keepalive_comment_only_when_nothing_else_was_sent_since_the_last_tick(served):
    socks = [served.connect(), served.connect()]
    for sock in socks:
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        read_until(served, sock, b"event: snapshot")
    served.streams.keepalive()  # the first tick: both were just sent a snapshot
    served.loop.run_once(max_wait=0)
    for sock in socks:
        with pytest.raises(BlockingIOError):
            sock.recv(100)
    served.streams.keepalive()  # nothing sent since the last tick
    for sock in socks:
        assert read_until(served, sock, KEEPALIVE) == KEEPALIVE
    served.streams.keepalive()
    served.change("A", 1)
    for sock in socks:
        assert b"event: change" in read_until(served, sock, b"event: change")
    served.streams.keepalive()  # a change was sent since: no comment
    served.loop.run_once(max_wait=0)
    for sock in socks:
        with pytest.raises(BlockingIOError):
            sock.recv(100)


def test_slow_reader_is_held_at_the_mark_then_resynced_and_closed():
    served = Served(max_events=4, max_output=256 * 1024)  # high-water mark 128 KiB
    try:
        slow = served.connect(rcvbuf=4096)
        slow.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        served.loop.run_once(max_wait=0.01)
        transport = served.transports[0]
        sent = 0
        while transport in [s.transport for s in served.streams.open] and sent < 200:
            served.change("A", "x" * 60_000)  # ~60 KB per event; the client reads nothing
            served.loop.run_once(max_wait=0)
            sent += 1
            # Never more than the mark plus one event waits, however many are published.
            assert transport.output_size <= transport.high_water + 61_000
        assert served.streams.resyncs == 1 and sent < 200
        received = bytearray()
        slow.setblocking(False)

        def drained() -> bool:
            try:
                chunk = slow.recv(1 << 20)
            except BlockingIOError:
                return False
            received.extend(chunk)
            return not chunk
        served.run_until(drained, "the DSM closed the stream after the resync")
        assert received.endswith(RESYNC)
        assert transport.closed
    finally:
        served.close()


def request(target: str, **headers: str) -> Request:
    return Request("GET", target, (1, 1), tuple((k.replace("_", "-").lower(), v)
                                                for k, v in headers.items()), True)


def test_etag_304_and_gzip_of_json_endpoints(served):
    served.rows.statuses = {"S%d" % n: [{"time_stamp": n, "status": "ok"}] for n in range(200)}
    first = served.app.answer(request("/api/status"))
    tag = dict(first.headers)["ETag"]
    assert first.status == 200 and tag == '"ep-s0"' and dict(first.headers)["Vary"]
    assert dict(first.headers)["Cache-Control"] == "no-cache"  # kept, but revalidated each time
    again = served.app.answer(request("/api/status", If_None_Match=tag))
    assert again.status == 304 and again.body == b""
    zipped = served.app.answer(request("/api/status", Accept_Encoding="br, gzip;q=0.5"))
    assert dict(zipped.headers)["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == first.body
    assert dict(zipped.headers)["ETag"] == '"ep-s0-gzip"'
    assert served.app.answer(request("/api/status", Accept_Encoding="gzip")).body is zipped.body
    assert served.app.answer(request("/api/status", If_None_Match='"ep-s0-gzip"')).status == 304
    served.rows.version += 1  # the data moved: a new tag, a full answer
    assert served.app.answer(request("/api/status", If_None_Match=tag)).status == 200


@pytest.mark.parametrize("value,accepted", [("gzip", True), ("deflate, gzip", True),
                                            ("gzip;q=0", False), ("identity", False),
                                            ("GZIP ; q=0.1", True), ("gzip;q=x", False)])
def test_accept_encoding(value, accepted):
    assert accepts_gzip(request("/", Accept_Encoding=value)) is accepted


def test_304_has_no_body_and_no_content_length_on_the_wire(served):
    sock = served.connect()
    sock.sendall(b"GET /api/drives HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"ep-d0\"\r\n\r\n")
    data = read_until(served, sock, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 304 Not Modified\r\n") and data.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in data and b'ETag: "ep-d0"' in data


def test_client_leaving_closes_its_stream(served):
    sock = served.connect()
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    read_until(served, sock, b"event: snapshot")
    sock.shutdown(socket.SHUT_WR)
    served.run_until(lambda: not served.streams.open, "the stream closed")
    wait_for(lambda: served.transports[0].closed, 1, "closed")


def test_changes_nobody_watches_are_numbered_not_encoded_after_the_grace():
    now = [1000.0]
    served = Served()
    served.streams.clock = lambda: now[0]
    try:
        served.change("A", 1)  # never watched: nothing encoded, the revision still moves
        assert served.feed.rev == 1 and served.feed.window_bytes == 0
        sock = served.connect()
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        read_until(served, sock, b"event: snapshot")
        sock.close()
        served.run_until(lambda: not served.streams.open, "the stream closed")
        now[0] += UNWATCHED_GRACE_S - 1  # within the grace: a page coming back resumes
        served.change("A", 2)
        assert served.feed.since("ep-1") is not None and served.feed.window_bytes > 0
        now[0] += 2  # past it
        served.change("A", 3)
        assert served.feed.rev == 3 and served.feed.window_bytes == 0
        assert served.feed.since("ep-2") is None and served.feed.since("ep-3") == []
    finally:
        served.close()


def test_viewers_opening_together_share_one_snapshot_until_a_change(served):
    now = [50.0]
    served.streams.clock = lambda: now[0]
    served.rows.drives["A"] = {"n": 1}
    first = served.streams.snapshot()
    assert served.streams.snapshot() is first  # the same bytes: queued once for every viewer
    served.change("A", {"n": 2})
    second = served.streams.snapshot()
    assert second is not first and b'"n": 2' in second and b"id: ep-1\n" in second
    served.rows.drives["B"] = {"n": 3}  # a last_seen-like move with no revision: up to 1 s old
    assert served.streams.snapshot() is second
    now[0] += 1
    assert b'"B"' in served.streams.snapshot()


def test_cors_preflight_for_the_api_allows_the_validators_and_last_event_id(served):
    sock = served.connect()
    sock.sendall(b"OPTIONS /api/events HTTP/1.1\r\nHost: x\r\nOrigin: http://other:2204\r\n"
                 b"Access-Control-Request-Headers: last-event-id\r\n\r\n"
                 b"OPTIONS /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_until(served, sock, b"\r\n\r\n", 2)
    preflight, _, rest = data.partition(b"\r\n\r\n")
    assert preflight.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"Access-Control-Allow-Origin: *" in preflight
    assert b"Access-Control-Allow-Headers: If-None-Match, Last-Event-ID" in preflight
    assert b"Content-Length" not in preflight and b"\r\nContent-Type:" not in preflight
    assert rest.startswith(b"HTTP/1.1 405 ")  # not the API: as before
