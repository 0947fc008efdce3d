"""The query protocol (port 2203), sans-IO: bytes in, queries out."""
import json
import random

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor.query_protocol import (BAD_TOKEN_SHOWN, END_BYTE, Query, QueryParser,
                                              encode_reply, error_reply)


def feed(*chunks: bytes):
    parser = QueryParser()
    queries = []
    for chunk in chunks:
        queries.extend(parser.receive_data(chunk))
    return queries


def feed_split_everywhere(data: bytes):
    """Yields (position, queries) for `data` fed in two chunks split at every position."""
    for cut in range(len(data) + 1):
        yield cut, feed(data[:cut], data[cut:])


@pytest.mark.parametrize("letter", ["m", "s", "w"])
def test_each_letter_is_a_complete_query_without_terminator(letter):
    assert feed(letter.encode()) == [Query(letter)]


@pytest.mark.parametrize("letter", ["M", "S", "W"])
def test_uppercase_letter_is_the_same_query(letter):
    assert feed(letter.encode()) == [Query(letter.lower())]


@pytest.mark.parametrize("data", [b"m s w", b"m\ns\nw\n", b"m\r\ns\r\nw\r\n", b"m\x04s\x04w\x04",
                                  b"\tm\x0bs\x0cw", b"  m  \r\n\x04 s\x04\x04w "])
def test_separators_between_queries_are_ignored(data):
    assert feed(data) == [Query("m"), Query("s"), Query("w")]


def test_only_separators_give_no_query():
    assert feed(b" \r\n\t\x04\x0b\x0c") == []


def test_empty_chunk_gives_no_query():
    assert feed(b"") == []


def test_bad_token_gives_one_error_showing_the_token():
    assert feed(b"hello\n") == [Query(None, "hello")]


def test_bad_token_is_answered_before_its_terminator_arrives():
    assert feed(b"x") == [Query(None, "x")]


@pytest.mark.parametrize("token", [b"msw", b"mx", b"xm", b"Win64;", b"ws", b"sm", b"mm"])
def test_letters_inside_a_longer_token_are_not_queries(token):
    assert feed(token + b"\n") == [Query(None, token.decode())]


def test_unknown_byte_then_letters_is_one_bad_token():
    assert feed(b"xm s") == [Query(None, "xm"), Query("s")]


def test_query_after_bad_token_on_the_same_connection_is_answered():
    assert feed(b"bogus\r\nm\n") == [Query(None, "bogus"), Query("m")]


def test_a_run_of_bad_tokens_gets_one_error():
    assert feed(b"ab xy ef\ngh") == [Query(None, "ab")]


def test_each_chunk_of_garbage_gets_its_own_error():
    # what a person typing into nc sees: each wrong line answered
    assert feed(b"ab\n", b"xy\n") == [Query(None, "ab"), Query(None, "xy")]


def test_bad_token_split_across_chunks_gives_one_error():
    assert feed(b"ab", b"cd", b"ef\nm") == [Query(None, "ab"), Query("m")]


def test_rest_of_bad_token_in_next_chunk_is_dropped_until_separator():
    assert feed(b"q", b"m", b" m") == [Query(None, "q"), Query("m")]
    assert feed(b"q", b"w", b" w") == [Query(None, "q"), Query(None, "w", "wipe_after_bad_query")]


def test_long_bad_token_is_shown_truncated():
    queries = feed(b"z" * 10_000 + b"\n")
    assert queries == [Query(None, "z" * BAD_TOKEN_SHOWN)]


def test_invalid_utf8_in_bad_token_is_shown_with_replacement_characters():
    assert feed(b"\xff\xfe\n") == [Query(None, "\ufffd\ufffd")]


def test_letters_split_across_chunks_give_the_same_queries():
    data = b"m s\r\nw\x04M"
    for cut, queries in feed_split_everywhere(data):
        assert queries == [Query("m"), Query("s"), Query("w"), Query("m")], cut


def test_the_end_of_a_chunk_ends_a_letter():
    # an original client sends `m`, reads the reply, then sends `s` on the same connection
    assert feed(b"m", b"s\n") == [Query("m"), Query("s")]
    assert feed(b"m", b"x s") == [Query("m"), Query(None, "x"), Query("s")]


def test_bad_token_split_at_every_position_gives_one_error_then_the_query():
    data = b"bad\nm"
    for cut, queries in feed_split_everywhere(data):
        assert [q.kind for q in queries] == [None, "m"], cut


def test_byte_at_a_time_gives_the_same_queries():
    data = b"m s xyz m\r\n"
    parser = QueryParser()
    queries = []
    for i in range(len(data)):
        queries.extend(parser.receive_data(data[i:i + 1]))
    assert queries == [Query("m"), Query("s"), Query(None, "x"), Query("m")]


