"""End-to-end tests of the status port: framing, acknowledgement, refusal, history and vanishing clients.

Every test talks to a real DSM process started on free ports; every wait has a deadline.
"""
from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, List

import pytest

from dsm_harness import END, recv_all, recv_until_end, wait_for

MAX_MESSAGE = 1024 * 1024


def connect_status(dsm) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", dsm.status_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def statuses(dsm) -> Any:
    return dsm.query_json("s")


def status_json(serial: Any, stamp: Any, status: Any) -> bytes:
    return json.dumps({"serial_number": serial, "time_stamp": stamp, "status": status}).encode()


def status_literal(serial: Any, stamp: Any, status: Any) -> bytes:
    return str({"serial_number": serial, "time_stamp": stamp, "status": status}).encode()


def split_replies(data: bytes) -> List[bytes]:
    """`\\x04` is an ack; `{...}\\x04` an error. Returns b"" for each ack and the JSON of each error."""
    assert data.endswith(END), data[-200:]
    return data[:-1].split(END)


def assert_error(reply: bytes) -> str:
    assert reply.endswith(END) and reply.count(END) == 1, reply[-300:]
    value = json.loads(reply[:-1])
    assert isinstance(value, dict) and isinstance(value.get("error"), str) and value["error"], value
    return value["error"]


# --- accepted forms ---------------------------------------------------------------------------
def test_json_and_python_literal_are_both_stored_and_acked(dsm):
    assert dsm.send_status(status_json("J1", "2015 Jun 03 14:22:01", "001")) == END
    assert dsm.send_status(b"{'serial_number': 'P1', 'time_stamp': 1433341321.5, "
                           b"'status': '002'}") == END
    # str(dict) of what a script may put in a status: quotes, braces, None, True, nesting
    tricky = {"code": "01X", "detail": "it's a {brace} and a \"quote\"", "ok": True, "why": None,
              "tries": [1, 2, (3, 4)]}
    assert dsm.send_status(status_literal("P2", 7, tricky)) == END
    assert statuses(dsm) == {
        "J1": [{"time_stamp": "2015 Jun 03 14:22:01", "status": "001"}],
        "P1": [{"time_stamp": 1433341321.5, "status": "002"}],
        # a value that is neither text nor a number is kept as its JSON text (status_protocol.py)
        "P2": [{"time_stamp": 7, "status": json.dumps(tricky)}],
    }


@pytest.mark.parametrize("terminator", [b"\x04", b"\n", b"\r\n", b""], ids=["eot", "lf", "crlf", "none"])
@pytest.mark.parametrize("form", ["json", "literal"])
def test_each_framing_is_acked_while_the_connection_stays_open(dsm, terminator, form):
    """A message ends at \\x04, at a newline, or as soon as its braces balance (lab scripts)."""
    make = status_json if form == "json" else status_literal
    message = make("F1", 1, "braces } { inside a string")
    with connect_status(dsm) as sock:
        sock.sendall(message + terminator)
        assert recv_until_end(sock, timeout=5) == END
    assert statuses(dsm) == {"F1": [{"time_stamp": 1, "status": "braces } { inside a string"}]}


def test_end_of_stream_completes_a_message(dsm):
    """A message left open (no closing brace, no terminator) is complete at the end of the stream."""
    with connect_status(dsm) as sock:
        sock.sendall(status_json("E1", 2, "003"))
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock, timeout=5) == END  # acked, then the DSM closes
    assert statuses(dsm) == {"E1": [{"time_stamp": 2, "status": "003"}]}


def test_numeric_serial_number_is_stored_under_its_text(dsm):
    assert dsm.send_status(b'{"serial_number": 12345, "time_stamp": 1, "status": "000"}') == END
    assert statuses(dsm) == {"12345": [{"time_stamp": 1, "status": "000"}]}


