"""Flow tasks that talk to the registry and the broker: score the champion, register, deploy, announce."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.bundle import BundleError
from models.catalog import INTENTS
from models.evaluate import Evaluation, evaluate
from models.predict import Predictor
from services.common.events import MODEL_UPDATES, ModelUpdate
from services.common.kafka import publish
from services.common.registry import Registry, RegistryError, Version
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
def score_champion(settings: CommonSettings, texts: list[str], users: list[dict[str, Any] | None] | None,
                   truth: list[str]) -> tuple[Version, Evaluation] | None:
    """The current champion, evaluated on this run's eval set."""
    registry = Registry(settings)
    champion = registry.champion()
    if champion is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proba = Predictor(registry.download(champion.version, Path(tmp))).predict_proba(texts, users)
        except (BundleError, RegistryError) as exc:
            # A champion that no longer verifies must not block its own replacement.
            get_run_logger().warning("champion v%d cannot be scored, treated as absent: %s", champion.version, exc)
            return None
    return champion, evaluate(proba, truth, INTENTS)


@task(retries=2, retry_delay_seconds=3)
def register(settings: CommonSettings, bundle: Path, tags: dict[str, Any], description: str) -> Version:
    """Log the bundle as a pyfunc version and point `challenger` at it."""
    return Registry(settings).register(bundle, tags, description)


@task(cache_policy=NO_CACHE)
def deploy(settings: CommonSettings, challenger: Version, accuracy: float,
           champion: tuple[Version, Evaluation] | None, margin: float) -> tuple[bool, str]:
    """Move `champion` to the challenger unless it is worse than the current one by more than `margin`."""
    registry = Registry(settings)
    if champion is None:
        reason = f"first version (accuracy {accuracy:.4f})"
    else:
        current, ev = champion
        if accuracy < ev.accuracy - margin:
            reason = (f"kept champion v{current.version}: challenger v{challenger.version} accuracy "
                      f"{accuracy:.4f} < champion {ev.accuracy:.4f} - margin {margin:.4f}")
            registry.client.set_model_version_tag(registry.name, str(challenger.version), "deploy.decision", reason)
            return False, reason
        reason = (f"challenger v{challenger.version} accuracy {accuracy:.4f} vs champion "
                  f"v{current.version} {ev.accuracy:.4f} (margin {margin:.4f})")
    registry.promote(challenger.version, reason)
    registry.client.set_model_version_tag(registry.name, str(challenger.version), "deploy.decision",
                                          f"promoted: {reason}")
    return True, reason


@task(retries=3, retry_delay_seconds=2)
def announce(settings: CommonSettings, version: Version) -> None:
    """Tell serving replicas about the new champion on `model-updates`."""
    assert settings.kafka_bootstrap_servers is not None
    event = ModelUpdate(model=settings.model_name, kind="full", version=str(version.version),
                        base_version=version.version, uri=f"models:/{settings.model_name}/{version.version}")
    publish(settings.kafka_bootstrap_servers, MODEL_UPDATES, settings.model_name, event)
