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
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.features import FeatureSpec

SCHEMA_VERSION = 1
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

    def to_json(self) -> str:
        body = asdict(self)
        body["spec"] = self.spec.to_dict()
        body["classes"] = list(self.classes)
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        if body.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(f"manifest schema {body.get('schema_version')!r} is not supported "
                              f"(expected {SCHEMA_VERSION})")
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
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json())
    tmp.replace(folder / MANIFEST)
    return manifest


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST}; not a loopline bundle")
    try:
        return Manifest.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc


def verify_bundle(folder: str | Path) -> Manifest:
    """The manifest, after checking that every listed file exists with its sha256 and nothing is extra."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for required in (ENCODER_FILE, HEAD_FILE):
        if required not in manifest.files:
            raise BundleError(f"{required}: not listed in the manifest")
    present = {p.relative_to(folder).as_posix() for p in _payload_files(folder)}
    missing = sorted(set(manifest.files) - present)
    if missing:
        raise BundleError(f"{missing[0]}: missing from the bundle")
    for name, expected in manifest.files.items():
        if sha256_file(folder / name) != expected:
            raise BundleError(f"{name}: sha256 mismatch (the file changed after the manifest was written)")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise BundleError(f"{extra[0]}: not listed in the manifest")
    return manifest
