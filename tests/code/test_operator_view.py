"""The operators' view against the code: infra/prometheus/alerts.yml and infra/grafana/loopline.json name only
metrics serving and the feedback service export, the rules carry what an operator needs, prometheus.yml
scrapes the ports the services listen on, and (with promtool) every alert fires in the situation it is
written for and every panel's query parses.

What the services export is read off their real /metrics: serving's app built on a tiny bundle, the feedback
service's collector over a FeedbackService, both in this process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.feedback.drift import DriftResult
from services.feedback.observer import Observer
from services.feedback.settings import FeedbackSettings
from services.serving.app import create_app
from services.serving.settings import ServingSettings
from tests.code.test_feedback_service import collector_registry, service
from tests.conftest import TinyModel, build_bundle

INFRA = Path(__file__).resolve().parents[2] / "infra"
RULES = INFRA / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = INFRA / "prometheus" / "prometheus.yml"
DASHBOARD = INFRA / "grafana" / "loopline.json"
SEVERITIES = {"critical", "warning", "info"}
RULE_KEYS = {"alert", "expr", "for", "labels", "annotations"}
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
# Written by Prometheus itself for every scrape target, not by a service.
SCRAPE_SERIES = {"up"}

# -- metric names in PromQL ------------------------------------------------------------------------------

# Operators, modifiers and aggregations; an aggregation is often followed by `by (...)`, not by `(`.
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                "bool", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile"}
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
MATCHERS = re.compile(r"\{[^}]*\}")  # label names and values: strings are gone by now
RANGES = re.compile(r"\[[^\]]*\]")
GRAFANA_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
# Not after a word character, a dot or a colon: skips the unit of 5m and the exponent of 1e3.
IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metrics an expression selects: identifiers that are not functions (followed by `(`), PromQL words,
    label names in `{...}` or `by (...)`, nor durations, numbers, strings or Grafana variables."""
    for pattern in (STRINGS, GRAFANA_VARIABLES, LABEL_LISTS, MATCHERS, RANGES):
        expr = pattern.sub(" ", expr)
    return {name for name, call in IDENTIFIER.findall(expr) if not call and name not in PROMQL_WORDS}


@pytest.mark.parametrize(("expr", "names"), [
    ('up{job="loopline-serving"} == 0', {"up"}),
    ("sum by (job, instance, reason) (increase(loopline_feedback_dead_letters_total[15m])) / on(job, instance) "
     "group_left sum by (job, instance) (increase(loopline_feedback_records_total[15m])) > 0.05",
     {"loopline_feedback_dead_letters_total", "loopline_feedback_records_total"}),
    ('histogram_quantile(0.99, sum by (le) (rate(loopline_request_seconds_bucket{route=~"/v1/(predict)"}'
     '[$__rate_interval])))', {"loopline_request_seconds_bucket"}),
    ("(loopline_prediction_log_dropped unless loopline_prediction_log_dropped offset 1h) and on(job, instance) "
     "up offset 1h", {"loopline_prediction_log_dropped", "up"}),
    ("topk(10, sum(loopline_feedback_unknown_labels_total)) * 1e3 > bool 0.5",
     {"loopline_feedback_unknown_labels_total"}),
    ('loopline_feedback_dead_leters_total{reason="sum"}', {"loopline_feedback_dead_leters_total"}),
])
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# -- what the code exports -------------------------------------------------------------------------------

# Sample names a family without samples would get, by its type (prometheus_client's exposition).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum"), "info": ("_info",), "stateset": ("",), "unknown": ("",)}


