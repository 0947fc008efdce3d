"""The Status Server's line protocol, pure and in memory: bytes in, bytes out, a fake clock."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from DriveStateMonitor.statserv_protocol import COMMAND_NAMES, StatServSession
from DriveStateMonitor.statserv_tree import Tree


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Client:
    """A session plus what the loop would see of it."""

    def __init__(self, tree: Tree, clock: FakeClock, *, is_local: bool = True, **options) -> None:
        self.output_calls = 0
        self.shutdowns = 0
        self.session = StatServSession(tree, clock, is_local=is_local, on_output=self._on_output,
                                       on_shutdown=self._on_shutdown, **options)

    def _on_output(self) -> None:
        self.output_calls += 1

    def _on_shutdown(self) -> None:
        self.shutdowns += 1

    def send(self, text) -> str:
        """Send `text` (str or bytes) and return everything the session has to send."""
        self.session.receive_data(text.encode("utf-8") if isinstance(text, str) else text)
        return self.pending()

    def pending(self) -> str:
        return self.session.data_to_send().decode("utf-8")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def tree():
    return Tree()


@pytest.fixture
def client(tree, clock):
    return Client(tree, clock)


# -- commands -----------------------------------------------------------------------------------

def test_touch_put_get(client):
    assert client.send("TOUCH /a/b\n") == ".\n"
    assert client.send("GET /a/b\n") == ". UNDEFINED\n"
    assert client.send("PUT /a/b 42.0\n") == ".\n"
    assert client.send("GET /a/b\n") == '. "42.0"\n'


def test_commands_and_keywords_are_case_insensitive(client):
    assert client.send("touch /x type=INT\nput name=/x value=5\nget /x\n") == '.\n.\n. "5"\n'


def test_mixed_positional_and_keyword_arguments(client):
    assert client.send("REGISTER 124 foo\n") == ".\n"
    assert client.send("REGISTER PID=124 NAME=foo\n") == ".\n"
    assert client.send("REGISTER NAME=foo 124\n") == ".\n"
    assert client.send("TOUCH /k\nPUT VALUE=v /k\nGET /k\n") == '.\n.\n. "v"\n'
    assert client.send("PUT /k a=b\nGET /k\n") == '.\n. "a=b"\n'  # a= is no keyword of PUT


def test_argument_errors_are_syntax(client):
    assert client.send("REGISTER 124\n").startswith("! SYNTAX missing NAME")
    assert client.send("GET /a /b\n").startswith("! SYNTAX too many arguments")
    assert client.send("REGISTER PID=1 PID=2 x\n").startswith("! SYNTAX PID given twice")
    assert client.send("REGISTER abc foo\n").startswith("! SYNTAX")
    assert client.send("TOUCH /a LIFETIME=-1\n").startswith("! SYNTAX")
    assert client.send("TOUCH /a AUTOEXPIRE=2\n").startswith("! SYNTAX")
    assert client.send("MONITOR /a DEADBAND=x\n").startswith("! SYNTAX")


def test_quoting_and_url_decoding(client):
    client.send("TOUCH /q\n")
    assert client.send("PUT /q \"sample data\"\nGET /q\n") == '.\n. "sample data"\n'
    assert client.send("PUT /q 'it''s'\nGET /q\n") == '.\n. "its"\n'
    assert client.send("PUT /q a%20b%0Ac%22\nGET /q\n") == '.\n. "a b\\nc\\""\n'
    assert client.send("PUT /q caf%C3%A9\nGET /q\n") == '.\n. "caf\u00e9"\n'
    assert client.send("PUT /q \"\"\nGET /q\n") == '.\n. ""\n'
    assert client.send("TOUCH /c COMMENT=\"two words\"\nSTAT /c\n").count('comment="two words"') == 1


@pytest.mark.parametrize("line", [
    b"PUT /q %zz\n", b"PUT /q %4\n", b"PUT /q 100%\n", b"PUT /q %C3\n", b"PUT /q \xff\xfe\n",
    b"GET /caf%C3%A9\n", b"GET \"unterminated\n", b"GET /a%20b\n",
])
def test_malformed_escapes_bad_utf8_and_bad_names_are_syntax(client, line):
    client.send("TOUCH /q\n")
    assert client.send(line).startswith("! SYNTAX")


def test_unknown_command_names_help(client):
    assert client.send("FROB /x\n") == "! SYNTAX unknown command FROB; try HELP\n"


def test_help_lists_every_command(client):
    lines = client.send("HELP\n").splitlines()
    assert lines[-1] == "."
    assert [line.split()[1] for line in lines[:-1]] == list(COMMAND_NAMES)
    assert all(line.startswith("* ") for line in lines[:-1])


def test_pwd_and_cd_with_relative_names(client):
    client.send("TOUCHDIR /drives/A\n")
    assert client.send("PWD\n") == ". /\n"
    assert client.send("CD drives/A\nPWD\n") == ".\n. /drives/A\n"
    assert client.send("TOUCH status\nPUT ./status ok\nGET /drives/A/status\n") == '.\n.\n. "ok"\n'
    assert client.send("CD ..\nPWD\nCD ../../..\nPWD\n") == ".\n. /drives\n.\n. /\n"
    assert client.send("CD /nowhere\n").startswith("! NONEXISTENT")
    assert client.send("CD /drives/A/status\n").startswith("! NOTDIR")


def test_get_errors(client):
    client.send("TOUCHDIR /d\n")
    assert client.send("GET /nothing\n").startswith("! NONEXISTENT /nothing")
    assert client.send("GET /d\n").startswith("! ISDIR")


def test_put_errors(client):
    client.send("TOUCH /i TYPE=int\nTOUCHDIR /d\n")
    assert client.send("PUT /absent 1\n").startswith("! NONEXISTENT")
    assert client.send("PUT /i 1.5\n").startswith("! TYPE")
    assert client.send("PUT /d 1\n").startswith("! ISDIR")


def test_touch_and_touchdir_errors(tree, clock):
    client = Client(Tree(max_value_bytes=4, max_objects=2), clock)
    client.send("TOUCH /obj\n")
    assert client.send("TOUCH /obj/sub\n").startswith("! NOTDIR")
    assert client.send("TOUCHDIR /obj\n").startswith("! EXISTS")
    assert client.send("TOUCH /x TYPE=complex\n").startswith("! TYPE")
    assert client.send("TOUCH /x COMMENT=toolong\n").startswith("! TOOLONG")
    assert client.send("PUT /obj 12345\n").startswith("! TOOLONG")
    assert client.send("TOUCH /a/b\n").startswith("! LIMIT")


def test_stat_shows_every_attribute(client, clock):
    client.send("REGISTER 7 logger\n")
    client.send("TOUCH /s COMMENT=why LIFETIME=60 AUTOEXPIRE=1 TYPE=float\nPUT /s 1.5\n")
    lines = client.send("STAT /s\n").splitlines()
    assert lines == [
        "* name=/s", "* kind=object", "* type=float", '* value="1.5"', '* comment="why"',
        "* lifetime=60", "* autoexpire=1", "* owner=logger[7]", "* time=1000.000000",
        "* revision=2", "* usecount=2", "* monitors=0", ".",
    ]
    assert client.send("STAT /d\n").startswith("! NONEXISTENT")
    assert client.send("TOUCHDIR /d\nSTAT /d\n").splitlines()[2] == "* kind=directory"


def test_ls_lists_objects_and_directories(client):
    client.send("TOUCHDIR /d/sub\nTOUCH /d/a\nPUT /d/a 1\nTOUCH /d/u\n")
    assert client.send("LS /d\n") == '* a = "1"\n* sub/\n* u = UNDEFINED\n.\n'
    assert client.send("CD /d\nLS\n") == '.\n* a = "1"\n* sub/\n* u = UNDEFINED\n.\n'
    assert client.send("LS a\n").startswith("! NOTDIR")
    assert client.send("LS /none\n").startswith("! NONEXISTENT")


def test_remove_and_rmdir(client):
    client.send("TOUCH /d/a\n")
    assert client.send("RMDIR /d\n").startswith("! NOTEMPTY")
    assert client.send("REMOVE /d\n").startswith("! ISDIR")
    assert client.send("RMDIR /d/a\n").startswith("! NOTDIR")
    assert client.send("REMOVE /d/a\nRMDIR /d\nLS /\n") == ".\n.\n.\n"
    assert client.send("REMOVE /d/a\n").startswith("! NONEXISTENT")
    assert client.send("RMDIR /\n").startswith("! DENIED")


def test_value_words_undefined_expired_nonexistent(client, tree, clock):
    client.send("TOUCH /u\nTOUCH /e LIFETIME=5\n")
    assert client.send("GET /u\n") == ". UNDEFINED\n"
    clock.now += 5
    tree.expire_due(clock.now)
    assert client.send("GET /e\n") == ". EXPIRED\n"
    assert client.send("MONITOR /n\n") == ". NONEXISTENT\n"
    assert client.send("GET /n\n").startswith("! NONEXISTENT")


# -- monitors -----------------------------------------------------------------------------------

def test_monitor_answers_the_value_then_sends_one_at_line_until_collected(tree, clock):
    watcher, writer = Client(tree, clock), Client(tree, clock)
    writer.send("TOUCH /a\nPUT /a 1\n")
    assert watcher.send("MONITOR /a\n") == '. "1"\n'
    writer.send("PUT /a 2\nPUT /a 3\n")
    assert watcher.pending() == "@ /a\n"
    assert watcher.output_calls == 1
    assert watcher.send("UPDATES\n") == '* /a = "3"\n.\n'
    assert watcher.send("UPDATES\n") == ".\n"
    writer.send("PUT /a 4\n")
    assert watcher.pending() == "@ /a\n"
    assert watcher.send("GET /a\n") == '. "4"\n'  # GET collects too
    assert watcher.send("UPDATES\n") == ".\n"
    writer.send("PUT /a 5\n")
    assert watcher.pending() == "@ /a\n"


def test_own_changes_notify_without_calling_on_output(client):
    client.send("TOUCH /a\nMONITOR /a\n")
    assert client.send("PUT /a 1\n") == "@ /a\n.\n"
    assert client.output_calls == 0


def test_unmonitor_stops_notifications(tree, clock):
    watcher, writer = Client(tree, clock), Client(tree, clock)
    writer.send("TOUCH /a\n")
    watcher.send("MONITOR /a\n")
    assert watcher.send("UNMONITOR /a\n") == ".\n"
    writer.send("PUT /a 1\n")
    assert watcher.pending() == ""
    assert watcher.send("UNMONITOR /a\n").startswith("! NONEXISTENT")


def test_monitor_deadband_over_the_protocol(tree, clock):
    watcher, writer = Client(tree, clock), Client(tree, clock)
    writer.send("TOUCH /t TYPE=float\nPUT /t 20\n")
    watcher.send("MONITOR /t DEADBAND=0.5\n")
    writer.send("PUT /t 20.4\n")
    assert watcher.pending() == ""
    writer.send("PUT /t 20.6\n")
    assert watcher.pending() == "@ /t\n"


def test_monitor_minperiod_delivers_the_latest_value_when_the_period_ends(tree, clock):
    watcher, writer = Client(tree, clock), Client(tree, clock)
    writer.send("TOUCH /a\n")
    watcher.send("MONITOR /a MINPERIOD=2\n")
    writer.send("PUT /a 1\n")
    assert watcher.send("UPDATES\n") == '@ /a\n* /a = "1"\n.\n'
    clock.now += 0.5
    writer.send("PUT /a 2\nPUT /a 3\n")
    assert watcher.pending() == ""
    assert tree.next_deadline() == 1002.0
    clock.now = tree.next_deadline()
    tree.expire_due(clock.now)
    assert watcher.pending() == "@ /a\n"
    assert watcher.send("UPDATES\n") == '* /a = "3"\n.\n'


def test_directory_monitor_answers_the_listing_and_reports_changed_entries(tree, clock):
    watcher, writer = Client(tree, clock), Client(tree, clock)
    writer.send("TOUCH /d/a\n")
    assert watcher.send("MONITOR /d\n") == "* a = UNDEFINED\n.\n"
    writer.send("PUT /d/a x\nTOUCH /d/b\nTOUCHDIR /d/sub\n")
    assert watcher.pending() == "@ /d\n"
    assert watcher.send("UPDATES\n") == '* /d/a = "x"\n* /d/b = UNDEFINED\n* /d/sub/\n.\n'
    writer.send("REMOVE /d/b\n")
    assert watcher.send("LS /d\n") == '@ /d\n* a = "x"\n* sub/\n.\n'
    assert watcher.send("UPDATES\n") == ".\n"  # LS collected it


def test_expiry_fires_monitors_and_wakes_the_loop(tree, clock):
    watcher, writer = Client(tree, clock), Client(tree, clock)
    writer.send("TOUCH /hb LIFETIME=10\nPUT /hb up\n")
    watcher.send("MONITOR /hb\n")
    clock.now += 10
    assert tree.expire_due(clock.now) == 1
    assert watcher.pending() == "@ /hb\n"
    assert watcher.output_calls == 1
    assert watcher.send("UPDATES\n") == "* /hb = EXPIRED\n.\n"


def test_connection_lost_autoexpires_and_frees_what_the_session_held(tree, clock):
    owner, watcher = Client(tree, clock), Client(tree, clock)
    owner.send("TOUCH /job/state AUTOEXPIRE=1\nPUT /job/state running\nMONITOR /ghost\n")
    watcher.send("MONITOR /job/state\n")
    assert len(tree) == 3
    owner.session.connection_lost()
    assert watcher.pending() == "@ /job/state\n"
    assert watcher.send("GET /job/state\n") == ". EXPIRED\n"
    assert len(tree) == 2  # the /ghost placeholder is gone


def test_removing_a_monitored_object_reports_nonexistent(tree, clock):
    watcher, writer = Client(tree, clock), Client(tree, clock)
    writer.send("TOUCH /a\n")
    watcher.send("MONITOR /a\n")
    writer.send("REMOVE /a\n")
    assert watcher.send("UPDATES\n") == "@ /a\n* /a = NONEXISTENT\n.\n"
    writer.send("TOUCH /a\n")
    assert watcher.send("UPDATES\n") == "@ /a\n* /a = UNDEFINED\n.\n"


# -- TRACE, SAVE, SHUTDOWN, LOGOFF ---------------------------------------------------------------

def test_trace_shows_every_command_of_every_client(tree, clock):
    tracer, other = Client(tree, clock), Client(tree, clock)
    assert tracer.send("TRACE\n") == ".\n"
    other.send("REGISTER 55 logger\nTOUCH /a\n")
    assert tracer.pending() == "# %s REGISTER 55 logger\n# logger[55] TOUCH /a\n" % (
        "client#%d" % other.session._number)
    assert tracer.output_calls == 2
    assert tracer.send("UNTRACE\n") == "# %s UNTRACE\n.\n" % tracer.session
    other.send("GET /a\n")
    assert tracer.pending() == ""


def test_trace_escapes_control_bytes(tree, clock):
    tracer, other = Client(tree, clock), Client(tree, clock)
    tracer.send("TRACE\n")
    other.send(b"GET /\x01\xff\n")
    assert tracer.pending() == "# %s GET /\\x01\\xff\n" % other.session


def test_save_writes_the_dump_and_it_loads_back(tree, clock, tmp_path):
    client = Client(tree, clock, save_dir=str(tmp_path))
    client.send("TOUCH /s COMMENT=\"a comment\"\nPUT /s 'x \"y\"'\nTOUCH /i TYPE=int\nPUT /i 3\n")
    assert client.send("SAVE\n") == ".\n"
    text = (tmp_path / "statserv.save").read_text()
    assert text == tree.dump()
    assert Tree.load(text).dump() == text
    assert client.send("SAVE backup.save\n") == ".\n"
    assert (tmp_path / "backup.save").read_text() == text
    assert not [name for name in os.listdir(str(tmp_path)) if name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b", "sub/../../x"])
def test_save_outside_the_save_directory_is_denied(tree, clock, tmp_path, name):
    client = Client(tree, clock, save_dir=str(tmp_path))
    assert client.send("SAVE %s\n" % name).startswith("! DENIED")


def test_save_without_a_save_directory_is_denied(client):
    assert client.send("SAVE\n").startswith("! DENIED")


def test_shutdown_is_for_local_clients_only(tree, clock):
    local, remote = Client(tree, clock, is_local=True), Client(tree, clock, is_local=False)
    assert remote.send("SHUTDOWN\n").startswith("! DENIED")
    assert remote.shutdowns == 0
    assert local.send("SHUTDOWN\n") == ""
    assert local.shutdowns == 1


def test_logoff_closes_without_a_response_and_ignores_the_rest(client):
    assert client.send("PWD\nLOGOFF\nPWD\n") == ". /\n"
    assert client.session.closing
    assert client.send("PWD\n") == ""


# -- framing ------------------------------------------------------------------------------------

def test_crlf_and_blank_lines(client):
    assert client.send("PWD\r\n\r\n   \nPWD\n") == ". /\n. /\n"


def test_pipelined_requests_answer_in_order(client):
    requests = "".join("TOUCH /p%d\nPUT /p%d %d\nGET /p%d\n" % (i, i, i, i) for i in range(50))
    expected = "".join('.\n.\n. "%d"\n' % i for i in range(50))
    assert client.send(requests) == expected


def test_overlong_line_gets_one_toolong_and_the_connection_stays_usable(tree, clock):
    client = Client(tree, clock, max_line=64)
    out = client.send(b"PWD\nGET /" + b"x" * 200)
    assert out == ". /\n! TOOLONG line longer than 64 bytes\n"
    assert client.send(b"x" * 10000) == ""
    assert len(client.session._inbox) == 0  # discarding keeps nothing
    assert client.send(b"xx\nPWD\n") == ". /\n"


def test_overlong_line_arriving_whole_is_toolong(tree, clock):
    client = Client(tree, clock, max_line=64)
    assert client.send(b"GET /" + b"x" * 100 + b"\nPWD\n") == \
        "! TOOLONG line longer than 64 bytes\n. /\n"


def test_line_of_exactly_max_line_is_accepted(tree, clock):
    client = Client(tree, clock, max_line=16)
    line = b"GET /" + b"x" * 11
    assert len(line) == 16
    assert client.send(line + b"\r\n").startswith("! NONEXISTENT")
    assert client.send(line + b"x\n").startswith("! TOOLONG")


def test_slow_drip_of_a_long_line_is_linear(tree, clock):
    client = Client(tree, clock)
    for _ in range(4000):
        client.session.receive_data(b"x")
    assert client.session._searched == 4000
    assert client.send(b"\n") == "! SYNTAX unknown command %s; try HELP\n" % ("X" * 40)


SCRIPT = (
    b"REGISTER 1 script\r\nTOUCHDIR /d COMMENT='a dir'\nTOUCH /d/a TYPE=int\nPUT /d/a 5\n"
    b"MONITOR /d/a\nPUT /d/a 6\nGET /d/a\nPUT /d/a %zz\nFROB\nLS /d\nSTAT /d/a\nUPDATES\n"
    b"TOUCH \"/d/q\"\nPUT /d/q \"x y%0A\"\nGET /d/q\nREMOVE /d/q\nCD /d\nPWD\nHELP\n" + b"z" * 300 + b"\n"
    b"LOGOFF\nPWD\n"
)


def run_split(chunks, max_line: int = 128) -> str:
    session = StatServSession(Tree(), FakeClock(), is_local=True, max_line=max_line)
    output = bytearray()
    for chunk in chunks:
        session.receive_data(chunk)
        output += session.data_to_send()
    return output.decode()


def test_script_split_at_every_byte_position_gives_the_same_responses():
    whole = run_split([SCRIPT])
    assert whole.endswith(". /d\n" + run_split([b"HELP\n"]) + "! TOOLONG line longer than 128 bytes\n")
    for cut in range(1, len(SCRIPT)):
        assert run_split([SCRIPT[:cut], SCRIPT[cut:]]) == whole, cut
    assert run_split([SCRIPT[i:i + 1] for i in range(len(SCRIPT))]) == whole


def test_final_line_without_newline_is_handled_at_eof(client):
    assert client.send("PWD") == ""
    client.session.eof_received()
    assert client.pending() == ". /\n"
    assert client.session.closing


def test_bugs_in_a_command_become_protocol_errors(client, monkeypatch):
    monkeypatch.setattr(StatServSession, "_command_pwd", lambda self, args: 1 / 0)
    assert client.send("PWD\nHELP\n").startswith("! PROTOCOL internal error\n* ")


# -- fuzz ---------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_and_every_line_is_a_known_kind(data):
    session = StatServSession(Tree(), FakeClock(), is_local=False, max_line=64)
    session.receive_data(data)
    session.eof_received()
    session.connection_lost()
    for line in session.data_to_send().split(b"\n")[:-1]:
        assert line[:1] in (b".", b"!", b"*", b"@", b"#")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=12))
def test_valid_stream_split_at_random_points_gives_the_same_result(cuts):
    points = sorted(set(cuts))
    chunks = [SCRIPT[a:b] for a, b in zip([0] + points, points + [len(SCRIPT)])]
    assert run_split(chunks) == run_split([SCRIPT])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([
    b"TOUCH /a\n", b"PUT /a 1\n", b"GET /a\n", b"MONITOR /a\n", b"REMOVE /a\n", b"UPDATES\n",
    b"TOUCHDIR /d\n", b"RMDIR /d\n", b"MONITOR /d\n", b"TOUCH /d/x LIFETIME=0\n", b"LS /d\n",
    b"UNMONITOR /a\n", b"STAT /a\n", b"\xff\n", b"GET %\n",
]), max_size=30))
def test_random_command_sequences_answer_every_request(commands):
    session = StatServSession(Tree(), FakeClock(), is_local=True)
    session.receive_data(b"".join(commands))
    final_lines = [line for line in session.data_to_send().split(b"\n")[:-1]
                   if line[:1] in (b".", b"!")]
    assert len(final_lines) == len(commands)
    assert not any(line.startswith(b"! PROTOCOL") for line in final_lines)
    session.connection_lost()


def test_nothing_pipelined_after_shutdown_is_executed():
    from DriveStateMonitor.statserv_protocol import StatServSession
    from DriveStateMonitor.statserv_tree import Tree
    tree = Tree()
    stopped = []
    session = StatServSession(tree, lambda: 100.0, is_local=True,
                              on_shutdown=lambda: stopped.append(True))
    session.receive_data(b"SHUTDOWN\nTOUCH /after\nPWD\n")
    assert stopped == [True]
    assert session.data_to_send() == b""
    assert session.closing
    assert not tree.exists("/after")
