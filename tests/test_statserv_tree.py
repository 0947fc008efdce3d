"""The Status Server's store, pure and in memory: time is passed in, subscribers are recorders."""

from __future__ import annotations

import pytest

from DriveStateMonitor.statserv_tree import (
    DIRECTORY, EXPIRED, NONEXISTENT, UNDEFINED, StatServError, Tree, ValueWord,
    format_saved_value, quote_string, resolve,
)


class Recorder:
    """A monitor subscriber that remembers what it was told."""

    def __init__(self) -> None:
        self.notified = []

    def notify(self, path: str) -> None:
        self.notified.append(path)


def error_code(call, *args, **kwargs) -> str:
    with pytest.raises(StatServError) as caught:
        call(*args, **kwargs)
    return caught.value.code


# -- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, cwd, expected", [
    ("/a/b", "/", "/a/b"),
    ("b", "/a", "/a/b"),
    ("./b/./c", "/a", "/a/b/c"),
    ("..", "/a/b", "/a"),
    ("../../../x", "/a", "/x"),
    ("/a//b/", "/", "/a/b"),
    ("/", "/x", "/"),
    (".", "/", "/"),
    ("/a/.hidden", "/", "/a/.hidden"),
])
def test_resolve_normalizes_like_unix(path, cwd, expected):
    assert resolve(path, cwd) == expected


@pytest.mark.parametrize("bad", ["", "a b", "caf\u00e9", "a\tb", "x\x7f", "new\nline"])
def test_resolve_rejects_names_outside_printable_ascii(bad):
    assert error_code(resolve, bad, "/") == "SYNTAX"


# -- creating and reading -----------------------------------------------------------------------

def test_set_value_creates_parents_and_types_by_python_value():
    tree = Tree()
    tree.set_value("/drives/ZA1/status", "ok", 1.0)
    tree.set_value("/drives/ZA1/temp", 41.5, 1.0)
    tree.set_value("/drives/ZA1/errors", 3, 1.0)
    tree.set_value("/drives/ZA1/spinning", True, 1.0)
    assert tree.kind("/drives") == "directory"
    assert [name for name, _ in tree.list_dir("/drives/ZA1")] == ["errors", "spinning", "status", "temp"]
    assert tree.get("/drives/ZA1/temp", 1.0) == 41.5
    assert tree.get("/drives/ZA1/spinning", 1.0) is True
    assert [tree.stat("/drives/ZA1/" + n)["type"] for n in ("status", "temp", "errors", "spinning")] \
        == ["string", "float", "int", "bool"]


def test_set_value_accepts_unnormalized_paths():
    tree = Tree()
    tree.set_value("drives//a/./b", 1, 0.0)
    assert tree.get("/drives/a/b", 0.0) == 1


def test_every_change_bumps_the_global_revision_but_an_unchanged_value_does_not():
    tree = Tree()
    tree.set_value("/a", 1, 0.0)
    first = tree.revision
    tree.set_value("/a", 1, 1.0)
    assert tree.revision == first
    tree.set_value("/a", 2, 2.0)
    assert tree.revision == first + 1
    assert tree.stat("/a")["revision"] == tree.revision
    assert tree.stat("/a")["time"] == 2.0


def test_touch_creates_undefined_object_and_keeps_an_existing_value():
    tree = Tree()
    tree.touch("/x/y", 0.0, comment="why")
    assert tree.get("/x/y", 0.0) is UNDEFINED
    tree.put("/x/y", "hello", 0.0)
    tree.touch("/x/y", 0.0)
    assert tree.get("/x/y", 0.0) == "hello"
    assert tree.stat("/x/y")["comment"] == "why"


def test_touch_type_checks_put_text():
    tree = Tree()
    tree.touch("/i", 0.0, type_name="int")
    tree.touch("/f", 0.0, type_name="float")
    tree.touch("/b", 0.0, type_name="bool")
    tree.touch("/s", 0.0)
    tree.put("/i", " 42 ", 0.0)
    tree.put("/f", "1e3", 0.0)
    tree.put("/b", "false", 0.0)
    tree.put("/s", "42", 0.0)
    assert [tree.get(p, 0.0) for p in ("/i", "/f", "/b", "/s")] == [42, 1000.0, False, "42"]
    assert error_code(tree.put, "/i", "4.5", 0.0) == "TYPE"
    assert error_code(tree.put, "/f", "abc", 0.0) == "TYPE"
    assert error_code(tree.put, "/b", "maybe", 0.0) == "TYPE"
    assert error_code(tree.touch, "/i", 0.0, type_name="float") == "TYPE"
    assert error_code(tree.touch, "/new", 0.0, type_name="complex") == "TYPE"


