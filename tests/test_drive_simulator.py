"""`dsmctl.py simulate`: drives in the real announcement shape, on loopback only by default, heard by a
real DSM (on `--interfaces lo`, free ports, a test group), flaky drives expiring and coming back,
statuses reported the old way, Ctrl-C exit 1. Every run is bounded by --rounds or a deadline."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys


from dsm_harness import PACKAGE, ROOT, TEST_GROUP, run_script, wait_for

sys.path.insert(0, ROOT)
from DriveStateMonitor import drive_simulator  # noqa: E402

DSMCTL = os.path.join(PACKAGE, "dsmctl.py")
SPEC = os.path.join(os.path.dirname(ROOT), "shared", "spec", "kinetic-announcement.json")


def simulate_args(dsm, *extra: str):
    return [sys.executable, DSMCTL, "--host", "127.0.0.1", "--status-port", str(dsm.status_port),
            "simulate", "--mcast-group", TEST_GROUP, "--mcast-port", str(dsm.mcast_port)] + \
        list(extra)


# --- pure parts -----------------------------------------------------------------------------------
def test_drives_have_the_real_announcement_shape():
    drives = drive_simulator.make_drives(50, seed=3)
    if os.path.exists(SPEC):
        with open(SPEC) as f:
            real = json.load(f)
    else:  # the spec's example, for a checkout without ../shared
        real = {key: None for key in drive_simulator.make_drives(1, 0)[0]}
        real["network_interfaces"] = [{"ipv4_addr": "", "ipv6_addr": "", "mac_addr": "",
                                       "name": "eth0"}] * 2
    for drive in drives:
        assert set(drive) == set(real)
        assert len(drive["network_interfaces"]) == 2
        for interface, real_interface in zip(drive["network_interfaces"],
                                             real["network_interfaces"]):
            assert set(interface) == set(real_interface)
            socket.inet_aton(interface["ipv4_addr"])
        assert [i["name"] for i in drive["network_interfaces"]] == ["eth0", "eth1"]
        assert " " in drive["world_wide_name"]
    serials = [drive["serial_number"] for drive in drives]
    assert len(set(serials)) == 50
    assert drive_simulator.make_drives(50, seed=3) == drives
    assert drive_simulator.make_drives(50, seed=4) != drives


def addresses(drives):
    return {interface[key] for drive in drives for interface in drive["network_interfaces"]
            for key in ("ipv4_addr", "ipv6_addr", "mac_addr")}


def test_different_seeds_give_distinct_addresses_and_the_same_seed_the_same():
    """Two simulators on one DSM (two racks) must not show the same addresses for two drives."""
    seen = {}
    for seed in range(1, drive_simulator.SEED_NETWORKS + 1):
        drives = drive_simulator.make_drives(300, seed)
        found = addresses(drives)
        assert len(found) == 300 * 2 * 3  # unique within one simulation
        for address in found:
            assert seen.setdefault(address, seed) == seed, (address, seen[address], seed)
        assert addresses(drive_simulator.make_drives(300, seed)) == found
    # Seed 1 keeps the addresses the README shows.
    first = drive_simulator.make_drives(1, 1)[0]["network_interfaces"]
    assert [i["ipv4_addr"] for i in first] == ["10.20.30.1", "10.20.31.1"]
    assert addresses(drive_simulator.make_drives(3, 0)).isdisjoint(
        addresses(drive_simulator.make_drives(3, 1)))


def test_simulate_help_lists_its_own_options_not_every_global_one():
    result = run_script([sys.executable, DSMCTL, "simulate", "--help"])
    assert result.returncode == 0
    options = {word.rstrip(",") for line in result.stdout.splitlines()
               if line.strip().startswith("-")  # an option's own line, not its help text
               for word in line.strip().split("  ")[0].split() if word.startswith("--")}
    assert {"--drives", "--interval", "--seed", "--flaky", "--statuses", "--rounds", "--host",
            "--status-port"} <= options
    for other in ("--server", "--json", "--unix", "--query-port", "--request-timeout",
                  "--reconnect-timeout"):
        assert other not in options
    assert "get of a value" not in result.stdout  # its own exit codes, not get's


def test_flaky_drives_take_turns_falling_silent_and_coming_back():
    def silent(index, t):
        return drive_simulator.is_silent(index, 2, t, 10.0)
    assert not any(silent(i, t) for i in (2, 3) for t in range(0, 100))  # not flaky
    assert [silent(0, t) for t in (0, 9.9, 10, 19.9, 20, 30)] == \
        [False, False, True, True, False, True]
    assert not silent(1, 10) and silent(1, 15) and not silent(1, 25)  # staggered by half a turn


def test_statuses_walk_through_the_lab_codes():
    drives = drive_simulator.make_drives(2, seed=1)
    seen = [drive_simulator.status_for_round(r, drives, 1) for r in range(16)]
    assert {s["serial_number"] for s in seen} == {d["serial_number"] for d in drives}
    assert [s["status"] for s in seen[:8:2]] == ["001", "002", "PASS", "000"]
    assert seen[12]["status"] in drive_simulator.FAILURE_STATUSES


def test_it_sends_on_loopback_only_by_default():
    parser = __import__("argparse").ArgumentParser()
    drive_simulator.add_arguments(parser)
    assert parser.parse_args([]).interface == "lo"
    with drive_simulator.open_sender("lo") as sock:
        chosen = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
        assert socket.inet_ntoa(chosen) == "127.0.0.1"
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1


# --- against a real DSM ---------------------------------------------------------------------------
def test_simulated_drives_and_statuses_reach_a_real_dsm(dsm):
    result = run_script(simulate_args(dsm, "--drives", "4", "--interval", "0.1", "--rounds", "8",
                                      "--statuses", "--seed", "7"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("simulating 4 drives")
    serials = {d["serial_number"] for d in drive_simulator.make_drives(4, seed=7)}
    drives = wait_for(lambda: dsm.query_json("m") if set(dsm.query_json("m")) == serials else None,
                      5, "the 4 simulated drives in m")
    assert all(drive["state"] == "alive" for drive in drives.values())
    statuses = dsm.query_json("s")
    assert set(statuses) == serials and all(len(h) == 2 for h in statuses.values())
    assert all(h[0]["status"] == "001" and h[1]["status"] == "002" for h in statuses.values())


def test_a_flaky_drive_expires_and_comes_back(dsm_factory, procs):
    dsm = dsm_factory.start("--drive-lifetime", "0.4")
    flaky = drive_simulator.make_drives(2, seed=5)[0]["serial_number"]
    proc = subprocess.Popen(simulate_args(dsm, "--drives", "2", "--flaky", "1", "--seed", "5",
                                          "--interval", "0.1", "--silence", "1.5",
                                          "--rounds", "100"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)

    def state():
        return dsm.query_json("m").get(flaky, {}).get("state")
    wait_for(lambda: state() == "alive", 5, "the flaky drive heard")
    wait_for(lambda: state() == "expired", 8, "the flaky drive to expire")
    wait_for(lambda: state() == "alive", 8, "the flaky drive to come back")
    proc.kill()


def test_ctrl_c_stops_it_with_exit_1(dsm, procs):
    proc = subprocess.Popen(simulate_args(dsm, "--drives", "1", "--interval", "0.1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    assert proc.stdout.readline().startswith(b"simulating 1 drive")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 1


def test_an_unusable_interface_is_exit_2_naming_the_option(dsm):
    result = run_script(simulate_args(dsm, "--interface", "nosuch0", "--rounds", "1"))
    assert result.returncode == 2
    assert "nosuch0" in result.stderr and "--interface" in result.stderr


def test_an_empty_drive_table_says_why_and_what_to_try(dsm):
    result = run_script([sys.executable, DSMCTL, "--unix", dsm.unix_socket, "m"])
    assert result.returncode == 0, result.stderr
    assert "no drives heard yet" in result.stderr
    assert "%s:%d" % (TEST_GROUP, dsm.mcast_port) in result.stderr
    assert "lo=127.0.0.1" in result.stderr
    assert "simulate --drives 5 --mcast-group %s --mcast-port %d" % (
        TEST_GROUP, dsm.mcast_port) in result.stderr


def test_statuses_that_cannot_be_reported_are_said_once_and_drives_go_on(dsm):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    result = run_script([sys.executable, DSMCTL, "--host", "127.0.0.1", "--status-port",
                         str(dead_port), "simulate", "--mcast-group", TEST_GROUP, "--mcast-port",
                         str(dsm.mcast_port), "--drives", "2", "--statuses", "--interval", "0.05",
                         "--rounds", "5"])
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("cannot report a status") == 1, result.stderr
    assert len(wait_for(lambda: dsm.query_json("m") if len(dsm.query_json("m")) == 2 else None,
                        5, "both drives in m")) == 2
