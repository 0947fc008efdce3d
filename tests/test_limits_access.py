"""Every limit refuses with a clear error and nothing hangs; --allow, --wipe-from and SHUTDOWN
decide who may do what. Real DSMs on free loopback ports, except where a non-local peer is needed:
that is tested at the unit level (no non-loopback client is available here).
"""
from __future__ import annotations

import json
import random
import socket
import time
from typing import Any, List


from DriveStateMonitor.daemon import DriveStateMonitor
from DriveStateMonitor.options import parse_options
from DriveStateMonitor.query_protocol import Query
from DriveStateMonitor.statserv_protocol import StatServSession
from DriveStateMonitor.statserv_tree import Tree
from dsm_harness import END, LOOPBACK, announcement, recv_until_end, wait_for


PROMPT_S = 2.0  # an answer from an otherwise idle loopback DSM, generous for a loaded CI host


# --- helpers --------------------------------------------------------------------------------------
def read_line(sock: socket.socket, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no line in time; have %r" % data
        sock.settimeout(remaining)
        chunk = sock.recv(1)
        assert chunk, "closed; have %r" % data
        data += chunk
    return data.decode("utf-8").rstrip("\r\n")


def ask(sock: socket.socket, line: str) -> str:
    """One Status Server request with a one-line answer."""
    sock.sendall(line.encode("utf-8") + b"\n")
    return read_line(sock)


def read_until_closed(sock: socket.socket, timeout: float = 5.0, limit: int = 1 << 26) -> bytes:
    """What the peer sends before it closes (a reset counts as closed); fails at the deadline."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < limit:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the DSM did not close the connection; got %r" % data[-200:]
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError("more than %d bytes without a close" % limit)


def json_error(reply: bytes) -> str:
    assert reply.endswith(END) and reply.count(END) == 1, reply[-300:]
    value = json.loads(reply[:-1])
    assert isinstance(value, dict) and value.get("error"), value
    return value["error"]


def status(serial: str, stamp: Any, text: str) -> bytes:
    return json.dumps({"serial_number": serial, "time_stamp": stamp, "status": text}).encode()


def connect(port: int, source: str = "") -> socket.socket:
    """A TCP connection to `port`, from the loopback address `source` if given."""
    return socket.create_connection((LOOPBACK, port), timeout=10,
                                    source_address=(source, 0) if source else None)


def connect_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def counter(dsm, name: str) -> int:
    """/dsm/counters/<name> (0 while absent; republished once a second)."""
    with dsm.connect_statserv(unix=True) as sock:
        answer = ask(sock, "GET /dsm/counters/" + name)
    if answer.startswith("! NONEXISTENT"):
        return 0
    assert answer.startswith('. "'), answer
    return int(answer[3:-1])


def admitted(dsm) -> bool:
    """True when a new query connection is served (not refused)."""
    try:
        return b'"MAXC"' in dsm.query(b"s")
    except ConnectionResetError:  # refused while it had sent its query
        return False


def query_on_open_connection(sock: socket.socket, letter: bytes = b"s") -> Any:
    sock.sendall(letter)
    reply = recv_until_end(sock, timeout=5)
    assert reply.endswith(END), reply[-200:]
    return json.loads(reply[:-1])


def announce_distinct(dsm, serials: List[str], rounds: int = 5) -> None:
    """Announces every serial until `m` shows them all (bounded re-sends of lost datagrams)."""
    for _ in range(rounds):
        present = dsm.query_json("m")
        missing = [s for s in serials if s not in present]
        if not missing:
            return
        for index, serial in enumerate(missing):
            dsm.announce(announcement(serial))
            if index % 50 == 49:
                time.sleep(0.01)  # let the DSM drain its receive buffer (not a wait for a result)
        try:
            wait_for(lambda: all(s in dsm.query_json("m") for s in serials), 3, "drives in m")
            return
        except AssertionError:
            continue
    raise AssertionError("drives missing from m after %d rounds" % rounds)


# --- --max-connections ----------------------------------------------------------------------------
def test_sixth_connection_on_each_port_gets_a_clear_error_and_is_closed_first_five_still_work(
        dsm_factory):
    dsm = dsm_factory.start("--max-connections", "5")
    assert dsm.send_status(status("MAXC", 0, "ok")) == END  # (that connection closes after its ack)
    # One address holds at most half of the limit (fair_shares.peer_share): the five come from
    # three; the watcher, last, from this host's own 127.0.0.1 (the reserve's last slot).
    queries = [connect(dsm.query_port, "127.0.0.2"), connect(dsm.query_port, "127.0.0.2")]
    statuses = [connect(dsm.status_port, "127.0.0.3"), connect(dsm.status_port, "127.0.0.3")]
    watcher = dsm.connect_statserv()
    five = queries + statuses + [watcher]
    again = status("MAXC", 9, "again")
    try:
        # Each of the five is admitted (a round trip proves it for the watcher; query and status
        # connections close after their replies, so the DSM's own count of open connections
        # proves those four: the status ones hold half a message each).
        for sock in statuses:
            sock.sendall(again[:10])
        assert ask(watcher, "PWD") == '. /'
        wait_for(lambda: ask(watcher, "GET /dsm/connections_open") == '. "5"', 5,
                 "the five connections to be open")

        for port in (dsm.query_port, dsm.status_port):
            with connect(port, "127.0.0.4") as sixth:
                error = json_error(read_until_closed(sixth))
                assert "too many connections" in error and "5" in error
        with dsm.connect_statserv() as sixth:
            refused = read_until_closed(sixth).decode()
            assert refused.startswith("! LIMIT ") and refused.endswith("\n"), refused
        with connect_unix(dsm.unix_socket) as sixth:
            assert "too many" in json_error(read_until_closed(sixth))

        started = time.monotonic()
        for sock in queries:
            assert set(query_on_open_connection(sock)) == {"MAXC"}
        statuses[0].sendall(again[10:])
        assert recv_until_end(statuses[0]) == END
        assert ask(watcher, "GET /dsm/pid") == '. "%d"' % dsm.pid
        assert time.monotonic() - started < PROMPT_S * 3
    finally:
        for sock in five:
            sock.close()
    # With room again, a new connection is admitted.
    wait_for(lambda: admitted(dsm), 5, "a connection to be admitted again")
    wait_for(lambda: counter(dsm, "connections_refused_limit") >= 4, 5,
             "connections_refused_limit to count the refusals")


# --- message, line and value sizes ------------------------------------------------------------
def test_status_over_max_message_gets_an_error_and_the_next_one_is_stored(dsm_factory):
    dsm = dsm_factory.start("--max-message", "1000")
    with connect(dsm.status_port) as sock:
        # sent together: the refused one and the next are both answered before the DSM closes
        sock.sendall(status("BIG", 1, "x" * 2000) + status("SMALL", 2, "y" * 800))
        reply = recv_until_end(sock, count=2)
        assert reply.endswith(END + END), reply
        error = json_error(reply[:-1])
        assert "1000" in error or "large" in error, error
    assert dsm.query_json("s") == {"SMALL": [{"time_stamp": 2, "status": "y" * 800}]}


def test_statserv_line_over_max_line_gets_toolong_and_the_connection_stays_usable(dsm_factory):
    dsm = dsm_factory.start("--max-line", "100")
    with dsm.connect_statserv() as sock:
        assert ask(sock, "TOUCH /lab/" + "n" * 200).startswith("! TOOLONG")
        assert ask(sock, "PWD") == '. /'
        assert ask(sock, "TOUCH /lab/short") == "."
        assert ask(sock, "GET /lab/short") == ". UNDEFINED"


def test_statserv_value_over_max_value_gets_toolong(dsm_factory):
    dsm = dsm_factory.start("--max-value", "50")
    with dsm.connect_statserv() as sock:
        assert ask(sock, "TOUCH /lab/v") == "."
        assert ask(sock, "PUT /lab/v " + "x" * 60).startswith("! TOOLONG")
        assert ask(sock, "TOUCH /lab/w COMMENT=" + "c" * 60).startswith("! TOOLONG")
        assert ask(sock, "PUT /lab/v " + "x" * 50) == "."
        assert ask(sock, "GET /lab/v") == '. "%s"' % ("x" * 50)


# --- --max-output ------------------------------------------------------------------------------
def test_client_pipelining_m_and_never_reading_stops_being_read_then_idles_out(dsm_factory):
    # Back-pressure: replies wait below the cap instead of piling up; the silent client holds
    # at most about one reply and is closed by the idle timeout, while others are answered.
    dsm = dsm_factory.start("--max-output", "200000", "--idle-timeout", "1")
    announce_distinct(dsm, ["OUT%03d" % n for n in range(300)])
    reply_size = len(dsm.query(b"m"))
    assert reply_size > 100_000

    flooder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.settimeout(10)
    flooder.connect((LOOPBACK, dsm.query_port))
    try:
        flooder.sendall(b"m " * 2000)
        started = time.monotonic()
        other = dsm.query(b"s")
        assert other == b"{}" + END
        assert time.monotonic() - started < PROMPT_S
        wait_for(lambda: "idle for" in dsm.log_text(), 10, "the idle client to be closed")
        received = read_until_closed(flooder, timeout=5)
        assert received.count(END) < 2000
        assert len(received) < 2000 * reply_size
    finally:
        flooder.close()
    assert dsm.proc.poll() is None
    assert dsm.query_json("s") == {}


def test_tracer_that_never_reads_is_disconnected_past_max_output(dsm_factory):
    # TRACE output is not produced on request, so back-pressure cannot hold it: the cap does.
    dsm = dsm_factory.start("--max-output", "100000")
    tracer = dsm.connect_statserv()
    tracer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tracer.sendall(b"TRACE\n")
    assert tracer.recv(100).startswith(b".")
    try:
        with dsm.connect_statserv() as busy:
            line = b"PUT /nowhere/" + b"x" * 200 + b" 1\n"
            for _ in range(40):  # bounded: 40 x 100 lines x ~230 bytes of trace >> the cap
                busy.sendall(line * 100)
                if "client is not reading" in dsm.log_text():
                    break
            wait_for(lambda: "client is not reading" in dsm.log_text(), 10,
                     "the DSM to drop the tracer that does not read")
            busy.sendall(b"PWD\n")
            data = b""
            while not data.endswith(b". /\n"):
                chunk = busy.recv(1 << 20)
                assert chunk, "the busy client was closed"
                data += chunk
    finally:
        tracer.close()
    assert dsm.proc.poll() is None


def test_client_that_pipelines_two_m_and_reads_gets_both_under_max_output(dsm_factory):
    dsm = dsm_factory.start("--max-output", "200000")
    announce_distinct(dsm, ["TWO%03d" % n for n in range(300)])
    with dsm.connect_query() as sock:
        sock.sendall(b"m m")
        data = recv_until_end(sock, timeout=5, count=2)
    assert data.count(END) == 2


# --- --idle-timeout ------------------------------------------------------------------------------
def test_idle_query_and_status_connections_are_closed_but_statserv_stays_open(dsm_factory):
    dsm = dsm_factory.start("--idle-timeout", "0.5")
    watcher = dsm.connect_statserv()
    try:
        assert ask(watcher, "PWD") == '. /'
        started = time.monotonic()
        silent_query = dsm.connect_query()
        silent_status = connect(dsm.status_port)
        with silent_query, silent_status:
            assert read_until_closed(silent_query, timeout=5) == b""
            assert read_until_closed(silent_status, timeout=5) == b""
            assert time.monotonic() - started < 4
        # The watcher has been silent longer than both, and is still served.
        assert ask(watcher, "PWD") == '. /'
        wait_for(lambda: counter(dsm, "connections_closed_idle") >= 2, 5,
                 "connections_closed_idle to count both")
    finally:
        watcher.close()


def test_statserv_connection_in_use_is_not_closed_as_idle(dsm_factory):
    # Completed requests are what keeps a connection from idling out (issue 10: bytes alone do
    # not; see test_fair_shares' whitespace drip). Query and status connections close once
    # answered, so the long-lived kind is the Status Server's, with a held object.
    dsm = dsm_factory.start("--statserv-idle-timeout", "0.5")
    with dsm.connect_statserv() as sock:
        assert ask(sock, "TOUCH /lab/kept AUTOEXPIRE=1").startswith(".")
        deadline = time.monotonic() + 1.5
        for _ in range(100):  # 1.5 s of requests, each well inside the timeout
            assert ask(sock, "PWD") == ". /"
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)  # pacing between requests, not a wait for a result
        assert ask(sock, "GET /lab/kept") == ". UNDEFINED"


# --- --max-drives, --max-objects ----------------------------------------------------------------
def test_max_drives_keeps_at_most_that_many_and_counts_the_refused(dsm_factory):
    dsm = dsm_factory.start("--max-drives", "50")
    rng = random.Random(50)
    serials = ["R%08X" % rng.getrandbits(32) for _ in range(200)]
    for index, serial in enumerate(serials):
        dsm.announce(announcement(serial))
        if index % 50 == 49:
            time.sleep(0.01)  # pacing so loopback does not drop datagrams; not a result wait
    wait_for(lambda: len(dsm.query_json("m")) == 50, 5, "50 drives in m")
    wait_for(lambda: counter(dsm, "announcements_rejected_table_full") > 0, 5,
             "the refused announcements to be counted")
    assert counter(dsm, "announcements_rejected_table_full") <= 150
    assert len(dsm.query_json("m")) == 50
    assert set(dsm.query_json("m")) <= set(serials)


def test_max_drives_also_bounds_status_serial_numbers(dsm_factory):
    dsm = dsm_factory.start("--max-drives", "3")
    for n in range(3):
        assert dsm.send_status(status("S%d" % n, n, "ok")) == END
    error = json_error(dsm.send_status(status("S3", 3, "refused")))
    assert "full" in error
    assert dsm.send_status(status("S0", 4, "known serial")) == END
    assert set(dsm.query_json("s")) == {"S0", "S1", "S2"}


def test_max_objects_refuses_touch_with_limit_and_the_connection_stays_usable(dsm_factory):
    dsm = dsm_factory.start("--max-objects", "150")
    with dsm.connect_statserv() as sock:
        answers = []
        for n in range(300):
            answers.append(ask(sock, "TOUCH /lab/o%03d" % n))
            if answers[-1].startswith("!"):
                break
        assert answers[-1].startswith("! LIMIT"), answers[-3:]
        assert all(a == "." for a in answers[:-1])
        assert 50 < len(answers) <= 150
        assert ask(sock, "GET /lab/o000") == ". UNDEFINED"
        assert ask(sock, "PUT /lab/o000 still-writable") == "."
        assert ask(sock, "GET /lab/o000") == '. "still-writable"'


# --- --allow --------------------------------------------------------------------------------------
def test_allow_refuses_a_loopback_client_on_every_tcp_port_but_unix_sockets_work(dsm_factory):
    dsm = dsm_factory.start("--allow", "10.0.0.0/8")
    for port in (dsm.query_port, dsm.status_port):
        with connect(port) as sock:
            error = json_error(read_until_closed(sock))
            assert "not allowed" in error and "10.0.0.0/8" in error, error
    with dsm.connect_statserv() as sock:
        refused = read_until_closed(sock).decode()
        assert refused.startswith("! DENIED ") and "10.0.0.0/8" in refused, refused
    assert dsm.query(b"s", unix=True) == b"{}" + END
    with dsm.connect_statserv(unix=True) as sock:
        assert ask(sock, "PWD") == '. /'
    wait_for(lambda: counter(dsm, "connections_refused_not_allowed") >= 3, 5,
             "the refusals to be counted")


def test_allow_loopback_network_lets_the_loopback_client_in(dsm_factory):
    dsm = dsm_factory.start("--allow", "10.0.0.0/8,127.0.0.0/8")
    assert dsm.send_status(status("ALLOWED", 1, "ok")) == END
    assert dsm.query_json("s") == {"ALLOWED": [{"time_stamp": 1, "status": "ok"}]}
    with dsm.connect_statserv() as sock:
        assert ask(sock, "PWD") == '. /'


# --- --wipe-from, SHUTDOWN ------------------------------------------------------------------------
def unstarted_daemon(*argv: str) -> DriveStateMonitor:
    return DriveStateMonitor(parse_options(["--query-port", "0", "--run-dir", "/nonexistent-dsm",
                                            *argv]))


def test_wipe_from_local_refuses_w_from_a_non_local_client_and_keeps_the_data():
    daemon = unstarted_daemon("--wipe-from", "local")
    try:
        daemon.store.record_status("KEEP", b'{"time_stamp": 1, "status": "x"}')
        reply = daemon.answer_query(Query("w"), "query 10.1.2.3:5", is_local=False)
        assert "--wipe-from local" in json_error(reply)
        assert "KEEP" in daemon.store.statuses
        reply = daemon.answer_query(Query("w"), "query unix", is_local=True)
        assert json.loads(reply[:-1])["wiped"]["statuses"] == 1
        assert daemon.store.statuses == {}
    finally:
        daemon.loop.close()


def test_wipe_from_any_accepts_w_from_a_non_local_client():
    daemon = unstarted_daemon()
    try:
        daemon.store.record_status("GONE", b'{"time_stamp": 1, "status": "x"}')
        reply = daemon.answer_query(Query("w"), "query 10.1.2.3:5", is_local=False)
        assert json.loads(reply[:-1])["wiped"]["statuses"] == 1
    finally:
        daemon.loop.close()


def test_wipe_from_local_accepts_w_over_the_unix_socket_and_loopback(dsm_factory):
    dsm = dsm_factory.start("--wipe-from", "local")
    assert dsm.send_status(status("W1", 1, "ok")) == END
    assert json.loads(dsm.query(b"w", unix=True)[:-1])["wiped"]["statuses"] == 1
    assert dsm.send_status(status("W2", 1, "ok")) == END
    assert json.loads(dsm.query(b"w")[:-1])["wiped"]["statuses"] == 1  # loopback is local
    assert dsm.query_json("s") == {}


def test_shutdown_from_the_own_user_on_the_unix_socket_stops_the_daemon_with_exit_0(dsm_factory):
    dsm = dsm_factory.start()
    with dsm.connect_statserv(unix=True) as sock:
        sock.sendall(b"SHUTDOWN\n")
        assert dsm.wait_exit(10) == 0


def test_shutdown_over_loopback_tcp_is_denied_since_no_user_can_be_tied_to_it(dsm_factory):
    dsm = dsm_factory.start()
    with dsm.connect_statserv() as sock:
        assert ask(sock, "SHUTDOWN").startswith("! DENIED ")
        assert ask(sock, "PWD") == ". /"
    assert dsm.proc.poll() is None


def test_shutdown_from_a_non_local_client_is_denied():
    shutdowns: List[int] = []
    session = StatServSession(Tree(), lambda: 1000.0, is_local=False,
                              on_shutdown=lambda: shutdowns.append(1))
    session.receive_data(b"SHUTDOWN\n")
    assert session.data_to_send().decode().startswith("! DENIED ")
    assert shutdowns == [] and not session.closing
    session.receive_data(b"PWD\n")
    assert session.data_to_send() == b'. /\n'
