"""The MLflow model registry as loopline uses it: bundles as pyfunc versions, two aliases.

`champion` is what serving loads; `challenger` is the newest candidate. Every
alias move is recorded on the registered model (`champion_history`), so a
rollback without a version goes back to the champion before the current one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from models.bundle import BundleError, check_linked_names, complete_links, reuse_local_files, verify_bundle
from models.features import USER_FIELDS
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text"),
                   *(ColSpec("string", f, required=False) for f in USER_FIELDS)]),
    outputs=Schema([ColSpec("string", "intent"), ColSpec("double", "confidence"), ColSpec("boolean", "fallback")]),
)
# What loading a version needs besides the loopline code itself (installed, not vendored into the model).
RUNTIME_REQUIREMENTS = ["onnxruntime==1.31.1", "transformers==5.23.0", "torch==2.13.0", "numba==0.68.1",
                        "mmh3==5.3.1", "numpy", "scipy", "pandas"]
TAG_LIMIT = 5000  # MLflow's column size for tag values (enforced by PostgreSQL, not SQLite)
# Tag of a version trained on collected rows: the newest feedback time among them. When it becomes champion,
# the feedback service learns again what its head learned after that, and serving holds it until then.
COLLECTED_THROUGH_TAG = "collected_through"


def bound_registry_requests(timeout_s: int = 10, retries: int = 1) -> None:
    """Make MLflow HTTP calls from this process fail in seconds when the server is gone or hangs (a stopped
    server accepts connections and never answers). MLflow's defaults, 7 retries with backoff and 120 s per
    try, hold a caller for many minutes. For services, whose loops must not wait on the registry; values
    already in the environment win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


class RegistryError(Exception):
    """A registry action that cannot be done (unknown version, no champion, ...)."""


@dataclass(frozen=True)
class Version:
    version: int
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str | None
    created_ms: int
    description: str

    @property
    def metrics(self) -> dict[str, float]:
        return {k.removeprefix("metric."): float(v) for k, v in self.tags.items() if k.startswith("metric.")}


class Registry:
    """Register, list, promote and roll back versions of one model."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.name = settings.model_name
        if settings.tracking_uri.startswith("sqlite:"):
            (settings.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(settings.tracking_uri)
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)

    def experiment_id(self) -> str:
        """The train experiment; with a local SQLite registry its artifacts stay in the state folder."""
        found = self.client.get_experiment_by_name(self.settings.experiment)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.settings.tracking_uri.startswith("sqlite:"):
            location = (self.settings.state_dir / "mlflow" / "mlartifacts").resolve().as_uri()
        return str(self.client.create_experiment(self.settings.experiment, artifact_location=location))

    def register(self, bundle_dir: Path, tags: Mapping[str, Any], description: str = "") -> Version:
        """Log the bundle as a pyfunc model in the active run and register it as a new version."""
        verify_bundle(bundle_dir, allow_links=True)
        run = mlflow.active_run()
        if run is not None:
            # A retried register must not create a second version for the same run.
            for existing in self.client.search_model_versions(f"name='{self.name}' and run_id='{run.info.run_id}'"):
                return self._finish(str(existing.version), tags, description)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE), artifacts={"bundle": str(bundle_dir)},
            signature=SIGNATURE, pip_requirements=RUNTIME_REQUIREMENTS,
        )
        # The tags travel with the version's creation: one request, not one per tag (a registration every
        # minute competes with learning for the same two cores).
        created = mlflow.register_model(info.model_uri, self.name, tags={k: str(v) for k, v in tags.items()})
        return self._finish(str(created.version), {}, description)

    def _finish(self, version: str, tags: Mapping[str, Any], description: str) -> Version:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, str(value))
        if description:
            self.client.update_model_version(self.name, version, description=description)
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return self.get(int(version))

    def get(self, version: int) -> Version:
        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"{self.name} has no version {version}") from exc
        return Version(int(mv.version), tuple(mv.aliases), dict(mv.tags), mv.run_id,
                       int(mv.creation_timestamp), mv.description or "")

    def by_alias(self, alias: str) -> Version | None:
        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None
        return self.get(int(mv.version))

    def champion(self) -> Version | None:
        return self.by_alias(CHAMPION)

    def versions(self) -> list[Version]:
        """All versions, newest first."""
        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException:
            return []
        return sorted((self.get(int(mv.version)) for mv in found), key=lambda v: -v.version)

    def promote(self, version: int, reason: str) -> Version | None:
        """Make `version` the champion; returns the one it replaced."""
        target = self.get(version)
        previous = self.champion()
        if previous is not None and previous.version == target.version:
            return previous
        self.client.set_registered_model_alias(self.name, CHAMPION, str(target.version))
        self._record(target.version, reason)
        log.info("%s: champion is now version %d (%s)", self.name, target.version, reason)
        return previous

    def rollback(self, version: int | None = None) -> Version:
        """Move `champion` back to `version`, or to the champion before the current one.

        Versions once rolled away from are skipped, so repeated rollbacks keep
        going back instead of flipping between the last two champions.
        """
        current = self.champion()
        if version is None:
            history = self.history()
            rolled_away = {int(e["from"]) for e in history if e.get("from") is not None}
            skip = rolled_away | ({current.version} if current else set())
            earlier = [int(e["version"]) for e in history if int(e["version"]) not in skip]
            if not earlier:
                raise RegistryError("no earlier champion to roll back to")
            version = earlier[-1]
        self.get(version)  # refuses an unknown version before anything moves
        if current is None or current.version != version:
            self.client.set_registered_model_alias(self.name, CHAMPION, str(version))
            self._record(version, "rollback", rolled_from=current.version if current else None)
        return self.get(version)

    def history(self) -> list[dict[str, Any]]:
        """Champion moves, oldest first: version and reason."""
        try:
            tags = self.client.get_registered_model(self.name).tags
        except MlflowException:
            return []
        return list(json.loads(tags.get("champion_history", "[]")))

    def _record(self, version: int, reason: str, rolled_from: int | None = None) -> None:
        entry: dict[str, Any] = {"version": version, "reason": reason[:120]}
        if rolled_from is not None:
            entry["from"] = rolled_from
        entries = [*self.history(), entry]
        text = json.dumps(entries)
        while len(text) > TAG_LIMIT and len(entries) > 1:  # oldest moves go first
            entries = entries[1:]
            text = json.dumps(entries)
        self.client.set_registered_model_tag(self.name, "champion_history", text)

    def download(self, version: int, dest: Path | None = None, local: Sequence[Path] = ()) -> Path:
        """Fetch a version's bundle folder; returns its path. Loading it (`Predictor`) verifies every
        file against the manifest, so it is not hashed twice here. Files it shares with an earlier version
        are copied from the bundle folders in `local` when they hold the same bytes, else fetched."""
        target = dest or Path(tempfile.mkdtemp(prefix=f"{self.name}-v{version}-"))
        uri = f"models:/{self.name}/{version}"
        # `models:/` URIs resolve against the process-wide registry (MLflow ignores a registry_uri given
        # here), which another Registry in this process may have pointed elsewhere since.
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
        bundle = _bundle_path(root)
        if bundle is None:
            shutil.rmtree(target, ignore_errors=True)
            raise RegistryError(f"version {version} holds no loopline bundle")
        resolve_links(bundle, self.name, local)
        return bundle

    def lineage(self, version: Version) -> list[Version]:
        """`version`, its parent, its parent's parent, ... as far as `parent_version` tags lead."""
        chain, seen = [version], {version.version}
        while (parent := chain[-1].tags.get("parent_version", "")).isdigit() and int(parent) not in seen:
            seen.add(int(parent))
            try:
                chain.append(self.get(int(parent)))
            except RegistryError:  # a deleted parent ends the chain
                break
        return chain

    def classes(self, version: Version) -> tuple[str, ...] | None:
        """The classes of `version`, from the nearest version in its lineage that records them (online versions
        keep their parent's classes); None if none does or the list was too long for a tag."""
        for v in self.lineage(version):
            if "classes" in v.tags:
                return tuple(json.loads(v.tags["classes"]))
        return None

    def find_tagged(self, key: str, value: str) -> Version | None:
        """The newest version carrying tag `key` = `value` (how a replayed registration finds its version)."""
        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException:
            return None
        matches = [int(mv.version) for mv in found if mv.tags.get(key) == value]
        return self.get(max(matches)) if matches else None


