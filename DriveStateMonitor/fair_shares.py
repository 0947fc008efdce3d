"""Fair shares: who gets a connection slot, and how long a slot may be held without use.

Theory of operation
-------------------
Connection slots are the one resource a stranger can take from everybody else, so they are shared
out, not first come first served:

* The effective limit is `--max-connections`, lowered at start to what RLIMIT_NOFILE allows after a
  reserve of descriptors for the journal, snapshots, SAVE and the log (`DESCRIPTOR_RESERVE`, what
  Redis keeps). A client past it is refused with the usual clear error instead of failing accept()
  with EMFILE, which would leave it unanswered.
* Every TCP peer address (loopback included) holds at most `--max-connections-per-address`, and
  never more than half of the connection limit (`peer_share`, at least 1), whatever the two are
  set to: one peer can never take every slot.
* The last `--local-reserve` slots are for this host's own clients, and the very last few
  (`UNIX_RESERVE`) for the Unix sockets alone: a remote flood, or a flood from one local address,
  never locks out the test scripts and `dsmctl` on the host. This host's own clients are the Unix
  sockets' and the TCP connections whose peer address is the connection's own local address (a
  script connecting to 127.0.0.1 from 127.0.0.1, or to the host's address from the host): a peer
  on another loopback address (127.0.0.2 can be a network namespace or a container's proxy) or on
  another of the host's addresses is served, but draws on the shared slots, not on the reserve.
  The local address is looked up (getsockname) only once the shared slots are all taken.

A slot is held only while it is used:

* A request (HTTP head, status message, query token, Status Server line) must be complete
  `--request-timeout` seconds after its first byte; the transport keeps that clock and `sweep`
  gives the connection its protocol's error and closes it. A drip of one byte a second cannot stretch
  it: the clock does not restart with each byte.
* A connection that completed no request and took none of its output for `--idle-timeout` is
  closed; a drip of bytes that completes nothing (whitespace) does not count as use. Status Server
  connections are exempt while they hold something (monitors, TRACE, AUTOEXPIRE or TOUCHed objects):
  watchers are quiet for days on purpose. One that holds nothing is closed after
  `--statserv-idle-timeout`.

Everything here is pure: time is passed in, the loop does the closing.
"""
from __future__ import annotations

import collections
import resource
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .access import peer_facts

# Descriptors kept free for what the DSM opens itself: journal, snapshot child pipes, SAVE, the
# log, /proc reads, the listeners (Redis keeps 32 for the same purpose: CONFIG_MIN_RESERVED_FDS).
DESCRIPTOR_RESERVE = 32
# The last slots, for the Unix sockets only: dsmctl and stopDSM-style probes always get in.
UNIX_RESERVE = 8
# The connection's own address (socket.getsockname), looked up only when needed.
LocalAddress = Optional[Callable[[], Any]]


