"""The loop on real processes: `loopline serve` and `loopline feedback` with the broker and MLflow on SQLite.

Predictions are requested over HTTP, feedback is produced to Kafka as an application
would; the feedback service joins, learns, publishes, and serving answers with the
new version. Then bad events land in the DLQ. A feedback service killed with SIGKILL
at random points is tests/reliability/test_faults_feedback.py's (bench/reliability_feedback.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer

from infra.broker import FEEDBACK, FEEDBACK_DLQ
from models.traffic import TrafficConfig, generate
from services.common.events import FeedbackEvent
from tests.integration.helpers import read_events, wait_until
from tests.integration.stack import Serving, feedback_service

pytestmark = pytest.mark.slow


def traffic(serving: Serving, n: int, seed: int, producer: KafkaProducer, feedback_share: float = 0.8
            ) -> list[str]:
    """Predict over HTTP, then send feedback (the intent meant) for most predictions; returns feedback ids."""
    events = generate(TrafficConfig(n_events=n, n_users=40, seed=seed)).events
    rng = random.Random(seed)
    sent = []
    with httpx.Client(base_url=serving.url, timeout=30) as http:
        for row in events.itertuples():
            response = http.post("/v1/predict", json={"text": row.text, "user_id": row.user_id})
            assert response.status_code == 200, response.text
            if rng.random() < feedback_share:
                pid = response.json()["prediction_id"]
                event = FeedbackEvent(prediction_id=pid, label=row.true_label, source="correction")
                producer.send(FEEDBACK, key=pid.encode(), value=event.model_dump_json().encode())
                sent.append(event.event_id)
    producer.flush(10)
    return sent


def test_feedback_is_learned_and_serving_answers_with_the_update(serving: Serving, tmp_path: Path) -> None:
    service = feedback_service(serving, tmp_path)
    service.start()
    try:
        sent = traffic(serving, 400, seed=31, producer=serving.producer)
        assert wait_until(lambda: serving.current().startswith("1+ftrl."), 60), service.process.log_tail()
        version = serving.current()
        assert serving.predict("turn on the wifi")["model_version"] == version
        assert wait_until(lambda: service.judged() == len(sent), 30), (service.judged(), len(sent))
        assert service.metric("loopline_feedback_windows_total", 'decision="published"') >= 1
        assert service.metric("loopline_feedback_progressive_accuracy") > 0.5
        assert serving.metric("loopline_model_updates", outcome="gap") == 0

        bad = {"invalid-json": b'{"prediction_id": "x",', "unknown-label": FeedbackEvent(
            prediction_id="p", label="order_pizza").model_dump_json().encode()}
        for key, value in bad.items():
            serving.producer.send(FEEDBACK, key=key.encode(), value=value)
        serving.producer.flush(10)
        letters = read_events(serving.settings.kafka_bootstrap_servers or "", set(bad), topic=FEEDBACK_DLQ)
        assert {k: v["reason"] for k, (_, v) in letters.items()} == {"invalid-json": "invalid_json",
                                                                     "unknown-label": "unknown_label"}
    finally:
        service.process.stop()
