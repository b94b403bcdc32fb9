"""A bundle predicts like the model it was built from, and refuses to load when altered or inconsistent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.bundle import HEAD_FILE, MANIFEST, TOKENIZER_DIR, BundleError
from models.features import FeatureSpec
from models.predict import Predictor
from models.traffic import GENERATED_INTENTS as INTENTS
from models.train import featurize

SPEC = FeatureSpec(bits=12)  # what the tiny_bundle fixture hashes with


def test_bundle_predicts_like_the_torch_model(trained, tiny_bundle) -> None:
    encoder, head, texts = trained
    predictor = Predictor(tiny_bundle())
    sample = texts[:200]
    expected = head.predict_proba_many(featurize(sample, encoder.encode(sample), SPEC))
    np.testing.assert_allclose(predictor.predict_proba(sample), expected, atol=1e-4)
    assert predictor.predict(sample) == [INTENTS[i] for i in expected.argmax(axis=1)]


def test_altered_or_incomplete_bundles_are_refused(tiny_bundle) -> None:
    folder = tiny_bundle()
    vocab = folder / TOKENIZER_DIR / "tokenizer.json"
    vocab.write_bytes(vocab.read_bytes().replace(b'"want"', b'"wont"', 1))
    assert b'"wont"' in vocab.read_bytes()
    with pytest.raises(BundleError, match=r"tokenizer\.json: sha256 mismatch"):
        Predictor(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["files"][HEAD_FILE]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"head\.npz: not listed"):
        Predictor(folder)


def test_a_head_that_does_not_fit_the_feature_spec_is_refused(tiny_bundle) -> None:
    folder = tiny_bundle(spec=FeatureSpec(bits=14))
    with pytest.raises(BundleError, match="feature spec hashes into 16384"):
        Predictor(folder)
