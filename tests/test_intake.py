"""The boundary contract (intake.py) and its use by the status protocol: what is accepted can be served."""
import ast
import glob
import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor import status_protocol
from DriveStateMonitor.intake import (MAX_DEPTH, MAX_INT_DIGITS, IntakeError, check_python_literal,
                                      check_value, json_loads, parse_int)
from DriveStateMonitor.status_protocol import StatusError, StatusParser, parse_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- check_value ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    math.inf, -math.inf, math.nan, {"a": [1, {"b": math.inf}]},
    "\ud800", {"\udfff": 1}, ["ok", "x\udc80y"],
    10 ** MAX_INT_DIGITS, -(10 ** MAX_INT_DIGITS),
    {1: "int key"}, {None: 1}, b"bytes", {1, 2}, 1j, object(),
], ids=lambda value: "int of %d bits" % value.bit_length() if type(value) is int else repr(value))
def test_unservable_values_are_refused(value):
    with pytest.raises(IntakeError):
        check_value(value)


@pytest.mark.parametrize("value", [
    None, True, 0, -1, 10 ** MAX_INT_DIGITS - 1, 1.5, 1e308, "", "caf\u00e9 \U0001f600",
    {"a": [1, 2.5, None, {"b": "c"}]}, (1, 2), [],
], ids=lambda value: "int of %d bits" % value.bit_length() if type(value) is int else repr(value))
def test_servable_values_pass(value):
    check_value(value)


def test_nesting_limit_counts_containers():
    nested = []
    for _ in range(MAX_DEPTH):
        nested = [nested]
    check_value(nested[0])  # MAX_DEPTH levels
    with pytest.raises(IntakeError, match="deeper"):
        check_value(nested)


# --- json_loads, parse_int ------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1e400", "[-1e400]", "NaN", "Infinity", "-Infinity",
                                  "1" * (MAX_INT_DIGITS + 1), "-" + "1" * (MAX_INT_DIGITS + 1)])
def test_json_loads_refuses_unservable_numbers_while_parsing(text):
    with pytest.raises(IntakeError):
        json_loads(text)


def test_json_loads_accepts_the_largest_servable_numbers():
    assert json_loads("1" * MAX_INT_DIGITS) == int("1" * MAX_INT_DIGITS)
    assert json_loads("-1.7e308") == -1.7e308


@pytest.mark.parametrize("text", ["9" * (MAX_INT_DIGITS + 1), "", "12a", "1_000", "\u0661",
                                  "1.5", "0x10"])
def test_parse_int_refuses_before_converting(text):
    with pytest.raises(IntakeError):
        parse_int(text)


def test_parse_int_accepts_plain_digits():
    assert parse_int(" 42 ") == 42 and parse_int("-7") == -7
    assert parse_int("9" * MAX_INT_DIGITS) == 10 ** MAX_INT_DIGITS - 1


# --- Python literals before literal_eval ----------------------------------------------------------
CRASHERS = [
    "{'serial_number': 'A', 'time_stamp': 1, 'status': " + "+".join(["1"] * 200_000) + "}",
    "{'serial_number': 'A', 'time_stamp': 1, 'status': " + "-" * 200_000 + "1}",
    "{'serial_number': 'A', 'time_stamp': 1, 'status': 1" + "*1" * 1000 + "}",
    "{'status': 'a' 'b'}", "{'status': f(1)}", "{'status': x}", "{'status': 1j}",
    "{'status': (1 if 1 else 2)}", "{'status': lambda: 1}", "{'status': [i for i in ()]}",
]


@pytest.mark.parametrize("text", CRASHERS, ids=lambda text: text[:60])
def test_non_literal_text_is_refused_before_literal_eval(text, monkeypatch):
    def literal_eval_must_not_run(node):
        raise AssertionError("literal_eval reached with %r" % node[:60])

    monkeypatch.setattr(status_protocol.ast, "literal_eval", literal_eval_must_not_run)
    with pytest.raises(StatusError):
        parse_status(text.encode())


