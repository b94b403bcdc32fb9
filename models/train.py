"""Offline training of the FTRL head on embeddings plus hashed text and user features."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.features import FeatureSpec, hash_batch
from models.ftrl import Batch, FTRLParams, FTRLProximal

Progress = Callable[[int], None]


@dataclass(frozen=True)
class HeadConfig:
    """How the head is trained offline."""

    epochs: int = 3
    batch_size: int = 32
    seed: int = 0
    params: FTRLParams = field(default_factory=FTRLParams)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")


def user_records(
    user_ids: Sequence[str] | None, users: pd.DataFrame | None
) -> list[Mapping[str, Any] | None] | None:
    """Per-row user attributes from the user table; unknown users get none."""
    if user_ids is None or users is None:
        return None
    table = users.set_index("user_id").to_dict(orient="index")
    return [table.get(u) for u in user_ids]


def featurize(
    texts: Sequence[str],
    embeddings: np.ndarray | None,
    spec: FeatureSpec,
    users: Sequence[Mapping[str, Any] | None] | None = None,
) -> Batch:
    """Hashed text and user features plus the dense embedding, as the head consumes them."""
    return Batch(hash_batch(texts, users, spec), embeddings)


def train_head(
    batch: Batch,
    labels: Sequence[str],
    classes: Sequence[str],
    config: HeadConfig,
    on_batch: Progress | None = None,
) -> FTRLProximal:
    """Several shuffled passes of `learn_many` over mini-batches."""
    dense_dim = 0 if batch.dense is None else batch.dense.shape[1]
    model = FTRLProximal(classes, batch.sparse.shape[1], dense_dim, config.params)
    y = np.fromiter((model.class_index[v] for v in labels), np.int64, len(labels))
    rng = np.random.default_rng(config.seed)
    for _ in range(config.epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            model.learn_many(batch.take(idx), y[idx])
            if on_batch is not None:
                on_batch(len(idx))
    return model
