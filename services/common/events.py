"""Event schemas on the Kafka topics; every event has `schema_version` and a unique `event_id`."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Literal

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


class LoggedFeatures(BaseModel):
    """The model input serving computed: hashed sparse features and the encoder's embedding.

    The embedding travels as base64 of little-endian float32: as a JSON list its 384
    numbers were two thirds of the event's bytes and most of the feedback service's
    parsing time, and float32 is what learning keeps of it anyway.
    """

    model_config = ConfigDict(extra="forbid")

    indices: list[int]
    values: list[float]
    embedding: str | None = Field(description="base64 of the embedding as little-endian float32, or null")

    @classmethod
    def of(cls, indices: np.ndarray, values: np.ndarray, embedding: np.ndarray | None) -> LoggedFeatures:
        packed = None if embedding is None else base64.b64encode(np.asarray(embedding, "<f4").tobytes()).decode()
        return cls(indices=indices.tolist(), values=values.tolist(), embedding=packed)

    def embedding_array(self) -> np.ndarray | None:
        """The embedding as float32; ValueError if it is not base64 of whole float32 values."""
        if self.embedding is None:
            return None
        try:
            raw = binascii.a2b_base64(self.embedding, strict_mode=True)
        except binascii.Error as exc:
            raise ValueError(f"features.embedding is not base64: {exc}") from None
        if len(raw) % 4:
            raise ValueError(f"features.embedding has {len(raw)} bytes, not whole float32 values")
        return np.frombuffer(raw, dtype="<f4")  # read-only, no copy: nothing writes to logged inputs


class PredictionEvent(Event):
    """On `predictions`, key `prediction_id`: what the model saw and said, so learning uses exactly that."""

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
                           "already_labeled", "too_large", "stale_model", "far_future"]


class DeadLetter(Event):
    """On `feedback-dlq`: an event that could not be used, the reason, and the event itself."""

    reason: DeadLetterReason
    detail: str = Field(description="What exactly was wrong, for a person to read.")
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="The original bytes, base64, so nothing is lost.")
