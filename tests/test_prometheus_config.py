"""The fleet view: DriveStateMonitor/prometheus/ (scrape config, alerting rules and their unit tests).

With `promtool` on PATH (Debian: `apt-get install --no-install-recommends prometheus`) the files are
checked by Prometheus's own tool. Without it, and without a YAML library, the rules are still held
to the metrics the DSM really renders.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, List, Set

import pytest

from DriveStateMonitor.metrics import LagHistogram, empty_facts, render_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROM_DIR = os.path.join(ROOT, "DriveStateMonitor", "prometheus")
CONFIG = os.path.join(PROM_DIR, "prometheus.yml")
RULES = os.path.join(PROM_DIR, "dsm-alerts.yml")
RULE_TESTS = os.path.join(PROM_DIR, "dsm-alerts.test.yml")

ALERTS = {"DriveSilent", "DSMDown", "DSMJournalFailing", "DSMNoSnapshot", "DSMStateDamaged",
          "DSMStateDirReplaced", "DSMEventLoopLag", "DSMHandlerFailures", "DSMInternalFailures",
          "DSMAnnouncementsDropped"}
# Labels Prometheus adds to every scraped series (the DSM itself adds no host label).
TARGET_LABELS = {"job", "instance"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (Debian/Ubuntu: apt-get install --no-install-recommends "
           "prometheus)")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=PROM_DIR, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)


# --- promtool -------------------------------------------------------------------------------------

@needs_promtool
def test_promtool_accepts_the_scrape_config():
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout
    assert "1 rule files found" in result.stdout, result.stdout


@needs_promtool
def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout
    assert "%d rules found" % len(ALERTS) in result.stdout, result.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout, result.stdout


# --- without promtool: the rules against what the DSM renders -------------------------------------

def rendered_samples() -> Dict[str, Set[str]]:
    """Sample name -> label names, from the exposition text of a DSM that knows one drive."""
    facts = empty_facts("2.0.0")
    lag = LagHistogram()
    lag.record(0.003)
    facts.update(
        start_time=1795516537.5,
        drives=[{"serial": "ZA1", "model": "ST4000NK0001", "firmware": "3.1.7",
                 "last_seen": 1795516600.25, "alive": True}],
        announcements_rejected={"not_json": 0}, queries={"m": 1},
        connections_open={"http": 1}, connections_accepted={"http": 1},
        connections_refused={"limit": 0}, http_requests={("metrics", 200): 1},
        journal={"state": "ok", "records_written": 1, "records_dropped": 0, "fsyncs": 1,
                 "last_snapshot": 1795516000.0},
        loop_lag=lag, multicast_receive_drops=3)
    samples: Dict[str, Set[str]] = {}
    for line in render_metrics(facts).splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        assert match, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
        samples.setdefault(match.group(1), set()).update(labels)
    return samples


def rules_by_alert() -> Dict[str, str]:
    """Alert name -> the text of its rule (up to the next `- alert:`), comments removed."""
    lines = [line for line in read(RULES).splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines)
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.M)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def expression(rule: str) -> str:
    """The `expr:` of one rule: a one-line value or a `|` block (its more-indented lines)."""
    lines = rule.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        if match.group(2) not in ("|", "|-", ">", ">-"):
            return match.group(2)
        indent = len(match.group(1))
        block: List[str] = []
        for following in lines[index + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        return " ".join(block)
    raise AssertionError("no expr in rule:\n" + rule)


def test_every_alert_is_there_with_severity_and_annotations():
    rules = rules_by_alert()
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert expression(rule).strip(), name
        assert re.search(r"^\s+severity:\s*(critical|warning)\s*$", rule, re.M), name
        assert re.search(r"^\s+summary:\s*\S", rule, re.M), name
        assert re.search(r"^\s+description:\s*\S", rule, re.M), name


def test_every_metric_in_the_rules_is_rendered_by_the_dsm():
    samples = rendered_samples()
    used = set()
    for name, rule in rules_by_alert().items():
        for metric in re.findall(r"\b(dsm_[a-zA-Z0-9_]+)", expression(rule)):
            assert metric in samples, "%s uses %s, which the DSM does not render" % (name, metric)
            used.add(metric)
    assert {"dsm_drive_last_seen_timestamp_seconds", "dsm_drive_info", "dsm_journal_healthy",
            "dsm_journal_last_snapshot_timestamp_seconds", "dsm_start_time_seconds",
            "dsm_event_loop_lag_seconds_bucket", "dsm_handler_failures_total",
            "dsm_multicast_receive_drops_total"} <= used


def test_the_protocol_doc_lists_every_alert():
    with open(os.path.join(ROOT, "docs", "protocol.md"), encoding="utf-8") as f:
        listed = set(re.findall(r"^\| `([A-Za-z]+)` \|", f.read(), re.M))
    assert ALERTS <= listed, ALERTS - listed


def test_labels_the_rules_join_on_exist():
    samples = rendered_samples()
    rendered_labels = set().union(*samples.values()) | TARGET_LABELS
    for name, rule in rules_by_alert().items():
        expr = expression(rule)
        for group in re.findall(r"\b(?:on|by|group_left|group_right)\s*\(([^)]*)\)", expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in rendered_labels, "%s joins on unknown label %s" % (name, label)
    assert {"serial", "model", "firmware"} <= samples["dsm_drive_info"]
    assert samples["dsm_drive_last_seen_timestamp_seconds"] == {"serial"}


def test_the_job_name_matches_the_rules():
    config = read(CONFIG)
    assert re.search(r"^\s*- job_name:\s*dsm\b", config, re.M)
    for job in re.findall(r'job="([^"]*)"', read(RULES)):
        assert job == "dsm"


def test_the_files_point_at_each_other():
    config = read(CONFIG)
    assert re.search(r"^rule_files:\s*\n\s+- dsm-alerts\.yml\b", config, re.M)
    assert re.search(r"^rule_files:\s*\n\s+- dsm-alerts\.yml\b", read(RULE_TESTS), re.M)
    assert re.search(r"^\s+- (\S+):2204\b", config, re.M), "example targets on port 2204"
    assert "file_sd_configs" in config and "scrape_interval: 15s" in config


@pytest.mark.parametrize("path", [CONFIG, RULES, RULE_TESTS], ids=os.path.basename)
def test_yaml_is_structurally_sane_without_a_library(path):
    text = read(path)
    assert text.endswith("\n") and "\t" not in text, "no tabs in YAML"
    for number, line in enumerate(text.splitlines(), 1):
        assert line == line.rstrip(), "%s:%d trailing space" % (path, number)
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        assert (len(line) - len(stripped)) % 2 == 0, "%s:%d odd indent" % (path, number)
        # A quoted scalar (`key: "..."`, `- '...'`) closes on its line; so does a flow list.
        value = re.sub(r"^(- )?([A-Za-z_][A-Za-z0-9_]*:\s*)?", "", stripped)
        if value[:1] in ("'", '"'):
            assert len(value) > 1 and value.endswith(value[0]), \
                "%s:%d unclosed quote" % (path, number)
        if value.startswith("["):
            assert value.endswith("]"), "%s:%d unclosed [" % (path, number)
    top = {line.split(":", 1)[0] for line in text.splitlines()
           if line and not line[0].isspace() and not line.startswith("#")}
    expected = {CONFIG: {"global", "rule_files", "scrape_configs"}, RULES: {"groups"},
                RULE_TESTS: {"rule_files", "evaluation_interval", "tests"}}[path]
    assert top == expected


@pytest.mark.parametrize("path", [CONFIG, RULES, RULE_TESTS], ids=os.path.basename)
def test_yaml_parses_when_a_library_is_installed(path):
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed; the text checks above hold")
    document = yaml.safe_load(read(path))
    assert isinstance(document, dict)
    if path == RULES:
        names = {rule["alert"] for group in document["groups"] for rule in group["rules"]}
        assert names == ALERTS
        for group in document["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in ("critical", "warning")
                assert set(rule["annotations"]) == {"summary", "description"}
    if path == CONFIG:
        job, = document["scrape_configs"]
        assert job["job_name"] == "dsm" and document["rule_files"] == ["dsm-alerts.yml"]
        assert all(target.endswith(":2204") for group in job["static_configs"]
                   for target in group["targets"])
