"""Prometheus metrics: renders the text exposition format 0.0.4 from a plain dict of facts (pure).

The daemon gathers the facts (`DriveStateMonitor.metrics_facts`); this module only names and formats
them, following Prometheus's naming rules: one prefix (`dsm_`), base units (seconds, bytes), `_total`
on counters, `_info` gauges of value 1 for metadata, no host label (the scraper adds `instance`),
and label sets bounded by the daemon's own limits (drives by --max-drives; reasons, kinds and codes
by the code).

Also here, because it is the metrics' own bookkeeping: `LagHistogram`, the event loop's lateness.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Loop lag buckets, seconds: a healthy loop fires its 1 s timer within a millisecond or two; a
# snapshot fork or a 10,000-drive `m` reply shows up in the tens of milliseconds.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Labels = Sequence[Tuple[str, str]]


class LagHistogram:
    """How late the loop's periodic timer fired, as a cumulative Prometheus histogram."""

    def __init__(self, buckets: Sequence[float] = LAG_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0
        self.last = 0.0

    def record(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self.last = lag_s
        self.count += 1
        self.sum += lag_s
        for index, bound in enumerate(self.buckets):
            if lag_s <= bound:
                self.counts[index] += 1
                break

    def cumulative(self) -> List[Tuple[float, int]]:
        """(upper bound, observations <= bound) for every bucket, +Inf last."""
        result: List[Tuple[float, int]] = []
        running = 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            result.append((bound, running))
        result.append((math.inf, self.count))
        return result


def render_metrics(facts: Mapping[str, Any]) -> str:
    """The exposition text for `facts` (the keys `DriveStateMonitor.metrics_facts` returns)."""
    out: List[str] = []
    family = _Family(out)
    family("dsm_build_info", "gauge", "The DSM's version (always 1).",
           [("", [("version", str(facts["version"]))], 1)])
    family("dsm_start_time_seconds", "gauge", "When the DSM started, Unix time.",
           [("", [], facts["start_time"])])

    drives = facts["drives"]
    family("dsm_drives_known", "gauge", "Drives announced since start or the last wipe.",
           [("", [], len(drives))])
    family("dsm_drives_alive", "gauge", "Drives heard within --drive-lifetime.",
           [("", [], sum(1 for drive in drives if drive["alive"]))])
    family("dsm_drive_info", "gauge", "Each known drive's model and firmware (always 1).",
           [("", [("serial", d["serial"]), ("model", d["model"]), ("firmware", d["firmware"])], 1)
            for d in drives])
    family("dsm_drive_alive", "gauge", "1 if the drive was heard within --drive-lifetime, else 0.",
           [("", [("serial", d["serial"])], 1 if d["alive"] else 0) for d in drives])
    family("dsm_drive_last_seen_timestamp_seconds", "gauge",
           "When each drive's last announcement arrived, Unix time.",
           [("", [("serial", d["serial"])], d["last_seen"]) for d in drives])

    family("dsm_announcements_total", "counter", "Multicast datagrams received.",
           [("", [], facts["announcements"])])
    drops = facts.get("multicast_receive_drops")
    if drops is not None:  # Linux only (multicast_socket.receive_drops)
        family("dsm_multicast_receive_drops_total", "counter",
               "Multicast datagrams the kernel dropped before the DSM read them (its receive "
               "buffer was full: a burst beyond what --coalesce's wait and the buffer hold).",
               [("", [], drops)])
    family("dsm_announcements_rejected_total", "counter",
           "Multicast datagrams dropped, by reason.",
           _by_label("reason", facts["announcements_rejected"]))
    family("dsm_status_updates_total", "counter", "Status reports stored.",
           [("", [], facts["statuses"])])
    family("dsm_status_serials", "gauge", "Serial numbers with a status history.",
           [("", [], facts["status_serials"])])
    family("dsm_queries_total", "counter", "Queries answered on the query port, by kind "
           "(m, s, w, bad).", _by_label("kind", facts["queries"]))

    family("dsm_connections_open", "gauge", "Client connections open, by listener kind.",
           _by_label("kind", facts["connections_open"]))
    family("dsm_connections_accepted_total", "counter",
           "Client connections accepted, by listener kind.",
           _by_label("kind", facts["connections_accepted"]))
    family("dsm_connections_refused_total", "counter", "Client connections refused, by reason.",
           _by_label("reason", facts["connections_refused"]))
    family("dsm_connections_closed_idle_total", "counter",
           "Connections closed after --idle-timeout of silence.",
           [("", [], facts["connections_closed_idle"])])
    family("dsm_http_requests_total", "counter", "HTTP requests answered, by handler and code.",
           [("", [("handler", handler), ("code", str(code))], count)
            for (handler, code), count in sorted(facts["http_requests"].items())])
    family("dsm_http_event_streams_open", "gauge", "GET /api/events streams open (the change "
           "feed's viewers).", [("", [], facts.get("event_streams_open", 0))])
    family("dsm_http_event_stream_resyncs_total", "counter", "Event streams closed with a "
           "resync event: their viewer fell behind the feed's window.",
           [("", [], facts.get("event_stream_resyncs", 0))])
    family("dsm_change_feed_revision", "gauge", "The change feed's revision (batches of changes "
           "served since start).", [("", [], facts.get("change_feed_revision", 0))])

    family("dsm_tree_objects", "gauge", "Status Server tree entries (objects and directories).",
           [("", [], facts["tree_objects"])])
    family("dsm_tree_monitors", "gauge", "Status Server monitors set by clients.",
           [("", [], facts["tree_monitors"])])
    family("dsm_expirations_total", "counter", "Status Server objects that reached their lifetime.",
           [("", [], facts["expirations"])])

    journal = facts["journal"]
    family("dsm_journal_healthy", "gauge", "1 while the journal writes to the state dir, 0 while "
           "it is failing (see the log).", [("", [], 1 if journal["state"] == "ok" else 0)])
    family("dsm_journal_records_written_total", "counter", "Journal records written.",
           [("", [], journal["records_written"])])
    family("dsm_journal_records_dropped_total", "counter",
           "Journal records lost while the state dir failed.",
           [("", [], journal["records_dropped"])])
    family("dsm_journal_fsyncs_total", "counter", "fsync calls on the journal.",
           [("", [], journal["fsyncs"])])
    family("dsm_journal_last_snapshot_timestamp_seconds", "gauge",
           "When the last snapshot was written, Unix time (0: none yet).",
           [("", [], journal["last_snapshot"])])
    # What this process could not load from the state dir at start (persistence.load_state).
    for key, help_text in (
            ("records_skipped", "Journal records lost to damage in the state dir at start."),
            ("items_skipped", "Snapshot items lost to damage in the state dir at start."),
            ("snapshots_unreadable", "Damaged snapshots found at start (an older one or the "
                                     "intact items were used)."),
            ("files_quarantined", "Damaged state files renamed to *.damaged-<time>.")):
        family("dsm_state_%s_total" % key, "counter", help_text, [("", [], journal.get(key, 0))])

    lag: LagHistogram = facts["loop_lag"]
    family("dsm_event_loop_lag_seconds", "histogram",
           "How late the event loop's 1 s timer fired: time the loop was busy elsewhere.",
           [("_bucket", [("le", _format_value(bound))], count)
            for bound, count in lag.cumulative()]
           + [("_sum", [], lag.sum), ("_count", [], lag.count)])
    family("dsm_event_loop_last_lag_seconds", "gauge",
           "How late the event loop's 1 s timer fired the last time.", [("", [], lag.last)])
    family("dsm_bad_inputs_total", "counter",
           "Bad messages from clients and the network (each also logged, rate-limited).",
           [("", [], facts["bad_inputs"])])
    family("dsm_handler_failures_total", "counter",
           "Unexpected errors while handling one connection's or datagram's input (each closed "
           "its connection or dropped its datagram; tracebacks in the log). They never stop the DSM.",
           [("", [], facts["handler_failures"])])
    family("dsm_internal_failures_total", "counter",
           "Unexpected errors of the DSM's own (a failing socket, timer or hook); more than 5 "
           "within 24 hours stop it with exit code 4 (the kill switch).",
           [("", [], facts.get("internal_failures", 0))])
    return "".join(out)


class _Family:
    """Appends one metric family (HELP, TYPE, samples) to `out`."""

    def __init__(self, out: List[str]) -> None:
        self.out = out

    def __call__(self, name: str, kind: str, help_text: str,
                 samples: Iterable[Tuple[str, Labels, float]]) -> None:
        self.out.append("# HELP %s %s\n" % (name, _escape_help(help_text)))
        self.out.append("# TYPE %s %s\n" % (name, kind))
        for suffix, labels, value in samples:
            if labels:
                label_text = ",".join('%s="%s"' % (key, _escape_label(val))
                                      for key, val in labels)
                self.out.append("%s%s{%s} %s\n" % (name, suffix, label_text,
                                                   _format_value(value)))
            else:
                self.out.append("%s%s %s\n" % (name, suffix, _format_value(value)))


def _by_label(label: str, counts: Mapping[str, float]) -> List[Tuple[str, Labels, float]]:
    return [("", [(label, key)], value) for key, value in sorted(counts.items())]


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def empty_facts(version: str = "0") -> Dict[str, Any]:
    """Facts of a DSM that knows nothing yet: the shape `render_metrics` expects (tests use it)."""
    return {
        "version": version, "start_time": 0.0, "drives": [], "announcements": 0,
        "announcements_rejected": {}, "statuses": 0, "status_serials": 0, "queries": {},
        "connections_open": {}, "connections_accepted": {}, "connections_refused": {},
        "connections_closed_idle": 0, "http_requests": {}, "tree_objects": 0,
        "tree_monitors": 0, "expirations": 0,
        "journal": {"state": "ok", "records_written": 0, "records_dropped": 0, "fsyncs": 0,
                    "last_snapshot": 0.0},
        "loop_lag": LagHistogram(), "bad_inputs": 0, "handler_failures": 0,
        "internal_failures": 0, "multicast_receive_drops": None,
        "event_streams_open": 0, "event_stream_resyncs": 0, "change_feed_revision": 0,
    }
