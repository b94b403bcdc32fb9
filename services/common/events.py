"""Event schemas on the Kafka topics; every event has `schema_version` and a unique `event_id`."""

from __future__ import annotations

import time
import uuid
from typing import Literal

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
