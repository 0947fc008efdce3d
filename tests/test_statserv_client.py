"""The Status Server client library (statserv_client) against real DSMs, over TCP and the Unix socket:
every call, the error codes, values that need quoting and encoding, monitors across two clients,
and reconnecting with the replay of TOUCHDIR, TOUCH and MONITOR after the server restarts.

Pure tests of the encoding come first; the rest wait on conditions with deadlines, never sleeps.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Iterator, List

import pytest

from dsm_harness import LOOPBACK, announcement, free_tcp_port, wait_for
from DriveStateMonitor.statserv_client import (DIRECTORY, EXPIRED, NONEXISTENT, UNDEFINED,
                                               ErrorCode, StatServClient, encode_argument,
                                               is_valid, parse_address, parse_value)
from DriveStateMonitor.statserv_protocol import percent_decode, split_request

TRANSPORTS = ["tcp", "unix"]
AWKWARD_VALUES = [
    "plain", "two words", "  leading and trailing  ", "", 'double "quoted"', "single 'quoted'",
    "100%", "%41 is not A", "new\nline\r\ttab", "naïve café 日本語 🙂", "LIFETIME=5", "a=b c=d",
    "back\\slash \\n \\x41", "UNDEFINED", "EXPIRED", "# not a trace", "@ not a notice",
    "* not a line", ". not the end", "! NONEXISTENT not an error", "\x00\x01\x7f",
]


def updates_until(client: StatServClient, expected, timeout: float = 10.0):
    """Collects updates until `expected` (path, value) is among them; returns that batch."""
    return wait_for(lambda: (lambda batch: batch if expected in batch else None)(
        client.wait_for_updates(0.5) or []), timeout, "the update %r" % (expected,))


def address_of(dsm, transport: str) -> str:
    return dsm.statserv_socket if transport == "unix" else "%s:%d" % (LOOPBACK, dsm.statserv_port)


@pytest.fixture
def clients(dsm) -> Iterator[List[StatServClient]]:
    """Makes logged-on clients of the `dsm` fixture; logs them all off at the end."""
    made: List[StatServClient] = []

    def make(transport: str = "tcp", program: str = "pytest", **kwargs) -> StatServClient:
        client = StatServClient(program, address_of(dsm, transport), **kwargs)
        assert client.logon(), client.last_error_text
        made.append(client)
        return client
    yield make
    for client in made:
        client.logoff()


# --- encoding, no server -----------------------------------------------------------------------

@pytest.mark.parametrize("value", AWKWARD_VALUES)
def test_encoded_argument_is_one_argument_that_decodes_back(value):
    arguments = split_request(("PUT /x " + encode_argument(value)).encode("ascii"))
    assert len(arguments) == 3
    raw, equals_at = arguments[2]
    assert equals_at == -1  # never mistaken for KEY=value
    assert percent_decode(raw) == value


def test_encoded_argument_is_readable_when_it_can_be():
    assert encode_argument("/drives/ZA1/status") == "/drives/ZA1/status"
    assert encode_argument("two words") == '"two words"'
    assert encode_argument("") == '""'
    assert encode_argument('50% "x"=y') == '"50%25 %22x%22%3Dy"'


def test_parse_value_tells_words_from_strings():
    assert parse_value("UNDEFINED") is UNDEFINED
    assert parse_value("EXPIRED") is EXPIRED
    assert parse_value('"EXPIRED"') == "EXPIRED" and is_valid(parse_value('"EXPIRED"'))
    assert parse_value(r'"a \"b\"\n"') == 'a "b"\n'
    assert not is_valid(None) and not is_valid(UNDEFINED) and is_valid("")


def test_parse_address_forms():
    assert parse_address("/run/dsm/statserv.sock") == "/run/dsm/statserv.sock"
    assert parse_address("example:4000") == ("example", 4000)
    assert parse_address("example") == ("example", 3111)
    assert parse_address("[::1]:4000") == ("::1", 4000)
    with pytest.raises(ValueError):
        parse_address("example:http")


def test_address_defaults_to_the_statserv_variable(dsm, monkeypatch):
    monkeypatch.setenv("STATSERV", "%s:%d" % (LOOPBACK, dsm.statserv_port))
    client = StatServClient("pytest")
    assert client.address == "%s:%d" % (LOOPBACK, dsm.statserv_port)
    assert client.logon() and client.get("/dsm/pid") == str(dsm.pid)
    client.logoff()


# --- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_awkward_values_round_trip(clients, transport):
    client = clients(transport)
    assert client.touch("/test/value")
    for value in AWKWARD_VALUES:
        assert client.put("/test/value", value), (value, client.last_error_text)
        got = client.get("/test/value")
        assert got == value and is_valid(got), value
        assert client.last_error is ErrorCode.OK


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_comments_and_program_names_with_spaces_and_non_ascii(clients, transport):
    client = clients(transport, program="my test 🙂")
    assert client.touch("/test/c", comment='a "comment" with 100% of = signs, ü')
    assert client.stat("/test/c")["comment"] == 'a "comment" with 100% of = signs, ü'


def test_touch_makes_undefined_and_lifetime_makes_expired(clients):
    client = clients()
    assert client.touch("/test/t")
    assert client.get("/test/t") is UNDEFINED
    assert client.put("/test/t", "fresh", lifetime=0.2)
    assert client.get("/test/t") in ("fresh", EXPIRED)
    assert wait_for(lambda: client.get("/test/t") is EXPIRED, 5, "the value to expire")


def test_numbers_put_and_get(clients):
    client = clients()
    assert client.touch("/test/n")
    assert client.put_int("/test/n", 42) and client.get_int("/test/n") == 42
    assert client.put_float("/test/n", 2.0 / 3) and client.get("/test/n") == "0.666667"
    assert client.put_float("/test/n", 2.0 / 3, fmt="%.2f") and client.get_float("/test/n") == 0.67
    assert client.put("/test/n", 1.5) and client.get_float("/test/n") == 1.5
    assert client.put_string("/test/n", "x") and client.get_int("/test/n") is None
    assert client.last_error is ErrorCode.TYPE
    assert client.touch("/test/u") and client.get_float("/test/u") is None
    assert client.last_error is ErrorCode.TYPE and "UNDEFINED" in client.last_error_text


def test_typed_touch_checks_puts(clients):
    client = clients()
    assert client.touch("/test/i", type="int", comment="count", lifetime=30)
    assert client.put("/test/i", 7) and client.get("/test/i") == "7"
    assert client.put("/test/i", "seven") is False and client.last_error is ErrorCode.TYPE
    attributes = client.stat("/test/i")
    assert attributes["type"] == "int" and attributes["lifetime"] == 30.0
    assert client.touch("/test/b", type="bool") and client.put("/test/b", True)
    assert client.get("/test/b") == "TRUE"


def test_stat_parses_attributes(clients):
    client = clients(program="statter")
    assert client.touch("/test/s", comment="why", autoexpire=True)
    assert client.put("/test/s", "v w")
    attributes = client.stat("/test/s")
    assert attributes["name"] == "/test/s" and attributes["kind"] == "object"
    assert attributes["value"] == "v w" and attributes["comment"] == "why"
    assert attributes["autoexpire"] is True
    assert attributes["owner"] == "statter[%d]" % os.getpid()
    assert isinstance(attributes["revision"], int) and isinstance(attributes["time"], float)
    directory = client.stat("/test")
    assert directory["kind"] == "directory" and directory["entries"] == 1


# --- the tree ----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_touchdir_ls_remove_rmdir(clients, transport):
    client = clients(transport)
    assert client.touchdir("/app/sub", comment="holds things")
    assert client.touch("/app/b") and client.put("/app/b", "bee")
    assert client.ls("/app") == [("b", "bee"), ("sub", DIRECTORY)]
    assert ("app", DIRECTORY) in client.ls() and ("dsm", DIRECTORY) in client.ls()
    assert client.stat("/app/sub")["comment"] == "holds things"
    assert client.rmdir("/app") is False and client.last_error is ErrorCode.NOTEMPTY
    assert client.remove("/app/b") and client.rmdir("/app/sub") and client.rmdir("/app")
    assert client.ls("/app") is None and client.last_error is ErrorCode.NONEXISTENT


def test_relative_names_are_relative_to_the_root(clients):
    client = clients()
    assert client.touch("rel/x") and client.put("rel/./x", "1")
    assert client.get("/rel/x") == "1" and client.get("/rel/../rel/x") == "1"


@pytest.mark.parametrize("call, code", [
    (lambda c: c.get("/missing"), ErrorCode.NONEXISTENT),
    (lambda c: c.put("/missing", "x"), ErrorCode.NONEXISTENT),
    (lambda c: c.remove("/missing"), ErrorCode.NONEXISTENT),
    (lambda c: c.unmonitor("/dsm/pid"), ErrorCode.NONEXISTENT),
    (lambda c: c.get("/dsm"), ErrorCode.ISDIR),
    (lambda c: c.ls("/dsm/pid"), ErrorCode.NOTDIR),
    (lambda c: c.touchdir("/dsm/pid"), ErrorCode.EXISTS),
    (lambda c: c.rmdir("/"), ErrorCode.DENIED),
    (lambda c: c.get("/with space"), ErrorCode.SYNTAX),
    (lambda c: c.get("/naïve"), ErrorCode.SYNTAX),
    (lambda c: c.touch("/x", lifetime=-1), ErrorCode.SYNTAX),
    (lambda c: c.touch("/x", type="complex"), ErrorCode.TYPE),
    (lambda c: c.touch("/x") and c.put("/x", "v" * 5000), ErrorCode.TOOLONG),
    (lambda c: c.put("/x", "\ud800"), ErrorCode.SYNTAX),
], ids=["get-missing", "put-missing", "remove-missing", "unmonitor-unmonitored", "get-dir",
        "ls-object", "touchdir-object", "rmdir-root", "space-in-name", "non-ascii-name",
        "negative-lifetime", "unknown-type", "value-too-long", "lone-surrogate"])
def test_failures_return_false_or_none_and_set_the_code(clients, call, code):
    client = clients()
    assert call(client) in (None, False)
    assert client.last_error is code and client.last_error_text
    assert client.get("/dsm/pid") is not None  # the connection is still usable
    assert client.last_error is ErrorCode.OK and client.last_error_text == ""


# --- monitors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_monitor_sees_another_clients_puts(clients, transport):
    watcher, writer = clients(transport), clients("tcp")
    assert writer.touch("/m/x") and writer.put("/m/x", "one")
    assert watcher.monitor("/m/x") == "one"
    for value in ("two", "three", "naïve \"four\""):  # coalesced: only the latest is reported
        assert writer.put("/m/x", value)
    assert watcher.wait_for_updates(10) == [("/m/x", 'naïve "four"')]


def test_monitor_of_a_directory_reports_entries(clients):
    watcher, writer = clients(), clients()
    assert writer.touchdir("/m")
    assert watcher.monitor("/m") == []
    assert writer.touch("/m/new") and writer.touchdir("/m/sub")
    updates = dict(wait_for(lambda: watcher.wait_for_updates(0.5), 10, "updates"))
    if len(updates) < 2:
        updates.update(wait_for(lambda: watcher.wait_for_updates(0.5), 10, "more updates"))
    assert updates == {"/m/new": UNDEFINED, "/m/sub": DIRECTORY}
    assert writer.touch("/m/other")
    assert watcher.monitor("/m") == [("new", UNDEFINED), ("other", UNDEFINED), ("sub", DIRECTORY)]


def test_monitor_of_an_absent_name_reports_its_creation_and_removal(clients):
    watcher, writer = clients(), clients()
    assert watcher.monitor("/later/x") is NONEXISTENT
    assert writer.touch("/later/x") and writer.put("/later/x", "here")
    assert updates_until(watcher, ("/later/x", "here")) == [("/later/x", "here")]
    assert writer.put("/later/x", "here again") and writer.remove("/later/x")
    assert updates_until(watcher, ("/later/x", NONEXISTENT)) == [("/later/x", NONEXISTENT)]


def test_notices_read_during_other_calls_are_kept_for_wait_for_updates(clients):
    watcher, writer = clients(), clients()
    assert writer.touch("/m/y") and watcher.monitor("/m/y") is UNDEFINED
    assert writer.put("/m/y", "changed")
    # The server queued `@ /m/y` before the writer's answer, so it reaches the watcher before the
    # answer to its next request: the watcher reads it there and must remember it.
    assert watcher.ls("/") is not None
    assert watcher.wait_for_updates(0) == [("/m/y", "changed")]


def test_wait_for_updates_with_no_time_still_reads_what_has_arrived(clients):
    watcher, writer = clients(), clients()
    assert writer.touch("/m/z") and watcher.monitor("/m/z") is UNDEFINED
    assert writer.put("/m/z", "polled")
    assert wait_for(lambda: watcher.wait_for_updates(0), 10, "the update") == [("/m/z", "polled")]


def test_get_collects_a_monitored_object(clients):
    watcher, writer = clients(), clients()
    assert writer.touch("/m/g") and watcher.monitor("/m/g") is UNDEFINED
    assert writer.touch("/m/h") and watcher.monitor("/m/h") is UNDEFINED
    assert writer.put("/m/g", "1") and writer.put("/m/h", "2")
    assert watcher.get("/m/g") == "1"
    assert wait_for(lambda: watcher.wait_for_updates(1), 10, "updates") == [("/m/h", "2")]


def test_unmonitor_stops_the_reports(clients):
    watcher, writer = clients(), clients()
    assert writer.touch("/m/a") and writer.touch("/m/b")
    assert watcher.monitor("/m/a") is UNDEFINED and watcher.monitor("/m/b") is UNDEFINED
    assert watcher.unmonitor("/m/a")
    assert writer.put("/m/a", "ignored") and writer.put("/m/b", "seen")
    assert wait_for(lambda: watcher.wait_for_updates(1), 10, "updates") == [("/m/b", "seen")]


def test_wait_for_updates_returns_empty_at_its_timeout(clients):
    client = clients()
    assert client.monitor("/quiet") is NONEXISTENT
    started = time.monotonic()
    assert client.wait_for_updates(0.2) == []
    assert 0.15 <= time.monotonic() - started < 5
    assert client.last_error is ErrorCode.OK


def test_deadband_ignores_small_changes(clients):
    watcher, writer = clients(), clients()
    assert writer.touch("/m/f", type="float") and writer.put("/m/f", 1.0)
    assert watcher.monitor("/m/f", deadband=0.5, minperiod=0) == "1.0"
    assert writer.put("/m/f", 1.1) and writer.put("/m/f", 2.0)
    assert wait_for(lambda: watcher.wait_for_updates(1), 10, "updates") == [("/m/f", "2.0")]


def test_drive_announcement_reaches_a_monitor(dsm, clients):
    client = clients("unix")
    assert client.monitor("/drives") in ([], NONEXISTENT)
    dsm.announce(announcement("ZCLIENT1"))
    updates_until(client, ("/drives/ZCLIENT1", DIRECTORY))
    assert client.get("/drives/ZCLIENT1/model") == "ST4000NK0001"


def test_autoexpire_object_expires_when_its_owner_logs_off(clients):
    owner, other = clients(), clients()
    assert owner.touch("/m/alive", autoexpire=True) and owner.put("/m/alive", "yes")
    assert other.monitor("/m/alive") == "yes"
    owner.logoff()
    assert not owner.connected
    assert wait_for(lambda: other.wait_for_updates(1), 10, "the expiry") == [("/m/alive", EXPIRED)]


def test_trace_lines_are_skipped(clients):
    client = clients()
    assert client._request("TRACE") is not None  # no public call: the library never traces
    other = clients()
    assert other.touch("/traced") and other.put("/traced", "x")
    assert client.get("/traced") == "x" and client.ls("/") is not None


# --- connection failures and reconnecting ------------------------------------------------------

def test_logon_to_a_closed_port_fails_with_connection():
    client = StatServClient("pytest", "%s:%d" % (LOOPBACK, free_tcp_port()), reconnect_timeout=0)
    assert client.logon() is False and client.last_error is ErrorCode.CONNECTION
    assert client.get("/x") is None and client.last_error is ErrorCode.CONNECTION
    missing = StatServClient("pytest", "/nonexistent-dir/statserv.sock", reconnect_timeout=0)
    assert missing.logon() is False and missing.last_error is ErrorCode.CONNECTION


def test_a_server_that_does_not_answer_fails_with_timeout():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(1)
    listener.settimeout(10)
    held = []

    def answer_register_only() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        conn.settimeout(10)
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b".\n")  # REGISTER answered; everything after it is not

    thread = threading.Thread(target=answer_register_only, daemon=True)
    thread.start()
    try:
        client = StatServClient("pytest", "%s:%d" % listener.getsockname(), timeout=0.3,
                                reconnect_timeout=0)
        assert client.logon()
        started = time.monotonic()
        assert client.get("/x") is None and client.last_error is ErrorCode.TIMEOUT
        assert time.monotonic() - started < 5
        assert not client.connected  # a late answer must not be taken for the next call's
    finally:
        thread.join(10)
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reconnect_replays_touchdir_touch_and_monitor(dsm_factory, transport):
    port = free_tcp_port()
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    first = dsm_factory.start("--statserv-port", str(port), run_dir=run_dir)
    address = first.statserv_socket if transport == "unix" else "%s:%d" % (LOOPBACK, port)
    client = StatServClient("replayer", address, retry_pause=0.05, reconnect_timeout=15)
    assert client.logon()
    assert client.touchdir("/app", comment="the app's")
    assert client.touch("/app/state", comment="its state", type="int", autoexpire=True)
    assert client.put("/app/state", 1)
    assert client.monitor("/app/state") == "1"
    assert client.monitor("/app") == [("state", "1")]
    assert client.touch("/app/removed") and client.remove("/app/removed")  # not to be replayed

    first.stop()
    second = dsm_factory.start("--statserv-port", str(port), run_dir=run_dir)
    try:
        # The call in hand reconnects, replays, then runs on the new server.
        attributes = client.stat("/app/state")
        assert attributes is not None, client.last_error_text
        assert client.reconnects == 1
        assert attributes["comment"] == "its state" and attributes["type"] == "int"
        assert attributes["owner"] == "replayer[%d]" % os.getpid()  # TOUCH AUTOEXPIRE replayed
        assert attributes["monitors"] == 1                         # MONITOR replayed
        assert client.stat("/app")["comment"] == "the app's"       # TOUCHDIR replayed
        assert client.stat("/app")["monitors"] == 1
        assert client.ls("/app") == [("state", UNDEFINED)]
        # The monitored objects are reported, since they may have changed meanwhile.
        assert dict(client.wait_for_updates(0)) == {"/app/state": UNDEFINED}

        writer = StatServClient("writer", "%s:%d" % (LOOPBACK, second.statserv_port))
        assert writer.logon() and writer.put("/app/state", 2)
        assert wait_for(lambda: client.wait_for_updates(1), 10, "the update") == [
            ("/app/state", "2")]
        writer.logoff()
    finally:
        client.logoff()


def test_wait_for_updates_reconnects_and_reports_the_replayed_monitors(dsm_factory):
    port = free_tcp_port()
    run_dir = os.path.join(dsm_factory.new_dirs(), "run")
    first = dsm_factory.start("--statserv-port", str(port), run_dir=run_dir)
    client = StatServClient("waiter", "%s:%d" % (LOOPBACK, port), retry_pause=0.05,
                            reconnect_timeout=15)
    assert client.logon() and client.touch("/w/x") and client.put("/w/x", "old")
    assert client.monitor("/w/x") == "old"
    first.stop()
    dsm_factory.start("--statserv-port", str(port), run_dir=run_dir)
    try:
        assert client.wait_for_updates(10) == [("/w/x", UNDEFINED)]
        assert client.reconnects == 1
    finally:
        client.logoff()


def test_reconnect_gives_up_after_reconnect_timeout(dsm_factory):
    dsm = dsm_factory.start()
    client = StatServClient("pytest", "%s:%d" % (LOOPBACK, dsm.statserv_port), retry_pause=0.05,
                            reconnect_timeout=0.3)
    assert client.logon() and client.touch("/gone")
    dsm.stop()
    started = time.monotonic()
    assert client.get("/gone") is None and client.last_error is ErrorCode.CONNECTION
    assert 0.25 <= time.monotonic() - started < 5
    assert client.wait_for_updates(1) is None and client.last_error is ErrorCode.CONNECTION
