"""Flow tasks that talk to the registry and the broker: score the champion, register, deploy, announce."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.data_tasks import RecordedData
from models.bundle import BundleError, Manifest, link_unchanged
from models.evaluate import Comparison
from models.predict import Predictor
from services.common.events import MODEL_UPDATES, ModelUpdate
from services.common.kafka import publish
from services.common.registry import TAG_LIMIT, Registry, RegistryError, Version
from services.common.settings import CommonSettings


def code_version() -> str:
    """The git commit the code came from (with `-dirty` for local changes), if known."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return rev or "unknown"


@task(retries=2, retry_delay_seconds=3)
def champion_data(settings: CommonSettings) -> RecordedData | None:
    """The data the champion was trained on and how it was split, as the nearest train version in its lineage
    recorded it (no URI when none did), and since when the examples table holds rows new to it."""
    registry = Registry(settings)
    champion = registry.champion()
    if champion is None:
        return None
    lineage = registry.lineage(champion)
    for version in lineage:
        tags = version.tags
        if tags.get("data_uri"):
            get_run_logger().info("champion v%d's data: %s (recorded on v%d)", champion.version, tags["data_uri"],
                                  version.version)
            # Collected examples since that version's data was taken: what it carried forward, else its birth.
            since = float(tags["collected_since"]) if tags.get("collected_since") else version.created_ms / 1000
            return RecordedData(tags["data_uri"], int(tags.get("split_seed", 0)), float(tags.get("holdout", 0.2)),
                                since)
    get_run_logger().info("champion v%d records no training data", champion.version)
    return RecordedData(None, 0, 0.2, lineage[-1].created_ms / 1000)


@dataclass(frozen=True)
class ScoredChampion:
    version: Version
    proba: np.ndarray  # on this run's eval rows
    classes: tuple[str, ...]
    manifest: Manifest  # what its bundle stores, and where (a retrain links the files it shares with it)


@task(retries=2, retry_delay_seconds=3)
def score_champion(settings: CommonSettings, texts: list[str], users: list[dict[str, Any] | None] | None,
                   ) -> ScoredChampion | None:
    """The current champion's answers on this run's eval rows."""
    registry = Registry(settings)
    champion = registry.champion()
    if champion is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            predictor = Predictor(registry.download(champion.version, Path(tmp)))
            proba = predictor.predict_proba(texts, users)
        except (BundleError, RegistryError) as exc:
            # A champion that no longer verifies must not block its own replacement.
            get_run_logger().warning("champion v%d cannot be scored, treated as absent: %s", champion.version, exc)
            return None
    return ScoredChampion(champion, proba, predictor.classes, predictor.manifest)


@task
def link_unchanged_files(settings: CommonSettings, bundle: Path, champion: ScoredChampion | None) -> list[str]:
    """Files the bundle shares byte for byte with the champion's (an unchanged encoder and tokenizer) are
    linked to the version that stores them instead of uploaded again."""
    if champion is None:
        return []
    shared = link_unchanged(bundle, champion.manifest, settings.model_name, champion.version.version)
    if shared:
        where = champion.manifest.linked_version or champion.version.version
        get_run_logger().info("%d files unchanged since v%d: linked, not uploaded (%s)", len(shared), where,
                              ", ".join(shared[:3]) + (", ..." if len(shared) > 3 else ""))
    return shared


@task(retries=2, retry_delay_seconds=3)
def register(settings: CommonSettings, bundle: Path, tags: dict[str, Any], description: str) -> Version:
    """Log the bundle as a pyfunc version and point `challenger` at it."""
    return Registry(settings).register(bundle, tags, description)


@task(cache_policy=NO_CACHE)
def deploy(settings: CommonSettings, challenger: Version, accuracy: float,
           champion: tuple[Version, Comparison] | None, margin: float) -> tuple[bool, str]:
    """Move `champion` to the challenger unless it is significantly worse than the current one by more than
    `margin` (paired, on the rows whose class both have); the guard after promotion watches it live."""
    registry = Registry(settings)
    if champion is None:
        reason = f"first version (accuracy {accuracy:.4f})"
    elif champion[1].n == 0:
        reason = (f"challenger v{challenger.version} shares no evaluated class with champion v{champion[0].version}:"
                  f" a new label set (accuracy {accuracy:.4f})")
    else:
        current, vs = champion
        paired = f"{vs.lost} rows only the champion got right, {vs.gained} only the challenger"
        if vs.significantly_worse(margin):
            reason = (f"kept champion v{current.version}: challenger v{challenger.version} accuracy "
                      f"{vs.challenger_accuracy:.4f} vs champion {vs.champion_accuracy:.4f}, worse beyond noise and "
                      f"margin {margin:.4f} ({paired}) {vs.describe()}")
            registry.client.set_model_version_tag(registry.name, str(challenger.version), "deploy.decision",
                                                  reason[:TAG_LIMIT])
            return False, reason
        reason = (f"challenger v{challenger.version} accuracy {vs.challenger_accuracy:.4f} vs champion "
                  f"v{current.version} {vs.champion_accuracy:.4f}, not worse beyond noise and margin {margin:.4f} "
                  f"({paired}) {vs.describe()}")
    registry.promote(challenger.version, reason)
    registry.client.set_model_version_tag(registry.name, str(challenger.version), "deploy.decision",
                                          f"promoted: {reason}"[:TAG_LIMIT])
    return True, reason


@task(retries=3, retry_delay_seconds=2)
def announce(settings: CommonSettings, version: Version) -> None:
    """Tell serving replicas about the new champion on `model-updates`."""
    assert settings.kafka_bootstrap_servers is not None
    event = ModelUpdate(model=settings.model_name, kind="full", version=str(version.version),
                        base_version=version.version, uri=f"models:/{settings.model_name}/{version.version}")
    publish(settings.kafka_bootstrap_servers, MODEL_UPDATES, settings.model_name, event)
