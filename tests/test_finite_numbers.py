"""Non-finite and out-of-range numbers from clients are refused wherever the Status Server, the
tree's SAVE/LOAD, a snapshot's tree entries and the seconds options convert text (issue 10's
boundary contract: whatever is accepted can be served on every output)."""

from __future__ import annotations

import argparse
import json

import pytest

from DriveStateMonitor.options import (MAX_COALESCE_S, coalesce_seconds,
                                       non_negative_seconds, parse_options, positive_seconds)
from DriveStateMonitor.statserv_protocol import StatServSession
from DriveStateMonitor.statserv_tree import StatServError, Tree
from DriveStateMonitor.store_state import _check_tree_entry

NON_FINITE = ["inf", "-inf", "nan", "NaN", "Infinity", "1e400", "-1e400", " inf "]


def code_of(call, *args, **kwargs) -> str:
    with pytest.raises(StatServError) as caught:
        call(*args, **kwargs)
    return caught.value.code


@pytest.mark.parametrize("text", NON_FINITE)
def test_put_of_a_non_finite_float_is_refused_with_type(text):
    tree = Tree()
    tree.touch("/f", 0.0, type_name="float")
    tree.put("/f", "2.5", 0.0)
    assert code_of(tree.put, "/f", text, 1.0) == "TYPE"
    assert tree.get("/f", 1.0) == 2.5  # the stored value is untouched


def test_the_daemons_own_publish_of_a_non_finite_float_is_refused():
    tree = Tree()
    assert code_of(tree.set_value, "/x", float("inf"), 0.0) == "TYPE"
    assert code_of(tree.set_value, "/y", float("nan"), 0.0) == "TYPE"
    tree.set_value("/z", 1e308, 0.0)  # large but finite is a number like any other
    assert tree.get("/z", 0.0) == 1e308


@pytest.mark.parametrize("word", ["inf", "-inf", "nan"])
def test_load_of_a_saved_non_finite_value_is_refused(word):
    assert code_of(Tree.load, "/a = %s\n" % word) == "TYPE"


def test_every_accepted_float_serves_as_strict_json():
    tree = Tree()
    tree.touch("/f", 0.0, type_name="float")
    for text in ["1e308", "-0.0", "1e-320", "12"]:
        tree.put("/f", text, 0.0)
        json.dumps(tree.get("/f", 0.0), allow_nan=False)
        json.dumps(tree.export_entries(), allow_nan=False)


class Clock:
    def __call__(self) -> float:
        return 1000.0


def session() -> StatServSession:
    return StatServSession(Tree(), Clock(), is_local=True, on_output=lambda: None,
                           on_shutdown=lambda: None)


def send(sess: StatServSession, line: str) -> str:
    sess.receive_data(line.encode("utf-8"))
    return sess.data_to_send().decode("utf-8")


@pytest.mark.parametrize("option", ["LIFETIME", "DEADBAND", "MINPERIOD"])
@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-1", "1e300", "3.2e8"])
def test_statserv_number_options_out_of_range_are_a_syntax_error(option, value):
    sess = session()
    assert send(sess, "TOUCH /a\n").startswith(".")
    command = ("PUT /a 1 %s=%s\n" if option == "LIFETIME" else "MONITOR /a %s=%s\n")
    reply = send(sess, command % (option, value))
    assert reply.startswith("! SYNTAX"), reply
    assert "must be a number from 0 to" in reply


@pytest.mark.parametrize("option", ["LIFETIME", "DEADBAND", "MINPERIOD"])
def test_statserv_number_options_in_range_are_taken(option):
    sess = session()
    send(sess, "TOUCH /a TYPE=float\n")  # a number: DEADBAND is refused on a string object
    command = ("PUT /a 1 %s=%s\n" if option == "LIFETIME" else "MONITOR /a %s=%s\n")
    assert not send(sess, command % (option, "3e8")).startswith("!")


@pytest.mark.parametrize("entry", [
    {"path": "/a", "value": float("inf"), "type": "float", "mtime": 1.0},
    {"path": "/a", "value": float("nan"), "type": "float", "mtime": 1.0},
    {"path": "/a", "value": 1.0, "type": "float", "mtime": float("nan")},
    {"path": "/a", "value": 1.0, "type": "float", "mtime": 1.0, "deadline": float("inf")},
    {"path": "/a", "value": 1.0, "type": "float", "mtime": 1.0, "lifetime": float("-inf")},
])
def test_a_snapshot_tree_entry_holding_a_non_finite_number_is_skipped(entry):
    with pytest.raises(ValueError):
        _check_tree_entry(entry)


@pytest.mark.parametrize("parse", [non_negative_seconds, positive_seconds])
@pytest.mark.parametrize("text", ["inf", "nan", "1e300", "4e8"])
def test_seconds_options_refuse_what_a_socket_timeout_cannot_hold(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)
    assert parse("3e8") == 3e8


@pytest.mark.parametrize("text", ["-0.001", "0.021", "1", "nan", "inf"])
def test_coalesce_refuses_what_the_receive_buffer_cannot_hold(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError):
        coalesce_seconds(text)
    with pytest.raises(SystemExit):
        parse_options(["--coalesce", text])
    assert "--coalesce" in capsys.readouterr().err


def test_coalesce_takes_zero_up_to_its_limit():
    assert parse_options(["--coalesce", "0"]).coalesce == 0.0
    assert parse_options(["--coalesce", str(MAX_COALESCE_S)]).coalesce == MAX_COALESCE_S
    assert parse_options([]).coalesce == 0.005
