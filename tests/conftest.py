"""Fixtures shared across test folders: a tiny trained model and bundles built from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from models.bundle import ENCODER_FILE, HEAD_FILE, TOKENIZER_DIR, write_manifest
from models.catalog import INTENTS
from models.compile import export_onnx
from models.encoder import Encoder
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.traffic import TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head

SPEC = FeatureSpec(bits=12)
TinyModel = tuple[Encoder, FTRLProximal, list[str]]


@pytest.fixture(scope="session")
def trained() -> TinyModel:
    """A tiny random encoder and a head trained on 600 generated events with its features."""
    events = generate(TrafficConfig(n_events=600, n_users=50, seed=2)).events
    encoder = Encoder.tiny_random(seed=1)
    texts = list(events["text"])
    head = train_head(featurize(texts, encoder.encode(texts), SPEC), list(events["label"]), INTENTS,
                      HeadConfig(epochs=2))
    return encoder, head, texts


def head_copy(head: FTRLProximal) -> FTRLProximal:
    """A copy a test may train; the session's head stays untouched."""
    return FTRLProximal.from_bytes(head.to_bytes())


def build_bundle(folder: Path, encoder: Encoder, head: FTRLProximal, spec: FeatureSpec = SPEC) -> Path:
    """A bundle folder as the train flow writes it (FP32 ONNX, to keep tests fast)."""
    folder.mkdir(parents=True)
    export_onnx(encoder, folder / ENCODER_FILE)
    encoder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    head.save(folder / HEAD_FILE)
    write_manifest(folder, spec, INTENTS, encoder={"dim": encoder.dim, "max_length": encoder.max_length})
    return folder


@pytest.fixture
def tiny_bundle(trained: TinyModel, tmp_path: Path) -> Callable[..., Path]:
    encoder, head, _ = trained
    return lambda name="bundle", spec=SPEC: build_bundle(tmp_path / name, encoder, head, spec)
