"""From Kafka records to join-store inputs, or to dead letters that say exactly why not.

Dead letters carry the original bytes (base64) and an event id derived from where the
record was (topic, partition, offset, reason), so a replay after a restart produces
the same dead letter again and consumers of `feedback-dlq` can drop the repeat.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import numpy as np
from pydantic import Field, ValidationError

from services.common.events import FEEDBACK, PREDICTIONS, DeadLetter, FeedbackEvent, PredictionEvent
from services.feedback.join import Rejected, StoredFeedback, StoredPrediction


class ReceivedFeedback(FeedbackEvent):
    """A feedback event as consumed: its `event_id` must be there. A default made up on reading would
    differ in every replay, and duplicates and the held-back share are decided by it."""

    event_id: str = Field(min_length=1, max_length=128)


@dataclass(frozen=True)
class Record:
    """One consumed record, client-independent."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    ts: float  # record timestamp, seconds


def dead_letter(record: Record, reason: str, detail: str, label: str | None = None) -> DeadLetter:
    digest = hashlib.sha256(f"{record.topic}:{record.partition}:{record.offset}:{reason}".encode()).hexdigest()
    return DeadLetter(event_id=digest[:32], reason=reason, detail=detail[:2000],
                      topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
                      value=base64.b64encode(record.value).decode(), label=label)


def rejected_letter(rejected: Rejected) -> DeadLetter:
    f = rejected.feedback
    return dead_letter(Record(FEEDBACK, f.partition, f.offset, f.key, f.value, f.ts), rejected.reason,
                       rejected.detail, f.label)


def _schema_problem(record: Record, exc: ValidationError) -> DeadLetter:
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        return dead_letter(record, "invalid_json", errors[0]["msg"])
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in errors[:5])
    return dead_letter(record, "wrong_schema", detail)


def parse_feedback(record: Record, max_bytes: int) -> StoredFeedback | DeadLetter:
    """Any label passes here: feedback naming an intent the model lacks is joined and kept in the examples
    table (the next retrain may learn it); the service dead-letters it for online learning after the join."""
    if len(record.value) > max_bytes:
        return dead_letter(record, "too_large", f"{len(record.value)} bytes, the limit is {max_bytes}")
    try:
        event = ReceivedFeedback.model_validate_json(record.value)
    except ValidationError as exc:
        return _schema_problem(record, exc)
    return StoredFeedback(event.event_id, event.prediction_id, event.label, record.ts, record.partition,
                          record.offset, record.key, record.value)


def far_future(record: Record, now: float, max_skew_s: float) -> DeadLetter | None:
    """A dead letter for a record stamped more than `max_skew_s` ahead of the clock `now`, else None.

    Judged against the wall clock, not against the event time the partitions have reached: a bound
    on event time moves with every record it lets through, so records each just inside it would
    walk event time ahead as far as a producer likes, and honest traffic after a pause longer than
    the bound (or a partition catching up behind the others) would be refused. A replay after a
    crash reads with a later clock, so it can only take a record the first run refused, never
    refuse one it took: what the first run learned is learned the same way again, and a record it
    refused was stamped beyond the bound when first read, after the windows released by then.
    """
    if record.ts <= now + max_skew_s:
        return None
    return dead_letter(record, "far_future", f"record timestamp {record.ts:.3f} is {record.ts - now:.0f} s ahead "
                       f"of the service's clock (LOOPLINE_MAX_CLOCK_SKEW_S is {max_skew_s:g})")


def parse_prediction(record: Record, sparse_dim: int, dense_dim: int, max_bytes: int
                     ) -> StoredPrediction | DeadLetter:
    if len(record.value) > max_bytes:
        return dead_letter(record, "too_large", f"{len(record.value)} bytes, the limit is {max_bytes}")
    try:
        event = PredictionEvent.model_validate_json(record.value)
    except ValidationError as exc:
        return _schema_problem(record, exc)
    try:
        indices, values, embedding = event.features.arrays()
    except ValueError as exc:
        return dead_letter(record, "wrong_schema", str(exc))
    # Sums are finite only if every term is (or overflow, which is no input to learn from either).
    if not (np.isfinite(values.sum()) and (embedding is None or np.isfinite(embedding.sum()))):
        return dead_letter(record, "wrong_schema", "features.values or features.embedding are not all finite")
    if len(indices) and not (indices.min() >= 0 and indices.max() < sparse_dim):
        return dead_letter(record, "wrong_schema", f"features.indices outside 0..{sparse_dim - 1}")
    if dense_dim and (embedding is None or len(embedding) != dense_dim):
        return dead_letter(record, "wrong_schema", f"features.embedding must have {dense_dim} values")
    return StoredPrediction(
        event.prediction_id, record.ts, event.model_version, event.user_id, event.text, event.intent,
        max(event.probabilities.values(), default=0.0), indices.astype(np.int64), values, embedding,
        event.user)


def parse(record: Record, sparse_dim: int, dense_dim: int, max_bytes: int, max_prediction_bytes: int
          ) -> StoredPrediction | StoredFeedback | DeadLetter:
    """`max_bytes` limits feedback events, `max_prediction_bytes` prediction events (which carry features)."""
    if record.topic == PREDICTIONS:
        return parse_prediction(record, sparse_dim, dense_dim, max_prediction_bytes)
    if record.topic == FEEDBACK:
        return parse_feedback(record, max_bytes)
    return dead_letter(record, "wrong_schema", f"unexpected topic {record.topic}")

