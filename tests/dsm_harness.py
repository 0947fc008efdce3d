"""Runs real DSM processes for integration tests: free ports, a private run dir, loopback multicast.

Every process started here is stopped by its pid when the test ends, pass or fail (see the `dsm`
fixture in conftest.py). Waiting is always for a condition with a deadline, never a fixed sleep.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "DriveStateMonitor")
DAEMON = os.path.join(PACKAGE, "DriveStateMonitor.py")
END = b"\x04"
LOOPBACK = "127.0.0.1"
# Tests use their own group so they never meet a lab's real drives or a live DSM.
TEST_GROUP = "239.1.2.99"


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls `condition` until it returns something truthy; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# A port a test picks now for a process to bind later comes from below the kernel's ephemeral
# range (ip_local_port_range): a port-0 probe hands out an ephemeral port, which any outgoing
# connection of the suite (or its DSMs) may take before the later bind — a flake seen under load.
_DEFAULT_PORTS = {2203, 3110, 3111, 2204, 8123}
_port_choice = random.Random()


def _reservable_ports() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return range(max(1024, ephemeral_low // 2), ephemeral_low)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A TCP (or UDP) port that nothing binds now, outside the ephemeral range and never one of
    the DSM's defaults, checked on the wildcard address (a DSM binds every address)."""
    ports = _reservable_ports()
    for _ in range(500):  # bounded: almost every try succeeds
        port = _port_choice.choice(ports)
        if port in _DEFAULT_PORTS:
            continue
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def free_tcp_port() -> int:
    return free_port(socket.SOCK_STREAM)


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def short_temp_dir() -> str:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    return tempfile.mkdtemp(prefix="dsmt")


