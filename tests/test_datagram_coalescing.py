"""DatagramReader's coalescing (--coalesce) against every arrival pattern hypothesis can think of.

The reader runs on a simulated loop (virtual time, timers on a heap, one socket the "selector"
reports ready while datagrams wait; chosen registrations fail as epoll_ctl can) and a simulated
socket (a queue, with failures injected into chosen reads): deterministic, and no real time passes.
A pass does what EventLoop.run_once does: the ready socket's handler, then the timers due when the
pass began (a timer set during the pass waits for the next one), then time moves on to the next
arrival or timer if nothing is ready.

The properties: the socket is always watched by exactly one of the selector and a poll timer (else
the DSM is deaf), every datagram is handed on once and in order (those whose handler raises too),
none waits longer than `coalesce_s` while reads do not fail, and a closed reader touches nothing;
also when the daemon's expiry makes it read early (read_waiting).
"""
import collections
import heapq
from typing import Any, Callable, List

from hypothesis import given, settings, strategies as st

from DriveStateMonitor import event_loop
from DriveStateMonitor.event_loop import DatagramReader, Timer


class SimLoop:
    """The part of EventLoop a DatagramReader uses, in virtual time."""

    def __init__(self, register_failures: Any = ()) -> None:
        self.now = 0.0
        self.watched: dict = {}
        self.registers = 0
        self.register_failures = register_failures  # these register calls fail (epoll_ctl ENOMEM)
        self.timers: List[Any] = []
        self._seq = 0
        self.input_failures = 0
        self.internal_failures = 0

    def register(self, sock: Any, events: int, handler: Any) -> None:
        assert sock not in self.watched, "registered twice"
        assert not sock.closed, "a closed socket registered"
        self.registers += 1
        if self.registers in self.register_failures:
            raise OSError(12, "Cannot allocate memory")
        self.watched[sock] = handler

    def unregister(self, sock: Any) -> None:
        self.watched.pop(sock, None)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now + delay, callback)
        self._seq += 1
        heapq.heappush(self.timers, (timer.when, self._seq, timer))
        return timer

    def live_timers(self) -> int:
        return sum(not timer.cancelled for _, _, timer in self.timers)

    def input_failed(self, label: Any, exc: BaseException, action: str) -> None:
        self.input_failures += 1

    def handler_failed(self, handler: Any, exc: BaseException) -> None:
        self.internal_failures += 1

    def run_pass(self, sock: "SimSocket") -> None:
        handler = self.watched.get(sock)
        if handler is not None and sock.queue:
            try:
                handler.on_readable()
            except Exception as exc:
                self.handler_failed(handler, exc)
        last_seq = self._seq
        while self.timers and self.timers[0][0] <= self.now and self.timers[0][1] <= last_seq:
            _, _, timer = heapq.heappop(self.timers)
            if timer.cancelled:
                continue
            timer.cancelled = True
            try:
                timer.callback()
            except Exception as exc:
                self.handler_failed(None, exc)

    def next_timer_at(self) -> float:
        while self.timers and self.timers[0][2].cancelled:
            heapq.heappop(self.timers)
        return self.timers[0][0] if self.timers else float("inf")


class SimSocket:
    """A non-blocking datagram socket: `queue` holds what the kernel holds; read number n raises
    `failures[n]` instead, if there is one."""

    def __init__(self, failures: dict) -> None:
        self.queue: collections.deque = collections.deque()
        self.failures = failures
        self.reads = 0
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def recvfrom(self, size: int) -> Any:
        assert not self.closed, "read after close"
        self.reads += 1
        failure = self.failures.get(self.reads)
        if failure is not None:
            raise failure
        if not self.queue:
            raise BlockingIOError()
        return self.queue.popleft(), ("10.0.0.1", 8123)

    def close(self) -> None:
        self.closed = True


FAILURES = st.sampled_from([MemoryError("no memory"), ConnectionRefusedError(111, "ICMP"),
                            InterruptedError(), OSError(105, "ENOBUFS")])


@settings(max_examples=400, deadline=None)
@given(coalesce_s=st.sampled_from([0.0, 1e-9, 0.001, 0.005, 0.02]),
       batch=st.integers(1, 6),
       gaps=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 0.03)), max_size=60),
       failures=st.dictionaries(st.integers(1, 80), FAILURES, max_size=4),
       raising=st.sets(st.integers(0, 60), max_size=5),
       close_after=st.one_of(st.none(), st.integers(0, 60)),
       expiries=st.sets(st.integers(0, 300), max_size=5),
       register_failures=st.sets(st.integers(2, 40), max_size=6))
