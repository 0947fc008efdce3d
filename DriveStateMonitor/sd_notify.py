"""systemd's readiness protocol (sd_notify(3)) with the standard library: one datagram per message.

Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every call is a no-op.
"""
from __future__ import annotations

import os
import socket
from typing import Optional


def notify(message: str, environ: Optional[dict] = None) -> bool:
    """Sends `message` (e.g. "READY=1") to systemd; True if it was sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # never stall the loop on a busy systemd
            sock.connect(address)
            sock.send(message.encode("utf-8"))
        return True
    except OSError:
        return False


def watchdog_interval(environ: Optional[dict] = None) -> Optional[float]:
    """Half of WatchdogSec (how often to send WATCHDOG=1), when systemd asks for pings from us."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6
