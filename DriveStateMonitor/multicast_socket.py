"""The multicast socket: bound to the group's port, joined once per chosen interface.

SO_REUSEADDR lets MulticastListener.py bind the same group and port beside a running DSM; on Linux
both then receive every datagram. IP_PKTINFO tells on which interface a datagram arrived — unless
the socket can only hear one (sole_interface).
"""
from __future__ import annotations

import socket
import struct
import sys
from typing import List, Optional

from .event_loop import IP_PKTINFO
from .interfaces import Interface

# Linux's IP_MULTICAST_ALL (default 1) delivers the group's datagrams from every interface on which
# any socket of the host joined it; 0 limits this socket to its own joins.
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
# Drives announce in bursts at start-up; a large receive buffer rides them out between loop passes.
RECEIVE_BUFFER = 8 * 1024 * 1024
# Linux's SO_MEMINFO reads a socket's memory figures (include/uapi/linux/sock_diag.h):
# SK_MEMINFO_DROPS counts the datagrams the kernel dropped on it, for want of receive buffer above
# all — what --coalesce relies on to hold a batch.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SK_MEMINFO_DROPS = 8
SK_MEMINFO_VARS = 9


class MulticastSetupError(OSError):
    """Creating, binding or joining failed; the message says which step and why."""


def open_multicast_socket(group: str, port: int, interfaces: List[Interface]) -> socket.socket:
    """A non-blocking UDP socket bound to (group, port) and joined to `group` on each interface."""
    try:
        group_packed = socket.inet_aton(group)
    except OSError:
        raise MulticastSetupError("bad multicast group address %r" % group) from None
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except OSError as exc:
        raise MulticastSetupError("cannot create the multicast socket: %s" % exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass  # the kernel caps it; the default still works
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        except OSError:
            pass  # not Linux: the daemon still drops datagrams from interfaces it did not choose
        try:
            # Binding the group address (not 0.0.0.0) keeps other groups' traffic on the port out.
            sock.bind((group, port))
        except OSError as exc:
            raise MulticastSetupError("cannot bind multicast %s:%d: %s"
                                      % (group, port, exc.strerror or exc)) from None
        for iface in interfaces:
            # struct ip_mreqn: group, local address, interface index — the index makes the join
            # land on that interface even where two interfaces share an address.
            mreqn = group_packed + socket.inet_aton(iface.ipv4) + struct.pack("=i", iface.ifindex)
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            except OSError as exc:
                raise MulticastSetupError("cannot join %s on %s (%s): %s" % (
                    group, iface.name, iface.ipv4, exc.strerror or exc)) from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def sole_interface(sock: socket.socket, interfaces: List[Interface]) -> Optional[Interface]:
    """The interface every datagram `sock` receives arrived on, when the kernel guarantees there is
    one: `sock` joined exactly one interface and IP_MULTICAST_ALL is off, so Linux delivers the
    group's datagrams to it only from that join. Then IP_PKTINFO is switched off, and the reader
    need not ask per datagram (recvfrom instead of recvmsg with ancillary data: about a microsecond
    of every announcement). None, and IP_PKTINFO stays on, in every other case."""
    if len(interfaces) != 1:
        return None
    try:
        if sock.getsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL) != 0:
            return None
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 0)
    except OSError:
        return None
    return interfaces[0]


def receive_drops(sock: socket.socket) -> Optional[int]:
    """Datagrams the kernel dropped on `sock` since it was opened (its receive buffer was full, in
    the main), from Linux's SO_MEMINFO; None where the system does not say (not Linux, or an old
    kernel without SO_MEMINFO or its drop count)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
    except (OSError, ValueError):
        return None
    if len(raw) < 4 * (SK_MEMINFO_DROPS + 1):
        return None
    return struct.unpack_from("=I", raw, 4 * SK_MEMINFO_DROPS)[0]