# --- refused messages -------------------------------------------------------------------------
BAD_MESSAGES = [
    pytest.param(b"{this is not json or python}", id="unparseable-balanced"),
    pytest.param(b"{'serial_number': 'BAD', 'time_stamp': 1, 'status': 2 +}", id="syntax-error"),
    pytest.param(b"hello DSM", id="garbage-no-brace"),
    pytest.param(b"[1, 2, 3]", id="list"),
    pytest.param(b"42\n", id="number"),
    pytest.param(b'"a string"\n', id="string"),
    pytest.param(b"{'time_stamp': 1, 'status': '001'}", id="no-serial"),
    pytest.param(b"{'serial_number': 'BAD', 'status': '001'}", id="no-time-stamp"),
    pytest.param(b"{'serial_number': 'BAD', 'time_stamp': 1}", id="no-status"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b"{'serial_number': __import__('os').getpid(), 'time_stamp': 1, 'status': 1}",
                 id="code-is-not-evaluated"),
    pytest.param(b'{"serial_number": "BAD", "time_stamp": NaN, "status": "001"}\n', id="nan"),
    pytest.param(b"{'serial_number': 'BAD', 'time_stamp': 1, 'status': {1, 2}}", id="python-set"),
    pytest.param(b'{"serial_number": "BAD", "time_stamp": 1, "status": "\xff\xfe"}', id="not-utf8"),
]


@pytest.mark.parametrize("message", BAD_MESSAGES)
def test_bad_message_gets_json_error_and_nothing_is_stored(dsm, message):
    assert dsm.send_status(status_json("GOOD", 1, "001")) == END
    before = statuses(dsm)
    assert_error(dsm.send_status(message))
    assert statuses(dsm) == before
    assert dsm.proc.poll() is None


@pytest.mark.parametrize("message", BAD_MESSAGES)
def test_a_bad_message_is_answered_and_the_next_one_sent_with_it_is_stored(dsm, message):
    with connect_status(dsm) as sock:
        # sent together: both are answered, in order, before the DSM closes
        sock.sendall(message + b"\n" + status_json("AFTER", 5, "002"))
        reply = recv_all(sock, timeout=5)
        assert reply.endswith(END + END), reply
        assert_error(reply[:-1])
    assert statuses(dsm) == {"AFTER": [{"time_stamp": 5, "status": "002"}]}


@pytest.mark.parametrize("message", BAD_MESSAGES)
def test_a_bad_message_alone_gets_its_error_and_the_connection_closes(dsm, message):
    with connect_status(dsm) as sock:
        sock.sendall(message + b"\n")
        # the DSM closes by itself (the client keeps its side open, as netcat-openbsd does)
        assert_error(recv_all(sock, timeout=5))
    assert dsm.send_status(status_json("NEXT", 6, "002")) == END
    assert statuses(dsm) == {"NEXT": [{"time_stamp": 6, "status": "002"}]}


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed-at-end"])
def test_message_over_one_mib_is_refused_without_waiting_for_its_end(dsm, closed):
    assert dsm.send_status(status_json("GOOD", 1, "001")) == END
    head = b'{"serial_number": "HUGE", "time_stamp": 1, "status": "'
    body = head + b"x" * (MAX_MESSAGE + 4096 - len(head))
    with connect_status(dsm) as sock:
        sock.sendall(body)
        if closed:
            # the message closes properly: still too large
            sock.sendall(b'"}')
        # the error arrives without an end to the message (no newline, no end of stream)
        if closed:
            # the refused message has ended and is answered: the DSM closes
            assert_error(recv_all(sock, timeout=10))
        else:
            assert_error(recv_until_end(sock, timeout=10))
            # the rest of an unfinished oversized message is dropped up to the next newline (the
            # connection stays open for it); then all is normal again
            sock.sendall(b"more of the same " * 100 + b"\n" + status_json("NEXT", 2, "002"))
            assert recv_all(sock, timeout=10) == END
    if closed:
        assert dsm.send_status(status_json("NEXT", 2, "002")) == END
    assert statuses(dsm) == {"GOOD": [{"time_stamp": 1, "status": "001"}],
                             "NEXT": [{"time_stamp": 2, "status": "002"}]}


