"""A bundle predicts like the model it was built from, and refuses to load when altered or inconsistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.bundle import ENCODER_FILE, HEAD_FILE, MANIFEST, TOKENIZER_DIR, BundleError, write_manifest
from models.catalog import INTENTS
from models.compile import export_onnx
from models.encoder import Encoder
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.predict import Predictor
from models.traffic import TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head

SPEC = FeatureSpec(bits=12)


@pytest.fixture(scope="module")
def trained() -> tuple[Encoder, FTRLProximal, list[str]]:
    events = generate(TrafficConfig(n_events=600, n_users=50, seed=2)).events
    encoder = Encoder.tiny_random(seed=1)
    texts = list(events["text"])
    head = train_head(featurize(texts, encoder.encode(texts), SPEC), list(events["label"]), INTENTS,
                      HeadConfig(epochs=2))
    return encoder, head, texts


def _bundle(folder: Path, encoder: Encoder, head: FTRLProximal, spec: FeatureSpec = SPEC) -> Path:
    folder.mkdir()
    export_onnx(encoder, folder / ENCODER_FILE)
    encoder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    head.save(folder / HEAD_FILE)
    write_manifest(folder, spec, INTENTS, encoder={"dim": encoder.dim, "max_length": encoder.max_length})
    return folder


def test_bundle_predicts_like_the_torch_model(trained, tmp_path: Path) -> None:
    encoder, head, texts = trained
    predictor = Predictor(_bundle(tmp_path / "b", encoder, head))
    sample = texts[:200]
    expected = head.predict_proba_many(featurize(sample, encoder.encode(sample), SPEC))
    np.testing.assert_allclose(predictor.predict_proba(sample), expected, atol=1e-4)
    assert predictor.predict(sample) == [INTENTS[i] for i in expected.argmax(axis=1)]


def test_altered_or_incomplete_bundles_are_refused(trained, tmp_path: Path) -> None:
    encoder, head, _ = trained
    folder = _bundle(tmp_path / "b", encoder, head)
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


def test_a_head_that_does_not_fit_the_feature_spec_is_refused(trained, tmp_path: Path) -> None:
    encoder, head, _ = trained
    folder = _bundle(tmp_path / "b", encoder, head, spec=FeatureSpec(bits=14))
    with pytest.raises(BundleError, match="feature spec hashes into 16384"):
        Predictor(folder)
