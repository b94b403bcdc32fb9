"""ModelStore: verified loads, atomic swaps, deltas in order, failures keep the old model serving."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from models.bundle import ENCODER_FILE, read_manifest, write_manifest
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.train import featurize
from services.common.events import ModelUpdate
from services.serving.model_store import LoadError, ModelStore
from tests.conftest import head_copy

SPEC = FeatureSpec(bits=12)  # what the tiny_bundle fixture hashes with


def _delta(model: FTRLProximal, base: int, sequence: int) -> ModelUpdate:
    return ModelUpdate(model="m", kind="delta", version=f"{base}+ftrl.{sequence}", base_version=base,
                       sequence=sequence, delta=base64.b64encode(model.delta().to_bytes()).decode())


def test_load_predict_and_deltas_in_order(trained, tiny_bundle, tmp_path) -> None:
    encoder, head, texts = trained
    store = ModelStore()
    store.load_bundle(tiny_bundle(), version=3)
    snapshot, _, proba = store.predict(texts[:20])
    assert snapshot.version == "3" and proba.shape == (20, len(snapshot.classes))

    learner = head_copy(head)
    learner.mark()
    batch = featurize(texts[:64], encoder.encode(texts[:64]), SPEC)
    learner.learn_many(batch, np.zeros(64, dtype=np.int64))
    update = _delta(learner, base=3, sequence=1)
    assert store.apply(update) == "applied"
    assert store.current.version == "3+ftrl.1"
    np.testing.assert_allclose(store.predict(texts[:64])[2], learner.predict_proba_many(batch), atol=1e-4)
    assert store.apply(update) == "stale", "a replayed delta is skipped"
    assert store.apply(_delta(learner, base=2, sequence=2)) == "other_version"
    assert store.apply(_delta(learner, base=3, sequence=3)) == "gap", "sequence 2 is missing"
    assert store.current.version == "3+ftrl.1"
    assert snapshot.version == "3", "a snapshot taken before the delta stays as it was"


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(tiny_bundle) -> None:
    store = ModelStore()
    store.load_bundle(tiny_bundle("good"), version=1)
    bad = tiny_bundle("bad")
    (bad / ENCODER_FILE).write_bytes((bad / ENCODER_FILE).read_bytes()[:-10])
    with pytest.raises(LoadError, match="sha256 mismatch"):
        store.load_bundle(bad, version=2)
    assert store.current.version == "1" and store.failed_loads == 1 and store.swaps == 1


def test_nothing_loaded_is_an_error_not_a_crash() -> None:
    with pytest.raises(LoadError, match="no model loaded"):
        ModelStore().predict(["turn on wifi"])


def test_a_version_on_the_same_encoder_reuses_the_loaded_session(trained, tiny_bundle, tmp_path) -> None:
    store = ModelStore()
    first = store.load_bundle(tiny_bundle("v1"), version=1)
    second = store.load_bundle(tiny_bundle("v2"), version=2)
    assert second.encoder is first.encoder and second.version == "2"
    other = tiny_bundle("v3")
    (other / "tokenizer" / "notes.txt").write_text("a file the tokenizer folder did not have\n")
    write_manifest(other, SPEC, list(second.classes), encoder=read_manifest(other).encoder)
    third = store.load_bundle(other, version=3)
    assert third.encoder is not first.encoder, "another tokenizer makes another encoder"


def test_a_held_version_serves_from_its_first_delta_and_the_live_head_learns_until_then(trained, tiny_bundle) -> None:
    encoder, head, texts = trained
    store = ModelStore()
    store.load_bundle(tiny_bundle("v3"), version=3)
    retrain = store.prepare(tiny_bundle("v4"), version=4)
    store.hold(retrain, wait_s=60.0)
    assert store.current.version == "3" and store.held is not None, "held: the live head keeps answering"

    learner = head_copy(head)
    learner.mark()
    batch = featurize(texts[:64], encoder.encode(texts[:64]), SPEC)
    learner.learn_many(batch, np.zeros(64, dtype=np.int64))
    assert store.apply(_delta(learner, base=3, sequence=1)) == "applied", "deltas on the live head still apply"
    assert store.current.version == "3+ftrl.1" and store.held is not None
    assert store.release_expired() is None, "the wait has not run out"

    assert store.apply(_delta(learner, base=4, sequence=2)) == "gap", "the held version's first delta is 1"
    assert store.apply(_delta(learner, base=4, sequence=1)) == "caught_up"
    assert store.current.version == "4+ftrl.1" and store.held is None
    np.testing.assert_allclose(store.predict(texts[:64])[2], learner.predict_proba_many(batch), atol=1e-4)


def test_a_held_version_without_a_delta_serves_once_its_wait_runs_out(tiny_bundle) -> None:
    store = ModelStore()
    store.load_bundle(tiny_bundle("v3"), version=3)
    store.hold(store.prepare(tiny_bundle("v4"), version=4), wait_s=0.0)
    assert store.release_expired() is not None
    assert store.current.version == "4" and store.held is None
    assert store.release_expired() is None


def test_serving_another_version_drops_the_held_one(tiny_bundle) -> None:
    store = ModelStore()
    store.load_bundle(tiny_bundle("v3"), version=3)
    store.hold(store.prepare(tiny_bundle("v4"), version=4), wait_s=60.0)
    store.load_bundle(tiny_bundle("v2"), version=2)  # a rollback
    assert store.current.version == "2" and store.held is None
