"""The status fast paths (flat-object match, str(dict) as JSON) must agree with the general ones."""
import ast
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from DriveStateMonitor.status_protocol import (StatusError, StatusParser, _python_literal_as_json,
                                               parse_status)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12))
flat_dicts = st.dictionaries(st.text(min_size=1, max_size=8), scalars, max_size=6)


@settings(max_examples=300, deadline=None)
@given(flat_dicts)
def test_str_of_a_dict_reads_as_literal_eval_reads_it(d):
    text = str(d)
    converted = _python_literal_as_json(text)
    if converted is not None:
        try:
            value = json.loads(converted)
        except ValueError:
            return  # the fast path declines; literal_eval decides
        assert value == ast.literal_eval(text)


@settings(max_examples=300, deadline=None)
@given(flat_dicts, scalars, scalars)
def test_a_status_sent_as_str_dict_is_stored_as_its_python_value(extra, stamp, status):
    message = dict(extra, serial_number="SN1", time_stamp=stamp, status=status)
    report = parse_status(str(message).encode())
    # a string or a number as it is; None and True/False as their JSON text (status_protocol.py)
    kept = [value if type(value) in (str, int, float) else json.dumps(value)
            for value in (stamp, status)]
    assert [report.time_stamp, report.status] == kept


@settings(max_examples=300, deadline=None)
@given(st.lists(flat_dicts, min_size=1, max_size=4), st.sampled_from([b"", b"\n", b"\x04"]))
def test_whole_messages_frame_like_messages_fed_byte_by_byte(dicts, terminator):
    stream = b"".join(str(d).encode() + terminator for d in dicts)
    whole = StatusParser().receive_data(stream)
    dripping = StatusParser()
    by_byte = []
    for i in range(len(stream)):
        by_byte.extend(dripping.receive_data(stream[i:i + 1]))
    assert whole == by_byte


def test_lowercase_json_constants_in_a_python_literal_are_not_accepted_by_the_fast_path():
    assert _python_literal_as_json("{'status': true}") is None
    try:
        parse_status(b"{'serial_number': 'A', 'time_stamp': 1, 'status': true}")
    except StatusError:
        pass
    else:
        raise AssertionError("a dict that is neither JSON nor Python was accepted")


def test_words_inside_strings_are_left_alone():
    assert json.loads(_python_literal_as_json("{'a': 'None of True', 'b': None}")) == \
        {"a": "None of True", "b": None}
