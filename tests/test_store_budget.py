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


# --- drive announcements are charged too (wave 2) -------------------------------------------------
from DriveStateMonitor.announcement import parse_announcement  # noqa: E402
from DriveStateMonitor.drive_store import drive_cost  # noqa: E402
from dsm_harness import announcement  # noqa: E402


def _announce(store: DriveStore, serial: str, budget=None, **extra) -> bool:
    raw = announcement(serial, **extra)
    parsed = parse_announcement(raw)
    return store.record_announcement(serial, parsed.fields, raw, 1.0, "127.0.0.1", "lo",
                                     budget=budget)


def _recount_drives(store: DriveStore) -> int:
    total = 0
    for serial, drive in store.drives.items():
        own = {k: v for k, v in drive.fields.items() if k not in ("last_seen", "last_seen_epoch",
               "source_address", "interface", "state")}
        total += drive_cost(serial, drive.raw, json.dumps(own).encode("utf-8"))
    return total


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["D1", "D2", "D3"]), st.integers(0, 3000),
                          st.booleans()), max_size=30))
def test_the_drive_byte_count_always_matches_a_recount(changes):
    store = DriveStore()
    for serial, pad, added in changes:
        extra = {"note": "n" * pad}
        if added:
            extra["state"] = "theirs"  # an added field: the fields are re-encoded, held twice
        assert _announce(store, serial, **extra)
        assert store.drive_bytes == _recount_drives(store)
    store.wipe()
    assert store.drive_bytes == 0


def test_new_drives_past_the_budget_are_refused_and_counted_and_none_is_evicted():
    store = DriveStore()
    cost = drive_cost("D000", announcement("D000"), announcement("D000"))
    budget = 10 * cost + cost // 2
    results = [_announce(store, "D%03d" % n, budget=budget) for n in range(30)]
    assert results == [True] * 10 + [False] * 20
    assert store.refused_drive_budget == 20 and len(store.drives) == 10
    assert store.drive_bytes <= budget
    # A stored drive heard again with the same or a smaller datagram is always taken...
    assert _announce(store, "D003", budget=budget)
    # ...one that grows past the budget is refused and the drive keeps what it had.
    before = store.drives["D004"].raw
    assert not _announce(store, "D004", budget=budget, note="x" * 5000)
    assert store.drives["D004"].raw == before
    # No budget (a restore): never refused.
    assert _announce(store, "D099")
    assert len(store.drives) == 11


def test_the_daemon_charges_drives_to_max_store_bytes_and_counts_refused_announcements(tmp_path):
    from test_boundary_contract import in_process_dsm  # the in-process DSM, no sockets
    from DriveStateMonitor.status_protocol import parse_status
    big = "x" * 60_000  # announcements up to 64 KiB are valid
    with in_process_dsm(str(tmp_path / "state"), "--max-store-bytes", "1000000") as daemon:
        for n in range(30):  # bounded: 30 x ~60 KB passes 1 MB
            daemon._on_datagram(announcement("BIG%02d" % n, note=big), ("127.0.0.1", 8123), 1)
        stored = set(json.loads(daemon.answer_query(_query("m"), "t")[:-1]))
        assert 10 <= len(stored) < 30
        assert daemon.counters["announcements_rejected_store_full"] == 30 - len(stored)
        assert daemon.store.drive_bytes <= 1_000_000
        facts = daemon.metrics_facts()
        assert facts["announcements_rejected"]["store_full"] == 30 - len(stored)
        # The drives' share leaves the statuses less: a big status is refused, clearly.
        report = parse_status(json.dumps({"serial_number": "S", "time_stamp": 1,
                                          "status": "y" * 200_000}).encode())
        why = daemon.store_status(report)
        assert why is not None and "--max-store-bytes" in why and "drives" in why
        # Nothing stored was evicted.
        assert set(json.loads(daemon.answer_query(_query("m"), "t")[:-1])) == stored


def _query(letter: str):
    from DriveStateMonitor.query_protocol import Query
    return Query(letter)
