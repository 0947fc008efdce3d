"""The event loop, its transports and the query/status connection glue, over real socketpairs.

Every wait is `loop.run_once(max_wait=...)` until a condition holds or a deadline passes; no sleeps.
"""
import errno
import json
import logging
import os
import signal
import socket
import time

import pytest

from DriveStateMonitor.event_loop import (ACCEPT_BACKOFF_S, EXIT_KILL_SWITCH, EXIT_OK,
                                          FAILURE_TRACEBACKS, HIGH_WATER, LOW_WATER,
                                          DatagramReader, EventLoop, KillSwitch, Listener,
                                          StreamTransport)
from DriveStateMonitor.query_protocol import encode_reply, error_reply as query_error_reply
from DriveStateMonitor.query_service import QueryConnection
from DriveStateMonitor.status_service import StatusConnection

DEADLINE_S = 5.0


# --- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def run_until(loop, condition, what="condition", timeout=DEADLINE_S):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        loop.run_once(max_wait=0.05)


class Recorder:
    """A protocol that remembers what the transport told it."""

    def __init__(self):
        self.data = bytearray()
        self.eof = False
        self.lost = False
        self.drained = 0

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof = True

    def connection_lost(self):
        self.lost = True

    def writing_drained(self):
        self.drained += 1


class Exploding(Recorder):
    def data_received(self, data):
        raise RuntimeError("boom")


class Peer:
    """The client end of a socketpair, read without blocking while the loop runs."""

    def __init__(self, sock):
        self.sock = sock
        sock.setblocking(False)
        self.received = bytearray()
        self.eof = False

    def send(self, data):
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def pump(self):
        while not self.eof:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = True
                return
            if not chunk:
                self.eof = True
            self.received += chunk

    def read_until(self, loop, condition, what="peer data"):
        def done():
            self.pump()
            return condition(self)
        run_until(loop, done, what)

    def close(self):
        self.sock.close()


class FakeTransport:
    label = "fake"
    high_water = HIGH_WATER

    def __init__(self):
        self.writes = []
        self.output_size = 0
        self.reading = True
        self.closing = False
        self.closed = False

    def write(self, data):
        self.writes.append(data)
        self.output_size += len(data)

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def close_when_flushed(self):
        self.closing = True


@pytest.fixture
def pairs():
    made = []

    def make(loop, protocol=None, label="test", **kwargs):
        server, client = socket.socketpair()
        transport = StreamTransport(loop, server, label, **kwargs)
        protocol = protocol if protocol is not None else Recorder()
        transport.start(protocol)
        peer = Peer(client)
        made.append((transport, peer))
        return transport, protocol, peer

    yield make
    for transport, peer in made:
        transport.close()
        peer.close()


# --- KillSwitch --------------------------------------------------------------------------------
def test_kill_switch_trips_only_past_five_failures():
    switch = KillSwitch()
    assert [switch.record(100.0 + i) for i in range(6)] == [False] * 5 + [True]


def test_kill_switch_forgets_failures_older_than_its_window():
    day = 24 * 3600.0
    switch = KillSwitch(limit=5, window_s=day)
    for i in range(5):
        switch.record(float(i))
    assert not switch.record(day + 0.5)  # the failure at t=0 has aged out: five remain
    assert switch.record(day + 0.6)      # six within one day


# --- timers and passes -------------------------------------------------------------------------
def test_call_later_runs_the_callback_once_due(loop):
    ran = []
    loop.call_later(0.01, lambda: ran.append("x"))
    run_until(loop, lambda: ran, "timer")
    loop.run_once(max_wait=0.02)
    assert ran == ["x"]


def test_due_timers_run_in_time_order(loop):
    ran = []
    now = time.monotonic()
    loop.call_at(now - 1, lambda: ran.append("second"))
    loop.call_at(now - 2, lambda: ran.append("first"))
    loop.call_at(now - 1, lambda: ran.append("third"))
    loop.run_once(max_wait=0)
    assert ran == ["first", "second", "third"]


def test_cancelled_timer_never_runs(loop):
    ran = []
    timer = loop.call_later(0.0, lambda: ran.append("cancelled"))
    loop.call_later(0.02, lambda: ran.append("kept"))
    timer.cancel()
    run_until(loop, lambda: ran, "kept timer")
    assert ran == ["kept"]


def test_loop_wakes_for_the_nearest_timer_not_max_wait(loop):
    ran = []
    loop.call_later(0.02, lambda: ran.append(True))
    started = time.monotonic()
    while not ran:
        loop.run_once(max_wait=30)
        assert time.monotonic() - started < DEADLINE_S
    assert time.monotonic() - started < 2.0


