"""Budgets that fit the memory the DSM may use: RLIMIT_AS, RLIMIT_DATA and cgroup v2 `memory.max`.

Theory of operation
-------------------
The default budgets (--max-store-bytes 512 MiB, --max-output-total 256 MiB, --max-output 64 MiB,
--max-message 1 MiB) assume a host that has the memory. Under a cap they do not: with `ulimit -v`
at 250 MB and those defaults, large statuses were stored until allocations failed — statuses went
unanswered and the `s` reply, which needs memory on top of the store to be built, never came again.
A budget that refuses cleanly ("store full") is only worth anything if it is reached before the cap.

So at start the DSM reads its caps (`read_memory_caps`): the soft RLIMIT_AS and RLIMIT_DATA, and the
`memory.max` of its own cgroup v2 (the path in /proc/self/cgroup, under the cgroup2 mount; the
smallest over the cgroup and its ancestors; on a v1-only host the memory controller's
`memory.limit_in_bytes`), each with what is already used against it (VmSize, VmData, memory.current
less the reclaimable file cache). The room left under the tightest one, less RESERVE_BYTES for the
interpreter, connections and the journal, is shared out (`fit_limits`, a pure function):

- the store gets STORE_SHARE: what it holds is charged once, but the `s` reply is built from it at
  up to ~1.5 times the statuses' size, its cached copy is kept, and the snapshot child (a fork, under
  the same caps) encodes it once more;
- the output of all clients together (--max-output-total) gets OUTPUT_SHARE, one client's
  (--max-output) at most that;
- a status message (--max-message) at most MESSAGE_SHARE: each one is held as received, as text and
  parsed, and several connections may each hold one.

Only defaults are lowered: an option given on the command line is kept as given (with a warning
when it does not fit), and nothing is ever raised. What was chosen and why is logged. A limit is
never set below its FLOOR; a cap that leaves less says so in the log.

What a MemoryError still costs when it comes: the one client whose handling hit it gets an error
reply and is closed (event_loop.py, StreamTransport.out_of_memory); everyone else goes on.
"""
from __future__ import annotations

import logging
import os
import resource
from typing import Callable, Dict, List, NamedTuple, Optional, Set, Tuple

log = logging.getLogger("dsm.memory")

MIB = 1024 * 1024
# The interpreter's own growth, connections' buffers, the journal's, the snapshot child's: kept
# out of every share.
RESERVE_BYTES = 48 * MIB
STORE_SHARE = 0.2
OUTPUT_SHARE = 0.2
MESSAGE_SHARE = 1 / 64
# The limits this module may lower, and the least it sets each to.
FLOOR = {"max_store_bytes": 4 * MIB, "max_output_total": 4 * MIB, "max_output": 1 * MIB,
         "max_message": 64 * 1024}
OPTION_NAMES = {"max_store_bytes": "--max-store-bytes", "max_output_total": "--max-output-total",
                "max_output": "--max-output", "max_message": "--max-message"}


class MemoryCaps(NamedTuple):
    """Caps on the DSM's memory (bytes; None: none) and what is used against each now (bytes)."""
    address_space: Optional[int] = None  # RLIMIT_AS (soft)
    address_space_used: int = 0          # VmSize
    data: Optional[int] = None           # RLIMIT_DATA (soft)
    data_used: int = 0                   # VmData
    cgroup: Optional[int] = None         # memory.max (v1: limit_in_bytes), smallest upwards
    cgroup_used: int = 0                 # memory.current less the file cache


