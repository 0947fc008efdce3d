"""A MemoryError while handling one client is that client's error reply (event_loop.py,
StreamTransport.out_of_memory): over real socketpairs, the client gets its protocol's error and
is closed, the loop counts it as that client's failure (never the kill switch's) and answers the
others."""
import json
import socket
import time

import pytest

from DriveStateMonitor.event_loop import EXIT_OK, EventLoop, StreamTransport
from DriveStateMonitor.query_service import QueryConnection
from DriveStateMonitor.status_service import OUT_OF_MEMORY, StatusConnection

END = b"\x04"
DEADLINE_S = 5.0


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def run_until(loop, condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        loop.run_once(max_wait=0.05)


class Client:
    """The client end of a socketpair whose server end a StreamTransport serves."""

    def __init__(self, loop, make_protocol, made):
        server, self.sock = socket.socketpair()
        self.transport = StreamTransport(loop, server, "test")
        self.transport.start(make_protocol(self.transport))
        self.sock.setblocking(False)
        self.received = b""
        self.eof = False
        made.append(self)

    def read(self):
        while not self.eof:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return self
            self.eof = not chunk
            self.received += chunk
        return self


@pytest.fixture
def made():
    clients = []
    yield clients
    for client in clients:
        client.transport.close()
        client.sock.close()


def status(serial):
    return json.dumps({"serial_number": serial, "time_stamp": 1, "status": "ok"}).encode()


def test_a_memory_error_storing_a_status_is_that_clients_error_and_the_others_go_on(loop, made):
    stored = []

    def store(report):
        if report.serial_number == "HUGE":
            raise MemoryError()
        stored.append(report.serial_number)
        return None

    def protocol(transport):
        return StatusConnection(transport, store, lambda source, what: None)

    failing = Client(loop, protocol, made)
    fine = Client(loop, protocol, made)
    failing.sock.sendall(status("HUGE"))
    fine.sock.sendall(status("SMALL"))
    run_until(loop, lambda: failing.read().eof and fine.read().eof, "both answered")
    assert json.loads(failing.received[:-1]) == {"error": OUT_OF_MEMORY}
    assert failing.received.endswith(END)
    assert fine.received == END and stored == ["SMALL"]
    assert loop.memory_errors == 1 and loop.input_failures == 1
    assert loop.internal_failures == 0 and loop.exit_code == EXIT_OK


def test_a_memory_error_building_a_reply_is_an_error_reply_and_the_parser_is_dropped(loop, made):
    def answer(query, label):
        if query.kind == "s":
            raise MemoryError()
        return b"{}" + END

    connections = []

    def protocol(transport):
        connections.append(QueryConnection(transport, answer))
        return connections[-1]

    failing = Client(loop, protocol, made)
    failing.sock.sendall(b"s m")  # the m after it is dropped with the rest of the input
    run_until(loop, lambda: failing.read().eof, "the error reply")
    reply = json.loads(failing.received[:-1])
    assert reply["error"].startswith("out of memory") and failing.received.endswith(END)
    assert not connections[0].pending and not connections[0].parser.partial
    fine = Client(loop, protocol, made)
    fine.sock.sendall(b"m")
    run_until(loop, lambda: fine.read().eof, "the next client answered")
    assert fine.received == b"{}" + END
    assert loop.internal_failures == 0


def test_a_protocol_without_an_error_reply_is_closed_and_never_the_dsms_failure(loop, made):
    class Greedy:
        def data_received(self, data):
            raise MemoryError()

        def eof_received(self):
            pass

        def connection_lost(self):
            pass

    client = Client(loop, lambda transport: Greedy(), made)
    client.sock.sendall(b"anything")
    run_until(loop, lambda: client.read().eof, "the connection closed")
    assert client.received == b"" and client.transport.closed
    assert loop.memory_errors == 1 and loop.internal_failures == 0