def test_errors_for_wrong_kinds_and_absent_names():
    tree = Tree()
    tree.set_value("/dir/obj", "v", 0.0)
    assert error_code(tree.put, "/nothing", "v", 0.0) == "NONEXISTENT"
    assert error_code(tree.get, "/nothing", 0.0) == "NONEXISTENT"
    assert error_code(tree.get, "/dir", 0.0) == "ISDIR"
    assert error_code(tree.touch, "/dir", 0.0) == "ISDIR"
    assert error_code(tree.touch, "/dir/obj/sub", 0.0) == "NOTDIR"
    assert error_code(tree.list_dir, "/dir/obj") == "NOTDIR"
    assert error_code(tree.touch_dir, "/dir/obj", 0.0) == "EXISTS"
    assert error_code(tree.remove, "/dir", 0.0) == "ISDIR"
    assert error_code(tree.remove_dir, "/dir", 0.0) == "NOTEMPTY"
    assert error_code(tree.remove_dir, "/dir/obj", 0.0) == "NOTDIR"
    assert error_code(tree.remove_dir, "/", 0.0) == "DENIED"
    assert error_code(tree.set_value, "/dir", 1, 0.0) == "ISDIR"
    assert error_code(tree.set_value, "/x", object(), 0.0) == "TYPE"


def test_value_state_gives_words_and_never_raises_for_absent_names():
    tree = Tree()
    tree.touch("/u", 0.0)
    tree.set_value("/v", "EXPIRED", 0.0)  # a string that looks like a word is still a string
    assert tree.value_state("/absent", 0.0) is NONEXISTENT
    assert tree.value_state("/u", 0.0) is UNDEFINED
    assert tree.value_state("/v", 0.0) == "EXPIRED"
    assert type(tree.value_state("/v", 0.0)) is not ValueWord


def test_limits_raise_toolong_and_limit_without_changing_the_tree():
    tree = Tree(max_value_bytes=8, max_objects=3)
    tree.set_value("/a", "12345678", 0.0)
    assert error_code(tree.set_value, "/a", "123456789", 0.0) == "TOOLONG"
    assert error_code(tree.set_value, "/a", "\u00e9" * 5, 0.0) == "TOOLONG"  # 10 UTF-8 bytes
    tree.touch("/t", 0.0)
    assert error_code(tree.put, "/t", "x" * 9, 0.0) == "TOOLONG"
    assert error_code(tree.touch, "/c", 0.0, comment="x" * 9) == "TOOLONG"
    assert error_code(tree.set_value, "/d/e", 1, 0.0) == "LIMIT"  # needs /d and /d/e: 4 > 3
    assert tree.kind("/d") is None
    tree.set_value("/e", 1, 0.0)
    assert error_code(tree.set_value, "/f", 1, 0.0) == "LIMIT"
    assert len(tree) == 3


# -- use counts and placeholders ----------------------------------------------------------------

def test_removing_an_unheld_object_frees_it():
    tree = Tree()
    tree.set_value("/a", 1, 0.0)
    tree.remove("/a", 0.0)
    assert len(tree) == 0
    assert tree.value_state("/a", 0.0) is NONEXISTENT


def test_removing_a_held_object_leaves_a_placeholder_until_released():
    tree = Tree()
    owner = object()
    tree.touch("/d/a", 0.0, owner=owner)
    tree.put("/d/a", "v", 0.0)
    assert tree.stat("/d/a")["usecount"] == 2
    tree.remove("/d/a", 0.0)
    assert tree.value_state("/d/a", 0.0) is NONEXISTENT
    assert error_code(tree.get, "/d/a", 0.0) == "NONEXISTENT"
    assert error_code(tree.put, "/d/a", "v", 0.0) == "NONEXISTENT"
    assert error_code(tree.stat, "/d/a") == "NONEXISTENT"
    assert tree.list_dir("/d") == []  # a placeholder is not a directory entry
    assert len(tree) == 2  # /d and the placeholder
    tree.release_owner(owner, 0.0)
    assert len(tree) == 1


