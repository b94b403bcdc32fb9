"""A team's own intents, which the generator has never heard of, through the whole loop on real processes.

`loopline train --data` on a dataset made up here (a wizard's household assistant), the MLflow registry,
`loopline serve`, `loopline feedback` over the session broker, and a drift-triggered retrain run by
`loopline flows serve` on the session Prefect server, which must train on that dataset again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from kafka import KafkaProducer

from infra.broker import FEEDBACK
from infra.process import ManagedProcess, free_port
from services.common.events import FeedbackEvent
from services.common.registry import Registry
from services.common.settings import CommonSettings
from tests.integration.helpers import wait_until
from tests.integration.made_up import WORDINGS, made_up
from tests.integration.stack import Serving, bin_command, feedback_service

pytestmark = pytest.mark.slow

@dataclass
class Loop:
    env: dict[str, str]
    settings: CommonSettings
    registry: Registry
    data: Path
    state: Path


@pytest.fixture(scope="module")
def loop(mlflow_server: str, broker: str, prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Loop:
    state = tmp_path_factory.mktemp("any-labels")
    data = state / "wizard.csv"
    made_up(40, seed=1).to_csv(data, index=False)
    name = f"wizard-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LOOPLINE_STATE_DIR": str(state), "LOOPLINE_MLFLOW_TRACKING_URI": mlflow_server,
           "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS": broker, "LOOPLINE_MODEL_NAME": name, "PREFECT_API_URL": prefect_server,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("LOOPLINE_BUNDLE", None)
    settings = CommonSettings(state_dir=state, mlflow_tracking_uri=mlflow_server, kafka_bootstrap_servers=broker,
                              model_name=name)
    return Loop(env, settings, Registry(settings), data, state)


@pytest.fixture(scope="module")
def trained(loop: Loop) -> str:
    """`loopline train --data` on the made-up intents; its output."""
    done = subprocess.run(bin_command("train", "--data", str(loop.data), "--encoder", "tiny", "--epochs", "5"),
                          env=loop.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def serving(loop: Loop, trained: str) -> Iterator[Serving]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("serving", bin_command("serve"), loop.state, url=url,
                             env={**loop.env, "LOOPLINE_PORT": str(port), "LOOPLINE_LOG_SEND_TIMEOUT_S": "2"})
    process.start_healthy(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, timeout=120)
    producer = KafkaProducer(bootstrap_servers=loop.settings.kafka_bootstrap_servers, acks="all")
    try:
        yield Serving(url, process, loop.settings, loop.registry, pd.DataFrame(), loop.state, producer)
    finally:
        process.stop()
        producer.close(5)


def test_train_registers_the_classes_of_the_data(loop: Loop, trained: str) -> None:
    champion = loop.registry.champion()
    assert champion is not None and champion.version == 1
    tags = champion.tags
    assert json.loads(tags["classes"]) == sorted(WORDINGS) and tags["n_classes"] == "6"
    assert tags["data_uri"] == str(loop.data) and "stratified" in " ".join(trained.split())
    assert 0.0 < float(tags["fallback.coverage"]) <= 1.0 and float(tags["fallback.threshold"]) > 0.0
    assert int(tags["n_train"]) == 6 * 32  # a stratified 20% of every class evaluates


def test_serving_answers_with_those_classes_and_learns_them_from_feedback(loop: Loop, serving: Serving,
                                                                          tmp_path: Path) -> None:
    current = httpx.get(f"{serving.url}/v1/models/current", timeout=10).json()
    assert current["classes"] == sorted(WORDINGS) and current["fallback"]["threshold"] > 0
    # The session broker holds other tests' feedback too, whose generated intents are unknown here: show them all.
    service = feedback_service(serving, tmp_path / "feedback", UNKNOWN_LABELS_SHOWN="1000",
                               EXAMPLES_URI=loop.settings.examples_location)  # the table retrains read
    service.start()
    try:
        traffic = made_up(30, seed=2).sample(frac=1.0, random_state=2)  # shuffled, as a replay of such data is
        answers = []
        with httpx.Client(base_url=serving.url, timeout=30) as http:
            for row in traffic.itertuples():
                answer = http.post("/v1/predict", json={"text": row.text}).json()
                assert answer["intent"] in WORDINGS and isinstance(answer["fallback"], bool)
                answers.append(answer)
                send(serving, answer["prediction_id"], row.label)
            asked_for = [http.post("/v1/predict", json={"text": f"juggle the torches {i}"}).json()
                         for i in range(3)]
            for answer in asked_for:  # a label the model lacks: joined, then not learned online, counted per label
                send(serving, answer["prediction_id"], "juggle_the_torches")
            # Windows are released as event time moves on: later traffic releases the one those three are in.
            for row in made_up(2, seed=3).itertuples():
                time.sleep(0.5)
                send(serving, http.post("/v1/predict", json={"text": row.text}).json()["prediction_id"], row.label)
        serving.producer.flush(10)
        assert wait_until(lambda: serving.current().startswith("1+ftrl."), 90), service.process.log_tail()
        assert wait_until(lambda: service.metric("loopline_feedback_unknown_labels_total",
                                                 'label="juggle_the_torches"') == 3, 30), service.process.log_tail()
        assert service.metric("loopline_feedback_dead_letters_total", 'reason="unknown_label"') == 3
        assert wait_until(lambda: service.metric("loopline_feedback_examples_total") >= len(traffic) * 0.9, 30)
    finally:
        service.process.stop()


def send(serving: Serving, prediction_id: str, label: str) -> None:
    event = FeedbackEvent(prediction_id=prediction_id, label=label, source="app")
    serving.producer.send(FEEDBACK, key=prediction_id.encode(), value=event.model_dump_json().encode())


def test_a_drift_triggered_retrain_trains_on_the_champions_data_and_keeps_its_classes(loop: Loop,
                                                                                      trained: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import emit_drift_detected

    runner = ManagedProcess("flows", bin_command("flows", "serve", "--encoder", "tiny"), loop.state, env=loop.env)
    runner.start()
    try:
        async def completed_runs() -> list[str]:
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            async with get_client() as client:
                deployment = await client.read_deployment_by_name("train-quantize-compile-deploy/on-drift")
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                return [str(r.id) for r in runs if r.state_name == "Completed"]

        def deployed() -> bool:
            try:
                return httpx.get(f"{loop.env['PREFECT_API_URL']}/deployments/name/train-quantize-compile-deploy/"
                                 "on-drift", timeout=5).status_code == 200 and runner.running()
            except httpx.HTTPError:
                return False

        with temporary_settings({PREFECT_API_URL: loop.env["PREFECT_API_URL"]}):
            assert wait_until(deployed, 120, every=1), runner.log_tail()
            time.sleep(2)  # the runner polls for scheduled runs every few seconds once it serves
            before = len(asyncio.run(completed_runs()))
            emit_drift_detected("feedback", {"drift_share": 0.7, "accuracy": 0.6, "reason": "test"})
            assert wait_until(lambda: len(asyncio.run(completed_runs())) > before, 420, every=2), \
                runner.log_tail(80)
        retrained = max((v for v in loop.registry.versions() if v.tags.get("source") == "train"),
                        key=lambda v: v.version)
        assert retrained.version > 1, "the retrain registered a new version"
        assert retrained.tags["data_uri"] == str(loop.data), retrained.tags
        assert json.loads(retrained.tags["classes"]) == sorted(WORDINGS)
        assert retrained.tags["vs_champion.scored_on"].startswith("on the same")
        assert int(retrained.tags["collected_rows"]) > 100, "the feedback the service kept trained it too"
    finally:
        runner.stop()
