"""Fetching a head-only version from a real MLflow registry: the files it shares with a version held locally
are copied from there; otherwise only those files, not the whole linked version, cross the network."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

import services.common.registry as registry_module
from models.bundle import ENCODER_FILE, HEAD_FILE, BundleError, link_head, read_manifest, verify_bundle
from services.common.registry import Registry, resolve_links
from services.common.settings import CommonSettings
from tests.conftest import TinyModel, head_copy
from tests.integration.stack import register


@pytest.fixture(scope="module")
def versions(mlflow_server: str, trained: TinyModel, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Registry, Path, int]:
    """v1, a full bundle, held locally as a follower holds it; v2, a head-only version on top of it."""
    work = tmp_path_factory.mktemp("links")
    registry = Registry(CommonSettings(state_dir=work / "state", mlflow_tracking_uri=mlflow_server,
                                       model_name=f"links-test-{uuid.uuid4().hex[:8]}"))
    first = register(registry, work / "built-v1", trained[1], trained)
    held = registry.download(first, work / "held-v1")
    head = head_copy(trained[1])
    head.w_dense[0, 0] += 1.0  # a head of its own
    link_head(work / "v2", held, head.to_bytes(), registry.name, first)
    with mlflow.start_run(experiment_id=registry.experiment_id()):
        second = registry.register(work / "v2", {"source": "online", "parent_version": first}).version
    return registry, held, second


def test_shared_files_held_locally_are_copied_not_fetched(versions, tmp_path: Path, monkeypatch) -> None:
    registry, held, second = versions

    def no_fetch(*_: object) -> Path:
        raise AssertionError("a shared file held locally was fetched from the registry")

    monkeypatch.setattr(registry_module, "_fetch_files", no_fetch)
    bundle = registry.download(second, tmp_path / "v2", local=[held])
    manifest = verify_bundle(bundle)
    assert manifest.files[ENCODER_FILE] == read_manifest(held).files[ENCODER_FILE]
    assert (bundle / HEAD_FILE).read_bytes() != (held / HEAD_FILE).read_bytes()


def test_without_a_local_copy_only_the_shared_files_are_fetched(versions, tmp_path: Path, monkeypatch) -> None:
    registry, held, second = versions
    asked: list[list[str]] = []
    fetch = registry_module._fetch_files

    def recording(uri: str, names, dest: Path) -> Path:
        asked.append(list(names))
        return fetch(uri, names, dest)

    monkeypatch.setattr(registry_module, "_fetch_files", recording)
    bundle = registry.download(second, tmp_path / "v2")
    manifest = verify_bundle(bundle)
    assert asked == [sorted(manifest.linked_files)], "the shared files only, not the linked version's whole bundle"
    assert HEAD_FILE not in manifest.linked_files
    assert (bundle / ENCODER_FILE).read_bytes() == (held / ENCODER_FILE).read_bytes()


def test_a_linked_name_outside_the_bundle_is_refused_before_anything_is_touched(versions, tmp_path: Path) -> None:
    registry, held, second = versions
    bundle = registry.download(second, tmp_path / "v2", local=[held])
    victim = tmp_path / "outside.txt"
    victim.write_text("must survive")
    manifest = read_manifest(bundle)
    crafted = replace(manifest, files={**manifest.files, "../outside.txt": "0" * 64},
                      linked={**manifest.linked, "files": [*manifest.linked["files"], "../outside.txt"]})
    (bundle / "manifest.json").write_text(crafted.to_json())
    with pytest.raises(BundleError, match="inside the bundle"):
        resolve_links(bundle, registry.name, [held])
    assert victim.read_text() == "must survive"


def test_a_local_copy_that_changed_on_disk_is_not_trusted(versions, tmp_path: Path) -> None:
    registry, held, second = versions
    damaged = tmp_path / "damaged-v1"
    damaged.mkdir()
    for path in held.rglob("*"):
        if path.is_file():
            (damaged / path.relative_to(held)).parent.mkdir(parents=True, exist_ok=True)
            (damaged / path.relative_to(held)).write_bytes(path.read_bytes())
    (damaged / ENCODER_FILE).write_bytes(b"not the encoder its manifest names")
    bundle = registry.download(second, tmp_path / "v2", local=[damaged])
    assert (bundle / ENCODER_FILE).read_bytes() == (held / ENCODER_FILE).read_bytes()