def test_monitor_of_absent_name_holds_a_placeholder_that_becomes_the_object():
    tree = Tree()
    watcher = Recorder()
    assert tree.monitor("/later/x", watcher, 0.0) is NONEXISTENT
    assert tree.kind("/later") is None  # monitoring does not create directories
    tree.touch("/later/x", 1.0)
    assert watcher.notified == ["/later/x"]
    assert tree.collect(watcher, None, 1.0) == [("/later/x", UNDEFINED)]
    tree.unmonitor("/later/x", watcher)
    tree.remove("/later/x", 2.0)
    tree.remove_dir("/later", 2.0)
    assert len(tree) == 0


def test_unheld_placeholder_is_freed_when_the_monitor_stops():
    tree = Tree()
    watcher = Recorder()
    tree.monitor("/ghost", watcher, 0.0)
    assert len(tree) == 1
    tree.unmonitor("/ghost", watcher)
    assert len(tree) == 0
    assert error_code(tree.unmonitor, "/ghost", watcher) == "NONEXISTENT"


def test_monitor_under_an_object_is_notdir():
    tree = Tree()
    tree.set_value("/obj", 1, 0.0)
    assert error_code(tree.monitor, "/obj/child", Recorder(), 0.0) == "NOTDIR"


def test_remove_subtree_counts_objects_and_leaves_placeholders_for_held_ones():
    tree = Tree()
    watcher = Recorder()
    for serial in ("A", "B"):
        tree.set_value("/drives/%s/status" % serial, "ok", 0.0)
        tree.set_value("/drives/%s/interfaces/eth0/ip" % serial, "10.0.0.1", 0.0)
    tree.set_value("/dsm/pid", 7, 0.0)
    tree.monitor("/drives/A/status", watcher, 0.0)
    assert tree.remove_subtree("/drives", 1.0) == 4
    assert tree.kind("/drives") is None
    assert tree.get("/dsm/pid", 1.0) == 7
    assert watcher.notified == ["/drives/A/status"]
    assert tree.collect(watcher, None, 1.0) == [("/drives/A/status", NONEXISTENT)]
    tree.set_value("/drives/A/status", "back", 2.0)
    assert tree.collect(watcher, None, 2.0) == [("/drives/A/status", "back")]
    assert tree.remove_subtree("/nothing", 3.0) == 0


def test_remove_subtree_of_root_keeps_the_root():
    tree = Tree()
    tree.set_value("/a/b", 1, 0.0)
    assert tree.remove_subtree("/", 0.0) == 1
    assert tree.list_dir("/") == [] and len(tree) == 0


# -- lifetimes ----------------------------------------------------------------------------------

def test_object_not_updated_within_its_lifetime_expires():
    tree = Tree()
    tree.set_value("/a", "v", 100.0, lifetime=60)
    assert tree.next_deadline() == 160.0
    assert tree.expire_due(159.9) == 0
    assert tree.get("/a", 159.9) == "v"
    assert tree.expire_due(160.0) == 1
    assert tree.get("/a", 160.0) is EXPIRED
    assert tree.next_deadline() is None
    tree.set_value("/a", "v", 170.0)  # an update revives it and restarts the lifetime
    assert tree.get("/a", 170.0) == "v"
    assert tree.next_deadline() == 230.0


def test_updates_postpone_expiry_without_growing_the_heap():
    tree = Tree()
    for second in range(1000):
        tree.set_value("/a", second % 2, float(second), lifetime=60)
    assert len(tree._timers) == 1
    # The wake-up may come early (the entry was queued for the first deadline); checking then
    # re-queues it at the real one, once.
    assert tree.next_deadline() <= 999.0 + 60
    assert tree.expire_due(1058.0) == 0
    assert tree.next_deadline() == 999.0 + 60
    assert len(tree._timers) == 1
    assert tree.expire_due(1059.0) == 1


def test_many_postponed_lifetimes_cost_nothing_until_they_come_due():
    tree = Tree()
    for n in range(500):
        tree.set_value("/d/%d" % n, n, 0.0, lifetime=60)
    for second in range(1, 30):  # refreshed every second: every entry is postponed
        for n in range(500):
            tree.set_value("/d/%d" % n, n, float(second), lifetime=60)
        before = list(tree._timers)
        tree.next_deadline()
        assert tree._timers == before  # not swept on every look
    assert tree.expire_due(60.0) == 0  # due entries re-queued at their real deadline
    assert tree.next_deadline() == 29.0 + 60
    assert tree.expire_due(89.0) == 500


