"""What the daemon does around the durability files: report what a start could not load, hold back
acknowledgements the disk did not take (`--fsync always`), and leave a note when a stop failed.

Theory of operation
-------------------
Start: load_state() (persistence.py) and StoreState.restore() (store_state.py) never raise on
damage; they count it. `recovery_report` turns those counts into one CRITICAL log line and the
`/dsm/journal/...` and metrics facts, and says whether a recovery snapshot is due (damaged files are
renamed aside only once a new snapshot holds what they held).

`--fsync always`: a change is acknowledged only after the pass's journal write and fsync (the
loop's before-sleep hook runs before any reply is sent). While the state dir is failing, the write
paths refuse up front (`Journal.refusing`). The pass in which the failure is *found* already holds
replies that acknowledge changes: `AckGuard` remembers which connections queued a journaled change
in this pass and, if the flush failed, closes them before those replies leave — an unanswered
request, never a false acknowledgement. Acknowledgements resume once a recovery snapshot landed.
The flush also checks, after its fsync, that the journal is still the file the configured state
dir names (Journal.check_identity: a dir moved aside and replaced, a journal renamed): a mismatch
is such a failure, found in the pass whose records went astray, so those are withdrawn too.

Stop: a final snapshot that fails is CRITICAL and the exit code is 4 (the internal kill switch:
the DSM stopped itself for a reason it could not fix); `dsm.exit` in the run dir tells stopDSM.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Optional, Set, Tuple

from .event_loop import EventLoop
from .persistence import FSYNC_ALWAYS, Journal, Loaded, create_new_file

log = logging.getLogger("dsm.state")

EXIT_NOTE = "dsm.exit"


def recovery_report(loaded: Loaded, counts: Dict[str, int]) -> Tuple[Optional[str], Dict[str, int]]:
    """The CRITICAL line for a start that could not load everything (None if it loaded it all)
    and the recovery facts (keys of persistence.RECOVERY_FACTS)."""
    facts = {
        "records_skipped": loaded.records_skipped + counts.get("bad_records", 0),
        "records_duplicated": loaded.records_duplicated,
        "bytes_skipped": loaded.bytes_skipped,
        "items_skipped": loaded.items_skipped + counts.get("items_skipped", 0),
        "snapshots_unreadable": loaded.snapshots_unreadable,
        "files_quarantined": 0,
    }
    if not (facts["records_skipped"] or facts["items_skipped"] or loaded.damaged):
        return None, facts
    message = ("state dir damaged: %d journal records and %d snapshot items could not be loaded "
               "(%d bytes failed their checks, %d duplicated records ignored, %d snapshots "
               "unreadable); %d damaged files will be quarantined (*.damaged-<time>) once a new "
               "snapshot is written: %s" % (
                   facts["records_skipped"], facts["items_skipped"], facts["bytes_skipped"],
                   facts["records_duplicated"], facts["snapshots_unreadable"],
                   len(loaded.damaged), ", ".join(loaded.damaged) or "none"))
    return message, facts


class AckGuard:
    """Journals changes for the daemon and, with `--fsync always`, withdraws the acknowledgements
    of a pass whose journal flush failed (see the module docstring)."""

    def __init__(self, loop: EventLoop, journal: Journal) -> None:
        self.loop = loop
        self.journal = journal
        # Only --fsync always refuses (Journal.refusing): other policies need no list per change.
        self._may_withdraw = journal.fsync == FSYNC_ALWAYS
        self._acknowledgers: Set[Any] = set()  # StreamTransport, OneShotStatus
        self.withdrawn = 0  # connections closed so that an unsynced change is not acknowledged
        # Called (once) when a flush found the journal no longer the state dir's: the daemon
        # starts the recovery snapshot at once rather than at the next --state-retry.
        self.on_identity_lost: Optional[Callable[[], object]] = None  # its result is unused

    def record(self, record: Any) -> None:
        self.journal.record(record)
        if self._may_withdraw:
            handler = self.loop.current
            if getattr(handler, "handles_input", False):  # a connection (not a timer or datagram)
                self._acknowledgers.add(handler)

    @property
    def recorder(self) -> Callable[[Any], None]:
        """What changes are to be recorded through: `record`, or the journal's own `record` when
        no acknowledgement can be withdrawn (one call less per change)."""
        return self.record if self._may_withdraw else self.journal.record

    def flush(self, monotonic_now: float) -> None:
        """The loop's last before-sleep hook: write (and fsync) the pass's records."""
        lost_before = self.journal.identity_lost
        self.journal.flush(monotonic_now)  # never raises: a failure is a failing state dir
        if self.journal.identity_lost != lost_before and self.on_identity_lost is not None:
            self.on_identity_lost()
        if self._acknowledgers and self.journal.refusing:
            for transport in self._acknowledgers:
                if not transport.closed:
                    log.error("%s: closed unanswered: its change is not on disk (%s)",
                              transport.label, self.journal.error)
                    self.withdrawn += 1
                    transport.abort()
        self._acknowledgers.clear()


def write_exit_note(run_dir: str, pid: int, code: int, why: str) -> None:
    """Leaves `<run-dir>/dsm.exit` for stopDSM: how the DSM with `pid` ended."""
    path = os.path.join(run_dir, EXIT_NOTE)
    try:
        with os.fdopen(create_new_file(path + ".tmp"), "w") as f:  # never through a link
            json.dump({"pid": pid, "code": code, "why": why}, f)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc)


def read_exit_note(run_dir: str, pid: int) -> Optional[Dict[str, Any]]:
    """The note the DSM with `pid` left when it stopped, or None."""
    try:
        with open(os.path.join(run_dir, EXIT_NOTE)) as f:
            note = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("pid") != pid:
        return None
    return note
