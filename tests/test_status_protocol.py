"""The status protocol (port 3110), sans-IO: framing rules, parse_status, replies."""
import json

import pytest

from DriveStateMonitor.status_protocol import (END_BYTE, MAX_DEPTH, Framed, StatusError,
                                               StatusParser, error_reply, parse_status)

ORIGINAL = b"{'serial_number': 'ZA1', 'time_stamp': '2015-06-03 14:22:01', 'status': '001'}"
JSON_STATUS = b'{"serial_number": "ZA2", "time_stamp": 1433341321, "status": "002"}'


def frame(*chunks: bytes, eof: bool = False, max_message=None):
    parser = StatusParser(max_message) if max_message else StatusParser()
    out = []
    for chunk in chunks:
        out.extend(parser.receive_data(chunk))
    if eof:
        out.extend(parser.eof_received())
    return out


def messages(framed):
    return [f.message for f in framed]


def errors(framed):
    return [f.error for f in framed if f.error is not None]


# --- framing -----------------------------------------------------------------------------------
def test_original_style_object_without_terminator_completes_at_closing_brace():
    assert frame(ORIGINAL) == [Framed(ORIGINAL)]


def test_object_is_not_complete_before_its_closing_brace():
    assert frame(ORIGINAL[:-1]) == []


def test_end_byte_completes_a_message():
    assert frame(b'{"a": 1' + END_BYTE) == [Framed(b'{"a": 1')]


def test_newline_inside_an_open_object_is_whitespace():
    assert frame(b'{"a": 1\n') == []
    assert frame(b'{"a": 1\n', b'\n}\n') == [Framed(b'{"a": 1\n\n}')]


def test_newline_outside_an_object_separates_messages():
    assert frame(b'\n' + ORIGINAL + b'\n\n' + ORIGINAL) == [Framed(ORIGINAL), Framed(ORIGINAL)]


def test_end_of_stream_completes_a_message():
    assert frame(b'{"a": 1', eof=True) == [Framed(b'{"a": 1')]


def test_end_of_stream_with_nothing_buffered_gives_nothing():
    assert frame(ORIGINAL, b" \r\n", eof=True) == [Framed(ORIGINAL)]


def test_terminator_after_a_complete_object_is_just_a_separator():
    assert frame(ORIGINAL + b"\x04\r\n") == [Framed(ORIGINAL)]


def test_python_literal_dict_frames_and_parses():
    literal = b"{'serial_number': 'ZA1', 'time_stamp': None, 'status': True}"
    [framed] = frame(literal)
    report = parse_status(framed.message)
    # None and True are neither text nor numbers: kept as their JSON text (types at the boundary)
    assert (report.serial_number, report.time_stamp, report.status) == ("ZA1", "null", "true")
    assert json.loads(report.entry_json) == {"time_stamp": "null", "status": "true"}


@pytest.mark.parametrize("inner", [b'"}"', b'"{"', b"'}'", b"'{{'", b'"]]"', b"'))'"])
def test_brackets_inside_strings_do_not_count(inner):
    message = b'{"serial_number": "A", "time_stamp": 1, "status": ' + inner + b"}"
    assert frame(message) == [Framed(message)]


def test_escaped_double_quote_does_not_end_the_string():
    message = b'{"serial_number": "A", "time_stamp": 1, "status": "say \\"}\\" now"}'
    assert frame(message) == [Framed(message)]
    assert parse_status(message).status == 'say "}" now'


def test_escaped_single_quote_does_not_end_the_string():
    message = b"{'serial_number': 'A', 'time_stamp': 1, 'status': 'it\\'s } done'}"
    assert frame(message) == [Framed(message)]
    assert parse_status(message).status == "it's } done"


def test_escaped_backslash_before_closing_quote_ends_the_string():
    message = b'{"serial_number": "A", "time_stamp": 1, "status": "C:\\\\"}'
    assert frame(message) == [Framed(message)]
    assert parse_status(message).status == "C:\\"


def test_backslash_at_end_of_chunk_waits_for_the_escaped_byte():
    message = b'{"serial_number": "A", "time_stamp": 1, "status": "x\\"}"}'
    cut = message.index(b"\\") + 1
    assert frame(message[:cut], message[cut:]) == [Framed(message)]


def test_single_quote_inside_double_quoted_string_does_not_count():
    message = b'{"serial_number": "A", "time_stamp": 1, "status": "don\'t }"}'
    assert frame(message) == [Framed(message)]


