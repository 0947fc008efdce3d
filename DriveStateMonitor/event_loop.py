"""The event loop: one thread, one selector, timers on a heap.

Theory of operation
-------------------
This is Redis's ae.c in Python. `EventLoop.run()` repeats one pass: wait for readiness (the timeout is
the nearest timer), run the handlers of the ready sockets, run the timers that are due, then the
"before sleep" hooks. Connections do not send when a protocol writes: `StreamTransport.write` queues
the bytes and marks the transport dirty, and the before-sleep flush sends each dirty transport's output
with one `send` — pipelined requests cost one system call. Only output the kernel would not take makes
the transport register for writability.

The loop knows sockets, buffers, timers and signals, and nothing about drives: protocol objects get
`data_received(bytes)`, `eof_received()`, `writing_drained()` and `connection_lost()` calls and answer
through `transport.write()`, as in asyncio's selector transports.

Failures are of two kinds, and only one can stop the DSM:

* An exception while handling one connection's or one datagram's *input* — parsing it, answering it,
  producing the reply (a /metrics scrape, an `m`, a SAVE) — is that client's problem: the connection
  is closed (the datagram dropped), the traceback is logged (at most FAILURE_TRACEBACKS per minute, a
  count of the rest), `input_failures` is counted (`dsm_handler_failures_total`, alerted on), and
  nothing else happens. Any client could otherwise stop the DSM by repeating one bad request.
* The DSM's *own* failures — a listening or datagram socket that fails, a timer or a before-sleep
  hook of the daemon (expiry, journal, snapshots) — are counted by the kill switch (the original
  tool's rule: more than 5 within 24 hours stops the daemon with exit code 4).

A MemoryError while handling one connection's input (a cap on the address space or a cgroup's
memory.max; see memory_limits.py) is that connection's, too, and more: the transport drops what it
holds of the input, gives the client its protocol's error reply (`out_of_memory()`: JSON
{"error": ...} on the query and status ports, `! LIMIT` on the Status Server's) and closes after it,
so the memory comes back and every other client goes on being answered (`memory_errors` counts).

A handler says which kind it is with `handles_input`: StreamTransport does; Listener and
DatagramReader hand each accepted connection and each datagram to their callback inside a guard of
their own, so what escapes them is the socket's failure.
"""
from __future__ import annotations

import collections
import errno
import heapq
import logging
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Set, Tuple

log = logging.getLogger("dsm.loop")

EXIT_OK = 0
EXIT_INTERRUPT = 1
EXIT_SOCKET_CREATE = 2
EXIT_SOCKET_LISTEN = 3
EXIT_KILL_SWITCH = 4

# One recv per readiness event keeps a flooding client from starving the others; 256 KiB is what a
# busy connection can usefully hand over in one pass.
RECV_SIZE = 256 * 1024
# Read into one buffer shared by every connection (one thread) and copied out at the size read:
# `recv(RECV_SIZE)` allocates 256 KiB per call, which malloc serves with mmap, mremap and munmap —
# three system calls and fresh pages for every few-dozen-byte status.
_RECV_BUFFER = bytearray(RECV_SIZE)
_RECV_VIEW = memoryview(_RECV_BUFFER)


def shared_receive(sock: socket.socket, flags: int = 0) -> bytes:
    """One `recv` of at most RECV_SIZE bytes through the shared buffer (b"" at end of stream);
    raises what `recv_into` raises (BlockingIOError when nothing waits)."""
    return _RECV_VIEW[:sock.recv_into(_RECV_BUFFER, 0, flags)].tobytes()

# A protocol stops producing replies while this much output waits for a slow reader, and resumes
# below the low mark (asyncio's defaults are 64 KiB / 16 KiB; our replies are larger).
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
# Accepting many connections per event, as asyncio's backlog loop does, keeps bursts cheap.
ACCEPTS_PER_EVENT = 64
# Out of file descriptors: stop accepting for a moment instead of spinning on the ready listener.
ACCEPT_BACKOFF_S = 0.1
DATAGRAMS_PER_EVENT = 512
# What one queued chunk costs beyond its payload: the memoryview, the bytes object's header and the
# deque slot. Output limits count this too, so a million 20-byte lines cost what they really cost.
CHUNK_OVERHEAD = sys.getsizeof(memoryview(b"")) + sys.getsizeof(b"") + 8
# Writes up to this size are appended to one bytearray tail instead of queued as chunks of their own
# (TRACE and monitor lines, pipelined acks): a slow reader's small lines cost bytes, not objects.
COALESCE_BYTES = 4096
COALESCE_LIMIT = 64 * 1024
# Out of descriptors again: the accept back-off doubles up to this, and the log says so at most once
# a minute per listener (asyncio logs every time; a flood of identical lines helps nobody).
ACCEPT_BACKOFF_MAX_S = 2.0
ACCEPT_LOG_PERIOD_S = 60.0
# Input failures log their traceback at most this often per minute; the rest are counted in the log.
FAILURE_TRACEBACKS = 5
FAILURE_LOG_WINDOW_S = 60.0


