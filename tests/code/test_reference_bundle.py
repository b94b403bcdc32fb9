"""The train flow's drift reference: built from the head's answers on held-out rows, written into the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.model_tasks import Compiled, build_bundle, drift_reference
from models.bundle import DRIFT_REFERENCE_DIR, BundleError, verify_bundle
from models.ftrl import FTRLProximal
from services.feedback.drift import DriftSettings, Reference

CLASSES = ["call_contact", "navigate", "toggle_wifi"]


def _reference(users: list[dict[str, str] | None] | None) -> Reference:
    texts = [f"turn on wifi please {i}" if i % 3 else f"call mom now {i}" for i in range(40)]
    embeddings = np.random.default_rng(0).normal(size=(40, 8))
    proba = np.tile([0.1, 0.2, 0.7], (40, 1))
    proba[::3] = [0.6, 0.3, 0.1]
    truth = ["toggle_wifi" if i % 3 else "call_contact" for i in range(40)]
    truth[1] = "navigate"  # one wrong answer
    return drift_reference.fn(texts, embeddings, proba, CLASSES, users, truth)


def test_the_reference_holds_the_heads_answers_and_whether_they_were_right() -> None:
    reference = _reference(None)
    frame = reference.frame
    assert len(frame) == 40 and reference.n_components == DriftSettings().n_components
    assert reference.accuracy == pytest.approx(39 / 40)
    assert set(frame["predicted_intent"]) == {"call_contact", "toggle_wifi"}
    assert sorted(set(frame["confidence"].round(6))) == [0.6, 0.7]
    assert set(frame["device"]) == {"unknown"}, "no user features: every row is an unknown user"
    with_users = _reference([{"device": "ios", "locale": "en_US", "activity_tier": "high"}] * 40)
    assert set(with_users.frame["device"]) == {"ios"}


def test_the_bundle_carries_the_reference_under_its_manifest(tmp_path: Path) -> None:
    reference = _reference(None)
    compiled = Compiled(b"graph", {"quantization": "none", "deployed_mb": 0.0})
    bundle = build_bundle.fn(compiled, FTRLProximal(CLASSES, 16), "tiny", {}, {}, tmp_path / "bundle", reference)
    loaded = Reference.load(bundle / DRIFT_REFERENCE_DIR)
    assert loaded.accuracy == reference.accuracy and loaded.vocabulary == reference.vocabulary
    frame_file = next((bundle / DRIFT_REFERENCE_DIR).glob("*.parquet"))
    assert f"{DRIFT_REFERENCE_DIR}/{frame_file.name}" in verify_bundle(bundle).files
    frame_file.write_bytes(frame_file.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        verify_bundle(bundle)


def test_a_bundle_without_a_reference_has_no_reference_folder(tmp_path: Path) -> None:
    compiled = Compiled(b"graph", {"quantization": "none", "deployed_mb": 0.0})
    bundle = build_bundle.fn(compiled, FTRLProximal(CLASSES, 16), "tiny", {}, {}, tmp_path / "bundle")
    assert not (bundle / DRIFT_REFERENCE_DIR).exists()
    verify_bundle(bundle)


def test_test_bundles_carry_a_reference_of_the_tiny_head(tiny_bundle, trained) -> None:
    bundle = tiny_bundle()
    reference = Reference.load(bundle / DRIFT_REFERENCE_DIR)
    assert len(reference.frame) == 300 and reference.n_components == DriftSettings().n_components
    assert reference.accuracy > 0.5, "the tiny head learned something, and the reference shows it"
    assert reference.project(trained[0].encode(["turn on wifi"])).shape == (1, DriftSettings().n_components)
