"""The fallback answer: a threshold chosen on held-out rows for a target precision, stored in the bundle's
manifest and applied by serving; an out-of-scope class is learned like any other and answered with fallback."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.bundle import read_manifest, set_fallback, verify_bundle
from models.fallback import Fallback, choose_threshold
from models.ftrl import Batch
from models.train import HeadConfig, featurize, train_head
from services.serving.app import create_app
from services.serving.settings import ServingSettings
from tests.conftest import SPEC


def random_answers(n: int, k: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Probabilities whose confidence says something about correctness, as a trained model's does."""
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(k)]
    proba = rng.dirichlet(np.full(k, 0.3), size=n)
    picked = proba.argmax(axis=1)
    right = rng.random(n) < proba.max(axis=1)
    truth = [classes[p] if r else classes[(p + 1) % k] for p, r in zip(picked, right, strict=True)]
    return proba, truth, classes


@pytest.mark.parametrize("target", [0.8, 0.9, 0.97])
def test_the_threshold_is_the_lowest_that_reaches_the_target(target: float) -> None:
    proba, truth, classes = random_answers(2_000, 8, seed=int(target * 100))
    policy = choose_threshold(proba, truth, classes, target)
    answered = policy.answered(proba, classes)
    right = np.array([classes[i] for i in proba.argmax(axis=1)]) == np.array(truth)
    assert right[answered].mean() >= target and policy.precision == pytest.approx(right[answered].mean())
    assert policy.coverage == pytest.approx(answered.mean()) and 0 < policy.coverage < 1
    lower = proba.max(axis=1)[~answered].max()  # the next threshold down answers at least one more row
    more = proba.max(axis=1) >= lower
    assert right[more].mean() < target or lower == policy.threshold


def test_out_of_scope_answers_are_never_answered_and_out_of_scope_requests_count_as_errors() -> None:
    classes = ["alarm_set", "oos", "weather_query"]
    proba = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8], [0.7, 0.1, 0.2]])
    truth = ["alarm_set", "oos", "weather_query", "oos"]  # the last: out of scope, answered as alarm_set
    policy = choose_threshold(proba, truth, classes, target_precision=0.99, out_of_scope="oos")
    assert policy.out_of_scope == "oos" and policy.threshold == pytest.approx(0.8)
    assert policy.answered(proba, classes).tolist() == [True, False, True, False]
    assert policy.coverage == 0.5 and policy.precision == 1.0


def test_a_model_that_never_reaches_the_target_answers_nothing() -> None:
    proba = np.array([[0.9, 0.1], [0.8, 0.2]])
    policy = choose_threshold(proba, ["b", "a"], ["a", "b"], target_precision=0.9)
    assert policy.coverage == 0.0 and not policy.answered(proba, ["a", "b"]).any()
    assert Fallback.from_dict(policy.to_dict()).threshold == policy.threshold  # stored without NaN, read back


def test_an_out_of_scope_class_is_learned_like_any_other(trained) -> None:
    encoder = trained[0]
    rows = [("wake me up at seven", "alarm_set"), ("set an alarm for six", "alarm_set"),
            ("will it rain today", "weather_query"), ("how hot is it outside", "weather_query"),
            ("what is the meaning of life", "oos"), ("tell me about the roman empire", "oos")] * 20
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    head = train_head(featurize(texts, encoder.encode(texts), SPEC), labels, ["alarm_set", "oos", "weather_query"],
                      HeadConfig(epochs=3))
    asked = ["what is the meaning of life", "wake me up at seven"]
    proba = head.predict_proba_many(featurize(asked, encoder.encode(asked), SPEC))
    assert [head.classes[i] for i in proba.argmax(axis=1)] == ["oos", "alarm_set"]
    # and from feedback, as the feedback service learns: one more out-of-scope wording
    new = ["sing me a sea shanty"]
    x: Batch = featurize(new, encoder.encode(new), SPEC)
    before = head.predict_proba_many(x)[0, head.class_index["oos"]]
    for _ in range(5):
        head.learn_many(x, np.array([head.class_index["oos"]]))
    assert head.predict_proba_many(x)[0, head.class_index["oos"]] > before


def test_serving_returns_the_fallback_the_manifest_stores(tiny_bundle, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    folder = tiny_bundle()
    set_fallback(folder, Fallback(threshold=0.999, target_precision=0.97, precision=0.98, coverage=0.1, n=300))
    verify_bundle(folder)  # the manifest is not among the files it vouches for: the bundle still verifies
    assert read_manifest(folder).fallback_policy.threshold == 0.999
    settings = ServingSettings(bundle=folder, state_dir=tmp_path, max_wait_ms=1.0)
    with TestClient(create_app(settings)) as client:
        body = client.post("/v1/predict", json={"text": "turn on wifi"}).json()
        assert body["fallback"] is True and body["probabilities"][0]["probability"] < 0.999
        assert body["intent"] == body["probabilities"][0]["intent"], "the ranked intents are still returned"
        current = client.get("/v1/models/current").json()
        assert current["fallback"]["threshold"] == 0.999 and len(current["classes"]) == 22
    set_fallback(folder, Fallback(threshold=0.0, target_precision=0.97, precision=0.9, coverage=1.0, n=300))
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/predict", json={"text": "turn on wifi"}).json()["fallback"] is False
