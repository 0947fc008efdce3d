"""memory_limits.py: budgets derived from RLIMIT_AS / RLIMIT_DATA / cgroup v2 memory.max (pure), and
reading a cgroup's memory.max up its hierarchy."""

from DriveStateMonitor.memory_limits import (FLOOR, MIB, RESERVE_BYTES, MemoryCaps,
                                             apply_memory_caps, cgroup2_mount, cgroup_memory,
                                             fit_limits)
from DriveStateMonitor.options import parse_options

DEFAULTS = {"max_store_bytes": 512 * MIB, "max_output_total": 256 * MIB,
            "max_output": 64 * MIB, "max_message": 1 * MIB}


def test_no_cap_changes_nothing():
    assert fit_limits(MemoryCaps(), dict(DEFAULTS), set()) == ({}, [])


def test_a_large_cap_keeps_the_defaults():
    caps = MemoryCaps(address_space=16 * 1024 * MIB, address_space_used=30 * MIB)
    assert fit_limits(caps, dict(DEFAULTS), set())[0] == {}


def test_an_address_space_cap_lowers_the_defaults_to_fit_and_says_why():
    caps = MemoryCaps(address_space=250 * MIB, address_space_used=24 * MIB)
    chosen, reasons = fit_limits(caps, dict(DEFAULTS), set())
    usable = 226 * MIB - RESERVE_BYTES
    assert chosen["max_store_bytes"] == int(usable * 0.2)
    assert chosen["max_output_total"] == chosen["max_output"] == int(usable * 0.2)
    assert "max_message" not in chosen  # 1 MiB fits
    # what the store's reply, its cached copy and the snapshot child need stays under the cap
    assert 24 * MIB + RESERVE_BYTES + 4 * chosen["max_store_bytes"] < 250 * MIB
    assert any("--max-store-bytes" in r and "RLIMIT_AS 250 MiB" in r for r in reasons)


def test_the_tightest_of_the_caps_wins():
    caps = MemoryCaps(address_space=4096 * MIB, address_space_used=100 * MIB,
                      data=2048 * MIB, data_used=50 * MIB,
                      cgroup=300 * MIB, cgroup_used=200 * MIB)
    chosen, reasons = fit_limits(caps, dict(DEFAULTS), set())
    assert chosen["max_store_bytes"] == max(FLOOR["max_store_bytes"],
                                            int((100 * MIB - RESERVE_BYTES) * 0.2))
    assert "cgroup memory.max" in reasons[0]


def test_an_explicit_option_is_kept_and_only_warned_about():
    caps = MemoryCaps(data=200 * MIB, data_used=10 * MIB)
    chosen, reasons = fit_limits(caps, dict(DEFAULTS), {"max_store_bytes"})
    assert "max_store_bytes" not in chosen and "max_output_total" in chosen
    assert any("kept, as given" in r for r in reasons)


def test_limits_are_never_raised_nor_set_below_the_floor():
    small = dict(DEFAULTS, max_store_bytes=1 * MIB)
    chosen, reasons = fit_limits(MemoryCaps(address_space=60 * MIB, address_space_used=40 * MIB),
                                 small, set())
    assert "max_store_bytes" not in chosen  # 1 MiB, below what would fit: left alone
    assert chosen["max_output_total"] == FLOOR["max_output_total"]
    assert chosen["max_message"] == FLOOR["max_message"]
    assert any("less than the" in r for r in reasons)


def test_apply_sets_the_options_from_the_command_line_rule():
    options = parse_options(["--max-output", "1000000"])
    assert options.explicit == {"max_output"}
    changed = apply_memory_caps(options, options.explicit,
                                MemoryCaps(address_space=250 * MIB, address_space_used=24 * MIB))
    assert options.max_store_bytes == changed["max_store_bytes"] < 512 * MIB
    assert options.max_output == 1000000


def test_cgroup_memory_max_is_the_smallest_up_the_hierarchy(tmp_path):
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "memory.max").write_text("300000000\n")
    (root / "a" / "b" / "memory.max").write_text("max\n")
    (root / "a" / "b" / "memory.current").write_text("1234\n")

    def read(path):
        with open(path) as f:
            return f.read()
    assert cgroup_memory("0::/a/b\n", str(root), read) == (300000000, 1234)
    assert cgroup_memory("4:memory:/x\n", str(root), read) == (None, 0)  # cgroup v1 only
    assert cgroup_memory("0::/\n", str(root), read) == (None, 0)


def test_cgroup2_mount_is_read_from_mountinfo():
    mountinfo = ("24 30 0:22 / /proc rw,nosuid - proc proc rw\n"
                 "35 30 0:30 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(mountinfo) == "/sys/fs/cgroup"
    assert cgroup2_mount("24 30 0:22 / /proc rw - proc proc rw\n") is None
