"""The Drive State Monitor daemon: wires sockets, protocols and the stores onto one event loop.

Data flow: socket -> StreamTransport -> QueryConnection / StatusConnection / StatServConnection
(sans-IO parsers) -> DriveStore and the Status Server Tree -> replies and monitor notices ->
StreamTransport -> socket. Datagrams go DatagramReader -> parse_announcement -> DriveStore; the
tree's /drives is a read-only view of the DriveStore (DriveView), which tells the tree what changed.

Time: the stores are pure and take `now` from `clock`, a host_clock.Moment: the monotonic reading,
which every deadline uses, carrying the wall reading for what is shown and kept (host_clock.py);
one loop timer is kept at the earliest deadline either store reports (lifetimes, MINPERIOD ends,
drives going silent), so expiry fires without anyone reading.
"""
from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import __version__
from .announcement import REJECT_REASONS, Rejected, parse_announcement
from .daemon_log import BadInputLog, ReopenableFileHandler, configure_logging, lines_lost
from .drive_publisher import DrivePublisher
from .drive_view import DriveView
from .drive_store import DriveStore, dumps_default
from .fair_shares import DESCRIPTOR_RESERVE, ConnectionSlots, descriptor_budget, sweep
from .event_loop import (EXIT_INTERRUPT, EXIT_KILL_SWITCH, EXIT_OK, EXIT_SOCKET_CREATE,
                         EXIT_SOCKET_LISTEN, Connection, DatagramReader, EventLoop, Listener,
                         StreamTransport, Timer)
from .host_clock import HostClock, wall_of
from .interfaces import Interface, select_interfaces
from .local_dirs import unsafe_dir, unsafe_state_dirs
from .memory_limits import apply_memory_caps
from .metrics import LagHistogram
from .multicast_socket import (MulticastSetupError, open_multicast_socket, receive_drops,
                               sole_interface)
from .options import parse_options
from .persistence import FSYNC_ALWAYS, Journal, close_inherited_fds, load_state
from .sd_notify import notify as sd_notify
from .sd_notify import watchdog_interval
from .query_protocol import END_BYTE, Query, encode_reply, error_reply
from .query_service import QueryConnection
from .single_instance import (QUERY_SOCKET, STATSERV_SOCKET, InstanceLock, RunDirError,
                              ensure_run_dir, lock_holder_pid)
from .access import AccessRules, is_local_peer, is_own_user
from .statserv_service import StatServConnection
from .save_writer import SAVE_SUBDIR, SaveWriter
from .state_guard import AckGuard, recovery_report, write_exit_note
from .store_state import JournaledTree, StoreState
from .status_protocol import StatusReport
from .status_oneshot import OneShotStatus, StatusPort
from .status_service import StatusConnection
from .web_service import (KEEPALIVE_S, EventStreams, WebApp, WebConnection, WebData,
                          http_refusal, load_static_files)
from .change_feed import ChangeFeed, make_epoch

log = logging.getLogger("dsm")

LISTEN_BACKLOG = 1024
# On SIGTERM/SIGINT, replies already being sent get this long to finish.
SHUTDOWN_GRACE_S = 5.0
# How often /dsm/ counters are republished into the tree.
FACTS_PERIOD_S = 1.0
# How often the loop-lag probe (a timer that records how late it fired) runs.
LOOP_LAG_PERIOD_S = 1.0


class StartupError(Exception):
    """Start-up failed; `exit_code` is the documented code (2 socket creation, 3 listen)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# Accepted TCP sockets inherit TCP_NODELAY from their listener on Linux (tcp(7) keeps the option
# with the socket it clones); elsewhere each connection sets it.
NODELAY_INHERITED = sys.platform.startswith("linux")


def open_tcp_listener(port: int, what: str) -> socket.socket:
    """A listening TCP socket on every address (IPv6 dual-stack where the host has IPv6)."""
    try:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            address: tuple = ("::", port)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = ("0.0.0.0", port)
    except OSError as exc:
        raise StartupError(EXIT_SOCKET_CREATE, "cannot create the %s socket: %s" % (what, exc)) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Linux gives every accepted socket the listener's TCP_NODELAY: one system call per
        # connection fewer (_admit sets it per connection elsewhere).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise StartupError(EXIT_SOCKET_CREATE, "cannot bind the %s port %d: %s"
                               % (what, port, exc.strerror or exc)) from exc
        try:
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            raise StartupError(EXIT_SOCKET_LISTEN, "cannot listen on the %s port %d: %s"
                               % (what, port, exc.strerror or exc)) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def open_unix_listener(path: str, what: str) -> socket.socket:
    """A listening Unix stream socket at `path`, replacing a stale one (we hold the lock)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise StartupError(EXIT_SOCKET_CREATE, "cannot create the %s socket: %s" % (what, exc)) from exc
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StartupError(EXIT_SOCKET_CREATE, "cannot replace %s: %s" % (path, exc.strerror)) from exc
        try:
            sock.bind(path)
            # Any local user may query, as anyone on the network may query the TCP port.
            os.chmod(path, 0o666)
        except OSError as exc:
            raise StartupError(EXIT_SOCKET_CREATE, "cannot bind the %s socket %s: %s"
                               % (what, path, exc.strerror or exc)) from exc
        try:
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            raise StartupError(EXIT_SOCKET_LISTEN, "cannot listen on %s: %s" % (path, exc.strerror)) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def query_refusal(code: str, why: str) -> bytes:
    """Query and status ports: the JSON error both protocols use, with the end byte."""
    return encode_reply({"error": why})


