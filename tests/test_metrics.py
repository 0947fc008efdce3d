"""The Prometheus exposition text: Prometheus's naming rules, its own parser, and the values."""
from __future__ import annotations

import math
import re
from typing import Any, Dict

import pytest

from DriveStateMonitor.metrics import LagHistogram, empty_facts, render_metrics

parser = pytest.importorskip("prometheus_client.parser")

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def facts_with_drives() -> Dict[str, Any]:
    facts = empty_facts("2.0.0")
    lag = LagHistogram()
    for value in (0.0004, 0.003, 0.2, 7.0):
        lag.record(value)
    facts.update(
        start_time=1795516537.5,
        drives=[{"serial": "ZA1", "model": "ST4000NK0001", "firmware": "3.1.7",
                 "last_seen": 1795516600.25, "alive": True},
                {"serial": 'odd "serial"\\\n', "model": "", "firmware": "",
                 "last_seen": 1795516500.0, "alive": False}],
        announcements=12, announcements_rejected={"not_json": 2, "no_serial": 0},
        statuses=7, status_serials=2, queries={"m": 3, "s": 1, "w": 0, "bad": 4},
        connections_open={"query": 1, "http": 2}, connections_accepted={"http": 9},
        connections_refused={"limit": 1, "not_allowed": 0}, connections_closed_idle=5,
        http_requests={("metrics", 200): 3, ("not_found", 404): 1}, tree_objects=40,
        tree_monitors=2, expirations=6,
        journal={"state": "failing", "records_written": 10, "records_dropped": 1, "fsyncs": 3,
                 "last_snapshot": 1795516000.0},
        loop_lag=lag, bad_inputs=8, handler_failures=1)
    return facts


def families(text: str) -> Dict[str, Any]:
    return {family.name: family for family in parser.text_string_to_metric_families(text)}


def value(text: str, sample_name: str, **labels: str) -> float:
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v
                                                  for k, v in labels.items()):
                return sample.value
    raise AssertionError("no sample %s %s" % (sample_name, labels))


def test_empty_dsm_renders_and_parses():
    text = render_metrics(empty_facts())
    assert text.endswith("\n")
    assert "dsm_drives_known" in families(text)


def test_every_family_follows_the_naming_rules():
    text = render_metrics(facts_with_drives())
    found = families(text)
    assert len(found) >= 25
    for name, family in found.items():
        assert NAME.match(name) and name.startswith("dsm_"), name
        assert "host" not in {label for s in family.samples for label in s.labels}, name
        if family.type == "counter":
            # The parser strips `_total` from a counter family's name; every sample keeps it.
            assert all(s.name == name + "_total" for s in family.samples), name
        if name.endswith("_info"):
            assert family.type in ("gauge", "info")
            assert all(s.value == 1 for s in family.samples), name
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
        if line.startswith("# TYPE") and "time" in line:
            assert "_seconds" in line, line


def test_each_family_has_help_and_type_once():
    text = render_metrics(facts_with_drives())
    helps = re.findall(r"^# HELP (\S+) ", text, re.M)
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert helps == types and len(set(helps)) == len(helps)


def test_values_come_from_the_facts():
    text = render_metrics(facts_with_drives())
    assert value(text, "dsm_build_info", version="2.0.0") == 1
    assert value(text, "dsm_drives_known") == 2
    assert value(text, "dsm_drives_alive") == 1
    assert value(text, "dsm_drive_info", serial="ZA1", model="ST4000NK0001",
                 firmware="3.1.7") == 1
    assert value(text, "dsm_drive_alive", serial="ZA1") == 1
    assert value(text, "dsm_drive_alive", serial='odd "serial"\\\n') == 0
    assert value(text, "dsm_drive_last_seen_timestamp_seconds", serial="ZA1") == 1795516600.25
    assert value(text, "dsm_announcements_total") == 12
    assert value(text, "dsm_announcements_rejected_total", reason="not_json") == 2
    assert value(text, "dsm_status_updates_total") == 7
    assert value(text, "dsm_queries_total", kind="bad") == 4
    assert value(text, "dsm_connections_open", kind="http") == 2
    assert value(text, "dsm_connections_accepted_total", kind="http") == 9
    assert value(text, "dsm_connections_refused_total", reason="limit") == 1
    assert value(text, "dsm_connections_closed_idle_total") == 5
    assert value(text, "dsm_http_requests_total", handler="not_found", code="404") == 1
    assert value(text, "dsm_tree_objects") == 40
    assert value(text, "dsm_tree_monitors") == 2
    assert value(text, "dsm_expirations_total") == 6
    assert value(text, "dsm_journal_healthy") == 0
    assert value(text, "dsm_journal_records_dropped_total") == 1
    assert value(text, "dsm_journal_last_snapshot_timestamp_seconds") == 1795516000.0
    assert value(text, "dsm_start_time_seconds") == 1795516537.5
    assert value(text, "dsm_bad_inputs_total") == 8
    assert value(text, "dsm_handler_failures_total") == 1


def test_loop_lag_is_a_cumulative_histogram():
    text = render_metrics(facts_with_drives())
    assert value(text, "dsm_event_loop_lag_seconds_bucket", le="0.001") == 1
    assert value(text, "dsm_event_loop_lag_seconds_bucket", le="0.005") == 2
    assert value(text, "dsm_event_loop_lag_seconds_bucket", le="0.25") == 3
    assert value(text, "dsm_event_loop_lag_seconds_bucket", le="2.5") == 3
    assert value(text, "dsm_event_loop_lag_seconds_bucket", le="+Inf") == 4
    assert value(text, "dsm_event_loop_lag_seconds_count") == 4
    assert math.isclose(value(text, "dsm_event_loop_lag_seconds_sum"), 7.2034)
    assert value(text, "dsm_event_loop_last_lag_seconds") == 7.0
    assert families(text)["dsm_event_loop_lag_seconds"].type == "histogram"


def test_label_values_are_escaped():
    text = render_metrics(facts_with_drives())
    assert 'serial="odd \\"serial\\"\\\\\\n"' in text


def test_negative_lag_counts_as_zero():
    lag = LagHistogram()
    lag.record(-0.5)
    assert lag.last == 0.0 and lag.cumulative()[0] == (0.001, 1)
