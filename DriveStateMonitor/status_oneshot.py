"""The one-shot status connection: the lab scripts' way of reporting, at the floor's cost.

Theory of operation
-------------------
Nearly every status connection is a lab script's one-shot (spec dsm.md, "Status protocol"): connect,
send one dict, read the `\\x04`, close. The general path — a StreamTransport with its output queue,
water marks and request clock, and a StatusConnection with its framer — exists for everything
else: statuses that drip in, several in one write, garbage, a slow reader. For the one-shot, that
machinery is most of the DSM's cost per status (issue 12 measured it against the floor server).

So an accepted status connection starts as a `OneShotStatus`: a bare handler holding the socket and
nothing else, not even registered with the selector. It reads at once, in the accept itself (the
script sent its status right after connecting, so it has usually arrived: no epoll registration,
no `setblocking` — every call passes MSG_DONTWAIT — and no second loop pass); only if nothing is
there yet does it wait for readability. While any connection of the port waits so, new ones wait
too, instead of reading at accept: a connection accepted later must not overtake one whose bytes
are still on their way, so statuses are stored in the order their bytes came, as on the general
path (a client with several connections in flight finds its statuses in `s` in the order sent).
That first read decides.

* The bytes are exactly one usual status (`parse_whole_flat_status`: one flat dict, then nothing
  but separators) and the read did not fill the receive buffer, so nothing more was waiting (Linux
  TCP `recv` drains the whole receive queue up to the size asked): it is parsed, stored and
  journaled as the general path would, and its reply (`\\x04`, or the error) is sent by `flush()`
  — which the loop calls for dirty handlers after the before-sleep hooks, so the journal write
  (and, with `--fsync always`, the fsync) of the status is done before its acknowledgement
  leaves, and a failed flush withdraws it (state_guard.AckGuard). Then the connection closes:
  the general path's close rule (pipelining.answered_and_idle) gives the same result, as every
  message received is answered.
* Anything else — a partial message, two messages, garbage, a message over `--max-message`, a
  read that filled the buffer, a reply the socket would not take at once — hands the socket, and
  the bytes already read, to the general path (`take_over`), which then goes on exactly as if it
  had had the connection from the start. An HTTP request (a browser's cross-protocol POST) is
  such an "anything else": it does not begin with `{`, and the general path's HttpLineGuard
  (http_lines.py) refuses it before a byte of its body is parsed.

A connection that connects and sends nothing is closed by the idle sweep like any other (it is
in the daemon's set of connections and has the attributes `fair_shares.sweep` reads). The reply
is a few bytes and is not counted in `--max-output-total`. tests/test_status_oneshot.py checks
that both paths give the same replies and store the same entries for every input.
"""
from __future__ import annotations

import time
from selectors import EVENT_READ
from socket import MSG_DONTWAIT
from typing import Any, Callable, Optional

from .event_loop import RECV_SIZE, EventLoop, StreamTransport, shared_receive
from .status_protocol import END_BYTE, StatusError, error_reply, parse_whole_flat_status
from .status_service import OUT_OF_MEMORY, ReportBadInput, StoreStatus

# Gives the connection to the general path: a started StreamTransport + StatusConnection.
TakeOver = Callable[["OneShotStatus"], StreamTransport]


class StatusPort:
    """What every one-shot connection of one status listener shares (set up once by the daemon),
    and how many of them still wait for their first bytes."""

    __slots__ = ("loop", "store", "bad_input", "max_message", "take_over", "label_of", "waiting")

    def __init__(self, loop: EventLoop, store: StoreStatus, bad_input: ReportBadInput,
                 max_message: int, take_over: TakeOver, label_of: Callable[[Any], str]) -> None:
        self.loop = loop
        self.store = store
        self.bad_input = bad_input
        self.max_message = max_message  # --max-message: a bigger message goes to the general path
        self.take_over = take_over
        self.label_of = label_of  # the peer's label from accept()'s address, built if shown
        # Registered connections whose first bytes have not been read: while there are any, a new
        # connection does not read at accept either, so it cannot overtake them (see the top).
        self.waiting = 0


