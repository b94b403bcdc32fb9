"""The model serving answers from: one immutable snapshot, swapped whole.

A request reads `store.current` once and uses that snapshot to the end, so it
is answered by one model version, which its response names. Full versions are
verified (sha256 of every file, head/spec/encoder consistency) before they
replace anything; a failed load leaves the current snapshot serving.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.bundle import BundleError
from models.fallback import NEVER, Fallback
from models.features import FeatureSpec
from models.ftrl import Batch, HeadDelta
from models.onnx_encoder import OnnxEncoder
from models.predict import Predictor
from models.serving_head import ServingHead
from models.train import featurize
from services.common.events import ModelUpdate

log = logging.getLogger(__name__)
DeltaOutcome = Literal["applied", "stale", "other_version", "gap"]


@dataclass(frozen=True)
class Snapshot:
    encoder: OnnxEncoder
    head: ServingHead
    spec: FeatureSpec
    base_version: int
    sequence: int = 0  # online updates applied on top of base_version
    loaded_at: float = field(default_factory=time.time)
    lineage: dict[str, Any] = field(default_factory=dict)
    fallback: Fallback = NEVER  # from the manifest: when to answer "not understood"
    encoder_identity: str = ""  # `Manifest.encoder_identity`: a version with the same one reuses `encoder`

    @property
    def version(self) -> str:
        return str(self.base_version) if self.sequence == 0 else f"{self.base_version}+ftrl.{self.sequence}"

    @property
    def classes(self) -> tuple[str, ...]:
        return self.head.classes

    def features(self, texts: Sequence[str], users: Sequence[Mapping[str, Any] | None] | None) -> Batch:
        return featurize(texts, self.encoder.encode(texts), self.spec, users)


class LoadError(Exception):
    """A model version could not be loaded; the current one keeps serving."""


class ModelStore:
    """Holds the current snapshot; loads full versions and applies head deltas atomically."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.current: Snapshot | None = None
        self.swaps = 0
        self.failed_loads = 0
        self._write = threading.Lock()  # writers only; readers take the reference without locking

    def load_bundle(self, folder: Path, version: int) -> Snapshot:
        """Verify and load a bundle folder as registry version `version`, then swap it in."""
        current = self.current
        # Online versions share their base's encoder: keeping its session skips the costliest part of a load.
        loaded = (current.encoder_identity, current.encoder) if current is not None else None
        try:
            predictor = Predictor(folder, threads=self.threads, loaded=loaded)
        except (BundleError, OSError, ValueError) as exc:
            self.failed_loads += 1
            raise LoadError(f"version {version} refused: {exc}") from exc
        manifest = predictor.manifest
        snapshot = Snapshot(predictor.encoder, ServingHead.from_model(predictor.head), predictor.spec, version,
                            lineage=dict(manifest.lineage), fallback=manifest.fallback_policy,
                            encoder_identity=manifest.encoder_identity)
        with self._write:
            self._swap(snapshot)
        return snapshot

    def apply(self, update: ModelUpdate) -> DeltaOutcome:
        """Apply the next head delta of the current version.

        Deltas carry only the coordinates changed since the previous one, so they must
        apply in order: a replayed one is "stale", one for another version is
        "other_version", and one after a missing sequence number is a "gap" (applying it
        would leave the head a mix of two states).
        """
        if update.kind != "delta" or update.delta is None:
            raise ValueError("not a delta update")
        with self._write:
            current = self.current
            if current is None or update.base_version != current.base_version:
                return "other_version"
            if update.sequence <= current.sequence:
                return "stale"
            if update.sequence > current.sequence + 1:
                return "gap"
            try:
                head = current.head.apply(HeadDelta.from_bytes(base64.b64decode(update.delta)))
            except (ValueError, OSError) as exc:
                self.failed_loads += 1
                raise LoadError(f"delta {update.version} refused: {exc}") from exc
            self._swap(replace(current, head=head, sequence=update.sequence, loaded_at=time.time()))
        return "applied"

    def predict(self, texts: Sequence[str], users: Sequence[Mapping[str, Any] | None] | None = None
                ) -> tuple[Snapshot, Batch, np.ndarray]:
        """One snapshot for the whole batch: its features, probabilities and the snapshot itself."""
        snapshot = self.current
        if snapshot is None:
            raise LoadError("no model loaded")
        batch = snapshot.features(texts, users)
        return snapshot, batch, snapshot.head.predict_proba_many(batch)

    def _swap(self, snapshot: Snapshot) -> None:
        previous = self.current
        self.current = snapshot  # one reference assignment: atomic for readers
        self.swaps += 1
        log.info("serving %s (was %s)", snapshot.version, previous.version if previous else "nothing")
