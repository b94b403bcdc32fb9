"""The model serving answers from: one immutable snapshot, swapped whole.

A request reads `store.current` once and uses that snapshot to the end, so it
is answered by one model version, which its response names. Full versions are
verified (sha256 of every file, head/spec/encoder consistency) before they
replace anything; a failed load leaves the current snapshot serving.

A version can also be *held*: loaded and verified, but not served until its first
head delta arrives (or a wait runs out). A retrain on collected feedback is such a
version: the feedback service follows it with a catch-up delta of what the online
head learned while the retrain ran, and until then the online head it replaces
knows more than the retrain alone.
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
DeltaOutcome = Literal["applied", "stale", "other_version", "gap", "caught_up"]


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


@dataclass(frozen=True)
class Held:
    """A loaded version waiting for its first delta before it serves."""

    snapshot: Snapshot
    since: float  # monotonic
    wait_s: float  # served as it is once this has passed


class ModelStore:
    """Holds the current snapshot; loads full versions and applies head deltas atomically."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.current: Snapshot | None = None
        self.held: Held | None = None
        self.swaps = 0
        self.failed_loads = 0
        self._write = threading.Lock()  # writers only; readers take the reference without locking

    def load_bundle(self, folder: Path, version: int) -> Snapshot:
        """Verify and load a bundle folder as registry version `version`, then swap it in."""
        snapshot = self.prepare(folder, version)
        self.serve(snapshot)
        return snapshot

    def serve(self, snapshot: Snapshot) -> None:
        """Swap `snapshot` in; a version held until now is dropped (another one serves instead)."""
        with self._write:
            self.held = None
            self._swap(snapshot)

    def prepare(self, folder: Path, version: int) -> Snapshot:
        """Verify and load a bundle folder as registry version `version`, without serving it."""
        current = self.current
        # Online versions share their base's encoder: keeping its session skips the costliest part of a load.
        loaded = (current.encoder_identity, current.encoder) if current is not None else None
        try:
            predictor = Predictor(folder, threads=self.threads, loaded=loaded)
        except (BundleError, OSError, ValueError) as exc:
            self.failed_loads += 1
            raise LoadError(f"version {version} refused: {exc}") from exc
        manifest = predictor.manifest
        return Snapshot(predictor.encoder, ServingHead.from_model(predictor.head), predictor.spec, version,
                        lineage=dict(manifest.lineage), fallback=manifest.fallback_policy,
                        encoder_identity=manifest.encoder_identity)

    def hold(self, snapshot: Snapshot, wait_s: float) -> None:
        """Keep serving the current snapshot until `snapshot`'s first delta arrives or `wait_s` passes."""
        with self._write:
            self.held = Held(snapshot, time.monotonic(), wait_s)
        log.info("v%d held behind %s until its first update (at most %.0f s)", snapshot.base_version,
                 self.current.version if self.current else "nothing", wait_s)

    def release_expired(self) -> Snapshot | None:
        """Serve a held version whose wait ran out, as it is; returns it if so."""
        with self._write:
            held = self.held
            if held is None or time.monotonic() - held.since < held.wait_s:
                return None
            self.held = None
            log.warning("no update on held v%d within %.0f s: serving it as it is", held.snapshot.base_version,
                        held.wait_s)
            self._swap(replace(held.snapshot, loaded_at=time.time()))
            return held.snapshot

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
            held = self.held
            target: Snapshot | None = self.current
            outcome: DeltaOutcome = "applied"
            if held is not None and update.base_version == held.snapshot.base_version:
                target, outcome = held.snapshot, "caught_up"  # the held version's first delta: it serves now
            if target is None or update.base_version != target.base_version:
                return "other_version"
            if update.sequence <= target.sequence:
                return "stale"
            if update.sequence > target.sequence + 1:
                return "gap"
            try:
                head = target.head.apply(HeadDelta.from_bytes(base64.b64decode(update.delta)))
            except (ValueError, OSError) as exc:
                self.failed_loads += 1
                raise LoadError(f"delta {update.version} refused: {exc}") from exc
            if outcome == "caught_up":
                self.held = None
            self._swap(replace(target, head=head, sequence=update.sequence, loaded_at=time.time()))
        return outcome

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
