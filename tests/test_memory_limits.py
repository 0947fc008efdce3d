"""memory_limits.py: budgets derived from RLIMIT_AS / RLIMIT_DATA / cgroup v2 memory.max (pure), and
reading a cgroup's memory.max up its hierarchy."""

from DriveStateMonitor.memory_limits import (FLOOR, MIB, RESERVE_BYTES, MemoryCaps,
                                             apply_memory_caps, cgroup_memory, cgroup_mounts,
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


def reader(path):
    with open(path) as f:
        return f.read()


def test_cgroup_memory_max_is_the_smallest_up_the_hierarchy(tmp_path):
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "memory.max").write_text("300000000\n")
    (root / "a" / "b" / "memory.max").write_text("max\n")
    (root / "a" / "b" / "memory.current").write_text("5000\n")
    (root / "a" / "b" / "memory.stat").write_text("anon 1000\nfile 3766\n")
    mounts = {"v2": str(root)}
    assert cgroup_memory("0::/a/b\n", mounts, reader) == (300000000, 1234)  # cache left out
    assert cgroup_memory("0::/\n", mounts, reader) == (None, 0)
    assert cgroup_memory("0::/elsewhere\n", mounts, reader) == (None, 0)  # read at the root


def test_a_v1_memory_controller_is_read_where_there_is_no_v2(tmp_path):
    root = tmp_path / "memory"
    (root / "svc").mkdir(parents=True)
    (root / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (root / "svc" / "memory.limit_in_bytes").write_text("200000000\n")
    (root / "svc" / "memory.usage_in_bytes").write_text("900\n")
    cgroup = "4:memory:/svc\n1:cpu,cpuacct:/svc\n0::/\n"
    assert cgroup_memory(cgroup, {"v1": str(root)}, reader) == (200000000, 900)
    assert cgroup_memory("4:memory:/\n", {"v1": str(root)}, reader) == (None, 0)
    # a hybrid host: the v2 hierarchy without a memory limit, the v1 controller with one
    unified = tmp_path / "unified"
    unified.mkdir()
    assert cgroup_memory(cgroup, {"v1": str(root), "v2": str(unified)}, reader) == (200000000, 900)


def test_cgroup_mounts_are_read_from_mountinfo():
    mountinfo = ("24 30 0:22 / /proc rw,nosuid - proc proc rw\n"
                 "35 30 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw\n"
                 "36 30 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
                 "37 30 0:33 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n")
    assert cgroup_mounts(mountinfo) == {"v2": "/sys/fs/cgroup/unified",
                                        "v1": "/sys/fs/cgroup/memory"}
    assert cgroup_mounts("24 30 0:22 / /proc rw - proc proc rw\n") == {}