class KillSwitch:
    """Counts handler failures; trips when more than `limit` fall within `window_s` seconds."""

    def __init__(self, limit: int = 5, window_s: float = 24 * 3600.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: Deque[float] = collections.deque()

    def record(self, now: float) -> bool:
        """Records one failure at `now`; returns True when the limit is passed."""
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - self.window_s:
            self._failures.popleft()
        return len(self._failures) > self.limit


class Timer:
    """A scheduled callback; `cancel()` makes the heap skip it."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """A selectors loop with timers, before-sleep hooks, a dirty-transport flush and signals."""

    def __init__(self, kill_switch: Optional[KillSwitch] = None) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: List[Tuple[float, int, Timer]] = []
        self._timer_seq = 0
        self._dirty: Set["Connection"] = set()
        self._before_sleep: List[Callable[[], None]] = []
        self._after_flush: List[Callable[[], None]] = []
        self._running = False
        self.exit_code = EXIT_OK
        self.kill_switch = kill_switch or KillSwitch()
        self.input_failures = 0      # one connection's or datagram's handling failed
        self.memory_errors = 0       # of those, a MemoryError: answered with an error reply
        self.internal_failures = 0   # the DSM's own: these trip the kill switch
        self._failure_log = _RateLimitedLog(FAILURE_TRACEBACKS, FAILURE_LOG_WINDOW_S)
        self._signal_waker: Optional[_SignalWaker] = None
        # The handler whose event is being dispatched (None in timers and hooks): lets the
        # journal know which connection a change came from.
        self.current: Any = None
        # Queued output across all transports, each base object counted once however many
        # transports share it (the cached m/s replies): {id(base): [base, references, cost]}.
        self.max_output_total: Optional[int] = None
        self.output_total = 0
        self._output_bases: dict = {}
        self._with_output: Set["StreamTransport"] = set()
        self.output_evictions = 0

    # --- registration -------------------------------------------------------------------------
    def register(self, sock: socket.socket, events: int, handler: Any) -> None:
        """Watches `sock`; `handler.on_readable()` / `on_writable()` run when it is ready."""
        self._selector.register(sock, events, handler)

    def modify(self, sock: socket.socket, events: int, handler: Any) -> None:
        self._selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Runs `callback` once `time.monotonic()` reaches `when`."""
        timer = Timer(when, callback)
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def add_before_sleep(self, hook: Callable[[], None]) -> None:
        """Runs `hook` at the end of every pass, before the loop waits again."""
        self._before_sleep.append(hook)

    def add_after_flush(self, hook: Callable[[], None]) -> None:
        """Runs `hook` at the very end of every pass, after the dirty transports were flushed."""
        self._after_flush.append(hook)

    def mark_dirty(self, transport: "Connection") -> None:
        self._dirty.add(transport)

    def on_signals(self, signums: List[int], callback: Callable[[int], None]) -> None:
        """Delivers the given signals to `callback` from inside the loop, never from a handler."""
        if self._signal_waker is None:
            self._signal_waker = _SignalWaker(self, callback)
        for signum in signums:
            # A Python-level handler must exist for the C handler to write to the wakeup fd; it does
            # nothing itself so that no work runs at an arbitrary bytecode.
            signal.signal(signum, _ignore_signal)

    # --- running ------------------------------------------------------------------------------
    def stop(self, exit_code: int = EXIT_OK) -> None:
        """Ends `run()` after the current pass, which then returns `exit_code`."""
        self.exit_code = exit_code
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def run(self) -> int:
        """Runs passes until `stop()`; returns the exit code given to it."""
        self._running = True
        while self._running:
            self.run_once()
        return self.exit_code

    def run_once(self, max_wait: Optional[float] = None) -> None:
        """One pass: wait, dispatch ready sockets, run due timers, run before-sleep hooks."""
        timeout = self._next_timeout() if not self._dirty else 0.0
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        try:
            ready = self._selector.select(timeout)
        except InterruptedError:
            ready = []
        for key, mask in ready:
            handler = key.data
            self.current = handler
            try:
                if mask & selectors.EVENT_READ:
                    handler.on_readable()
                if mask & selectors.EVENT_WRITE and not getattr(handler, "closed", False):
                    handler.on_writable()
            except Exception as exc:  # the kill switch decides; one bad connection never ends the loop
                self.handler_failed(handler, exc)
        self.current = None
        self._run_due_timers()
        for hook in self._before_sleep:
            try:
                hook()
            except Exception as exc:
                self.handler_failed(None, exc)
        self.flush_dirty()
        for hook in self._after_flush:
            try:
                hook()
            except Exception as exc:
                self.handler_failed(None, exc)

    # --- output accounting (shared by every transport) -----------------------------------------
    def output_added(self, base: Any, nbytes: int) -> None:
        """A transport queued a chunk of `base` (a bytes-like object of `nbytes`)."""
        entry = self._output_bases.get(id(base))
        if entry is None:
            self._output_bases[id(base)] = [base, 1, nbytes + CHUNK_OVERHEAD]
            self.output_total += nbytes + CHUNK_OVERHEAD
        else:
            entry[1] += 1
            self.output_total += CHUNK_OVERHEAD
            entry[2] += CHUNK_OVERHEAD

    def output_removed(self, base: Any) -> None:
        entry = self._output_bases.get(id(base))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._output_bases[id(base)]
            self.output_total -= entry[2]
        else:
            entry[2] -= CHUNK_OVERHEAD
            self.output_total -= CHUNK_OVERHEAD

    def enforce_output_total(self) -> None:
        """Past --max-output-total, closes the connections holding the most output, largest first
        (Redis's client-output-buffer limits); run before the flush, never inside a handler."""
        limit = self.max_output_total
        if limit is None or self.output_total <= limit:
            return
        # Largest first by what closing it frees: a reply shared with other clients (the cached
        # `m`/`s`) stays in memory for them, so its holders come after those of private bytes.
        for transport in sorted(self._with_output, key=self._freed_by_closing, reverse=True):
            if self.output_total <= limit:
                break
            log.warning("%s: %d bytes of output queued while all clients hold %d (limit %d, "
                        "--max-output-total); closing the largest first", transport.label,
                        transport.output_cost, self.output_total, limit)
            self.output_evictions += 1
            transport.reset()

    def _freed_by_closing(self, transport: Any) -> Tuple[int, int]:
        """(bytes freed if `transport` closed, its output cost): a chunk frees its base only if
        no other transport holds a view of it."""
        held: Dict[int, int] = collections.Counter(id(view.obj) for view in transport._out)
        freed = len(transport._tail) if transport._tail is not None else 0
        for base_id, count in held.items():
            entry = self._output_bases.get(base_id)
            if entry is not None and entry[1] <= count:
                freed += entry[2]
        return freed, transport.output_cost

    def flush_dirty(self) -> None:
        self.enforce_output_total()
        while self._dirty:
            transport = self._dirty.pop()
            try:
                transport.flush()
            except Exception as exc:
                self.handler_failed(transport, exc)

    @property
    def handler_failures(self) -> int:
        """Every failure, of either kind."""
        return self.input_failures + self.internal_failures

    def handler_failed(self, handler: Any, exc: BaseException) -> None:
        """Routes a failure escaping `handler` (None: a timer or hook) to input_failed or, for the
        DSM's own, to the kill switch."""
        if isinstance(exc, MemoryError) and hasattr(handler, "out_of_memory"):
            handler.out_of_memory()
            return
        if getattr(handler, "handles_input", False):
            label = getattr(handler, "label", handler)
            self.input_failed(label, exc, "closing it")
            try:
                handler.abort()
            except Exception:
                log.exception("error while closing %s", label)
            return
        self.internal_failed(handler, exc)

    def input_failed(self, label: Any, exc: BaseException, action: str) -> None:
        """One connection's or datagram's handling raised: logged (rate-limited) and counted; the
        caller closes the connection or drops the datagram. Never counts toward the kill switch."""
        self.input_failures += 1
        suppressed = self._failure_log.allow(time.monotonic())
        if suppressed is not None:
            log.error("unexpected error in %s (its input); %s%s", label, action,
                      " (%d more such errors not shown)" % suppressed if suppressed else "",
                      exc_info=(type(exc), exc, exc.__traceback__))

    def internal_failed(self, handler: Any, exc: BaseException) -> None:
        """The DSM's own failure: logged, closed if it can be, and counted by the kill switch."""
        self.internal_failures += 1
        log.error("unexpected error in %s", getattr(handler, "label", handler or "a timer"),
                  exc_info=(type(exc), exc, exc.__traceback__))
        abort = getattr(handler, "abort", None)
        if abort is not None:
            try:
                abort()
            except Exception:
                log.exception("error while closing %s", getattr(handler, "label", handler))
        if self.kill_switch.record(time.monotonic()):  # a window: never the wall clock
            log.critical("kill switch: more than %d internal failures within %.0f s; stopping",
                         self.kill_switch.limit, self.kill_switch.window_s)
            self.stop(EXIT_KILL_SWITCH)

    def _next_timeout(self) -> Optional[float]:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            timer.cancelled = True
            try:
                timer.callback()
            except Exception as exc:
                self.handler_failed(None, exc)

    def close(self) -> None:
        if self._signal_waker is not None:
            self._signal_waker.close()
            self._signal_waker = None
        self._selector.close()


def _ignore_signal(signum: int, frame: Any) -> None:
    pass


class _RateLimitedLog:
    """At most `limit` log entries per `window_s`; says how many were held back in between."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._window_start = -window_s
        self._logged = 0
        self._suppressed = 0

    def allow(self, now: float) -> Optional[int]:
        """None: do not log this one. Else log it, with the count of those not logged before it."""
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._logged = 0
        if self._logged >= self.limit:
            self._suppressed += 1
            return None
        self._logged += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


class _SignalWaker:
    """The self-pipe: `signal.set_wakeup_fd` writes each signal number into a socket we select on."""

    label = "signal waker"

    def __init__(self, loop: EventLoop, callback: Callable[[int], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        loop.register(self._rsock, selectors.EVENT_READ, self)

    def on_readable(self) -> None:
        try:
            data = self._rsock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            self._callback(signum)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._loop.unregister(self._rsock)
        self._rsock.close()
        self._wsock.close()


class Connection(Protocol):
    """What the loop flushes and the daemon closes: a StreamTransport, or a lighter object with the
    same surface (status_oneshot.OneShotStatus, a status connection until its first read)."""
    closed: bool

    @property
    def label(self) -> str:  # the peer, as logs name it
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def close_when_flushed(self) -> None: ...


class StreamTransport:
    """One connected stream socket: an input path to its protocol and a queued output buffer.

    The protocol object must offer `data_received(bytes)`, `eof_received()`, `connection_lost()` and
    may offer `writing_drained()` (called when output falls below LOW_WATER after passing HIGH_WATER).
    """

    handles_input = True  # an exception in its handlers is this connection's, not the DSM's

    def __init__(self, loop: EventLoop, sock: socket.socket, label: str,
                 max_output: Optional[int] = None,
                 on_close: Optional[Callable[["StreamTransport"], None]] = None) -> None:
        self.loop = loop
        self.on_close = on_close
        self.sock = sock
        self.label = label
        self.protocol: Any = None
        self.max_output = max_output
        self.closed = False
        self._out: Deque[memoryview] = collections.deque()
        self._tail: Optional[bytearray] = None  # small writes after the last chunk, coalesced
        self.output_size = 0   # payload bytes waiting (the high/low water marks)
        self.output_cost = 0   # what they cost in memory, chunk objects included (--max-output)
        # Monotonic time the first byte of a request still incomplete arrived (--request-timeout).
        self.request_started: Optional[float] = None
        self._reading = True
        self._want_write = False
        self._close_when_flushed = False
        self._above_high_water = False
        self._registered_events = 0
        self._eof = False
        # A request answered or output taken by the client; for the idle timeout. Bytes that
        # complete no request (a drip of whitespace) do not count, so they cannot hold a slot.
        self.last_activity = time.monotonic()
        # Protocols stop producing past high_water; with a small output cap, well below the cap, so
        # a client that reads is never taken for one that does not.
        self.high_water = HIGH_WATER if max_output is None else min(HIGH_WATER, max_output // 2)
        self.low_water = min(LOW_WATER, self.high_water // 4)
        sock.setblocking(False)

    def start(self, protocol: Any) -> None:
        self.protocol = protocol
        self._update_interest()

    # --- output -------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queues `data` (bytes or a memoryview of them: never copied); sent at the end of the pass.

        Small writes are coalesced into one bytearray. A large one is queued as a view of the
        caller's object, so clients sent the same cached reply share its bytes.
        """
        if self.closed or not data:
            return
        waiting = self.output_size
        size = len(data)
        self.output_size += size
        self.last_activity = time.monotonic()
        if size <= COALESCE_BYTES:
            if self._tail is None:
                self._tail = bytearray()
                self.output_cost += CHUNK_OVERHEAD
                self.loop._with_output.add(self)
            self._tail += data
            self.output_cost += size
            self.loop.output_total += size
            if len(self._tail) >= COALESCE_LIMIT:
                self._seal_tail()
        else:
            self._seal_tail()
            self._queue(memoryview(data))
        if self.output_size >= self.high_water:
            self._above_high_water = True
        # Output written while the client already had the high-water mark waiting, passing the
        # cap: the client is not reading, and the producer (TRACE, monitors) does not wait for it.
        # A protocol that honours back-pressure writes only below the mark, so its client holds at
        # most the mark plus one reply (which may be larger than the cap) and is left to the idle
        # timeout: whether it is reset must not depend on how much the kernel took of the last
        # reply (the test of that failed once loopback send buffers were smaller).
        if self.max_output is not None and waiting >= self.high_water and \
                self.output_cost > self.max_output:
            log.warning("%s: output buffer passed %d bytes; client is not reading; closing",
                        self.label, self.max_output)
            self.reset()
            return
        self.loop.mark_dirty(self)

    def _queue(self, view: memoryview) -> None:
        base = view.obj
        nbytes = view.nbytes if not isinstance(base, (bytes, bytearray)) else len(base)
        self._out.append(view)
        self.output_cost += nbytes + CHUNK_OVERHEAD
        self.loop.output_added(base, nbytes)
        self.loop._with_output.add(self)

    def _unqueue(self, view: memoryview) -> None:
        base = view.obj
        nbytes = view.nbytes if not isinstance(base, (bytes, bytearray)) else len(base)
        self.output_cost -= nbytes + CHUNK_OVERHEAD
        self.loop.output_removed(base)

    def _seal_tail(self) -> None:
        """Moves the coalesced small writes into the chunk queue, in order."""
        tail = self._tail
        if tail is None:
            return
        self._tail = None
        self.output_cost -= len(tail) + CHUNK_OVERHEAD
        self.loop.output_total -= len(tail)
        self._queue(memoryview(bytes(tail)))

    def _drop_output(self) -> None:
        if self._tail is not None:
            self.loop.output_total -= len(self._tail)
            self._tail = None
        while self._out:
            self._unqueue(self._out.popleft())
        self.output_size = 0
        self.output_cost = 0
        self.loop._with_output.discard(self)

    def close_when_flushed(self) -> None:
        """Closes the connection once every queued byte has been sent."""
        self._close_when_flushed = True
        self.loop.mark_dirty(self)

    def flush(self) -> None:
        """Sends what the kernel takes; waits for writability only for the rest."""
        if self.closed:
            return
        blocked = False  # the kernel took less than offered: the rest waits for writability
        if self._tail is not None and not self._out:
            blocked = not self._send_tail(self._tail)
            if self.closed:
                return
        self._seal_tail()
        while self._out and not blocked:
            if len(self._out) > 1 and self.output_size <= 64 * 1024:
                # Many small replies (pipelining): one send instead of one per reply.
                joined = memoryview(b"".join(self._out))
                while self._out:
                    self._unqueue(self._out.popleft())
                self._queue(joined)
            chunk = self._out[0]
            try:
                sent = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("%s: send failed: %s", self.label, exc)
                self.abort()
                return
            self.output_size -= sent
            if sent:
                self.last_activity = time.monotonic()
            if sent == len(chunk):
                self._unqueue(self._out.popleft())
            else:
                self._out[0] = chunk[sent:]  # the same base object: its cost is unchanged
                break
        if not self._out:
            self.loop._with_output.discard(self)
        if self._above_high_water and self.output_size <= self.low_water:
            self._above_high_water = False
            drained = getattr(self.protocol, "writing_drained", None)
            if drained is not None:
                drained()
                if self.closed:
                    return
        if not self._out and self._close_when_flushed:
            self.close()
            return
        self._update_interest()

    def _send_tail(self, tail: bytearray) -> bool:
        """Sends the coalesced small writes straight from the tail when nothing is queued before
        them (a pass's replies, the common case): no chunk made, queued and accounted only to be
        sent at once. True if the kernel took all of it (or the send failed and closed it)."""
        try:
            sent = self.sock.send(tail)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            log.debug("%s: send failed: %s", self.label, exc)
            self.abort()
            return True
        if sent:
            self.output_size -= sent
            self.output_cost -= sent
            self.loop.output_total -= sent
            self.last_activity = time.monotonic()
        if sent < len(tail):
            del tail[:sent]
            return False
        self._tail = None
        self.output_cost -= CHUNK_OVERHEAD
        return True

    def on_writable(self) -> None:
        # Flushed with every other dirty transport after the before-sleep hooks, so a reply never
        # overtakes the journal flush (and fsync) of the change it acknowledges.
        self.loop.mark_dirty(self)

    # --- input --------------------------------------------------------------------------------
    def on_readable(self) -> None:
        try:
            data = shared_receive(self.sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset by peer and friends: only this connection is lost
            log.debug("%s: recv failed: %s", self.label, exc)
            self.abort()
            return
        if data:
            self.received(data)
        else:
            self._eof = True
            self._reading = False
            self._update_interest()
            self.protocol.eof_received()

    def received(self, data: bytes) -> None:
        """Hands `data` to the protocol as read from the socket; also the bytes a handler read
        before this transport took its connection over (status_oneshot.py)."""
        try:
            self.protocol.data_received(data)
        except MemoryError:
            del data  # this chunk's bytes go back before the error reply is made
            self.out_of_memory()
            return
        self._track_request()

    def out_of_memory(self) -> None:
        """Handling this connection ran out of memory: its protocol drops its buffers and writes
        its error reply (`out_of_memory()`; without one the connection is aborted), nothing more
        is read, and the connection closes once the reply is sent. Never the DSM's failure."""
        loop = self.loop
        loop.input_failures += 1
        loop.memory_errors += 1
        if loop._failure_log.allow(time.monotonic()) is not None:
            log.warning("%s: out of memory handling its input (a memory cap: see "
                        "docs/operating-safely.md); answered with an error and closed", self.label)
        answer = getattr(self.protocol, "out_of_memory", None)
        if answer is None or self.closed:
            self.abort()
            return
        self.request_started = None
        self.pause_reading()
        try:
            answer()
        except MemoryError:
            self.abort()
            return
        self.close_when_flushed()

    def _track_request(self) -> None:
        """Starts the request clock at the first byte of an incomplete request; stops it when the
        protocol holds no partial request any more (`has_partial_request()`)."""
        partial = getattr(self.protocol, "has_partial_request", None)
        if partial is not None and not self.closed and partial():
            if self.request_started is None:
                self.request_started = time.monotonic()
        else:
            self.request_started = None

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update_interest()

    def resume_reading(self) -> None:
        if not self._reading and not self.closed and not self._eof:
            self._reading = True
            self._update_interest()

    @property
    def reading(self) -> bool:
        return self._reading

    def _update_interest(self) -> None:
        if self.closed:
            return
        events = (selectors.EVENT_READ if self._reading else 0) | \
                 (selectors.EVENT_WRITE if self._out or self._tail else 0)
        if events == self._registered_events:
            return
        if events and self._registered_events:
            self.loop.modify(self.sock, events, self)
        elif events:
            self.loop.register(self.sock, events, self)
        else:
            self.loop.unregister(self.sock)
        self._registered_events = events

    # --- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Closes at once, dropping unsent output, and tells the protocol."""
        if self.closed:
            return
        self.closed = True
        if self._registered_events:
            # Unregistering twice costs a KeyError that selectors builds with repr(socket).
            self.loop.unregister(self.sock)
            self._registered_events = 0
        self._drop_output()
        try:
            self.sock.close()
        except OSError:
            pass
        if self.on_close is not None:
            self.on_close(self)
        if self.protocol is not None:
            self.protocol.connection_lost()

    abort = close

    def reset(self) -> None:
        """Closes with a reset (SO_LINGER 0) for a client that does not read: a plain close
        would leave the unsent bytes in the kernel's send buffer, and the FIN behind them,
        until the client reads — memory no limit of ours counts, and a peer never told."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass  # a Unix socket or a test double: a plain close
        self.close()


class _ReadWatcher:
    """A socket the loop watches for reading for its whole life (listeners, datagram sockets)."""

    def __init__(self, loop: EventLoop, sock: socket.socket, label: str) -> None:
        self.loop = loop
        self.sock = sock
        self.label = label
        self.closed = False
        self.watch_failures = 0  # times the selector could not take the socket back
        self._watch_log = _RateLimitedLog(1, ACCEPT_LOG_PERIOD_S)
        sock.setblocking(False)
        loop.register(sock, selectors.EVENT_READ, self)

    def _watch_again(self, instead: str) -> bool:
        """Hands the socket back to the selector after a pause; False where epoll cannot take it
        (epoll_ctl: ENOMEM, or ENOSPC past fs.epoll.max_user_watches), and the caller must set a
        timer to try again — never neither, or nothing would read the socket again. `instead`
        says in the log what the caller does meanwhile; logged at most once a minute."""
        try:
            self.loop.register(self.sock, selectors.EVENT_READ, self)
            return True
        except OSError as exc:
            self.watch_failures += 1
            if self._watch_log.allow(time.monotonic()) is not None:
                log.error("%s: the selector cannot watch it (%s); %s (logged once a minute; %d "
                          "such failures so far)", self.label, exc.strerror or exc, instead,
                          self.watch_failures)
            return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.unregister(self.sock)
            self.sock.close()


class Listener(_ReadWatcher):
    """A listening stream socket that accepts in batches and backs off when out of descriptors."""

    def __init__(self, loop: EventLoop, sock: socket.socket, label: str,
                 on_accept: Callable[[socket.socket, Any], None]) -> None:
        super().__init__(loop, sock, label)
        self.on_accept = on_accept
        self._backoff_s = ACCEPT_BACKOFF_S
        self._paused = False
        self._accept_log = _RateLimitedLog(1, ACCEPT_LOG_PERIOD_S)
        self.out_of_descriptors = 0  # accepts that failed for want of a descriptor
        # socket.accept() turns the listener's family and type into enums on every call (a third
        # of its cost); the new socket is built from these plain ints instead, as accept() does.
        self._socket_args = (int(sock.family), int(sock.type), sock.proto)

    def on_readable(self) -> None:
        # socket._accept: CPython's undeclared accept that returns the raw descriptor (see above).
        accept, args = self.sock._accept, self._socket_args  # type: ignore[attr-defined]
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                fd, addr = accept()
                conn = socket.socket(*args, fileno=fd)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                    return
                # accept(2): pending network errors of the new connection surface here and are
                # to be treated like EAGAIN; the listener itself is fine.
                log.debug("%s: accept failed: %s", self.label, exc)
                continue
            self._backoff_s = ACCEPT_BACKOFF_S
            try:
                self.on_accept(conn, addr)
            except Exception as exc:  # setting up one new connection: that connection's problem
                self.loop.input_failed("%s connection from %s" % (self.label, addr), exc,
                                       "closing it")
                try:
                    conn.close()
                except OSError:
                    pass

    def _pause(self, exc: OSError) -> None:
        """Stops watching the listener for a while (doubling up to ACCEPT_BACKOFF_MAX_S) instead of
        spinning on a listener that stays ready; logs at most once per ACCEPT_LOG_PERIOD_S."""
        self.out_of_descriptors += 1
        if self._accept_log.allow(time.monotonic()) is not None:
            log.error("%s: cannot accept (%s); pausing accepts for %.1f s (logged once a minute; "
                      "%d such failures so far)", self.label, exc.strerror, self._backoff_s,
                      self.out_of_descriptors)
        self._paused = True
        self.loop.unregister(self.sock)
        self.loop.call_later(self._backoff_s, self._resume)
        self._backoff_s = min(self._backoff_s * 2, ACCEPT_BACKOFF_MAX_S)

    def _resume(self) -> None:
        if not self.closed and self._paused:
            if self._watch_again("trying again in %.1f s" % self._backoff_s):
                self._paused = False
            else:
                self.loop.call_later(self._backoff_s, self._resume)

    def close(self) -> None:
        if not self.closed and self._paused:
            self.closed = True
            self.sock.close()
            return
        super().close()

    def abort(self) -> None:
        # A failure while handing over one new connection must not close the port for everyone.
        pass


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class DatagramReader(_ReadWatcher):
    """Reads a datagram socket in batches; `on_datagram(data, sender, ifindex)` gets each one.

    Coalescing (`coalesce_s` > 0), as a network card's interrupt moderation or Linux's NAPI do it:
    a datagram that arrives while the socket is idle is read at once, but once datagrams come less
    than `coalesce_s` apart (or several wait for one read) the socket leaves the selector and a
    timer reads it every `coalesce_s` until a read finds nothing, when the selector watches it
    again. A busy socket then costs one loop pass (a wakeup, the before-sleep hooks, one journal
    write) per batch rather than per datagram, and each datagram waits at most `coalesce_s`
    (docs/protocol.md, docs/performance.md). The kernel's receive buffer holds what arrives
    meanwhile (multicast_socket.RECEIVE_BUFFER asks for 8 MiB, 6,553 datagrams of a drive's size;
    where the host caps it at Linux's default, 332: options.MAX_COALESCE_S keeps 10,000 a second
    within that).
    """

    def __init__(self, loop: EventLoop, sock: socket.socket, label: str,
                 on_datagram: Callable[[bytes, Tuple[str, int], int], None],
                 with_ifindex: bool, coalesce_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(loop, sock, label)
        self.clock = clock  # monotonic s: when datagrams came, to know whether to coalesce
        self.on_datagram = on_datagram
        self.with_ifindex = with_ifindex
        self.coalesce_s = coalesce_s
        self._last_read_at = float("-inf")  # monotonic s of the last batch or empty poll
        self._poll_timer: Optional[Timer] = None  # set while the timer, not the selector, reads
        self.coalesced_batches = 0  # timer reads that found datagrams

    def on_readable(self) -> None:
        read = self._read_batch()
        if self.coalesce_s > 0.0:
            now = self.clock()
            # Close together: several waited for this read, or the last read was moments ago.
            if (read > 1 or now - self._last_read_at < self.coalesce_s) and not self.closed:
                self.loop.unregister(self.sock)
                self._poll_after(read)
            self._last_read_at = now

    def _poll(self) -> None:
        self._poll_timer = None
        if self.closed:
            return
        try:
            read = self._read_batch()
        except Exception as exc:
            # The socket's failure, counted as in selector mode; and the selector watches the
            # socket again, since neither it nor a timer would read it: the DSM would go deaf.
            self._selector_reads_again()
            self.loop.handler_failed(self, exc)
            return
        self._last_read_at = self.clock()
        if read == 0:  # quiet again: the next datagram wakes the loop itself
            self._selector_reads_again()
            return
        self.coalesced_batches += 1
        self._poll_after(read)

    def _selector_reads_again(self) -> None:
        if not self._watch_again("read every %g s instead" % self.coalesce_s):
            self._poll_timer = self.loop.call_later(self.coalesce_s, self._poll)

    def read_waiting(self) -> None:
        """Reads at once what waits while the timer holds the socket (the selector reports the
        rest itself). The daemon calls it before expiring drives: an announcement that reached the
        host before its drive's deadline keeps the drive alive, coalesced or not."""
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll()

    def _poll_after(self, read: int) -> None:
        # A full batch means more is waiting: read again in this pass's timers, not a period later.
        delay = 0.0 if read >= DATAGRAMS_PER_EVENT else self.coalesce_s
        self._poll_timer = self.loop.call_later(delay, self._poll)

    def _read_batch(self) -> int:
        """Reads and hands on at most DATAGRAMS_PER_EVENT datagrams; how many it read."""
        read = 0
        while read < DATAGRAMS_PER_EVENT:
            try:
                if self.with_ifindex:
                    data, ancdata, _flags, sender = self.sock.recvmsg(65536, 64)
                    ifindex = _ifindex_from_pktinfo(ancdata)
                else:
                    data, sender = self.sock.recvfrom(65536)
                    ifindex = 0
            except (BlockingIOError, InterruptedError):
                return read
            except OSError as exc:  # e.g. ICMP errors queued on the socket: not fatal
                log.debug("%s: recv failed: %s", self.label, exc)
                return read
            read += 1
            try:
                self.on_datagram(data, sender, ifindex)
            except Exception as exc:  # one datagram's problem: it is dropped, the socket stays
                self.loop.input_failed("%s datagram from %s" % (self.label, sender[0]), exc,
                                       "dropping it")
        return read

    def close(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        super().close()

    def abort(self) -> None:
        # A failing datagram handler loses one datagram; the socket stays, since nothing else hears
        # the drives.
        pass


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def _ifindex_from_pktinfo(ancdata: List[Tuple[int, int, bytes]]) -> int:
    for level, kind, payload in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= 4:
            return struct.unpack("=i", payload[:4])[0]
    return 0