def test_complete_message_just_over_one_mib_sent_at_once_is_refused(dsm):
    head = b'{"serial_number": "HUGE", "time_stamp": 1, "status": "'
    message = head + b"y" * (MAX_MESSAGE + 64 - len(head)) + b'"}'
    assert len(message) > MAX_MESSAGE
    assert_error(dsm.send_status(message))
    assert statuses(dsm) == {}


def test_message_just_under_the_limit_is_stored(dsm):
    head = b'{"serial_number": "BIG", "time_stamp": 1, "status": "'
    filler = MAX_MESSAGE - len(head) - 2 - 16
    message = head + b"z" * filler + b'"}'
    assert len(message) <= MAX_MESSAGE
    assert dsm.send_status(message) == END
    assert statuses(dsm)["BIG"] == [{"time_stamp": 1, "status": "z" * filler}]


# --- several messages per connection -----------------------------------------------------------
def test_pipelined_messages_on_one_connection_are_acked_in_order(dsm):
    stream = (status_json("PL", 1, "001") + b"\n" +
              b"{'serial_number': 'PL', 'time_stamp': 2, 'status': '002'}" +   # no terminator
              b"{'serial_number': 'PL', 'status': 'x'}\n" +                   # field missing
              status_json("PL", 3, "003") + b"\x04" +
              b"not a dict\n" +
              status_json("PL", 4, "004") + b"\r\n")
    with connect_status(dsm) as sock:
        sock.sendall(stream)
        data = recv_until_end(sock, timeout=5, count=6)
    parts = split_replies(data)
    assert len(parts) == 6, data
    assert parts[0] == parts[1] == parts[3] == parts[5] == b""
    assert json.loads(parts[2])["error"] and json.loads(parts[4])["error"]
    assert statuses(dsm) == {"PL": [{"time_stamp": n, "status": "00%d" % n} for n in (1, 2, 3, 4)]}


def test_each_status_is_acknowledged_and_its_connection_closed(dsm):
    for n in range(3):
        with connect_status(dsm) as sock:
            # the lab scripts' framing: nothing after the closing brace, the connection left open;
            # the DSM answers and closes, as the original did (spec dsm.md, "Status protocol")
            sock.sendall(status_literal("ONE", n, "%03d" % n))
            assert recv_all(sock, timeout=5) == END
    assert statuses(dsm) == {"ONE": [{"time_stamp": n, "status": "%03d" % n} for n in range(3)]}


def test_a_status_sent_after_the_ack_was_read_needs_a_new_connection(dsm):
    with connect_status(dsm) as sock:
        sock.sendall(status_literal("LATE", 1, "001"))
        assert recv_until_end(sock, timeout=5) == END
        assert recv_all(sock, timeout=5) == b""  # closed by the DSM
    assert dsm.send_status(status_literal("LATE", 2, "002")) == END
    assert statuses(dsm) == {"LATE": [{"time_stamp": n, "status": "%03d" % n} for n in (1, 2)]}


def test_a_pipelined_batch_gets_every_ack_in_order_then_the_close(dsm):
    messages = [status_literal("PIPE", n, "%03d" % n) if n % 2 else status_json("PIPE", n, "%03d" % n)
                for n in range(15)]
    with connect_status(dsm) as sock:
        sock.sendall(b"".join(messages[:5]) + b"{'serial_number': 'PIPE'}" + b"".join(messages[5:]))
        reply = recv_all(sock, timeout=10)
    assert reply.startswith(END * 5) and reply.endswith(END * 11), reply
    assert_error(reply[5:-10])
    assert [entry["time_stamp"] for entry in statuses(dsm)["PIPE"]] == list(range(15))


