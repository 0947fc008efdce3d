"""End-to-end tests of the Status Server line protocol, on `--statserv-port` and on
`<run-dir>/statserv.sock`.

Every test talks to a real DSM process started on free loopback ports (see dsm_harness.py); every
wait is for a condition with a deadline, never a fixed sleep, and every loop is bounded.
"""
from __future__ import annotations

import os
import re
import socket
import time
from typing import Iterator, List, Tuple

import pytest

from DriveStateMonitor.statserv_tree import Tree
from dsm_harness import END, announcement, wait_for

TRANSPORTS = ["tcp", "unix"]
# The longest request line (statserv_protocol.MAX_LINE_BYTES, the default --max-line).
MAX_LINE = 8192
# A response to one request on an otherwise idle loopback DSM: generous, so a loaded CI host passes.
PROMPT_S = 2.0


# --- a line client --------------------------------------------------------------------------------
class LineClient:
    """One Status Server connection: sends request lines, reads responses up to their final `.` or
    `!` line, and keeps unsolicited `@`/`#` lines apart (with the monotonic time each arrived)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self.notices: List[Tuple[float, str]] = []

    def send(self, *lines: str) -> None:
        self.send_bytes("".join(line + "\n" for line in lines).encode("utf-8"))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_line(self, deadline: float) -> str:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no complete line before the deadline; have %r"
                                     % self._buffer[-200:])
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue  # the loop's deadline check reports it
            if not chunk:
                raise AssertionError("connection closed; unfinished data %r" % self._buffer[-200:])
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8")

    def _next_solicited(self, deadline: float) -> str:
        """The next response line; unsolicited lines met on the way go to `notices`."""
        while True:
            line = self._read_line(deadline)
            if line[:1] in ("@", "#"):
                self.notices.append((time.monotonic(), line))
                continue
            return line

    def response(self, timeout: float = 5.0) -> List[str]:
        """The lines of the next response, its final `.` or `!` line last."""
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            line = self._next_solicited(deadline)
            lines.append(line)
            if line[:1] in (".", "!"):
                return lines
            assert line[:1] == "*", "unexpected response line %r" % line

    def request(self, line: str, timeout: float = 5.0) -> List[str]:
        self.send(line)
        return self.response(timeout)

    def ask(self, line: str, timeout: float = 5.0) -> str:
        """A one-line response (`. payload` or `! CODE text`)."""
        lines = self.request(line, timeout)
        assert len(lines) == 1, lines
        return lines[0]

    def wait_notice(self, text: str, timeout: float = 5.0) -> float:
        """Waits for the unsolicited line `text` (no request may be outstanding); returns when it
        arrived and removes it from `notices`."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (arrived, line) in enumerate(self.notices):
                if line == text:
                    del self.notices[index]
                    return arrived
            line = self._read_line(deadline)
            assert line[:1] in ("@", "#"), "a response %r with no request outstanding" % line
            self.notices.append((time.monotonic(), line))

    def sync(self) -> None:
        """A round trip: every unsolicited line queued before it has been read afterwards."""
        assert self.ask("PWD")[:1] == "."

    def notice_lines(self) -> List[str]:
        return [line for _, line in self.notices]

    def read_until_closed(self, timeout: float = 5.0) -> bytes:
        """Everything still sent, up to the server's close."""
        deadline = time.monotonic() + timeout
        data, self._buffer = self._buffer, b""
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the server did not close the connection; got %r" % data[-200:]
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients() -> Iterator[List[LineClient]]:
    opened: List[LineClient] = []
    yield opened
    for client in opened:
        client.close()


@pytest.fixture
def open_client(clients):
    """open_client(dsm, transport) -> a LineClient, closed when the test ends."""
    def open_(dsm, transport: str) -> LineClient:
        client = LineClient(dsm.connect_statserv(unix=transport == "unix"))
        clients.append(client)
        return client
    return open_


def state_dir_of(dsm) -> str:
    """The `--state-dir` the harness gave this DSM."""
    args = dsm.args
    return args[args.index("--state-dir") + 1]


