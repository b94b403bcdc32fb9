"""Checkpoints: the learner, the join store and the consumed offsets, written together or not at all.

Each checkpoint is a folder `ckpt-<number>` holding its files and `state.json`,
which records the sha256 of every file. It is written under a temporary name, each
file fsynced, then renamed into place and the parent folder fsynced, so a crash at
any point leaves either the previous checkpoints only or the new one complete. The
last `keep` checkpoints stay: a checkpoint that fails verification (a torn disk
write, a flipped byte) is reported and the one before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
PREFIX = "ckpt-"


class CheckpointError(Exception):
    """A checkpoint folder that cannot be trusted."""


@dataclass(frozen=True)
class Checkpoint:
    number: int
    state: dict[str, Any]  # JSON: offsets, watermark, sequence numbers, metrics
    # e.g. head.npz, join.npz. A callable gives a file's bytes when it is written: a copy of the state taken
    # at the checkpoint, serialized by the writer instead of by the loop. Restored checkpoints hold bytes.
    files: dict[str, bytes | Callable[[], bytes]] = field(default_factory=dict)

    def data(self, name: str) -> bytes:
        value = self.files[name]
        return value if isinstance(value, bytes) else value()


@dataclass(frozen=True)
class Restored:
    checkpoint: Checkpoint | None
    problems: list[str]  # checkpoints skipped and why, newest first


class CheckpointStore:
    """Atomic checkpoint folders under `folder`, newest last."""

    def __init__(self, folder: Path, keep: int = 3) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 checkpoints, so a damaged newest one has a fallback")
        self.folder, self.keep = Path(folder), keep

    def save(self, checkpoint: Checkpoint) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{PREFIX}{checkpoint.number:012d}"
        tmp = self.folder / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        digests = {name: _write(tmp / name, checkpoint.data(name)) for name in checkpoint.files}
        _write(tmp / STATE_FILE, json.dumps({"number": checkpoint.number, "sha256": digests,
                                             "state": checkpoint.state}).encode())
        _fsync_dir(tmp)
        if final.exists():  # a replay after a crash reached the same number again: same content
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(self.folder)
        self._prune()
        return final

    def restore(self) -> Restored:
        """The newest checkpoint that verifies; every one skipped on the way is reported."""
        problems: list[str] = []
        for path in reversed(self._folders()):
            try:
                return Restored(read(path), problems)
            except CheckpointError as exc:
                log.error("checkpoint %s skipped: %s", path.name, exc)
                problems.append(f"{path.name}: {exc}")
        return Restored(None, problems)

    def _folders(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def _prune(self) -> None:
        for path in self._folders()[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for tmp in self.folder.glob(".tmp-*"):  # left by a crash mid-write
            shutil.rmtree(tmp, ignore_errors=True)


class CheckpointWriter:
    """Writes checkpoints on a thread of its own, one at a time. Hashing, writing and fsync release the GIL,
    so the loop learns on while a checkpoint of tens of megabytes reaches the disk."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._writing: Future[Path] | None = None

    @property
    def busy(self) -> bool:
        return self._writing is not None

    def start(self, checkpoint: Checkpoint) -> None:
        """Write `checkpoint`; its state is copied now, as it is (its files are bytes, or callables that do
        not read what the loop goes on changing)."""
        if self._writing is not None:
            raise RuntimeError("the previous checkpoint is still being written")
        frozen = Checkpoint(checkpoint.number, json.loads(json.dumps(checkpoint.state)), checkpoint.files)
        self._writing = self._pool.submit(self.store.save, frozen)

    def written(self, wait: bool = False) -> Path | None:
        """The folder of the checkpoint being written, once it is complete (raises what writing it raised);
        None while it is still being written (unless `wait`) or when none is."""
        if self._writing is None or (not wait and not self._writing.done()):
            return None
        future, self._writing = self._writing, None
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def read(path: Path) -> Checkpoint:
    """Load and verify one checkpoint folder."""
    try:
        meta = json.loads((path / STATE_FILE).read_bytes())
        expected: dict[str, str] = meta["sha256"]
        files: dict[str, bytes | Callable[[], bytes]] = {}
        for name, digest in expected.items():
            data = (path / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise CheckpointError(f"{name}: sha256 mismatch")
            files[name] = data
        return Checkpoint(int(meta["number"]), meta["state"], files)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"unreadable: {exc}") from exc


def _write(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
