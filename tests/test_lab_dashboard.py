"""The lab's Grafana dashboard and Prometheus file-based service discovery
(DriveStateMonitor/prometheus/grafana-dsm-lab.json, lab_file_sd.py, prometheus-lab.yml): every
metric a panel queries is one a live DSM exports, and the lab file becomes valid file_sd JSON."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from dsm_harness import ROOT, announcement, run_script, wait_for
from test_web_integration import free_tcp_port, get, send_status

PROM_DIR = os.path.join(ROOT, "DriveStateMonitor", "prometheus")
DASHBOARD = os.path.join(PROM_DIR, "grafana-dsm-lab.json")
FILE_SD = os.path.join(PROM_DIR, "lab_file_sd.py")
LAB_CONFIG = os.path.join(PROM_DIR, "prometheus-lab.yml")
PROMTOOL = shutil.which("promtool")
# Series Prometheus itself makes for every target, and the labels it adds.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "bool", "offset", "inf", "nan"}
# What the issue asks the dashboard to show, by the metric that shows it.
REQUIRED_METRICS = {"dsm_drives_alive", "dsm_drives_known", "dsm_drive_last_seen_timestamp_seconds",
                    "dsm_announcements_total", "dsm_status_updates_total",
                    "dsm_event_loop_lag_seconds_bucket", "dsm_journal_healthy",
                    "dsm_handler_failures_total", "dsm_connections_open"}


def dashboard() -> Dict:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def expressions(board: Dict) -> Iterator[Tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    def walk(panels: List[Dict]) -> Iterator[Tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield "panel %r" % panel["title"], target["expr"]
            yield from walk(panel.get("panels", []))
    yield from walk(board["panels"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            yield "variable $%s" % variable["name"], re.sub(
                r"^label_values\((.*),\s*\w+\)$", r"\1", query)


def metric_names(expr: str) -> Set[str]:
    """The series names a PromQL expression selects: identifiers that are not functions (followed
    by `(`), keywords, label names in {...}, grouping labels in by/on(...), ranges, strings or
    template variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    text = re.sub(r"\{[^}]*\}", "", text)                     # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                    # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", "", text)                         # $__rate_interval, $instance
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        word = match.group(0)
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.match(r"^[eE]\d", word) or text[max(0, match.start() - 1)].isdigit():
            continue  # part of a number such as 1e3
        names.add(word)
    return names


def grouping_labels(expr: str) -> Set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                            expr):
        labels.update(part.strip() for part in group.split(",") if part.strip())
    return labels


def test_metric_names_are_extracted_from_promql():
    assert metric_names('histogram_quantile(0.99, sum by (instance, le) (rate('
                        'dsm_event_loop_lag_seconds_bucket{instance=~"$instance"}[5m])))') == {
        "dsm_event_loop_lag_seconds_bucket"}
    assert metric_names("sum(a_total{x=\"y z\"}) - sum(b) and on(serial) c > 1e3 or vector(0)") \
        == {"a_total", "b", "c"}


@pytest.fixture(scope="module")
def live_metrics(dsm_factory_module) -> Tuple[Set[str], Set[str]]:
    """(series names, label names) of a live DSM's /metrics that knows a drive and a status: the
    samples, and each family its `# TYPE` line declares (a counter with no sample yet, such as
    dsm_http_requests_total before the first answer, is still exported), with a histogram's
    _bucket, _sum and _count."""
    parser = pytest.importorskip("prometheus_client.parser")
    dsm = dsm_factory_module.start("--http-port", str(free_tcp_port()))
    dsm.announce(announcement("ZA10F3K2"))
    send_status(dsm, "ZA10F3K2", "001", "t1")
    wait_for(lambda: dsm.query_json("m"), what="the drive heard")
    get(dsm, "/api/drives")  # so dsm_http_requests_total has a sample, with its labels
    response, body = get(dsm, "/metrics")
    assert response.status == 200
    names, labels = set(), set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body.decode("utf-8"), re.M):
        names.update([name] + ([name + suffix for suffix in ("_bucket", "_sum", "_count")]
                               if kind == "histogram" else []))
    for family in parser.text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


@pytest.fixture(scope="module")
def dsm_factory_module():
    from dsm_harness import DsmFactory
    factory = DsmFactory()
    yield factory
    factory.cleanup()