def recv_until_end(sock: socket.socket, timeout: float = 10.0, count: int = 1) -> bytes:
    """Reads until `count` end bytes have arrived (or the peer closes)."""
    sock.settimeout(timeout)
    data = b""
    while data.count(END) < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Reads until the peer closes."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def send_announcement(payload: bytes, port: int, group: str = TEST_GROUP) -> None:
    """Sends one datagram to the group, out of the loopback interface only."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sock.sendto(payload, (group, port))


def announcement(serial: str, **extra: Any) -> bytes:
    fields: Dict[str, Any] = {
        "serial_number": serial, "world_wide_name": "5 000c50 %s" % serial,
        "manufacturer": "Seagate", "model": "ST4000NK0001", "firmware_version": "3.1.7",
        "protocol_version": "3.0.6", "port": 8123, "tlsPort": 8443,
        "network_interfaces": [{"name": "eth0", "mac_addr": "00:c9:58:01:aa:10",
                                "ipv4_addr": "10.20.30.41", "ipv6_addr": "fe80::2c9:58ff:fe01:aa10"}],
    }
    fields.update(extra)
    return json.dumps(fields).encode()


class DsmProcess:
    """One DSM started by a test, with helpers to talk to it."""

    def __init__(self, args: List[str], run_dir: str, log_dir: str, mcast_port: int,
                 env: Optional[Dict[str, str]] = None, prefix: Optional[List[str]] = None) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.mcast_port = mcast_port
        self.log_path = os.path.join(log_dir, "dsm-test.log")
        self.args = args
        self.info: Dict[str, Any] = {}
        command = (prefix or []) + [sys.executable, DAEMON] + args
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 10.0) -> "DsmProcess":
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError("DSM exited with %s while starting:\n%s"
                                     % (self.proc.returncode, self.log_text()))
            info_path = os.path.join(self.run_dir, "dsm.json")
            if not os.path.exists(info_path):
                return False
            with open(info_path) as f:
                self.info = json.load(f)
            return self.info.get("pid") == self.proc.pid
        wait_for(ready, timeout, "the DSM to start")
        return self

    @property
    def query_port(self) -> int:
        return self.info["query_port"]

    @property
    def status_port(self) -> int:
        return self.info["status_port"]

    @property
    def statserv_port(self) -> int:
        return self.info["statserv_port"]

    @property
    def statserv_socket(self) -> str:
        return os.path.join(self.run_dir, "statserv.sock")

    def connect_statserv(self, unix: bool = False) -> socket.socket:
        """A Status Server connection (line protocol), TCP or the Unix socket."""
        if unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(self.statserv_socket)
            return sock
        return socket.create_connection((LOOPBACK, self.statserv_port), timeout=10)

    @property
    def unix_socket(self) -> str:
        return os.path.join(self.run_dir, "dsm.sock")

    def log_text(self) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def connect_query(self) -> socket.socket:
        return socket.create_connection((LOOPBACK, self.query_port), timeout=10)

    def query(self, data: bytes, unix: bool = False) -> bytes:
        """Sends `data`, half-closes, and returns everything the DSM sends before closing."""
        if unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(self.unix_socket)
        else:
            sock = self.connect_query()
        with sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return recv_all(sock)

    def query_json(self, letter: str) -> Any:
        reply = self.query(letter.encode())
        assert reply.endswith(END), reply[-200:]
        return json.loads(reply[:-1])

    def send_status(self, data: bytes) -> bytes:
        """The lab scripts' way: connect, send one message with no terminator, wait for `\\x04`."""
        with socket.create_connection((LOOPBACK, self.status_port), timeout=10) as sock:
            sock.sendall(data)
            return recv_until_end(sock)

    def announce(self, payload: bytes) -> None:
        send_announcement(payload, self.mcast_port)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Stops the process by its pid, whatever state it is in."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class DsmFactory:
    """Starts DSMs on free ports with `--interfaces lo` and private run and log dirs."""

    def __init__(self) -> None:
        self.processes: List[DsmProcess] = []
        self.dirs: List[str] = []

    def new_dirs(self) -> str:
        base = short_temp_dir()
        self.dirs.append(base)
        return base

    def start(self, *extra: str, wait: bool = True, run_dir: Optional[str] = None,
              mcast_port: Optional[int] = None, interfaces: str = "lo",
              env: Optional[Dict[str, str]] = None,
              prefix: Optional[List[str]] = None) -> DsmProcess:
        base = self.new_dirs()
        run_dir = run_dir or os.path.join(base, "run")
        log_dir = os.path.join(base, "logs")
        os.makedirs(log_dir, exist_ok=True)
        mcast_port = mcast_port or free_udp_port()
        args = ["--interfaces", interfaces, "--query-port", "0", "--status-port", "0",
                "--statserv-port", "0", "--http-port", "0", "--mcast-group", TEST_GROUP,
                "--mcast-port", str(mcast_port), "--run-dir", run_dir, "--log-dir", log_dir,
                "--state-dir", os.path.join(base, "state")] + list(extra)
        dsm = DsmProcess(args, run_dir, log_dir, mcast_port, env=env, prefix=prefix)
        self.processes.append(dsm)
        return dsm.wait_ready() if wait else dsm

    def cleanup(self) -> None:
        for dsm in self.processes:
            try:
                dsm.stop()
            except Exception:
                dsm.proc.kill()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)


_CLOCK_HOOK = """\
import os, time
_offset_file = os.environ.get("DSMT_CLOCK_OFFSET_FILE")
if _offset_file:
    def _offset():
        try:
            with open(_offset_file) as f:
                return float(f.read() or 0)
        except (OSError, ValueError):
            return 0.0
    def _shifted(real):
        return lambda: real() + _offset()
    time.time = _shifted(time.time)
    time.monotonic = _shifted(time.monotonic)  # time passing moves both clocks
"""


class ShiftedClock:
    """Moves a DSM's clocks forward, so tests of its 60 s and 24 h windows run for real without
    waiting: a sitecustomize on its PYTHONPATH adds the offset written in a file to time.time()
    and time.monotonic() (time passing; the DSM's windows and deadlines are monotonic). Start the
    DSM with `env=clock.env()`, then `clock.shift(seconds)`."""

    def __init__(self) -> None:
        self.dir = short_temp_dir()
        with open(os.path.join(self.dir, "sitecustomize.py"), "w") as f:
            f.write(_CLOCK_HOOK)
        self.offset_file = os.path.join(self.dir, "offset")
        self.shift(0)

    def env(self) -> Dict[str, str]:
        return dict(os.environ, PYTHONPATH=self.dir, DSMT_CLOCK_OFFSET_FILE=self.offset_file)

    def shift(self, seconds: float) -> None:
        with open(self.offset_file, "w") as f:
            f.write(str(seconds))

    def __enter__(self) -> "ShiftedClock":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def run_script(args: List[str], timeout: float = 30.0, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, universal_newlines=True,
                          **kwargs)
