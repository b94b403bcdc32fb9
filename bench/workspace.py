"""A bench run's working folder: the one given (kept afterwards), or a temporary one (removed)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def workspace(work: Path | None, bench: str) -> Iterator[Path]:
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work.resolve()
        return
    with tempfile.TemporaryDirectory(prefix=f"loopline-bench-{bench}-") as tmp:
        yield Path(tmp)