@pytest.mark.parametrize("text", [
    "{'serial_number': 'A', 'time_stamp': -1.5e-3, 'status': (1, -2, +3, 0x1f, 1_000, .5)}",
    "{'serial_number': u'A', 'time_stamp': None, 'status': {'k': [True, False, r'\\d']}}",
    "{'serial_number': 'A\\'s', 'time_stamp': \"it's\", 'status': [],}",
])
def test_plain_literals_pass_the_check_and_parse(text):
    check_python_literal(text)
    assert ast.literal_eval(text) is not None
    parse_status(text.encode())


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                          allow_infinity=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12))
@settings(max_examples=200, deadline=None)
def test_every_str_of_plain_data_passes_the_literal_check(status):
    # What a script's str(dict) produces is never refused by the pre-check.
    text = str({"serial_number": "A", "time_stamp": 1, "status": status})
    check_python_literal(text)


def _old_pythons():
    found = []
    for version in ("3.8", "3.9", "3.10"):
        found.extend(sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/%s.*/bin/python3"
                                                         % version)))[-1:])
    return found


@pytest.mark.parametrize("python", _old_pythons() or [sys.executable])
def test_status_that_crashed_old_pythons_is_refused_there(python):
    # `1+1+...` of 200,000 terms killed CPython 3.8-3.10 with SIGSEGV inside ast.literal_eval.
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from DriveStateMonitor.status_protocol import parse_status, StatusError\n"
            "text = b\"{'serial_number': 'A', 'time_stamp': 1, 'status': \" + b'+'.join([b'1'] "
            "* 200000) + b'}'\n"
            "try:\n    parse_status(text)\nexcept StatusError as e:\n    print('refused', e)\n"
            % ROOT)
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-500:])
    assert result.stdout.startswith("refused")


# --- statuses meet the contract ---------------------------------------------------------------------
@pytest.mark.parametrize("message", [
    b'{"serial_number": "A", "time_stamp": 1e400, "status": 1}',
    b'{"serial_number": "A", "time_stamp": 1, "status": [NaN]}',
    b"{'serial_number': 'A', 'time_stamp': 1, 'status': 1e400}",
    b'{"serial_number": "A", "time_stamp": 1, "status": "\\ud800"}',
    b'{"serial_number": "\\udfff", "time_stamp": 1, "status": 1}',
    b"{'serial_number': 'A', 'time_stamp': 1, 'status': '\\ud800'}",
    b'{"serial_number": "A", "time_stamp": 1, "status": {"\\ud800": 1}}',
    b"{'serial_number': 'A', 'time_stamp': 1, 'status': {1: 'a', 'b': 2}}",
    b'{"serial_number": "A", "time_stamp": 1, "status": ' + b"1" * 4301 + b"}",
    b'{"serial_number": "A", "time_stamp": 1, "status": ' + b"[" * 40 + b"]" * 40 + b"}",
], ids=lambda message: repr(message[40:80]))
def test_unservable_status_is_refused_with_a_reason(message):
    with pytest.raises(StatusError) as refused:
        parse_status(message)
    assert str(refused.value)


# --- framing: one message, one reply -------------------------------------------------------------------
STATUS = {"serial_number": "ZA1", "time_stamp": "2015-06-03 14:22:01",
          "status": {"state": "ok", "counts": [1, 2, {"x": "a\nb"}]}}


@pytest.mark.parametrize("indent", [1, 2, 4, "\t"])
def test_pretty_printed_status_sent_the_old_way_is_one_message(indent):
    message = json.dumps(STATUS, indent=indent).encode()
    framed = StatusParser().receive_data(message)  # no terminator: the client waits for \x04
    assert len(framed) == 1 and framed[0].error is None
    report = parse_status(framed[0].message)
    # (an object as a status is kept as its JSON text: status_protocol.py)
    assert json.loads(report.entry_json) == {"time_stamp": STATUS["time_stamp"],
                                             "status": json.dumps(STATUS["status"])}


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=15),
       st.sampled_from([None, 0, 1, 2, 4]), st.integers(min_value=0, max_value=10_000),
       st.sampled_from([b"", b"\n", b"\x04", b"\r\n"]))
@settings(max_examples=300, deadline=None)
def test_any_status_however_printed_or_split_gets_exactly_one_reply(status, indent, cut, tail):
    value = {"serial_number": "A", "time_stamp": 1, "status": status}
    for message in (json.dumps(value, indent=indent).encode(), str(value).encode()):
        data = message + tail
        cut_at = cut % (len(data) + 1)
        parser = StatusParser()
        framed = parser.receive_data(data[:cut_at]) + parser.receive_data(data[cut_at:])
        assert len(framed) == 1 and framed[0].error is None, (data, framed)
        parse_status(framed[0].message)


