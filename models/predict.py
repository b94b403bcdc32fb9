"""Predict with a verified bundle: compiled encoder + hashed features + FTRL head.

This is the one prediction path: the MLflow pyfunc flavor, the serving service
and the flow's gates all call it, so the features a prediction used are the
features training and learning see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ENCODER_FILE, HEAD_FILE, TOKENIZER_DIR, BundleError, Manifest, verify_bundle
from models.ftrl import Batch, FTRLProximal
from models.onnx_encoder import OnnxEncoder
from models.train import featurize

UserRecord = Mapping[str, Any] | None


class Predictor:
    """Texts (and optional user attributes) in, intent probabilities out."""

    def __init__(self, folder: str | Path, threads: int = 1, loaded: tuple[str, OnnxEncoder] | None = None) -> None:
        """`loaded`: an encoder already in memory and its `Manifest.encoder_identity`; used instead of loading
        the bundle's own when the identities match (a new head on the same encoder)."""
        self.folder = Path(folder)
        self.manifest: Manifest = verify_bundle(self.folder)
        if loaded is not None and loaded[0] == self.manifest.encoder_identity:
            self.encoder = loaded[1]
        else:
            self.encoder = OnnxEncoder.load(self.folder / ENCODER_FILE, self.folder / TOKENIZER_DIR,
                                            max_length=int(self.manifest.encoder["max_length"]), threads=threads)
        self.head = FTRLProximal.load(self.folder / HEAD_FILE)
        self.spec = self.manifest.spec
        self.classes = self.manifest.classes
        _check_consistent(self)

    def features(self, texts: Sequence[str], users: Sequence[UserRecord] | None = None) -> Batch:
        """What the head sees: hashed text and user features plus the embedding."""
        return featurize(texts, self.encoder.encode(texts), self.spec, users)

    def predict_proba(self, texts: Sequence[str], users: Sequence[UserRecord] | None = None) -> np.ndarray:
        return self.head.predict_proba_many(self.features(texts, users))

    def predict(self, texts: Sequence[str], users: Sequence[UserRecord] | None = None) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(texts, users).argmax(axis=1)]


def _check_consistent(predictor: Predictor) -> None:
    """The manifest, the head and the encoder must describe the same model, or nothing is served."""
    head, problems = predictor.head, []
    if tuple(head.classes) != predictor.classes:
        problems.append("head classes differ from the manifest's")
    if head.sparse_dim != predictor.spec.dim:
        problems.append(f"head has {head.sparse_dim} sparse inputs, feature spec hashes into {predictor.spec.dim}")
    if head.dense_dim != predictor.encoder.dim:
        problems.append(f"head expects {head.dense_dim}-d embeddings, encoder gives {predictor.encoder.dim}")
    if problems:
        raise BundleError(f"{predictor.folder}: " + "; ".join(problems))
