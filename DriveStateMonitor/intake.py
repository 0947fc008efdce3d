"""The boundary contract: what the DSM accepts from a client or the network can be served everywhere.

Theory of operation
-------------------
Everything the DSM stores is served again later, on outputs with stricter rules than the input
had: `m`, `s` and the HTTP API are JSON (no NaN or Infinity), `/metrics` and SAVE are strict UTF-8
(no lone surrogate such as the JSON escape `\\ud800`), the snapshot is read back by a Python that
may be another version (3.11+ refuses to convert ints of more than 4300 digits), and the tree and
the page walk nested values recursively. A value that one output cannot serve would fail on
*every* later request for it — and again after each restart, since it is in the snapshot. So the
check is made once, at intake, where the client who sent it can still be told:

    check_value(value)      finite numbers, valid Unicode strings (keys too), plain JSON types,
                            nesting at most MAX_DEPTH levels; raises IntakeError with the reason
    check_text(text)        one string: valid Unicode
    check_serial(serial)    a serial number short enough to be a URL path and a tree name
    parse_int(text)         a decimal digit string of at most MAX_INT_DIGITS digits, else error
    json_loads(text)        json.loads that refuses NaN/Infinity and over-long digit strings
                            while parsing, before any int() runs
    needs_value_check(text) False when json_loads(text) certainly meets check_value: no `\\u`
                            escape, at most MAX_DEPTH opening brackets
    check_python_literal(text)
                            the text of a Python-literal status is only plain literals (strings,
                            numbers with one sign, True/False/None, brackets, commas, colons)
                            before `ast.literal_eval` sees it: `1+1+1+...` (200,000 terms) or
                            `------1` would otherwise crash CPython 3.8-3.10's compiler (SIGSEGV)

Every port uses this module: announcements (announcement.py), statuses (status_protocol.py),
HTTP headers (http_protocol.py) and Status Server numbers (statserv_protocol.py).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

# Deeper nesting than any announcement (3 levels) or status needs; far from every recursion limit
# (json, ast, the tree's publisher, the page's renderer).
MAX_DEPTH = 32
# CPython 3.11+'s default sys.get_int_max_str_digits(): an int of at most this many digits converts
# and prints on every supported Python, and costs microseconds even where conversion is quadratic
# (3.8-3.10).
MAX_INT_DIGITS = 4300
# A serial number is a key of every output: a URL path (/api/drives/<serial>, %-encoded up to 12
# bytes a character, under HTTP's 8190-byte request line), a Status Server name (under its 8192-byte
# line). Real ones are 8 characters (a world wide name 20); 256 leaves room and fits both.
MAX_SERIAL_CHARS = 256


class IntakeError(ValueError):
    """Input the DSM will not accept; str(error) is the reason given to the client."""


def check_text(text: str, what: str = "text") -> None:
    """Raises IntakeError if `text` holds a lone surrogate (it could not be written as UTF-8)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise IntakeError("%s is not valid Unicode (a lone surrogate such as \\ud800)"
                              % what) from None


def check_serial(serial: str, what: str = "serial_number") -> None:
    """Raises IntakeError if `serial` is longer than MAX_SERIAL_CHARS characters."""
    if len(serial) > MAX_SERIAL_CHARS:
        raise IntakeError("%s longer than %d characters" % (what, MAX_SERIAL_CHARS))


def check_value(value: Any, max_depth: int = MAX_DEPTH, what: str = "value") -> None:
    """Raises IntakeError unless `value` is plain JSON data every output can serve.

    Plain JSON data: dicts with string keys, lists (tuples allowed, served as lists), strings of
    valid Unicode, ints of at most MAX_INT_DIGITS digits, finite floats, True/False/None; nested at
    most `max_depth` levels (a scalar is level 0, `{"a": 1}` level 1).
    """
    _check(value, max_depth, what)


def _check(value: Any, depth_left: int, what: str) -> None:
    kind = type(value)
    if kind is str:
        check_text(value, what)
    elif kind is float:
        if not math.isfinite(value):
            raise IntakeError("%s holds a number that is not finite (%r); JSON has no NaN or "
                              "Infinity" % (what, value))
    elif kind is int:
        if value.bit_length() >= _MAX_INT_BITS and abs(value) > _MAX_INT:
            raise IntakeError("%s holds an integer of more than %d digits" % (what, MAX_INT_DIGITS))
    elif value is None or kind is bool:
        pass
    elif kind is dict or kind is list or kind is tuple:
        if depth_left <= 0:
            raise IntakeError("%s is nested deeper than %d levels" % (what, MAX_DEPTH))
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    raise IntakeError("%s has a %s key; keys must be strings"
                                      % (what, type(key).__name__))
                check_text(key, what)
                _check(item, depth_left - 1, what)
        else:
            for item in value:
                _check(item, depth_left - 1, what)
    else:
        raise IntakeError("%s holds a %s, which is not a JSON value" % (what, kind.__name__))