def tightest_room(caps: MemoryCaps) -> Optional[Tuple[int, str]]:
    """(bytes left under the tightest cap, its description), or None when nothing is capped."""
    rooms = [(cap - used, "%s %d MiB (%d MiB in use)" % (name, cap // MIB, used // MIB))
             for cap, used, name in ((caps.address_space, caps.address_space_used, "RLIMIT_AS"),
                                     (caps.data, caps.data_used, "RLIMIT_DATA"),
                                     (caps.cgroup, caps.cgroup_used, "cgroup memory.max"))
             if cap is not None]
    return min(rooms) if rooms else None


def fit_limits(caps: MemoryCaps, current: Dict[str, int],
               explicit: Set[str]) -> Tuple[Dict[str, int], List[str]]:
    """The limits of `current` (option dest -> bytes) to change so they fit under `caps`, and
    one line per decision saying why. Only names not in `explicit` are changed, only lowered."""
    room = tightest_room(caps)
    if room is None:
        return {}, []
    free, which = room
    usable = max(0, free - RESERVE_BYTES)
    wanted = {
        "max_store_bytes": int(usable * STORE_SHARE),
        "max_output_total": int(usable * OUTPUT_SHARE),
        "max_message": int(usable * MESSAGE_SHARE),
    }
    wanted["max_output"] = wanted["max_output_total"]
    chosen: Dict[str, int] = {}
    reasons: List[str] = []
    for name, fits in wanted.items():
        if name not in current:
            continue
        fits = max(fits, FLOOR[name])
        if current[name] <= fits:
            continue
        option = OPTION_NAMES[name]
        if name in explicit:
            reasons.append("%s %d is above the %d that fits under %s; kept, as given"
                           % (option, current[name], fits, which))
            continue
        chosen[name] = fits
        reasons.append("%s %d (default %d) to fit under %s, %d MiB free at start"
                       % (option, fits, current[name], which, max(free, 0) // MIB))
    if usable == 0:
        reasons.append("%s leaves less than the %d MiB reserve: the least limits are used and "
                       "memory errors are likely" % (which, RESERVE_BYTES // MIB))
    return chosen, reasons


# --- reading the caps (Linux) ---------------------------------------------------------------------
def _soft_limit(which: int) -> Optional[int]:
    soft = resource.getrlimit(which)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _proc_status_bytes(text: str, field: str) -> int:
    """A `kB` field of /proc/<pid>/status in bytes (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


# (its limit file, its usage file, the memory.stat key of the reclaimable file cache in the usage)
_CGROUP_V2 = ("memory.max", "memory.current", "file")
_CGROUP_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache")
_UNLIMITED_V1 = 1 << 62  # v1 says "no limit" with a page-rounded 2**63 - 1


def cgroup_mounts(mountinfo: str) -> Dict[str, str]:
    """{"v2": the cgroup2 mount point, "v1": the v1 memory controller's} found in a
    /proc/self/mountinfo text (either may be missing)."""
    mounts: Dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) < 3 or len(left.split()) < 5:
            continue
        if fields[0] == "cgroup2":
            mounts.setdefault("v2", left.split()[4])
        elif fields[0] == "cgroup" and "memory" in fields[2].split(","):
            mounts.setdefault("v1", left.split()[4])
    return mounts


def cgroup_memory(cgroup_text: str, mounts: Dict[str, str],
                  read: Callable[[str], str]) -> Tuple[Optional[int], int]:
    """(the memory limit of this process's cgroup, the smallest over it and its ancestors, None
    if none; what it uses now less its reclaimable file cache, 0 if unreadable): of cgroup v2
    (`memory.max`) and the v1 memory controller (`memory.limit_in_bytes`; hybrid hosts have both),
    the tighter, as /proc/self/cgroup (`cgroup_text`) names them. A path not found under the mount
    (a cgroup namespace seen from outside) is read at the mount's root."""
    paths: Dict[str, str] = {}
    for line in cgroup_text.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            paths["v2"] = path.strip()
        elif "memory" in controllers.split(","):
            paths["v1"] = path.strip()
    found = [_cgroup_limit(mounts[version], paths[version], files, read)
             for version, files in (("v2", _CGROUP_V2), ("v1", _CGROUP_V1))
             if version in paths and version in mounts]
    limited = [(limit, used) for limit, used in found if limit is not None]
    return min(limited) if limited else (None, 0)


def _cgroup_limit(mount: str, path: str, files: Tuple[str, str, str],
                  read: Callable[[str], str]) -> Tuple[Optional[int], int]:
    limit_file, usage_file, cache_key = files
    root = os.path.normpath(mount)
    own = os.path.normpath(os.path.join(root, path.lstrip("/")))
    try:
        read(os.path.join(own, usage_file))
    except OSError:
        own = root
    limit: Optional[int] = None
    directory = own
    while True:
        value = _number_in(read, os.path.join(directory, limit_file))
        if value is not None and value < _UNLIMITED_V1 and (limit is None or value < limit):
            limit = value
        if directory == root or not directory.startswith(root + os.sep):
            break
        directory = os.path.dirname(directory)
    used = _number_in(read, os.path.join(own, usage_file)) or 0
    try:
        for line in read(os.path.join(own, "memory.stat")).splitlines():
            key, _, number = line.partition(" ")
            if key == cache_key and number.strip().isdigit():
                used = max(0, used - int(number))
    except OSError:
        pass
    return limit, used


def _number_in(read: Callable[[str], str], path: str) -> Optional[int]:
    """The integer a cgroup file holds; None for "max", a missing file or anything else."""
    try:
        return int(read(path).strip())
    except (OSError, ValueError):
        return None


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()


def read_memory_caps() -> MemoryCaps:
    """The caps on this process now (Linux; what cannot be read counts as no cap)."""
    try:
        status = _read("/proc/self/status")
    except OSError:
        status = ""
    cgroup: Optional[int] = None
    cgroup_used = 0
    try:
        mounts = cgroup_mounts(_read("/proc/self/mountinfo"))
        cgroup, cgroup_used = cgroup_memory(_read("/proc/self/cgroup"), mounts, _read)
    except OSError:
        pass
    return MemoryCaps(
        address_space=_soft_limit(resource.RLIMIT_AS),
        address_space_used=_proc_status_bytes(status, "VmSize"),
        data=_soft_limit(resource.RLIMIT_DATA),
        data_used=_proc_status_bytes(status, "VmData"),
        cgroup=cgroup, cgroup_used=cgroup_used)


def apply_memory_caps(options: object, explicit: Set[str],
                      caps: Optional[MemoryCaps] = None) -> Dict[str, int]:
    """Lowers the default limits on `options` (argparse namespace) to fit the caps read now (or
    `caps`), logging each decision; returns what it changed."""
    caps = read_memory_caps() if caps is None else caps
    current = {name: getattr(options, name) for name in FLOOR if hasattr(options, name)}
    chosen, reasons = fit_limits(caps, current, explicit)
    for name, value in chosen.items():
        setattr(options, name, value)
    for reason in reasons:
        log.warning("memory cap: %s", reason)
    return chosen
