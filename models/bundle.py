"""The deployable bundle: compiled encoder, tokenizer, FTRL head and a manifest.

A bundle is one folder:

    encoder.onnx        the compiled (fused, INT8) sentence encoder
    tokenizer/          the tokenizer files the encoder was trained with
    head.npz            FTRL state and weights (numpy arrays, never pickle)
    drift_reference/    optional: held-out rows drift monitoring compares traffic with
    manifest.json       schema version, feature spec, classes, sha256 of every
                        file, metrics, lineage (parent version, offsets, ...)

Whoever loads a bundle checks every file against the manifest first, so a
truncated download or a swapped file is refused instead of served.

A head-only bundle (`link_head`) is what online learning registers every few
minutes: its own head.npz plus a manifest whose `linked` entry says which registry
version holds every other file. The manifest still lists their sha256, so once
`complete_links` has put the base version's files next to the head, the bundle
verifies exactly like a full one: the encoder is stored once, not per version.

>>> import tempfile
>>> from models.ftrl import FTRLProximal
>>> folder = Path(tempfile.mkdtemp())
>>> (folder / "encoder.onnx").write_bytes(b"graph")
5
>>> FTRLProximal(["a", "b"], 16).save(folder / "head.npz")
>>> manifest = write_manifest(folder, FeatureSpec(bits=8), ["a", "b"], encoder={"dim": 0})
>>> verify_bundle(folder).classes
('a', 'b')
>>> (folder / "encoder.onnx").write_bytes(b"GRAPH")
5
>>> verify_bundle(folder)
Traceback (most recent call last):
...
models.bundle.BundleError: encoder.onnx: sha256 mismatch (the file changed after the manifest was written)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from models.fallback import NEVER, Fallback
from models.features import FeatureSpec

SCHEMA_VERSION = 2  # 2 added `fallback`; schema 1 manifests load with every request answered
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.onnx"
TOKENIZER_DIR = "tokenizer"
HEAD_FILE = "head.npz"
DRIFT_REFERENCE_DIR = "drift_reference"  # optional: what drift monitoring compares traffic with


class BundleError(Exception):
    """A bundle is incomplete, altered or of an unknown schema."""


@dataclass(frozen=True)
class Manifest:
    classes: tuple[str, ...]
    spec: FeatureSpec
    files: dict[str, str]  # relative path -> sha256
    encoder: dict[str, Any]  # dim, max_length, quantization summary
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)  # parent_version, data hash, offsets, ...
    schema_version: int = SCHEMA_VERSION
    created_at: float = 0.0
    linked: dict[str, Any] = field(default_factory=dict)  # {"model", "version": N, "files"}: stored with N
    fallback: dict[str, Any] = field(default_factory=dict)  # Fallback.to_dict(); empty: never falls back

    @property
    def encoder_identity(self) -> str:
        """Equal for bundles whose encoder turns text into the same embeddings: same ONNX file, tokenizer and
        sequence length. Such bundles can share one loaded encoder."""
        files = {name: digest for name, digest in self.files.items()
                 if name == ENCODER_FILE or name.startswith(f"{TOKENIZER_DIR}/")}
        return json.dumps({"files": files, "max_length": self.encoder.get("max_length")}, sort_keys=True)

    @property
    def linked_version(self) -> int | None:
        return int(self.linked["version"]) if self.linked else None

    @property
    def linked_files(self) -> frozenset[str]:
        return frozenset(self.linked.get("files", ()))

    @property
    def fallback_policy(self) -> Fallback:
        return Fallback.from_dict(self.fallback) if self.fallback else NEVER

    def to_json(self) -> str:
        body = asdict(self)
        body["spec"] = self.spec.to_dict()
        body["classes"] = list(self.classes)
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        schema = body.get("schema_version")
        if schema not in READABLE_SCHEMAS:
            newer = isinstance(schema, int) and schema > SCHEMA_VERSION
            raise BundleError(f"manifest schema {schema!r} is not supported (this loopline reads "
                              f"{', '.join(map(str, READABLE_SCHEMAS))}): " +
                              ("the bundle was written by a newer loopline; upgrade loopline to load it" if newer
                               else "train a new version with `loopline train`"))
        body["schema_version"] = SCHEMA_VERSION  # upgraded in memory; written back as the current schema
        body["spec"] = FeatureSpec.from_dict(body["spec"])
        body["classes"] = tuple(body["classes"])
        return cls(**body)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _payload_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(
    folder: str | Path,
    spec: FeatureSpec,
    classes: Sequence[str],
    encoder: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> Manifest:
    """Hash every file in `folder` and write the manifest that vouches for them."""
    folder = Path(folder)
    for required in (ENCODER_FILE, HEAD_FILE):
        if not (folder / required).is_file():
            raise BundleError(f"{folder}: {required} is missing")
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in _payload_files(folder)}
    manifest = Manifest(tuple(classes), spec, files, dict(encoder),
                        {k: float(v) for k, v in (metrics or {}).items()}, dict(lineage or {}),
                        created_at=time.time())
    _write(folder, manifest)
    return manifest


def set_fallback(folder: str | Path, fallback: Fallback) -> Manifest:
    """Record the fallback threshold in the bundle's manifest (it is chosen on the compiled model's answers,
    so after the bundle is written)."""
    manifest = replace(read_manifest(folder), fallback=fallback.to_dict())
    _write(Path(folder), manifest)
    return manifest


def _write(folder: Path, manifest: Manifest) -> None:
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json())
    tmp.replace(folder / MANIFEST)


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST}; not a loopline bundle")
    try:
        return Manifest.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc


def verify_bundle(folder: str | Path, allow_links: bool = False) -> Manifest:
    """The manifest, after checking that every listed file exists with its sha256 and nothing is extra.

    With `allow_links`, files the manifest says are stored with another version may be absent
    (a head-only bundle before `complete_links`).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for required in (ENCODER_FILE, HEAD_FILE):
        if required not in manifest.files:
            raise BundleError(f"{required}: not listed in the manifest")
    present = {p.relative_to(folder).as_posix() for p in _payload_files(folder)}
    absent_ok = manifest.linked_files - present if allow_links else frozenset()
    missing = sorted(set(manifest.files) - present - absent_ok)
    if missing:
        hint = f" (stored with version {manifest.linked_version})" if missing[0] in manifest.linked_files else ""
        raise BundleError(f"{missing[0]}: missing from the bundle{hint}")
    for name, expected in manifest.files.items():
        if name in absent_ok:
            continue
        if sha256_file(folder / name) != expected:
            raise BundleError(f"{name}: sha256 mismatch (the file changed after the manifest was written)")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise BundleError(f"{extra[0]}: not listed in the manifest")
    return manifest