def test_failing_timer_counts_as_a_handler_failure_and_later_timers_still_run(loop):
    ran = []
    now = time.monotonic()
    loop.call_at(now - 2, lambda: 1 / 0)
    loop.call_at(now - 1, lambda: ran.append("after"))
    loop.run_once(max_wait=0)
    assert ran == ["after"] and loop.handler_failures == 1 and loop.exit_code == EXIT_OK


def test_before_sleep_hooks_run_every_pass(loop):
    passes = []
    loop.add_before_sleep(lambda: passes.append(1))
    for _ in range(3):
        loop.run_once(max_wait=0)
    assert len(passes) == 3


def test_run_returns_the_exit_code_given_to_stop(loop):
    loop.call_later(0.0, lambda: loop.stop(7))
    assert loop.run() == 7 and not loop.running


def test_signal_is_delivered_to_the_callback_inside_the_loop(loop):
    got = []
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        loop.on_signals([signal.SIGUSR1], got.append)
        os.kill(os.getpid(), signal.SIGUSR1)
        run_until(loop, lambda: got, "SIGUSR1")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == [signal.SIGUSR1]


# --- StreamTransport ---------------------------------------------------------------------------
def test_bytes_from_the_peer_reach_the_protocol(loop, pairs):
    transport, protocol, peer = pairs(loop)
    peer.send(b"hello")
    run_until(loop, lambda: protocol.data == b"hello", "data")


def test_writes_reach_the_peer_in_order_after_the_pass(loop, pairs):
    transport, protocol, peer = pairs(loop)
    for i in range(100):
        transport.write(b"%d," % i)
    transport.write(b"")
    expected = b"".join(b"%d," % i for i in range(100))
    peer.read_until(loop, lambda p: len(p.received) >= len(expected))
    assert peer.received == expected and transport.output_size == 0


def test_peer_end_of_stream_reaches_the_protocol(loop, pairs):
    transport, protocol, peer = pairs(loop)
    peer.send(b"last")
    peer.sock.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: protocol.eof, "eof")
    assert protocol.data == b"last" and not transport.closed and not transport.reading


def test_partial_send_keeps_the_unsent_rest_and_sends_it_when_writable(loop, pairs):
    transport, protocol, peer = pairs(loop)
    payload = bytes(range(256)) * (8 * 1024 * 4)  # 8 MiB: far more than a socket buffer holds
    transport.write(payload)
    loop.run_once(max_wait=0)
    assert 0 < transport.output_size < len(payload)
    peer.read_until(loop, lambda p: len(p.received) >= len(payload), "8 MiB")
    assert peer.received == payload and transport.output_size == 0


def test_close_when_flushed_sends_everything_then_closes(loop, pairs):
    transport, protocol, peer = pairs(loop)
    payload = b"z" * (3 * 1024 * 1024)
    transport.write(payload)
    transport.close_when_flushed()
    loop.run_once(max_wait=0)
    assert not transport.closed  # the rest is still queued
    peer.read_until(loop, lambda p: p.eof, "peer end of stream")
    assert peer.received == payload and transport.closed and protocol.lost


def test_close_when_flushed_with_nothing_queued_closes_at_once(loop, pairs):
    transport, protocol, peer = pairs(loop)
    transport.close_when_flushed()
    loop.run_once(max_wait=0)
    assert transport.closed and protocol.lost
    peer.read_until(loop, lambda p: p.eof)


def test_close_drops_unsent_output_and_tells_the_protocol_and_owner(loop):
    closed_by = []
    server, client = socket.socketpair()
    try:
        transport = StreamTransport(loop, server, "t", on_close=closed_by.append)
        protocol = Recorder()
        transport.start(protocol)
        transport.write(b"never sent")
        transport.close()
        transport.close()
        transport.write(b"after close")
        assert transport.closed and protocol.lost and transport.output_size == 0
        assert closed_by == [transport]
        assert client.recv(100) == b""
    finally:
        client.close()


def test_paused_transport_reads_nothing_until_resumed(loop, pairs):
    transport, protocol, peer = pairs(loop)
    transport.pause_reading()
    peer.send(b"waiting")
    for _ in range(5):
        loop.run_once(max_wait=0.01)
    assert protocol.data == b"" and not transport.reading
    transport.resume_reading()
    run_until(loop, lambda: protocol.data == b"waiting", "data after resume")


def test_writing_drained_is_called_once_output_falls_below_low_water(loop, pairs):
    transport, protocol, peer = pairs(loop)
    transport.write(b"a" * (HIGH_WATER + 1))
    loop.run_once(max_wait=0)
    assert protocol.drained == 0 and transport.output_size > LOW_WATER
    peer.read_until(loop, lambda p: protocol.drained, "writing_drained")
    assert protocol.drained == 1


