"""Which new champions serving holds behind the online head until the feedback service's catch-up delta."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.registry import COLLECTED_THROUGH_TAG
from services.serving.app import awaits_catch_up
from services.serving.model_store import ModelStore, Snapshot
from services.serving.settings import ServingSettings

RETRAIN = {"source": "train", COLLECTED_THROUGH_TAG: "1796666265.820"}


@pytest.fixture
def served(tiny_bundle) -> Snapshot:
    store = ModelStore()
    store.load_bundle(tiny_bundle("v3"), version=3)
    assert store.current is not None
    return replace(store.current, sequence=8)  # the online head: 3+ftrl.8


@pytest.fixture
def retrain(tiny_bundle) -> Snapshot:
    return ModelStore().prepare(tiny_bundle("v4"), version=4)


def settings(**changes: object) -> ServingSettings:
    return ServingSettings(**{"kafka_bootstrap_servers": "127.0.0.1:9092", **changes})


def test_a_retrain_on_collected_feedback_waits_for_its_catch_up(served, retrain) -> None:
    assert awaits_catch_up(4, RETRAIN, retrain, served, settings())


@pytest.mark.parametrize(("why", "version", "tags", "sequence", "changes"), [
    ("trained without the examples table", 4, {"source": "train", COLLECTED_THROUGH_TAG: ""}, 8, {}),
    ("an online registration", 4, {"source": "online", COLLECTED_THROUGH_TAG: "1.0"}, 8, {}),
    ("a rollback to an older version", 2, RETRAIN, 8, {}),
    ("nothing learned online to keep", 4, RETRAIN, 0, {}),
    ("turned off", 4, RETRAIN, 8, {"catch_up_wait_s": 0.0}),
    ("no broker: no feedback service will send a delta", 4, RETRAIN, 8, {"kafka_bootstrap_servers": None}),
])
def test_other_versions_serve_at_once(served, retrain, why, version, tags, sequence, changes) -> None:
    assert not awaits_catch_up(version, tags, retrain, replace(served, sequence=sequence), settings(**changes)), why


def test_a_retrain_with_another_encoder_serves_at_once(served, retrain) -> None:
    other = replace(retrain, encoder_identity=retrain.encoder_identity + "-finetuned")
    assert not awaits_catch_up(4, RETRAIN, other, served, settings())