def descriptor_budget(wanted: int, fds_in_use: int) -> Tuple[int, int]:
    """(connections allowed, RLIMIT_NOFILE soft limit) for `wanted` connections.

    Raises the soft limit toward the hard one first, as Redis does; then allows what is left after
    `fds_in_use` and DESCRIPTOR_RESERVE (at least 1).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + fds_in_use + DESCRIPTOR_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted, soft
    return max(1, min(wanted, soft - fds_in_use - DESCRIPTOR_RESERVE)), soft


class ConnectionSlots:
    """Admission: `refusal(addr)` says why a new connection may not have a slot (None: it may);
    `opened(addr)` / `closed(addr)` keep the counts.

    `addr` is what accept() returned: a (host, port, ...) tuple for TCP, anything else for Unix.
    """

    def __init__(self, max_connections: int, per_address: int, local_reserve: int) -> None:
        self.per_address = per_address
        self.local_reserve = local_reserve
        self.open = 0
        self.by_address: Dict[str, int] = collections.Counter()
        self.set_limit(max_connections)

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self.peer_share = min(self.per_address, peer_share(limit))
        # Scaled down for tiny limits, so `--max-connections 5` still means five for anyone.
        unix_reserve = min(UNIX_RESERVE, limit // 8)
        self._allowed_loopback = limit - unix_reserve
        self._allowed_remote = limit - max(unix_reserve, min(self.local_reserve, limit // 4))

    @staticmethod
    def _key(addr: Any) -> Optional[str]:
        facts = peer_facts(addr)
        return None if facts is None else facts.key

    def take(self, addr: Any, local_address: LocalAddress = None) -> Optional[Tuple[str, str]]:
        """`refusal(addr, local_address)`, and when there is none, `opened(addr)`: one lookup
        of the peer."""
        facts = peer_facts(addr)
        refused = self._refusal(facts, local_address)
        if refused is None:
            self._count_opened(None if facts is None else facts.key)
        return refused

    def refusal(self, addr: Any, local_address: LocalAddress = None
                ) -> Optional[Tuple[str, str]]:
        """(counter name, clear reason) when `addr` may not have a slot now, else None.
        `local_address()` gives the connection's own address (socket.getsockname), asked only
        when the reserve is at stake; without it no TCP peer is this host's own client."""
        return self._refusal(peer_facts(addr), local_address)

    def _refusal(self, facts: Any, local_address: LocalAddress) -> Optional[Tuple[str, str]]:
        key = None if facts is None else facts.key
        limit = self.limit
        if key is None:
            allowed = limit
        elif self.open < self._allowed_remote or not _is_own(facts, local_address):
            allowed = self._allowed_remote  # while shared slots are left, nobody needs asking
        else:
            allowed = self._allowed_loopback
        if self.open >= allowed:
            return ("limit", "too many connections (limit %d%s); try again later" % (
                limit, "" if allowed == limit else
                ", of which the last %d are kept for this host's own clients" % (limit - allowed)))
        if key is not None and self.by_address[key] >= self.peer_share:
            return ("per_address", "too many connections from %s (limit %d per address, "
                    "--max-connections-per-address, at most half of --max-connections); try "
                    "again later" % (key, self.peer_share))
        return None

    def opened(self, addr: Any) -> None:
        self._count_opened(self._key(addr))

    def _count_opened(self, key: Optional[str]) -> None:
        self.open += 1
        if key is not None:
            self.by_address[key] += 1

    def closed(self, addr: Any) -> None:
        self.open -= 1
        key = self._key(addr)
        if key is not None:
            left = self.by_address[key] - 1
            if left > 0:
                self.by_address[key] = left
            else:
                del self.by_address[key]


def peer_share(limit: int) -> int:
    """The most slots one peer address may hold of `limit` connections: half, at least 1."""
    return max(1, limit // 2)


def _is_own(facts: Any, local_address: LocalAddress) -> bool:
    """True when the TCP peer is this host's own client: its address is the connection's own."""
    if local_address is None:
        return False
    try:
        local = peer_facts(local_address())
    except OSError:  # the connection is already gone
        return False
    return local is not None and local.key == facts.key


def sweep(transports: Iterable[Any], now: float, request_timeout: float,
          idle_timeout: Callable[[Any], Optional[float]]) -> Tuple[List[Any], List[Any]]:
    """(late, idle): transports whose request has run past `request_timeout` seconds since its
    first byte, and transports unused for longer than `idle_timeout(transport)` (None: never).

    A transport whose reading is paused waits for its own client to read (back-pressure), so its
    request clock does not run; the idle rule and the output caps govern it instead.
    """
    late: List[Any] = []
    idle: List[Any] = []
    for transport in transports:
        if transport.closed:
            continue
        started = transport.request_started
        if started is not None and transport.reading and now - started > request_timeout:
            late.append(transport)
            continue
        limit = idle_timeout(transport)
        if limit is not None and now - transport.last_activity > limit:
            idle.append(transport)
    return late, idle
