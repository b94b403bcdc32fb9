"""The whole loop on real processes: registry versions of the online head, drift, retrain trigger.

`loopline serve` and `loopline feedback` run against the session broker, MLflow
server and Prefect server, with serving's Feast store. Traffic is predicted over
HTTP and labelled by feedback on Kafka, as applications would do it.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from infra.broker import FEEDBACK
from models.bundle import ENCODER_FILE, HEAD_FILE, verify_bundle
from models.ftrl import FTRLProximal
from models.predict import Predictor
from models.traffic import TrafficConfig, generate
from services.common.events import FeedbackEvent, ModelUpdate
from services.common.registry import _bundle_path
from services.feedback.checkpoint import CheckpointStore
from services.feedback.service import HEAD
from services.feedback.versions import HEAD_TAG
from tests.conftest import TinyModel, head_copy
from tests.integration.helpers import wait_until
from tests.integration.stack import Feedback, Serving, bin_command, feedback_service

pytestmark = pytest.mark.slow


@dataclass
class Outcome:
    correct: list[bool]  # served intent == the intent meant, in order

    def accuracy(self, rows: slice) -> float:
        return float(np.mean(self.correct[rows]))


def converse(serving: Serving, events: pd.DataFrame, seed: int) -> Outcome:
    """Predict every event over HTTP and send the user's feedback (the label they report) for it."""
    rng, correct = random.Random(seed), []
    with httpx.Client(base_url=serving.url, timeout=30) as http:
        for row in events.itertuples():
            answer = http.post("/v1/predict", json={"text": row.text, "user_id": row.user_id}).json()
            correct.append(answer["intent"] == row.true_label)
            if rng.random() < 0.9:
                event = FeedbackEvent(prediction_id=answer["prediction_id"], label=row.label, source="app")
                serving.producer.send(FEEDBACK, key=event.prediction_id.encode(),
                                      value=event.model_dump_json().encode())
    serving.producer.flush(10)
    return Outcome(correct)


def promote(service: Feedback) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOOPLINE_METRICS_PORT": service.process.url.rsplit(":", 1)[1],
           "LOOPLINE_ADMIN_TOKEN": service.token}
    return subprocess.run(bin_command("promote"), env=env, capture_output=True, text=True, timeout=360)


def test_promote_registers_the_online_head_as_a_version_that_shares_the_encoder(
        serving: Serving, tmp_path: Path) -> None:
    service = feedback_service(serving, tmp_path / "state")
    service.start()
    try:
        events = generate(TrafficConfig(n_events=300, n_users=40, seed=41)).events
        outcome = converse(serving, events, seed=41)
        assert wait_until(lambda: serving.current().startswith("1+ftrl."), 60), service.process.log_tail()
        assert wait_until(lambda: service.metric("loopline_feedback_examples_total") > 200, 30)

        done = promote(service)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "promoted v2" in done.stdout, done.stdout
        version = serving.registry.get(2)
        assert serving.registry.champion().version == 2  # type: ignore[union-attr]
        tags = version.tags
        assert tags["source"] == "online" and tags["parent_version"] == "1"
        assert tags[HEAD_TAG].startswith("1+ftrl.") and tags["deploy.decision"].startswith("promoted")
        assert "predictions:" in tags["online.offsets"] and float(tags["metric.progressive_accuracy"]) > 0.5

        with tempfile.TemporaryDirectory() as tmp:  # what the registry stores: the head, not the encoder
            stored = _bundle_path(Path(mlflow.artifacts.download_artifacts(
                f"models:/{serving.settings.model_name}/2", dst_path=tmp)))
            assert stored is not None and (stored / HEAD_FILE).exists() and not (stored / ENCODER_FILE).exists()
        downloaded = serving.registry.download(2, tmp_path / "v2")  # ...and what a reader gets
        complete = verify_bundle(downloaded)
        assert complete.linked_version == 1 and complete.files[ENCODER_FILE]

        # serving loads v2 (and then any delta the service published on it since)
        assert wait_until(lambda: serving.current().split("+")[0] == "2", 60), serving.process.log_tail()
        model = mlflow.pyfunc.load_model(f"models:/{serving.settings.model_name}/2")  # completes the links itself
        texts = list(events["text"][:20])
        expected = Predictor(downloaded).predict_proba(texts).argmax(axis=1)
        assert list(model.predict(pd.DataFrame({"text": texts}))["intent"]) == [complete.classes[i] for i in expected]

        converse(serving, generate(TrafficConfig(n_events=200, n_users=40, seed=42)).events, seed=42)
        # The service first works through every earlier test's traffic on the session broker: allow for a busy suite.
        assert wait_until(lambda: serving.current().startswith("2+ftrl."), 120), "deltas continue on v2"
        assert outcome.correct
    finally:
        service.process.stop()
    again = feedback_service(serving, tmp_path / "state")  # restarted: resumes on v2 from its checkpoint
    again.start()
    try:
        assert again.metric("loopline_feedback_base_version") == 2
    finally:
        again.process.stop()