def test_shortening_a_lifetime_brings_the_deadline_forward():
    tree = Tree()
    tree.set_value("/a", 1, 0.0, lifetime=60)
    tree.set_value("/a", 2, 1.0, lifetime=5)
    assert tree.next_deadline() == 6.0


def test_reads_catch_up_on_overdue_expiry_without_the_timer():
    tree = Tree()
    tree.set_value("/a", 1, 0.0, lifetime=10)
    assert tree.value_state("/a", 11.0) is EXPIRED


def test_removed_object_does_not_expire_later():
    tree = Tree()
    tree.set_value("/a", 1, 0.0, lifetime=10)
    tree.remove("/a", 1.0)
    assert tree.next_deadline() is None
    assert tree.expire_due(20.0) == 0


def test_touch_lifetime_expires_an_object_never_given_a_value():
    tree = Tree()
    tree.touch("/a", 0.0, lifetime=5)
    assert tree.expire_due(5.0) == 1
    assert tree.get("/a", 5.0) is EXPIRED


def test_release_owner_expires_its_autoexpire_objects_and_fires_monitors():
    tree = Tree()
    client, other = object(), Recorder()
    tree.touch("/heartbeat", 0.0, owner=client, autoexpire=True)
    tree.put("/heartbeat", "alive", 0.0)
    tree.touch("/kept", 0.0, owner=client)
    tree.put("/kept", "v", 0.0)
    tree.monitor("/heartbeat", other, 0.0)
    tree.release_owner(client, 5.0)
    assert tree.get("/heartbeat", 5.0) is EXPIRED
    assert tree.get("/kept", 5.0) == "v"
    assert other.notified == ["/heartbeat"]
    # The flag is the object's attribute and stays; only the owner is gone (CFHT: STAT shows it).
    assert tree.stat("/heartbeat")["autoexpire"] is True
    assert tree.stat("/heartbeat")["owner"] is None


# -- monitors -----------------------------------------------------------------------------------

def test_monitor_notifies_once_until_collected_and_collect_gives_the_latest():
    tree = Tree()
    watcher = Recorder()
    tree.set_value("/a", 1, 0.0)
    assert tree.monitor("/a", watcher, 0.0) == 1
    for value in (2, 3, 4):
        tree.set_value("/a", value, 1.0)
    assert watcher.notified == ["/a"]
    assert tree.collect(watcher, None, 1.0) == [("/a", 4)]
    assert tree.collect(watcher, None, 1.0) == []
    tree.set_value("/a", 5, 2.0)
    assert watcher.notified == ["/a", "/a"]


def test_collect_of_one_path_leaves_the_others_pending():
    tree = Tree()
    watcher = Recorder()
    tree.monitor("/a", watcher, 0.0)
    tree.monitor("/b", watcher, 0.0)
    tree.set_value("/a", 1, 1.0)
    tree.set_value("/b", 2, 1.0)
    assert tree.collect(watcher, "/a", 1.0) == [("/a", 1)]
    assert tree.collect(watcher, None, 1.0) == [("/b", 2)]


def test_each_subscriber_has_its_own_monitor():
    tree = Tree()
    first, second = Recorder(), Recorder()
    tree.monitor("/a", first, 0.0)
    tree.monitor("/a", second, 0.0)
    tree.set_value("/a", 1, 1.0)
    tree.collect(first, None, 1.0)
    tree.set_value("/a", 2, 2.0)
    assert first.notified == ["/a", "/a"]
    assert second.notified == ["/a"]
    assert tree.stat("/a")["usecount"] == 3


def test_deadband_ignores_changes_smaller_than_it_from_the_last_reported_value():
    tree = Tree()
    watcher = Recorder()
    tree.set_value("/t", 40.0, 0.0)
    tree.monitor("/t", watcher, 0.0, deadband=1.0)
    tree.set_value("/t", 40.5, 1.0)
    tree.set_value("/t", 40.9, 2.0)
    assert watcher.notified == []
    tree.set_value("/t", 41.0, 3.0)  # 1.0 from the 40.0 reported: a change
    assert watcher.notified == ["/t"]
    assert tree.collect(watcher, None, 3.0) == [("/t", 41.0)]
    tree.set_value("/t", 40.2, 4.0)
    assert watcher.notified == ["/t"]
    tree.set_value("/t", "hot", 5.0)  # not a number any more: always a change
    assert watcher.notified == ["/t", "/t"]


