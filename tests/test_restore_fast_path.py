"""The restore's fast path for plain new objects (Tree._import_new_object, wave 2) builds exactly
the tree the general touch() path builds, and leaves every case that is not plain to touch(), with
its errors."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest
from hypothesis import given, settings, strategies as st

from DriveStateMonitor.statserv_tree import StatServError, Tree


def slow_import(tree: Tree, entries: List[Dict[str, Any]], now: float) -> None:
    """import_entries with the fast path switched off: what the tree did before it."""
    # The general path only: the fast path replaced by one that always declines.
    tree._import_new_object = lambda path, entry, now: None  # type: ignore[assignment]  # a method
    tree.import_entries(entries, now)


def state_of(tree: Tree) -> Any:
    return (tree.dump(), tree.export_entries(), tree.byte_size, len(tree), tree.revision,
            sorted((path, tree.stat(path)["revision"], tree.stat(path)["time"])
                   for path in tree._nodes if path != "/"))


NAMES = st.sampled_from(["/a", "/a/b", "/a/c", "/d/e/f", "/d/e/g", "/g", "/a/b/x"])
ENTRY = st.fixed_dictionaries({
    "path": NAMES, "type": st.sampled_from(["string", "int", "float", "bool"]),
    "comment": st.sampled_from(["", "c", "a comment"]),
    "lifetime": st.sampled_from([0.0, 5.0]), "deadline": st.sampled_from([None, 1500.0]),
    "mtime": st.floats(900, 1100), "autoexpire": st.booleans(),
    "value": st.one_of(st.text(alphabet="xyz", max_size=5), st.integers(-5, 5)),
}) | st.fixed_dictionaries({"path": NAMES, "dir": st.just(True),
                             "comment": st.sampled_from(["", "d"]), "mtime": st.just(950.0)})


@settings(max_examples=200, deadline=None)
@given(st.lists(ENTRY, max_size=12))
def test_the_fast_path_builds_the_same_tree_as_touch(entries):
    fast, slow = Tree(), Tree()
    outcomes = []
    for tree, load in ((fast, lambda t: t.import_entries(entries, 1000.0)),
                       (slow, lambda t: slow_import(t, entries, 1000.0))):
        try:
            load(tree)
            outcomes.append(None)
        except StatServError as error:
            outcomes.append(error.code)
    assert outcomes[0] == outcomes[1]
    assert state_of(fast) == state_of(slow)


def test_a_round_trip_of_100_objects_keeps_everything():
    tree = Tree()
    for n in range(100):
        tree.touch("/lab/d%d/o%d" % (n % 7, n), 1000.0 + n, comment="c%d" % n,
                   type_name="int" if n % 2 else None)
        tree.put("/lab/d%d/o%d" % (n % 7, n), str(n), 1000.0 + n)
    restored = Tree()
    restored.import_entries(tree.export_entries(), 2000.0)
    assert restored.dump() == tree.dump()
    assert restored.export_entries() == tree.export_entries()


@pytest.mark.parametrize("path, code", [
    ("/x/obj/under", "NOTDIR"),   # the parent is an object
    ("/bad name", "SYNTAX"),      # not printable ASCII without spaces
    ("/x//y", None),              # not normalized: touch() normalizes it
])
def test_cases_that_are_not_plain_go_through_touch(path, code):
    tree = Tree()
    tree.touch("/x/obj", 1.0)
    entry = {"path": path, "type": "string", "comment": "", "mtime": 1.0, "value": "v"}
    if code is None:
        with pytest.raises(KeyError):  # import_entries looks the raw path up afterwards
            tree.import_entries([entry], 1.0)
        return
    with pytest.raises(StatServError) as caught:
        tree.import_entries([entry], 1.0)
    assert caught.value.code == code


def test_the_object_limit_still_holds_on_the_fast_path():
    tree = Tree(max_objects=5)
    entries = [{"path": "/o%d" % n, "type": "string", "comment": "", "mtime": 1.0, "value": "v"}
               for n in range(10)]
    with pytest.raises(StatServError) as caught:
        tree.import_entries(entries, 1.0)
    assert caught.value.code == "LIMIT" and len(tree) <= 5