def test_output_past_max_output_aborts_the_connection(loop, pairs):
    transport, protocol, peer = pairs(loop, max_output=100)
    transport.write(b"x" * 50)
    transport.write(b"x" * 51)
    assert transport.closed and protocol.lost
    peer.read_until(loop, lambda p: p.eof)
    assert loop.handler_failures == 0


def test_a_reply_written_below_the_high_water_mark_never_counts_as_a_client_not_reading(
        loop, pairs):
    # A pipelining protocol writes its next reply once output fell below the mark: the client
    # holds the mark plus one reply at most, and whether it is reset must not depend on how much
    # of the last reply the kernel happened to take.
    transport, protocol, peer = pairs(loop, max_output=1000)
    assert transport.high_water == 500
    transport.write(b"x" * 400)
    transport.write(b"y" * 900)  # past the cap, on top of output below the mark
    assert not transport.closed
    peer.read_until(loop, lambda p: len(p.received) == 1300, "both replies")
    assert peer.received == b"x" * 400 + b"y" * 900


def test_send_to_a_closed_peer_closes_only_this_connection(loop, pairs):
    transport, protocol, peer = pairs(loop)
    other, other_protocol, other_peer = pairs(loop)
    peer.close()
    transport.write(b"x" * 1000)
    run_until(loop, lambda: transport.closed, "close after failed send")
    assert protocol.lost and loop.handler_failures == 0
    other.write(b"still fine")
    other_peer.read_until(loop, lambda p: p.received == b"still fine")


def test_handler_exception_closes_that_connection_and_counts(loop, pairs):
    bad, bad_protocol, bad_peer = pairs(loop, Exploding())
    good, good_protocol, good_peer = pairs(loop)
    bad_peer.send(b"trigger")
    good_peer.send(b"ok")
    run_until(loop, lambda: bad.closed and good_protocol.data == b"ok", "failure handled")
    assert bad_protocol.lost and loop.handler_failures == 1 and loop.exit_code == EXIT_OK
    bad_peer.read_until(loop, lambda p: p.eof)
    assert not good.closed


def test_failures_handling_input_never_stop_the_loop(loop, pairs):
    for _ in range(12):
        pairs(loop, Exploding())[2].send(b"x")
    run_until(loop, lambda: loop.input_failures == 12, "twelve failures")
    assert loop.exit_code == EXIT_OK and loop.internal_failures == 0
    assert loop.kill_switch.record(0.0) is False  # nothing was recorded before this one


def test_five_internal_failures_keep_the_loop_running(loop):
    for _ in range(5):
        loop.call_later(0, boom)
    run_until(loop, lambda: loop.internal_failures == 5, "five failures")
    assert loop.exit_code == EXIT_OK


def test_sixth_internal_failure_stops_run_with_exit_code_4(loop):
    for _ in range(6):
        loop.call_later(0, boom)
    safety = loop.call_later(DEADLINE_S, lambda: loop.stop(99))
    assert loop.run() == EXIT_KILL_SWITCH
    safety.cancel()
    assert loop.internal_failures == 6


def boom() -> None:
    raise RuntimeError("boom")


def test_input_failure_tracebacks_are_rate_limited(loop, pairs, caplog):
    with caplog.at_level(logging.ERROR, logger="dsm.loop"):
        for _ in range(FAILURE_TRACEBACKS + 4):
            pairs(loop, Exploding())[2].send(b"x")
        run_until(loop, lambda: loop.input_failures == FAILURE_TRACEBACKS + 4, "failures")
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(logged) == FAILURE_TRACEBACKS and all(r.exc_info for r in logged)


def test_failing_datagram_handler_drops_that_datagram_only(loop):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    got = []

    def on_datagram(data, sender, ifindex):
        if data == b"bad":
            raise ValueError("bad datagram")
        got.append(data)

    reader = DatagramReader(loop, receiver, "multicast", on_datagram, with_ifindex=False)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for payload in (b"one", b"bad", b"two", b"bad", b"three"):
                sender.sendto(payload, receiver.getsockname())
        run_until(loop, lambda: len(got) == 3, "the good datagrams")
        assert got == [b"one", b"two", b"three"]
        assert loop.input_failures == 2 and loop.internal_failures == 0
        assert not reader.closed
    finally:
        reader.close()


def watched(loop, sock):
    """Whether the loop's selector watches `sock`."""
    try:
        loop._selector.get_key(sock)
        return True
    except KeyError:
        return False


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def datagram_pair():
    """(receiver, send): a Unix datagram pair, whose send() has queued each datagram on the
    receiver when it returns. UDP on loopback usually has too, but a loaded host can finish the
    delivery later (in ksoftirqd), and these tests count what one read finds."""
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield receiver, lambda *payloads: [sender.send(p) for p in payloads]
    sender.close()
    receiver.close()


