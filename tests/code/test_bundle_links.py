"""Head-only bundles: a registry version of the online head links the encoder instead of storing it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.bundle import (
    ENCODER_FILE,
    HEAD_FILE,
    BundleError,
    complete_links,
    link_head,
    link_unchanged,
    read_manifest,
    reuse_local_files,
    verify_bundle,
    write_manifest,
)
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from services.feedback.service import base_of


def full_bundle(folder: Path, graph: bytes = b"graph", seed: int = 0) -> Path:
    folder.mkdir()
    (folder / ENCODER_FILE).write_bytes(graph)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    head = FTRLProximal(["a", "b"], 16)
    head.w_sparse[0, 0] = seed  # each retrain has its own head
    head.save(folder / HEAD_FILE)
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


def test_the_online_head_of_a_retrain_that_linked_its_encoder_keeps_the_retrains_own_files(tmp_path: Path) -> None:
    """v3 (a retrain) linked v1's unchanged encoder but stores its own drift reference: v4, the online head on
    v3, links the encoder to v1 and carries v3's reference, so completing its links from v1 verifies."""
    v1 = full_bundle(tmp_path / "v1")
    (v1 / "drift_reference").mkdir()
    (v1 / "drift_reference" / "frame.parquet").write_bytes(b"v1's reference")
    write_manifest(v1, FeatureSpec(bits=8), ["a", "b"], encoder={"dim": 0})
    v3 = full_bundle(tmp_path / "v3", seed=3)
    (v3 / "drift_reference").mkdir()
    (v3 / "drift_reference" / "frame.parquet").write_bytes(b"v3's reference")
    write_manifest(v3, FeatureSpec(bits=8), ["a", "b"], encoder={"dim": 0})
    assert link_unchanged(v3, verify_bundle(v1), "intent", 1) == [ENCODER_FILE, "tokenizer/vocab.txt"]
    stored_v3 = tmp_path / "v3-stored"  # what the registry holds of v3, its links completed from v1
    stored_v3.mkdir()
    for path in v3.rglob("*"):
        if path.is_file():
            (stored_v3 / path.relative_to(v3)).parent.mkdir(parents=True, exist_ok=True)
            (stored_v3 / path.relative_to(v3)).write_bytes(path.read_bytes())
    complete_links(stored_v3, v1)

    manifest = link_head(tmp_path / "v4", stored_v3, b"head four", "intent", 3)
    assert manifest.linked == {"model": "intent", "version": 1, "files": [ENCODER_FILE, "tokenizer/vocab.txt"]}
    assert (tmp_path / "v4" / "drift_reference" / "frame.parquet").read_bytes() == b"v3's reference"
    completed = complete_links(tmp_path / "v4", v1)
    assert completed.files["drift_reference/frame.parquet"] == verify_bundle(stored_v3).files[
        "drift_reference/frame.parquet"]


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


def test_a_retrain_with_an_unchanged_encoder_links_it_to_the_version_that_stores_it(tmp_path: Path) -> None:
    v1 = full_bundle(tmp_path / "v1")
    v2 = full_bundle(tmp_path / "v2", seed=2)
    assert link_unchanged(v2, read_manifest(v1), "intent", 1) == [ENCODER_FILE, "tokenizer/vocab.txt"]
    assert sorted(p.name for p in v2.iterdir()) == [HEAD_FILE, "manifest.json"]
    assert read_manifest(v2).linked == {"model": "intent", "version": 1, "files": [ENCODER_FILE, "tokenizer/vocab.txt"]}
    assert complete_links(v2, v1).files[ENCODER_FILE] == read_manifest(v1).files[ENCODER_FILE]

    # The champion is v2, which links to v1: a third retrain links to v1 as well.
    v3 = full_bundle(tmp_path / "v3", seed=3)
    assert link_unchanged(v3, read_manifest(v2), "intent", 2) and read_manifest(v3).linked_version == 1


def test_a_changed_encoder_is_stored_whole_and_the_next_retrain_links_to_it(tmp_path: Path) -> None:
    v1 = full_bundle(tmp_path / "v1")
    v2 = full_bundle(tmp_path / "v2", graph=b"fine-tuned graph", seed=2)
    assert link_unchanged(v2, read_manifest(v1), "intent", 1) == []
    assert verify_bundle(v2).linked == {}

    # v3 keeps v2's encoder: linked to v2, which stores it, not to v1, which holds only the same tokenizer.
    v3 = full_bundle(tmp_path / "v3", graph=b"fine-tuned graph", seed=3)
    assert link_unchanged(v3, read_manifest(v2), "intent", 2) == [ENCODER_FILE, "tokenizer/vocab.txt"]
    assert read_manifest(v3).linked_version == 2


def test_linked_files_come_from_a_local_bundle_only_where_its_manifest_names_the_same_bytes(tmp_path: Path) -> None:
    v1 = full_bundle(tmp_path / "v1")
    link_head(tmp_path / "v2", v1, b"head two", "intent", 1)
    other = full_bundle(tmp_path / "other", graph=b"another encoder")
    assert reuse_local_files(tmp_path / "v2", [tmp_path / "nowhere", other]) == [ENCODER_FILE]
    assert not (tmp_path / "v2" / ENCODER_FILE).exists(), "other bytes under the same name are not the same file"
    assert reuse_local_files(tmp_path / "v2", [v1]) == []
    assert verify_bundle(tmp_path / "v2").files[ENCODER_FILE] == read_manifest(v1).files[ENCODER_FILE]


def test_a_tokenizer_is_saved_the_same_whatever_its_last_call_was(tmp_path: Path) -> None:
    """Its saved JSON used to record the last call's padding and truncation, so an unchanged encoder was
    stored again under another sha256 (and serving saw two encoders)."""
    import hashlib

    from models.encoder import Encoder

    encoder = Encoder.tiny_random(seed=3)
    encoder.save_tokenizer(tmp_path / "fresh")
    encoder.encode(["set an alarm for seven", "what is the weather like in paris tomorrow"])
    encoder.save_tokenizer(tmp_path / "after")
    for name in sorted(p.name for p in (tmp_path / "fresh").iterdir()):
        digests = {hashlib.sha256((tmp_path / d / name).read_bytes()).hexdigest() for d in ("fresh", "after")}
        assert len(digests) == 1, name