def test_nested_objects_complete_at_the_outermost_brace():
    message = b'{"serial_number": "A", "time_stamp": 1, "status": {"a": [{"b": (1)}]}}'
    assert frame(message) == [Framed(message)]


def test_several_messages_in_one_chunk_are_all_framed_in_order():
    data = ORIGINAL + JSON_STATUS + b"\n" + b'{"x": 1\x04' + b"  " + ORIGINAL
    assert messages(frame(data)) == [ORIGINAL, JSON_STATUS, b'{"x": 1', ORIGINAL]


def test_leading_separators_before_a_message_are_skipped():
    assert frame(b"\r\n \x04\t" + ORIGINAL) == [Framed(ORIGINAL)]


def test_garbage_gets_an_error_at_once_without_waiting_for_a_terminator():
    [framed] = frame(b"hello")
    assert framed.message is None and "{" in framed.error


def test_one_garbage_run_gets_only_one_error():
    assert len(errors(frame(b"hello world } { more", b" garbage", b" still"))) == 1


def test_message_after_garbage_and_a_newline_is_framed():
    framed = frame(b"garbage\n" + ORIGINAL)
    assert len(errors(framed)) == 1
    assert framed[-1] == Framed(ORIGINAL)


def test_each_garbage_line_gets_its_own_error():
    assert len(errors(frame(b"abc\nxyz\x04[1]\n"))) == 3


def test_garbage_after_a_complete_object_gets_an_error():
    framed = frame(ORIGINAL + b"junk\n")
    assert framed[0] == Framed(ORIGINAL)
    assert framed[1].message is None and framed[1].error


def test_garbage_then_end_of_stream_gives_no_second_error():
    assert len(errors(frame(b"nope", eof=True))) == 1


def test_nesting_deeper_than_max_depth_gets_an_error_at_once():
    framed = frame(b"{" + b"[" * MAX_DEPTH)
    assert len(framed) == 1 and str(MAX_DEPTH) in framed[0].error


def test_nesting_exactly_max_depth_is_framed():
    message = b"{\"a\": " + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert frame(message) == [Framed(message)]


def test_over_deep_message_is_dropped_up_to_the_newline_and_the_next_message_works():
    framed = frame(b"{" * 100 + b"}" * 100 + b"\n" + ORIGINAL)
    assert len(errors(framed)) == 1
    assert framed[-1] == Framed(ORIGINAL)


def test_message_over_max_message_gets_an_error_before_it_ends():
    framed = frame(b'{"status": "' + b"x" * 200, max_message=100)
    assert len(framed) == 1 and "100" in framed[0].error


def test_over_long_message_arriving_whole_gets_the_same_error():
    message = b'{"status": "' + b"x" * 200 + b'"}'
    framed = frame(message, max_message=100)
    assert len(framed) == 1 and "100" in framed[0].error


def test_later_messages_work_after_an_over_long_one():
    big = b'{"status": "' + b"x" * 500 + b'"}\n'
    small = b'{"serial_number": "A", "time_stamp": 1, "status": "ok"}'
    framed = frame(big[:150], big[150:300], big[300:] + small, max_message=100)
    assert len(errors(framed)) == 1
    assert framed[-1] == Framed(small)


def test_over_long_message_split_anywhere_gets_one_error_and_later_message_works():
    big = b'{"status": "' + b"x" * 40 + b'"}\n'
    small = b'{"a": 1}'
    for cut in range(len(big) + len(small) + 1):
        data = big + small
        framed = frame(data[:cut], data[cut:], max_message=30)
        assert len(errors(framed)) == 1, cut
        assert framed[-1] == Framed(small), cut


def test_message_of_exactly_max_message_is_accepted():
    message = b'{"a": "' + b"x" * 20 + b'"}'
    assert frame(message, max_message=len(message)) == [Framed(message)]
    assert frame(message[:-1], message[-1:], max_message=len(message)) == [Framed(message)]


def test_parser_does_not_hold_completed_messages():
    parser = StatusParser()
    parser.receive_data(ORIGINAL * 100)
    assert parser.buffered == 0


