"""Serving as a real process: `loopline serve` (uvicorn) with the broker, MLflow on SQLite and Feast SQLite.

One model name per module. Before serving starts, v1 (a tiny bundle) is champion in
the session MLflow server and the state folder has a materialized Feast store; the
tests then run in order against the one serving process: a logged prediction, hot
swaps under load, the broker stalled, a corrupt version and the admin token.
"""

from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import pytest

from infra.process import ManagedProcess
from models.ftrl import FTRLProximal
from models.predict import Predictor
from services.common.events import LoggedFeatures, ModelUpdate
from services.common.features import online_user_features, open_store, user_fields
from tests.conftest import TinyModel, head_copy
from tests.integration.helpers import read_events, wait_until
from tests.integration.stack import TOKEN, Serving

pytestmark = pytest.mark.slow


def _delta(model: str, learner: FTRLProximal, base: int, sequence: int) -> ModelUpdate:
    return ModelUpdate(model=model, kind="delta", version=f"{base}+ftrl.{sequence}", base_version=base,
                       sequence=sequence, delta=base64.b64encode(learner.delta().to_bytes()).decode())


def _order(version: str) -> tuple[int, int]:
    base, _, sequence = version.partition("+ftrl.")
    return int(base), int(sequence or 0)


def test_champion_answers_and_the_prediction_is_logged_with_its_features(serving: Serving) -> None:
    current = httpx.get(f"{serving.url}/v1/models/current").json()
    assert current["version"] == "1" and current["base_version"] == 1 and current["online_sequence"] == 0
    ready = httpx.get(f"{serving.url}/readyz").json()
    assert ready == {"ready": True, "model_loaded": True, "updates_replayed": True, "broker": "ok",
                     "feature_store": "ok"}

    user = str(serving.users["user_id"].iloc[0])
    text = "turn the wifi back on please"
    body = serving.predict(text, user)
    assert body["model_version"] == "1" and len(body["probabilities"]) == 3
    assert serving.predict("hello there", "a-user-nobody-knows")["model_version"] == "1"

    _, event = read_events(serving.settings.kafka_bootstrap_servers or "", {body["prediction_id"]})[
        body["prediction_id"]]
    assert event["user_id"] == user and event["model_version"] == "1" and event["intent"] == body["intent"]
    # The logged features are exactly what the bundle computes for this text and this user's
    # online features: the same featurizer code the head was trained with.
    store = open_store(serving.settings.state_dir / "feast", apply=False)
    fields = user_fields(online_user_features(store, [user])[0])
    assert fields, "the user has online features"
    predictor = Predictor(serving.work / "v1")
    expected = predictor.features([text], [fields])
    csr = expected.sparse.tocsr()
    indices, values, embedding = LoggedFeatures.model_validate(event["features"]).arrays()
    assert indices.tolist() == csr.indices.tolist()
    np.testing.assert_allclose(values, csr.data, rtol=1e-6)
    np.testing.assert_allclose(embedding, expected.dense[0], atol=1e-5)
    without_user = predictor.features([text]).sparse.tocsr().indices
    assert set(without_user) < set(csr.indices), "user features took part"
    assert event["probabilities"][body["intent"]] == pytest.approx(body["probabilities"][0]["probability"])