def test_deadband_does_not_hide_expiry():
    tree = Tree()
    watcher = Recorder()
    tree.set_value("/t", 1, 0.0, lifetime=10)
    tree.monitor("/t", watcher, 0.0, deadband=100)
    tree.expire_due(10.0)
    assert watcher.notified == ["/t"]


def test_min_period_delays_the_next_notification_and_delivers_the_latest_value():
    tree = Tree()
    watcher = Recorder()
    tree.monitor("/a", watcher, 0.0, min_period=10)
    tree.set_value("/a", 1, 1.0)
    assert watcher.notified == ["/a"]
    tree.collect(watcher, None, 1.0)
    tree.set_value("/a", 2, 2.0)
    tree.set_value("/a", 3, 3.0)
    assert watcher.notified == ["/a"]  # quiet until 11.0
    assert tree.next_deadline() == 11.0
    tree.expire_due(10.9)
    assert watcher.notified == ["/a"]
    tree.expire_due(11.0)
    assert watcher.notified == ["/a", "/a"]
    assert tree.collect(watcher, None, 11.0) == [("/a", 3)]
    assert tree.next_deadline() is None


def test_min_period_deferral_is_dropped_if_collected_before_the_period_ends():
    tree = Tree()
    watcher = Recorder()
    tree.monitor("/a", watcher, 0.0, min_period=10)
    tree.set_value("/a", 1, 1.0)
    tree.collect(watcher, None, 1.0)
    tree.set_value("/a", 2, 2.0)
    assert tree.collect(watcher, None, 3.0) == [("/a", 2)]
    tree.expire_due(11.0)
    assert watcher.notified == ["/a"]


def test_directory_monitor_sees_entries_created_changed_removed_and_expired():
    tree = Tree()
    watcher = Recorder()
    tree.touch_dir("/d", 0.0)
    assert tree.monitor("/d", watcher, 0.0) is DIRECTORY
    tree.set_value("/d/a", 1, 1.0, lifetime=5)
    tree.set_value("/d/sub/deep", 1, 1.0)
    assert watcher.notified == ["/d"]
    assert tree.collect(watcher, None, 1.0) == [("/d/a", 1), ("/d/sub", DIRECTORY)]
    tree.set_value("/d/sub/deep", 2, 2.0)  # not directly in /d
    assert watcher.notified == ["/d"]
    tree.expire_due(6.0)
    assert tree.collect(watcher, None, 6.0) == [("/d/a", EXPIRED)]
    tree.remove("/d/a", 7.0)
    assert tree.collect(watcher, None, 7.0) == [("/d/a", NONEXISTENT)]
    assert watcher.notified == ["/d"] * 3


def test_directory_monitor_on_an_absent_directory_fires_when_it_is_created():
    tree = Tree()
    watcher = Recorder()
    tree.monitor("/drives", watcher, 0.0)
    tree.set_value("/drives/A/status", "ok", 1.0)
    assert watcher.notified == ["/drives"]
    assert tree.collect(watcher, None, 1.0) == [("/drives", DIRECTORY), ("/drives/A", DIRECTORY)]


def test_release_owner_ends_its_monitors_and_frees_placeholders():
    tree = Tree()
    watcher = Recorder()
    tree.monitor("/ghost", watcher, 0.0)
    tree.set_value("/real", 1, 0.0)
    tree.monitor("/real", watcher, 0.0)
    tree.release_owner(watcher, 1.0)
    tree.set_value("/real", 2, 2.0)
    assert watcher.notified == []
    assert len(tree) == 1
    assert tree.monitored_paths(watcher) == []


# -- SAVE format --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    ("data", '"data"'), ("a \"q\" \\ b", '"a \\"q\\" \\\\ b"'), ("line\nbreak", '"line\\nbreak"'),
    (True, "TRUE"), (False, "FALSE"), (10.0, "10."), (0.5, "0.5"), (1e20, "1.e+20"),
    (-2.5e-7, "-2.5e-07"), (42, "42"), (-3, "-3"), (UNDEFINED, "UNDEFINED"), (EXPIRED, "EXPIRED"),
])
def test_saved_value_format_follows_cfht(value, text):
    assert format_saved_value(value) == text


