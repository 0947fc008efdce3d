"""The one-shot status path (status_oneshot.py): the same replies and stored entries as the general
path (StreamTransport + StatusConnection) for every input, the acknowledgement only after the
journal flush, and every connection's slot given back exactly once."""
import json
import os
import socket
import time
from typing import Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from DriveStateMonitor.event_loop import EventLoop, StreamTransport
from DriveStateMonitor.persistence import FSYNC_ALWAYS, Journal
from DriveStateMonitor.state_guard import AckGuard
from DriveStateMonitor.status_oneshot import OneShotStatus, StatusPort
from DriveStateMonitor.status_protocol import (MAX_MESSAGE, StatusError, StatusParser,
                                               parse_whole_flat_status)
from DriveStateMonitor.status_service import StatusConnection
from test_event_loop import StatusSink
from test_status_protocol import STATUSES, outcome, render

DEADLINE_S = 5.0
ORIGINAL = b"{'serial_number': 'ZA1', 'time_stamp': '2026-11-30 06:00:00', 'status': '001'}"
SEPARATORS = st.text(alphabet=" \t\r\n\x0b\x0c\x04", max_size=3).map(str.encode)


# --- the parse: exactly what the framer and parse_status make of the same bytes ------------------
def fast_outcome(data: bytes, max_message: int = MAX_MESSAGE):
    try:
        report = parse_whole_flat_status(data, max_message)
    except StatusError as exc:
        return ("error", str(exc))
    if report is None:
        return None
    return ("report", report.serial_number, report.entry_json,
            type(report.time_stamp), repr(report.time_stamp),
            type(report.status), repr(report.status))


def assert_general_path_agrees(data: bytes, max_message: int = MAX_MESSAGE) -> bool:
    """When the one-shot parse takes `data`, the framer frames exactly one message from it and
    keeps nothing, and parse_status makes the same of that message. True if it took it."""
    fast = fast_outcome(data, max_message)
    if fast is None:
        return False  # the general path decides, nothing to compare
    parser = StatusParser(max_message)
    framed = parser.receive_data(data)
    assert len(framed) == 1 and framed[0].error is None, framed
    assert not parser.partial and not parser.in_message and parser.buffered == 0
    assert outcome(framed[0].message) == fast
    return True


@settings(max_examples=500, deadline=None)
@given(STATUSES, st.integers(0, 2), st.booleans(), SEPARATORS)
@example({"serial_number": "A", "time_stamp": "t", "status": "001"}, 0, False, b"\n")
@example({"serial_number": "", "time_stamp": "t", "status": "001"}, 0, False, b"")
@example({"serial_number": "A" * 257, "time_stamp": 1, "status": 2}, 1, False, b"\x04")
@example({"serial_number": 7, "time_stamp": 1, "status": 2}, 1, False, b"")
@example({"time_stamp": 1, "status": 2}, 0, True, b"")
def test_a_whole_flat_status_is_read_as_the_general_path_reads_it(value, form, compact, after):
    assert_general_path_agrees(render(value, form, compact) + after)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("{}'\": ,-.0123456789aéx\\\x01\n\x04"), max_size=40))
def test_near_misses_are_left_to_the_general_path_or_read_as_it_reads_them(text):
    assert_general_path_agrees(text.encode("utf-8"))


@pytest.mark.parametrize("data", [
    ORIGINAL, ORIGINAL + b"\n", ORIGINAL + b"\x04", ORIGINAL + b"\r\n",
    json.dumps({"serial_number": "S", "time_stamp": 1764474000.25, "status": -3}).encode(),
    json.dumps({"serial_number": "Ü1", "time_stamp": "t", "status": "é"}, ensure_ascii=False
               ).encode(),
])
def test_the_lab_scripts_statuses_take_the_one_shot_path(data):
    assert assert_general_path_agrees(data)


@pytest.mark.parametrize("data", [
    b"", b"\n", b" " + ORIGINAL,                      # nothing, or something before the brace
    ORIGINAL + ORIGINAL, ORIGINAL + b"\n" + ORIGINAL,  # two messages
    ORIGINAL[:-1], ORIGINAL + b"x",                   # cut short, or more after it
    json.dumps({"serial_number": "S", "time_stamp": 1, "status": "x"}, indent=2).encode(),
    b"{'serial_number': 'S', 'time_stamp': [1], 'status': 1}",  # not flat
    b"\xff" + ORIGINAL,                               # not UTF-8
])
def test_everything_else_is_left_to_the_general_path(data):
    assert fast_outcome(data) is None


