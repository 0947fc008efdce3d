"""Chaos: many clients doing valid and invalid things on every port at once, plus a flood of bogus
and random-serial announcements. Afterwards the DSM answers everywhere, lost nothing it
acknowledged, kept its bounds and logged no traceback.

Bounded: the chaos lasts CHAOS_S seconds, every worker loop has an iteration cap as well, every
socket has a timeout, and every thread is joined with a deadline.
"""
from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Tuple


from dsm_harness import END, LOOPBACK, announcement, recv_until_end, send_announcement, wait_for


CHAOS_S = 8.0
MAX_DRIVES = 1000
RSS_LIMIT_KB = 300 * 1024
SOCKET_TIMEOUT_S = 3.0
STATSERV_LINES = [
    "PWD", "LS /", "LS /drives", "LS /dsm/counters", "MONITOR /drives", "MONITOR /dsm/counters",
    "MONITOR /chaos", "UPDATES", "TRACE", "UNTRACE", "HELP", "CD ..", "CD /nowhere",
    "GET /dsm/pid",
    "STAT /dsm", "TOUCHDIR /chaos/d{n}", "RMDIR /chaos/d{n}",
    "TOUCH /chaos/t{n} TYPE=int LIFETIME=1",
    "PUT /chaos/t{n} {n}", "PUT /chaos/t{n} not-an-int", "REMOVE /chaos/t{n}",
    "TOUCH /chaos/ae{n} AUTOEXPIRE=1", "GET /chaos/t{n}", "BOGUS command", "PUT /x 'unterminated",
    "GET %ZZ", "TOUCH / TYPE=nonsense", "GET " + "x" * 9000, "REGISTER 1 chaos", "SAVE ../../etc/x",
]


