"""The change feed of a real DSM over real sockets (`curl -N .../api/events` as a test): snapshot,
then a change after a status and after a drive expires; Last-Event-ID resumption; a restarted DSM
(another epoch) gives a snapshot; a slow reader is resynced and closed; streams count against the
per-address limit; --idle-timeout spares an open stream; ETag/304 and gzip end to end."""
from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import socket
import subprocess
from typing import Any, Dict, List, Optional

import pytest

from dsm_harness import LOOPBACK, announcement, free_tcp_port, wait_for
from test_change_feed import parse_events
from test_slow_readers import is_closed_by_peer, silent_client


class EventReader:
    """A `curl -N` of /api/events: reads what arrives, splits it into events."""

    def __init__(self, dsm: Any, headers: str = "", target: str = "/api/events",
                 sock: Optional[socket.socket] = None) -> None:
        self.sock = sock or socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: dsm\r\n%s\r\n" % (target, headers)).encode())
        self.data = b""
        self.closed = False

    def _read(self) -> None:
        """Reads what arrives within 0.2 s (many small reads when the window is small)."""
        self.sock.settimeout(0.2)
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                return
            if not chunk:
                self.closed = True
            self.data += chunk

    @property
    def head(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[0]

    def events(self) -> List[Dict[str, Any]]:
        body = self.data.partition(b"\r\n\r\n")[2]
        complete = body[:body.rfind(b"\n\n") + 2]
        return [dict(e, data=json.loads(e["data"])) if "data" in e else e
                for e in parse_events(complete)]

    def wait_events(self, count: int, what: str) -> List[Dict[str, Any]]:
        def enough() -> Optional[List[Dict[str, Any]]]:
            self._read()
            events = [e for e in self.events() if "event" in e]
            return events if len(events) >= count else None
        return wait_for(enough, 15, what)

    def close(self) -> None:
        self.sock.close()


def web_dsm(dsm_factory, *extra: str):
    return dsm_factory.start("--http-port", str(free_tcp_port()), *extra)


def get(dsm, path: str, headers: Optional[Dict[str, str]] = None):
    conn = http.client.HTTPConnection(LOOPBACK, dsm.info["http_port"], timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def status(dsm, serial: str, text: str) -> None:
    reply = dsm.send_status(json.dumps({"serial_number": serial, "time_stamp": 1,
                                        "status": text}).encode())
    assert reply == b"\x04", reply


def test_stream_shows_snapshot_then_status_and_expiry_changes(dsm_factory):
    dsm = web_dsm(dsm_factory, "--drive-lifetime", "1.5")
    dsm.announce(announcement("FEED1"))
    wait_for(lambda: "FEED1" in dsm.query_json("m"), 10, "FEED1 heard")
    reader = EventReader(dsm)
    try:
        [snapshot] = reader.wait_events(1, "the snapshot")
        head = reader.head.decode()
        assert head.startswith("HTTP/1.1 200 OK") and "Content-Type: text/event-stream" in head
        assert "Content-Length" not in head and "Access-Control-Allow-Origin: *" in head
        assert reader.data.partition(b"\r\n\r\n")[2].startswith(b"retry: 2000\n\n")
        assert snapshot["event"] == "snapshot"
        assert set(snapshot["data"]) == {"epoch", "rev", "drives", "status"}
        assert list(snapshot["data"]["drives"]) == ["FEED1"]
        status(dsm, "FEED1", "busy")
        events = reader.wait_events(2, "the status's change")
        changed = [e for e in events[1:] if e["data"]["status"].get("FEED1")]
        assert changed and changed[0]["data"]["status"]["FEED1"] == [{"time_stamp": 1,
                                                                     "status": "busy"}]

        def expired() -> Any:
            return [e for e in reader.wait_events(2, "events")
                    if (e["data"].get("drives", {}).get("FEED1") or {}).get("state") == "expired"]
        wait_for(expired, 15, "the expiry's change event")
        # A client applying them holds what the endpoints show.
        rows, statuses = {}, {}
        for event in reader.wait_events(3, "all"):
            if event["event"] == "snapshot":
                rows, statuses = event["data"]["drives"], event["data"]["status"]
            else:
                rows.update(event["data"]["drives"])
                statuses.update(event["data"]["status"])
        assert rows == json.loads(get(dsm, "/api/drives")[1])
        assert statuses == json.loads(get(dsm, "/api/status")[1])
        revs = [e["data"]["rev"] for e in reader.wait_events(3, "all")]
        assert revs == list(range(revs[0], revs[0] + len(revs)))
        assert [e["id"] for e in reader.wait_events(3, "all")] == [
            "%s-%d" % (snapshot["data"]["epoch"], rev) for rev in revs]
    finally:
        reader.close()


def test_parts_snapshot_of_a_real_dsm_is_its_endpoints_and_resumes_by_its_id(dsm_factory):
    dsm = web_dsm(dsm_factory, "--drive-lifetime", "600")
    for serial in ("PART1", "PART2"):
        dsm.announce(announcement(serial))
    wait_for(lambda: len(dsm.query_json("m")) == 2, 10, "both drives heard")
    status(dsm, "PART1", "busy")
    status(dsm, "ORPHAN", "no drive")  # statuses only
    reader = EventReader(dsm, target="/api/events?parts=1")
    try:
        events = reader.wait_events(3, "the snapshot in parts")
        assert [e["event"] for e in events] == ["snapshot-start", "snapshot-part", "snapshot-end"]
        start, part, end = (e["data"] for e in events)
        assert start["parts"] == end["parts"] == part["part"] == 1 and start["rows"] == 3
        assert "id" not in events[0] and "id" not in events[1]
        assert events[2]["id"] == "%s-%d" % (end["epoch"], end["rev"])
        assert part["drives"] == json.loads(get(dsm, "/api/drives")[1])
        assert part["status"] == json.loads(get(dsm, "/api/status")[1])
        # Resumed by the id snapshot-end carried: only what came after, no snapshot again.
        status(dsm, "PART2", "ok")
        wait_for(lambda: reader.wait_events(4, "the change")[3:], 15, "the change")
        resumed = EventReader(dsm, "Last-Event-ID: %s\r\n" % events[2]["id"],
                              target="/api/events?parts=1")
        try:
            [change] = resumed.wait_events(1, "the missed change")
            assert change["event"] == "change" and list(change["data"]["status"]) == ["PART2"]
        finally:
            resumed.close()
    finally:
        reader.close()


def test_last_event_id_resumes_and_a_restarted_dsm_sends_a_snapshot(dsm_factory):
    state_dir = os.path.join(dsm_factory.new_dirs(), "state")
    dsm = web_dsm(dsm_factory, "--state-dir", state_dir)
    status(dsm, "RES1", "one")
    first = EventReader(dsm)
    [snapshot] = first.wait_events(1, "the snapshot")
    first.close()
    last_id = snapshot["id"]
    status(dsm, "RES1", "two")
    status(dsm, "RES2", "three")
    for resumed in (EventReader(dsm, "Last-Event-ID: %s\r\n" % last_id),
                    EventReader(dsm, target="/api/events?since=%s" % last_id)):
        try:
            events = resumed.wait_events(2, "the two missed changes")
            assert [e["event"] for e in events] == ["change", "change"]
            assert events[0]["data"]["rev"] == snapshot["data"]["rev"] + 1
            assert events[1]["data"]["status"]["RES2"] == [{"time_stamp": 1, "status": "three"}]
        finally:
            resumed.close()
    dsm.stop()
    again = web_dsm(dsm_factory, "--state-dir", state_dir)
    restarted = EventReader(again, "Last-Event-ID: %s\r\n" % last_id)
    try:
        [fresh] = restarted.wait_events(1, "a snapshot from the new process")
        assert fresh["event"] == "snapshot"
        assert fresh["data"]["epoch"] != snapshot["data"]["epoch"]
        assert fresh["data"]["status"] == json.loads(get(again, "/api/status")[1])
        assert set(fresh["data"]["status"]) == {"RES1", "RES2"}
    finally:
        restarted.close()


def test_slow_reader_gets_resync_and_is_closed(dsm_factory):
    # A reader that reads nothing: the kernel's buffers fill, then the stream's 1 MiB high-water
    # mark, then the feed's 16 MiB window passes it (each event carries the serial's whole
    # history: 20 x 50 KB), and it is sent `resync` and closed.
    dsm = web_dsm(dsm_factory, "--idle-timeout", "60")
    slow = silent_client(dsm.info["http_port"])
    reader = EventReader(dsm, sock=slow)
    try:
        big = "y" * 50_000
        for n in range(150):  # bounded: about 40 are needed
            status(dsm, "SLOW1", big + str(n))
            if "dsm_http_event_stream_resyncs_total 1" in get(dsm, "/metrics")[1].decode():
                break
        # Nothing more is queued for it: what it reads now ends with the resync, then the close.
        wait_for(lambda: reader._read() or reader.closed, 30, "reading to the end")
        assert reader.data.endswith(b'event: resync\ndata: {"reason": "too slow"}\n\n')
        metrics = [line for line in get(dsm, "/metrics")[1].decode().splitlines()
                   if line.startswith("dsm_http_event_stream")]
        assert metrics == ["dsm_http_event_streams_open 0", "dsm_http_event_stream_resyncs_total 1"]
    finally:
        reader.close()


def test_streams_count_against_the_per_address_limit(dsm_factory):
    dsm = web_dsm(dsm_factory, "--max-connections-per-address", "2")
    readers = [EventReader(dsm) for _ in range(2)]
    try:
        for reader in readers:
            reader.wait_events(1, "a snapshot")
        with socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10) as refused:
            assert refused.recv(65536).startswith(b"HTTP/1.1 503")  # said before any request
        readers[0].close()
        wait_for(lambda: "dsm_http_event_streams_open 1" in get_when_allowed(dsm), 10,
                 "one stream left")

        def stream_opened() -> bool:
            # The /metrics connection's slot is freed when the DSM reads its close: try again.
            with socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10) as sock:
                sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: dsm\r\n\r\n")
                try:
                    return sock.recv(65536).startswith(b"HTTP/1.1 200")
                except ConnectionResetError:
                    return False
        wait_for(stream_opened, 10, "a stream once a slot is free")
    finally:
        for reader in readers:
            reader.close()


