"""Where the DSM keeps its state and logs by default, and the check that a dir can be used.

Theory of operation
-------------------
State (snapshot, journal, SAVE files) and logs belong to the host, not to the code: a copied
`DriveStateMonitor/` folder must never bring along another host's drives, so neither default is
inside the folder. Root gets the places a Debian admin looks first; a lab user, who cannot write
there, gets the XDG state dir (https://specifications.freedesktop.org/basedir-spec/latest/):

    root          state /var/lib/DriveStateMonitor       logs /var/log/DriveStateMonitor
    anyone else   state $XDG_STATE_HOME/DriveStateMonitor/state   logs .../DriveStateMonitor/logs
                  ($XDG_STATE_HOME defaults to ~/.local/state)

The run dir (lock, pid, sockets) stays /tmp/DriveStateMonitor so every user of the host finds the one
DSM. A dir that cannot be used is reported by `unusable_dir` as one sentence naming the option that
fixes it, for the terminal — before the daemon starts, not only in its log.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

APP = "DriveStateMonitor"


def _state_home(env: Mapping[str, str]) -> str:
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the spec: a relative value is invalid and ignored
        return xdg
    return os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")


def default_state_dir(euid: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """The default `--state-dir` for the user `euid` (default: this process's) and environment."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return "/var/lib/" + APP
    return os.path.join(_state_home(os.environ if env is None else env), APP, "state")


def default_log_dir(euid: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """The default `--log-dir` for the user `euid` (default: this process's) and environment."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return "/var/log/" + APP
    return os.path.join(_state_home(os.environ if env is None else env), APP, "logs")


def unusable_dir(path: str, what: str, option: str) -> Optional[str]:
    """Creates `path` (and its parents) if needed; None when this user can write there, else one
    sentence for the terminal: what failed, and `option` as the fix. `what` names the dir's use."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return "cannot use %s as the %s: %s; choose another with %s DIR" % (
            path, what, exc.strerror or exc, option)
    if not os.path.isdir(path):
        return "cannot use %s as the %s: not a directory; choose another with %s DIR" % (
            path, what, option)
    if not os.access(path, os.W_OK | os.X_OK):
        return "cannot use %s as the %s: this user (uid %d) may not write there; choose another " \
               "with %s DIR" % (path, what, os.geteuid(), option)
    return None
