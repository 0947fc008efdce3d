"""Who may connect: `--allow` networks for the TCP listeners, and what counts as a local client.

Unix-socket clients are local and always allowed: the socket file's permissions decide who reaches
them. IPv4 peers of the dual-stack listeners arrive as `::ffff:a.b.c.d` and are matched as IPv4.
"""
from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import socket
import struct
from typing import Any, List, NamedTuple, Optional, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class PeerFacts(NamedTuple):
    """What the DSM asks about a TCP peer, worked out once per address (see peer_facts)."""
    ip: Address      # IPv4-mapped IPv6 unwrapped
    key: str         # str(ip): the per-address connection count's key
    loopback: bool


def peer_facts(addr: Any) -> Optional[PeerFacts]:
    """The facts of a TCP peer's address, or None for a Unix-socket peer (or an unparseable one).

    Cached per address text: parsing it with `ipaddress` cost about 50 µs per connection, four
    lookups each (access, slots opened/closed, local), as much as the rest of a status. The cache
    is bounded (an attacker cycling addresses only evicts); the facts of an address never change.
    """
    if not isinstance(addr, tuple):
        return None
    return _facts(str(addr[0]))


@functools.lru_cache(maxsize=4096)
def _facts(host: str) -> Optional[PeerFacts]:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return PeerFacts(ip, str(ip), ip.is_loopback)


def peer_ip(addr: Any) -> Optional[Address]:
    """The peer's IP address (IPv4-mapped IPv6 unwrapped), or None for a Unix-socket peer."""
    facts = peer_facts(addr)
    return None if facts is None else facts.ip


def is_local_peer(addr: Any) -> bool:
    """True for Unix-socket peers and loopback TCP peers."""
    if not isinstance(addr, tuple):
        return True
    facts = peer_facts(addr)
    return facts is not None and facts.loopback


def unix_peer_uid(sock: socket.socket) -> Optional[int]:
    """The user id of a Unix-socket peer (SO_PEERCRED, Linux), or None when unknown."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None or sock.family != socket.AF_UNIX:
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option,
                                                             struct.calcsize("3i")))
    except OSError:
        return None
    return uid


def is_own_user(sock: socket.socket) -> bool:
    """True when `sock` is a Unix-socket connection from the DSM's own user or root: the only
    clients that may stop the DSM (SHUTDOWN) or, with --wipe-from local, wipe it over the 0666
    sockets. A TCP peer, loopback included, cannot be tied to a user, so it is never one."""
    uid = unix_peer_uid(sock)
    return uid is not None and uid in (0, os.geteuid())


def network_list(text: str) -> List[Network]:
    """argparse type for `--allow CIDR[,CIDR...]` (a bare address is a /32 or /128)."""
    networks: List[Network] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise argparse.ArgumentTypeError("not a network (CIDR) or address: %r" % item) from None
    if not networks:
        raise argparse.ArgumentTypeError("no network given")
    return networks


class AccessRules:
    """`allows(addr)`: True when no `--allow` was given, for Unix peers, or for a listed network."""

    def __init__(self, allowed: Optional[List[Network]]) -> None:
        self.allowed = allowed

    def allows(self, addr: Any) -> bool:
        if self.allowed is None or not isinstance(addr, tuple):
            return True
        ip = peer_ip(addr)
        return ip is not None and any(ip.version == net.version and ip in net
                                      for net in self.allowed)

    def describe(self) -> str:
        return "any" if self.allowed is None else ", ".join(str(n) for n in self.allowed)
