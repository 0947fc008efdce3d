"""Fair shares (issue 10): per-address limits, a reserve for this host's clients, a deadline for each
request from its first byte, idle timers that a drip cannot reset, descriptor-derived connection
limits, and output limits that count what queued output costs.
"""
from __future__ import annotations

import resource
import socket

import pytest
import time
from typing import List

from DriveStateMonitor.event_loop import CHUNK_OVERHEAD, EventLoop, StreamTransport
from DriveStateMonitor.fair_shares import ConnectionSlots, sweep
from dsm_harness import END, LOOPBACK, free_tcp_port, wait_for
from test_limits_access import ask, connect, counter, json_error, read_until_closed


REMOTE = ("::ffff:192.0.2.7", 40000)
OTHER_REMOTE = ("198.51.100.9", 40001)
LOOP = ("127.0.0.1", 40002)
UNIX = ""


# --- admission (pure) ---------------------------------------------------------------------------
def test_one_address_gets_at_most_its_share_and_others_still_get_in():
    slots = ConnectionSlots(max_connections=100, per_address=3, local_reserve=10)
    for _ in range(3):
        assert slots.refusal(REMOTE) is None
        slots.opened(REMOTE)
    reason = slots.refusal(REMOTE)
    assert reason is not None and reason[0] == "per_address"
    assert "192.0.2.7" in reason[1] and "--max-connections-per-address" in reason[1]
    assert slots.refusal(OTHER_REMOTE) is None
    slots.closed(REMOTE)
    assert slots.refusal(REMOTE) is None


def test_remote_peers_cannot_take_the_slots_reserved_for_this_hosts_clients():
    slots = ConnectionSlots(max_connections=40, per_address=1000, local_reserve=10)
    for peer in (REMOTE, OTHER_REMOTE):
        while slots.refusal(peer) is None:
            slots.opened(peer)
    assert slots.open == 30
    assert slots.refusal(REMOTE)[0] == "limit"
    # This host's own clients (peer address = local address) may use all but the Unix sockets'
    # last few, the Unix sockets everything.
    while slots.refusal(LOOP, lambda: LOOP) is None:
        slots.opened(LOOP)
    assert 30 < slots.open < 40
    while slots.refusal(UNIX) is None:
        slots.opened(UNIX)
    assert slots.open == 40
    assert "too many connections" in slots.refusal(UNIX)[1]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 40, 200, 1000])