# --- nothing else ever wipes ------------------------------------------------------------------------
BROWSER_REQUEST = (b"GET / HTTP/1.1\r\nHost: labhost:2203\r\nConnection: keep-alive\r\n"
                   b"User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                   b"(KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n"
                   b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n"
                   b"Accept-Language: en-US,en;q=0.9\r\n\r\n")


def test_browser_request_is_refused_as_http_and_never_wipes():
    for cut, queries in feed_split_everywhere(BROWSER_REQUEST):
        assert all(q.kind is None for q in queries), cut
    parser = QueryParser()
    assert parser.receive_data(BROWSER_REQUEST) == [Query(None, "GET", "http")]
    assert parser.finished and parser.receive_data(b"w\n") == []


@pytest.mark.parametrize("line, foreign", [
    (b"GET / HTTP/1.1\r\n", "http"), (b"POST /api HTTP/1.1\r\n", "http"), (b"HEAD /", "http"),
    (b"OPTIONS * HTTP/1.1\r\n", "http"), (b"PRI * HTTP/2.0\r\n", "http"),
    (b"GET /x\n", "statserv"), (b"get /x\n", "statserv"), (b"LS\n", "statserv"),
    (b"ls /drives\n", "statserv"), (b"PUT /x 1\n", "statserv"), (b"MONITOR /x\n", "statserv"),
    (b"SHUTDOWN\n", "statserv"), (b"GET /x", "http_or_statserv"),
    (b"{'serial_number': 'A', 'time_stamp': 1, 'status': 2}", "status"),
])
def test_request_of_another_protocol_is_named_and_ends_parsing(line, foreign):
    parser = QueryParser()
    [query] = parser.receive_data(line + b" m w")
    assert query.kind is None and query.foreign == foreign
    assert parser.finished


def test_help_is_a_bad_query_not_a_status_server_command():
    parser = QueryParser()
    assert parser.receive_data(b"help\nm") == [Query(None, "help"), Query("m")]
    assert not parser.finished


@pytest.mark.parametrize("data", [b"x w", b"xyz\nw\n", b"Win64; w", b"bad W"])
def test_w_after_a_bad_query_on_the_connection_is_refused(data):
    queries = feed(data)
    assert queries[-1] == Query(None, "w", "wipe_after_bad_query")
    assert all(q.kind != "w" for q in queries)


def test_w_split_from_its_garbage_by_a_chunk_boundary_is_refused():
    assert [q.kind for q in feed(b"abc ", b"w")] == [None, None]
    assert [q.kind for q in feed(b"abcw", b"in64;")] == [None]
    assert [q.kind for q in feed(b"abc", b"w", b"in64;")] == [None]


def whole_token_queries(data: bytes):
    """The oracle: the queries of `data` by the whole-token rule, up to the first bad token, and
    whether there was one."""
    kinds = []
    for token in data.replace(b"\x04", b" ").split():
        if token.lower() not in (b"m", b"s", b"w"):
            return kinds, True
        kinds.append(token.lower().decode())
    return kinds, False


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_wipe_only_when_they_are_whole_token_queries(data, cut):
    cut %= len(data) + 1
    queries = feed(data[:cut], data[cut:])
    # The end of a chunk ends a token: the first chunk's queries, then (if it held only queries)
    # the second's, are answered; nothing after the first bad token wipes.
    lead, bad = whole_token_queries(data[:cut])
    if not bad:
        lead += whole_token_queries(data[cut:])[0]
    assert [q.kind for q in queries[:len(lead)]] == lead, (data, cut, queries)
    assert all(q.kind != "w" for q in queries[len(lead):]), (data, cut, queries)


def test_random_garbage_streams_never_wipe():
    rng = random.Random(1234)
    parser_count = 0
    for _ in range(300):
        garbage = b"#" + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 20_000)))
        chunks = []
        pos = 0
        while pos < len(garbage):
            size = rng.randint(1, 4096)
            chunks.append(garbage[pos:pos + size])
            pos += size
        assert all(q.kind != "w" for q in feed(*chunks))
        parser_count += 1
    assert parser_count == 300


def test_garbage_is_skipped_at_c_speed_with_one_error_per_chunk():
    rng = random.Random(7)
    chunk = bytes(rng.getrandbits(8) for _ in range(256 * 1024)).replace(b"{", b"(")
    parser = QueryParser()
    parser.receive_data(b"#")
    errors = sum(1 for _ in range(20) for q in parser.receive_data(chunk) if q.kind is None)
    # One per run of garbage: a run ends only at a letter standing alone (a few per 256 KiB of
    # random bytes); an error per token would be ~7,000 per chunk.
    assert errors <= 20 * 20, errors


def test_error_reply_names_the_port_of_the_other_protocol():
    ports = {"query_port": 1, "status_port": 2, "statserv_port": 3, "http_port": 4}
    assert "port 4" in json.loads(error_reply("GET", "http", ports)[:-1])["error"]
    assert "port 3" in json.loads(error_reply("LS", "statserv", ports)[:-1])["error"]
    assert "port 2" in json.loads(error_reply("{", "status", ports)[:-1])["error"]
    both = json.loads(error_reply("GET", "http_or_statserv", ports)[:-1])["error"]
    assert "port 4" in both and "port 3" in both
    del ports["http_port"]
    assert "off here" in json.loads(error_reply("GET", "http", ports)[:-1])["error"]


def test_error_reply_is_json_naming_valid_queries_and_ends_with_end_byte():
    reply = error_reply("hello")
    assert reply.endswith(END_BYTE)
    body = json.loads(reply[:-1])
    assert "hello" in body["error"]
    assert set(body["valid_queries"]) == {"m", "s", "w"}


def test_encode_reply_is_json_then_end_byte():
    assert encode_reply({}) == b"{}\x04"
    assert json.loads(encode_reply({"wiped": {"drives": 2}})[:-1]) == {"wiped": {"drives": 2}}
