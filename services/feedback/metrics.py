"""Prometheus view of the feedback service, read from its state at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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
        records = CounterMetricFamily("loopline_feedback_records", "Records consumed by topic", labels=["topic"])
        for topic, n in s.stats.records.items():
            records.add_metric([topic], n)
        progress = s.learner.progress
        yield windows
        yield letters
        yield records
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
        pending = GaugeMetricFamily("loopline_feedback_pending", "Join store contents", labels=["kind"])
        pending.add_metric(["predictions"], len(s.store.predictions))
        pending.add_metric(["feedback_waiting"], len(s.store.waiting))
        pending.add_metric(["joined_unreleased"], len(s.store.ready))
        yield pending


def serve_metrics(service: FeedbackService, port: int, host: str = "127.0.0.1") -> None:
    """GET /metrics on host:port in a daemon thread (also what health checks ask)."""
    registry = CollectorRegistry()
    registry.register(FeedbackCollector(service))
    start_http_server(port, addr=host, registry=registry)
