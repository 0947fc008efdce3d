"""Network interfaces, found with the standard library alone (no `ip` command).

Linux ioctls: SIOCGIFFLAGS says whether an interface is up, SIOCGIFADDR gives its (primary) IPv4
address. An interface with several addresses is joined once, on that one.
"""
from __future__ import annotations

import fcntl
import socket
import struct
from typing import Dict, List, NamedTuple, Optional

SIOCGIFFLAGS = 0x8913
SIOCGIFADDR = 0x8915
IFF_UP = 0x1
_IFREQ_SIZE = 40


class Interface(NamedTuple):
    name: str
    ifindex: int  # the kernel's interface index (if_nametoindex)
    ipv4: str


def _ifreq(sock: socket.socket, request: int, name: str) -> Optional[bytes]:
    try:
        return fcntl.ioctl(sock.fileno(), request,
                           struct.pack("16s24x", name.encode("ascii", "replace")[:15]))
    except OSError:
        return None


def list_interfaces() -> List[Interface]:
    """Every interface that is up and has an IPv4 address, loopback included, in index order."""
    found: List[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            flags = _ifreq(sock, SIOCGIFFLAGS, name)
            if flags is None or not struct.unpack_from("H", flags, 16)[0] & IFF_UP:
                continue
            addr = _ifreq(sock, SIOCGIFADDR, name)
            if addr is None:
                continue
            found.append(Interface(name, index, socket.inet_ntoa(addr[20:24])))
    return found


def select_interfaces(wanted: Optional[List[str]]) -> List[Interface]:
    """The interfaces named in `wanted` (all usable ones when None); unknown names raise ValueError."""
    available = list_interfaces()
    if wanted is None:
        return available
    by_name: Dict[str, Interface] = {iface.name: iface for iface in available}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ValueError("interface%s not up or without an IPv4 address: %s (usable: %s)" % (
            "s" if len(missing) > 1 else "", ", ".join(missing),
            ", ".join(sorted(by_name)) or "none"))
    seen = set()
    chosen = []
    for name in wanted:
        if name not in seen:
            seen.add(name)
            chosen.append(by_name[name])
    return chosen
