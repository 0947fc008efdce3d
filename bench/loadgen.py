#!/usr/bin/env python3
"""Load generator for bench/run.py (standard library only).

Usage: python3 bench/loadgen.py '<json object of arguments>'   (the key "mode" picks the load)

Each mode runs one bounded load (every loop stops after `count` operations or `duration` seconds,
whichever comes first), then prints one JSON object with what it did and saw on stdout and exits.
Processes that must start together get a common `start_at` (time.monotonic() is system-wide on
Linux) and wait for it. Latencies are reported in microseconds.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import socket
import sys
import time
from typing import Any, Dict, List, Optional

END = b"\x04"
LOOPBACK = "127.0.0.1"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_start(args: Dict[str, Any]) -> None:
    start_at = args.get("start_at")
    if start_at:
        delay = start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def tcp(port: int, timeout: float = 10.0, nodelay: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect((LOOPBACK, port))
    return sock


def connect(target: Any, timeout: float = 10.0) -> socket.socket:
    """`target` is a TCP port (int) or a Unix socket path (str)."""
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(target)
        return sock
    return tcp(target, timeout)


def recv_until_end(sock: socket.socket, count: int = 1) -> bytes:
    chunks = []
    seen = 0
    while seen < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed by the DSM after %d of %d end bytes" % (seen, count))
        chunks.append(chunk)
        seen += chunk.count(END)
    return b"".join(chunks)


def status_message(serial: str, status: str, form: str = "py") -> bytes:
    report = {"serial_number": serial, "time_stamp": "2026-11-24 14:22:01", "status": status}
    return (str(report) if form == "py" else json.dumps(report)).encode()


def oneshot_serial(prefix: str, i: int, per_serial: int) -> str:
    return "%s-%d" % (prefix, i // per_serial)


# --- status reports ---------------------------------------------------------------------------------
def mode_status_oneshot(args: Dict[str, Any]) -> Dict[str, Any]:
    """The lab scripts' way: connect, one status (no terminator), wait for \\x04, close."""
    port, prefix, per_serial = args["port"], args["prefix"], args["per_serial"]
    count, duration = args["count"], args["duration"]
    messages = [status_message(oneshot_serial(prefix, i, per_serial), "%07d" % i)
                for i in range(count)]
    latencies: List[int] = []
    error: Optional[str] = None
    wait_start(args)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    deadline = t0 + duration
    acked = 0
    for i in range(count):
        start = time.perf_counter()
        if start >= deadline:
            break
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect((LOOPBACK, port))
            sock.sendall(messages[i])
            reply = sock.recv(64)
            sock.close()
        except OSError as exc:
            error = "status %d: %s" % (i, exc)
            break
        end = time.perf_counter()
        if reply != END:
            error = "status %d: reply %r instead of \\x04" % (i, reply[:80])
            break
        acked += 1
        latencies.append(int((end - start) * 1e6))
    elapsed = time.perf_counter() - t0
    return dict(acked=acked, elapsed=elapsed, latencies_us=latencies, error=error,
                cpu=cpu_seconds() - cpu0)


