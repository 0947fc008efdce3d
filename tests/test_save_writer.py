"""SaveWriter (save_writer.py) in process: names, the in-flight and bytes limits, and the answer
a session gets when its forked child ends."""
from __future__ import annotations

import os
import time
from typing import Any, List, Optional, Tuple

import pytest

from DriveStateMonitor.event_loop import EventLoop
from DriveStateMonitor.save_writer import SaveWriter, check_save_name
from DriveStateMonitor.statserv_tree import StatServError, Tree


class Session:
    def __init__(self) -> None:
        self.answers: List[Tuple[Optional[str], Optional[str]]] = []

    def save_finished(self, code: Optional[str], text: Optional[str]) -> None:
        self.answers.append((code, text))


def tree_with(objects: int) -> Tree:
    tree = Tree()
    for n in range(objects):
        tree.touch("/lab/o%04d" % n, 0.0)
        tree.put("/lab/o%04d" % n, "value %d" % n, 0.0)
    return tree


def run_until(loop: EventLoop, condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "SAVE child did not finish"
        loop.run_once(max_wait=0.02)


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", "x" * 200, "snap shot", "a\x00"])
def test_names_that_are_not_one_plain_component_are_denied(name):
    with pytest.raises(StatServError) as error:
        check_save_name(name)
    assert error.value.code == "DENIED"


def test_save_is_written_by_a_child_and_answered_when_it_ends(tmp_path, loop):
    saves = str(tmp_path / "saves")
    tree = tree_with(50)
    writer = SaveWriter(loop, tree, saves)
    session = Session()
    writer.start(os.path.join(os.path.realpath(str(tmp_path)), "saves", "one.save"), session)
    assert writer.in_flight == 1 and session.answers == []
    run_until(loop, lambda session=session: session.answers)
    assert session.answers == [(None, None)]
    with open(os.path.join(saves, "one.save"), encoding="utf-8") as f:
        assert f.read() == tree.dump()
    assert os.listdir(saves) == ["one.save"]


def test_in_flight_limit_per_client_and_overall(tmp_path, loop):
    saves = os.path.join(os.path.realpath(str(tmp_path)), "saves")
    writer = SaveWriter(loop, tree_with(10), saves, max_in_flight=2)
    first, second, third = Session(), Session(), Session()
    writer.start(os.path.join(saves, "a"), first)
    with pytest.raises(StatServError) as error:
        writer.start(os.path.join(saves, "b"), first)  # one per client
    assert error.value.code == "LIMIT"
    writer.start(os.path.join(saves, "c"), second)
    with pytest.raises(StatServError) as error:
        writer.start(os.path.join(saves, "d"), third)  # two overall
    assert error.value.code == "LIMIT"
    run_until(loop, lambda: first.answers and second.answers)
    writer.start(os.path.join(saves, "d"), third)  # room again
    run_until(loop, lambda: third.answers)
    assert sorted(os.listdir(saves)) == ["a", "c", "d"]


def test_bytes_limit_refuses_a_save_that_would_pass_it_and_one_when_full(tmp_path, loop):
    saves = os.path.join(os.path.realpath(str(tmp_path)), "saves")
    tree = tree_with(40)
    size = len(tree.dump().encode())
    writer = SaveWriter(loop, tree, saves, max_bytes=size * 2 + 10)
    for name in ("a", "b"):
        session = Session()
        writer.start(os.path.join(saves, name), session)
        run_until(loop, lambda session=session: session.answers)
        assert session.answers == [(None, None)]
    session = Session()
    writer.start(os.path.join(saves, "c"), session)  # 10 bytes left: the child refuses
    run_until(loop, lambda session=session: session.answers)
    assert session.answers[0][0] == "LIMIT"
    with pytest.raises(StatServError) as error:
        writer.max_bytes = size * 2
        writer.start(os.path.join(saves, "d"), Session())  # full: refused at once
    assert error.value.code == "LIMIT"
    session = Session()
    writer.start(os.path.join(saves, "a"), session)  # replacing a file frees its bytes
    run_until(loop, lambda session=session: session.answers)
    assert session.answers == [(None, None)]
    assert sorted(os.listdir(saves)) == ["a", "b"]


def test_a_temporary_name_is_not_a_save_name():
    with pytest.raises(StatServError) as error:
        check_save_name("statserv.save.tmp.4242")
    assert error.value.code == "DENIED"
    check_save_name("statserv.tmp.save")  # only the temporary's exact form is taken


def test_a_dead_childs_temporary_is_removed_and_never_counted(tmp_path, loop):
    saves = os.path.join(os.path.realpath(str(tmp_path)), "saves")
    os.makedirs(saves)
    tree = tree_with(40)
    size = len(tree.dump().encode())
    stale = os.path.join(saves, "big.save.tmp.999999")
    with open(stale, "wb") as f:
        f.write(b"x" * (size * 4))  # past the whole budget on its own
    writer = SaveWriter(loop, tree, saves, max_bytes=size * 2 + 10, max_files=1)
    session = Session()
    writer.start(os.path.join(saves, "a"), session)  # not refused: the leftover does not count
    run_until(loop, lambda: session.answers)
    assert session.answers == [(None, None)]
    assert writer.remove_stale_temporaries() == 1
    assert sorted(os.listdir(saves)) == ["a"]
