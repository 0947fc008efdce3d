"""The query protocol (port 2203), sans-IO: bytes in, queries out."""
import json

import pytest

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
                                  b"msw", b"\tm\x0bs\x0cw", b"  m  \r\n\x04 s\x04\x04w "])
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


def test_letter_then_unknown_byte_answers_the_letter_then_one_error():
    assert feed(b"mx") == [Query("m"), Query(None, "x")]


def test_unknown_byte_then_letters_is_one_bad_token():
    assert feed(b"xm s") == [Query(None, "xm"), Query("s")]


def test_query_after_bad_token_on_the_same_connection_is_answered():
    assert feed(b"bogus\r\nm\n") == [Query(None, "bogus"), Query("m")]


def test_each_bad_token_gets_its_own_error():
    assert feed(b"ab cd") == [Query(None, "ab"), Query(None, "cd")]


def test_bad_token_split_across_chunks_gives_one_error():
    assert feed(b"ab", b"cd", b"ef\nm") == [Query(None, "ab"), Query("m")]


def test_rest_of_bad_token_in_next_chunk_is_dropped_until_separator():
    assert feed(b"q", b"m", b" m") == [Query(None, "q"), Query("m")]


def test_long_bad_token_is_shown_truncated():
    queries = feed(b"z" * 10_000 + b"\n")
    assert queries == [Query(None, "z" * BAD_TOKEN_SHOWN)]


def test_invalid_utf8_in_bad_token_is_shown_with_replacement_characters():
    assert feed(b"\xff\xfe\n") == [Query(None, "\ufffd\ufffd")]


def test_letters_split_across_chunks_give_the_same_queries():
    data = b"m s\r\nw\x04M"
    for cut, queries in feed_split_everywhere(data):
        assert queries == [Query("m"), Query("s"), Query("w"), Query("m")], cut


def test_bad_token_split_at_every_position_gives_one_error_then_the_query():
    data = b"bad\nm"
    for cut, queries in feed_split_everywhere(data):
        assert [q.kind for q in queries] == [None, "m"], cut


def test_byte_at_a_time_gives_the_same_queries():
    data = b"m s xyz w\r\n"
    parser = QueryParser()
    queries = []
    for i in range(len(data)):
        queries.extend(parser.receive_data(data[i:i + 1]))
    assert queries == [Query("m"), Query("s"), Query(None, "x"), Query("w")]


def test_error_reply_is_json_naming_valid_queries_and_ends_with_end_byte():
    reply = error_reply("hello")
    assert reply.endswith(END_BYTE)
    body = json.loads(reply[:-1])
    assert "hello" in body["error"]
    assert set(body["valid_queries"]) == {"m", "s", "w"}


def test_encode_reply_is_json_then_end_byte():
    assert encode_reply({}) == b"{}\x04"
    assert json.loads(encode_reply({"wiped": {"drives": 2}})[:-1]) == {"wiped": {"drives": 2}}
