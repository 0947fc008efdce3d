"""Issue 10 item 6: many clients ask for `m` and never read. With 3,000 drives the reply (~6 MB)
exceeds every socket buffer, so the DSM must hold the unsent rest: clients sent the same cached
reply share its bytes (queued as views), and replies that differ (the data changed in between) are
bounded all together by --max-output-total, which closes the largest holders first.

Bounded: 60 + 50 clients, one DSM, every wait on a condition with a deadline."""
from __future__ import annotations

import select
import socket
import time
from typing import List

from dsm_harness import LOOPBACK, announcement, wait_for
from test_limits_access import announce_distinct, ask, counter

DRIVES = 3000
NOTE = "n" * 1500          # makes each drive ~1.9 KB in `m`: the reply is ~6 MB
SHARED_CLIENTS = 60
DISTINCT_CLIENTS = 50
MAX_OUTPUT_TOTAL = 24_000_000


def vm_rss_bytes(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def silent_client(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(10)
    sock.connect((LOOPBACK, port))
    return sock


def is_closed_by_peer(sock: socket.socket) -> bool:
    """True once the DSM closed or reset it (FIN or RST seen), without reading anything: a
    silent client's receive buffer still holds unread reply bytes."""
    poller = select.poll()
    poller.register(sock, getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def test_silent_m_readers_share_one_reply_and_the_total_bound_evicts_the_rest(dsm_factory):
    dsm = dsm_factory.start("--max-output-total", str(MAX_OUTPUT_TOTAL), "--idle-timeout", "120",
                            "--max-connections-per-address", "512")
    serials = ["SLOW%05d" % n for n in range(DRIVES)]
    for _ in range(3):  # bounded re-sends: loopback may drop some of a burst
        for index, serial in enumerate(serials):
            dsm.announce(announcement(serial, note=NOTE))
            if index % 50 == 49:
                time.sleep(0.005)  # pacing the burst; not a wait for a result
        if len(dsm.query_json("m")) == DRIVES:
            break
    announce_distinct(dsm, serials)
    reply_size = len(dsm.query(b"m"))
    assert reply_size > 5_000_000
    baseline = vm_rss_bytes(dsm.pid)
    clients: List[socket.socket] = []
    try:
        # 1. The same data: every silent client queues a view of the one cached reply.
        for _ in range(SHARED_CLIENTS):
            sock = silent_client(dsm.query_port)
            sock.sendall(b"m")
            clients.append(sock)
        with dsm.connect_statserv(unix=True) as statserv:
            wait_for(lambda: int(ask(statserv, "GET /dsm/output_queued_bytes")[2:].strip('"'))
                     > reply_size // 2, 10, "the DSM to hold the unsent replies")
        shared_growth = vm_rss_bytes(dsm.pid) - baseline
        assert counter(dsm, "output_evictions") == 0
        # 60 private copies would be 60 x 6 MB; one shared reply plus bookkeeping is what it takes.
        assert shared_growth < 2 * reply_size, (shared_growth, reply_size)

        # 2. Changing data: each client gets a different reply; --max-output-total bounds them.
        for n in range(DISTINCT_CLIENTS):
            model = "CHANGED%03d" % n
            dsm.announce(announcement(serials[n], note=NOTE, model=model))
            with dsm.connect_statserv(unix=True) as statserv:
                wait_for(lambda n=n, model=model: ask(statserv, "GET /drives/%s/model" % serials[n])
                         == '. "%s"' % model, 5, "the change to be stored")
            sock = silent_client(dsm.query_port)
            sock.sendall(b"m")
            clients.append(sock)
        wait_for(lambda: counter(dsm, "output_evictions") >= DISTINCT_CLIENTS // 2, 10,
                 "--max-output-total to evict the largest holders")
        evictions = counter(dsm, "output_evictions")
        distinct_growth = vm_rss_bytes(dsm.pid) - baseline
        print("\nm reply %.1f MB; RSS growth with %d silent clients sharing it: %.1f MB; "
              "after %d more with distinct replies: %.1f MB, %d evicted (limit %.0f MB)"
              % (reply_size / 1e6, SHARED_CLIENTS, shared_growth / 1e6, DISTINCT_CLIENTS,
                 distinct_growth / 1e6, evictions, MAX_OUTPUT_TOTAL / 1e6))
        # Without the bound: 50 x 6 MB = 300 MB more. With it: the limit, the replies being
        # sent, and allocator slack.
        assert distinct_growth < MAX_OUTPUT_TOTAL + 4 * reply_size, distinct_growth
        assert "--max-output-total); closing the largest first" in dsm.log_text()
        # The largest holders by what closing them frees: the distinct replies, each held once;
        # the shared reply frees nothing while others hold it, so its readers stay.
        shared_closed = sum(is_closed_by_peer(sock) for sock in clients[:SHARED_CLIENTS])
        distinct_closed = sum(is_closed_by_peer(sock) for sock in clients[SHARED_CLIENTS:])
        print("closed: %d of %d sharing, %d of %d with distinct replies"
              % (shared_closed, SHARED_CLIENTS, distinct_closed, DISTINCT_CLIENTS))
        assert distinct_closed >= DISTINCT_CLIENTS // 2
        assert shared_closed == 0
        # Everybody else is still served at once, and the DSM lives.
        assert dsm.query(b"s").endswith(b"\x04")
        assert dsm.proc.poll() is None
    finally:
        for sock in clients:
            sock.close()