def lingering_reset(sock: socket.socket) -> None:
    """Makes close() send a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def read_some(sock: socket.socket, timeout: float, limit: int = 1 << 20) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(limit)
    except (socket.timeout, OSError):
        return b""


def random_bytes(rng: random.Random, size: int) -> bytes:
    """Random bytes without `w`/`W`: on the query port either one is a valid wipe, which would
    (rightly) forget the statuses this test checks."""
    return bytes(rng.getrandbits(8) for _ in range(size)).translate(None, b"wW")


class Chaos:
    """The shared state of one chaos run: its deadline, what was acknowledged, what went wrong."""

    def __init__(self, dsm, seed: int) -> None:
        self.dsm = dsm
        self.seed = seed
        self.end = time.monotonic() + CHAOS_S
        self.lock = threading.Lock()
        self.acked: Dict[str, List[Dict[str, Any]]] = {}
        self.good_failures: List[str] = []  # well-behaved clients that were not served
        self.counts: Dict[str, int] = {}
        self.puts: Dict[str, int] = {}

    def running(self) -> bool:
        return time.monotonic() < self.end

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, what: str) -> None:
        with self.lock:
            self.good_failures.append(what)

    def open(self, target: Tuple[str, Any]) -> socket.socket:
        kind, where = target
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(SOCKET_TIMEOUT_S)
            sock.connect(where)
            return sock
        return socket.create_connection((LOOPBACK, where), timeout=SOCKET_TIMEOUT_S)

    def targets(self) -> List[Tuple[str, Any]]:
        dsm = self.dsm
        return [("tcp", dsm.query_port), ("tcp", dsm.status_port), ("tcp", dsm.statserv_port),
                ("unix", dsm.unix_socket), ("unix", dsm.statserv_socket)]


# --- well-behaved clients -----------------------------------------------------------------------
def good_statuses(chaos: Chaos, worker: int) -> None:
    """Script-style statuses (one connection each, sometimes several sent together on one); each
    ack is recorded, and a status that is not acknowledged is a failure."""
    rng = random.Random(chaos.seed * 100 + worker)
    serial = "GOOD%d" % worker
    # At most 3000 statuses each: the `s` reply stays well below --max-output.
    for n in range(1000):
        if not chaos.running():
            return
        batch = rng.choice((1, 1, 1, 3))
        entries = [{"time_stamp": "%d.%d" % (n, k), "status": "%05d-%d" % (n, k)}
                   for k in range(batch)]
        try:
            with socket.create_connection((LOOPBACK, chaos.dsm.status_port), timeout=10) as sock:
                # The DSM closes once all it received is answered: several go in one write.
                messages = [dict(serial_number=serial, **entry) for entry in entries]
                sock.sendall(b"".join(str(message).encode() if rng.random() < 0.5
                                      else json.dumps(message).encode() + b"\n"
                                      for message in messages))
                if recv_until_end(sock, timeout=10, count=batch) != END * batch:
                    chaos.fail("statuses %r not acknowledged" % (entries,))
                    return
                with chaos.lock:
                    chaos.acked.setdefault(serial, []).extend(entries)
        except OSError as exc:
            chaos.fail("status client %d: %s" % (worker, exc))
            return


def good_queries(chaos: Chaos) -> None:
    """m or s on TCP and the Unix socket; every reply must be whole JSON. (One query per
    connection: two pipelined replies above --max-output are refused, see test_limits_access.)"""
    dsm = chaos.dsm
    for n in range(5000):
        if not chaos.running():
            return
        try:
            reply = dsm.query(b"ms"[n % 2:n % 2 + 1], unix=n % 4 < 2)
            if not reply.endswith(END) or reply.count(END) != 1:
                chaos.fail("query reply not one whole reply: %r" % reply[-100:])
                return
            json.loads(reply[:-1])
        except (OSError, ValueError) as exc:
            chaos.fail("query client: %s" % exc)
            return


def good_statserv(chaos: Chaos) -> None:
    """Increments /good/counter with every answer read."""
    try:
        with chaos.dsm.connect_statserv(unix=False) as sock:
            sock.settimeout(10)
            reader = sock.makefile("rb")
            sock.sendall(b"TOUCH /good/counter TYPE=int\n")
            if reader.readline() != b".\n":
                chaos.fail("TOUCH /good/counter refused")
                return
            for n in range(100_000):
                if not chaos.running():
                    return
                sock.sendall(b"PUT /good/counter %d\n" % n)
                answer = reader.readline()
                if answer != b".\n":
                    chaos.fail("PUT %d answered %r" % (n, answer))
                    return
                chaos.puts["/good/counter"] = n
    except OSError as exc:
        chaos.fail("statserv client: %s" % exc)


# --- misbehaving clients ------------------------------------------------------------------------
def garbage_client(chaos: Chaos, worker: int) -> None:
    """Random bytes, half messages, resets, connect-and-close, on every port."""
    rng = random.Random(chaos.seed * 1000 + worker)
    targets = chaos.targets()
    for _ in range(3000):
        if not chaos.running():
            return
        target = rng.choice(targets)
        try:
            sock = chaos.open(target)
        except OSError:
            chaos.count("connect failed")
            continue
        try:
            action = rng.randrange(6)
            if action == 0:
                sock.sendall(random_bytes(rng, rng.randrange(1, 2048)))
            elif action == 1:
                sock.sendall(b"{'serial_number': 'HALF', 'time_stamp': 1, 'sta")
            elif action == 2:
                sock.sendall(b"{" * rng.randrange(1, 100) + b"[(" * 40)
            elif action == 3:
                sock.sendall(b"m m m m s s s s " * rng.randrange(1, 20))
            elif action == 4:
                sock.sendall(b'{"serial_number": "GOOD0", "status": "missing time_stamp"}\n')
            if rng.random() < 0.3:
                read_some(sock, 0.05)
            if rng.random() < 0.5:
                lingering_reset(sock)
        except OSError:
            chaos.count("garbage send failed")
        finally:
            sock.close()
        chaos.count("garbage")


def slow_reader(chaos: Chaos, worker: int) -> None:
    """Pipelines many queries and reads a trickle, then goes away (sometimes with a reset)."""
    rng = random.Random(chaos.seed * 10_000 + worker)
    for _ in range(200):
        if not chaos.running():
            return
        try:
            sock = chaos.open(("tcp", chaos.dsm.query_port) if rng.random() < 0.7
                              else ("unix", chaos.dsm.unix_socket))
        except OSError:
            continue
        try:
            sock.sendall(b"m s " * rng.randrange(5, 200))
            for _ in range(rng.randrange(1, 30)):
                if not chaos.running() or not read_some(sock, 0.2, 1024):
                    break
                time.sleep(0.02)  # a slow reader: pacing, not a wait for a result
            if rng.random() < 0.5:
                lingering_reset(sock)
        except OSError:
            pass
        finally:
            sock.close()
        chaos.count("slow reader")


def statserv_chaos(chaos: Chaos, worker: int) -> None:
    """Random Status Server lines (valid, invalid, too long), MONITOR/TRACE, sometimes unread."""
    rng = random.Random(chaos.seed * 100_000 + worker)
    for _ in range(500):
        if not chaos.running():
            return
        try:
            sock = chaos.open(("tcp", chaos.dsm.statserv_port) if rng.random() < 0.6
                              else ("unix", chaos.dsm.statserv_socket))
        except OSError:
            continue
        try:
            lines = [rng.choice(STATSERV_LINES).format(n=rng.randrange(50))
                     for _ in range(rng.randrange(1, 40))]
            sock.sendall("".join(line + "\n" for line in lines).encode())
            if rng.random() < 0.6:
                for _ in range(20):
                    if not read_some(sock, 0.05):
                        break
            if rng.random() < 0.3:
                sock.sendall(b"GET /dsm/pid")  # half a line, then gone
            if rng.random() < 0.4:
                lingering_reset(sock)
        except OSError:
            pass
        finally:
            sock.close()
        chaos.count("statserv chaos")


def announcement_flood(chaos: Chaos, total: int = 4000) -> None:
    """Bogus datagrams and announcements with random serial numbers, `total` at most."""
    rng = random.Random(chaos.seed)
    port = chaos.dsm.mcast_port
    bogus = [b"", b"\x00\xff garbage", b"[1, 2, 3]", b'{"no_serial": true}', b"null",
             b'{"serial_number": 12345678901234567890123}', b'{"serial_number": ""}',
             b"{" * 5000, json.dumps({"serial_number": "BIG", "x": "y" * 60000}).encode()]
    for n in range(total):
        if not chaos.running():
            return
        if rng.random() < 0.3:
            payload = rng.choice(bogus)
        else:
            payload = announcement("RND%08X" % rng.getrandbits(32), firmware_version=str(n))
        try:
            send_announcement(payload, port)
        except OSError:
            pass
        if n % 100 == 99:
            time.sleep(0.01)  # pacing: a flood, but not one loopback drops wholesale
        chaos.count("datagrams")


# --- the test -----------------------------------------------------------------------------------
def vm_rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def run_threads(workers: List[Callable[[], None]], join_s: float) -> None:
    threads = [threading.Thread(target=w, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + join_s
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    stuck = [t for t in threads if t.is_alive()]
    assert not stuck, "%d chaos threads did not finish in time" % len(stuck)


def test_chaos_on_every_port_loses_nothing_acknowledged_and_keeps_the_daemon_healthy(dsm_factory):
    dsm = dsm_factory.start("--max-drives", str(MAX_DRIVES), "--max-output", "1000000",
                            "--history", "100000", "--fsync", "everysec")
    chaos = Chaos(dsm, seed=int(os.environ.get("DSM_CHAOS_SEED", "1234")))
    workers: List[Callable[[], None]] = []
    workers += [lambda w=w: good_statuses(chaos, w) for w in range(2)]
    workers += [lambda: good_queries(chaos), lambda: good_statserv(chaos)]
    workers += [lambda w=w: garbage_client(chaos, w) for w in range(3)]
    workers += [lambda w=w: slow_reader(chaos, w) for w in range(2)]
    workers += [lambda w=w: statserv_chaos(chaos, w) for w in range(3)]
    workers += [lambda: announcement_flood(chaos)]
    run_threads(workers, CHAOS_S + 20)

    assert chaos.good_failures == [], chaos.good_failures[:5]
    assert sum(len(v) for v in chaos.acked.values()) > 20, chaos.acked.keys()
    assert chaos.counts.get("garbage", 0) > 50, chaos.counts
    assert dsm.proc.poll() is None, dsm.log_text()[-3000:]

    # Every port answers.
    started = time.monotonic()
    s = dsm.query_json("s")
    assert dsm.query(b"s", unix=True).endswith(END)
    assert dsm.send_status(b"{'serial_number': 'AFTER', 'time_stamp': 1, 'status': 'ok'}") == END
    for unix in (False, True):
        with dsm.connect_statserv(unix=unix) as sock:
            sock.sendall(b"GET /dsm/pid\n")
            assert recv_until_end_line(sock) == '. "%d"' % dsm.pid
    assert time.monotonic() - started < 5

    # Nothing acknowledged was lost, in order.
    for serial, entries in chaos.acked.items():
        assert s[serial] == entries, serial
    with dsm.connect_statserv() as sock:
        sock.sendall(b"GET /good/counter\n")
        assert recv_until_end_line(sock) == '. "%d"' % chaos.puts["/good/counter"]

    # The bounds held.
    drives = dsm.query_json("m")
    assert 0 < len(drives) <= MAX_DRIVES
    assert vm_rss_kb(dsm.pid) < RSS_LIMIT_KB
    wait_for(lambda: handler_failures(dsm) is not None, 5, "the counters to be published")
    assert handler_failures(dsm) == 0
    log = dsm.log_text()
    assert "Traceback" not in log
    assert "kill switch" not in log


def recv_until_end_line(sock: socket.socket, timeout: float = 5.0) -> str:
    """The next response line that is not a monitor notice or trace line."""
    sock.settimeout(timeout)
    reader = sock.makefile("rb")
    for _ in range(1000):
        line = reader.readline()
        assert line, "connection closed"
        if line[:1] not in (b"@", b"#"):
            return line.decode().rstrip("\n")
    raise AssertionError("no response line among 1000")


def handler_failures(dsm) -> Any:
    with dsm.connect_statserv(unix=True) as sock:
        sock.sendall(b"GET /dsm/counters/handler_failures\n")
        answer = recv_until_end_line(sock)
    if not answer.startswith('. "'):
        return None
    return int(answer[3:-1])