def test_a_status_over_max_message_is_left_to_the_general_path():
    assert fast_outcome(ORIGINAL, max_message=len(ORIGINAL)) is not None
    assert fast_outcome(ORIGINAL, max_message=len(ORIGINAL) - 1) is None
    wide = "é" * 30  # characters and bytes differ: the limit is in bytes
    data = json.dumps({"serial_number": "S", "time_stamp": 1, "status": wide},
                      ensure_ascii=False).encode()
    assert fast_outcome(data, max_message=len(data)) is not None
    assert fast_outcome(data, max_message=len(data) - 1) is None


# --- over sockets: the one-shot connection against the general path -------------------------------
class Sink(StatusSink):
    """The daemon's side, reduced to what a status connection asks of it."""

    @property
    def stored(self):
        return [(report.serial_number, report.entry_json) for report in self.reports]


class Server:
    """A loopback listener, with a loop of its own, whose connections are served by the one-shot
    path or the general path, as the daemon serves them (daemon._accept_status /
    _status_transport)."""

    def __init__(self, sink=None, max_message=MAX_MESSAGE):
        self.loop = loop = EventLoop()
        self.sink = sink = sink or Sink()
        self.max_message = max_message
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.closed = []  # every handler whose connection closed, in order
        self.open = set()
        self.port = StatusPort(loop, sink.store, sink.bad_input, max_message, self.take_over,
                               lambda addr: "status %s:%d" % addr)

    def connect(self, data: bytes, then_close: bool = True) -> socket.socket:
        client = socket.create_connection(self.listener.getsockname())
        if data:
            client.sendall(data)
        if then_close:
            client.shutdown(socket.SHUT_WR)
        return client

    def accept(self, one_shot: bool):
        conn, addr = self.listener.accept()
        if one_shot:
            handler = OneShotStatus(self.port, conn, addr, self.on_close)
            self.open.add(handler)
            handler.start()
            return handler
        return self._general(conn, "status general")

    def take_over(self, oneshot):
        self.open.discard(oneshot)
        return self._general(oneshot.sock, oneshot.label, oneshot.on_close)

    def _general(self, conn, label, on_close=None):
        transport = StreamTransport(self.loop, conn, label, on_close=on_close or self.on_close)
        self.open.add(transport)
        transport.start(StatusConnection(transport, self.port.store, self.sink.bad_input,
                                         self.max_message))
        return transport

    def on_close(self, handler):
        self.closed.append(handler)
        self.open.discard(handler)

    def close(self):
        for handler in list(self.open):
            handler.close()
        self.listener.close()
        self.loop.close()


@pytest.fixture
def server():
    made = Server()
    try:
        yield made
    finally:
        made.close()


def read_to_end(loop, client, timeout=DEADLINE_S) -> bytes:
    """Runs the loop until the server closes the client's connection; everything it was sent."""
    client.setblocking(False)
    received = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            chunk = None
        except ConnectionResetError:
            break
        if chunk == b"":
            break
        if chunk:
            received += chunk
            continue
        assert time.monotonic() < deadline, "no close within %.0f s; got %r" % (timeout, received)
        loop.run_once(max_wait=0.01)
    client.close()
    return bytes(received)


def run_until_all_closed(server):
    deadline = time.monotonic() + DEADLINE_S
    while server.open:  # the server's side closes in the same pass or the next
        assert time.monotonic() < deadline, "connections still open: %r" % server.open
        server.loop.run_once(max_wait=0.01)


def served(data: bytes, one_shot: bool, sink_refuses=None, max_message=MAX_MESSAGE):
    """(reply bytes, stored entries, complaints, closes) of one connection that sent `data` and
    closed its side."""
    server = Server(Sink(sink_refuses), max_message)
    try:
        client = server.connect(data)
        server.accept(one_shot)
        reply = read_to_end(server.loop, client)
        run_until_all_closed(server)
        return reply, server.sink.stored, server.sink.bad, len(server.closed)
    finally:
        server.close()