def get(client: LineClient, name: str) -> str:
    return client.ask("GET " + name)


# --- pipelining -----------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pipelined_requests_in_one_send_get_responses_in_request_order(dsm, open_client, transport):
    client = open_client(dsm, transport)
    requests = ["TOUCHDIR /pipe", "CD /pipe", "PWD", "TOUCH counter TYPE=int"]
    expected = [["."], ["."], [". /pipe"], ["."]]
    for number in range(100):
        requests += ["PUT counter %d" % number, "GET counter"]
        expected += [["."], ['. "%d"' % number]]
    requests += ["GET /pipe/absent", "PUT counter not-a-number", "LS", "CD /", "PWD"]
    client.send(*requests)  # one send: the DSM reads many requests at once

    responses = [client.response() for _ in requests]

    assert responses[:len(expected)] == expected
    absent, wrong_type, listing, cd_root, pwd = responses[len(expected):]
    assert absent[0].startswith("! NONEXISTENT")
    assert wrong_type[0].startswith("! TYPE")
    assert listing == ['* counter = "99"', "."]
    assert cd_root == ["."] and pwd == [". /"]
    assert client.notices == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_that_half_closes_gets_every_response_as_with_nc(dsm, open_client, transport):
    client = open_client(dsm, transport)
    # CRLF and lower case as typed by hand; the last line has no line ending at all.
    client.send_bytes(b"touch /nc/x type=INT comment='by hand'\r\nput /nc/x 7\r\nget /nc/x")
    client.sock.shutdown(socket.SHUT_WR)

    assert client.read_until_closed() == b'.\n.\n. "7"\n'


# --- monitors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_put_on_one_connection_notifies_monitor_on_another_and_updates_gives_value(
        dsm, open_client, transport):
    writer, watcher = open_client(dsm, transport), open_client(dsm, transport)
    assert writer.ask("TOUCH /lab/rack1/temp TYPE=float") == "."
    assert watcher.ask("MONITOR /lab/rack1/temp") == ". UNDEFINED"

    assert writer.ask("PUT /lab/rack1/temp 21.5") == "."

    watcher.wait_notice("@ /lab/rack1/temp", timeout=PROMPT_S)
    assert watcher.request("UPDATES") == ['* /lab/rack1/temp = "21.5"', "."]
    assert watcher.request("UPDATES") == ["."]  # collected: nothing new


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_several_puts_before_collection_give_one_notice_and_updates_gives_newest(
        dsm, open_client, transport):
    writer, watcher = open_client(dsm, transport), open_client(dsm, transport)
    assert writer.ask("TOUCH /lab/fan") == "."
    assert watcher.ask("MONITOR /lab/fan") == ". UNDEFINED"

    for value in ("slow", "medium", "fast", "max"):
        assert writer.ask("PUT /lab/fan " + value) == "."
    # Each PUT is answered after the DSM queued its notices, so one round trip on the watcher's own
    # connection brings every `@` line the PUTs caused.
    watcher.sync()

    assert watcher.notice_lines() == ["@ /lab/fan"]
    assert watcher.request("UPDATES") == ['* /lab/fan = "max"', "."]
    # Collected: the next change notifies again.
    assert writer.ask("PUT /lab/fan off") == "."
    watcher.wait_notice("@ /lab/fan", timeout=PROMPT_S)
    assert get(watcher, "/lab/fan") == '. "off"'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_autoexpire_object_reads_expired_and_notifies_when_its_owner_disconnects(
        dsm, open_client, transport):
    owner, watcher = open_client(dsm, transport), open_client(dsm, transport)
    assert owner.ask("TOUCH /jobs/run42/alive AUTOEXPIRE=1") == "."
    assert owner.ask("PUT /jobs/run42/alive yes") == "."
    assert watcher.ask("MONITOR /jobs/run42/alive") == '. "yes"'

    owner.close()

    watcher.wait_notice("@ /jobs/run42/alive", timeout=PROMPT_S)
    assert get(watcher, "/jobs/run42/alive") == ". EXPIRED"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_object_of_a_connection_that_stays_open_does_not_autoexpire(dsm, open_client, transport):
    owner, other, watcher = (open_client(dsm, transport) for _ in range(3))
    assert owner.ask("TOUCH /jobs/run43/alive AUTOEXPIRE=1") == "."
    assert owner.ask("PUT /jobs/run43/alive yes") == "."
    assert other.ask("TOUCH /jobs/run44/alive AUTOEXPIRE=1") == "."
    assert watcher.ask("MONITOR /jobs/run44/alive") == ". UNDEFINED"

    other.close()  # a different connection closing must expire only its own objects

    watcher.wait_notice("@ /jobs/run44/alive", timeout=PROMPT_S)
    assert get(watcher, "/jobs/run44/alive") == ". EXPIRED"
    assert get(watcher, "/jobs/run43/alive") == '. "yes"'