@pytest.mark.parametrize("per_address", [1, 3, 256, 10 ** 6])
def test_one_peer_holds_at_most_half_of_the_limit_whatever_the_limits(limit, per_address):
    for peer, local in ((REMOTE, None), (LOOP, lambda: LOOP), (("127.0.0.2", 1), lambda: LOOP)):
        slots = ConnectionSlots(max_connections=limit, per_address=per_address, local_reserve=64)
        held = 0
        while slots.take(peer, local) is None and held <= limit:
            held += 1
        assert held == min(per_address, max(1, limit // 2)), peer
        assert slots.refusal(peer, local)[0] == "per_address" or held == slots.open == limit


def test_a_loopback_peer_that_is_not_this_host_draws_on_the_shared_slots():
    slots = ConnectionSlots(max_connections=200, per_address=256, local_reserve=64)
    asked = []

    def own_address():
        asked.append(1)
        return LOOP

    for peer in (("127.0.0.2", 5000), ("127.0.0.3", 5000)):  # namespaces, containers
        while slots.take(peer, own_address) is None:
            pass
    assert slots.open == 150 and slots.refusal(("127.0.0.4", 1), own_address)[0] == "limit"
    # the local address is asked only once the shared slots are gone
    assert len(asked) == 2
    assert slots.take(LOOP, own_address) is None  # a script on this host still gets in
    assert slots.refusal(LOOP)[0] == "limit"  # (without its local address it is not known)


class _FakeTransport:
    def __init__(self, started, last_activity, reading=True):
        self.request_started = started
        self.last_activity = last_activity
        self.reading = reading
        self.closed = False


def test_sweep_finds_requests_past_the_deadline_and_idle_connections():
    late = _FakeTransport(started=90.0, last_activity=99.0)
    paused = _FakeTransport(started=90.0, last_activity=99.0, reading=False)
    idle = _FakeTransport(started=None, last_activity=10.0)
    busy = _FakeTransport(started=99.0, last_activity=99.0)
    exempt = _FakeTransport(started=None, last_activity=10.0)
    found = sweep([late, paused, idle, busy, exempt], 100.0, 5.0,
                  lambda t: None if t is exempt else 30.0)
    assert found == ([late], [idle])


# --- output accounting (in memory, socketpairs) ---------------------------------------------------
class _Sink:
    def data_received(self, data): pass
    def eof_received(self): pass
    def connection_lost(self): pass


def _transport(loop: EventLoop, max_output=None) -> StreamTransport:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport = StreamTransport(loop, ours, "test", max_output=max_output)
    transport.start(_Sink())
    transport._peer = theirs  # kept open, never read
    return transport


def test_many_small_writes_cost_about_their_bytes_not_an_object_each():
    loop = EventLoop()
    transport = _transport(loop)
    for _ in range(10_000):
        transport.write(b"@ /some/object\n")
    payload = 10_000 * 15
    assert transport.output_size == payload
    # Coalesced: a handful of chunks, not ten thousand (each would cost CHUNK_OVERHEAD more).
    assert transport.output_cost < payload + 10 * CHUNK_OVERHEAD
    transport.close()
    transport._peer.close()
    loop.close()


def test_max_output_counts_chunk_overhead_so_many_tiny_chunks_trip_it():
    loop = EventLoop()
    transport = _transport(loop, max_output=200_000)
    big = b"x" * 5000  # over the coalescing size: one chunk each
    for _ in range(39):  # 195,000 bytes of payload, but more than 200,000 of cost
        transport.write(big)
    assert transport.closed
    transport._peer.close()
    loop.close()


def test_clients_sent_the_same_cached_reply_share_its_bytes_in_the_total():
    loop = EventLoop()
    reply = b"r" * 1_000_000
    transports = [_transport(loop) for _ in range(50)]
    for transport in transports:
        transport.write(reply)
    assert loop.output_total < len(reply) + 50 * CHUNK_OVERHEAD + 1000
    for transport in transports:
        transport.close()
        transport._peer.close()
    assert loop.output_total == 0
    loop.close()


def test_past_max_output_total_the_connection_holding_the_most_is_closed_first():
    loop = EventLoop()
    loop.max_output_total = 3_000_000
    small, large, medium = _transport(loop), _transport(loop), _transport(loop)
    small.write(b"s" * 300_000)
    large.write(b"l" * 2_000_000)
    large.write(b"L" * 1_000_000)
    medium.write(b"m" * 900_000)
    loop.flush_dirty()
    assert large.closed and not small.closed and not medium.closed
    assert loop.output_evictions == 1
    for transport in (small, large, medium):
        transport.close()
        transport._peer.close()
    loop.close()


# --- real DSMs -------------------------------------------------------------------------------------
def test_connections_past_the_per_address_limit_get_a_clear_error_and_unix_still_works(dsm_factory):
    dsm = dsm_factory.start("--max-connections-per-address", "3")
    # Status Server connections stay open once answered (query connections close).
    held = [dsm.connect_statserv() for _ in range(3)]
    try:
        for sock in held:  # admitted: each answers
            assert ask(sock, "PWD") == ". /"
        with connect(dsm.status_port) as fourth:
            error = json_error(read_until_closed(fourth))
            assert "from 127.0.0.1" in error and "--max-connections-per-address" in error
        assert dsm.query(b"s", unix=True) == b"{}" + END
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: counter(dsm, "connections_refused_per_address") >= 1, 5, "the count")


def test_http_head_dripped_a_byte_at_a_time_gets_408_at_the_request_timeout(dsm_factory):
    http_port = free_tcp_port()  # --http-port 0 turns HTTP off: pick a free port
    dsm = dsm_factory.start("--request-timeout", "1", "--idle-timeout", "60",
                            "--http-port", str(http_port))
    head = b"GET /api/drives HTTP/1.1\r\nHost: x\r\n" + b"X-Drip: " + b"a" * 200
    with socket.create_connection((LOOPBACK, http_port), timeout=10) as sock:
        started = time.monotonic()
        reply = b""
        for byte in head:  # bounded: 240 bytes, ends when the DSM answers
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.1)
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            reply += chunk
            break
        reply += read_until_closed(sock, timeout=5)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert time.monotonic() - started < 4
    assert dsm.proc.poll() is None