def class_tags(classes: Sequence[str]) -> dict[str, str]:
    """Version tags naming a model's classes: `n_classes`, and `classes` (JSON) when it fits in a tag."""
    text = json.dumps(list(classes))
    return {"n_classes": str(len(classes)), **({"classes": text} if len(text) <= TAG_LIMIT else {})}


def resolve_links(bundle: Path, model: str | None = None, local: Sequence[Path] = ()) -> None:
    """Complete a head-only bundle with the files it shares with the version that stores them (no-op for a
    full one): from local bundles holding the same bytes first, then only the missing files from the registry."""
    manifest = verify_bundle(bundle, allow_links=True)
    check_linked_names(bundle, manifest)
    if all((bundle / name).is_file() for name in manifest.linked_files):
        return
    missing = reuse_local_files(bundle, local)
    source_uri = f"models:/{manifest.linked.get('model') or model}/{manifest.linked_version}"
    try:
        if missing:
            with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
                complete_links(bundle, _fetch_files(source_uri, missing, Path(tmp)))
        else:
            verify_bundle(bundle)
        return
    except BundleError as exc:  # a local copy changed on disk after its manifest was written: fetch them all
        if not local:
            raise
        log.warning("local copies of the files %s shares unusable (%s); fetching them", bundle, exc)
    for shared in manifest.linked_files:
        (bundle / shared).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
        complete_links(bundle, _fetch_files(source_uri, sorted(manifest.linked_files), Path(tmp)))


def _fetch_files(uri: str, names: Sequence[str], dest: Path) -> Path:
    """Only `names` of the bundle stored with the model version at `uri`, laid out as in that bundle."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(uri)
    (dest / "model").mkdir(parents=True, exist_ok=True)
    relative = _bundle_relative(Path(repo.download_artifacts("MLmodel", str(dest / "model"))).parent)
    if relative is None:
        raise RegistryError(f"{uri}, which stores files this version shares, holds no loopline bundle")
    for name in names:
        repo.download_artifacts(f"{relative}/{name}", str(dest / "model"))
    return dest / "model" / relative


def _bundle_path(model_dir: Path) -> Path | None:
    """Where the pyfunc model keeps its `bundle` artifact, as its MLmodel file records it."""
    relative = _bundle_relative(model_dir)
    return model_dir / relative if relative is not None and (model_dir / relative).is_dir() else None


def _bundle_relative(model_dir: Path) -> str | None:
    from mlflow.models import Model

    try:
        return str(Model.load(str(model_dir)).flavors["python_function"]["artifacts"]["bundle"]["path"])
    except (OSError, KeyError, MlflowException):
        return None
