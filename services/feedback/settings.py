"""Feedback service settings, from `LOOPLINE_*` environment variables (plus the shared ones)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import CommonSettings


class FeedbackSettings(CommonSettings):
    """How the feedback service joins, learns, gates, checkpoints and watches drift."""

    group_id: str = Field("loopline-feedback", description="Consumer group over predictions and feedback.")
    update_interval_s: float = Field(5.0, ge=0.2, le=3600.0, description="Event-time length of an update window.")
    lateness_s: float = Field(0.25, ge=0.0, description="How far records may arrive out of time order.")
    idle_s: float = Field(2.0, gt=0.0, description="A partition silent this long stops holding back time.")
    prediction_ttl_s: float = Field(3600.0, gt=0.0, description="How long a prediction waits for feedback.")
    feedback_wait_s: float = Field(60.0, gt=0.0, description="How long feedback waits for its prediction "
                                   "before it goes to feedback-dlq as unmatched.")
    max_predictions: int = Field(100_000, ge=1, description="Predictions kept waiting at most (oldest go).")
    max_event_bytes: int = Field(64_000, ge=1, description="Larger feedback events go to the DLQ as too_large.")
    holdout_share: float = Field(0.1, gt=0.0, lt=1.0, description="Share of feedback held back to judge updates.")
    holdout_size: int = Field(2_000, ge=10, description="Recent held-back examples the gate uses.")
    min_holdout: int = Field(50, ge=1, description="No update is published before this many are held back.")
    gate_margin: float = Field(0.0, ge=0.0, le=1.0, description="Held-back accuracy an update may lose.")
    checkpoint_interval_s: float = Field(10.0, gt=0.0, description="Wall time between checkpoints.")
    checkpoints_kept: int = Field(3, ge=2)
    metrics_port: int = Field(8001, ge=1, le=65535, description="Health and Prometheus metrics.")
