"""What the stack reports while the replay runs, recorded with the wall time it was seen.

- serving: `GET /v1/models/current` five times a second (plus every predict answer,
  which the simulator records): when each model version was first served;
- `model-updates`: every delta and full-version notice, with its `window_end`;
- the feedback service's `/metrics` every second: windows published and rejected,
  progressive accuracy, drift windows and alerts, registrations;
- the MLflow registry and the Prefect server every few seconds: versions (source,
  parent, champion), the `loopline.drift.detected` events and the `on-drift` flow runs.

Each poller catches its own errors (a part that is busy for a moment costs a sample,
not the demo) and counts them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from services.common.events import MODEL_UPDATES, ModelUpdate

log = logging.getLogger(__name__)

DRIFT_EVENT = "loopline.drift.detected"  # flows.deployments.DRIFT_EVENT, without importing Prefect here
RETRAIN_DEPLOYMENT = "on-drift"


def version_key(version: str) -> tuple[int, int]:
    """'3' -> (3, 0), '3+ftrl.7' -> (3, 7): the order in which one chain of versions contains the last."""
    base, _, online = version.partition("+ftrl.")
    return int(base), int(online or 0)


@dataclass(frozen=True)
class Update:
    version: str
    kind: str  # delta or full
    base: int
    sequence: int
    window_end: float | None
    ts: float  # record time on model-updates (unix seconds)


@dataclass(frozen=True)
class RegistryVersion:
    version: int
    created: float  # unix seconds
    source: str  # train, retrain or online
    parent: str
    decision: str
    accuracy: str


@dataclass(frozen=True)
class FlowRun:
    id: str
    name: str
    state: str
    start: float | None
    end: float | None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    pairs = (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, _, value in pairs if name}


def _timestamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


class Watch:
    """Pollers in daemon threads; `stop()` ends them. Fields are safe to read while they run."""

    def __init__(self, serving_url: str, feedback_url: str, bootstrap: str, prefect_api: str, model_name: str,
                 registry: Any, first_version: int) -> None:
        self.serving_url, self.feedback_url = serving_url, feedback_url
        self.bootstrap, self.prefect_api, self.model_name = bootstrap, prefect_api, model_name
        self.registry, self.first_version = registry, first_version
        self.first_seen: dict[str, float] = {}  # serving version -> first time it was served
        self.current = "-"
        self.updates: list[Update] = []
        self.metrics: dict[str, float] = {}
        self.timeline: list[dict[str, Any]] = []  # one row per metrics poll
        self.versions: dict[int, RegistryVersion] = {}
        self.champion: int | None = None
        self.runs: dict[str, FlowRun] = {}
        self.drift_events: list[dict[str, Any]] = []
        self.alert_seen: float | None = None  # first poll that showed a drift alert
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, name=f"watch-{f.__name__}", daemon=True)
                         for f in (self._poll_serving, self._follow_updates, self._poll_metrics, self._poll_slow)]

    def start(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def seen(self, version: str, at: float) -> None:
        """Serving answered with `version` at `at` (from a predict answer)."""
        if version not in self.first_seen or at < self.first_seen[version]:
            self.first_seen[version] = at

    def metric(self, name: str, label: str = "") -> float:
        return self.metrics.get(f"{name}{{{label}}}" if label else name, 0.0)

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        log.debug("%s poll failed: %s", what, exc)

    # -- pollers ---------------------------------------------------------------------------------

    def _poll_serving(self) -> None:
        with httpx.Client(base_url=self.serving_url, timeout=5.0) as http:
            while not self._stop.wait(0.2):
                try:
                    version = http.get("/v1/models/current").json()["version"]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self._failed("serving", exc)
                    continue
                self.current = version
                self.seen(version, time.time())

    def _follow_updates(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"demo-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "fetch.message.max.bytes": 64 * 1024 * 1024,
                             "log_level": 2})
        try:
            partitions = consumer.list_topics(MODEL_UPDATES, timeout=10).topics[MODEL_UPDATES].partitions
            consumer.assign([TopicPartition(MODEL_UPDATES, p, OFFSET_BEGINNING) for p in partitions])
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                try:
                    update = ModelUpdate.model_validate_json(message.value() or b"")
                except ValueError as exc:
                    self._failed("model-updates", exc)
                    continue
                if update.model == self.model_name:
                    self.updates.append(Update(update.version, update.kind, update.base_version, update.sequence,
                                               update.window_end, message.timestamp()[1] / 1000))
        except KafkaException as exc:
            self._failed("model-updates", exc)
        finally:
            consumer.close()

    def _poll_metrics(self) -> None:
        with httpx.Client(base_url=self.feedback_url, timeout=5.0) as http:
            while not self._stop.wait(1.0):
                try:
                    self.metrics = parse_metrics(http.get("/metrics").text)
                except httpx.HTTPError as exc:
                    self._failed("feedback", exc)
                    continue
                now = time.time()
                if self.alert_seen is None and self.metric("loopline_feedback_observer_total", 'outcome="alerts"'):
                    self.alert_seen = now
                self.timeline.append({"t": now, "serving": self.current, "champion": self.champion,
                                      **{k: v for k, v in self.metrics.items() if k.startswith("loopline_feedback")}})

    def _poll_slow(self) -> None:
        with httpx.Client(timeout=10.0) as http:
            while not self._stop.wait(3.0):
                for what, poll in (("registry", self._poll_registry), ("prefect", lambda: self._poll_prefect(http))):
                    try:
                        poll()
                    except Exception as exc:  # a busy server costs a sample
                        self._failed(what, exc)

    def _poll_registry(self) -> None:
        champion = self.registry.champion()
        self.champion = champion.version if champion is not None else None
        for found in self.registry.client.search_model_versions(f"name='{self.model_name}'"):
            number = int(found.version)
            if number in self.versions and self.versions[number].decision:
                continue
            tags = dict(found.tags)
            source = tags.get("source", "")
            if source == "train":
                source = "train" if number <= self.first_version else "retrain"
            self.versions[number] = RegistryVersion(
                number, int(found.creation_timestamp) / 1000, source, tags.get("parent_version", ""),
                str(tags.get("deploy.decision") or ""),
                str(tags.get("metric.accuracy") or tags.get("metric.progressive_accuracy") or ""))

    def _poll_prefect(self, http: httpx.Client) -> None:
        runs = http.post(f"{self.prefect_api}/flow_runs/filter", json={
            "deployments": {"name": {"any_": [RETRAIN_DEPLOYMENT]}}, "sort": "ID_DESC", "limit": 10})
        runs.raise_for_status()
        for run in runs.json():
            self.runs[run["id"]] = FlowRun(run["id"], run["name"], run.get("state_name") or "?",
                                           _timestamp(run.get("start_time")), _timestamp(run.get("end_time")))
        events = http.post(f"{self.prefect_api}/events/filter", json={
            "filter": {"event": {"name": [DRIFT_EVENT]}}, "limit": 50})
        events.raise_for_status()
        self.drift_events = sorted(
            ({"occurred": _timestamp(e["occurred"]), "payload": e.get("payload", {})}
             for e in events.json().get("events", [])
             if e["resource"].get("prefect.resource.id") == f"loopline.{self.model_name}"),
            key=lambda e: e["occurred"] or 0.0)

    def to_json(self) -> dict[str, Any]:
        """Everything recorded, for out/demo.json."""
        return json.loads(json.dumps({
            "first_seen": self.first_seen, "updates": [u.__dict__ for u in self.updates],
            "timeline": self.timeline, "versions": [v.__dict__ for v in self.versions.values()],
            "champion": self.champion, "runs": [r.__dict__ for r in self.runs.values()],
            "drift_events": self.drift_events, "alert_seen": self.alert_seen, "errors": self.errors}))
