"""Socket options the per-connection path relies on without setting them per connection."""
import socket
import sys

import pytest

from DriveStateMonitor.daemon import NODELAY_INHERITED, open_tcp_listener


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux inheritance")
def test_accepted_connections_have_nodelay_from_the_listener():
    assert NODELAY_INHERITED
    listener = open_tcp_listener(0, "test")
    try:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    finally:
        listener.close()


# --- one interface: no per-datagram interface lookup -------------------------------------------
def test_sole_interface_only_for_one_join_with_the_kernel_filter_on():
    import socket as _socket

    from DriveStateMonitor.event_loop import IP_PKTINFO
    from DriveStateMonitor.interfaces import select_interfaces
    from DriveStateMonitor.multicast_socket import open_multicast_socket, sole_interface
    lo = select_interfaces(["lo"])
    sock = open_multicast_socket("239.1.2.98", 0, lo)
    try:
        assert sock.getsockopt(_socket.IPPROTO_IP, IP_PKTINFO) == 1
        assert sole_interface(sock, lo + lo) is None  # two joins: ask per datagram
        assert sock.getsockopt(_socket.IPPROTO_IP, IP_PKTINFO) == 1
        assert sole_interface(sock, lo) == lo[0]
        assert sock.getsockopt(_socket.IPPROTO_IP, IP_PKTINFO) == 0  # not asked any more
    finally:
        sock.close()


def test_no_sole_interface_where_the_kernel_would_deliver_other_joins():
    from DriveStateMonitor.interfaces import select_interfaces
    from DriveStateMonitor.multicast_socket import (IP_MULTICAST_ALL, open_multicast_socket,
                                                    sole_interface)
    lo = select_interfaces(["lo"])
    sock = open_multicast_socket("239.1.2.98", 0, lo)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 1)  # as where the option is missing
        assert sole_interface(sock, lo) is None
    finally:
        sock.close()