def test_a_service_that_lost_its_state_brings_serving_to_its_own_head(serving: Serving, tmp_path: Path) -> None:
    """The state folder that made v2's deltas is gone: the new service's deltas differ from the published ones
    with the same numbers, which serving would skip as applied; it publishes one sync delta after them."""
    champion = serving.registry.champion()
    assert champion is not None and serving.current().startswith(f"{champion.version}+ftrl."), serving.current()
    before = int(serving.current().split(".")[-1])
    predictor = Predictor(serving.registry.download(champion.version, tmp_path / "base"))

    # Other windows (2 s, not 1 s) make its history differ for sure: replaying the same feedback into the same
    # windows would make the published deltas again, and serving would need no sync.
    service = feedback_service(serving, tmp_path / "fresh", update_interval_s="2")
    service.start()
    try:
        converse(serving, generate(TrafficConfig(n_events=200, n_users=40, seed=44)).events, seed=44)
        assert wait_until(lambda: int(serving.current().split(".")[-1]) > before, 60), service.process.log_tail()
        assert service.metric("loopline_feedback_registrations_total", 'outcome="synced"') == 1
        assert serving.metric("loopline_model_updates", outcome="gap") == 0

        def agree() -> bool:  # once idle, serving answers exactly with the service's head
            checkpoint = CheckpointStore(tmp_path / "fresh" / "feedback" / "checkpoints", 3).restore().checkpoint
            assert checkpoint is not None
            predictor.head = FTRLProximal.from_bytes(checkpoint.files[HEAD])
            texts = ["turn on the wifi", "play some jazz", "what's the weather tomorrow", "call mum"]
            served = [serving.predict(t)["probabilities"][0]["probability"] for t in texts]
            return bool(np.allclose(served, predictor.predict_proba(texts).max(axis=1), atol=1e-5))

        assert wait_until(agree, 60)
    finally:
        service.process.stop()


def test_new_phrasing_is_learned_flagged_as_drift_and_the_retrain_event_reaches_prefect(
        serving: Serving, trained: TinyModel, prefect_server: str, tmp_path: Path) -> None:
    # That the event ends in a completed retrain run, on a stack with its runner, is
    # tests/integration/test_stack_cli.py's drift test; here no runner is started.
    # A retrained champion, as the train flow would deploy it: the service starts learning on it.
    base = serving.register(head_copy(trained[1]), trained, "retrained")
    serving.registry.promote(base, "retrain")
    serving.announce(ModelUpdate(model=serving.settings.model_name, kind="full", version=str(base),
                                 base_version=base))
    assert wait_until(lambda: serving.current() == str(base), 60)
    # Every 400 events a window, however fast they come: the first ones after the onset are the drift.
    service = feedback_service(serving, tmp_path, DRIFT_WINDOW_EVENTS="400", DRIFT_MIN_EVENTS="200",
                               DRIFT_WINDOW_S="600", DRIFT_MIN_INTERVAL_S="0")
    assert service.process.env is not None
    service.process.env["PREFECT_API_URL"] = prefect_server
    service.start()
    try:
        events = generate(TrafficConfig(n_events=1400, n_users=40, seed=43, scenario="new_phrasing", onset=0.0,
                                        strength=0.9)).events
        outcome = converse(serving, events, seed=43)
        first, last = outcome.accuracy(slice(0, 200)), outcome.accuracy(slice(-300, None))
        print(f"served accuracy on new phrasing: first 200 events {first:.3f}, last 300 {last:.3f}")
        assert last >= first + 0.1 and last >= RECOVERED, (first, last)

        assert wait_until(lambda: service.metric("loopline_feedback_observer_total", 'outcome="events_emitted"') >= 1,
                          120), service.process.log_tail()

        def emitted() -> list[dict]:  # the server stores events a moment after it receives them
            page = httpx.post(f"{prefect_server}/events/filter", timeout=10, json={
                "filter": {"event": {"name": ["loopline.drift.detected"]}}, "limit": 50}).json()
            return [e for e in page["events"]
                    if e["resource"]["prefect.resource.id"] == f"loopline.{serving.settings.model_name}"]

        assert wait_until(lambda: bool(emitted()), 60), service.process.log_tail()
        payload = emitted()[0]["payload"]
        assert payload["drift_share"] >= 0.3 and payload["accuracy"] < payload["baseline_accuracy"] - 0.05
        assert payload["base_version"] == base
        # The window is named by its events' feedback times: the on-drift retrain reads up to its end.
        assert time.time() - 600 < payload["window_from"] <= payload["window_to"] <= time.time() + 5

        runs = mlflow.search_runs(experiment_names=["loopline-drift"], output_format="pandas")
        assert (runs["tags.alert"] == "True").any() and (runs["metrics.drift_share"] >= 0.3).any()
        reports = mlflow.artifacts.list_artifacts(run_id=runs["run_id"].iloc[0], artifact_path="drift")
        assert reports and reports[0].path.endswith(".html")
        assert list((tmp_path / "evidently").rglob("*.html")), "the Evidently workspace has the reports"
    finally:
        service.process.stop()


# Served accuracy on the last 300 of 1,400 new-phrasing events (tiny encoder). Measured: 0.415 on the first 200
# after the onset, 0.963 on the last 300.
RECOVERED = 0.85