def test_valid_stream_split_at_every_position_gives_the_same_messages():
    stream = (ORIGINAL + b"\x04" + JSON_STATUS + b"\r\n"
              + b"{'serial_number': 'Q\\'}', 'time_stamp': 3, 'status': \"a\\\"{b\"}"
              + b' {"serial_number": "E", "time_stamp": [1, {"k": "}"}], "status": null}'
              + b'{"serial_number": "F", "time_stamp": 5, "status": "tail"')
    expected = frame(stream, eof=True)
    assert len(expected) == 5 and all(f.error is None for f in expected)
    for cut in range(len(stream) + 1):
        assert frame(stream[:cut], stream[cut:], eof=True) == expected, cut
    for a in range(0, len(stream) + 1, 7):
        for b in range(a, len(stream) + 1, 5):
            assert frame(stream[:a], stream[a:b], stream[b:], eof=True) == expected, (a, b)


def test_valid_stream_fed_byte_by_byte_gives_the_same_messages():
    stream = ORIGINAL + JSON_STATUS + b"\n" + ORIGINAL
    chunks = [stream[i:i + 1] for i in range(len(stream))]
    assert frame(*chunks) == frame(stream)


# --- parse_status ------------------------------------------------------------------------------
def test_json_status_parses_into_a_report():
    report = parse_status(JSON_STATUS)
    assert report.serial_number == "ZA2"
    assert json.loads(report.entry_json) == {"time_stamp": 1433341321, "status": "002"}


def test_entry_json_holds_time_stamp_then_status_only():
    report = parse_status(b'{"serial_number": "A", "time_stamp": 1, "status": "x", "extra": 9}')
    assert report.entry_json == b'{"time_stamp": 1, "status": "x"}'


def test_integer_serial_number_becomes_a_string():
    assert parse_status(b'{"serial_number": 42, "time_stamp": 1, "status": 2}').serial_number == "42"


@pytest.mark.parametrize("field", ["serial_number", "time_stamp", "status"])
def test_missing_field_is_an_error_naming_it(field):
    value = {"serial_number": "A", "time_stamp": 1, "status": "x"}
    del value[field]
    with pytest.raises(StatusError, match=field):
        parse_status(json.dumps(value).encode())


def test_several_missing_fields_are_all_named():
    with pytest.raises(StatusError) as info:
        parse_status(b'{"status": 1}')
    assert "serial_number" in str(info.value) and "time_stamp" in str(info.value)


@pytest.mark.parametrize("message", [b"[1, 2, 3]", b'"text"', b"42", b"null", b"(1, 2)"])
def test_non_dict_is_an_error(message):
    with pytest.raises(StatusError, match="dict"):
        parse_status(message)


@pytest.mark.parametrize("serial", [b"None", b"True", b"1.5", b"[1]", b"{'a': 1}"])
def test_serial_number_that_is_not_a_string_is_an_error(serial):
    with pytest.raises(StatusError, match="serial_number"):
        parse_status(b"{'serial_number': " + serial + b", 'time_stamp': 1, 'status': 2}")


def test_empty_serial_number_is_an_error():
    with pytest.raises(StatusError, match="empty"):
        parse_status(b'{"serial_number": "", "time_stamp": 1, "status": 2}')


def test_huge_integer_serial_number_is_a_status_error_not_a_crash():
    # A hex literal past sys.get_int_max_str_digits(): str() of it raises plain ValueError.
    message = b"{'serial_number': 0x" + b"f" * 4000 + b", 'time_stamp': 1, 'status': 2}"
    with pytest.raises(StatusError, match="more than 4300 digits"):
        parse_status(message)


@pytest.mark.parametrize("value", [b"{1, 2}", b"float('nan')", b"1j", b"b'raw'", b"NaN", b"Infinity",
                                   b"-Infinity", b"{(1, 2): 3}", b"0x" + b"f" * 4000])
def test_value_that_json_cannot_represent_is_an_error(value):
    with pytest.raises(StatusError):
        parse_status(b"{'serial_number': 'A', 'time_stamp': 1, 'status': " + value + b"}")


def test_json_nan_is_an_error():
    with pytest.raises(StatusError, match="JSON"):
        parse_status(b'{"serial_number": "A", "time_stamp": NaN, "status": 1}')


def test_python_code_is_never_evaluated():
    with pytest.raises(StatusError):
        parse_status(b"{'serial_number': __import__('os').getpid(), 'time_stamp': 1, 'status': 2}")


@pytest.mark.parametrize("message", [b"", b"   ", b"{", b"{'a': }", b"{\"a\": 1,}x"])
def test_malformed_message_is_an_error(message):
    with pytest.raises(StatusError):
        parse_status(message)


def test_invalid_utf8_is_an_error():
    with pytest.raises(StatusError, match="UTF-8"):
        parse_status(b'{"serial_number": "\xff", "time_stamp": 1, "status": 2}')


