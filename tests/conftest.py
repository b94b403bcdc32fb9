"""Fixtures shared across test folders: a tiny trained model and bundles built from it."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import prometheus_client  # noqa: F401  before anything imports Feast: see below
import pytest

from models.bundle import DRIFT_REFERENCE_DIR, ENCODER_FILE, HEAD_FILE, TOKENIZER_DIR, write_manifest
from models.compile import export_onnx
from models.encoder import Encoder
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head, user_records
from services.feedback.drift import DriftSettings, Reference, build_reference

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
# Importing Feast 0.67 sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client decides at its own import whether
# metric values live in shared files. Imported after Feast (an integration module collected first), every
# serving app the tests build in this process added to the same counters, and a test that reads "1.0" from
# /metrics failed depending on which modules were collected. The services import prometheus_client first.


def import_bench(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """A bench script as a module: they run as `python bench/<name>.py` and import each other as top-level
    modules, so bench/ goes on the path for the test."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module(name)

SPEC = FeatureSpec(bits=12)
TinyModel = tuple[Encoder, FTRLProximal, list[str]]


def tiny_model() -> TinyModel:
    """A tiny random encoder and a head trained on 600 generated events with its features."""
    events = generate(TrafficConfig(n_events=600, n_users=50, seed=2)).events
    encoder = Encoder.tiny_random(seed=1)
    texts = list(events["text"])
    head = train_head(featurize(texts, encoder.encode(texts), SPEC), list(events["label"]), INTENTS,
                      HeadConfig(epochs=2))
    return encoder, head, texts


@pytest.fixture(scope="session")
def trained() -> TinyModel:
    """`tiny_model()`, once per session."""
    return tiny_model()


def head_copy(head: FTRLProximal) -> FTRLProximal:
    """A copy a test may train; the session's head stays untouched."""
    return FTRLProximal.from_bytes(head.to_bytes())


@dataclass(frozen=True)
class ReferenceRows:
    """Generated traffic the tiny head did not learn from, with its users and embeddings."""

    texts: list[str]
    truth: list[str]
    users: list[Mapping[str, Any] | None]
    embeddings: np.ndarray


@lru_cache(maxsize=4)
def reference_rows(encoder: Encoder, n_events: int = 300) -> ReferenceRows:
    """Cached per encoder: encoding is most of the cost of a reference, and bundles are built by the dozen."""
    generated = generate(TrafficConfig(n_events=n_events, n_users=50, seed=7))
    texts = list(generated.events["text"])
    users = user_records(list(generated.events["user_id"]), generated.users) or [None] * len(texts)
    return ReferenceRows(texts, list(generated.events["true_label"]), users, encoder.encode(texts))


def drift_reference(encoder: Encoder, head: FTRLProximal) -> Reference:
    """A drift reference as the train flow builds one: held-out rows and the head's answers on them."""
    rows = reference_rows(encoder)
    proba = head.predict_proba_many(featurize(rows.texts, rows.embeddings, SPEC, rows.users))  # the head's spec
    predicted = [head.classes[i] for i in proba.argmax(axis=1)]
    return build_reference(rows.texts, rows.embeddings, predicted, proba.max(axis=1), rows.users,
                           np.array(predicted) == np.array(rows.truth), n_components=DriftSettings().n_components)


def build_bundle(folder: Path, encoder: Encoder, head: FTRLProximal, spec: FeatureSpec = SPEC, *,
                 reference: bool = True) -> Path:
    """A bundle folder as the train flow writes it (FP32 ONNX, to keep tests fast), with a drift reference
    unless `reference` is False."""
    folder.mkdir(parents=True)
    export_onnx(encoder, folder / ENCODER_FILE)
    encoder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    head.save(folder / HEAD_FILE)
    if reference:
        drift_reference(encoder, head).save(folder / DRIFT_REFERENCE_DIR)
    write_manifest(folder, spec, INTENTS, encoder={"dim": encoder.dim, "max_length": encoder.max_length})
    return folder


@pytest.fixture
def tiny_bundle(trained: TinyModel, tmp_path: Path) -> Callable[..., Path]:
    encoder, head, _ = trained
    return lambda name="bundle", spec=SPEC: build_bundle(tmp_path / name, encoder, head, spec)
