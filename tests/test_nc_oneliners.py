"""The README's `nc` one-liners return at once with the complete reply, with the real `nc` binary.

Debian's default netcat (netcat-openbsd) never closes its side at the end of its input unless given
`-N`; the DSM closes once everything received has been answered (pipelining.answered_and_idle,
for query and status connections alike), so the one-liners end as soon as the reply is in.
Skipped where no `nc` is installed (.ci/run installs it).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from dsm_harness import END, announcement, wait_for

NC = shutil.which("nc")
pytestmark = pytest.mark.skipif(NC is None, reason="no nc binary (apt-get install netcat-openbsd)")
# Well below the 300 s idle timeout the one-liners used to wait for; generous for a busy machine.
PROMPT_S = 5.0


def run_nc(args, stdin: bytes) -> bytes:
    started = time.monotonic()
    done = subprocess.run([NC] + args, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=PROMPT_S * 4)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < PROMPT_S, "nc took %.1f s" % elapsed
    return done.stdout


def replies(data: bytes):
    assert data.endswith(END), data[-200:]
    return [json.loads(part) for part in data[:-1].split(END)]


@pytest.fixture
def populated(dsm):
    dsm.announce(announcement("NC1"))
    assert dsm.send_status(b'{"serial_number": "NC1", "time_stamp": "t1", "status": "002"}') == END
    wait_for(lambda: "NC1" in dsm.query_json("m"), 5, "NC1 in m")
    return dsm


def test_printf_m_over_tcp_returns_at_once(populated):
    out = run_nc(["127.0.0.1", str(populated.query_port)], b"m")
    assert list(replies(out)[0]) == ["NC1"]


def test_echo_s_over_the_unix_socket_returns_at_once(populated):
    out = run_nc(["-U", populated.unix_socket], b"s\n")
    assert replies(out) == [{"NC1": [{"time_stamp": "t1", "status": "002"}]}]


def test_several_queries_in_one_line_are_all_answered_in_order(populated):
    out = run_nc(["127.0.0.1", str(populated.query_port)], b"m s m\n")
    parts = replies(out)
    assert len(parts) == 3 and list(parts[0]) == ["NC1"] and parts[0] == parts[2]
    assert parts[1] == {"NC1": [{"time_stamp": "t1", "status": "002"}]}


def test_a_bad_query_gets_its_error_at_once(populated):
    out = run_nc(["-U", populated.unix_socket], b"x\n")
    assert "error" in replies(out)[0]


def test_echo_a_status_to_the_status_port_returns_at_once_with_the_ack(dsm):
    out = run_nc(["127.0.0.1", str(dsm.status_port)],
                 b"{'serial_number': 'NC2', 'time_stamp': 't2', 'status': '001'}\n")
    assert out == END
    assert dsm.query_json("s") == {"NC2": [{"time_stamp": "t2", "status": "001"}]}


def test_several_statuses_in_one_nc_input_are_all_acknowledged(dsm):
    lines = b"".join(b'{"serial_number": "NC3", "time_stamp": %d, "status": "00%d"}\n' % (n, n)
                     for n in range(4))
    out = run_nc(["127.0.0.1", str(dsm.status_port)], lines + b"not a status\n")
    assert out.startswith(END * 4) and out.endswith(END) and "error" in json.loads(out[4:-1])
    assert dsm.query_json("s") == {"NC3": [{"time_stamp": n, "status": "00%d" % n}
                                           for n in range(4)]}


@pytest.mark.parametrize("how", ["LOGOFF", "-N"])
def test_a_status_server_one_liner_returns_at_once_ended_by_logoff_or_nc_n(dsm, how):
    """The Status Server is a session: it answers and waits for the next request until LOGOFF,
    or until the client ends its side (nc -N) — the two ways the docs show."""
    request = b"GET /dsm/pid\n" + (b"LOGOFF\n" if how == "LOGOFF" else b"")
    options = ["-N"] if how == "-N" else []
    out = run_nc(options + ["127.0.0.1", str(dsm.statserv_port)], request)
    assert out == b". %d\n" % dsm.pid or out == b'. "%d"\n' % dsm.pid, out