@pytest.mark.parametrize("message", [b"[" * 100_000, b"{" * 100_000, b"(" * 100_000,
                                     b"-" * 100_000 + b"1", b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_absurd_nesting_given_directly_is_an_error_not_a_crash(message):
    with pytest.raises(StatusError):
        parse_status(message)


# --- replies -----------------------------------------------------------------------------------
def test_error_reply_is_json_with_the_reason_then_end_byte():
    reply = error_reply("missing field: status")
    assert reply.endswith(END_BYTE)
    assert json.loads(reply[:-1]) == {"error": "missing field: status"}


# --- the fast paths of parse_status, equivalent to the full path -----------------------------
import unittest.mock  # noqa: E402

from hypothesis import example, given, settings, strategies as st  # noqa: E402

import DriveStateMonitor.status_protocol as status_protocol  # noqa: E402


def outcome(message: bytes):
    """What parse_status makes of `message`, types included (1, 1.0 and True differ)."""
    try:
        report = parse_status(message)
    except StatusError as exc:
        return ("error", str(exc))
    return ("report", report.serial_number, report.entry_json,
            type(report.time_stamp), repr(report.time_stamp),
            type(report.status), repr(report.status))


def outcome_of_the_full_path(message: bytes):
    """The same with both fast paths off: every message read by JSON/literal_eval, checked by
    check_value, its entry written by the JSON encoder."""
    with unittest.mock.patch.object(status_protocol, "_parse_flat", lambda text: None), \
            unittest.mock.patch.object(status_protocol, "_SCALAR_JSON", {}):
        return outcome(message)


SCALARS = (st.text(max_size=12) | st.integers(min_value=-10 ** 20, max_value=10 ** 20)
           | st.floats(allow_nan=True, allow_infinity=True) | st.booleans() | st.none())
FIELDS = st.sampled_from(["serial_number", "time_stamp", "status", "x", "'", '"', ""])
STATUSES = st.dictionaries(FIELDS | st.text(max_size=6), SCALARS | st.lists(SCALARS, max_size=2),
                           max_size=5)


def render(value: dict, form: int, compact: bool) -> bytes:
    if form == 0:
        text = str(value)
    elif form == 1:
        text = json.dumps(value)
    else:
        text = json.dumps(value, ensure_ascii=False)
    if compact:
        text = text.replace(", ", ",").replace(": ", ":")
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=600, deadline=None)
@given(STATUSES, st.integers(0, 2), st.booleans())
@example({"serial_number": "A", "time_stamp": "t", "status": "001"}, 0, False)
@example({"serial_number": "A", "time_stamp": -0.0, "status": 1e300}, 1, False)
@example({"serial_number": "A", "time_stamp": 12345678901234567, "status": 0.1}, 0, True)
@example({"serial_number": "A", "time_stamp": "\x01", "status": "é"}, 2, False)
def test_fast_paths_give_exactly_what_the_full_path_gives(value, form, compact):
    message = render(value, form, compact)
    assert outcome(message) == outcome_of_the_full_path(message)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("{}'\": ,-.0123456789aéx\\\x01"), max_size=40))
def test_fast_paths_agree_with_the_full_path_on_near_misses(text):
    message = text.encode("utf-8")
    assert outcome(message) == outcome_of_the_full_path(message)


@pytest.mark.parametrize("message", [
    ORIGINAL, JSON_STATUS,
    b"{'serial_number': 'S', 'time_stamp': 1764474000.25, 'status': -3}",
    b'{"serial_number":"S","time_stamp":"t","status":"002","extra":"x"}',
])
def test_the_usual_statuses_take_the_fast_path(message):
    assert status_protocol._parse_flat(message.decode()) is not None


@pytest.mark.parametrize("message", [
    b"{'serial_number': 'S', 'time_stamp': 1e999, 'status': 1}",      # exponent: may be infinite
    b"{'serial_number': 'S', 'time_stamp': 1" + b"0" * 20 + b", 'status': 1}",  # many digits
    b"{'serial_number': 'S', 'time_stamp': True, 'status': None}",  # constants
    b"{'serial_number': 'S\\ud800', 'time_stamp': 1, 'status': 1}",  # escapes
    b" {'serial_number': 'S', 'time_stamp': 1, 'status': 1}",      # outside the braces
])
def test_anything_unusual_takes_the_full_path(message):
    assert status_protocol._parse_flat(message.decode()) is None