def test_every_panel_queries_only_metrics_a_live_dsm_exports(live_metrics):
    exported, _ = live_metrics
    used = set()
    for where, expr in expressions(dashboard()):
        names = metric_names(expr)
        assert names, "%s: no metric in %r" % (where, expr)
        for name in names:
            assert name in exported | PROMETHEUS_SERIES, \
                "%s uses %s, which the DSM's /metrics does not have" % (where, name)
        used |= names
    assert REQUIRED_METRICS <= used, REQUIRED_METRICS - used


def test_every_grouping_label_exists(live_metrics):
    _, labels = live_metrics
    for where, expr in expressions(dashboard()):
        for label in grouping_labels(expr):
            assert label in labels | TARGET_LABELS | {"le"}, "%s groups by %s" % (where, label)


def test_dashboard_is_importable_and_provisionable_without_inputs():
    board = dashboard()
    assert board["uid"] == "dsm-lab" and board["id"] is None and board["schemaVersion"] >= 30
    assert "__inputs" not in board  # provisioning cannot answer an import's questions
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    ids = []

    def check(panels: List[Dict]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert panel["description"], panel["title"]
                for target in panel["targets"]:
                    assert target["datasource"]["uid"] == "${datasource}"
                    assert 'instance=~"$instance"' in target["expr"], panel["title"]
            check(panel.get("panels", []))
    check(board["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    with open(os.path.join(PROM_DIR, "grafana-provisioning.yml")) as f:
        provisioning = f.read()
    assert re.search(r"^apiVersion: 1$", provisioning, re.M)
    assert re.search(r"^\s+type: file$", provisioning, re.M)


# --- file-based service discovery from the lab file ------------------------------------------
def file_sd(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_script([sys.executable, FILE_SD] + list(args), **kwargs)


def test_lab_file_becomes_file_sd_json_with_names_as_instance(tmp_path):
    lab = tmp_path / "lab"
    lab.write_text("# lab\nlabhost1\nlabhost2:2213 name=bench-2 http=8080\n[fd00::7]\n")
    result = file_sd(str(lab), "--label", "lab=building-a")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"targets": ["labhost1:2204"], "labels": {"lab": "building-a", "instance": "labhost1"}},
        {"targets": ["labhost2:8080"], "labels": {"lab": "building-a", "instance": "bench-2"}},
        {"targets": ["[fd00::7]:2204"], "labels": {"lab": "building-a", "instance": "[fd00::7]"}}]
    out = tmp_path / "dsm-lab.json"
    from_env = file_sd("-o", str(out), env=dict(os.environ, DSM_LAB=str(lab)))
    assert from_env.returncode == 0 and from_env.stdout == ""
    assert [group["labels"]["instance"] for group in json.loads(out.read_text())] == [
        "labhost1", "bench-2", "[fd00::7]"]
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []


def test_bad_lab_file_or_label_is_refused_and_the_old_output_kept(tmp_path):
    lab = tmp_path / "lab"
    lab.write_text("labhost1\nlabhost2 http=x\n")
    out = tmp_path / "dsm-lab.json"
    out.write_text("[]\n")
    result = file_sd(str(lab), "-o", str(out))
    assert result.returncode == 2
    assert result.stderr == "lab_file_sd.py: %s:2: not a port number (1-65535): 'x'\n" % lab
    assert out.read_text() == "[]\n"
    bad_label = file_sd(str(lab), "--label", "__address__=x")
    assert bad_label.returncode == 2 and "Prometheus label name" in bad_label.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH")
def test_promtool_accepts_the_lab_config_and_the_generated_targets(tmp_path):
    lab = tmp_path / "lab"
    lab.write_text("labhost1 name=bench-1\nlabhost2:2213 http=8080\n")
    for name in ("prometheus-lab.yml", "dsm-alerts.yml"):
        shutil.copy(os.path.join(PROM_DIR, name), str(tmp_path))
    assert file_sd(str(lab), "-o", str(tmp_path / "dsm-lab.json")).returncode == 0
    result = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus-lab.yml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert "valid prometheus config file syntax" in result.stdout
    # promtool reads the SD file too: a broken one fails the check.
    (tmp_path / "dsm-lab.json").write_text('[{"targets": 5}]')
    broken = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus-lab.yml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=120)
    assert broken.returncode != 0 and "dsm-lab.json" in broken.stdout