@pytest.mark.parametrize("command", ["TOUCH", "PUT"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lifetime_expiry_notifies_monitor_with_no_one_reading(dsm, open_client, transport, command):
    writer, watcher = open_client(dsm, transport), open_client(dsm, transport)
    lifetime = 0.3
    if command == "TOUCH":
        started = time.monotonic()
        assert writer.ask("TOUCH /ttl/object LIFETIME=%g" % lifetime) == "."
        initial = ". UNDEFINED"
    else:
        assert writer.ask("TOUCH /ttl/object") == "."
        started = time.monotonic()
        assert writer.ask("PUT /ttl/object fresh LIFETIME=%g" % lifetime) == "."
        initial = '. "fresh"'
    assert watcher.ask("MONITOR /ttl/object") == initial, "expired before the monitor started"

    # Nobody sends anything now: only the DSM's own timer can make the `@` line come.
    arrived = watcher.wait_notice("@ /ttl/object", timeout=lifetime + 3.0)

    late = arrived - (started + lifetime)
    assert late > -0.05, "expired %.3f s before its lifetime ran out" % -late
    assert late < 0.5, "expired %.3f s after its lifetime ran out" % late
    assert get(watcher, "/ttl/object") == ". EXPIRED"


# --- drive data in the tree -----------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drive_announcement_is_published_under_drives_serial(dsm, open_client, transport):
    client = open_client(dsm, transport)
    dsm.announce(announcement("ZA10F3K2", firmware_version="3.1.9"))

    wait_for(lambda: get(client, "/drives/ZA10F3K2/model") == '. "ST4000NK0001"', 5.0,
             "the announcement in the tree")

    assert get(client, "/drives/ZA10F3K2/firmware_version") == '. "3.1.9"'
    assert get(client, "/drives/ZA10F3K2/port") == '. "8123"'
    assert get(client, "/drives/ZA10F3K2/interfaces/eth0/ipv4_addr") == '. "10.20.30.41"'
    assert get(client, "/drives/ZA10F3K2/interfaces/eth0/mac_addr") == '. "00:c9:58:01:aa:10"'
    last_seen = get(client, "/drives/ZA10F3K2/last_seen")
    assert re.match(r'\. "[^"]+"\Z', last_seen), last_seen
    drive = dsm.query_json("m")["ZA10F3K2"]
    assert last_seen == '. "%s"' % drive["last_seen"]
    listing = client.request("LS /drives/ZA10F3K2")
    assert "* interfaces/" in listing and '* model = "ST4000NK0001"' in listing
    assert get(client, "/drives/ZA10F3K2/state") == '. "alive"'
    assert "* lifetime=60" in client.request("STAT /drives/ZA10F3K2/state")  # --drive-lifetime
    assert "* lifetime=0" in client.request("STAT /drives/ZA10F3K2/model")
    assert client.ask("PUT /drives/ZA10F3K2/model X").startswith("! DENIED")
    assert get(client, "/drives/ZA10F3K2/model") == '. "ST4000NK0001"'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_silent_drive_reads_expired_fires_monitor_and_revives_on_next_announcement(
        dsm_factory, open_client, transport):
    dsm = dsm_factory.start("--drive-lifetime", "0.5")
    watcher = open_client(dsm, transport)
    drive = "/drives/SILENT01"
    assert watcher.ask("MONITOR " + drive) == ". NONEXISTENT"

    dsm.announce(announcement("SILENT01"))
    watcher.wait_notice("@ " + drive, timeout=5.0)
    assert '* /drives/SILENT01/state = "alive"' in watcher.request("UPDATES")  # collects
    last_seen = get(watcher, drive + "/last_seen")

    # The drive now falls silent: the DSM's timer changes one object, state, with nobody reading.
    watcher.wait_notice("@ " + drive, timeout=3.0)
    assert watcher.request("UPDATES") == ['* /drives/SILENT01/state = "expired"', "."]
    assert get(watcher, drive + "/model") == '. "ST4000NK0001"'
    assert get(watcher, drive + "/interfaces/eth0/ipv4_addr") == '. "10.20.30.41"'
    assert get(watcher, drive + "/last_seen") == last_seen  # still when it was last heard
    assert dsm.query_json("m")["SILENT01"]["state"] == "expired"
    watcher.sync()
    assert watcher.notices == []  # one notice for the silence, not one per object

    dsm.announce(announcement("SILENT01"))

    watcher.wait_notice("@ " + drive, timeout=5.0)
    assert get(watcher, drive + "/state") == '. "alive"'
    assert dsm.query_json("m")["SILENT01"]["state"] == "alive"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drive_that_keeps_announcing_never_reads_expired(dsm_factory, open_client, transport):
    lifetime = 0.5
    dsm = dsm_factory.start("--drive-lifetime", str(lifetime))
    pacer, watcher = open_client(dsm, transport), open_client(dsm, transport)
    dsm.announce(announcement("KEEP01", sequence=0))
    wait_for(lambda: get(pacer, "/drives/KEEP01/sequence") == '. "0"', 5.0,
             "the first announcement")
    assert watcher.ask("MONITOR /drives/KEEP01/state") == '. "alive"'

    # Announce for three lifetimes, each announcement once the previous one is in the tree: the
    # drive stays alive the whole time.
    started = time.monotonic()
    sequence = 0
    while time.monotonic() < started + 3 * lifetime and sequence < 5000:
        sequence += 1
        dsm.announce(announcement("KEEP01", sequence=sequence))
        wait_for(lambda sequence=sequence: get(pacer, "/drives/KEEP01/sequence") == '. "%d"' % sequence, 2.0,
                 "announcement %d in the tree" % sequence)
    last_announced = time.monotonic()

    watcher.sync()
    assert watcher.notices == [], "state changed while the drive kept announcing"
    assert dsm.query_json("m")["KEEP01"]["state"] == "alive"
    # Silent from now on: it expires one lifetime after the last announcement.
    arrived = watcher.wait_notice("@ /drives/KEEP01/state", timeout=lifetime + 3.0)
    assert lifetime - 0.05 < arrived - last_announced < lifetime + 0.5
    assert get(watcher, "/drives/KEEP01/state") == '. "expired"'
    assert get(watcher, "/drives/KEEP01/model") == '. "ST4000NK0001"'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_minperiod_delivers_the_latest_value_when_the_period_ends_with_no_one_reading(
        dsm, open_client, transport):
    writer, watcher = open_client(dsm, transport), open_client(dsm, transport)
    period = 0.4
    assert writer.ask("TOUCH /lab/load TYPE=int") == "."
    assert watcher.ask("MONITOR /lab/load MINPERIOD=%g" % period) == ". UNDEFINED"
    assert writer.ask("PUT /lab/load 1") == "."
    first = watcher.wait_notice("@ /lab/load", timeout=PROMPT_S)
    assert watcher.request("UPDATES") == ['* /lab/load = "1"', "."]

    for value in (2, 3, 4):  # inside the quiet period: no notice yet
        assert writer.ask("PUT /lab/load %d" % value) == "."
    watcher.sync()
    if time.monotonic() < first + period:
        assert watcher.notices == [], "notified inside the quiet period"

    second = watcher.wait_notice("@ /lab/load", timeout=period + 3.0)
    assert period - 0.05 < second - first < period + 0.5
    assert watcher.request("UPDATES") == ['* /lab/load = "4"', "."]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_trace_shows_other_clients_commands_as_hash_lines(dsm, open_client, transport):
    tracer, client = open_client(dsm, transport), open_client(dsm, transport)
    assert tracer.ask("TRACE") == "."
    assert client.ask("REGISTER 4242 burnin") == "."

    assert client.ask("TOUCH /traced/x") == "."

    tracer.wait_notice("# burnin[4242] TOUCH /traced/x", timeout=PROMPT_S)
    assert tracer.ask("UNTRACE") == "."
    assert client.ask("TOUCH /traced/y") == "."
    tracer.sync()
    assert not any("/traced/y" in line for line in tracer.notice_lines())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_status_report_is_published_as_status_and_time_stamp(dsm, open_client, transport):
    client = open_client(dsm, transport)
    assert dsm.send_status(b'{"serial_number": "ST77", "time_stamp": 1433341321.5, '
                           b'"status": "002"}') == END
    assert get(client, "/drives/ST77/status") == '. "002"'
    assert get(client, "/drives/ST77/time_stamp") == '. "1433341321.5"'
    assert "* lifetime=0" in client.request("STAT /drives/ST77/status")  # no expiry for statuses

    assert dsm.send_status(b"{'serial_number': 'ST77', 'time_stamp': 1433341399, "
                           b"'status': '003'}") == END

    assert get(client, "/drives/ST77/status") == '. "003"'
    assert get(client, "/drives/ST77/time_stamp") == '. "1433341399"'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_w_query_removes_drives_but_not_clients_own_objects(dsm, open_client, transport):
    client, watcher = open_client(dsm, transport), open_client(dsm, transport)
    dsm.announce(announcement("WIPE01"))
    assert dsm.send_status(b'{"serial_number": "WIPE02", "time_stamp": 1, "status": "001"}') == END
    wait_for(lambda: get(client, "/drives/WIPE01/model") == '. "ST4000NK0001"', 5.0,
             "the announcement in the tree")
    assert client.ask("TOUCH /mine/note") == "."
    assert client.ask("PUT /mine/note keep") == "."
    assert watcher.ask("MONITOR /drives/WIPE02/status") == '. "001"'

    wiped = dsm.query_json("w")["wiped"]

    assert wiped["drives"] == 1 and wiped["status_serials"] == 1
    watcher.wait_notice("@ /drives/WIPE02/status", timeout=PROMPT_S)
    assert get(client, "/drives/WIPE01/model").startswith("! NONEXISTENT")
    assert get(client, "/drives/WIPE02/status").startswith("! NONEXISTENT")
    assert client.ask("LS /drives") == "."  # the mount point stays, empty
    assert get(client, "/mine/note") == '. "keep"'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dsm_facts_hold_pid_and_version_and_are_republished(dsm, open_client, transport):
    client = open_client(dsm, transport)

    assert get(client, "/dsm/pid") == '. "%d"' % dsm.pid
    assert get(client, "/dsm/version") == '. "%s"' % dsm.info["version"]
    # The counters are republished every second: this connection shows up in them.
    wait_for(lambda: re.match(r'\. "[1-9]', get(client, "/dsm/counters/connections_statserv")),
             5.0, "/dsm/counters/connections_statserv to count this connection")


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_line_longer_than_the_limit_gets_toolong_and_connection_stays_usable(
        dsm, open_client, transport):
    client = open_client(dsm, transport)
    at_limit = "GET /" + "a" * (MAX_LINE - len("GET /"))
    over_limit = at_limit + "a"

    assert client.ask(at_limit).startswith("! NONEXISTENT")  # exactly the limit: a request
    assert client.ask(over_limit).startswith("! TOOLONG")
    client.send_bytes(b"PUT /x " + b"v" * 200_000 + b"\nPWD\n")  # arrives in many pieces
    assert client.response()[0].startswith("! TOOLONG")
    assert client.response() == [". /"]
    assert client.ask("TOUCH /after/toolong") == "."
    assert client.notices == []


BAD_LINES = [
    pytest.param(b"\x00\x01\x02\xff garbage\n", id="binary-garbage"),
    pytest.param(b"FROBNICATE /x\n", id="unknown-command"),
    pytest.param(b"GET /caf\xc3\n", id="invalid-utf8"),
    pytest.param(b"GET /a%zzb\n", id="bad-percent-escape"),
    pytest.param(b"GET /a%4\n", id="truncated-percent-escape"),
    pytest.param(b"PUT /x 'unterminated\n", id="unterminated-quote"),
    pytest.param(b"GET\n", id="missing-argument"),
    pytest.param(b"GET /a /b\n", id="too-many-arguments"),
]


@pytest.mark.parametrize("line", BAD_LINES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_malformed_request_gets_syntax_and_daemon_keeps_serving(dsm, open_client, transport, line):
    client = open_client(dsm, transport)

    client.send_bytes(line + b"PWD\n")

    error = client.response()
    assert len(error) == 1 and error[0].startswith("! SYNTAX "), error
    assert client.response() == [". /"]
    assert open_client(dsm, transport).ask("GET /dsm/pid") == '. "%d"' % dsm.pid
    assert dsm.proc.poll() is None


def test_percent_escape_decodes_a_space_inside_a_value(dsm, open_client):
    client = open_client(dsm, "tcp")
    assert client.ask("TOUCH /esc/value") == "."
    assert client.ask("PUT /esc/value two%20words%25") == "."
    assert get(client, "/esc/value") == '. "two words%"'


# --- SAVE -----------------------------------------------------------------------------------------
SAVE_SETUP = [
    "TOUCH /save/text COMMENT='a comment'",
    "PUT /save/text 'hello world'",
    "TOUCH /save/integer TYPE=int",
    "PUT /save/integer 42",
    "TOUCH /save/real TYPE=float",
    "PUT /save/real 10",
    "TOUCH /save/flag TYPE=bool",
    "PUT /save/flag yes",
    "TOUCH /save/quoted",
    "PUT /save/quoted 'say \"hi\"'",
    "TOUCH /save/pending",
    "TOUCHDIR /save/empty COMMENT=nothing%20yet",
]


def save_through(client: LineClient, *arguments: str) -> None:
    for request in SAVE_SETUP:
        assert client.ask(request) == ".", request
    assert client.ask(" ".join(("SAVE",) + arguments)) == "."


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_save_without_a_file_name_writes_statserv_save_into_the_saves_dir(
        dsm, open_client, transport):
    client = open_client(dsm, transport)

    save_through(client)

    with open(os.path.join(state_dir_of(dsm), "saves", "statserv.save"), encoding="utf-8") as file:
        assert "/save/integer = 42\n" in file.read()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_save_writes_cfht_format_that_loads_back_to_the_same_dump(dsm, open_client, transport):
    client = open_client(dsm, transport)
    # Drive data brings floats and text with quotes, tabs and non-ASCII.
    dsm.announce(announcement("SAVE01", location='Rack "7"\tS\u00fcd \u2013 left',
                              temperature=41.25))
    wait_for(lambda: get(client, "/drives/SAVE01/temperature").startswith('. "'), 5.0,
             "the announcement in the tree")

    save_through(client, "FILE=snapshot.save")

    with open(os.path.join(state_dir_of(dsm), "saves", "snapshot.save"), encoding="utf-8") as file:
        text = file.read()
    lines = text.splitlines()
    assert '/save/text = "hello world"  # a comment' in lines
    assert "/save/integer = 42" in lines
    assert "/save/real = 10." in lines
    assert "/save/flag = TRUE" in lines
    assert '/save/quoted = "say \\"hi\\""' in lines
    assert "/save/pending = UNDEFINED" in lines
    assert "/save/empty/  # nothing yet" in lines
    assert "/dsm/pid = %d" % dsm.pid in lines
    assert '/drives/SAVE01/location = "Rack \\"7\\"\\tS\u00fcd \u2013 left"' in lines
    assert "/drives/SAVE01/temperature = 41.25" in lines
    for line in lines:
        assert re.match(r"/\S* = \S|/\S*/  # ", line), line
    assert Tree.load(text).dump() == text
    assert [name for name in os.listdir(os.path.join(state_dir_of(dsm), "saves"))] == [
        "snapshot.save"]  # no temporary file left


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_save_outside_the_state_dir_is_denied(dsm, open_client, transport):
    client = open_client(dsm, transport)
    assert client.ask("SAVE ../escape.save").startswith("! DENIED")
    assert client.ask("SAVE /tmp/escape.save").startswith("! DENIED")
    assert not os.path.exists(os.path.join(os.path.dirname(state_dir_of(dsm)), "escape.save"))


# --- ending -------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_shutdown_from_the_own_user_on_the_unix_socket_stops_the_daemon_with_exit_code_0(
        dsm, open_client, transport):
    # SHUTDOWN is taken only on the Unix socket (issue 10): the bystander may be on either.
    client, bystander = open_client(dsm, "unix"), open_client(dsm, transport)
    assert bystander.ask("PWD") == ". /"

    client.send("SHUTDOWN")

    assert client.read_until_closed() == b""  # no response to SHUTDOWN
    assert dsm.wait_exit() == 0
    assert bystander.read_until_closed() == b""
    assert not os.path.exists(dsm.statserv_socket)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_logoff_closes_the_connection_without_a_response(dsm, open_client, transport):
    client = open_client(dsm, transport)
    assert client.ask("TOUCH /logoff/owned AUTOEXPIRE=1") == "."

    client.send("LOGOFF", "PWD")

    assert client.read_until_closed() == b""
    other = open_client(dsm, transport)
    assert get(other, "/logoff/owned") == ". EXPIRED"  # its connection is gone
    assert dsm.proc.poll() is None


# --- slow clients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_that_monitors_many_objects_and_never_reads_does_not_stall_others(
        dsm, open_client, transport):
    names = ["/slow/%s%04d" % ("n" * 200, number) for number in range(200)]
    writer, idle = open_client(dsm, transport), open_client(dsm, transport)
    writer.send(*("TOUCH %s" % name for name in names))
    for name in names:
        assert writer.response() == ["."], name
    idle.send(*("MONITOR %s" % name for name in names))
    for name in names:
        assert idle.response() == [". UNDEFINED"], name
    assert writer.ask("TOUCH /slow/big") == "."
    assert writer.ask("PUT /slow/big " + "b" * 4000) == "."
    # The idle client also pipelines far more than it reads: ~8 MB of responses it never takes.
    idle.send(*(["GET /slow/big"] * 2000))

    slowest = 0.0
    for round_number in range(2):
        for name in names:  # 400 PUTs, each to a name the idle client monitors
            started = time.monotonic()
            assert writer.ask("PUT %s v%d" % (name, round_number), timeout=PROMPT_S) == "."
            slowest = max(slowest, time.monotonic() - started)

    assert slowest < PROMPT_S
    assert open_client(dsm, transport).ask("GET " + names[-1]) == '. "v1"'
    assert dsm.proc.poll() is None
    # Reading at last, the idle client gets its 2000 answers and one `@` line per name: the second
    # round of PUTs coalesced into the first round's notices.
    for _ in range(2000):
        assert idle.response(timeout=10.0)[0].startswith('. "bbb')
    idle.sync()
    assert sorted(idle.notice_lines()) == sorted("@ " + name for name in names)
    updates = idle.request("UPDATES", timeout=10.0)
    assert updates[:-1] == sorted('* %s = "v1"' % name for name in names)