def test_hot_swap_under_load_fails_nothing_and_only_moves_forward(serving: Serving, trained: TinyModel) -> None:
    texts = trained[2]
    name = serving.settings.model_name
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(6)]
    failures: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=serving.url, timeout=30) as http:
            k = i
            while not stop.is_set():
                k += 7
                try:
                    response = http.post("/v1/predict", json={"text": texts[k % len(texts)]})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    seen[i].append(response.json()["model_version"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(seen))]
    for thread in threads:
        thread.start()
    try:
        learner = head_copy(trained[1])
        for sequence in range(1, 16):  # deltas on v1
            learner.mark()
            chunk = texts[sequence * 20:(sequence + 1) * 20]
            learner.learn_many(Predictor(serving.work / "v1").features(chunk), np.full(len(chunk), sequence))
            serving.announce(_delta(name, learner, base=1, sequence=sequence))
        assert wait_until(lambda: serving.current() == "1+ftrl.15", 30), serving.current()

        version = serving.register(learner, trained, "v2")  # a full version with the learned head
        serving.registry.promote(version, "online version")
        serving.announce(ModelUpdate(model=name, kind="full", version=str(version), base_version=version,
                                     uri=f"models:/{name}/{version}"))
        for sequence in range(1, 11):  # deltas on v2, published while it may still be loading
            learner.mark()
            chunk = texts[300 + sequence * 20:300 + (sequence + 1) * 20]
            learner.learn_many(Predictor(serving.work / "v2").features(chunk), np.zeros(len(chunk), np.int64))
            serving.announce(_delta(name, learner, base=version, sequence=sequence))
        assert wait_until(lambda: serving.current() == f"{version}+ftrl.10", 60), serving.current()
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert failures == []
    answered = [v for client_seen in seen for v in client_seen]
    assert len(answered) > 100, "the clients kept requesting through the swaps"
    for client_seen in seen:
        orders = [_order(v) for v in client_seen]
        assert orders == sorted(orders), "a client saw an older version after a newer one"
    assert {"1", "1+ftrl.15", f"{version}+ftrl.10"} <= set(answered) | {"1"}
    assert any(v.startswith("1+ftrl.") for v in answered) and any(v.startswith(f"{version}") for v in answered)
    assert serving.metric("loopline_model_updates", outcome="applied") == 25
    assert serving.metric("loopline_model_updates", outcome="gap") == 0

    # Every delta landed: serving answers exactly like the learner that made them.
    text = texts[5]
    body = serving.predict(text)
    proba = learner.predict_proba_many(Predictor(serving.work / "v2").features([text]))[0]
    for item in body["probabilities"]:
        assert item["probability"] == pytest.approx(proba[learner.classes.index(item["intent"])], abs=1e-4)


def test_with_the_broker_stopped_predictions_are_answered_and_drops_counted(
        serving: Serving, broker_process: ManagedProcess) -> None:
    dropped_before = serving.metric("loopline_prediction_log_dropped", reason="send_failed")
    broker_process.pause()
    try:
        answers = [serving.predict(f"play some music {i}") for i in range(20)]
        assert len({a["prediction_id"] for a in answers}) == 20
        assert wait_until(lambda: httpx.get(f"{serving.url}/readyz").json()["broker"] == "unreachable", 10)
        assert httpx.get(f"{serving.url}/readyz").status_code == 200, "a stalled broker does not stop serving"
        assert wait_until(lambda: serving.metric("loopline_prediction_log_dropped", reason="send_failed")
                          >= dropped_before + 20, 20)
    finally:
        broker_process.resume()
    assert wait_until(lambda: httpx.get(f"{serving.url}/readyz").json()["broker"] == "ok", 20)
    after = [serving.predict(f"set an alarm for {i}") for i in range(5)]
    keys = {a["prediction_id"] for a in after}
    assert read_events(serving.settings.kafka_bootstrap_servers or "", keys).keys() == keys


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(
        serving: Serving, trained: TinyModel, mlflow_process: ManagedProcess) -> None:
    before = serving.current()
    failed_before = serving.metric("loopline_model_failed_loads")
    version = serving.register(trained[1], trained, "v3")
    source = serving.registry.client.get_model_version(serving.settings.model_name, str(version)).source
    model_id = source.removeprefix("models:/").split("/")[0]  # MLflow 3: models:/<logged model id>
    stored = [p for p in mlflow_process.state_dir.glob("**/encoder.onnx") if model_id in p.parts]
    assert len(stored) == 1, f"stored encoder.onnx of {source}: {stored}"
    data = bytearray(stored[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored[0].write_bytes(bytes(data))

    serving.registry.promote(version, "will not load")
    name = serving.settings.model_name
    serving.announce(ModelUpdate(model=name, kind="full", version=str(version), base_version=version,
                                 uri=f"models:/{name}/{version}"))
    assert wait_until(lambda: serving.metric("loopline_model_updates", outcome="refused") >= 1, 60)
    assert serving.metric("loopline_model_failed_loads") == failed_before + 1
    assert serving.current() == before
    assert serving.predict("navigate to the airport")["model_version"] == before

    reload = httpx.post(f"{serving.url}/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert reload.status_code == 409 and "sha256 mismatch" in reload.json()["detail"]
    assert "still serving" in reload.json()["detail"] and serving.current() == before


def test_admin_endpoints_refuse_a_missing_or_wrong_token(serving: Serving) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN[:-1]}):
        response = httpx.post(f"{serving.url}/v1/admin/rollback", json={"version": 1}, headers=headers)
        assert response.status_code == 401, response.text
    response = httpx.post(f"{serving.url}/v1/admin/rollback", json={"version": 1},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 200 and response.json()["version"] == "1"
    assert serving.predict("call mom")["model_version"] == "1"