def test_unfinished_status_and_statserv_line_get_their_error_at_the_request_timeout(dsm_factory):
    dsm = dsm_factory.start("--request-timeout", "0.5")
    with connect(dsm.status_port) as status_sock, dsm.connect_statserv() as line_sock:
        status_sock.sendall(b'{"serial_number": "SLOW", "time_stamp": 1, ')
        line_sock.sendall(b"PUT /slow/one ")
        error = json_error(read_until_closed(status_sock, timeout=5))
        assert "--request-timeout" in error
        refused = read_until_closed(line_sock, timeout=5).decode()
        assert refused.startswith("! LIMIT ") and "--request-timeout" in refused
    assert dsm.query_json("s") == {}
    wait_for(lambda: counter(dsm, "connections_closed_request_timeout") >= 2, 5, "the count")


def test_whitespace_dripped_on_a_query_connection_does_not_keep_it_from_idling_out(dsm_factory):
    dsm = dsm_factory.start("--idle-timeout", "1")
    with dsm.connect_query() as sock:
        started = time.monotonic()
        closed = False
        for _ in range(60):  # bounded: at most 6 s of drip
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(100) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
        assert closed, "a whitespace drip held the connection"
        assert time.monotonic() - started < 5


def test_statserv_connection_holding_nothing_idles_out_one_with_a_monitor_stays(dsm_factory):
    dsm = dsm_factory.start("--statserv-idle-timeout", "0.5")
    with dsm.connect_statserv() as watcher, dsm.connect_statserv() as bare:
        assert ask(watcher, "TOUCH /lab/x") == "."
        assert ask(watcher, "MONITOR /lab/x").startswith(".")
        assert ask(bare, "PWD") == ". /"
        assert read_until_closed(bare, timeout=5) == b""
        assert ask(watcher, "PWD") == ". /"