def test_coalescing_never_goes_deaf_loses_reorders_or_delays_past_its_window(
        coalesce_s, batch, gaps, failures, raising, close_after, expiries, register_failures):
    saved = event_loop.DATAGRAMS_PER_EVENT
    event_loop.DATAGRAMS_PER_EVENT = batch  # small batches: full reads happen often
    try:
        loop, sock = SimLoop(register_failures), SimSocket(failures)
        arrivals, at = [], 0.0
        for gap in gaps:
            at += gap
            arrivals.append(at)
        delivered: List[Any] = []

        def on_datagram(data: int, sender: Any, ifindex: int) -> None:
            delivered.append((data, loop.now))
            if data in raising:  # the handler's failure: that datagram's problem only
                raise ValueError("bad announcement %d" % data)

        reader = DatagramReader(loop, sock, "multicast", on_datagram, with_ifindex=False,
                                coalesce_s=coalesce_s, clock=lambda: loop.now)
        pending = collections.deque(enumerate(arrivals))
        for step in range(20 * len(arrivals) + 100):  # bounded: each pass reads, or time moves on
            while pending and pending[0][1] <= loop.now:
                sock.queue.append(pending.popleft()[0])
            if close_after is not None and len(delivered) >= close_after and not reader.closed:
                reader.close()
                closed_with = len(delivered)
            loop.run_pass(sock)
            if step in expiries:  # the daemon's expiry timer reads what the poll timer holds
                reader.read_waiting()
            if reader.closed:
                assert not loop.watched and loop.live_timers() == 0
            else:
                # Exactly one of them reads the socket: both would read it twice over, neither
                # never again.
                assert (sock in loop.watched) + loop.live_timers() == 1
                if coalesce_s == 0.0:
                    assert sock in loop.watched
            if reader.closed or (not pending and not sock.queue and sock in loop.watched):
                break
            if not (sock in loop.watched and sock.queue):  # nothing ready: time moves on
                loop.now = max(loop.now, min(pending[0][1] if pending else float("inf"),
                                             loop.next_timer_at()))
        else:
            raise AssertionError("the reader never settled")
        numbers = [data for data, _ in delivered]
        if reader.closed:
            assert len(delivered) == closed_with and numbers == list(range(closed_with))
            return
        assert numbers == list(range(len(arrivals)))  # each once, in order
        assert loop.input_failures == len(raising & set(numbers))
        assert loop.internal_failures == sum(
            isinstance(exc, MemoryError) for n, exc in failures.items() if n <= sock.reads)
        if not failures:
            waits = [when - arrivals[n] for n, when in delivered]
            assert max(waits, default=0.0) <= coalesce_s + 1e-12
    finally:
        event_loop.DATAGRAMS_PER_EVENT = saved


# --- the daemon: expiry reads what the coalescing timer holds first -------------------------------
def test_an_announcement_held_for_the_coalescing_timer_keeps_its_drive_from_expiring(tmp_path):
    # Drive ZA1 re-announced before its deadline, but the datagram waited in the kernel for the
    # next batch when the expiry timer ran: ZA1 read "expired" (a "went silent" line, EXPIRED in
    # the tree for its watchers) and came back 20 ms later. Expiry reads the socket first now.
    import select
    import socket

    from DriveStateMonitor.daemon import DriveStateMonitor
    from DriveStateMonitor.options import parse_options
    from dsm_harness import announcement

    now = [1_700_000_000.0]
    dsm = DriveStateMonitor(parse_options(
        ["--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"),
         "--fsync", "no", "--drive-lifetime", "30", "--coalesce", "0.02"]), clock=lambda: now[0])
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dsm._restore()
        dsm._iface_names = {0: "lo"}
        dsm._announcements = DatagramReader(dsm.loop, receiver, "multicast", dsm._on_datagram,
                                            with_ifindex=False, coalesce_s=0.02,
                                            clock=lambda: 5.0)  # each read "just after" the last

        def arrived() -> None:  # what waits is readable (loopback delivers at once, almost always)
            assert select.select([receiver], [], [], 5.0)[0], "the datagram never arrived"

        for serial in ("ZA1", "ZA2"):
            sender.sendto(announcement(serial), receiver.getsockname())
            arrived()
            dsm._announcements.on_readable()  # as the loop would; the second starts coalescing
        held_by = dsm._announcements._poll_timer
        assert set(dsm.store.drives) == {"ZA1", "ZA2"} and held_by is not None
        dsm.tree.touch("/lab/x", now[0], lifetime=10.0)
        now[0] += 10.0
        dsm._run_deadlines()  # only the tree's: the batch is left to the timer
        assert dsm._announcements._poll_timer is held_by and dsm.counters["expirations"] == 1
        now[0] += 20.0
        sender.sendto(announcement("ZA1"), receiver.getsockname())  # waits for the timer
        arrived()
        dsm._run_deadlines()
        assert dsm.store.drives["ZA1"].alive and not dsm.store.drives["ZA2"].alive
        assert dsm.counters["announcements"] == 3
        assert dsm.metrics_facts()["multicast_receive_drops"] == 0  # the reader's own socket
    finally:
        sender.close()
        if dsm._announcements is not None:
            dsm._announcements.close()
        dsm.journal.close()
        dsm.loop.close()


# --- what coalescing relies on: the kernel's drops are counted -----------------------------------
def test_receive_drops_counts_what_a_full_receive_buffer_lost():
    import socket
    import sys

    import pytest

    from DriveStateMonitor.multicast_socket import receive_drops
    if not sys.platform.startswith("linux"):
        pytest.skip("SO_MEMINFO is Linux's")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum or so
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    try:
        assert receive_drops(receiver) == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):  # loopback queues each at once: most find the buffer full
                sender.sendto(b"x" * 500, receiver.getsockname())
        received = 0
        while True:
            try:
                receiver.recv(1024)
            except BlockingIOError:
                break
            received += 1
        assert 0 < received < 200 and receive_drops(receiver) == 200 - received
    finally:
        receiver.close()


def test_the_drop_counter_is_a_metric_where_the_system_gives_it():
    from DriveStateMonitor.metrics import empty_facts, render_metrics
    facts = empty_facts()
    assert "dsm_multicast_receive_drops" not in render_metrics(facts)  # None: not Linux
    facts["multicast_receive_drops"] = 17
    assert "\ndsm_multicast_receive_drops_total 17\n" in render_metrics(facts)
