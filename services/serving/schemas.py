"""Request and response bodies of the serving API (unknown fields are refused)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(Strict):
    text: str = Field(description="The user's request, e.g. 'turn on wifi'.")
    user_id: str | None = Field(None, max_length=128, description="Looks up per-user features in Feast.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty or whitespace")
        return value


class BatchPredictRequest(Strict):
    items: list[PredictRequest] = Field(min_length=1)


class IntentProbability(BaseModel):
    intent: str
    probability: float


class Prediction(BaseModel):
    prediction_id: str = Field(description="Quote it in feedback events.")
    intent: str
    probabilities: list[IntentProbability] = Field(description="Top-k intents, most likely first.")
    model_version: str = Field(description="'N' for registry version N, 'N+ftrl.K' after K online updates.")


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class CurrentModel(BaseModel):
    version: str
    base_version: int
    online_sequence: int
    loaded_at: float
    lineage: dict[str, Any]


class RollbackRequest(Strict):
    version: int = Field(ge=1)


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    broker: str = Field(description="ok, unreachable, or disabled")
    feature_store: str = Field(description="ok, loading, unreachable, or disabled (no store in the state folder)")
