"""The sans-IO HTTP/1.1 server protocol: requests out of bytes, responses into bytes, in memory."""
from __future__ import annotations

from typing import List

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from DriveStateMonitor.http_protocol import (MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_HEADER_FIELDS,
                                             MAX_REQUEST_LINE_BYTES, HttpServerConnection,
                                             Request, RequestError)

GET = b"GET /metrics HTTP/1.1\r\nHost: dsm\r\n\r\n"


def feed(*chunks: bytes) -> List[object]:
    conn = HttpServerConnection()
    events: List[object] = []
    for chunk in chunks:
        events.extend(conn.receive_data(chunk))
    return events


def only_error(data: bytes) -> RequestError:
    events = feed(data)
    assert len(events) == 1 and isinstance(events[0], RequestError), events
    return events[0]


# --- requests ---------------------------------------------------------------------------------
def test_simple_get_is_one_request_with_lowercase_headers():
    (request,) = feed(b"GET /api/drives?x=1 HTTP/1.1\r\nHost: dsm\r\nAccept: */*\r\n\r\n")
    assert request == Request("GET", "/api/drives?x=1", (1, 1),
                              (("host", "dsm"), ("accept", "*/*")), True)
    assert request.path == "/api/drives"
    assert request.header("accept") == "*/*"
    assert request.header("missing") is None


def test_bare_newlines_and_leading_empty_lines_are_accepted():
    (request,) = feed(b"\r\n\nGET / HTTP/1.1\nHost: dsm\n\n")
    assert request.target == "/" and request.keep_alive


def test_header_values_lose_surrounding_whitespace_and_keep_obs_text():
    (request,) = feed(b"GET / HTTP/1.1\r\nHost:  dsm \t\r\nX-Name: caf\xe9\r\n\r\n")
    assert request.header("host") == "dsm"
    assert request.header("x-name") == "caf\xe9"


def test_absolute_form_target_is_reduced_to_its_path():
    (request,) = feed(b"GET http://dsm:2204/api/status HTTP/1.1\r\nHost: dsm\r\n\r\n")
    assert request.target == "/api/status"


def test_every_split_position_gives_the_same_requests():
    data = GET + b"HEAD / HTTP/1.1\r\nHost: dsm\r\nContent-Length: 3\r\n\r\nabc" + GET
    whole = feed(data)
    assert [r.method for r in whole] == ["GET", "HEAD", "GET"]
    for cut in range(len(data) + 1):
        assert feed(data[:cut], data[cut:]) == whole, cut
    assert feed(*[data[i:i + 1] for i in range(len(data))]) == whole


# --- keep-alive and pipelining -------------------------------------------------------------------
def test_http11_keeps_alive_unless_connection_close():
    (kept,) = feed(GET)
    (closing,) = feed(b"GET / HTTP/1.1\r\nHost: dsm\r\nConnection: keep-alive, Close\r\n\r\n")
    assert kept.keep_alive and not closing.keep_alive


def test_http10_closes_unless_keep_alive_is_asked():
    (closing,) = feed(b"GET / HTTP/1.0\r\n\r\n")
    (kept,) = feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert not closing.keep_alive and kept.keep_alive
    reply = HttpServerConnection().response(kept, 200, b"x")
    assert b"\r\nConnection: keep-alive\r\n" in reply


def test_pipelined_requests_come_out_in_order():
    data = b"".join(b"GET /%d HTTP/1.1\r\nHost: dsm\r\n\r\n" % i for i in range(50))
    assert [r.target for r in feed(data)] == ["/%d" % i for i in range(50)]


def test_nothing_is_read_after_a_closing_request():
    conn = HttpServerConnection()
    events = conn.receive_data(b"GET /a HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n" + GET)
    assert [e.target for e in events] == ["/a"]
    assert not conn.reading
    assert conn.receive_data(GET) == []


def test_small_request_body_is_skipped_with_its_length():
    events = feed(b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: 5\r\n\r\n", b"GET", b" /", GET)
    assert [e.target for e in events] == ["/", "/metrics"]


# --- errors: each is one RequestError, then nothing more ----------------------------------------
@pytest.mark.parametrize("data, status", [
    (b"GET /\r\n\r\n", 400),                                  # HTTP/0.9 style
    (b"GET  / HTTP/1.1\r\nHost: d\r\n\r\n", 400),             # two spaces
    (b"G(T / HTTP/1.1\r\nHost: d\r\n\r\n", 400),              # not a token
    (b"GET / HTTX/1.1\r\nHost: d\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                         # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : d\r\n\r\n", 400),             # space before the colon
    (b"GET / HTTP/1.1\r\nHost: d\r\n folded\r\n\r\n", 400),   # obsolete line folding
    (b"GET / HTTP/1.1\r\nHost: d\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: d\x00\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: d\rX\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    (b"GET relative HTTP/1.1\r\nHost: d\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
    # more digits than int() converts on 3.11+ (it raised, and the kill switch counted it)
    (b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: 1" + b"0" * 20 + b"\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: \xd9\xa1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: d\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: d\r\n\r\n", 505),
], ids=lambda value: repr(value)[:60] if isinstance(value, bytes) else str(value))
def test_bad_requests_get_the_fitting_status(data, status):
    assert only_error(data).status == status


def test_request_line_too_long_is_414_before_its_end_arrives():
    conn = HttpServerConnection()
    events = conn.receive_data(b"GET /" + b"a" * MAX_REQUEST_LINE_BYTES)
    assert [e.status for e in events] == [414]
    assert not conn.reading


def test_request_line_at_the_limit_is_accepted():
    target = b"/" + b"a" * (MAX_REQUEST_LINE_BYTES - len(b"GET  HTTP/1.1") - 1)
    line = b"GET " + target + b" HTTP/1.1"
    assert len(line) == MAX_REQUEST_LINE_BYTES
    (request,) = feed(line + b"\r\nHost: d\r\n\r\n")
    assert request.target == target.decode()


def test_headers_too_large_are_431_before_their_end_arrives():
    events = feed(b"GET / HTTP/1.1\r\nHost: d\r\nX: " + b"a" * MAX_HEAD_BYTES)
    assert [e.status for e in events] == [431]


def test_too_many_header_fields_are_431():
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADER_FIELDS))
    assert only_error(b"GET / HTTP/1.1\r\nHost: d\r\n" + fields + b"\r\n").status == 431
    fine = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADER_FIELDS - 1))
    (request,) = feed(b"GET / HTTP/1.1\r\nHost: d\r\n" + fine + b"\r\n")
    assert len(request.headers) == MAX_HEADER_FIELDS


