"""The feedback service's own port: Prometheus metrics (read from its state at scrape time), health,
and `POST /promote`, which `loopline promote` calls with the admin token (without one configured,
promote is off). It listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.admin import bearer_token_matches

if TYPE_CHECKING:
    from services.feedback.service import FeedbackService


class FeedbackCollector(Collector):
    def __init__(self, service: FeedbackService) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.service
        windows = CounterMetricFamily("loopline_feedback_windows", "Update windows by decision", labels=["decision"])
        for decision, n in s.stats.windows.items():
            windows.add_metric([decision], n)
        letters = CounterMetricFamily("loopline_feedback_dead_letters", "Events sent to feedback-dlq by reason",
                                      labels=["reason"])
        for reason, n in s.stats.dead_letters.items():
            letters.add_metric([reason], n)
        unknown = CounterMetricFamily("loopline_feedback_unknown_labels", "unknown_label dead letters by the label "
                                      "asked for: the most frequent labels, the rest as '(other)'", labels=["label"])
        for label, n in s.stats.top_unknown(s.settings.unknown_labels_shown):
            unknown.add_metric([label], n)
        records = CounterMetricFamily("loopline_feedback_records", "Records consumed by topic", labels=["topic"])
        for topic, n in s.stats.records.items():
            records.add_metric([topic], n)
        progress = s.learner.progress
        yield windows
        yield letters
        yield unknown
        yield records
        yield CounterMetricFamily("loopline_feedback_partition_pauses", "Feedback partitions paused while far "
                                  "ahead of their predictions", value=s.pacer.pauses)
        yield CounterMetricFamily("loopline_feedback_examples", "Joined examples scored (progressive)",
                                  value=progress.examples)
        yield GaugeMetricFamily("loopline_feedback_progressive_accuracy", "Accuracy before learning, since start",
                                value=progress.accuracy if progress.examples else 0.0)
        yield GaugeMetricFamily("loopline_feedback_sequence", "Deltas published on the base version",
                                value=s.learner.sequence)
        yield GaugeMetricFamily("loopline_feedback_base_version", "Registry version under the deltas",
                                value=s.learner.base_version)
        yield GaugeMetricFamily("loopline_feedback_checkpoint", "Number of the last checkpoint written",
                                value=s.checkpoint_number)
        # Non-zero means the disk damaged state: the service started from an older checkpoint and replayed.
        yield CounterMetricFamily("loopline_feedback_checkpoints_skipped", "Damaged checkpoints skipped at start "
                                  "(the newest one that verified was used)", value=len(s.problems))
        pending = GaugeMetricFamily("loopline_feedback_pending", "Join store contents", labels=["kind"])
        pending.add_metric(["predictions"], len(s.store.predictions))
        pending.add_metric(["feedback_waiting"], len(s.store.waiting))
        pending.add_metric(["joined_unreleased"], len(s.store.ready) + s.learning_now)  # joined, not yet learned
        yield pending
        registrations = CounterMetricFamily("loopline_feedback_registrations",
                                            "Online head registry versions and base changes", labels=["outcome"])
        for outcome, n in s.stats.registrations.items():
            registrations.add_metric([outcome], n)
        yield registrations
        gaps = CounterMetricFamily("loopline_feedback_offset_jumps", "Polls that jumped past a partition's next "
                                   "offset: fetched again, or accepted when the jump came again",
                                   labels=["outcome"])
        gaps.add_metric(["refetched"], s.gaps.refetched)
        gaps.add_metric(["accepted"], s.gaps.accepted)
        yield gaps
        collector = s.collector
        yield CounterMetricFamily("loopline_feedback_examples_kept", "Rows committed to the examples table by this "
                                  "process", value=collector.rows_committed)
        yield GaugeMetricFamily("loopline_feedback_examples_unsaved", "Judged examples not in the examples table "
                                "yet (committed after the next checkpoint)", value=collector.waiting)
        yield CounterMetricFamily("loopline_feedback_examples_commit_failures", "Examples-table commits that failed "
                                  "(retried after the next checkpoint)", value=collector.failures)
        registering = s.registering
        yield GaugeMetricFamily("loopline_feedback_registrations_pending", "Registrations handed to the registry "
                                "worker and not done yet (one in hand, one owed)",
                                value=(registering is not None) + (s.owed is not None))
        yield GaugeMetricFamily("loopline_feedback_registration_pending_seconds", "How long the registration in "
                                "hand has waited for the registry",
                                value=time.monotonic() - registering.since if registering is not None else 0.0)
        if s.observer is not None:
            observed = CounterMetricFamily("loopline_feedback_observer", "Drift windows, reports logged, alerts",
                                           labels=["outcome"])
            for outcome, n in s.observer.outcomes.items():
                observed.add_metric([outcome], n)
            yield observed
            if (last := s.observer.last) is not None:
                yield GaugeMetricFamily("loopline_feedback_drift_share", "Drift share of the last drift window",
                                        value=last.drift_share)
                yield GaugeMetricFamily("loopline_feedback_drift_accuracy", "Served accuracy in the last drift "
                                        "window", value=last.accuracy)


def serve_metrics(service: FeedbackService, port: int, token: str | None = None,
                  host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """GET /metrics and /healthz, POST /promote on host:port, in a daemon thread."""
    registry = CollectorRegistry()
    registry.register(FeedbackCollector(service))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                learner = service.learner
                self._json(200, {"status": "ok", "version": f"{learner.base_version}+ftrl.{learner.sequence}",
                                 "checkpoint": service.checkpoint_number,
                                 "checkpoints_skipped": service.problems,
                                 "drift": service.observer.drift if service.observer is not None else "starting"})
            else:
                self._json(404, {"detail": "not found: GET /metrics, GET /healthz, POST /promote"})

        def do_POST(self) -> None:
            if self.path != "/promote":
                self._json(404, {"detail": "not found: POST /promote"})
                return
            if token is None:  # as serving's admin routes: no configured secret, no admin action
                self._json(403, {"detail": "promote is off: LOOPLINE_ADMIN_TOKEN is not set for the feedback "
                                           "service"})
                return
            if not bearer_token_matches(self.headers.get("Authorization"), token):
                self._json(401, {"detail": "missing or wrong bearer token "
                                           "(Authorization: Bearer <LOOPLINE_ADMIN_TOKEN>)"})
                return
            try:
                result = service.request_promotion()
            except TimeoutError:
                self._json(504, {"detail": "the service did not reach a window boundary in time"})
                return
            self._json(200 if result["status"] in ("promoted", "registered", "unchanged") else 503, result)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="feedback-http", daemon=True).start()
    return server
