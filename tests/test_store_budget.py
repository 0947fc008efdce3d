"""The store budget (--max-store-bytes, issue 10): statuses and Status Server objects share one byte
budget, as etcd's quota does; past it writes are refused with a clear error (status JSON error,
Status Server `! LIMIT`), nothing stored is lost, and a restore is never refused.
"""
from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from DriveStateMonitor.drive_store import DriveStore, status_cost
from DriveStateMonitor.statserv_tree import NODE_COST, StatServError, Tree, _text_cost
from dsm_harness import END
from test_limits_access import ask, json_error


def recount(tree: Tree) -> int:
    """The tree's byte size counted from scratch, for comparison with the running count."""
    return sum(NODE_COST + len(path) + _text_cost(node.value) + len(node.comment)
               for path, node in tree._nodes.items())


class _Owner:
    def notify(self, path: str) -> None:
        pass


NAMES = st.sampled_from(["/a", "/a/b", "/a/c", "/d/e/f", "/d", "/g"])
TEXTS = st.text(alphabet="xyz", max_size=30)
OPS = st.lists(st.tuples(st.sampled_from(["touch", "touchdir", "put", "remove", "rmtree",
                                          "monitor", "release", "expire"]),
                         NAMES, TEXTS, st.integers(0, 2)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_the_tree_byte_count_always_matches_a_recount(ops):
    tree = Tree()
    owners = [_Owner(), _Owner(), _Owner()]
    now = 1000.0
    for op, path, text, who in ops:
        now += 1
        try:
            if op == "touch":
                tree.touch(path, now, owner=owners[who], comment=text or None,
                           lifetime=5.0 if who == 2 else None, autoexpire=who == 1)
            elif op == "touchdir":
                tree.touch_dir(path, now, owner=owners[who], comment=text or None)
            elif op == "put":
                tree.put(path, text, now)
            elif op == "remove":
                tree.remove(path, now)
            elif op == "rmtree":
                tree.remove_subtree(path, now)
            elif op == "monitor":
                tree.monitor(path, owners[who], now)
            elif op == "release":
                tree.release_owner(owners[who], now)
            else:
                tree.expire_due(now + 10)
        except StatServError:
            pass
        assert tree.byte_size == recount(tree)


def test_the_tree_refuses_growth_past_its_budget_with_limit_and_keeps_what_it_has():
    tree = Tree()
    tree.byte_budget = lambda: 20_000
    tree.touch("/keep", 1.0)
    tree.put("/keep", "v" * 100, 1.0)
    refused = None
    for n in range(200):  # bounded: 200 entries x >320 bytes passes 20,000
        try:
            tree.touch("/fill/%d" % n, 1.0)
        except StatServError as error:
            refused = error
            break
    assert refused is not None and refused.code == "LIMIT"
    assert "--max-store-bytes" in refused.text
    assert tree.byte_size <= 20_000
    assert tree.get("/keep", 1.0) == "v" * 100
    with_room = tree.byte_size
    try:
        tree.put("/keep", "w" * 4000, 1.0)
    except StatServError as error:
        assert error.code == "LIMIT"
    assert tree.byte_size == with_room


def test_statuses_past_the_budget_are_refused_and_a_restore_is_not():
    store = DriveStore(history=1)
    entry = json.dumps({"time_stamp": 1, "status": "x" * 1000}).encode()
    budget = 5 * status_cost("S0", entry)
    stored = sum(store.record_status("S%d" % n, entry, budget=budget) for n in range(10))
    assert stored == 5 and store.refused_status_budget == 5
    assert store.status_bytes <= budget
    # A full history replaces its oldest entry: same cost, still accepted at the limit.
    assert all(store.record_status("S0", entry, budget=budget) for _ in range(5))
    assert store.record_status("S9", entry)  # no budget given (a restore): never refused
    store.wipe()
    assert store.status_bytes == 0


def test_past_max_store_bytes_statuses_and_tree_writes_get_clear_errors(dsm_factory):
    dsm = dsm_factory.start("--max-store-bytes", "400000")
    big = "x" * 50_000
    errors = []
    for n in range(20):  # bounded: 20 x ~100 KB charged passes 400 KB
        reply = dsm.send_status(json.dumps({"serial_number": "BIG%d" % n, "time_stamp": n,
                                            "status": big}).encode())
        if reply != END:
            errors.append(json_error(reply))
            break
    assert errors and "--max-store-bytes" in errors[0]
    stored = dsm.query_json("s")
    assert 0 < len(stored) < 20
    with dsm.connect_statserv(unix=True) as sock:
        answer = ask(sock, "TOUCH /lab/x")
        for n in range(100):  # the tree's share is what the statuses left
            if answer.startswith("!"):
                break
            answer = ask(sock, "TOUCH /lab/%d COMMENT=%s" % (n, "c" * 3000))
        assert answer.startswith("! LIMIT ") and "--max-store-bytes" in answer
        assert ask(sock, "PWD") == ". /"
    # Nothing that was stored before the limit is lost.
    assert dsm.query_json("s") == stored
