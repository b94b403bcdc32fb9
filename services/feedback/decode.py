"""Decoding a poll's records: typed, validating msgspec decoders, and the numeric checks once per batch.

The structs mirror the event models in `services/common/events.py` field for field
(the pydantic models stay the producers' schema and the documentation): unknown
fields are refused, lengths bounded the same way, and the feature arrays arrive
as base64 `bytes`, which msgspec decodes itself. Validation costs about a quarter
of the pydantic path. The checks every prediction needs (finite values and
embedding, indices in range) run over the concatenated arrays of the batch; the
per-record arrays are still made from each record's own bytes, so a prediction
kept for a late feedback pins only its own buffers, not its batch's.

Malformed JSON (including bytes that are not UTF-8) is `invalid_json`; JSON of the
wrong shape is `wrong_schema`, with msgspec's message naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
import numpy as np

from services.common.events import FEEDBACK, PREDICTIONS, DeadLetter
from services.feedback.intake import Record, dead_letter
from services.feedback.join import StoredFeedback, StoredPrediction

EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _Features(msgspec.Struct, forbid_unknown_fields=True):
    indices: bytes  # little-endian int32
    values: bytes  # little-endian float32
    embedding: bytes | None  # little-endian float32


class _Prediction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    schema_version: Literal[2] = 2
    event_id: str = ""
    time: float = 0.0
    prediction_id: ShortText
    model_version: str
    user_id: str | None = None
    user: dict[str, str] | None = None
    text: str
    intent: str
    features: _Features
    probabilities: dict[str, float]


class _Feedback(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    schema_version: int = 1
    event_id: EventId  # required when consumed: duplicates and the held-back share are decided by it
    time: float = 0.0
    prediction_id: ShortText
    label: ShortText
    source: Annotated[str, msgspec.Meta(max_length=64)] = "app"


# strict=False: numbers sent as strings are taken, as the pydantic models take them.
PREDICTION_DECODER = msgspec.json.Decoder(_Prediction, strict=False)
FEEDBACK_DECODER = msgspec.json.Decoder(_Feedback, strict=False)


def _decode_problem(record: Record, exc: msgspec.DecodeError) -> DeadLetter:
    reason = "wrong_schema" if isinstance(exc, msgspec.ValidationError) else "invalid_json"
    return dead_letter(record, reason, str(exc))


def decode_feedback(record: Record, max_bytes: int) -> StoredFeedback | DeadLetter:
    """Any label passes here: feedback naming an intent the model lacks is joined and kept in the examples
    table (the next retrain may learn it); the service dead-letters it for online learning after the join."""
    if len(record.value) > max_bytes:
        return dead_letter(record, "too_large", f"{len(record.value)} bytes, the limit is {max_bytes}")
    try:
        event = FEEDBACK_DECODER.decode(record.value)
    except msgspec.DecodeError as exc:
        return _decode_problem(record, exc)
    return StoredFeedback(event.event_id, event.prediction_id, event.label, record.ts, record.partition,
                          record.offset, record.key, record.value)


def _shape_problem(features: _Features, dense_dim: int) -> str | None:
    """What is wrong with the arrays' byte lengths, if anything."""
    for name, raw in (("indices", features.indices), ("values", features.values), ("embedding", features.embedding)):
        if raw is not None and len(raw) % 4:
            return f"features.{name} has {len(raw)} bytes, not whole 4-byte values"
    if len(features.indices) != len(features.values):
        return (f"features.indices and features.values differ in length ({len(features.indices) // 4} and "
                f"{len(features.values) // 4})")
    if dense_dim and (features.embedding is None or len(features.embedding) != 4 * dense_dim):
        return f"features.embedding must have {dense_dim} values"
    return None


