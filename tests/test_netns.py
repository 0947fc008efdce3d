"""The DSM in its own network namespace with two veth interfaces, hearing announcements on both.

Needs root and a working `ip netns`; skipped otherwise. The test creates two namespaces of its own
(the DSM's and a peer's) joined by veth pairs with private addresses, and deletes them in a finally.
No real interface is touched: multicast goes only out of the peer ends of our own veths.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Callable, Dict, List, Tuple

import pytest

from dsm_harness import PACKAGE, TEST_GROUP, announcement, wait_for

SUFFIX = "%d%s" % (os.getpid() % 100000, uuid.uuid4().hex[:6])
NS = "dsmt-%s-d" % SUFFIX      # the DSM's namespace
PEER = "dsmt-%s-p" % SUFFIX    # the drives' side
# (DSM end, peer end, DSM address, peer address)
LINKS = {
    "a": ("veth-a", "peer-a", "10.199.1.1", "10.199.1.2"),
    "b": ("veth-b", "peer-b", "10.199.2.1", "10.199.2.2"),
    "c": ("veth-c", "peer-c", "10.199.3.1", "10.199.3.2"),  # brought up after the DSM starts
}

SENDER = r"""
import json, socket, sys
group, port = sys.argv[1], int(sys.argv[2])
for source, payload in json.loads(sys.argv[3]):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.bind((source, 0))
        sock.sendto(payload.encode(), (group, port))
