"""Event schemas on the Kafka topics; every event has `schema_version` and a unique `event_id`."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
MODEL_UPDATES = "model-updates"


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: float = Field(default_factory=time.time, description="Unix seconds when the event was made.")


class ModelUpdate(Event):
    """A new model for serving: a full registry version or a head delta on top of one."""

    model: str
    kind: Literal["full", "delta"]
    version: str = Field(description="What serving reports: '3' for a full version, '3+ftrl.7' for a delta.")
    base_version: int = Field(description="The registry version this update starts from.")
    sequence: int = Field(0, ge=0, description="Online update number on top of base_version.")
    uri: str | None = Field(None, description="models:/name/version for a full version.")
    delta: str | None = Field(None, description="Base64 HeadDelta bytes for a delta update.")
    window_end: float | None = Field(None, description="For a delta: the event-time end (unix seconds) of the "
                                     "update window it learned; feedback keyed before it is in this head.")


PREDICTIONS = "predictions"
FEEDBACK = "feedback"
FEEDBACK_DLQ = "feedback-dlq"


PREDICTION_SCHEMA_VERSION: Final = 2  # 2: features as base64 arrays (1 had JSON number lists)


def _pack(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype).tobytes()).decode()


def _unpack(field: str, text: str, dtype: str) -> np.ndarray:
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"features.{field} is not base64: {exc}") from None
    if len(raw) % 4:
        raise ValueError(f"features.{field} has {len(raw)} bytes, not whole 4-byte values")
    return np.frombuffer(raw, dtype=dtype)  # read-only, no copy: nothing writes to logged inputs


class LoggedFeatures(BaseModel):
    """The model input serving computed: hashed sparse features and the encoder's embedding.

    Each array travels as base64 of little-endian 4-byte values (indices int32, values
    and embedding float32): as JSON number lists they were most of an event's bytes,
    most of serving's encoding and of the feedback service's parsing time, and float32
    is what learning keeps of them anyway.
    """

    model_config = ConfigDict(extra="forbid")

    indices: str = Field(description="base64 of the hashed feature indices as little-endian int32")
    values: str = Field(description="base64 of the feature values as little-endian float32")
    embedding: str | None = Field(description="base64 of the embedding as little-endian float32, or null")

    @classmethod
    def of(cls, indices: np.ndarray, values: np.ndarray, embedding: np.ndarray | None) -> LoggedFeatures:
        return cls(indices=_pack(indices, "<i4"), values=_pack(values, "<f4"),
                   embedding=None if embedding is None else _pack(embedding, "<f4"))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(indices int32, values float32, embedding float32 or None); ValueError if a field is not
        base64 of whole 4-byte values or indices and values differ in length."""
        indices, values = _unpack("indices", self.indices, "<i4"), _unpack("values", self.values, "<f4")
        if len(indices) != len(values):
            raise ValueError(f"features.indices and features.values differ in length ({len(indices)} and "
                             f"{len(values)})")
        embedding = None if self.embedding is None else _unpack("embedding", self.embedding, "<f4")
        return indices, values, embedding


class PredictionEvent(Event):
    """On `predictions`, key `prediction_id`: what the model saw and said, so learning uses exactly that."""

    schema_version: Literal[2] = PREDICTION_SCHEMA_VERSION
    prediction_id: str = Field(min_length=1, max_length=64)
    model_version: str
    user_id: str | None = None
    user: dict[str, str] | None = Field(None, description="The user features the model was given.")
    text: str
    intent: str
    features: LoggedFeatures
    probabilities: dict[str, float]


class FeedbackEvent(Event):
    """On `feedback`, key `prediction_id`: the intent the user meant for an earlier prediction."""

    prediction_id: str = Field(min_length=1, max_length=64, description="From the /v1/predict response.")
    label: str = Field(min_length=1, max_length=64, description="The intent the user meant.")
    source: str = Field("app", max_length=64, description="Where it came from, e.g. correction, confirmation.")


DeadLetterReason = Literal["invalid_json", "wrong_schema", "unknown_label", "duplicate", "unmatched",
                           "already_labeled", "too_large", "stale_model", "far_future",
                           "untrusted_user", "repeated_correction"]
# Valid feedback, joined and judged, that per-user trust chose not to learn: every feedback event the service
# judged was either learned (progressive examples) or dead-lettered with one of these.
WITHHELD_REASONS: tuple[DeadLetterReason, ...] = ("untrusted_user", "repeated_correction")


class DeadLetter(Event):
    """On `feedback-dlq`: an event that could not be used, the reason, and the event itself."""

    reason: DeadLetterReason
    detail: str = Field(description="What exactly was wrong, for a person to read.")
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="The original bytes, base64, so nothing is lost.")
    label: str | None = Field(None, max_length=64, description="The label a valid feedback event carried "
                              "(for unknown_label: the intent someone asked for that the model lacks).")