def test_datagram_reader_coalesces_only_datagrams_that_come_close_together(loop, datagram_pair):
    receiver, send = datagram_pair
    clock, got = FakeClock(), []
    # A 1 s period: the check that 4 and 5 wait for the timer must not race a stalled host.
    reader = DatagramReader(loop, receiver, "multicast", lambda d, s, i: got.append(d),
                            with_ifindex=False, coalesce_s=1.0, clock=clock)
    send(b"1")
    run_until(loop, lambda: got == [b"1"], "the first datagram")
    assert watched(loop, receiver)  # it came to an idle socket: read at once, no timer
    clock.now += 5.0
    send(b"2")
    run_until(loop, lambda: got == [b"1", b"2"], "a datagram 5 s later")
    assert watched(loop, receiver)  # 5 s apart is not close together
    clock.now += 0.01
    send(b"3")
    run_until(loop, lambda: len(got) == 3, "a datagram 10 ms later")
    assert not watched(loop, receiver)  # close together: the timer reads from now on
    send(b"4", b"5")
    loop.run_once(max_wait=0.0)
    assert got == [b"1", b"2", b"3"]  # they wait for the timer, in the kernel's buffer
    run_until(loop, lambda: len(got) == 5, "the timer's batch")
    assert got == [b"1", b"2", b"3", b"4", b"5"] and reader.coalesced_batches == 1
    run_until(loop, lambda: watched(loop, receiver), "the selector watching again")
    assert reader.coalesced_batches == 1  # the read that found nothing handed back to it
    reader.close()


def test_datagram_reader_without_coalescing_reads_each_datagram_as_it_comes(loop, datagram_pair):
    receiver, send = datagram_pair
    got = []
    reader = DatagramReader(loop, receiver, "multicast", lambda d, s, i: got.append(d),
                            with_ifindex=False, coalesce_s=0.0, clock=FakeClock())
    for n in range(3):
        send(b"%d" % n)
        run_until(loop, lambda n=n: len(got) == n + 1, "datagram %d" % n)
        assert watched(loop, receiver)
    reader.close()


@pytest.fixture
def small_batches(loop, datagram_pair, monkeypatch):
    """A coalescing reader (50 ms) whose batches hold 4 datagrams; (reader, sent, got, delays):
    `delays` lists each delay the reader asked the loop's timers for."""
    from DriveStateMonitor import event_loop
    monkeypatch.setattr(event_loop, "DATAGRAMS_PER_EVENT", 4)
    receiver, send = datagram_pair
    got, delays = [], []
    call_later = loop.call_later
    monkeypatch.setattr(loop, "call_later", lambda delay, cb: delays.append(delay) or
                        call_later(delay, cb))
    reader = DatagramReader(loop, receiver, "multicast", lambda d, s, i: got.append(d),
                            with_ifindex=False, coalesce_s=0.05, clock=FakeClock())
    yield reader, send, got, delays
    reader.close()


def test_a_full_coalesced_batch_reads_again_without_waiting(loop, small_batches):
    reader, send, got, delays = small_batches
    send(b"a", b"b")
    run_until(loop, lambda: len(got) == 2, "two datagrams")
    assert delays == [0.05]  # two waited for one read: coalescing starts
    send(*[b"%d" % n for n in range(12)])
    run_until(loop, lambda: watched(loop, reader.sock), "the selector watching again")
    assert got[2:] == [b"%d" % n for n in range(12)]
    assert delays == [0.05, 0.0, 0.0, 0.0]  # three full batches, each read again at once


def test_a_full_first_read_goes_on_reading_at_once(loop, small_batches):
    reader, send, got, delays = small_batches
    send(*[b"%d" % n for n in range(6)])
    run_until(loop, lambda: len(got) == 6 and watched(loop, reader.sock), "all six, then quiet")
    assert delays == [0.0, 0.05]  # a full read (4): again at once; 2 left: then a period later


def test_closing_a_coalescing_reader_cancels_its_timer(loop, datagram_pair):
    receiver, send = datagram_pair
    got = []
    reader = DatagramReader(loop, receiver, "multicast", lambda d, s, i: got.append(d),
                            with_ifindex=False, coalesce_s=0.2, clock=FakeClock())
    send(b"a", b"b")
    run_until(loop, lambda: reader._poll_timer is not None, "coalescing")
    timer = reader._poll_timer
    reader.close()
    assert timer.cancelled and reader.closed
    # Five periods later the timer has not read from (nor re-registered) the closed socket.
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        loop.run_once(max_wait=0.01)
    assert got == [b"a", b"b"] and loop.internal_failures == 0


class FailingDatagramSocket(socket.socket):
    """A datagram socket whose next `recvfrom` raises `fail_with` (then it is cleared)."""

    fail_with = None

    def recvfrom(self, *args):
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        return super().recvfrom(*args)