def exposed_names(exposition: str) -> set[str]:
    """Every sample name a /metrics text carries or, for a family with no samples yet (labelled, nothing
    counted), would carry by its type."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {s.name for s in family.samples} or {family.name + s for s in SUFFIXES[family.type]}
    return names


def test_exposed_names_cover_families_with_and_without_samples() -> None:
    registry = CollectorRegistry()
    Counter("idle", "no label counted yet", ["reason"], registry=registry)
    Counter("busy", "counted", registry=registry).inc()
    Histogram("latency_seconds", "no label observed yet", ["route"], registry=registry)
    Gauge("depth", "no label set yet", ["kind"], registry=registry)
    assert exposed_names(generate_latest(registry).decode()) == {
        "idle_total", "busy_total", "busy_created", "latency_seconds_bucket", "latency_seconds_count",
        "latency_seconds_sum", "depth"}


def serving_exposition(trained: TinyModel, folder: Path) -> str:
    """Serving's /metrics after one answered request."""
    encoder, head, _ = trained
    settings = ServingSettings(bundle=build_bundle(folder / "bundle", encoder, head), state_dir=folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
        with TestClient(create_app(settings)) as client:
            assert client.post("/v1/predict", json={"text": "turn on wifi"}).status_code == 200
            return client.get("/metrics").text


def feedback_exposition(trained: TinyModel, folder: Path) -> str:
    """The feedback service's /metrics with an observer that judged a drift window: its families are yielded
    only then. (Running against a registry, the service makes the observer itself.)"""
    settings = FeedbackSettings(state_dir=folder)
    svc = service(settings, trained)
    svc.observer = observer = Observer(settings, None, svc.learner.base_version)
    observer.last = DriftResult(window=1, n_events=200, drift_share=0.4, drifted_columns=("text_length",),
                                scores={"text_length": 0.2}, accuracy=0.8, baseline_accuracy=0.9, alert=True,
                                snapshot_id="-", report_path=folder / "report.html")
    try:
        return generate_latest(collector_registry(svc)).decode()
    finally:
        observer.close()


@pytest.fixture(scope="module")
def exported(trained: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    serving = exposed_names(serving_exposition(trained, tmp_path_factory.mktemp("serving")))
    feedback = exposed_names(feedback_exposition(trained, tmp_path_factory.mktemp("feedback")))
    assert "loopline_request_seconds_bucket" in serving and "loopline_feedback_drift_share" in feedback
    return serving | feedback | SCRAPE_SERIES


# -- the files -------------------------------------------------------------------------------------------

def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def panels() -> Iterator[dict[str, Any]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert and every panel query."""
    for rule in rules():
        yield f"alert {rule['alert']}", rule["expr"]
    for panel in panels():
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]


def test_every_metric_a_rule_or_panel_names_is_exported(exported: set[str]) -> None:
    unknown = [f"{where}: {name}" for where, expr in queries() for name in sorted(metric_names(expr) - exported)]
    assert not unknown, f"not exported by serving or the feedback service: {unknown}"


def test_a_misspelled_metric_is_not_taken_for_an_exported_one(exported: set[str]) -> None:
    assert "loopline_feedback_dead_letters_total" in exported
    assert metric_names("rate(loopline_feedback_dead_leters_total[5m])") - exported == {
        "loopline_feedback_dead_leters_total"}
    assert "loopline_feedback_dead_letters" not in exported, "a counter is exposed with _total only"


def rule_problems(text: str) -> list[str]:
    """What keeps a rule file from being loaded or an alert from telling an operator what to do."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not YAML: {exc}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list) or not doc["groups"]:
        return ["no `groups` list"]
    problems, seen = [], set()
    for group in doc["groups"]:
        if not isinstance(group, dict) or not group.get("name") or not isinstance(group.get("rules"), list):
            problems.append(f"a group without a name or rules: {group!r:.80}")
            continue
        for rule in group["rules"]:
            name = rule.get("alert") if isinstance(rule, dict) else None
            if not name:
                problems.append(f"{group['name']}: a rule without an alert name")
                continue
            if name in seen:
                problems.append(f"{name}: twice")
            seen.add(name)
            labels, annotations = rule.get("labels") or {}, rule.get("annotations") or {}
            problems += [f"{name}: {p}" for p, bad in [
                (f"unknown keys {sorted(set(rule) - RULE_KEYS)}", set(rule) - RULE_KEYS),
                ("no expr", not isinstance(rule.get("expr"), str) or not rule["expr"].strip()),
                ("`for` missing or not a duration", not DURATION.fullmatch(str(rule.get("for", "")))),
                (f"severity not one of {sorted(SEVERITIES)}", labels.get("severity") not in SEVERITIES),
                ("no summary", not str(annotations.get("summary", "")).strip()),
                ("no description", not str(annotations.get("description", "")).strip())] if bad]
    return problems


def test_the_rules_are_well_formed() -> None:
    assert rule_problems(RULES.read_text()) == []


GOOD_RULE = {"alert": "A", "expr": "up == 0", "for": "1m", "labels": {"severity": "warning"},
             "annotations": {"summary": "s", "description": "d"}}


@pytest.mark.parametrize(("text", "problem"), [
    ("groups: [{name: g, rules: [", "not YAML"),
    ("rules: []", "no `groups` list"),
    (yaml.safe_dump({"groups": [{"name": "g", "rules": [{**GOOD_RULE, "for": "soon"}]}]}), "A: `for`"),
    (yaml.safe_dump({"groups": [{"name": "g", "rules": [{**GOOD_RULE, "labels": {}}]}]}), "A: severity"),
    (yaml.safe_dump({"groups": [{"name": "g", "rules": [{**GOOD_RULE, "annotations": {"summary": "s"}}]}]}),
     "A: no description"),
    (yaml.safe_dump({"groups": [{"name": "g", "rules": [{k: v for k, v in GOOD_RULE.items() if k != "expr"}]}]}),
     "A: no expr"),
    (yaml.safe_dump({"groups": [{"name": "g", "rules": [GOOD_RULE, GOOD_RULE]}]}), "A: twice"),
    (yaml.safe_dump({"groups": [{"name": "g", "rules": [{**GOOD_RULE, "exp": "typo"}]}]}), "A: unknown keys"),
])
def test_a_broken_rule_file_is_reported(text: str, problem: str) -> None:
    assert rule_problems(yaml.safe_dump({"groups": [{"name": "g", "rules": [GOOD_RULE]}]})) == []
    assert any(p.startswith(problem) for p in rule_problems(text)), rule_problems(text)


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel.get("title")
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_prometheus_scrapes_the_ports_the_services_listen_on() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ports = {"loopline-serving": ServingSettings.model_fields["port"].default,
             "loopline-feedback": FeedbackSettings.model_fields["metrics_port"].default}
    assert set(jobs) == set(ports)
    for name, port in ports.items():
        assert jobs[name]["metrics_path"] == "/metrics"
        assert [t for c in jobs[name]["static_configs"] for t in c["targets"]] == [f"127.0.0.1:{port}"]
    named = {m for _, expr in queries() for m in re.findall(r'\bjob\s*=\s*"([^"]+)"', expr)}
    assert named and named <= set(jobs), f"jobs named in queries but not scraped: {named - set(jobs)}"


# -- with promtool: alerts fire when they should, panel queries parse --------------------------------------

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is missing: `make promtool` installs Debian's prometheus")
SERVING = {"job": "loopline-serving", "instance": "127.0.0.1:8000"}
FEEDBACK = {"job": "loopline-feedback", "instance": "127.0.0.1:8001"}


def series(name: str, target: dict[str, str], values: str, **labels: str) -> dict[str, str]:
    """One input series for promtool: a sample a minute, `values` in its notation (`0+5x30`: 0, 5, ... 150;
    `_x3`: three missing; `stale`: gone)."""
    pairs = ", ".join(f'{k}="{v}"' for k, v in {**target, **labels}.items())
    return {"series": f"{name}{{{pairs}}}", "values": values}


UP_SERVING, UP_FEEDBACK = series("up", SERVING, "1x200"), series("up", FEEDBACK, "1x200")

# (alert, input series, minute evaluated, the labels each firing alert has besides alertname and severity;
# an empty list: the alert must not fire).
SCENARIOS: list[tuple[str, list[dict[str, str]], int, list[dict[str, str]]]] = [
    ("LooplineServingDown", [series("up", SERVING, "1 1 0x10")], 6, [SERVING]),
    ("LooplineServingDown", [series("up", SERVING, "1 1 0 1x10")], 6, []),
    ("LooplineFeedbackServiceDown", [series("up", FEEDBACK, "1 0x10")], 6, [FEEDBACK]),
    ("LooplineServingWithoutModel",
     [UP_SERVING, series("loopline_model_info", SERVING, "1 1 stale", version="1")], 15, [SERVING]),
    ("LooplineServingWithoutModel",
     [UP_SERVING, series("loopline_model_info", SERVING, "1x20", version="1+ftrl.4")], 15, []),
    ("LooplineServingErrors",
     [series("loopline_requests_total", SERVING, "0+100x20", route="/v1/predict", status="200"),
      series("loopline_requests_total", SERVING, "0+10x20", route="/v1/predict", status="503")], 15, [SERVING]),
    ("LooplineServingErrors",  # a replica that is not ready answers its probes 503: not a failed prediction
     [series("loopline_requests_total", SERVING, "0+100x20", route="/v1/predict", status="200"),
      series("loopline_requests_total", SERVING, "0+50x20", route="/readyz", status="503")], 15, []),
    ("LooplineServingRefusedModel", [series("loopline_model_failed_loads", SERVING, "0 0 1x10")], 5, [SERVING]),
    ("LooplineCheckpointsStalled",
     [series("loopline_feedback_checkpoint", FEEDBACK, "7x30"),
      series("loopline_feedback_examples_total", FEEDBACK, "0+10x30")], 20, [FEEDBACK]),
    ("LooplineCheckpointsStalled",
     [series("loopline_feedback_checkpoint", FEEDBACK, "0+1x30"),
      series("loopline_feedback_examples_total", FEEDBACK, "0+10x30")], 20, []),
    ("LooplineCheckpointDamaged", [series("loopline_feedback_checkpoints_skipped_total", FEEDBACK, "1x5")], 2,
     [FEEDBACK]),
    ("LooplineFeedbackNotLearned",
     [series("loopline_feedback_records_total", FEEDBACK, "0+10x30", topic="feedback"),
      series("loopline_feedback_examples_total", FEEDBACK, "40x30")], 25, [FEEDBACK]),
    ("LooplineFeedbackNotLearned",
     [series("loopline_feedback_records_total", FEEDBACK, "0+10x30", topic="feedback"),
      series("loopline_feedback_examples_total", FEEDBACK, "0+8x30")], 25, []),
    ("LooplineServingNotUpdated",
     [series("loopline_model_updates", SERVING, "3x30", outcome="applied"),
      series("loopline_feedback_windows_total", FEEDBACK, "0+1x30", decision="published")], 25,
     [{**SERVING, "outcome": "applied"}]),
    ("LooplineServingNotUpdated",
     [series("loopline_model_updates", SERVING, "0+1x30", outcome="applied"),
      series("loopline_feedback_windows_total", FEEDBACK, "0+1x30", decision="published")], 25, []),
    ("LooplineServingDeltaGap", [series("loopline_model_updates", SERVING, "0 0 1x10", outcome="gap")], 5,
     [{**SERVING, "outcome": "gap"}]),
    ("LooplineFeedbackFallingBehind",
     [series("loopline_prediction_log_sent", SERVING, "0+100x40"),
      series("loopline_feedback_records_total", FEEDBACK, "0+50x40", topic="predictions")], 30, [{}]),
    ("LooplineFeedbackFallingBehind",
     [series("loopline_prediction_log_sent", SERVING, "0+100x40"),
      series("loopline_feedback_records_total", FEEDBACK, "0+100x40", topic="predictions")], 30, []),
    ("LooplinePredictionEventsDropped",  # the reason's first drop, at minute 70, makes its series
     [UP_SERVING, series("loopline_prediction_log_dropped", SERVING, "_x70 5x10", reason="send_failed")], 72,
     [{**SERVING, "reason": "send_failed"}]),
    ("LooplinePredictionEventsDropped",  # and later drops raise it
     [UP_SERVING, series("loopline_prediction_log_dropped", SERVING, "1x100 2x10", reason="buffer_full")], 105,
     [{**SERVING, "reason": "buffer_full"}]),
    ("LooplinePredictionEventsDropped",
     [UP_SERVING, series("loopline_prediction_log_dropped", SERVING, "1x110", reason="buffer_full")], 105, []),
    ("LooplineDeadLetters",
     [series("loopline_feedback_dead_letters_total", FEEDBACK, "0+10x30", reason="unmatched"),
      series("loopline_feedback_dead_letters_total", FEEDBACK, "0+1x30", reason="duplicate"),
      series("loopline_feedback_records_total", FEEDBACK, "0+50x30", topic="feedback"),
      series("loopline_feedback_records_total", FEEDBACK, "0+50x30", topic="predictions")], 25,
     [{**FEEDBACK, "reason": "unmatched"}]),
    ("LooplineGateRejecting",
     [series("loopline_feedback_windows_total", FEEDBACK, "0+3x60", decision="rejected"),
      series("loopline_feedback_windows_total", FEEDBACK, "0+1x60", decision="published"),
      series("loopline_feedback_windows_total", FEEDBACK, "0+9x60", decision="no_evidence")], 50, [FEEDBACK]),
    ("LooplineGateRejecting",
     [series("loopline_feedback_windows_total", FEEDBACK, "0+1x60", decision="rejected"),
      series("loopline_feedback_windows_total", FEEDBACK, "0+3x60", decision="published")], 50, []),
    ("LooplineGuardRolledBack",
     [UP_FEEDBACK, series("loopline_feedback_registrations_total", FEEDBACK, "_x70 1x10",
                          outcome="guard_rollback")], 72, [{**FEEDBACK, "outcome": "guard_rollback"}]),
    ("LooplineGuardRolledBack",  # Prometheus started after the rollback: nothing new happened
     [series("up", FEEDBACK, "_x60 1x20"), series("loopline_feedback_registrations_total", FEEDBACK,
                                                  "_x60 1x20", outcome="guard_rollback")], 72, []),
    ("LooplineRegistrationStuck", [series("loopline_feedback_registration_pending_seconds", FEEDBACK, "0+60x10")],
     8, [FEEDBACK]),
    ("LooplineRegistrationsFailing",
     [UP_FEEDBACK, series("loopline_feedback_registrations_total", FEEDBACK, "1+1x30", outcome="failed")], 20,
     [{**FEEDBACK, "outcome": "failed"}]),
    ("LooplineServingRegistryUnreachable",
     [series("loopline_model_updates", SERVING, "0+2x20", outcome="registry_unreachable")], 15,
     [{**SERVING, "outcome": "registry_unreachable"}]),
    ("LooplineExamplesNotSaved", [series("loopline_feedback_examples_commit_failures_total", FEEDBACK, "0+1x20")],
     15, [FEEDBACK]),
    ("LooplineDriftMonitoringFailing",
     [UP_FEEDBACK, series("loopline_feedback_observer_total", FEEDBACK, "_x70 1x10", outcome="log_failed")], 72,
     [{**FEEDBACK, "outcome": "log_failed"}]),
    ("LooplineDriftRetrainNotTriggered",
     [UP_FEEDBACK, series("loopline_feedback_observer_total", FEEDBACK, "1x80 2x10",
                          outcome="alerts_not_emitted")], 85, [{**FEEDBACK, "outcome": "alerts_not_emitted"}]),
    ("LooplineDriftRetrainNotServed",  # a drift event at minute 10, no new champion since
     [UP_FEEDBACK, series("loopline_feedback_observer_total", FEEDBACK, "_x10 1x200", outcome="events_emitted")],
     80, [{**FEEDBACK, "outcome": "events_emitted"}]),
    ("LooplineDriftRetrainNotServed",  # the retrain became champion at minute 30
     [UP_FEEDBACK, series("loopline_feedback_observer_total", FEEDBACK, "_x10 1x200", outcome="events_emitted"),
      series("loopline_feedback_registrations_total", FEEDBACK, "_x30 1x200", outcome="reset")], 80, []),
    ("LooplineDriftRetrainNotServed",  # a second drift event at minute 200, answered by none
     [UP_FEEDBACK, series("loopline_feedback_observer_total", FEEDBACK, "_x10 1x190 2x200",
                          outcome="events_emitted"),
      series("loopline_feedback_registrations_total", FEEDBACK, "_x30 1x400", outcome="reset")], 270,
     [{**FEEDBACK, "outcome": "events_emitted"}]),
]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_every_alert_has_a_scenario_where_it_fires() -> None:
    firing = {alert for alert, *_, expected in SCENARIOS if expected}
    assert firing == {rule["alert"] for rule in rules()}


@needs_promtool
@pytest.mark.parametrize(("alert", "inputs", "minute", "expected"), SCENARIOS,
                         ids=[f"{s[0]}-{'fires' if s[3] else 'quiet'}-{i}" for i, s in enumerate(SCENARIOS)])
def test_the_alert_fires_when_it_should(alert: str, inputs: list[dict[str, str]], minute: int,
                                        expected: list[dict[str, str]], tmp_path: Path) -> None:
    doc = yaml.safe_load(RULES.read_text())
    severity = next(r["labels"]["severity"] for g in doc["groups"] for r in g["rules"] if r["alert"] == alert)
    for group in doc["groups"]:  # promtool compares annotations too; what they say is not under test here
        group["rules"] = [{k: v for k, v in r.items() if k != "annotations"} for r in group["rules"]]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": [{
            "eval_time": f"{minute}m", "alertname": alert,
            "exp_alerts": [{"exp_labels": {**labels, "severity": severity}} for labels in expected]}]}]}))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_panel_query_parses(tmp_path: Path) -> None:
    """Each query as a recording rule, Grafana's $__rate_interval as the 1m it is at a 15 s scrape."""
    records = [{"record": f"panel_{i}", "expr": expr.replace("$__rate_interval", "1m")}
               for i, (where, expr) in enumerate(queries()) if where.startswith("panel")]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    result = promtool("check", "rules", "panels.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
