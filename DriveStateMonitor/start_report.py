"""What runDSM prints: after a start, where everything is and what to try next; after a failed
start, the cause first, with the option that fixes it.

Theory of operation
-------------------
The daemon runs detached and logs to its dated file, so runDSM learns how a start went from two
places only: `<run-dir>/dsm.json` (pid and the ports actually bound, written once everything is
open) and the lines the log file gained during this start (never an older run's). Both are plain
data here; nothing in this module does I/O but `read_info`.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from .options import DEFAULT_MCAST_GROUP, DEFAULT_MCAST_PORT, DEFAULT_RUN_DIR, PACKAGE_DIR
from .single_instance import INFO_FILE

# (pattern in the daemon's start-up error, the option that fixes it). The daemon's messages are
# "cannot bind the <what> port N: ...", "cannot use the run dir ...", "cannot listen for drives ...".
_FIXES: List[Tuple[str, str]] = [
    (r"\bthe query (port|socket)", "--query-port PORT (or --run-dir DIR for the socket)"),
    (r"\bthe status port", "--status-port PORT"),
    (r"\bthe Status Server (port|socket)", "--statserv-port PORT (or --run-dir DIR for the socket)"),
    (r"\bthe HTTP port", "--http-port PORT (0 turns the web page off)"),
    (r"\brun dir\b", "--run-dir DIR"),
    (r"\bstate dir\b", "--state-dir DIR"),
    (r"\blog file\b", "--log-dir DIR"),
    (r"listen for drives|multicast|interface", "--interfaces NAME[,NAME] or --mcast-group/--mcast-port"),
]
_ERROR_LINE = re.compile(r" (ERROR|CRITICAL) [^:]*: (.*)$")


def read_info(run_dir: str) -> Optional[Dict[str, Any]]:
    """`<run-dir>/dsm.json` as a dict, or None when absent or unreadable."""
    try:
        with open(os.path.join(run_dir, INFO_FILE)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def fix_for(cause: str) -> Optional[str]:
    """The option that fixes a start-up error message, or None when no option does."""
    for pattern, option in _FIXES:
        if re.search(pattern, cause):
            return option
    return None


def start_failure(code: int, new_log: str, log_file: str) -> str:
    """What runDSM prints when the daemon exited while starting: the cause (the first error line
    this start logged) first, then the fix, then the exit code and where the full log is."""
    causes = [m.group(2).strip() for m in map(_ERROR_LINE.search, new_log.splitlines()) if m]
    if not causes:  # not a logged start-up error (a crash): show this start's last lines
        lines = [line for line in new_log.splitlines() if line.strip()][-5:]
        return ("runDSM: the DSM exited with code %d while starting\n%s\n(full log: %s)"
                % (code, "\n".join("  " + line for line in lines), log_file))
    cause = causes[0]
    text = "runDSM: the DSM could not start: %s" % cause
    if "in use" in cause:
        text += "\n  another program (or another DSM) has it"
    fix = fix_for(cause)
    if fix and not re.search(r"choose another (with )?%s" % fix.split()[0], cause):
        # (a cause that already says "choose another --run-dir" is not told it twice)
        text += "\n  fix: choose another with %s" % fix
    return text + "\n(exited with code %d; full log: %s)" % (code, log_file)


def _dsmctl(run_dir: str) -> str:
    """How the user runs dsmctl from here, with --unix when the run dir is not the default."""
    path = os.path.join(PACKAGE_DIR, "dsmctl.py")
    relative = os.path.relpath(path)
    command = relative if not relative.startswith("..") else path
    if "/" not in command:
        command = "./" + command
    if os.path.abspath(run_dir) != DEFAULT_RUN_DIR:
        command += " --unix %s" % os.path.join(run_dir, "dsm.sock")
    return command


def describe_running(info: Dict[str, Any], run_dir: str, hearing: Optional[str] = None,
                     simulate_options: str = "") -> str:
    """The lines runDSM prints about a running DSM: ports, sockets, web address, next command."""
    lines = [
        "  queries (m, s, w)  TCP port %s, Unix socket %s"
        % (info.get("query_port"), info.get("query_socket") or os.path.join(run_dir, "dsm.sock")),
        "  statuses           TCP port %s (test scripts report here)" % info.get("status_port"),
        "  Status Server      TCP port %s, Unix socket %s"
        % (info.get("statserv_port"), info.get("statserv_socket")),
    ]
    if info.get("http_port"):
        lines.append("  web page           http://localhost:%s/  (from elsewhere: http://%s:%s/)"
                     % (info["http_port"], os.uname().nodename, info["http_port"]))
    else:
        lines.append("  web page           off (--http-port 0)")
    if hearing:
        lines.append("  drives heard on    %s" % hearing)
    dsmctl = _dsmctl(run_dir)
    lines.append("next: %s m" % dsmctl)
    lines.append("      (the drive table; no drives on the network yet? try %s simulate --drives 5%s)"
                 % (dsmctl.split(" --unix")[0], simulate_options))
    return "\n".join(lines)


def next_steps(run_dir: str, options: Any, new_log: str) -> str:
    """describe_running for a DSM that has just started (dsm.json plus this start's log lines)."""
    info = read_info(run_dir) or {}
    match = re.search(r"hearing (\S+ on .*)$", new_log, re.MULTILINE)
    hearing = match.group(1).strip() if match else "%s:%s" % (options.mcast_group,
                                                                options.mcast_port)
    return describe_running(info, run_dir, hearing,
                            simulate_options(info, options.mcast_group, options.mcast_port))


def simulate_options(info: Dict[str, Any], mcast_group: str = DEFAULT_MCAST_GROUP,
                     mcast_port: int = DEFAULT_MCAST_PORT) -> str:
    """The simulator's options that differ from its defaults: the port from dsm.json when it has
    one (the port the DSM bound), else `mcast_port`; the group as given (dsm.json has none)."""
    text = ""
    if mcast_group != DEFAULT_MCAST_GROUP:
        text += " --mcast-group %s" % mcast_group
    if info.get("mcast_port", mcast_port) != DEFAULT_MCAST_PORT:
        text += " --mcast-port %s" % info.get("mcast_port", mcast_port)
    return text