@pytest.mark.parametrize("failure, internal", [
    (MemoryError("no memory for a datagram"), 1),  # escapes the read: the socket's failure
    (ConnectionRefusedError(errno.ECONNREFUSED, "an ICMP error queued on the socket"), 0),
])
def test_a_failure_while_the_timer_reads_leaves_the_socket_watched(loop, failure, internal):
    # What escapes a read (a MemoryError for the 64 KiB buffer, say) is the socket's failure and
    # counts toward the kill switch, as in selector mode; but the timer read it, the selector was
    # not watching, and no next poll was set: the DSM heard no drive again. An OSError is only
    # logged, and the read that found nothing hands the socket back to the selector.
    receiver = FailingDatagramSocket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    got = []
    reader = DatagramReader(loop, receiver, "multicast", lambda d, s, i: got.append(d),
                            with_ifindex=False, coalesce_s=0.2, clock=FakeClock())
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"a", receiver.getsockname())
            sender.sendto(b"b", receiver.getsockname())
            run_until(loop, lambda: len(got) == 2, "two datagrams")
            assert reader._poll_timer is not None and not watched(loop, receiver)  # coalescing
            receiver.fail_with = failure
            run_until(loop, lambda: receiver.fail_with is None, "the timer's read to fail")
            assert loop.internal_failures == internal
            sender.sendto(b"c", receiver.getsockname())
            run_until(loop, lambda: got == [b"a", b"b", b"c"], "a datagram after the failure")
        assert not reader.closed and loop.input_failures == 0
    finally:
        reader.close()


def refuse_next_register(loop, monkeypatch, refusal: OSError) -> list:
    """The loop's next register() raises `refusal`, as epoll_ctl can (ENOMEM; ENOSPC past
    fs.epoll.max_user_watches); later ones work. Returns the pending refusals (empty once used)."""
    register, refusals = loop.register, [refusal]

    def refusing_register(sock, events, handler):
        if refusals:
            raise refusals.pop()
        register(sock, events, handler)

    monkeypatch.setattr(loop, "register", refusing_register)
    return refusals


def test_a_selector_that_cannot_take_the_socket_back_leaves_the_timer_reading(
        loop, datagram_pair, caplog, monkeypatch):
    # epoll_ctl can refuse (ENOMEM; ENOSPC past fs.epoll.max_user_watches): the timer read that
    # found nothing raised, and neither the selector nor a timer read the socket again.
    receiver, send = datagram_pair
    got = []
    reader = DatagramReader(loop, receiver, "multicast", lambda d, s, i: got.append(d),
                            with_ifindex=False, coalesce_s=0.2, clock=FakeClock())
    send(b"a", b"b")
    run_until(loop, lambda: len(got) == 2, "two datagrams")
    assert not watched(loop, receiver)
    refusals = refuse_next_register(loop, monkeypatch,
                                    OSError(errno.ENOSPC, "No space left on device"))
    with caplog.at_level(logging.ERROR, logger="dsm.loop"):
        run_until(loop, lambda: not refusals, "the selector to refuse the socket")
    assert reader._poll_timer is not None and "cannot watch" in caplog.text
    send(b"c")
    run_until(loop, lambda: got == [b"a", b"b", b"c"], "a datagram read by the timer")
    run_until(loop, lambda: watched(loop, receiver), "the selector watching again")
    assert loop.internal_failures == 0 and reader.watch_failures == 1
    reader.close()


# --- Listener ----------------------------------------------------------------------------------
class FlakyListeningSocket(socket.socket):
    """A listening socket whose next `fail_with` accepts raise the given errno."""

    fail_with = ()

    def _accept(self):  # what Listener calls (socket.accept() calls it too)
        if self.fail_with:
            code, self.fail_with = self.fail_with[0], self.fail_with[1:]
            raise OSError(code, os.strerror(code))
        return super()._accept()


