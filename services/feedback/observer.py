"""What the feedback service reports beside learning: drift per window.

It runs in a thread of its own so that an Evidently run (1-2 s) or an MLflow upload
never delays an update window. The learning loop hands it every released window
(`observe`); it feeds the `DriftMonitor`, and for each finished drift window logs
the HTML report and its numbers to MLflow and, on an alert, emits the Prefect event
`loopline.drift.detected` (at most once per `drift_alert_cooldown_s`), which
triggers the retrain deployment.

This is a side effect outside the checkpoint: after a crash the windows replayed
since the last checkpoint are observed again (a drift window may count them twice),
which is harmless for monitoring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from services.feedback.drift import DriftMonitor, DriftResult, DriftSettings, Reference
from services.feedback.join import Joined
from services.feedback.settings import FeedbackSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Window:
    examples: Sequence[Joined]


@dataclass(frozen=True)
class _NewReference:
    reference: Reference | None
    version: int


class Observer:
    """A worker thread fed with released windows; counts what it did for /metrics."""

    def __init__(self, settings: FeedbackSettings, reference: Reference | None, version: int) -> None:
        self.settings = settings
        self.drift_settings = DriftSettings(
            window_events=settings.drift_window_events, window_seconds=settings.drift_window_s,
            min_events=min(settings.drift_min_events, settings.drift_window_events),
            min_interval_s=settings.drift_min_interval_s,
            drift_share_threshold=settings.drift_share_threshold, accuracy_drop=settings.drift_accuracy_drop)
        self.outcomes: Counter[str] = Counter()
        self.last: DriftResult | None = None
        self.version = version
        self._reference = reference
        self._monitor: DriftMonitor | None = None  # made by the worker: Evidently takes seconds to import
        # /healthz shows it: the drift project appears in the workspace only once this is "on".
        self.drift: Literal["starting", "on", "off", "failed"] = "starting"
        self._queue: queue.Queue[_Window | _NewReference | None] = queue.Queue(maxsize=64)
        self._last_alert = -float("inf")
        # Feedback times of the events in the current drift window: an alert names the window by them.
        self._window_times = (float("inf"), -float("inf"))
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedback-observer", daemon=True)
        self._thread.start()

    def observe(self, examples: Sequence[Joined]) -> None:
        """Hand over one released window (blocks only if the worker is 64 windows behind)."""
        if examples:
            self._queue.put(_Window(examples))

    def new_reference(self, reference: Reference | None, version: int) -> None:
        """The base version changed to one with another encoder: compare with its reference from now on."""
        self._queue.put(_NewReference(reference, version))

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the window in hand. Windows still queued are not observed for drift: a stopping
        service must not wait for monitoring."""
        self._closing.set()
        with contextlib.suppress(queue.Full):  # full: the worker drained it on seeing `_closing` and is gone
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _make_monitor(self, reference: Reference | None) -> DriftMonitor | None:
        """The monitor for this reference; None with drift off, or when it cannot be made (logged)."""
        if reference is None or not self.settings.drift:
            self.drift = "off"
            return None
        self.drift = "starting"
        try:
            monitor = DriftMonitor(reference, self.settings.state_dir / "evidently", self.settings.model_name,
                                   self.drift_settings)
        except Exception:  # monitoring must never take learning down with it
            log.exception("observer: no drift monitoring for v%d", self.version)
            self.drift = "failed"
            self.outcomes["failed"] += 1
            return None
        self.drift = "on"
        return monitor

    def _run(self) -> None:
        if not self._closing.is_set():  # a service stopping right away need not wait for the import
            self._monitor = self._make_monitor(self._reference)
        while (item := self._queue.get()) is not None:
            if self._closing.is_set():
                self._skip_queued(item)
                return
            try:
                if isinstance(item, _NewReference):
                    # Replaced even when the new one cannot be made (None): the old reference no longer fits.
                    self.version = item.version
                    self._monitor = self._make_monitor(item.reference)
                    self._window_times = (float("inf"), -float("inf"))
                    continue
                if self._monitor is not None:
                    self._drift(item.examples)
            except Exception:  # monitoring must never take learning down with it
                log.exception("observer: a window was not fully observed")
                self.outcomes["failed"] += 1

    def _skip_queued(self, item: _Window | _NewReference | None) -> None:
        skipped = 0
        while item is not None:
            skipped += isinstance(item, _Window)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        log.info("observer closing: %d queued windows not observed for drift", skipped)

    # -- drift ---------------------------------------------------------------------------------

    def _drift(self, examples: Sequence[Joined]) -> None:
        monitor = self._monitor
        assert monitor is not None
        usable = [j for j in examples if j.prediction.embedding is not None]
        if not usable:
            return
        monitor.add(
            texts=[j.prediction.text for j in usable],
            embeddings=np.stack([j.prediction.embedding for j in usable]),  # type: ignore[misc]
            predicted=[j.prediction.intent for j in usable],
            confidence=np.array([j.prediction.confidence for j in usable]),
            users=[j.prediction.user for j in usable],
            correct=np.array([j.prediction.intent == j.feedback.label for j in usable]))
        first, last = self._window_times
        times = [j.feedback.ts for j in usable]
        self._window_times = (min(first, *times), max(last, *times))
        now = time.time()
        if not monitor.due(now):
            return
        window_times, self._window_times = self._window_times, (float("inf"), -float("inf"))
        result = monitor.run(now)
        self.last = result
        self.outcomes["drift_windows"] += 1
        self._log_to_mlflow(result)
        if result.alert:
            self.outcomes["alerts"] += 1
            self._alert(result, now, window_times)

    def _log_to_mlflow(self, result: DriftResult) -> None:
        import mlflow

        from services.common.registry import Registry

        try:
            registry = Registry(self.settings)
            experiment = registry.client.get_experiment_by_name(self.settings.drift_experiment)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else registry.client.create_experiment(self.settings.drift_experiment))
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-window-{result.window}"):
                mlflow.log_metrics({"drift_share": result.drift_share, "accuracy": result.accuracy,
                                    "baseline_accuracy": result.baseline_accuracy, "n_events": result.n_events,
                                    **{f"score.{k}": v for k, v in result.scores.items()}})
                mlflow.set_tags({"model": self.settings.model_name, "base_version": self.version,
                                 "alert": result.alert, "drifted_columns": ",".join(result.drifted_columns),
                                 "evidently_snapshot": result.snapshot_id})
                mlflow.log_artifact(str(result.report_path), "drift")
            self.outcomes["logged"] += 1
        except Exception as exc:  # the registry being down costs the log, not the monitoring
            log.warning("drift window %d not logged to MLflow: %s", result.window, exc)
            self.outcomes["log_failed"] += 1

    def _alert(self, result: DriftResult, now: float, window_times: tuple[float, float]) -> None:
        """Emit the drift event; its payload names the window by the feedback times of its events, and the
        on-drift retrain reads the collected examples up to the window's end (`window_to`)."""
        cooldown = self.settings.drift_alert_cooldown_s
        if now - self._last_alert < cooldown:
            log.info("drift alert within %.0f s of the last one: no second retrain", cooldown)
            self.outcomes["alerts_suppressed"] += 1
            return
        if not os.environ.get("PREFECT_API_URL"):
            log.warning("drift alert, but PREFECT_API_URL is not set: no retrain triggered")
            self.outcomes["alerts_not_emitted"] += 1
            return
        from flows.deployments import emit_drift_detected

        emit_drift_detected(self.settings.model_name, {
            "window": result.window, "drift_share": result.drift_share, "accuracy": result.accuracy,
            "baseline_accuracy": result.baseline_accuracy, "drifted_columns": list(result.drifted_columns),
            "base_version": self.version, "snapshot_id": result.snapshot_id,
            "window_from": window_times[0], "window_to": window_times[1]})
        self._last_alert = now
        self.outcomes["events_emitted"] += 1
        log.warning("emitted loopline.drift.detected for drift window %d", result.window)


def load_reference(bundle: Path) -> Reference | None:
    from models.bundle import DRIFT_REFERENCE_DIR

    folder = bundle / DRIFT_REFERENCE_DIR
    if not folder.is_dir():
        log.warning("%s has no drift reference: drift monitoring is off for this version", bundle.name)
        return None
    return Reference.load(folder)
