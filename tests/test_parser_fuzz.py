"""Property tests: no input makes a parser raise anything but its documented results, and framing
does not depend on how the stream is split."""
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from DriveStateMonitor.announcement import REJECT_REASONS, Announcement, Rejected, parse_announcement
from DriveStateMonitor.query_protocol import Query, QueryParser
from DriveStateMonitor.status_protocol import (MAX_DEPTH, Framed, StatusError, StatusParser,
                                               parse_status)

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Bytes weighted toward the ones the parsers care about, so examples reach the interesting states.
SIGNIFICANT = b"{}[]()\"'\\\n\r\x04 :,mswMSWx0aTN\xff\xc3"
interesting_bytes = st.lists(st.one_of(st.sampled_from(list(SIGNIFICANT)), st.integers(0, 255)),
                             max_size=300).map(bytes)
any_bytes = st.one_of(st.binary(max_size=2000), interesting_bytes)


def split(data: bytes, cuts):
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, last = [], 0
    for point in points:
        chunks.append(data[last:point])
        last = point
    chunks.append(data[last:])
    return chunks


def frame_all(chunks, max_message=None):
    parser = StatusParser(max_message) if max_message else StatusParser()
    out = []
    for chunk in chunks:
        out.extend(parser.receive_data(chunk))
    out.extend(parser.eof_received())
    return out


def queries_of(chunks):
    parser = QueryParser()
    out = []
    for chunk in chunks:
        out.extend(parser.receive_data(chunk))
    return out


# --- never raising -----------------------------------------------------------------------------
@FUZZ
@given(data=any_bytes, cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_query_parser_returns_only_queries_for_any_bytes(data, cuts):
    for query in queries_of(split(data, cuts)):
        assert isinstance(query, Query)
        assert query.kind in ("m", "s", "w") or (query.kind is None and query.bad_token)


@FUZZ
@given(data=any_bytes, cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_status_parser_returns_only_framed_messages_for_any_bytes(data, cuts):
    for framed in frame_all(split(data, cuts), max_message=500):
        assert isinstance(framed, Framed)
        assert (framed.message is None) != (framed.error is None)
        if framed.message is not None:
            assert framed.message[:1] == b"{" and len(framed.message) <= 500


@FUZZ
@given(data=any_bytes)
def test_parse_status_returns_a_report_or_raises_status_error(data):
    try:
        report = parse_status(data)
    except StatusError as exc:
        assert str(exc)
    else:
        assert report.serial_number and isinstance(report.serial_number, str)
        assert set(json.loads(report.entry_json)) == {"time_stamp", "status"}


@FUZZ
@given(data=any_bytes)
def test_every_framed_message_parses_or_gives_a_status_error(data):
    for framed in frame_all([data]):
        if framed.message is not None:
            try:
                parse_status(framed.message)
            except StatusError:
                pass


@FUZZ
@given(data=any_bytes)
def test_parse_announcement_returns_an_announcement_or_a_rejection(data):
    parsed = parse_announcement(data)
    if isinstance(parsed, Rejected):
        assert parsed.reason in REJECT_REASONS
    else:
        assert isinstance(parsed, Announcement) and parsed.serial_number
        json.dumps(parsed.fields, allow_nan=False)  # what the `m` reply will hold is strict JSON


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                       max_size=4),
    max_leaves=20)