def statserv_refusal(code: str, why: str) -> bytes:
    return ("! %s %s\n" % (code, why)).encode("utf-8")


def enable_keepalive(sock: socket.socket, idle_s: int = 60, interval_s: int = 10,
                     count: int = 6) -> None:
    """TCP keepalive: a peer gone without a FIN is noticed after about idle + interval * count."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s),
                        ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


def peer_label(kind: str, addr: Any) -> str:
    if isinstance(addr, tuple):
        host = addr[0]
        if host.startswith("::ffff:"):
            host = host[7:]
        return "%s %s:%d" % (kind, host, addr[1])
    return "%s unix" % kind


class DriveStateMonitor:
    """The daemon: start() binds everything (or raises StartupError), run() serves until a signal."""

    def __init__(self, options: argparse.Namespace,
                 clock: Callable[[], float] = HostClock()) -> None:
        self.options = options
        self.clock = clock
        self.loop = EventLoop()
        self.store = DriveStore(history=options.history, drive_lifetime=options.drive_lifetime,
                                max_drives=options.max_drives,
                                max_status_serials=options.max_drives)
        self.tree = JournaledTree(max_objects=options.max_objects,
                                  max_value_bytes=options.max_value)
        self.access = AccessRules(options.allow)
        self.slots = ConnectionSlots(options.max_connections,
                                     options.max_connections_per_address, options.local_reserve)
        self.loop.max_output_total = options.max_output_total
        self.publisher = DrivePublisher(self.tree, options.drive_lifetime)
        self.drive_view = DriveView(self.store, self.tree, clock())  # mounts /drives
        self.state = StoreState(self.store, self.tree, self.publisher)
        self.journal = Journal(options.state_dir, options.fsync,
                               lambda: self.state.snapshot(self.clock()),
                               lambda: wall_of(self.clock()))
        # The snapshot child closes every inherited descriptor: listeners, connections, journal.
        self.journal.child_setup = close_inherited_fds
        self.ack_guard = AckGuard(self.loop, self.journal)
        self.ack_guard.on_identity_lost = lambda: self.loop.call_later(0.0, self._snapshot_soon)
        if self.journal.fsync == FSYNC_ALWAYS:  # no other policy refuses (Journal.refusing)
            self.tree.refusing = lambda: self.journal.refusing
        self.saves = SaveWriter(self.loop, self.tree, os.path.join(options.state_dir, SAVE_SUBDIR))
        self._deadline_timer: Optional[Timer] = None
        self._deadline_at: Optional[float] = None
        self.lock = InstanceLock(options.run_dir)
        self.interfaces: List[Interface] = []
        self._iface_names: Dict[int, str] = {}
        self.listeners: List[Any] = []
        self._announcements: Optional[DatagramReader] = None
        self.transports: Set[Connection] = set()
        self.counters: Dict[str, int] = collections.Counter()
        self.bad_input = BadInputLog(logging.getLogger("dsm.input"))
        # One line per idle connection closed is a stranger's to multiply (open, stay quiet):
        # rate-limited like bad input.
        self.idle_closes = BadInputLog(log, line="%s: %s", level=logging.INFO, summary=(
            "%d more connections closed as idle, not logged, in the last %.0f s"))
        self.log_handler: Optional[ReopenableFileHandler] = None
        self.ports: Dict[str, int] = {}
        self.started_at = wall_of(clock())
        self._cached_m = (-1, b"")
        self._cached_s = (-1, b"")
        self._shutdown_deadline: Optional[float] = None
        self._shutdown_code = EXIT_OK
        self._unix_paths: List[str] = []
        self.web_app: Optional[WebApp] = None
        self.event_streams: Optional[EventStreams] = None
        self.loop_lag = LagHistogram()

    # --- start and stop -----------------------------------------------------------------------
    def start(self) -> bool:
        """Takes the lock and opens every socket; False if another DSM already runs here."""
        opts = self.options
        try:
            self.lock.created_dir = ensure_run_dir(opts.run_dir)
            if not self.lock.acquire():
                return False
            # The run dir's rules for the state dir and saves/ too (local_dirs.py).
            problem = unsafe_state_dirs(opts.state_dir, self.saves.save_dir)
            if problem is not None:
                raise RunDirError(problem)
        except RunDirError as exc:
            raise StartupError(EXIT_SOCKET_CREATE, str(exc)) from exc
        except OSError as exc:
            raise StartupError(EXIT_SOCKET_CREATE, "cannot use the run dir %s: %s"
                               % (opts.run_dir, exc)) from exc
        try:
            self.interfaces = select_interfaces(opts.interfaces)
        except ValueError as exc:
            raise StartupError(EXIT_SOCKET_CREATE, "cannot listen for drives: %s" % exc) from exc
        self._iface_names = {iface.ifindex: iface.name for iface in self.interfaces}
        self._restore()
        self.saves.remove_stale_temporaries()  # a SAVE cut short by the last stop or crash

        query_sock = open_tcp_listener(opts.query_port, "query")
        self._add_listener(query_sock, "query", self._accept_query)
        status_sock = open_tcp_listener(opts.status_port, "status")
        self._status_port = StatusPort(self.loop, self.store_status, self._complain,
                                       opts.max_message, self._status_transport,
                                       functools.partial(peer_label, "status"))
        self._add_listener(status_sock, "status", self._accept_status)
        statserv_sock = open_tcp_listener(opts.statserv_port, "Status Server")
        self._add_listener(statserv_sock, "statserv", self._accept_statserv)
        unix_path = os.path.join(opts.run_dir, QUERY_SOCKET)
        unix_sock = open_unix_listener(unix_path, "query")
        self._unix_paths.append(unix_path)
        self._add_listener(unix_sock, "query-unix", self._accept_query)
        statserv_path = os.path.join(opts.run_dir, STATSERV_SOCKET)
        statserv_unix = open_unix_listener(statserv_path, "Status Server")
        self._unix_paths.append(statserv_path)
        self._add_listener(statserv_unix, "statserv-unix", self._accept_statserv)
        try:
            mcast_sock = open_multicast_socket(opts.mcast_group, opts.mcast_port, self.interfaces)
        except MulticastSetupError as exc:
            raise StartupError(EXIT_SOCKET_CREATE, str(exc)) from exc
        sole = sole_interface(mcast_sock, self.interfaces)  # then datagrams come as index 0
        if sole is not None:
            self._iface_names = {0: sole.name}
        self._announcements = DatagramReader(self.loop, mcast_sock, "multicast",
                                             self._on_datagram, with_ifindex=sole is None,
                                             coalesce_s=opts.coalesce)
        self.listeners.append(self._announcements)
        self.ports = {
            "query_port": query_sock.getsockname()[1],
            "status_port": status_sock.getsockname()[1],
            "statserv_port": statserv_sock.getsockname()[1],
            "mcast_port": mcast_sock.getsockname()[1],
        }
        if opts.http_port:  # unlike the other ports, 0 turns the HTTP listener off
            self._start_http(opts.http_port)
        self.loop.on_signals([signal.SIGTERM, signal.SIGINT, signal.SIGHUP], self._on_signal)
        self.loop.add_before_sleep(self._schedule_deadline)
        self.loop.add_after_flush(self._check_shutdown)
        # Last hook: the journal reaches the disk before this pass's replies are sent.
        self.loop.add_before_sleep(lambda: self.ack_guard.flush(time.monotonic()))
        self.loop.call_later(self.options.snapshot_interval, self._snapshot_periodically)
        self.loop.call_later(self.options.state_retry, self._watch_journal)
        self._limit_connections_to_descriptors()
        self.loop.call_later(self._sweep_period(), self._sweep)
        self._publish_facts()
        self.loop.call_later(FACTS_PERIOD_S, self._publish_facts_periodically)
        self.lock.write_info(dict(pid=os.getpid(), version=__version__, started=self.started_at,
                                  run_dir=os.path.abspath(opts.run_dir), query_socket=unix_path,
                                  statserv_socket=statserv_path, **self.ports))
        log.info("Drive State Monitor %s started, pid %d", __version__, os.getpid())
        log.info("queries on TCP port %d and %s; statuses on TCP port %d; Status Server on TCP "
                 "port %d and %s", self.ports["query_port"], unix_path, self.ports["status_port"],
                 self.ports["statserv_port"], statserv_path)
        log.info("hearing %s:%d on %s", opts.mcast_group, self.ports["mcast_port"],
                 ", ".join("%s (%s)" % (i.name, i.ipv4) for i in self.interfaces) or "no interface")
        sd_notify("READY=1\nMAINPID=%d\nSTATUS=serving queries on port %d" % (
            os.getpid(), self.ports["query_port"]))
        interval = watchdog_interval()
        if interval:
            self._ping_watchdog(interval)
        return True

    def run(self) -> int:
        """Serves until SIGTERM (0), SIGINT (1) or the kill switch (4); snapshots; returns the code."""
        code = self.loop.run()
        self.state.attach(None)
        if self.journal.snapshot_now():
            log.info("snapshot written to %s", self.options.state_dir)
        else:
            # What the journal could not take is only in memory: this stop loses it.
            why = "the final snapshot failed (%s); changes since the last good snapshot that " \
                  "the journal did not hold are lost" % self.journal.last_snapshot_error
            log.critical("%s; exit code %d", why, EXIT_KILL_SWITCH)
            write_exit_note(self.options.run_dir, os.getpid(), EXIT_KILL_SWITCH, why)
            return EXIT_KILL_SWITCH
        return code

    # --- durability ---------------------------------------------------------------------------
    def _restore(self) -> None:
        """Loads the state dir (snapshot + journal) and starts a new journal after it."""
        started = time.monotonic()
        state_dir = self.options.state_dir
        # No cyclic garbage is made while restoring, but 100,000 new objects would start ~100
        # collections that each walk everything made so far: ~12 % of a large restore.
        collecting = gc.isenabled()
        gc.disable()
        try:
            loaded = load_state(state_dir)
            counts = self.state.restore(loaded, self.clock())
        finally:
            if collecting:
                gc.enable()
        if loaded.snapshot is not None or loaded.records:
            log.info("restored from %s in %.3f s: %s%s", state_dir, time.monotonic() - started,
                     ", ".join("%s %d" % kv for kv in sorted(counts.items())),
                     "; torn journal tails dropped: %s" % ", ".join(loaded.torn)
                     if loaded.torn else "")
        damage, facts = recovery_report(loaded, counts)
        self.journal.recovery.update(facts)
        self.journal.checked_from = loaded.checked_from
        self.journal.blocked = loaded.unreadable  # an unlistable state dir: hands off, failing
        self.journal.open(loaded.next_seq)
        self.state.attach(self.ack_guard.recorder)
        # After the restore: what was acknowledged before is never refused by the budget.
        self.tree.byte_budget = lambda: (self.options.max_store_bytes - self.store.status_bytes
                                         - self.store.drive_bytes)
        if damage is not None:
            log.critical("%s", damage)
            # A snapshot now holds everything intact; then the damaged files are renamed aside.
            self.journal.quarantine_pending = list(loaded.damaged)
            self.loop.call_later(0.0, self._snapshot_soon)

    def _snapshot_soon(self) -> None:
        if self.journal.start_snapshot():
            self.loop.call_later(0.1, self._poll_snapshot)
        elif self.journal.snapshot_running:
            self.loop.call_later(0.5, self._snapshot_soon)

    def _snapshot_periodically(self) -> None:
        if self._shutdown_deadline is not None:
            return
        if self.journal.start_snapshot():
            self.loop.call_later(0.1, self._poll_snapshot)
        self.loop.call_later(self.options.snapshot_interval, self._snapshot_periodically)

    def _poll_snapshot(self) -> None:
        result = self.journal.poll_snapshot()
        if result is None:
            self.loop.call_later(0.1, self._poll_snapshot)
        elif result:
            log.info("snapshot %d written", self.journal.seq)

    def _watch_journal(self) -> None:
        """A failed (or removed) state dir is retried: a fresh snapshot, then a new journal. A
        journal grown past --snapshot-journal-bytes also gets an early snapshot, so a flood of
        changes cannot fill the disk (or a restart's replay) before the next periodic one."""
        self.journal.check_vanished()
        grown = self.journal.journal_bytes > self.options.snapshot_journal_bytes
        if (self.journal.needs_snapshot or grown) and self._shutdown_deadline is None:
            if self.journal.start_snapshot():
                self.loop.call_later(0.1, self._poll_snapshot)
        self.loop.call_later(self.options.state_retry, self._watch_journal)

    def close(self) -> None:
        """Closes every socket and releases the lock; safe after a failed start."""
        for transport in list(self.transports):
            transport.close()
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.saves.close()
        self.journal.wait_for_child()
        self.journal.close()
        self.loop.close()
        self.lock.release()

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            if self.log_handler is not None:
                self.log_handler.reopen()
            log.info("SIGHUP: log file reopened")
            return
        code = EXIT_INTERRUPT if signum == signal.SIGINT else EXIT_OK
        self.begin_shutdown(code, "SIGINT" if signum == signal.SIGINT else "SIGTERM")

    def begin_shutdown(self, exit_code: int, why: str) -> None:
        """Stops accepting and hearing; replies in flight get SHUTDOWN_GRACE_S to finish."""
        if self._shutdown_deadline is not None:
            return
        log.info("%s: stopping (replies in flight get %.0f s)", why, SHUTDOWN_GRACE_S)
        sd_notify("STOPPING=1\nSTATUS=stopping: %s" % why)
        self._shutdown_code = exit_code
        self._shutdown_deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for listener in self.listeners:
            listener.close()
        for transport in list(self.transports):
            transport.close_when_flushed()

    def _ping_watchdog(self, interval: float) -> None:
        """systemd's watchdog: a loop that stops turning stops pinging, and systemd restarts it."""
        sd_notify("WATCHDOG=1")
        self.loop.call_later(interval, lambda: self._ping_watchdog(interval))

    def _check_shutdown(self) -> None:
        if self._shutdown_deadline is None:
            return
        if not self.transports or time.monotonic() >= self._shutdown_deadline:
            if self.transports:
                log.warning("%d connection(s) still sending at the deadline; closing them",
                            len(self.transports))
            self.loop.stop(self._shutdown_code)
        else:
            # Wake up in time for the deadline even if no socket becomes ready.
            self.loop.call_at(self._shutdown_deadline, lambda: None)

    # --- connections --------------------------------------------------------------------------
    def _add_listener(self, sock: socket.socket, label: str,
                      accept: Callable[[socket.socket, Any, str], None]) -> None:
        self.listeners.append(Listener(self.loop, sock, label,
                                       lambda conn, addr: accept(conn, addr, label)))

    def _admit(self, conn: socket.socket, addr: Any, label: str,
               refusal: Callable[[str, str], bytes]) -> Optional[StreamTransport]:
        """A transport for an accepted connection, or None after refusing it with a clear error."""
        kind = label.split("-")[0]
        on_close = self._take_slot(conn, addr, kind, refusal)
        if on_close is None:
            return None
        return self._transport(conn, peer_label(kind, addr), on_close)

    def _take_slot(self, conn: socket.socket, addr: Any, kind: str,
                   refusal: Callable[[str, str], bytes]) -> Optional[Callable[[Any], None]]:
        """Admits an accepted connection (counted, its slot taken) and returns what its handler
        calls when it closes; None after refusing it with a clear error."""
        why: Optional[str] = None
        code = ""
        if not self.access.allows(addr):
            code = "DENIED"
            why = "connections from %s are not allowed (--allow %s)" % (
                peer_label(kind, addr).split(" ", 1)[1], self.access.describe())
            self.counters["connections_refused_not_allowed"] += 1
        else:
            refused = self.slots.take(addr, conn.getsockname)
            if refused is not None:
                code = "LIMIT"
                why = refused[1]
                self.counters["connections_refused_" + refused[0]] += 1
        if why is not None:
            self._complain(peer_label(kind, addr), why)
            try:  # best effort, once: a refused client must never make us wait
                conn.setblocking(False)
                conn.send(refusal(code, why))
            except OSError:
                pass
            conn.close()
            return None
        if not NODELAY_INHERITED and isinstance(addr, tuple):  # TCP, not a Unix socket
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transports, slots = self.transports, self.slots

        def closed(handler: Any) -> None:
            transports.discard(handler)
            slots.closed(addr)

        self.counters["connections_" + kind] += 1
        return closed

    def _transport(self, conn: socket.socket, label: str,
                   on_close: Callable[[Any], None]) -> StreamTransport:
        transport = StreamTransport(self.loop, conn, label, max_output=self.options.max_output,
                                    on_close=on_close)
        self.transports.add(transport)
        return transport

    def _accept_query(self, conn: socket.socket, addr: Any, label: str) -> None:
        transport = self._admit(conn, addr, label, query_refusal)
        if transport is not None:
            # Loopback TCP stays local for w (lab scripts use it); on the 0666 Unix socket only
            # the DSM's own user and root count.
            is_local = is_local_peer(addr) and (conn.family != socket.AF_UNIX or is_own_user(conn))
            transport.start(QueryConnection(
                transport, lambda query, source: self.answer_query(query, source, is_local)))

    def _accept_status(self, conn: socket.socket, addr: Any, label: str) -> None:
        # One-shot first; the general path takes over whatever is not a lab script's one status.
        on_close = self._take_slot(conn, addr, "status", query_refusal)
        if on_close is not None:
            oneshot = OneShotStatus(self._status_port, conn, addr, on_close)
            self.transports.add(oneshot)
            oneshot.start()

    def _status_transport(self, oneshot: OneShotStatus) -> StreamTransport:
        """The general path for a connection a OneShotStatus hands over (status_oneshot.py)."""
        self.transports.discard(oneshot)
        transport = self._transport(oneshot.sock, oneshot.label, oneshot.on_close)
        transport.start(StatusConnection(transport, self.store_status, self._complain,
                                         self.options.max_message, self.ports.get("http_port")))
        return transport

    def _accept_statserv(self, conn: socket.socket, addr: Any, label: str) -> None:
        transport = self._admit(conn, addr, label, statserv_refusal)
        if transport is None:
            return
        if conn.family != socket.AF_UNIX:
            # Watchers are quiet for days on purpose; keepalive finds the half-open ones instead.
            enable_keepalive(conn)
        transport.start(StatServConnection(
            transport, self.tree, self.clock, is_local=is_own_user(conn),
            on_shutdown=lambda: self.begin_shutdown(EXIT_OK, "SHUTDOWN from " + transport.label),
            save_dir=self.saves.save_dir, max_line=self.options.max_line,
            saver=self.saves.start, bad_input=self._complain,
            http_port=self.ports.get("http_port")))

    def _limit_connections_to_descriptors(self) -> None:
        """Lowers the connection limit to what RLIMIT_NOFILE allows (fair_shares); logs it once."""
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:
            in_use = 64  # no /proc: a generous guess for listeners, journal and log
        allowed, soft = descriptor_budget(self.options.max_connections, in_use)
        self.slots.set_limit(allowed)
        if allowed < self.options.max_connections:
            log.warning("the descriptor limit (RLIMIT_NOFILE %d, %d in use, %d kept for the "
                        "journal, snapshots and SAVE) allows %d connections, not %d "
                        "(--max-connections); further clients are refused with an error",
                        soft, in_use, DESCRIPTOR_RESERVE, allowed, self.options.max_connections)

    def _sweep_period(self) -> float:
        opts = self.options
        return max(0.05, min(opts.request_timeout / 4, opts.idle_timeout / 4,
                             opts.statserv_idle_timeout / 4, 1.0))

    def _idle_limit(self, transport: StreamTransport) -> Optional[float]:
        idle_exempt = getattr(transport.protocol, "idle_exempt", None)
        if idle_exempt is not None and idle_exempt():
            return None  # an open event stream, quiet on purpose (web_service.py)
        holds_nothing = getattr(transport.protocol, "holds_nothing", None)
        if holds_nothing is None:
            return self.options.idle_timeout
        return self.options.statserv_idle_timeout if holds_nothing() else None

    def _sweep(self) -> None:
        """Closes connections whose request ran past --request-timeout (with the protocol's error)
        and connections unused for their idle timeout (fair_shares.sweep)."""
        if self._shutdown_deadline is None:
            late, idle = sweep(list(self.transports), time.monotonic(),
                               self.options.request_timeout, self._idle_limit)
            for transport in late:
                self._complain(transport.label, "request not complete within %g s; closing"
                               % self.options.request_timeout)
                self.counters["connections_closed_request_timeout"] += 1
                transport.protocol.request_timed_out(self.options.request_timeout)
            for transport in idle:
                self.idle_closes.complain(self.clock(), transport.label,
                                          "idle for more than %.0f s; closing"
                                          % (self._idle_limit(transport) or 0))
                self.counters["connections_closed_idle"] += 1
                # Output it never took: a reset, or the FIN would wait behind it in the kernel.
                if getattr(transport, "output_size", 0):  # (a OneShotStatus has none)
                    transport.reset()
                else:
                    transport.close()
        self.loop.call_later(self._sweep_period(), self._sweep)

    # --- what the protocols ask of the store -------------------------------------------------
    def answer_query(self, query: Query, source: str, is_local: bool = True) -> bytes:
        """The reply (JSON + end byte) to one query."""
        kind = query.kind
        if kind == "m":
            self.counters["queries_m"] += 1
            return self._m_reply()
        if kind == "s":
            self.counters["queries_s"] += 1
            return self._s_reply()
        if kind == "w":
            self.counters["queries_w"] += 1
            if self.options.wipe_from == "local" and not is_local:
                self._complain(source, "w refused: --wipe-from local")
                return encode_reply({"error": "w (wipe) is only accepted from this host's own "
                                              "clients here (--wipe-from local)"})
            refusing = self.journal.refusing
            if refusing is not None:
                return encode_reply({"error": refusing})
            now = self.clock()
            wiped = self.store.wipe(now)
            self.state.wiped(now)
            log.info("wipe requested by %s: %s", source, wiped)
            return encode_reply({"wiped": wiped})
        if self.options.fault_injection and query.bad_token.startswith("!crash"):
            if query.bad_token.startswith("!crash-loop"):  # the DSM's own failure, in a timer
                self.loop.call_later(0, _raise_fault(query.bad_token))
            else:  # a failure handling this connection's input
                raise RuntimeError("fault injection: %s" % query.bad_token)
        self.counters["queries_bad"] += 1
        self._complain(source, "%s %r" % (query.foreign or "unknown query", query.bad_token))
        return error_reply(query.bad_token, query.foreign, self.ports)

    def store_status(self, report: StatusReport) -> Optional[str]:
        """Stores one status; None when stored, else why it was refused."""
        refusing = self.journal.refusing
        if refusing is not None:
            return refusing
        budget = self.options.max_store_bytes - self.tree.byte_size - self.store.drive_bytes
        refused_budget = self.store.refused_status_budget
        if not self.store.record_status(report.serial_number, report.entry_json, self.clock(),
                                        budget=budget):
            if self.store.refused_status_budget != refused_budget:
                return ("store full: statuses, drives and Status Server objects hold %d bytes "
                        "(limit %d, --max-store-bytes); not stored" % (
                            self.store.status_bytes + self.tree_bytes() + self.store.drive_bytes,
                            self.options.max_store_bytes))
            return "status table full: %d serial numbers" % self.store.max_status_serials
        self.counters["statuses"] += 1
        self.state.status(report.serial_number, report.entry_json)
        return None

    def tree_bytes(self) -> int:
        """What the Status Server tree is charged against --max-store-bytes (its entries, paths,
        values and comments); statuses and the tree share the one budget, as etcd's quota does."""
        return self.tree.byte_size

    def _on_datagram(self, data: bytes, sender: Any, ifindex: int) -> None:
        iface = self._iface_names.get(ifindex)
        if iface is None:
            # Another program's join on an interface we did not choose: not ours to hear.
            self.counters["announcements_rejected_other_interface"] += 1
            return
        now = self.clock()
        self.counters["announcements"] += 1
        serial = self.store.refresh_repeat(data, now, sender[0], iface)
        if serial is not None:
            self.state.heard(serial, now, sender[0], iface)
        else:
            parsed = parse_announcement(data)
            if isinstance(parsed, Rejected):
                self.counters["announcements_rejected_" + parsed.reason] += 1
                self._complain("multicast %s:%d on %s" % (sender[0], sender[1], iface),
                               parsed.detail)
                return
            serial, fields = parsed.serial_number, parsed.fields
            refused_budget = self.store.refused_drive_budget
            budget = (self.options.max_store_bytes - self.tree_bytes()
                      - self.store.status_bytes)
            if not self.store.record_announcement(serial, fields, data, now, sender[0],
                                                  iface, budget=budget):
                if self.store.refused_drive_budget != refused_budget:
                    # A datagram has no reply: counted, and logged at most as often as bad input.
                    self.counters["announcements_rejected_store_full"] += 1
                    self._complain("multicast %s:%d on %s" % (sender[0], sender[1], iface),
                                   "drive %s not stored: the store is full (--max-store-bytes "
                                   "%d)" % (serial[:64], self.options.max_store_bytes))
                else:
                    self.counters["announcements_rejected_table_full"] += 1
                return
            self.state.announced(serial, data, now, sender[0], iface)

    # --- time ---------------------------------------------------------------------------------
    def _schedule_deadline(self) -> None:
        """Keeps one loop timer at the earliest deadline of the tree and the drive store."""
        # Runs every loop pass (once per datagram at a few thousand a second): no list, no min().
        due, store_due = self.tree.next_deadline(), self.store.next_deadline()
        if due is None or (store_due is not None and store_due < due):
            due = store_due
        if due is None:
            return
        if self._deadline_timer is not None and not self._deadline_timer.cancelled:
            if self._deadline_at is not None and self._deadline_at <= due:
                return
            self._deadline_timer.cancel()
        self._deadline_at = due
        self._deadline_timer = self.loop.call_later(max(0.0, due - self.clock()),
                                                    self._run_deadlines)

    def _run_deadlines(self) -> None:
        self._deadline_timer = None
        self._deadline_at = None
        store_due = self.store.next_deadline()
        if self._announcements is not None and store_due is not None and store_due <= self.clock():
            self._announcements.read_waiting()  # heard before the deadline, read after: alive
        now = self.clock()
        self.counters["expirations"] += self.tree.expire_due(now)
        for serial in self.store.expire_due(now):
            log.info("drive %s went silent (not heard for %g s)", serial,
                     self.options.drive_lifetime)

    def _publish_facts(self) -> None:
        now = self.clock()
        self.publisher.facts({
            "version": __version__,
            "pid": os.getpid(),
            "start_time": self.started_at,
            "interfaces": ",".join("%s=%s" % (i.name, i.ipv4) for i in self.interfaces),
            "mcast": "%s:%d" % (self.options.mcast_group, self.ports["mcast_port"]),
            "drives_known": len(self.store.drives),
            "drives_alive": sum(1 for d in self.store.drives.values() if d.alive),
            "connections_open": len(self.transports),
            "tree_objects": len(self.tree),
            "journal": self.journal.status(),
            "counters": dict(self.counters, bad_inputs=self.bad_input.total,
                             log_lines_lost=lines_lost(),
                             handler_failures=self.loop.input_failures,
                             internal_failures=self.loop.internal_failures,
                             tree_publish_refused=self.publisher.refused,
                             acks_withdrawn=self.ack_guard.withdrawn,
                             saves_written=self.saves.written, saves_refused=self.saves.refused,
                             output_evictions=self.loop.output_evictions,
                             memory_errors=self.loop.memory_errors,
                             statuses_refused_store_full=self.store.refused_status_budget,
                             drives_refused_store_full=self.store.refused_drive_budget),
            "output_queued_bytes": self.loop.output_total,
            "store_bytes": self.store.status_bytes + self.tree_bytes() + self.store.drive_bytes,
        }, now)

    def _publish_facts_periodically(self) -> None:
        self._publish_facts()
        self.bad_input.flush(self.clock())
        self.idle_closes.flush(self.clock())
        self.loop.call_later(FACTS_PERIOD_S, self._publish_facts_periodically)

    def _complain(self, source: str, what: str) -> None:
        self.bad_input.complain(self.clock(), source, what)

    # --- the HTTP port: page, JSON API, metrics (web_service.py) ------------------------------
    def _start_http(self, port: int) -> None:
        """Opens --http-port, reads the page's files (once, now) and starts the loop-lag probe."""
        epoch = make_epoch(self.started_at)
        self.web_app = WebApp(WebData(self._http_drives_json, self._http_drive_json,
                                      self._http_status_json, self.metrics_facts,
                                      tuple(self.options.lab), self._store_versions, epoch),
                              load_static_files(), lambda: wall_of(self.clock()))
        self.event_streams = EventStreams(ChangeFeed(epoch), self._http_drives_json,
                                          self._http_status_json, self._feed_drive_row,
                                          self._feed_status_row,
                                          lambda: self.store.snapshot_rows())
        self.web_app.streams = self.event_streams
        self.store.touched, self.store.touched_status = set(), set()
        self.loop.add_before_sleep(self._publish_changes)
        self.loop.call_later(KEEPALIVE_S, self._keep_streams_alive)
        http_sock = open_tcp_listener(port, "HTTP")
        self._add_listener(http_sock, "http", self._accept_http)
        self.ports["http_port"] = http_sock.getsockname()[1]
        self._probe_loop_lag(time.monotonic())
        log.info("web page, JSON API and metrics on http://localhost:%d/", self.ports["http_port"])

    def _accept_http(self, conn: socket.socket, addr: Any, label: str) -> None:
        transport = self._admit(conn, addr, label, http_refusal)
        if transport is not None and self.web_app is not None:
            transport.start(WebConnection(transport, self.web_app, self._complain))

    def _store_versions(self) -> Tuple[int, int]:
        """What the JSON endpoints' ETags are made of: the drive table's and the statuses'
        change counters (drive_store.py)."""
        return self.store.drives_version, self.store.statuses_version

    def _publish_changes(self) -> None:
        """Before sleep, every pass: the serials this pass changed become one feed event."""
        store = self.store
        if store.touched or store.touched_status or store.wiped:
            drives, statuses, wiped = store.touched, store.touched_status, store.wiped
            store.touched, store.touched_status, store.wiped = set(), set(), False
            if self.event_streams is not None:
                self.event_streams.publish(drives or (), statuses or (), wiped)

    def _keep_streams_alive(self) -> None:
        if self.event_streams is not None:
            self.event_streams.keepalive()
        self.loop.call_later(KEEPALIVE_S, self._keep_streams_alive)

    def _feed_drive_row(self, serial: str) -> Optional[bytes]:
        """A drive's object exactly as in /api/drives, or None when it is not in the table."""
        if serial not in self.store.drives:
            return None
        return dumps_default(self.store.drive_view(serial)).encode("utf-8")

    def _feed_status_row(self, serial: str) -> Optional[bytes]:
        """A serial's whole status list as in /api/status, or None when it has none."""
        history = self.store.statuses.get(serial)
        if history is None:
            return None
        return b"[" + b", ".join(history) + b"]"

    def _probe_loop_lag(self, due: float) -> None:
        """Records how late this timer fired (the loop was busy that long), then re-arms it."""
        now = time.monotonic()
        self.loop_lag.record(now - due)
        next_due = now + LOOP_LAG_PERIOD_S
        self.loop.call_at(next_due, lambda: self._probe_loop_lag(next_due))

    def _m_reply(self) -> bytes:
        """The whole `m` reply (JSON + end byte), rebuilt only after the drives changed."""
        version = self.store.drives_version
        if self._cached_m[0] != version:
            self._cached_m = (version, self.store.multicast_json(END_BYTE))
        return self._cached_m[1]

    def _s_reply(self) -> bytes:
        """The whole `s` reply (JSON + end byte), rebuilt only after a status arrived."""
        version = self.store.statuses_version
        if self._cached_s[0] != version:
            self._cached_s = (version, self.store.status_json() + END_BYTE)
        return self._cached_s[1]

    def _http_drives_json(self) -> bytes:
        # The query port's cache without its end byte: a view, so HTTP clients share its bytes.
        return memoryview(self._m_reply())[:-1]

    def _http_status_json(self) -> bytes:
        return memoryview(self._s_reply())[:-1]

    def _http_drive_json(self, serial: str) -> Optional[bytes]:
        """One drive's `m` view plus its status history; None if the serial is unknown."""
        history = self.store.statuses.get(serial)
        if serial in self.store.drives:
            view = self.store.drive_view(serial)
        elif history is not None:
            view = {"serial_number": serial}  # statuses reported, drive never heard
        else:
            return None
        view["statuses"] = [json.loads(entry) for entry in history or ()]
        return json.dumps(view).encode("utf-8")

    def metrics_facts(self) -> Dict[str, Any]:
        """Everything /metrics shows, as plain data for metrics.render_metrics."""
        counters = self.counters
        streams = self.event_streams

        def by_prefix(prefix: str, known: Any = ()) -> Dict[str, int]:
            # Known label values are always present (as 0), so series do not appear from nowhere.
            found = dict.fromkeys(known, 0)
            found.update((key[len(prefix):], value) for key, value in counters.items()
                         if key.startswith(prefix))
            return found

        kinds = ("query", "status", "statserv", "http")
        accepted = {kind: count for kind, count in by_prefix("connections_", kinds).items()
                    if not kind.startswith(("refused_", "closed_"))}
        open_by_kind = dict.fromkeys(kinds, 0)
        open_by_kind.update(collections.Counter(t.label.split(" ", 1)[0]
                                                for t in self.transports))
        drives = [{"serial": drive.serial, "model": drive.model, "firmware": drive.firmware,
                   "last_seen": drive.last_seen_wall, "alive": drive.alive}
                  for drive in self.store.drives.values()]
        return {
            "version": __version__,
            "start_time": self.started_at,
            "drives": drives,
            "announcements": counters["announcements"],
            "announcements_rejected": by_prefix("announcements_rejected_",
                                                REJECT_REASONS + ("other_interface",
                                                                  "table_full", "store_full")),
            "statuses": counters["statuses"],
            "status_serials": len(self.store.statuses),
            "queries": by_prefix("queries_", ("m", "s", "w", "bad")),
            "connections_open": open_by_kind,
            "connections_accepted": accepted,
            "connections_refused": by_prefix("connections_refused_", ("not_allowed", "limit",
                                                                   "per_address")),
            "connections_closed_idle": counters["connections_closed_idle"],
            "http_requests": dict(self.web_app.requests) if self.web_app else {},
            "event_streams_open": len(streams.open) if streams is not None else 0,
            "event_stream_resyncs": streams.resyncs if streams is not None else 0,
            "change_feed_revision": streams.feed.rev if streams is not None else 0,
            "tree_objects": len(self.tree),
            "tree_monitors": self.tree.monitor_count,
            "expirations": counters["expirations"],
            "journal": self.journal.status(),
            "loop_lag": self.loop_lag,
            "bad_inputs": self.bad_input.total,
            "log_lines_lost": lines_lost(),
            "handler_failures": self.loop.input_failures,
            "internal_failures": self.loop.internal_failures,
            "multicast_receive_drops": (receive_drops(self._announcements.sock)
                                        if self._announcements is not None
                                        and not self._announcements.closed else None),
        }


def _raise_fault(token: str) -> Callable[[], None]:
    def fault() -> None:
        raise RuntimeError("fault injection: %s" % token)
    return fault


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the DSM in the foreground; returns the exit code."""
    options = parse_options(argv, prog="DriveStateMonitor.py")
    if options.log_file:  # the run dir's rules for the log file's dir (local_dirs.py)
        problem = unsafe_dir(os.path.dirname(os.path.abspath(options.log_file)), "log dir",
                             "--log-file FILE in another")
        if problem is not None:
            print("DriveStateMonitor: %s" % problem, file=sys.stderr)
            return EXIT_SOCKET_CREATE
    try:
        handler = configure_logging(options.log_file)
    except OSError as exc:
        print("DriveStateMonitor: cannot open the log file %s: %s" % (options.log_file, exc),
              file=sys.stderr)
        return EXIT_SOCKET_CREATE
    apply_memory_caps(options, getattr(options, "explicit", set()))  # before any budget is used
    daemon = DriveStateMonitor(options)
    daemon.log_handler = handler
    try:
        try:
            if not daemon.start():
                pid = lock_holder_pid(options.run_dir)
                message = "a DSM is already running%s (run dir %s); sharing it" % (
                    " with pid %d" % pid if pid else "", options.run_dir)
                log.info(message)
                if options.log_file:
                    print(message)
                return EXIT_OK
        except StartupError as exc:
            log.error("%s", exc)
            if options.log_file and sys.stderr.isatty():
                print("DriveStateMonitor: %s" % exc, file=sys.stderr)
            return exc.exit_code
        code = daemon.run()
        log.info("stopped, exit code %d", code)
        return code
    except KeyboardInterrupt:  # before the signal handlers are in place
        return EXIT_INTERRUPT
    finally:
        daemon.close()