@pytest.mark.parametrize("step", [1, 3, 7])
def test_message_split_across_many_small_sends(dsm, step):
    message = b'{"serial_number": "SPLIT", "time_stamp": [1, {"n": 2}], ' \
              b'"status": "a \\"}\\" b \\\\ c \' {"}'
    expected = json.loads(message)
    expected["time_stamp"] = '[1, {"n": 2}]'  # kept as its JSON text (status_protocol.py)
    with connect_status(dsm) as sock:
        for start in range(0, len(message) - 1, step):
            sock.sendall(message[start:min(start + step, len(message) - 1)])
        # nothing has been answered before the last byte (the DSM does not frame early)
        sock.setblocking(False)
        try:
            early = sock.recv(100)
        except BlockingIOError:
            early = b""
        assert early == b""
        sock.setblocking(True)
        sock.settimeout(5)
        sock.sendall(message[-1:])
        assert recv_until_end(sock, timeout=5) == END
    assert statuses(dsm) == {"SPLIT": [{"time_stamp": expected["time_stamp"],
                                        "status": expected["status"]}]}


# --- history ----------------------------------------------------------------------------------
def test_history_keeps_the_last_n_oldest_first(dsm_factory):
    dsm = dsm_factory.start("--history", "3")
    with connect_status(dsm) as sock:
        sock.sendall(b"".join(status_json("H1", n, "s%d" % n) + b"\n" for n in range(7))
                     + b"".join(status_json("H2", n, "t%d" % n) + b"\n" for n in range(2)))
        assert recv_until_end(sock, timeout=5, count=9) == END * 9
    assert statuses(dsm) == {
        "H1": [{"time_stamp": n, "status": "s%d" % n} for n in (4, 5, 6)],
        "H2": [{"time_stamp": n, "status": "t%d" % n} for n in (0, 1)],
    }


def test_default_history_is_twenty(dsm):
    with connect_status(dsm) as sock:
        sock.sendall(b"".join(status_json("H20", n, "%03d" % n) + b"\n" for n in range(25)))
        assert recv_until_end(sock, timeout=5, count=25) == END * 25
    assert statuses(dsm) == {"H20": [{"time_stamp": n, "status": "%03d" % n}
                                     for n in range(5, 25)]}


# --- clients that vanish ----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_vanishing_mid_message_loses_only_its_own_message(dsm, how):
    assert dsm.send_status(status_json("KEEP", 1, "001")) == END
    from dsm_harness import announcement
    dsm.announce(announcement("VAN1"))
    wait_for(lambda: "VAN1" in dsm.query_json("m"), timeout=5, what="VAN1 in m")
    before_s = statuses(dsm)
    before_m = dsm.query_json("m")

    # another client is mid-message too, and must be unaffected
    with connect_status(dsm) as bystander:
        bystander.sendall(b"{'serial_number': 'BYST', 'time_")
        for _ in range(20):
            sock = connect_status(dsm)
            sock.sendall(b"{'serial_number': 'GONE', 'time_stamp': 1, 'sta")
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        started = time.monotonic()
        assert dsm.send_status(status_json("KEEP", 2, "002")) == END
        assert time.monotonic() - started < 3
        bystander.sendall(b"stamp': 9, 'status': '009'}")
        assert recv_until_end(bystander, timeout=5) == END

    after = statuses(dsm)
    assert "GONE" not in after
    assert after["KEEP"] == before_s["KEEP"] + [{"time_stamp": 2, "status": "002"}]
    assert after["BYST"] == [{"time_stamp": 9, "status": "009"}]
    assert dsm.query_json("m") == before_m
    assert dsm.proc.poll() is None


def test_client_that_never_reads_its_acks_does_not_block_others(dsm):
    """A script that sends statuses and never reads its acks only waits for itself."""
    flooder = connect_status(dsm)
    try:
        flooder.setblocking(False)
        chunk = b"".join(status_json("FLOOD", n, "001") + b"\n" for n in range(500))
        deadline = time.monotonic() + 5
        for _ in range(200):
            if time.monotonic() > deadline:
                break
            try:
                flooder.send(chunk)
            except BlockingIOError:
                break
        started = time.monotonic()
        assert dsm.send_status(status_json("OTHER", 1, "002")) == END
        assert dsm.query_json("s")["OTHER"] == [{"time_stamp": 1, "status": "002"}]
        assert time.monotonic() - started < 3
    finally:
        flooder.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        flooder.close()
    assert len(dsm.query_json("s")["FLOOD"]) == 20