def get_when_allowed(dsm) -> str:
    try:
        response, body = get(dsm, "/metrics")
    except (OSError, http.client.HTTPException):
        return ""
    return body.decode() if response.status == 200 else ""


def test_idle_timeout_spares_an_open_stream(dsm_factory):
    dsm = web_dsm(dsm_factory, "--idle-timeout", "0.5")
    reader = EventReader(dsm)
    idle = socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10)
    try:
        reader.wait_events(1, "the snapshot")
        # The idle timeout has passed once the plain connection opened after the stream is closed.
        wait_for(lambda: is_closed_by_peer(idle), 15, "the idle connection closed")
        status(dsm, "IDLE1", "still here")
        events = reader.wait_events(2, "a change on the stream")
        assert events[1]["data"]["status"]["IDLE1"][0]["status"] == "still here"
        assert not reader.closed
    finally:
        idle.close()
        reader.close()


def test_head_answers_headers_only(dsm_factory):
    dsm = web_dsm(dsm_factory)
    with socket.create_connection((LOOPBACK, dsm.info["http_port"]), timeout=10) as sock:
        sock.sendall(b"HEAD /api/events HTTP/1.1\r\nHost: dsm\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\n")
    assert b"text/event-stream" in data


def test_etag_304_and_gzip_end_to_end(dsm_factory):
    dsm = web_dsm(dsm_factory)
    for n in range(30):
        status(dsm, "TAG%02d" % n, "ok %d" % n)
    for path in ("/api/status", "/api/drives", "/api/drives/TAG01", "/api/lab"):
        response, body = get(dsm, path)
        tag = response.getheader("ETag")
        assert response.status == 200 and tag and response.getheader("Vary") == "Accept-Encoding"
        response, again = get(dsm, path, {"If-None-Match": tag})
        assert response.status == 304 and again == b"" and response.getheader("ETag") == tag
    response, plain = get(dsm, "/api/status")
    response, zipped = get(dsm, "/api/status", {"Accept-Encoding": "gzip"})
    assert response.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(zipped) == plain
    old_tag = response.getheader("ETag")
    status(dsm, "TAG00", "changed")
    response, _ = get(dsm, "/api/status", {"If-None-Match": old_tag})
    assert response.status == 200 and response.getheader("ETag") != old_tag