def test_dump_writes_one_object_a_line_with_comments():
    tree = Tree()
    tree.set_value("/drives/A/status", "ok", 0.0, comment="latest status")
    tree.set_value("/drives/A/temp", 40.0, 0.0)
    tree.touch("/drives/A/note", 0.0)
    tree.touch_dir("/empty", 0.0)
    tree.touch_dir("/drives/B", 0.0, comment="spare")
    tree.set_value("/drives/B/x", 1, 0.0)
    assert tree.dump() == (
        "/drives/A/note = UNDEFINED\n"
        "/drives/A/status = \"ok\"  # latest status\n"
        "/drives/A/temp = 40.\n"
        "/drives/B/  # spare\n"
        "/drives/B/x = 1\n"
        "/empty/\n"
    )


def test_dump_and_load_round_trip_types_comments_and_odd_characters():
    tree = Tree()
    odd = 'quote " backslash \\ tab \t nl \n cr \r nul \x00 del \x7f e\u0301 \u2028 #  = end '
    tree.set_value("/s/odd", odd, 0.0, comment=odd)
    tree.set_value("/s/looks_like_word", "EXPIRED", 0.0)
    tree.set_value("/s/looks_like_int", "42", 0.0)
    tree.set_value("/s/empty", "", 0.0, comment="  leading and trailing  ")
    tree.set_value("/n/int", -7, 0.0)
    tree.set_value("/n/big", 10 ** 30, 0.0)
    for name, number in (("f", 10.0), ("tiny", 1e-300), ("neg0", -0.0), ("huge", 1e308)):
        tree.set_value("/n/" + name, number, 0.0)
    tree.set_value("/b/t", True, 0.0)
    tree.set_value("/b/f", False, 0.0)
    tree.touch("/w/undefined", 0.0, comment="#")
    tree.set_value("/w/expired", 1, 0.0, lifetime=1)
    tree.expire_due(1.0)
    tree.touch_dir("/dir.with.dots/empty", 0.0, comment="c")
    text = tree.dump()
    loaded = Tree.load(text)
    assert loaded.dump() == text
    assert loaded.get("/s/odd", 0.0) == odd
    assert loaded.stat("/s/odd")["comment"] == odd
    assert loaded.get("/s/looks_like_word", 0.0) == "EXPIRED"
    assert type(loaded.get("/s/looks_like_word", 0.0)) is str
    assert loaded.get("/s/looks_like_int", 0.0) == "42"
    assert loaded.get("/n/big", 0.0) == 10 ** 30
    assert loaded.stat("/n/f")["type"] == "float"
    assert loaded.get("/b/f", 0.0) is False
    assert loaded.get("/w/expired", 0.0) is EXPIRED
    assert loaded.get("/w/undefined", 0.0) is UNDEFINED
    assert loaded.stat("/dir.with.dots/empty")["comment"] == "c"


def test_load_rejects_malformed_lines_with_their_number():
    with pytest.raises(StatServError) as caught:
        Tree.load('/a = 1\n/b = "unterminated\n')
    assert caught.value.code == "SYNTAX" and "line 2" in caught.value.text
    assert error_code(Tree.load, "/a = nonsense\n") == "SYNTAX"
    assert error_code(Tree.load, "/a 1\n") == "SYNTAX"


def test_load_skips_blank_and_comment_lines_and_accepts_crlf():
    tree = Tree.load("# saved by hand\r\n\r\n/a = 1\r\n")
    assert tree.get("/a", 0.0) == 1


def test_quote_string_keeps_a_value_on_one_line():
    assert quote_string("a\nb\u2028c") == '"a\\nb\\u2028c"'


def test_updates_report_an_object_once_when_it_and_its_directory_are_monitored():
    class Subscriber:
        def __init__(self):
            self.notices = []

        def notify(self, path):
            self.notices.append(path)

    tree = Tree()
    tree.set_value("/a/b", 1, 0.0)
    watcher = Subscriber()
    tree.monitor("/a", watcher, 0.0)
    tree.monitor("/a/b", watcher, 0.0)
    tree.set_value("/a/b", 2, 1.0)
    assert tree.collect(watcher, None, 1.0) == [("/a/b", 2)]