def test_requests_before_an_error_are_kept_and_nothing_after_it():
    conn = HttpServerConnection()
    events = conn.receive_data(GET + b"BAD\r\n\r\n" + GET)
    assert isinstance(events[0], Request) and isinstance(events[1], RequestError)
    assert len(events) == 2
    assert conn.receive_data(GET) == []


def test_methods_other_than_get_and_head_still_parse_for_the_router_to_refuse():
    (request,) = feed(b"DELETE /api/drives HTTP/1.1\r\nHost: d\r\n\r\n")
    assert request.method == "DELETE"


def test_a_byte_at_a_time_costs_linear_work():
    # The search position is remembered: 16 KiB of header dripped byte by byte stays fast.
    conn = HttpServerConnection()
    data = b"GET / HTTP/1.1\r\nHost: d\r\nX: " + b"a" * (MAX_HEAD_BYTES - 100) + b"\r\n\r\n"
    events: List[object] = []
    for i in range(len(data)):
        events.extend(conn.receive_data(data[i:i + 1]))
    assert [type(e) for e in events] == [Request]


# --- responses --------------------------------------------------------------------------------
def test_response_has_status_line_length_and_body():
    (request,) = feed(GET)
    reply = HttpServerConnection().response(request, 200, b"hello",
                                            [("Content-Type", "text/plain")], date="D")
    assert reply == (b"HTTP/1.1 200 OK\r\nDate: D\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 5\r\n\r\nhello")


def test_head_gets_the_headers_of_get_without_the_body():
    (request,) = feed(b"HEAD / HTTP/1.1\r\nHost: d\r\n\r\n")
    reply = HttpServerConnection().response(request, 200, b"hello")
    assert reply.endswith(b"Content-Length: 5\r\n\r\n")


def test_closing_request_and_errors_get_connection_close():
    (closing,) = feed(b"GET / HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    conn = HttpServerConnection()
    assert b"\r\nConnection: close\r\n" in conn.response(closing, 200, b"")
    error = conn.response(None, 400, b"bad\n")
    assert error.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in error and error.endswith(b"\r\n\r\nbad\n")


@pytest.mark.parametrize("status, reason", [(404, b"Not Found"), (405, b"Method Not Allowed"),
                                            (413, b"Content Too Large"),
                                            (431, b"Request Header Fields Too Large"),
                                            (505, b"HTTP Version Not Supported")])
def test_status_lines_carry_the_standard_reason(status, reason):
    assert HttpServerConnection().response(None, status, b"").startswith(
        b"HTTP/1.1 %d %s\r\n" % (status, reason))


# --- fuzz -------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_never_raise_and_errors_come_last(chunks):
    conn = HttpServerConnection()
    events: List[object] = []
    for chunk in chunks:
        events.extend(conn.receive_data(chunk))
    for event in events[:-1]:
        assert isinstance(event, Request)
    for event in events:
        if isinstance(event, RequestError):
            assert 400 <= event.status < 600


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["content-length", "host", "connection", "transfer-encoding", "x"]),
       st.one_of(st.binary(max_size=6000).map(lambda b: b.replace(b"\n", b"")),
                 st.integers(min_value=0, max_value=10 ** 6000).map(lambda n: b"%d" % n
                                                                    if n < 10 ** 4000 else
                                                                    b"9" * 4500)))
def test_any_header_value_gives_a_request_or_an_http_error(name, value):
    data = b"GET / HTTP/1.1\r\nHost: d\r\n%s: %s\r\n\r\n" % (name.encode(), value)
    events = feed(data)
    assert len(events) <= 1 and all(isinstance(e, (Request, RequestError)) for e in events)


def test_content_length_with_leading_zeros_is_its_value():
    [request] = feed(b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: 0002\r\n\r\nab" + GET)[:1]
    assert isinstance(request, Request)
    assert len(feed(b"GET / HTTP/1.1\r\nHost: d\r\nContent-Length: 0002\r\n\r\nab" + GET)) == 2


_piece = st.sampled_from([b"GET", b"HEAD", b" ", b"/", b"/x", b"HTTP/1.1", b"HTTP/1.0", b"\r\n",
                          b"\n", b"Host: d", b"Connection: close", b"Content-Length: 2", b":",
                          b"\x00", b"\xff", b"ab"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_piece, max_size=40), st.integers(min_value=0, max_value=400))
@example(pieces=[b" ", b"\r\n"], cut=1)  # a line not starting a request, whole or cut
def test_request_like_input_parses_the_same_however_it_is_split(pieces, cut):
    data = b"".join(pieces)
    cut = min(cut, len(data))
    assert feed(data) == feed(data[:cut], data[cut:])
