"""Head-only bundles: a registry version of the online head links the encoder instead of storing it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.bundle import ENCODER_FILE, HEAD_FILE, BundleError, complete_links, link_head, verify_bundle, write_manifest
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from services.feedback.service import base_of


def full_bundle(folder: Path) -> Path:
    folder.mkdir()
    (folder / ENCODER_FILE).write_bytes(b"graph")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    FTRLProximal(["a", "b"], 16).save(folder / HEAD_FILE)
    write_manifest(folder, FeatureSpec(bits=8), ["a", "b"], encoder={"dim": 0}, lineage={"source": "train"})
    return folder


def test_a_head_only_bundle_stores_its_head_and_verifies_once_completed(tmp_path: Path) -> None:
    base = full_bundle(tmp_path / "v3")
    head = FTRLProximal(["a", "b"], 16)
    head.w_sparse[1, 0] = 0.5
    manifest = link_head(tmp_path / "v4", base, head.to_bytes(), "intent", 3, {"accuracy": 0.9},
                         {"source": "online", "parent_version": 3})
    assert sorted(p.name for p in (tmp_path / "v4").iterdir()) == [HEAD_FILE, "manifest.json"]
    assert manifest.linked == {"model": "intent", "version": 3, "files": [ENCODER_FILE, "tokenizer/vocab.txt"]}
    with pytest.raises(BundleError, match="stored with version 3"):
        verify_bundle(tmp_path / "v4")
    assert verify_bundle(tmp_path / "v4", allow_links=True).lineage["parent_version"] == 3

    # a head-only bundle made from a head-only bundle still points at the version that stores the files
    assert link_head(tmp_path / "v5", tmp_path / "v4", b"head five", "intent", 4).linked_version == 3
    completed = complete_links(tmp_path / "v5", base)
    assert completed.files[ENCODER_FILE] == verify_bundle(base).files[ENCODER_FILE]
    assert (tmp_path / "v5" / HEAD_FILE).read_bytes() == b"head five"


def test_a_linked_file_that_differs_from_the_manifest_is_refused(tmp_path: Path) -> None:
    base = full_bundle(tmp_path / "v3")
    link_head(tmp_path / "v4", base, b"head", "intent", 3)
    (base / ENCODER_FILE).write_bytes(b"another graph")  # the stored version changed under the link
    with pytest.raises(BundleError, match="sha256 mismatch"):
        complete_links(tmp_path / "v4", base)


def test_a_link_that_points_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    base = full_bundle(tmp_path / "v3")
    link_head(tmp_path / "v4", base, b"head", "intent", 3)
    manifest = json.loads((tmp_path / "v4" / "manifest.json").read_text())
    manifest["linked"]["files"].append("../escaped.txt")
    manifest["files"]["../escaped.txt"] = "0" * 64
    (tmp_path / "v4" / "manifest.json").write_text(json.dumps(manifest))
    (base / "../escaped.txt").write_text("x")
    with pytest.raises(BundleError, match="inside the bundle"):
        complete_links(tmp_path / "v4", base)


@pytest.mark.parametrize(("served", "base"), [("3", 3), ("3+ftrl.17", 3), ("bundle", None), ("", None)])
def test_the_registry_version_under_a_served_version(served: str, base: int | None) -> None:
    assert base_of(served) == base