def test_heard_again_and_wipe_are_change_events(dsm_factory):
    dsm = web_dsm(dsm_factory, "--drive-lifetime", "1")
    dsm.announce(announcement("BACK1"))
    wait_for(lambda: "BACK1" in dsm.query_json("m"), 10, "BACK1 heard")
    reader = EventReader(dsm)
    try:
        reader.wait_events(1, "the snapshot")

        def state_event(state: str) -> Any:
            return [e for e in reader.wait_events(1, "events") if e["event"] == "change" and
                    (e["data"]["drives"].get("BACK1") or {}).get("state") == state]
        wait_for(lambda: state_event("expired"), 15, "BACK1 expired")
        dsm.announce(announcement("BACK1"))
        wait_for(lambda: state_event("alive"), 15, "BACK1 heard again")
        assert dsm.query(b"w").endswith(b"\x04")
        wiped = wait_for(lambda: [e for e in reader.wait_events(1, "events")
                                  if e["event"] == "change" and e["data"]["wipe"]], 15, "a wipe")
        assert wiped[0]["data"]["drives"] == {} and wiped[0]["data"]["status"] == {}
    finally:
        reader.close()


def test_a_stream_that_never_reads_is_closed_within_bounds(dsm_factory):
    # Whichever comes first closes it: the resync once its events left the window (then, unread,
    # --idle-timeout), or --idle-timeout while nothing of its output moves.
    dsm = web_dsm(dsm_factory, "--idle-timeout", "2")
    slow = silent_client(dsm.info["http_port"])
    EventReader(dsm, sock=slow)
    try:
        big = "z" * 50_000
        for n in range(150):  # bounded
            status(dsm, "STUCK1", big + str(n))
            if is_closed_by_peer(slow):
                break
        wait_for(lambda: is_closed_by_peer(slow), 20, "the DSM closing the stuck stream")
        assert "dsm_http_event_streams_open 0" in get(dsm, "/metrics")[1].decode()
    finally:
        slow.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_n_shows_the_feed(dsm_factory):
    dsm = web_dsm(dsm_factory)
    status(dsm, "CURL1", "seen by curl")
    # --max-time bounds it: curl ends with 28 (timed out) on a stream that never ends.
    done = subprocess.run(["curl", "-N", "-s", "--max-time", "2",
                           "http://%s:%d/api/events" % (LOOPBACK, dsm.info["http_port"])],
                          stdout=subprocess.PIPE, timeout=30)
    assert done.returncode == 28
    text = done.stdout.decode()
    assert text.startswith("retry: 2000\n\nid: ") and "event: snapshot\n" in text
    assert '"CURL1": [{"time_stamp": 1, "status": "seen by curl"}]' in text