@FUZZ
@given(fields=st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_any_json_object_datagram_is_an_announcement_or_no_serial(fields):
    parsed = parse_announcement(json.dumps(fields).encode())
    if isinstance(parsed, Rejected):
        assert parsed.reason == "no_serial"
    else:
        assert parsed.fields == fields


# --- split invariance --------------------------------------------------------------------------
statuses = st.fixed_dictionaries({"serial_number": st.text(min_size=1, max_size=12),
                                  "time_stamp": json_values, "status": json_values})
TERMINATORS = [b"", b"\x04", b"\n", b"\r\n", b" ", b"\x04\n"]


def encode_status(value, as_python: bool) -> bytes:
    return (repr(value) if as_python else json.dumps(value)).encode("utf-8")


@FUZZ
@given(values=st.lists(st.tuples(statuses, st.booleans(), st.sampled_from(TERMINATORS)),
                       min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_valid_status_stream_split_anywhere_frames_the_same_messages(values, cuts):
    stream = b"".join(encode_status(v, py) + end for v, py, end in values)
    whole = frame_all([stream])
    assert frame_all(split(stream, cuts)) == whole
    assert [f.error for f in whole] == [None] * len(values)
    assert [parse_status(f.message).serial_number for f in whole] == \
        [str(v["serial_number"]) for v, _, _ in values]


@FUZZ
@given(letters=st.lists(st.sampled_from([b"m", b"s", b"w", b"M"]), max_size=20),
       separators=st.lists(st.sampled_from([b" ", b"\n", b"\r\n", b"\x04", b"\t  "]),
                           min_size=20, max_size=20),
       cuts=st.lists(st.integers(0, 200), max_size=6))
def test_query_stream_split_anywhere_gives_the_same_queries(letters, separators, cuts):
    data = b"".join(letter + separator for letter, separator in zip(letters, separators))
    whole = [q.kind for q in queries_of([data])]
    assert whole == [letter.lower().decode() for letter in letters]
    assert [q.kind for q in queries_of(split(data, cuts))] == whole


@FUZZ
@given(data=any_bytes, cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_nothing_after_a_refused_query_wipes_however_the_stream_is_split(data, cuts):
    # A split may change how garbage is answered (one error per run per chunk); never a wipe.
    for chunks in ([data], split(data, cuts)):
        kinds = [q.kind for q in queries_of(chunks)]
        if None in kinds:
            assert "w" not in kinds[kinds.index(None):], (chunks, kinds)


@FUZZ
@given(data=interesting_bytes)
def test_status_stream_fed_byte_by_byte_frames_like_the_whole(data):
    # Holds for any bytes as long as no message passes the size limit.
    assert frame_all([data[i:i + 1] for i in range(len(data))]) == frame_all([data])


# --- extremes ----------------------------------------------------------------------------------
def test_deep_nesting_frames_one_error_and_parse_status_rejects_it():
    for opener in (b"{", b"[", b"("):
        data = b"{" + opener * 100_000
        framed = frame_all([data])
        assert len(framed) == 1 and framed[0].error and str(MAX_DEPTH) in framed[0].error
        try:
            parse_status(data)
        except StatusError:
            pass
        else:
            raise AssertionError("nesting accepted")


def test_deep_nesting_dripped_in_small_chunks_gives_one_error():
    data = b"{" * 100_000
    chunks = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    assert len(frame_all(chunks)) == 1


def test_giant_line_gets_one_error_and_memory_stays_bounded():
    parser = StatusParser(max_message=64 * 1024)
    out = []
    chunk = b'{"status": "' + b"x" * (256 * 1024)
    out.extend(parser.receive_data(chunk))
    for _ in range(40):  # 10 MiB with no terminator
        out.extend(parser.receive_data(b"y" * (256 * 1024)))
        assert parser.buffered <= 64 * 1024
    out.extend(parser.receive_data(b"\n{'serial_number': 'A', 'time_stamp': 1, 'status': 2}"))
    assert [f.error is not None for f in out] == [True, False]


def test_giant_garbage_query_line_gives_one_short_error():
    queries = queries_of([b"q" * (4 * 1024 * 1024) + b"\nm"])
    assert [q.kind for q in queries] == [None, "m"] and len(queries[0].bad_token) <= 32


def test_giant_announcement_is_parsed_or_rejected():
    assert parse_announcement(b"[" * 65_000).reason in REJECT_REASONS
    # A serial no URL or Status Server line could hold is refused (intake.MAX_SERIAL_CHARS).
    assert parse_announcement(b'{"serial_number": "' + b"s" * 65_000 + b'"}').reason == "unservable"
    assert parse_announcement(b'{"serial_number": "' + b"s" * 256 + b'", "x": "' + b"y" * 65_000
                              + b'"}').serial_number == "s" * 256


def test_invalid_utf8_everywhere_never_raises():
    for data in (b"\xff" * 100, b"{'serial_number': '\xc3', 'time_stamp': 1, 'status': 2}",
                 b"\xed\xa0\x80", b"{\"a\": \"\xf4\x90\x80\x80\"}"):
        queries_of([data])
        for framed in frame_all([data]):
            if framed.message is not None:
                try:
                    parse_status(framed.message)
                except StatusError:
                    pass
        assert parse_announcement(data).reason == "not_json"