def _limit_descriptors(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def test_below_the_descriptor_limit_excess_clients_get_an_error_and_the_log_stays_quiet(
        dsm_factory):
    dsm = dsm_factory.start("--max-connections", "1000",
                            prefix=["prlimit", "--nofile=128:128", "--"])
    log_text = dsm.log_text()
    assert "allows" in log_text and "--max-connections" in log_text
    opened: List[socket.socket] = []
    refused = 0
    try:
        for _ in range(160):  # bounded: more than the 128 descriptors
            # Status Server connections stay open once answered (query connections close).
            sock = socket.create_connection((LOOPBACK, dsm.statserv_port), timeout=5)
            opened.append(sock)
            try:
                reply = ask(sock, "PWD")
            except (ConnectionResetError, BrokenPipeError):
                reply = ""
            if "too many connections" in reply:
                refused += 1
            else:
                assert reply == ". /", reply
        assert refused >= 160 - 128
        # A snapshot (SAVE) still has descriptors to work with.
        with dsm.connect_statserv(unix=True) as sock:
            assert ask(sock, "SAVE") == "."
    finally:
        for sock in opened:
            sock.close()
    assert dsm.proc.poll() is None
    assert dsm.log_text().count("ERROR") < 5


def test_http_clients_asking_for_the_same_cached_drives_reply_share_its_bytes():
    from DriveStateMonitor.web_service import WebApp, WebConnection, WebData
    cached = b'{"D": "' + b"d" * 2_000_000 + b'"}\x04'
    app = WebApp(WebData(lambda: memoryview(cached)[:-1], lambda serial: None,
                         lambda: memoryview(cached)[:-1], lambda: {}), {}, lambda: 1000.0)
    loop = EventLoop()
    transports = []
    for _ in range(40):
        ours, theirs = socket.socketpair()
        transport = StreamTransport(loop, ours, "http test")
        transport.start(WebConnection(transport, app))
        transport._peer = theirs  # never read
        transport.protocol.data_received(b"GET /api/drives HTTP/1.1\r\nHost: x\r\n\r\n")
        transports.append(transport)
    # 40 replies of 2 MB queued, one copy held: heads and chunk objects are all that is added.
    assert all(t.output_size > 2_000_000 for t in transports)
    assert loop.output_total < len(cached) + 40 * (1000 + 2 * CHUNK_OVERHEAD)
    for transport in transports:
        transport.close()
        transport._peer.close()
    loop.close()


class _OutOfDescriptors(socket.socket):
    """A listening socket whose accept() fails as if the process had no descriptor left."""

    failures = 0

    def _accept(self):  # what Listener calls (socket.accept() calls it too)
        type(self).failures += 1
        raise OSError(24, "Too many open files")  # EMFILE


def test_out_of_descriptors_the_listener_backs_off_instead_of_spinning_and_logs_once(caplog):
    import logging
    from DriveStateMonitor.event_loop import ACCEPT_BACKOFF_S, Listener
    loop = EventLoop()
    sock = _OutOfDescriptors(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(8)
    listener = Listener(loop, sock, "test listener", lambda conn, addr: None)
    clients = [socket.create_connection(sock.getsockname()) for _ in range(3)]
    try:
        with caplog.at_level(logging.ERROR, logger="dsm.loop"):
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # bounded: one second of loop passes
                loop.run_once(max_wait=0.01)
        # Spinning would have retried accept() thousands of times in that second; backing off
        # (0.1 s, doubling) tries a handful of times.
        assert 1 <= _OutOfDescriptors.failures <= 1.0 / ACCEPT_BACKOFF_S
        errors = [r for r in caplog.records if "cannot accept" in r.getMessage()]
        assert len(errors) == 1
    finally:
        for client in clients:
            client.close()
        listener.close()
        loop.close()


def _hold_statserv_connections(dsm, source: str, at_most: int) -> List[socket.socket]:
    """Quiet Status Server connections from `source`, opened until the DSM refuses one (bounded)."""
    held: List[socket.socket] = []
    for _ in range(at_most + 1):
        sock = socket.create_connection((LOOPBACK, dsm.statserv_port), timeout=10,
                                        source_address=(source, 0))
        answer = ask(sock, "PWD")
        if answer != ". /":
            sock.close()
            assert answer.startswith("! LIMIT too many connections"), answer
            return held
        held.append(sock)
    raise AssertionError("%d connections from %s were all admitted" % (len(held), source))


@pytest.mark.parametrize("limit", [200, 4])
def test_loopback_peers_of_other_addresses_cannot_starve_a_test_scripts_status(dsm_factory,
                                                                               limit):
    dsm = dsm_factory.start("--max-connections", str(limit))
    held: List[socket.socket] = []
    try:
        # a namespace or container peer on 127.0.0.2 holds all it may: half the limit
        held += _hold_statserv_connections(dsm, "127.0.0.2", limit)
        assert len(held) == limit // 2
        assert dsm.send_status(b"{'serial_number': 'ONE', 'time_stamp': 1, 'status': '001'}") \
            == END
        # a second one on 127.0.0.3 takes the shared slots, not the reserve of this host's own
        held += _hold_statserv_connections(dsm, "127.0.0.3", limit)
        assert len(held) < limit
        assert dsm.send_status(b"{'serial_number': 'TWO', 'time_stamp': 2, 'status': '002'}") \
            == END
    finally:
        for sock in held:
            sock.close()
    assert sorted(dsm.query_json("s")) == ["ONE", "TWO"]
