"""Registry versions from the online head: register it, move `champion` when it passes, follow retrains.

Every `registry_interval_s` of event time, and when someone runs `loopline promote`,
the live head (what serving answers with) becomes a full MLflow version: a head-only
bundle whose encoder, tokenizer and drift reference stay stored with the version that
holds them (`models.bundle.link_head`), tagged with its lineage (`source=online`,
parent version, sequence, consumed offsets, progressive metrics). `champion` moves to
it only if the registry's champion is still the version the deltas are built on and
the live head is not worse than that version on the held-back examples.

A registration is keyed by `online.head` = "<parent>+ftrl.<sequence>", so a replay
after a crash finds the version it made before instead of making a second one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from models.bundle import ENCODER_FILE, HEAD_FILE, Manifest, link_head, reuse_local_files, verify_bundle
from models.ftrl import FTRLProximal
from models.serving_head import ServingHead
from services.common.registry import Registry, Version, class_tags
from services.feedback.learner import Comparison, OnlineLearner
from services.feedback.settings import FeedbackSettings

log = logging.getLogger(__name__)
HEAD_TAG = "online.head"


@dataclass(frozen=True)
class Registered:
    version: int
    promoted: bool
    reason: str
    reused: bool  # found from an earlier run of the same registration (a replay)


class BaseBundles:
    """Verified local copies of registry versions, one folder per version under the state folder."""

    def __init__(self, registry: Registry, folder: Path) -> None:
        self.registry = registry
        self.folder = folder
        # The registry worker and the learning loop (a sync delta after a reset) both fetch versions.
        self._lock = threading.Lock()
        # Versions checked since this process fetched or first found them: hashing a 23 MB encoder on every
        # question about a version would cost more than the question.
        self._verified: dict[int, Manifest] = {}

    def get(self, version: int) -> Path:
        with self._lock:
            return self._get(version)

    def manifest(self, version: int) -> Manifest:
        with self._lock:
            self._get(version)
            return self._verified[version]

    def _get(self, version: int) -> Path:
        target = self.folder / f"v{version}"
        if version in self._verified and target.is_dir():
            os.utime(target)  # in use: pruning keeps the folders used last
            return target
        if target.is_dir():
            try:
                self._verified[version] = verify_bundle(target)
                os.utime(target)
                return target
            except Exception as exc:  # damaged on disk: fetch it again
                log.warning("local copy of v%d unusable (%s); downloading again", version, exc)
                shutil.rmtree(target)
        self.folder.mkdir(parents=True, exist_ok=True)
        held = sorted(self.folder.glob("v*"), key=lambda p: -p.stat().st_mtime)
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            # A version that shares its encoder with one held here copies it instead of downloading it.
            bundle = self.registry.download(version, Path(tmp) / "download", local=held)
            manifest = verify_bundle(bundle)
            bundle.rename(target)  # whole or not at all
        self._verified[version] = manifest
        self._prune()
        return target

    def adopt(self, version: int, bundle: Path) -> None:
        """Keep the head-only bundle this process just registered as `version`, completed from the local copy
        of its base: following it later (a rebase, then a retrain's champion check) needs no download."""
        with self._lock:
            target = self.folder / f"v{version}"
            if target.is_dir() or reuse_local_files(bundle, sorted(self.folder.glob("v*"))):
                return  # already held, or its base is no longer here: `get` downloads it if ever asked
            self._verified[version] = verify_bundle(bundle)
            bundle.rename(target)  # same file system: the folder appears whole or not at all
            self._prune()

    def _prune(self) -> None:
        for old in sorted(self.folder.glob("v*"), key=lambda p: p.stat().st_mtime)[:-3]:
            shutil.rmtree(old, ignore_errors=True)  # the three used last (the base, the newest, one spare)
            self._verified.pop(int(old.name.removeprefix("v")), None)

    def head(self, version: int) -> FTRLProximal:
        return FTRLProximal.load(self.get(version) / HEAD_FILE)

    def inputs(self, version: int) -> tuple[str, str]:
        """What a head of this version takes as input: the encoder (by sha256) and the feature spec.
        Heads with equal inputs can learn from each other's logged predictions."""
        manifest = self.manifest(version)
        return manifest.files[ENCODER_FILE], json.dumps(manifest.spec.to_dict(), sort_keys=True)


class VersionKeeper:
    """Registers the online head and judges whether it may become the champion."""

    def __init__(self, settings: FeedbackSettings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry(settings)
        self.bundles = BaseBundles(self.registry, settings.state_dir / "feedback" / "bundles")
        self._heads: dict[int, ServingHead] = {}  # at most one: see `_head_of`

    def champion(self) -> Version | None:
        return self.registry.champion()

    def register(self, learner: OnlineLearner, offsets: dict[str, int], trigger: str) -> Registered:
        """The live head as a new version (or the one an earlier run of this registration made)."""
        base, key = learner.base_version, f"{learner.base_version}+ftrl.{learner.sequence}"
        existing = self.registry.find_tagged(HEAD_TAG, key)
        comparison = learner.compare(self._head_of(base))
        if existing is not None:
            version, reused = existing, True
            log.info("v%d already holds %s (registered before a restart)", existing.version, key)
        else:
            version, reused = self._register(learner, key, offsets, trigger, comparison), False
        if not reused:  # a version found again by its key came from another run's history: read from the registry
            self._heads = {version.version: learner.live}  # the next registration is compared with this one
        champion = self.champion()
        if champion is not None and champion.version == version.version:
            return Registered(version.version, True, "already champion", reused)
        if champion is not None and champion.version != base:
            reason = f"champion is v{champion.version}, not v{base} the online head was built on"
        elif comparison is None:
            reason = f"fewer than {learner.settings.min_holdout} held-back examples to judge by"
        elif comparison.live_worse:
            reason = f"worse than v{base}: {comparison.describe()}"
        else:
            reason = f"online head {key} not worse than v{base}: {comparison.describe()} ({trigger})"
            self.registry.promote(version.version, reason)
            self._tag(version.version, "deploy.decision", f"promoted: {reason}")
            return Registered(version.version, True, reason, reused)
        self._tag(version.version, "deploy.decision", f"kept champion: {reason}")
        log.info("v%d registered, champion not moved: %s", version.version, reason)
        return Registered(version.version, False, reason, reused)

    def _register(self, learner: OnlineLearner, key: str, offsets: dict[str, int], trigger: str,
                  comparison: Comparison | None) -> Version:
        base, progress = learner.base_version, learner.progress
        metrics = {"progressive_accuracy": progress.accuracy if progress.examples else 0.0,
                   "progressive_log_loss": progress.log_loss / progress.examples if progress.examples else 0.0,
                   "progressive_examples": float(progress.examples)}
        if comparison is not None:
            metrics |= {"holdout_accuracy": comparison.live_accuracy,
                        "holdout_accuracy_parent": comparison.other_accuracy}
        lineage = {"source": "online", "parent_version": base, "sequence": learner.sequence, HEAD_TAG: key,
                   "offsets": offsets, "trigger": trigger}
        tags: dict[str, Any] = {"source": "online", "parent_version": base, "online.sequence": learner.sequence,
                                HEAD_TAG: key, "online.trigger": trigger,
                                "online.offsets": json.dumps(offsets, sort_keys=True)[:5000],
                                **class_tags(learner.model.classes),
                                **{f"metric.{k}": f"{v:.4f}" for k, v in metrics.items()}}
        description = (f"Online head {key}: FTRL updates on joined feedback on top of v{base}, "
                       f"{progress.examples} examples scored before learning "
                       f"(accuracy {metrics['progressive_accuracy']:.4f})"
                       + (f"; {comparison.describe()} (online vs v{base})" if comparison is not None else "")
                       + f". Encoder shared with v{base}'s storage, not copied. Trigger: {trigger}.")
        with tempfile.TemporaryDirectory(dir=self.bundles.folder.parent) as tmp:
            bundle = Path(tmp) / "bundle"
            link_head(bundle, self.bundles.get(base), learner.model.to_bytes(), self.registry.name, base,
                      metrics, lineage)
            with mlflow.start_run(experiment_id=self.registry.experiment_id(), run_name=f"online-{key}"):
                mlflow.log_metrics(metrics)
                mlflow.log_params({"parent_version": base, "sequence": learner.sequence, "trigger": trigger})
                version = self.registry.register(bundle, tags, description)
            try:
                self.bundles.adopt(version.version, bundle)
            except Exception as exc:  # only a local copy: the version is registered all the same
                log.warning("v%d registered, not kept locally (%s): fetched when needed", version.version, exc)
        log.info("registered the online head %s as v%d", key, version.version)
        return version

    def start_head(self, version: int) -> FTRLProximal:
        """The head of `version` to start learning from; a copy of it stays for the first registration's
        comparison (the learner changes its own in place)."""
        head = self.bundles.head(version)
        self._heads = {version: ServingHead.from_model(head)}
        return head

    def _head_of(self, version: int) -> ServingHead:
        """Registry version `version`'s head: the one this keeper registered last is still in memory (loading
        and copying a head's arrays again took the registry thread a second of the loop's CPU)."""
        head = self._heads.get(version)
        if head is None:
            head = ServingHead.from_model(self.bundles.head(version))
            self._heads = {version: head}
        return head

    def roll_back(self, version: int, to: int, reason: str) -> None:
        """The guard's rollback: why, on the version it leaves (first: whoever sees the alias move finds it),
        then `champion` back to `to`."""
        self._tag(version, "guard.rolled_back", reason)
        self.registry.rollback(to)

    def _tag(self, version: int, key: str, value: str) -> None:
        self.registry.client.set_model_version_tag(self.registry.name, str(version), key, value[:500])
