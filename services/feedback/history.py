"""What `model-updates` already holds for a version: the deltas published on it before this start.

A restart replays the topics and makes the same deltas again (serving skips them).
But a service whose state folder was lost, or that replays a different history,
makes different deltas under the same numbers: serving, which holds the earlier
ones, would skip them as already applied and end up with a mix of two heads.
So the service compares each delta it makes with the published one of the same
number, and at the first difference publishes `sync_delta` instead: the weights of
its own head on every coordinate either history touched, numbered after the last
published delta, after which serving and the service agree again.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pydantic import ValidationError

from models.ftrl import FTRLProximal, HeadDelta
from models.serving_head import ServingHead
from services.common.events import MODEL_UPDATES, ModelUpdate

log = logging.getLogger(__name__)


def published_deltas(servers: str, model: str, base_version: int, quiet_s: float = 2.0, first_s: float = 15.0,
                     timeout_s: float = 120.0) -> list[ModelUpdate]:
    """Every delta on `base_version` in the topic, read from the beginning until it is quiet for `quiet_s`
    after a record, or for `first_s` if none comes (joining and the first fetch take seconds on a busy
    broker; the broker's high watermark is not trusted: Tansu has reported wrong ones)."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"loopline-history-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.message.max.bytes": 64 * 1024 * 1024})
    found: list[ModelUpdate] = []
    try:
        topic = consumer.list_topics(MODEL_UPDATES, timeout=10).topics.get(MODEL_UPDATES)
        if topic is None or topic.error is not None or not topic.partitions:
            return []
        consumer.assign([TopicPartition(MODEL_UPDATES, p, OFFSET_BEGINNING) for p in topic.partitions])
        deadline, quiet_since, wait = time.monotonic() + timeout_s, time.monotonic(), first_s
        while time.monotonic() - quiet_since < wait and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            quiet_since, wait = time.monotonic(), quiet_s
            try:
                update = ModelUpdate.model_validate_json(message.value() or b"")
            except ValidationError:
                continue
            if update.model == model and update.kind == "delta" and update.base_version == base_version:
                found.append(update)
    finally:
        consumer.close()
    return sorted(found, key=lambda u: u.sequence)


def decode(update: ModelUpdate) -> HeadDelta:
    return HeadDelta.from_bytes(base64.b64decode(update.delta or ""))


def same_delta(a: HeadDelta, b: HeadDelta) -> bool:
    """Equal contents (npz bytes are not: the zip entries carry timestamps)."""
    if a.dense_weights is None or b.dense_weights is None:
        dense_equal = a.dense_weights is None and b.dense_weights is None
    else:
        dense_equal = np.array_equal(a.dense_weights, b.dense_weights)
    return (a.classes == b.classes and np.array_equal(a.rows, b.rows)
            and np.array_equal(a.sparse_weights, b.sparse_weights) and dense_equal)


def sync_delta(head: ServingHead, base: FTRLProximal, published: list[ModelUpdate]) -> HeadDelta:
    """`head`'s weights on every coordinate that differs from `base` or that a `published` delta set."""
    rows = [decode(u).rows for u in published]
    rows.append(np.flatnonzero(np.any(head.w_sparse != base.w_sparse, axis=1)))
    touched = np.unique(np.concatenate(rows)).astype(np.int64)
    return HeadDelta(head.classes, touched, head.w_sparse[touched].copy(), head.w_dense.copy())
