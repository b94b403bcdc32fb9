"""Request and response bodies of the serving API (unknown fields are refused)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(Strict):
    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"text": "turn on wifi", "user_id": "u00042"}]})

    text: str = Field(description="The user's request, e.g. 'turn on wifi'.")
    user_id: str | None = Field(None, max_length=128, description="Looks up per-user features in Feast.")

    @field_validator("text")
    @classmethod
    def _usable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty or whitespace")
        # JSON may escape a lone surrogate ("\ud800"), which no encoding can write: the tokenizer would fail
        # the whole batch the request shares with others.
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("text holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode") from None
        return value


class BatchPredictRequest(Strict):
    items: list[PredictRequest] = Field(min_length=1, description="Answered in order, each with its own id.")


class IntentProbability(BaseModel):
    intent: str
    probability: float = Field(ge=0.0, le=1.0)


class Prediction(BaseModel):
    prediction_id: str = Field(description="Quote it in feedback events.")
    intent: str = Field(description="The most likely intent.")
    fallback: bool = Field(description="True when the model is unsure (the top probability is under the threshold "
                           "chosen at training for the target precision) or the top intent is the out-of-scope "
                           "class: answer 'I did not understand' rather than act on `intent`.")
    probabilities: list[IntentProbability] = Field(description="Top-k intents, most likely first.")
    model_version: str = Field(description="'N' for registry version N, 'N+ftrl.K' after K online updates.")


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class CurrentModel(BaseModel):
    version: str = Field(description="What predictions report as model_version.")
    base_version: int = Field(description="The MLflow registry version under the online updates.")
    online_sequence: int = Field(description="Head deltas from model-updates applied on top of it.")
    loaded_at: float = Field(description="Unix seconds of the last swap (full load or delta).")
    lineage: dict[str, Any] = Field(description="From the bundle manifest: parent version, data, offsets.")
    classes: list[str] = Field(description="The intents this model answers with, from its training data.")
    fallback: dict[str, Any] = Field(description="When it answers with fallback: threshold, out-of-scope class, "
                                     "and the precision and coverage measured when the threshold was chosen.")
    held_version: int | None = Field(None, description="A new champion retrained on collected feedback, loaded "
                                     "and waiting for its catch-up delta before it answers (LOOPLINE_CATCH_UP_WAIT_S "
                                     "at most); null when none waits.")


class RollbackRequest(Strict):
    version: int = Field(ge=1, description="A registered version to serve until the champion alias moves.")


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    updates_replayed: bool = Field(description="model-updates read to its end since start (or 30 s passed): "
                                   "before that a restarted replica would answer without the latest deltas")
    broker: str = Field(description="ok, unreachable, or disabled")
    feature_store: str = Field(description="ok, loading, unreachable, or disabled (no store in the state folder)")