def mode_status_pipelined(args: Dict[str, Any]) -> Dict[str, Any]:
    """Pipelined batches: `batch` newline-terminated statuses sent in one write per connection,
    every ack read, then the DSM closes (it closes once all it received is answered, as the
    original did); `window // batch` connections (at most 8) are in flight at once, so the DSM
    always has a batch waiting. A batch of 200 is about 18 KB: one loopback segment."""
    port, prefix, nserials = args["port"], args["prefix"], args["serials"]
    count, duration, window = args["count"], args["duration"], args["window"]
    batch = args.get("batch", 200)
    form = args.get("form", "json")
    in_flight_max = max(1, min(8, window // batch))
    wait_start(args)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    deadline = t0 + duration
    sent = acked = connections = 0
    errors = 0
    error: Optional[str] = None
    in_flight: List[Any] = []  # (socket, statuses sent on it), oldest first
    try:
        while in_flight or (sent < count and time.perf_counter() < deadline):
            while (len(in_flight) < in_flight_max and sent < count
                   and time.perf_counter() < deadline):
                n = min(batch, count - sent)
                sock = tcp(port, nodelay=True)
                sock.sendall(b"".join(
                    status_message("%s-%d" % (prefix, i % nserials), "%07d" % i, form) + b"\n"
                    for i in range(sent, sent + n)))
                sent += n
                connections += 1
                in_flight.append((sock, n))
            sock, n = in_flight.pop(0)
            replies = []
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                replies.append(chunk)
            sock.close()
            reply = b"".join(replies)
            errors += reply.count(b"{")
            got = reply.count(END)
            acked += got
            if got != n:
                error = "closed by the DSM with %d of %d acknowledged" % (got, n)
                break
    except OSError as exc:
        error = "after %d acks: %s" % (acked, exc)
    for sock, _ in in_flight:
        sock.close()
    elapsed = time.perf_counter() - t0
    return dict(sent=sent, acked=acked, error_replies=errors, elapsed=elapsed, error=error,
                connections=connections, cpu=cpu_seconds() - cpu0)


# --- announcements ----------------------------------------------------------------------------------
def announcement(serial: str, run: str, variant: int) -> bytes:
    fields = {
        "serial_number": serial, "world_wide_name": "5 000c50 %s" % serial,
        "manufacturer": "Seagate", "model": "ST4000NK0001", "firmware_version": "3.1.7",
        "protocol_version": "3.0.6", "port": 8123, "tlsPort": 8443,
        "network_interfaces": [
            {"name": "eth0", "mac_addr": "00:c9:58:01:aa:10", "ipv4_addr": "10.20.30.41",
             "ipv6_addr": "fe80::2c9:58ff:fe01:aa10"},
            {"name": "eth1", "mac_addr": "00:c9:58:01:aa:11", "ipv4_addr": "10.20.31.41",
             "ipv6_addr": "fe80::2c9:58ff:fe01:aa11"}],
        "bench_run": run, "bench_variant": variant,
    }
    return json.dumps(fields).encode()


def drive_serial(prefix: str, d: int) -> str:
    return "%s%06d" % (prefix, d)


def mode_announce(args: Dict[str, Any]) -> Dict[str, Any]:
    """Datagram k goes to drive k % drives; a drive's bytes change every `change_every` rounds."""
    port, group = args["port"], args["group"]
    ndrives, rate, duration = args["drives"], args["rate"], args["duration"]
    count, change_every, prefix, run = args["count"], args["change_every"], args["prefix"], args["run"]
    rounds = -(-count // ndrives)
    variants = rounds // change_every + 1
    payloads = [[announcement(drive_serial(prefix, d), run, v) for d in range(ndrives)]
                for v in range(variants)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    dest = (group, port)
    sendto = sock.sendto
    wait_start(args)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    deadline = t0 + duration
    sent = 0
    send_errors = 0
    while sent < count:
        now = time.perf_counter()
        if now >= deadline:
            break
        target = min(count, int((now - t0) * rate) + 1)
        if sent >= target:
            time.sleep(0.0002)
            continue
        while sent < target:
            payload = payloads[(sent // ndrives) // change_every][sent % ndrives]
            try:
                sendto(payload, dest)
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                send_errors += 1
            sent += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    last_variant = {}
    for d in range(min(ndrives, sent)):
        k_last = d + ((sent - 1 - d) // ndrives) * ndrives
        last_variant[drive_serial(prefix, d)] = (k_last // ndrives) // change_every
    return dict(sent=sent, send_errors=send_errors, elapsed=elapsed,
                achieved_rate=sent / elapsed if elapsed else 0.0, last_variant=last_variant,
                cpu=cpu_seconds() - cpu0,
                distinct_payloads=sum(1 for k in range(sent)
                                      if k < ndrives or ((k // ndrives) % change_every == 0)))


# --- queries ----------------------------------------------------------------------------------------
def mode_query_timing(args: Dict[str, Any]) -> Dict[str, Any]:
    """Times `letter` queries (connect, send, read to \\x04, close), optionally after a change.

    change "none": nothing changes between queries (the DSM may answer from its cache).
    change "announce": before each query one drive re-announces with a new bench_variant; the
    reply must show it. change "status": before each query one serial gets one more status (acked);
    the reply must show it as that serial's newest, with `history` entries.
    """
    target, letter, repeat = args["target"], args["letter"].encode(), args["repeat"]
    change = args.get("change", "none")
    expect_keys = args.get("expect_keys")
    times: List[int] = []
    sizes: List[int] = []
    errors: List[str] = []
    mcast = None
    if change == "announce":
        mcast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mcast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        mcast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    deadline = time.monotonic() + args["duration"]
    for r in range(repeat):
        if time.monotonic() >= deadline:
            break
        changed_key = changed_value = None
        if change == "announce":
            changed_key = drive_serial(args["prefix"], (r * 7919) % args["drives"])
            changed_value = 1_000_000 + r
            mcast.sendto(announcement(changed_key, args["run"], changed_value),
                         (args["group"], args["mcast_port"]))
            time.sleep(0.005)
        elif change == "status":
            changed_key = "%s-%d" % (args["prefix"], (r * 7919) % args["serials"])
            changed_value = "q%06d" % r
            with tcp(args["status_port"]) as s:
                s.sendall(status_message(changed_key, changed_value))
                if s.recv(64) != END:
                    errors.append("status not acknowledged")
        start = time.perf_counter()
        with connect(target) as sock:
            sock.sendall(letter)
            reply = recv_until_end(sock)
        times.append(int((time.perf_counter() - start) * 1e6))
        sizes.append(len(reply))
        if not reply.endswith(END):
            errors.append("reply does not end with \\x04")
            continue
        if r == 0 or change != "none" or r == repeat - 1:
            try:
                data = json.loads(reply[:-1])
            except ValueError as exc:
                errors.append("reply %d not JSON: %s" % (r, exc))
                continue
            if expect_keys is not None and len(data) != expect_keys:
                errors.append("reply %d has %d keys, expected %d" % (r, len(data), expect_keys))
            if change == "announce":
                got = data.get(changed_key, {}).get("bench_variant")
                if got != changed_value:
                    errors.append("m %d: %s bench_variant %r, expected %r (stale reply?)"
                                  % (r, changed_key, got, changed_value))
            elif change == "status":
                hist = data.get(changed_key, [])
                if not hist or hist[-1].get("status") != changed_value:
                    errors.append("s %d: newest status of %s is not %s" % (r, changed_key,
                                                                          changed_value))
                elif len(hist) != args["history"]:
                    errors.append("s %d: %s has %d statuses, expected %d"
                                  % (r, changed_key, len(hist), args["history"]))
    return dict(times_us=times, sizes=sizes, errors=errors[:10], error_count=len(errors))


# --- isolation --------------------------------------------------------------------------------------
def mode_idle(args: Dict[str, Any]) -> Dict[str, Any]:
    """Holds `per_target` idle connections open on each target for `duration` s; are they still open?"""
    raise_nofile()
    socks = []
    failed = 0
    for target in args["targets"]:
        for _ in range(args["per_target"]):
            try:
                socks.append(connect(target))
            except OSError:
                failed += 1
    print(json.dumps(dict(ready=len(socks))), flush=True)
    time.sleep(args["duration"])
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    ready = sel.select(0)
    closed = 0
    unexpected = 0
    for key, _ in ready:
        try:
            data = key.fileobj.recv(100, socket.MSG_DONTWAIT)
        except OSError:
            closed += 1
            continue
        if not data:
            closed += 1
        else:
            unexpected += 1
    for s in socks:
        s.close()
    return dict(opened=len(socks), connect_failed=failed, closed_by_dsm=closed,
                unexpected_data=unexpected)


def mode_hog(args: Dict[str, Any]) -> Dict[str, Any]:
    """Pipelines `m` many times on one connection and never reads a byte."""
    sock = connect(args["target"])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + args["duration"]
    payload = b"m " * 1000  # whole tokens: `mm` is not a query
    while sent < args["count"] and time.monotonic() < deadline:
        try:
            sent += sock.send(payload)
        except BlockingIOError:
            break
    print(json.dumps(dict(ready=sent)), flush=True)
    time.sleep(max(0.0, deadline - time.monotonic()))
    sock.close()
    return dict(queries_sent=sent)


def mode_probe(args: Dict[str, Any]) -> Dict[str, Any]:
    """A polite client: m, s and one status in turn, each on a new connection, latency of each."""
    query_port, status_port = args["query_port"], args["status_port"]
    lat: Dict[str, List[int]] = {"m": [], "s": [], "status": []}
    errors: List[str] = []
    m_size = None
    deadline = time.monotonic() + args["duration"]
    i = 0
    acked = 0
    while i < args["count"] and time.monotonic() < deadline:
        op = ("m", "s", "status")[i % 3]
        start = time.perf_counter()
        try:
            if op == "status":
                with tcp(status_port, timeout=5) as sock:
                    sock.sendall(status_message("%s-%d" % (args["prefix"], acked // 10),
                                                "%07d" % acked))
                    reply = sock.recv(64)
                ok = reply == END
                if ok:
                    acked += 1
            else:
                with tcp(query_port, timeout=5) as sock:
                    sock.sendall(op.encode())
                    reply = recv_until_end(sock)
                ok = reply.endswith(END)
                if op == "m":
                    if m_size is None:
                        m_size = len(reply)
                        ok = ok and len(json.loads(reply[:-1])) == args["drives"]
                    else:
                        ok = ok and len(reply) == m_size
        except (OSError, ValueError) as exc:
            ok = False
            reply = str(exc).encode()
        lat[op].append(int((time.perf_counter() - start) * 1e6))
        if not ok:
            errors.append("%s: %r" % (op, reply[:80]))
        i += 1
        time.sleep(args.get("pause", 0.001))
    return dict(latencies_us=lat, errors=errors[:10], error_count=len(errors), statuses_acked=acked,
                m_size=m_size)


# --- Status Server (and Redis) ------------------------------------------------------------------------
def _ops(proto: str, key: str, start: int, n: int) -> bytes:
    """Alternating PUT/GET (SET/GET for Redis) of `key`: op i even writes value i, odd reads it."""
    lines = []
    for i in range(start, start + n):
        if i % 2 == 0:
            lines.append(("PUT %s %d\n" if proto == "statserv" else "SET %s %d\r\n") % (key, i))
        else:
            lines.append(("GET %s\n" if proto == "statserv" else "GET %s\r\n") % key)
    return "".join(lines).encode()


def _setup_key(sock: socket.socket, proto: str, key: str) -> None:
    if proto == "statserv":
        sock.sendall(("TOUCH %s\n" % key).encode())
        line = _read_lines(sock, 1)[0]
        if not line.startswith(b"."):
            raise RuntimeError("TOUCH failed: %r" % line)


class LineReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def lines(self) -> List[bytes]:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed by the server")
        data = self.buf + chunk
        parts = data.split(b"\n")
        self.buf = parts.pop()
        return parts


def _read_lines(sock: socket.socket, n: int) -> List[bytes]:
    out = []
    buf = b""
    while len(out) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
        *done, buf = buf.split(b"\n")
        out.extend(done)
    return out


def _check_reply(proto: str, i: int, line: bytes, redis_state: List[int]) -> bool:
    """Op i's reply (Redis GET replies span two lines: `$n` then the value)."""
    if proto == "statserv":
        if i % 2 == 0:
            return line == b"."
        return line == ('. "%d"' % (i - 1)).encode()
    return True


def mode_statserv_rtt(args: Dict[str, Any]) -> Dict[str, Any]:
    """One request at a time: send, wait for its reply, next (PUT/GET alternating)."""
    proto, key, count = args["proto"], args["key"], args["count"]
    sock = tcp(args["port"], nodelay=True)
    _setup_key(sock, proto, key)
    reader = LineReader(sock)
    lat: List[int] = []
    errors = 0
    deadline = time.monotonic() + args["duration"]
    cpu0 = cpu_seconds()
    for i in range(count):
        if i % 256 == 0 and time.monotonic() >= deadline:
            break
        request = _ops(proto, key, i, 1)
        need = 1 if (proto == "statserv" or i % 2 == 0) else 2
        got: List[bytes] = []
        start = time.perf_counter()
        sock.sendall(request)
        while len(got) < need:
            got.extend(reader.lines())
        lat.append(int((time.perf_counter() - start) * 1e6))
        if proto == "statserv":
            ok = _check_reply(proto, i, got[0], [])
        elif i % 2 == 0:
            ok = got[0] == b"+OK\r"
        else:
            ok = got[1] == ("%d\r" % (i - 1)).encode()
        if not ok:
            errors += 1
    sock.close()
    return dict(latencies_us=lat, errors=errors, cpu=cpu_seconds() - cpu0)


def mode_statserv_pipelined(args: Dict[str, Any]) -> Dict[str, Any]:
    """Requests pipelined in batches, at most `window` unanswered; every reply checked."""
    proto, key, count, window = args["proto"], args["key"], args["count"], args["window"]
    batch = args.get("batch", 500)
    sock = tcp(args["port"], nodelay=True)
    _setup_key(sock, proto, key)
    reader = LineReader(sock)
    wait_start(args)
    deadline = time.perf_counter() + args["duration"]
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    sent = answered = errors = 0
    pending_value = False  # Redis: a `$n` line was read, its value line comes next
    while answered < sent or (sent < count and time.perf_counter() < deadline):
        while sent < count and sent - answered < window and time.perf_counter() < deadline:
            n = min(batch, count - sent)
            sock.sendall(_ops(proto, key, sent, n))
            sent += n
        for line in reader.lines():
            i = answered
            if proto == "statserv":
                if not _check_reply(proto, i, line, []):
                    errors += 1
                answered += 1
            elif pending_value:
                if line != ("%d\r" % (i - 1)).encode():
                    errors += 1
                pending_value = False
                answered += 1
            elif i % 2 == 0:
                if line != b"+OK\r":
                    errors += 1
                answered += 1
            else:
                pending_value = True
    elapsed = time.perf_counter() - t0
    sock.close()
    return dict(sent=sent, answered=answered, errors=errors, elapsed=elapsed,
                cpu=cpu_seconds() - cpu0)


def mode_monitors(args: Dict[str, Any]) -> Dict[str, Any]:
    """`monitors` connections MONITOR one object; one PUT; when does each get its `@` line?"""
    nofile = raise_nofile()
    port, name, n = args["port"], args["name"], args["monitors"]
    writer = tcp(port, nodelay=True)
    writer.sendall(("TOUCH %s\nPUT %s 0\n" % (name, name)).encode())
    first = _read_lines(writer, 2)
    if first != [b".", b"."]:
        raise RuntimeError("TOUCH/PUT failed: %r" % first)
    socks = []
    connect_error = None
    for _ in range(n):
        try:
            socks.append(tcp(port))
        except OSError as exc:
            connect_error = str(exc)
            break
    for s in socks:
        s.sendall(("MONITOR %s\n" % name).encode())
    bad_initial = 0
    for s in socks:
        if _read_lines(s, 1)[0] != b'. "0"':
            bad_initial += 1
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    expected = ("@ %s" % name).encode()
    arrival: Dict[int, float] = {}
    bufs: Dict[int, bytes] = {}
    extra = 0
    start = time.perf_counter()
    writer.sendall(("PUT %s 1\n" % name).encode())
    put_reply_at = None
    writer.setblocking(False)
    deadline = start + args.get("timeout", 10.0)
    closed = 0
    while len(arrival) + closed < len(socks) and time.perf_counter() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            now = time.perf_counter()
            if not data:
                closed += 1
                sel.unregister(s)
                continue
            fd = s.fileno()
            buf = bufs.get(fd, b"") + data
            *lines, bufs[fd] = buf.split(b"\n")
            for line in lines:
                if line == expected and fd not in arrival:
                    arrival[fd] = now
                else:
                    extra += 1
        if put_reply_at is None:
            try:
                if writer.recv(100):
                    put_reply_at = time.perf_counter()
            except BlockingIOError:
                pass
    times = sorted(int((t - start) * 1e6) for t in arrival.values())
    for s in socks:
        s.close()
    writer.close()
    return dict(opened=len(socks), connect_error=connect_error, nofile=nofile,
                bad_initial=bad_initial, notified=len(arrival), closed_by_server=closed,
                unexpected_lines=extra, times_us=times,
                put_reply_us=int((put_reply_at - start) * 1e6) if put_reply_at else None)


def mode_tree_fill(args: Dict[str, Any]) -> Dict[str, Any]:
    """TOUCH + PUT `count` objects, pipelined; every reply must be `.`."""
    sock = tcp(args["port"], nodelay=True)
    reader = LineReader(sock)
    count, base = args["count"], args["base"]
    batch, window = 1000, 20000
    sent = answered = errors = 0
    t0 = time.perf_counter()
    deadline = t0 + args["duration"]

    def lines_for(i: int) -> str:
        name = "%s/d%04d/o%04d" % (base, i // 1000, i % 1000)
        return "TOUCH %s\nPUT %s v%d\n" % (name, name, i)

    total = 2 * count
    while answered < sent or (sent < total and time.perf_counter() < deadline):
        while sent < total and sent - answered < window:
            i0 = sent // 2
            n = min(batch, count - i0)
            sock.sendall("".join(lines_for(i) for i in range(i0, i0 + n)).encode())
            sent += 2 * n
        for line in reader.lines():
            if line != b".":
                errors += 1
            answered += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    return dict(objects=sent // 2, answered=answered, errors=errors, elapsed=elapsed)


MODES = {name[5:]: fn for name, fn in globals().items() if name.startswith("mode_")}


def main() -> int:
    args = json.loads(sys.argv[1])
    try:
        result = MODES[args["mode"]](args)
    except Exception as exc:  # reported to run.py, which fails the scenario's check
        result = dict(fatal="%s: %s" % (type(exc).__name__, exc))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