# The largest int of MAX_INT_DIGITS digits; the bit length screens out all but the edge cheaply.
_MAX_INT = 10 ** MAX_INT_DIGITS - 1
_MAX_INT_BITS = _MAX_INT.bit_length()
_DIGITS = re.compile(r"[+-]?[0-9]+\Z")


def parse_int(text: str, what: str = "number") -> int:
    """`text` (decimal digits, optional sign, surrounding spaces) as an int; IntakeError if it is
    not one or has more than MAX_INT_DIGITS digits — checked before int() runs."""
    stripped = text.strip()
    if not _DIGITS.match(stripped) or not stripped.isascii():
        raise IntakeError("%s must be a whole number" % what)
    if len(stripped.lstrip("+-")) > MAX_INT_DIGITS:
        raise IntakeError("%s has more than %d digits" % (what, MAX_INT_DIGITS))
    return int(stripped)


def _json_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise IntakeError("an integer of more than %d digits" % MAX_INT_DIGITS)
    return int(text)


def _json_constant(name: str) -> Any:
    raise IntakeError("%s is not a JSON value" % name)


def _json_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise IntakeError("the number %s is not finite in JSON's doubles"
                          % (text if len(text) <= 24 else text[:20] + "..."))
    return number


_DECODER = json.JSONDecoder(parse_int=_json_int, parse_constant=_json_constant,
                            parse_float=_json_float)
# A text of at most MAX_INT_DIGITS characters cannot hold an integer of more digits, so for it the
# C scanner makes the ints itself instead of calling _json_int once per number (about a fifth of an
# announcement's parse). Same values, same errors: a property test (tests/test_intake.py).
_SHORT_TEXT_DECODER = json.JSONDecoder(parse_constant=_json_constant, parse_float=_json_float)


def json_loads(text: str) -> Any:
    """json.loads that refuses NaN, Infinity, floats that overflow and over-long integers while it
    parses. Raises ValueError (json's own errors, and IntakeError, a subclass) or RecursionError."""
    if len(text) <= MAX_INT_DIGITS:
        return _SHORT_TEXT_DECODER.decode(text)
    return _DECODER.decode(text)


# Plain literal tokens, in the order they are tried. Strings allow the prefixes u and r (also
# upper-case), either quote, backslash escapes; no triple quotes (a status is one line of str()).
_LITERAL_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<string>[uUrR]?(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"))
  | (?P<number>[-+]?0[xXoObB][0-9a-fA-F_]+
               |[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?)
  | (?P<word>True|False|None)\b
  | (?P<open>[\[{(])
  | (?P<close>[\]})])
  | (?P<punct>[,:])
""", re.VERBOSE | re.DOTALL)


def check_python_literal(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Raises IntakeError unless `text` is made only of plain literal tokens, with brackets nested
    at most `max_depth` deep and no number longer than MAX_INT_DIGITS characters.

    Operators are not plain literals: `1+1` and `-(-1)` are refused, a sign directly before a
    number is not an operator. This bounds the depth of the syntax tree `ast.literal_eval` builds,
    which is what crashes older interpreters — whatever the text's size.
    """
    pos, end, depth = 0, len(text), 0
    after_value = False  # the last token ended a value: only `,` `:` or a closing bracket may follow
    match = _LITERAL_TOKEN.match
    while pos < end:
        token = match(text, pos)
        if token is None:
            raise IntakeError("not a plain Python literal at %r" % text[pos:pos + 20])
        kind = token.lastgroup
        pos = token.end()
        if kind == "space":
            continue
        if kind == "punct" or kind == "close":
            if not after_value and kind == "punct":
                raise IntakeError("not a plain Python literal at %r" % token.group())
            if kind == "close":
                depth -= 1
            after_value = True if kind == "close" else False
            continue
        if after_value:  # `1+1`, `'a' 'b'`, `1 2`: an operator or juxtaposition, not a literal
            raise IntakeError("not a plain Python literal at %r" % text[token.start():][:20])
        if kind == "open":
            depth += 1
            if depth > max_depth:
                raise IntakeError("nested deeper than %d levels" % max_depth)
            continue
        if kind == "number" and pos - token.start() > MAX_INT_DIGITS:
            raise IntakeError("a number of more than %d digits" % MAX_INT_DIGITS)
        after_value = True


def needs_value_check(text: str) -> bool:
    """False when the value json_loads made of `text` certainly meets check_value, so the walk
    over it can be skipped (about a third of an announcement's parse).

    `text` is decoded from UTF-8 (a datagram), so it holds no lone surrogate itself. After
    json_loads only two things check_value refuses can remain: a lone surrogate, which in such
    text only a `\\u` escape can make, and nesting deeper than MAX_DEPTH, impossible with
    at most MAX_DEPTH opening brackets in the whole text (JSON keys are strings; its numbers were
    checked while parsing). The equivalence is a property test (tests/test_intake.py).
    """
    # "\\" first: one memchr, where most texts have no backslash at all.
    return ("\\" in text and "\\u" in text) or text.count("{") + text.count("[") > MAX_DEPTH