INPUTS = [
    ORIGINAL, ORIGINAL + b"\n", ORIGINAL + ORIGINAL, ORIGINAL + b"\n" + ORIGINAL + b"\x04",
    ORIGINAL[:30], b"garbage", b"", b"{'serial_number': 'A', 'status': 1}",
    json.dumps({"serial_number": "S", "time_stamp": 1, "status": "x"}, indent=2).encode(),
    b"{'serial_number': '" + b"s" * 300 + b"', 'time_stamp': 1, 'status': 2}",
]


@pytest.mark.parametrize("data", INPUTS)
def test_one_shot_and_general_path_give_the_same_replies_and_store_the_same(data):
    assert served(data, one_shot=True) == served(data, one_shot=False)


@pytest.mark.parametrize("data", [ORIGINAL, ORIGINAL + ORIGINAL])
def test_a_refusal_by_the_store_reads_the_same_on_both_paths(data):
    refused = served(data, one_shot=True, sink_refuses="store full")
    assert refused == served(data, one_shot=False, sink_refuses="store full")
    assert json.loads(refused[0].split(b"\x04")[0]) == {"error": "store full"}


def test_a_message_over_max_message_reads_the_same_on_both_paths():
    assert served(ORIGINAL, True, max_message=40) == served(ORIGINAL, False, max_message=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STATUSES, st.integers(0, 2), SEPARATORS, st.integers(0, 2))
def test_one_shot_and_general_path_agree_on_generated_statuses(value, form, after, copies):
    data = (render(value, form, False) + after) * copies
    assert served(data, one_shot=True) == served(data, one_shot=False)


# --- acknowledgement after the journal flush ------------------------------------------------------
def test_the_ack_leaves_only_after_the_passes_journal_flush(server):
    seen_by_flush = []
    client = server.connect(ORIGINAL, then_close=False)
    client.setblocking(False)

    def journal_flush():  # the daemon's last before-sleep hook is the journal's flush
        try:
            seen_by_flush.append(client.recv(10))
        except BlockingIOError:
            seen_by_flush.append(None)

    server.loop.add_before_sleep(journal_flush)
    handler = server.accept(one_shot=True)
    assert isinstance(handler, OneShotStatus) and server.sink.stored  # read and stored at accept
    reply = read_to_end(server.loop, client)
    assert reply == b"\x04" and seen_by_flush[0] is None
    assert len(server.closed) == 1 and not server.open


def journaled_server(server, tmp_path) -> Tuple[Journal, AckGuard]:
    """`server` storing each status with a journal record under --fsync always, flushed through
    an AckGuard in the loop's before-sleep hook, as the daemon wires them."""
    journal = Journal(str(tmp_path / "state"), FSYNC_ALWAYS, lambda: {"format": 1})
    assert journal.open(1)
    guard = AckGuard(server.loop, journal)
    server.loop.add_before_sleep(lambda: guard.flush(time.monotonic()))

    def store_and_journal(report):
        server.sink.store(report)
        guard.record(["s", report.serial_number, 1])
        return None

    server.port.store = store_and_journal
    return journal, guard


def test_a_failed_journal_flush_with_fsync_always_withdraws_the_one_shot_ack(server, tmp_path):
    journal, guard = journaled_server(server, tmp_path)
    client = server.connect(ORIGINAL)
    os.close(journal._fd)  # the journal's next write fails (EBADF), as on a dying disk
    journal._fd = os.open(os.devnull, os.O_RDONLY)
    try:
        server.accept(one_shot=True)
        assert server.sink.stored
        assert read_to_end(server.loop, client) == b""  # closed unanswered, never a false ack
        assert guard.withdrawn == 1 and journal.refusing
    finally:
        journal.close()


@pytest.mark.parametrize("failure", ["out of memory framing the pass", "a bug in the flush"])
def test_a_journal_flush_that_raises_withdraws_the_ack_and_fails_the_state_dir(
        server, tmp_path, monkeypatch, failure):
    # Not only an OSError: a MemoryError while framing a large pass (a memory cap), or any
    # exception escaping the flush, must not let the pass's replies acknowledge what is not on
    # disk. It is a failing state dir: withdrawn, refused, records counted, a snapshot due.
    from DriveStateMonitor import persistence
    journal, guard = journaled_server(server, tmp_path)

    def raises(*args, **kwargs):
        raise MemoryError() if failure.startswith("out of memory") else RuntimeError("a bug")

    monkeypatch.setattr(persistence, "encode_records", raises)
    monkeypatch.setattr(persistence, "encode_record", raises)  # (a pass of one record)
    if failure == "a bug in the flush":
        monkeypatch.setattr(Journal, "_flush", raises)
    client = server.connect(ORIGINAL)
    try:
        server.accept(one_shot=True)
        assert server.sink.stored
        assert read_to_end(server.loop, client) == b""  # closed unanswered, never a false ack
        assert guard.withdrawn == 1 and journal.refusing is not None
        assert journal.needs_snapshot and journal.records_dropped == 1
        assert ("out of memory" if failure.startswith("out of memory") else "a bug") \
            in journal.error
        assert server.loop.internal_failures == 0  # a failing state dir, not the kill switch
    finally:
        monkeypatch.undo()
        journal.close()