class OneShotStatus:
    """A status connection until its first read (see the module docstring)."""

    __slots__ = ("port", "sock", "addr", "on_close", "closed", "last_activity", "_reply",
                 "_closing", "_label", "_registered", "_transport")

    handles_input = True  # an exception in its handlers is this connection's, not the DSM's
    # What fair_shares.sweep and the daemon's idle rule read: no request is ever half-read here.
    request_started = None
    reading = True
    protocol = None

    def __init__(self, port: StatusPort, sock: Any, addr: Any,
                 on_close: Callable[[Any], None]) -> None:
        self.port = port
        self.sock = sock  # left blocking: every call on it passes MSG_DONTWAIT (no ioctl)
        self.addr = addr
        self.on_close = on_close
        self.closed = False
        self.last_activity = time.monotonic()
        self._reply: Optional[bytes] = None
        self._closing = False
        self._label: Optional[str] = None
        self._registered = False
        self._transport: Optional[StreamTransport] = None  # the general path's, once handed over

    @property
    def label(self) -> str:
        if self._label is None:
            self._label = self.port.label_of(self.addr)
        return self._label

    def start(self) -> None:
        """Reads at once: a script sends its status right after connecting, so it has usually
        arrived by the time the connection is accepted. Waits for readability if not, or if an
        earlier connection still waits (statuses are stored in the order their bytes came)."""
        port = self.port
        if port.waiting:
            self._wait()
            return
        loop = port.loop
        accepting, loop.current = loop.current, self  # what it stores is this connection's
        try:
            self.on_readable()
        except Exception:
            self.abort()  # the listener logs it; the slot is given back here
            raise
        finally:
            loop.current = accepting

    def _wait(self) -> None:
        if not self._registered:
            self._registered = True
            self.port.waiting += 1
            self.port.loop.register(self.sock, EVENT_READ, self)

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self.port.waiting -= 1
            self.port.loop.unregister(self.sock)

    def on_readable(self) -> None:
        try:
            data = shared_receive(self.sock, MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self._wait()
            return
        except OSError:  # reset by peer and friends: nothing was said, nothing to answer
            self.close()
            return
        if not data:  # connected and closed without a word
            self.close()
            return
        self._unregister()  # read once: from here on it only sends, then closes
        port = self.port
        if len(data) == RECV_SIZE:
            self._hand_over(data)
            return
        try:
            report = parse_whole_flat_status(data, port.max_message)
        except StatusError as exc:
            self._reply = self._refused(str(exc))
        except MemoryError:  # this client's error (event_loop.py), never the DSM's
            del data
            port.loop.input_failures += 1
            port.loop.memory_errors += 1
            self._reply = error_reply(OUT_OF_MEMORY)
        else:
            if report is None:
                self._hand_over(data)
                return
            try:
                error = port.store(report)
            except MemoryError:
                del data, report
                port.loop.input_failures += 1
                port.loop.memory_errors += 1
                error = OUT_OF_MEMORY
            self._reply = END_BYTE if error is None else self._refused(error)
        port.loop.mark_dirty(self)

    def _refused(self, reason: str) -> bytes:
        self.port.bad_input(self.label, reason)
        return error_reply(reason)

    def _hand_over(self, data: bytes) -> StreamTransport:
        self.closed = True  # without closing the socket: it is the transport's now
        self._unregister()
        transport = self._transport = self.port.take_over(self)
        if data:
            # Changes journaled from here on are the transport's to acknowledge (AckGuard).
            self.port.loop.current = transport
            transport.received(data)
        return transport

    def flush(self) -> None:
        """Sends the reply (after this pass's journal flush) and closes."""
        if self.closed:
            return
        reply = self._reply
        if reply is not None:
            try:
                sent = self.sock.send(reply, MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            if sent < len(reply):  # the kernel would not take a few bytes: the general path waits
                transport = self._hand_over(b"")
                transport.write(reply[sent:])
                transport.close_when_flushed()
                return
        elif not self._closing:
            return
        self.close()

    def close_when_flushed(self) -> None:
        """Closes once the reply, if any, is sent (the daemon's shutdown)."""
        self._closing = True
        self.port.loop.mark_dirty(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._unregister()
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_close(self)

    def abort(self) -> None:
        """Closes the connection at once: this handler's, or the transport's it was handed to (an
        exception while the transport handles the bytes read here surfaces through this handler)."""
        if self._transport is not None:
            self._transport.abort()
        else:
            self.close()
