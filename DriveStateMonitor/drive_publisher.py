"""Publishes the daemon's own facts into the Status Server tree (`/dsm/`).

Drive data is not published: `/drives/` is a read-only view derived from the drive store on demand
(drive_view.py). `/dsm/` holds the version, pid, start time, interfaces in use and counters (spec:
status-server.md, "Drive data in the tree"); nested dicts become directories.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

from .drive_view import DRIVES, path_component
from .statserv_tree import StatServError, Tree

__all__ = ["DrivePublisher", "DRIVES", "DSM", "path_component"]

DSM = "/dsm"


def _publishable(value: Any) -> Optional[Any]:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True)


class DrivePublisher:
    """Writes the daemon's facts into `tree`; counts what the tree refused instead of failing."""

    def __init__(self, tree: Tree, drive_lifetime: float = 0.0) -> None:
        self.tree = tree
        self.refused = 0

    def _set(self, path: str, value: Any, now: float) -> None:
        value = _publishable(value)
        if value is None:
            return
        try:
            self.tree.set_value(path, value, now, lifetime=0)
        except StatServError:
            # Too long, tree full, or a name clash with a client's object: best effort.
            self.refused += 1

    def facts(self, facts: Dict[str, Any], now: float) -> None:
        """Publishes the daemon's own facts under /dsm/ (nested dicts become directories)."""
        self._facts(DSM, facts, now)

    def _facts(self, base: str, facts: Dict[str, Any], now: float) -> None:
        for key, value in facts.items():
            path = "%s/%s" % (base, path_component(key))
            if isinstance(value, dict):
                self._facts(path, value, now)
            else:
                self._set(path, value, now)