# --- a connection that says nothing, or says it late ----------------------------------------------
def test_a_status_sent_after_the_accept_is_read_when_it_arrives(server):
    client = server.connect(b"", then_close=False)
    handler = server.accept(one_shot=True)
    assert not server.sink.stored and not handler.closed
    client.sendall(ORIGINAL)
    assert read_to_end(server.loop, client) == b"\x04"
    assert [serial for serial, _ in server.sink.stored] == ["ZA1"] and len(server.closed) == 1


def test_a_silent_connection_closes_once_at_shutdown_and_gives_its_slot_back(server):
    client = server.connect(b"", then_close=False)
    handler = server.accept(one_shot=True)
    # what the daemon's idle sweep reads
    assert handler.request_started is None and handler.reading and handler.protocol is None
    handler.close_when_flushed()  # the daemon's shutdown
    assert read_to_end(server.loop, client) == b""
    handler.close()  # closing again gives nothing back twice
    assert server.closed == [handler] and handler.closed


def test_a_connection_closed_without_a_word_gives_its_slot_back_once(server):
    client = server.connect(b"")
    handler = server.accept(one_shot=True)
    client.close()
    run_until_all_closed(server)
    assert server.closed == [handler] and handler.closed


def test_a_handed_over_connection_gives_its_slot_back_once_through_its_transport(server):
    client = server.connect(ORIGINAL[:20], then_close=False)
    handler = server.accept(one_shot=True)
    (transport,) = server.open
    assert isinstance(transport, StreamTransport) and handler.closed
    client.sendall(ORIGINAL[20:])
    assert read_to_end(server.loop, client) == b"\x04"
    run_until_all_closed(server)
    assert server.closed == [transport]


def test_a_connection_accepted_later_never_overtakes_one_whose_status_is_on_its_way(server):
    # A client with several connections in flight: A is accepted before its bytes arrive, B after.
    first = server.connect(b"", then_close=False)
    server.accept(one_shot=True)  # nothing there yet: A waits for readability
    first.sendall(ORIGINAL.replace(b"ZA1", b"A"))
    second = server.connect(ORIGINAL.replace(b"ZA1", b"B"))
    server.accept(one_shot=True)  # B's status is there, but A's came first
    assert server.sink.stored == [] and server.port.waiting == 2
    assert read_to_end(server.loop, first) == b"\x04"
    assert read_to_end(server.loop, second) == b"\x04"
    assert [serial for serial, _ in server.sink.stored] == ["A", "B"]
    run_until_all_closed(server)
    assert server.port.waiting == 0 and len(server.closed) == 2


@pytest.mark.parametrize("at_accept", [True, False])
def test_a_failure_while_the_general_path_handles_the_bytes_read_here_closes_that_connection(
        server, at_accept):
    # An exception handling one connection's input is that connection's problem: whichever
    # handler holds the socket by then is closed and its slot given back, once.
    def failing_store(report):
        raise RuntimeError("a bug in storing")

    server.port.store = failing_store
    client = server.connect(ORIGINAL + ORIGINAL if at_accept else b"", then_close=False)
    if at_accept:
        with pytest.raises(RuntimeError):  # the listener logs it and closes the socket
            server.accept(one_shot=True)
    else:
        server.accept(one_shot=True)
        client.sendall(ORIGINAL + ORIGINAL)
    assert read_to_end(server.loop, client) == b""
    (transport,) = server.closed
    assert isinstance(transport, StreamTransport) and transport.closed and not server.open
    assert server.port.waiting == 0
    if not at_accept:
        assert server.loop.input_failures == 1