def _flagged_segments(flags: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """For consecutive segments of `flags` with these lengths: does each hold a True?"""
    counts = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    ends = np.cumsum(lengths)
    return counts[ends] - counts[ends - lengths] > 0


def _not_finite(array: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """For consecutive segments of `array`: is its sum not finite? Sums are finite only if every term is
    (or overflow, which is no input to learn from either), as each record's own sum was checked before."""
    bad = np.zeros(len(lengths), dtype=bool)
    nonempty = lengths > 0
    if nonempty.any():
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        with np.errstate(over="ignore", invalid="ignore"):
            bad[nonempty] = ~np.isfinite(np.add.reduceat(array, starts))
    return bad


def decode_predictions(records: Sequence[Record], sparse_dim: int, dense_dim: int, max_bytes: int
                       ) -> list[StoredPrediction | DeadLetter]:
    """Every record of a batch, in order, as a prediction to join or a dead letter that says why not."""
    out: list[StoredPrediction | DeadLetter | None] = [None] * len(records)
    good: list[tuple[int, _Prediction]] = []
    for i, record in enumerate(records):
        if len(record.value) > max_bytes:
            out[i] = dead_letter(record, "too_large", f"{len(record.value)} bytes, the limit is {max_bytes}")
            continue
        try:
            event = PREDICTION_DECODER.decode(record.value)
        except msgspec.DecodeError as exc:
            out[i] = _decode_problem(record, exc)
            continue
        problem = _shape_problem(event.features, dense_dim)
        if problem is not None:
            out[i] = dead_letter(record, "wrong_schema", problem)
            continue
        good.append((i, event))
    for (i, event), problem in zip(good, _array_problems([e.features for _, e in good], sparse_dim), strict=True):
        record = records[i]
        if problem is not None:
            out[i] = dead_letter(record, "wrong_schema", problem)
            continue
        f = event.features
        out[i] = StoredPrediction(
            event.prediction_id, record.ts, event.model_version, event.user_id, event.text, event.intent,
            max(event.probabilities.values(), default=0.0),
            np.frombuffer(f.indices, "<i4").astype(np.int64), np.frombuffer(f.values, "<f4"),
            None if f.embedding is None else np.frombuffer(f.embedding, "<f4"), event.user)
    return out  # type: ignore[return-value]  # every slot is filled


def _array_problems(features: Sequence[_Features], sparse_dim: int) -> list[str | None]:
    """Per prediction: non-finite values or embedding, or indices outside 0..sparse_dim-1, checked once over
    the whole batch."""
    problems: list[str | None] = [None] * len(features)
    if not features:
        return problems
    value_lengths = np.array([len(f.values) // 4 for f in features], dtype=np.int64)
    values = np.frombuffer(b"".join(f.values for f in features), "<f4")
    indices = np.frombuffer(b"".join(f.indices for f in features), "<i4")
    embedding_lengths = np.array([len(f.embedding or b"") // 4 for f in features], dtype=np.int64)
    embeddings = np.frombuffer(b"".join(f.embedding or b"" for f in features), "<f4")
    bad_values = _not_finite(values, value_lengths)
    bad_embedding = _not_finite(embeddings, embedding_lengths)
    out_of_range = _flagged_segments((indices < 0) | (indices >= sparse_dim), value_lengths)
    for n in np.flatnonzero(bad_values | bad_embedding | out_of_range):
        problems[n] = ("features.values or features.embedding are not all finite"
                       if bad_values[n] or bad_embedding[n] else f"features.indices outside 0..{sparse_dim - 1}")
    return problems


def decode_batch(records: Sequence[Record], sparse_dim: int, dense_dim: int, max_bytes: int,
                 max_prediction_bytes: int) -> list[StoredPrediction | StoredFeedback | DeadLetter]:
    """A poll's records, in order. `max_bytes` limits feedback events, `max_prediction_bytes` prediction
    events (which carry features)."""
    out: list[StoredPrediction | StoredFeedback | DeadLetter | None] = [None] * len(records)
    at_prediction: list[int] = []
    for i, record in enumerate(records):
        if record.topic == PREDICTIONS:
            at_prediction.append(i)
        elif record.topic == FEEDBACK:
            out[i] = decode_feedback(record, max_bytes)
        else:
            out[i] = dead_letter(record, "wrong_schema", f"unexpected topic {record.topic}")
    predictions = decode_predictions([records[i] for i in at_prediction], sparse_dim, dense_dim,
                                     max_prediction_bytes)
    for i, item in zip(at_prediction, predictions, strict=True):
        out[i] = item
    return out  # type: ignore[return-value]  # every slot is filled