def listening(cls=socket.socket):
    sock = cls(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def test_listener_accepts_every_pending_connection_in_one_pass(loop):
    accepted = []
    listener = Listener(loop, listening(), "listener", lambda conn, addr: accepted.append(conn))
    clients = [socket.create_connection(listener.sock.getsockname()) for _ in range(3)]
    try:
        loop.run_once(max_wait=DEADLINE_S)
        assert len(accepted) == 3
    finally:
        for sock in clients + accepted:
            sock.close()
        listener.close()


@pytest.fixture
def out_of_descriptors(loop):
    """(listener, accepted): a listener whose first accept fails with EMFILE; `accepted` gets the
    connections it accepts. Both are closed afterwards."""
    accepted = []
    sock = listening(FlakyListeningSocket)
    sock.fail_with = (errno.EMFILE,)
    listener = Listener(loop, sock, "listener", lambda conn, addr: accepted.append(conn))
    yield listener, accepted
    for conn in accepted:
        conn.close()
    listener.close()


def test_listener_backs_off_when_out_of_descriptors_then_accepts(loop, out_of_descriptors):
    listener, accepted = out_of_descriptors
    client = socket.create_connection(listener.sock.getsockname())
    try:
        started = time.monotonic()
        passes = 0
        while not accepted:
            loop.run_once(max_wait=DEADLINE_S)
            passes += 1
            assert time.monotonic() - started < DEADLINE_S
        assert time.monotonic() - started >= ACCEPT_BACKOFF_S * 0.9
        assert passes <= 3  # it waited for the back-off timer rather than spinning
        assert loop.handler_failures == 0
    finally:
        client.close()


def test_listener_whose_selector_refuses_it_back_after_a_pause_tries_again(
        loop, out_of_descriptors, caplog, monkeypatch):
    # The pause after EMFILE ends by registering the listener again; epoll_ctl can refuse that
    # (ENOMEM: resources are short, which is why it paused). The port must not stay unwatched.
    listener, accepted = out_of_descriptors
    refusals = refuse_next_register(loop, monkeypatch,
                                    OSError(errno.ENOMEM, "Cannot allocate memory"))
    client = socket.create_connection(listener.sock.getsockname())
    try:
        with caplog.at_level(logging.ERROR, logger="dsm.loop"):
            run_until(loop, lambda: accepted, "an accept after the refused re-registration")
        assert not refusals and listener.watch_failures == 1 and "cannot watch" in caplog.text
        assert loop.handler_failures == 0
    finally:
        client.close()


def test_listener_keeps_listening_after_a_transient_accept_error(loop):
    accepted = []
    sock = listening(FlakyListeningSocket)
    sock.fail_with = (errno.EPROTO,)
    listener = Listener(loop, sock, "listener", lambda conn, addr: accepted.append(conn))
    address = sock.getsockname()
    first = socket.create_connection(address)
    clients = [first]
    try:
        loop.run_once(max_wait=1.0)
        if not listener.closed:
            clients.append(socket.create_connection(address))
        run_until(loop, lambda: len(accepted) >= 1 or listener.closed, "accept", timeout=2)
        assert not listener.closed and accepted
    finally:
        for s in clients + accepted:
            s.close()
        listener.close()


def test_closed_listener_accepts_nothing(loop):
    listener = Listener(loop, listening(), "listener", lambda conn, addr: None)
    listener.close()
    listener.close()
    assert listener.closed and listener.sock.fileno() == -1


# --- QueryConnection ---------------------------------------------------------------------------
def answer_query(query, label):
    if query.kind is None:
        return query_error_reply(query.bad_token)
    return encode_reply({"kind": query.kind})


def replies(data: bytes):
    return [json.loads(part) for part in bytes(data).split(b"\x04")[:-1]]


@pytest.fixture
def query_conn(loop):
    made = []

    def make(answer=answer_query):
        server, client = socket.socketpair()
        transport = StreamTransport(loop, server, "query-test")
        connection = QueryConnection(transport, answer)
        transport.start(connection)
        peer = Peer(client)
        made.append((transport, peer))
        return transport, connection, peer

    yield make
    for transport, peer in made:
        transport.close()
        peer.close()


def test_query_letter_without_terminator_is_answered_then_the_dsm_closes(loop, query_conn):
    """As the original: `printf m | nc host 2203` returns once the reply is in, although the
    client never closes its side (query_service.py: everything received answered -> close)."""
    transport, connection, peer = query_conn()
    peer.send(b"m")
    peer.read_until(loop, lambda p: p.eof, "the DSM to close after its reply")
    assert replies(peer.received) == [{"kind": "m"}] and transport.closed


def test_query_connection_with_nothing_asked_yet_stays_open(loop, query_conn):
    transport, connection, peer = query_conn()
    peer.send(b"\n \r\n")
    for _ in range(5):
        loop.run_once(max_wait=0.01)
    assert not transport.closed and peer.received == b""
    peer.send(b"s")
    peer.read_until(loop, lambda p: p.eof, "the reply, then the close")
    assert replies(peer.received) == [{"kind": "s"}]


def test_query_connection_stays_open_while_more_input_waits_in_the_socket(loop, query_conn):
    """Queries still in the kernel's buffer (not read yet) are answered before the close."""
    transport, connection, peer = query_conn()
    transport.pause_reading()
    peer.send(b"m")
    peer.send(b" s w")
    # Deliver the first byte alone, as if the rest had arrived after this read.
    connection.data_received(transport.sock.recv(1))
    loop.flush_dirty()  # the reply goes out before the rest is read
    if not transport.closed:
        transport.resume_reading()
    peer.read_until(loop, lambda p: p.eof, "every reply, then the close")
    assert [r["kind"] for r in replies(peer.received)] == ["m", "s", "w"]


def test_pipelined_queries_are_answered_in_order(loop, query_conn):
    transport, connection, peer = query_conn()
    peer.send(b"m s\r\nw\x04m\n")
    peer.read_until(loop, lambda p: p.received.count(b"\x04") == 4)
    assert [r["kind"] for r in replies(peer.received)] == ["m", "s", "w", "m"]


def test_bad_query_gets_an_error_and_the_next_query_is_answered(loop, query_conn):
    transport, connection, peer = query_conn()
    peer.send(b"bogus\nm")
    peer.read_until(loop, lambda p: p.received.count(b"\x04") == 2)
    error, answer = replies(peer.received)
    assert "bogus" in error["error"] and answer == {"kind": "m"}


def test_query_connection_answers_everything_then_closes_after_end_of_stream(loop, query_conn):
    transport, connection, peer = query_conn()
    peer.send(b"m\ns\nw")
    peer.sock.shutdown(socket.SHUT_WR)
    peer.read_until(loop, lambda p: p.eof, "close after answers")
    assert [r["kind"] for r in replies(peer.received)] == ["m", "s", "w"] and transport.closed


def test_client_not_reading_pauses_query_reading_and_gets_every_reply_later(loop, query_conn):
    big = encode_reply({"blob": "b" * (400 * 1024)})
    transport, connection, peer = query_conn(lambda query, label: big)
    count = 40
    peer.send(b"m " * count)
    run_until(loop, lambda: not transport.reading, "paused reading")
    for _ in range(5):
        loop.run_once(max_wait=0.01)
    assert transport.output_size < HIGH_WATER + len(big)  # one reply's worth past the mark
    peer.read_until(loop, lambda p: len(p.received) >= count * len(big), "all replies")
    assert peer.received == big * count


def test_query_answers_wait_while_the_fake_transport_is_above_high_water():
    transport = FakeTransport()
    big = b"x" * HIGH_WATER
    connection = QueryConnection(transport, lambda query, label: big)
    connection.data_received(b"m m m")
    assert transport.writes == [big] and not transport.reading
    transport.output_size = 0
    connection.writing_drained()
    assert transport.writes == [big, big] and not transport.reading
    transport.output_size = 0
    connection.eof_received()
    connection.writing_drained()
    assert transport.writes == [big] * 3 and transport.closing


# --- StatusConnection --------------------------------------------------------------------------
class StatusSink:
    def __init__(self, refuse=None):
        self.reports = []
        self.bad = []
        self.refuse = refuse

    def store(self, report):
        if self.refuse:
            return self.refuse
        self.reports.append(report)
        return None

    def bad_input(self, label, reason):
        self.bad.append(reason)


@pytest.fixture
def status_conn(loop):
    made = []

    def make(sink=None, max_message=None):
        sink = sink or StatusSink()
        server, client = socket.socketpair()
        transport = StreamTransport(loop, server, "status-test")
        transport.start(StatusConnection(transport, sink.store, sink.bad_input, max_message))
        peer = Peer(client)
        made.append((transport, peer))
        return transport, sink, peer

    yield make
    for transport, peer in made:
        transport.close()
        peer.close()


ORIGINAL = b"{'serial_number': 'ZA1', 'time_stamp': 1, 'status': '001'}"


def test_original_style_status_is_stored_acknowledged_and_closed_without_a_terminator(
        loop, status_conn):
    transport, sink, peer = status_conn()
    peer.send(ORIGINAL)
    # the client keeps its side open (netcat-openbsd, the lab scripts): the DSM closes, as the
    # original did, once all it received is answered
    peer.read_until(loop, lambda p: p.eof, "the close after the ack")
    assert peer.received == b"\x04" and transport.closed
    assert [(r.serial_number, r.status) for r in sink.reports] == [("ZA1", "001")]


def test_status_connection_stays_open_while_a_message_is_half_received(loop, status_conn):
    transport, sink, peer = status_conn()
    peer.send(ORIGINAL + ORIGINAL[:20])
    peer.read_until(loop, lambda p: p.received == b"\x04", "the first ack")
    assert not transport.closed and not peer.eof
    peer.send(ORIGINAL[20:])
    peer.read_until(loop, lambda p: p.eof, "the second ack and the close")
    assert peer.received == b"\x04\x04" and len(sink.reports) == 2


def test_bad_status_gets_error_and_end_byte_and_the_connection_still_works(loop, status_conn):
    transport, sink, peer = status_conn()
    peer.send(b"{'serial_number': 'A', 'status': 1}\n" + ORIGINAL)
    peer.read_until(loop, lambda p: p.received.count(b"\x04") == 2)
    error = json.loads(peer.received[:peer.received.index(b"\x04")])
    assert "time_stamp" in error["error"] and peer.received.endswith(b"}\x04\x04")
    assert [r.serial_number for r in sink.reports] == ["ZA1"] and len(sink.bad) == 1


def test_garbage_status_gets_one_error_at_once(loop, status_conn):
    transport, sink, peer = status_conn()
    peer.send(b"not a dict at all")
    peer.read_until(loop, lambda p: p.received.endswith(b"\x04"))
    assert list(json.loads(peer.received[:-1])) == ["error"] and len(sink.bad) == 1


def test_refused_status_gets_the_store_reason(loop, status_conn):
    transport, sink, peer = status_conn(StatusSink(refuse="too many serials"))
    peer.send(ORIGINAL)
    peer.read_until(loop, lambda p: p.received.endswith(b"\x04"))
    assert json.loads(peer.received[:-1]) == {"error": "too many serials"}


def test_over_long_status_gets_an_error_and_the_next_one_is_stored(loop, status_conn):
    transport, sink, peer = status_conn(max_message=200)
    peer.send(b"{'status': '" + b"x" * 1000 + b"'}\n" + ORIGINAL)
    peer.read_until(loop, lambda p: p.received.count(b"\x04") == 2)
    assert "200" in json.loads(peer.received[:peer.received.index(b"\x04")])["error"]
    assert [r.serial_number for r in sink.reports] == ["ZA1"]


def test_status_without_terminator_completes_at_end_of_stream_then_closes(loop, status_conn):
    transport, sink, peer = status_conn()
    peer.send(b'{"serial_number": "A", "time_stamp": 1, "status": "x"')
    peer.sock.shutdown(socket.SHUT_WR)
    peer.read_until(loop, lambda p: p.eof)
    assert peer.received.endswith(b"\x04") and b"error" in peer.received and transport.closed


def test_huge_integer_serial_is_refused_without_a_handler_failure(loop, status_conn):
    transport, sink, peer = status_conn()
    peer.send(b"{'serial_number': 0x" + b"f" * 4000 + b", 'time_stamp': 1, 'status': 2}")
    peer.read_until(loop, lambda p: p.received.endswith(b"\x04") or p.eof)
    assert b"4300 digits" in peer.received and loop.handler_failures == 0


def test_status_reading_pauses_while_replies_pile_up_and_resumes_when_drained():
    transport = FakeTransport()
    sink = StatusSink()
    connection = StatusConnection(transport, sink.store, sink.bad_input)
    transport.output_size = HIGH_WATER
    connection.data_received(ORIGINAL + ORIGINAL[:10])
    assert not transport.reading and transport.writes == [b"\x04"]
    connection.writing_drained()  # half a message waits: read on
    assert transport.reading and not transport.closing


def test_status_connection_closes_when_drained_with_everything_answered():
    transport = FakeTransport()
    sink = StatusSink()
    connection = StatusConnection(transport, sink.store, sink.bad_input)
    transport.output_size = HIGH_WATER
    connection.data_received(ORIGINAL)
    assert not transport.reading and not transport.closing  # paused, not closed, while above
    connection.writing_drained()  # (a FakeTransport has no socket: no byte waits)
    assert transport.closing


def test_status_end_of_stream_answers_the_rest_and_closes_when_flushed():
    transport = FakeTransport()
    sink = StatusSink()
    connection = StatusConnection(transport, sink.store, sink.bad_input)
    connection.data_received(b"{'serial_number': 'A', 'time_stamp': 1, 'status': 2")
    assert transport.writes == []
    connection.eof_received()
    assert len(transport.writes) == 1 and transport.closing


def test_small_writes_sent_from_the_tail_in_part_keep_order_and_exact_accounting(loop):
    # Small writes go out straight from the coalesced tail when nothing is queued before them;
    # when the kernel takes only part (TCP: a partial send), the rest waits, later writes after
    # it, in order; once all is sent the loop's and the transport's output accounting are nothing.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = StreamTransport(loop, server, "tcp")
    transport.start(Recorder())
    peer = Peer(client)
    try:
        expected = bytearray()
        waited = []
        for round_ in range(6):
            for i in range(700):
                line = b"%d.%d %s\n" % (round_, i, b"x" * (i % 90))
                transport.write(line)
                expected += line
            loop.run_once(max_wait=0)
            waited.append(transport.output_size)
        assert any(waited)  # the kernel took only part at least once: the rest waited
        peer.read_until(loop, lambda p: len(p.received) >= len(expected), "all the small writes")
        loop.run_once(max_wait=0)
        assert bytes(peer.received) == bytes(expected)
        assert transport.output_size == 0 and transport.output_cost == 0
        assert loop.output_total == 0 and transport not in loop._with_output
    finally:
        transport.close()
        peer.close()