def link_head(out: str | Path, base: str | Path, head_bytes: bytes, model: str, base_version: int,
              metrics: Mapping[str, float] | None = None, lineage: Mapping[str, Any] | None = None) -> Manifest:
    """Write a head-only bundle to `out`: this head, and every other file of the bundle `base` (version
    `base_version` of registered model `model`) by reference. A link names one version, the one that stores
    the files: a base that links files passes its own reference on, and the files it stores itself (a
    retrain that linked its unchanged encoder keeps its own drift reference) are copied."""
    out, base_manifest = Path(out), verify_bundle(base, allow_links=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / HEAD_FILE).write_bytes(head_bytes)
    others = sorted(name for name in base_manifest.files if name != HEAD_FILE)
    if base_manifest.linked:
        shared = [name for name in others if name in base_manifest.linked_files]
        stored_with = base_manifest.linked_version
        for name in (name for name in others if name not in base_manifest.linked_files):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(base) / name, out / name)
    else:
        shared, stored_with = others, base_version
    files = {name: base_manifest.files[name] for name in others} | {HEAD_FILE: sha256_file(out / HEAD_FILE)}
    manifest = replace(base_manifest, files=files, metrics={k: float(v) for k, v in (metrics or {}).items()},
                       lineage=dict(lineage or {}), created_at=time.time(),
                       linked={"model": model, "version": stored_with, "files": shared})
    _write(out, manifest)
    return manifest


def link_unchanged(folder: str | Path, stored: Manifest, model: str, version: int) -> list[str]:
    """If the full bundle `folder` has the same encoder as registry version `version` (manifest `stored`),
    link the files it shares with the version that stores that encoder instead of keeping copies: an
    unchanged encoder is stored once, not per retrain. A changed encoder is kept whole (the tokenizer it
    could share is small). Returns the linked files, [] when the encoder changed."""
    folder = Path(folder)
    manifest = verify_bundle(folder)
    if manifest.linked or stored.files.get(ENCODER_FILE) != manifest.files[ENCODER_FILE]:
        return []
    # A link names one version: the one that holds the encoder, with the files stored alongside it there.
    if ENCODER_FILE in stored.linked_files:
        where, stored_there = stored.linked_version, stored.linked_files
    else:
        where, stored_there = version, frozenset(stored.files) - stored.linked_files
    shared = sorted(name for name, digest in manifest.files.items()
                    if name != HEAD_FILE and name in stored_there and stored.files.get(name) == digest)
    for name in shared:
        (folder / name).unlink()
    for empty in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(empty.iterdir()):
            empty.rmdir()
    _write(folder, replace(manifest, linked={"model": model, "version": where, "files": shared}))
    return shared


def check_linked_names(folder: str | Path, manifest: Manifest) -> None:
    """Refuse a manifest whose linked files are not listed files inside `folder` (a crafted `../` name must not
    be read, written or deleted)."""
    folder = Path(folder).resolve()
    for name in manifest.linked_files:
        if name not in manifest.files or Path(name).is_absolute() or not (folder / name).resolve().is_relative_to(
                folder):
            raise BundleError(f"{name}: a linked file must be a listed file inside the bundle")


def complete_links(folder: str | Path, source: str | Path) -> Manifest:
    """Copy the files a head-only bundle links to from `source` (the linked version's bundle), then verify."""
    folder, source = Path(folder), Path(source)
    manifest = verify_bundle(folder, allow_links=True)
    check_linked_names(folder, manifest)
    for name in sorted(manifest.linked_files):
        target = folder / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target)
    return verify_bundle(folder)


def reuse_local_files(folder: str | Path, candidates: Sequence[str | Path]) -> list[str]:
    """Copy the linked files a head-only bundle lacks from local bundles whose manifests list the same file with
    the same sha256 (the encoder a follower already holds need not cross the network again). Returns the
    linked files still missing. `complete_links` or `verify_bundle` afterwards checks every byte."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_linked_names(folder, manifest)
    wanted = {name: manifest.files.get(name) for name in sorted(manifest.linked_files) if not (folder / name).exists()}
    for candidate in map(Path, candidates):
        if not wanted:
            break
        try:
            theirs = read_manifest(candidate)
        except BundleError:
            continue  # a folder that is no bundle (or no longer one) offers nothing
        for name, digest in list(wanted.items()):
            source, target = candidate / name, folder / name
            if digest is None or theirs.files.get(name) != digest or not source.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            del wanted[name]
    return sorted(wanted)