"""


def run(args: List[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=20, universal_newlines=True)
    if check and result.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(args), result.returncode,
                                                      result.stderr.strip()))
    return result


def netns_works() -> bool:
    if os.geteuid() != 0:
        return False
    probe = "dsmt-probe-%s" % SUFFIX
    try:
        if run(["ip", "netns", "add", probe], check=False).returncode != 0:
            return False
        ok = run(["ip", "netns", "exec", probe, "true"], check=False).returncode == 0
        return ok and run(["ip", "-n", probe, "link", "add", "veth-x", "type", "veth", "peer",
                           "name", "veth-y"], check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        try:
            run(["ip", "netns", "del", probe], check=False)
        except (OSError, subprocess.SubprocessError):
            pass


pytestmark = pytest.mark.skipif(not netns_works(),
                                reason="needs root and a working `ip netns` (creating a namespace "
                                       "and a veth pair failed)")


def add_link(key: str) -> None:
    ours, theirs, our_addr, their_addr = LINKS[key]
    run(["ip", "-n", NS, "link", "add", ours, "type", "veth", "peer", "name", theirs,
         "netns", PEER])
    run(["ip", "-n", NS, "addr", "add", our_addr + "/24", "dev", ours])
    run(["ip", "-n", PEER, "addr", "add", their_addr + "/24", "dev", theirs])
    run(["ip", "-n", PEER, "link", "set", theirs, "up"])
    run(["ip", "-n", NS, "link", "set", ours, "up"])


def rx_packets(namespace: str, device: str) -> int:
    out = run(["ip", "-n", namespace, "-s", "-j", "link", "show", device]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


@pytest.fixture(scope="module")
def namespaces():
    """The DSM's namespace and the peer's, with veth-a and veth-b up; always deleted afterwards."""
    created: List[str] = []
    try:
        for name in (NS, PEER):
            run(["ip", "netns", "add", name])
            created.append(name)
            run(["ip", "-n", name, "link", "set", "lo", "up"])
            # No IPv6 chatter on our links: only our datagrams cross them.
            run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                 "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                check=False)
        add_link("a")
        add_link("b")
        yield NS, PEER
    finally:
        for name in created:
            run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def late_link(namespaces):
    """veth-c, created and brought up by the test after the DSM started; removed afterwards."""
    yield lambda: add_link("c")
    run(["ip", "-n", NS, "link", "del", "veth-c"], check=False)


def start_dsm(dsm_factory):
    dsm = dsm_factory.start(interfaces="veth-a,veth-b", prefix=["ip", "netns", "exec", NS])
    assert dsm.info["pid"] == dsm.pid
    return dsm


def m_of(dsm) -> Dict[str, Any]:
    """`m` through the Unix socket: a filesystem path, reachable from outside the namespace."""
    reply = dsm.query(b"m", unix=True)
    assert reply.endswith(b"\x04"), reply[-200:]
    return json.loads(reply[:-1])


def send_from_peer(port: int, items: List[Tuple[str, bytes]]) -> None:
    run(["ip", "netns", "exec", PEER, sys.executable, "-c", SENDER, TEST_GROUP, str(port),
         json.dumps([[source, payload.decode()] for source, payload in items])])


def announce_until(dsm, items: List[Tuple[str, bytes]], serials: List[str],
                   condition: Callable[[Dict[str, Any]], bool] = lambda m: True,
                   attempts: int = 5) -> Dict[str, Any]:
    """Sends `items` from the peer until `m` holds every serial and `condition(m)` (bounded)."""
    def done() -> Any:
        drives = m_of(dsm)
        return drives if all(s in drives for s in serials) and condition(drives) else None
    for attempt in range(attempts):
        send_from_peer(dsm.mcast_port, items)
        try:
            return wait_for(done, timeout=2, what="%s in m" % ", ".join(serials))
        except AssertionError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def drive_on(serial: str, address: str) -> bytes:
    return announcement(serial, network_interfaces=[
        {"name": "eth0", "mac_addr": "00:c9:58:01:aa:10", "ipv4_addr": address}])


def test_dsm_in_a_namespace_hears_drives_on_each_chosen_interface(namespaces, dsm_factory):
    dsm = start_dsm(dsm_factory)
    log = dsm.log_text()
    assert "veth-a (10.199.1.1)" in log and "veth-b (10.199.2.1)" in log, log
    drives = announce_until(dsm, [(LINKS["a"][3], drive_on("NSA", "10.199.1.2")),
                                  (LINKS["b"][3], drive_on("NSB", "10.199.2.2"))], ["NSA", "NSB"])
    assert set(drives) == {"NSA", "NSB"}
    assert drives["NSA"]["interface"] == "veth-a"
    assert drives["NSA"]["source_address"] == "10.199.1.2"
    assert drives["NSB"]["interface"] == "veth-b"
    assert drives["NSB"]["source_address"] == "10.199.2.2"
    assert drives["NSA"]["network_interfaces"][0]["ipv4_addr"] == "10.199.1.2"
    assert drives["NSB"]["network_interfaces"][0]["ipv4_addr"] == "10.199.2.2"
    # the same drive heard on the other interface: the newest announcement (and interface) wins
    drives = announce_until(dsm, [(LINKS["b"][3], drive_on("NSA", "10.199.2.2"))], ["NSA"],
                            lambda m: m["NSA"]["interface"] == "veth-b")
    assert drives["NSA"]["network_interfaces"][0]["ipv4_addr"] == "10.199.2.2"


def late_link_ignored(dsm, late_link) -> None:
    late_link()
    base = rx_packets(NS, "veth-c")
    # announcements out of veth-c first, then a marker out of veth-a
    send_from_peer(dsm.mcast_port, [(LINKS["c"][3], drive_on("NSC", "10.199.3.2"))] * 3)
    # they did reach the DSM's namespace on veth-c
    wait_for(lambda: rx_packets(NS, "veth-c") >= base + 3, timeout=5,
             what="the veth-c datagrams to arrive in the DSM's namespace")
    drives = announce_until(dsm, [(LINKS["a"][3], drive_on("MARK", "10.199.1.2"))], ["MARK"])
    assert "NSC" not in drives, drives.get("NSC")
    assert all(d["interface"] in ("veth-a", "veth-b") for d in drives.values())


def test_interface_brought_up_after_start_is_not_used(namespaces, dsm_factory, late_link):
    dsm = start_dsm(dsm_factory)
    late_link_ignored(dsm, late_link)


def test_late_interface_is_not_used_even_when_another_program_joins_the_group_on_it(
        namespaces, dsm_factory, late_link):
    dsm = start_dsm(dsm_factory)
    late_link()
    # MulticastListener.py, which the spec runs beside a DSM, joins the group on veth-c
    heard_by_a_listener_not_by_the_dsm(dsm, "c", "NSC", "10.199.3.2")


def heard_by_a_listener_not_by_the_dsm(dsm, link: str, serial: str, address: str) -> dict:
    """Sends `serial`'s announcement from the peer side of `link` while MulticastListener.py
    listens on veth-`link` in the namespace; the listener hears it there, `dsm` does not. Returns
    the DSM's `m` once it heard the marker drive MARK on veth-a."""
    iface = "veth-" + link
    err_path = os.path.join(tempfile.mkdtemp(prefix="dsmt"), "listener.err")
    with open(err_path, "wb") as err:
        listener = subprocess.Popen(
            ["ip", "netns", "exec", NS, sys.executable,
             os.path.join(PACKAGE, "MulticastListener.py"), "-t", "30", "--interfaces", iface,
             "--mcast-group", TEST_GROUP, "--mcast-port", str(dsm.mcast_port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        wait_for(lambda: listener.poll() is not None or "listening" in open(err_path).read(),
                 timeout=10, what="MulticastListener.py to listen")
        assert listener.poll() is None, open(err_path).read()
        send_from_peer(dsm.mcast_port, [(LINKS[link][3], drive_on(serial, address))] * 3)
        drives = announce_until(dsm, [(LINKS["a"][3], drive_on("MARK", "10.199.1.2"))], ["MARK"])
    finally:
        if listener.poll() is None:
            listener.send_signal(signal.SIGTERM)
        out, _ = listener.communicate(timeout=15)
    heard = json.loads(out)
    assert serial in heard and heard[serial]["interface"] == iface, heard  # they did arrive
    assert serial not in drives, drives.get(serial)
    return drives


def test_dsm_on_one_interface_hears_only_it_even_when_another_program_joins_another(
        namespaces, dsm_factory):
    # One interface: the DSM asks the kernel for no interface per datagram (sole_interface); the
    # kernel's own filter (IP_MULTICAST_ALL off) must keep every other interface's datagrams out.
    dsm = dsm_factory.start(interfaces="veth-a", prefix=["ip", "netns", "exec", NS])
    drives = heard_by_a_listener_not_by_the_dsm(dsm, "b", "NSB", "10.199.2.2")
    assert drives["MARK"]["interface"] == "veth-a"
    assert drives["MARK"]["source_address"] == "10.199.1.2"
