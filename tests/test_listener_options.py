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