@pytest.mark.parametrize("broken", [
    json.dumps({"serial_number": "A", "status": "x" * 300}, indent=2).encode(),   # too long
    b"{\n" + b'  "a": [\n' * 40 + b"  1\n" + b"  ]\n" * 40 + b"}",                    # too deep
])
def test_broken_pretty_printed_message_gets_one_error_then_the_next_works(broken):
    parser = StatusParser(max_message=200)
    framed = parser.receive_data(broken + b"\n" + b"{'serial_number': 'B', 'time_stamp': 1, "
                                                  b"'status': 2}")
    assert [f.error is not None for f in framed] == [True, False], framed


# --- needs_value_check: skipping the walk only where it could find nothing -------------------
from hypothesis import example  # noqa: E402

from DriveStateMonitor.intake import (MAX_DEPTH as _DEPTH, check_value as _check_value,  # noqa: E402
                                      json_loads as _json_loads,
                                      needs_value_check as _needs_value_check)

_ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=6)  # lone surrogates too
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
    max_leaves=40)


def _deep(value, levels):
    for n in range(levels):
        value = [value] if n % 2 else {"k": value}
    return value


def _skipping_is_safe(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # a raw lone surrogate: never the text of a datagram decoded from UTF-8
    try:
        value = _json_loads(text)
    except (ValueError, RecursionError):
        return  # refused before any check
    if not _needs_value_check(text):
        _check_value(value)  # must not raise: nothing was left for the walk to find


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES, st.integers(0, _DEPTH + 3), st.booleans())
@example({"\ud800": None}, 0, False)  # found by hypothesis: the raw surrogate, not an escape
def test_text_that_skips_the_walk_always_meets_check_value(value, levels, ascii_only):
    # ensure_ascii writes lone surrogates (st.text makes them) as \ud800 escapes
    _skipping_is_safe(json.dumps(_deep(value, levels), ensure_ascii=ascii_only))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}[]",:\\u0123456789dabcefn tr.-e'), max_size=60))
@example('{"\\udc00": 1}')
@example('["\\ud800"]')
def test_any_text_that_skips_the_walk_meets_check_value(text):
    _skipping_is_safe(text)


def test_the_walk_is_kept_for_escapes_and_deep_text():
    assert _needs_value_check('{"a": "\\ud800"}')
    assert _needs_value_check("[" * (_DEPTH + 1) + "]" * (_DEPTH + 1))
    assert not _needs_value_check('{"serial_number": "Z", "n": [1, {"a": 2.5}]}')


# --- json_loads: the short-text decoder is the checked decoder ---------------------------------
from hypothesis import assume  # noqa: E402

from DriveStateMonitor import intake as _intake  # noqa: E402


def _decoded(decoder, text):
    try:
        return ("value", decoder.decode(text))
    except IntakeError as exc:
        return ("refused", str(exc))
    except (ValueError, RecursionError) as exc:
        return ("error", type(exc).__name__)


def _same_value(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet=st.sampled_from('{}[]",:0123456789-+.eE tnrufals\\N'), max_size=80),
    _JSON_VALUES.map(json.dumps)))
@example("1" * MAX_INT_DIGITS)
@example("-" + "9" * (MAX_INT_DIGITS - 1))
@example("[1e400]")
@example("NaN")
def test_short_texts_decode_exactly_as_the_checked_decoder_does(text):
    assume(len(text) <= MAX_INT_DIGITS)
    fast, full = _decoded(_intake._SHORT_TEXT_DECODER, text), _decoded(_intake._DECODER, text)
    assert fast[0] == full[0], (text, fast, full)
    if fast[0] == "value":
        assert _same_value(fast[1], full[1]), (text, fast, full)
    if fast[0] == "value":
        assert _same_value(json_loads(text), full[1])  # json_loads takes the short decoder


def test_only_texts_too_short_for_an_overlong_integer_take_the_short_decoder():
    # the longest short text is one integer of exactly the largest servable length
    assert json_loads("9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    with pytest.raises(IntakeError):
        json_loads("9" * (MAX_INT_DIGITS + 1))
    with pytest.raises(IntakeError):
        json_loads("[%s]" % ("9" * (MAX_INT_DIGITS + 1)))
