"""Feedback service settings, from `LOOPLINE_*` environment variables (plus the shared ones)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from services.common.settings import CommonSettings, refuse_placeholder_token


class FeedbackSettings(CommonSettings):
    """How the feedback service joins, learns, gates, checkpoints and watches drift."""

    group_id: str = Field("loopline-feedback", description="Consumer group over predictions and feedback.")
    update_interval_s: float = Field(5.0, ge=0.2, le=3600.0, description="Event-time length of an update window.")
    lateness_s: float = Field(0.25, ge=0.0, description="How far records may arrive out of time order.")
    idle_s: float = Field(2.0, gt=0.0, description="A partition silent this long stops holding back time.")
    max_feedback_ahead_s: float = Field(5.0, gt=0.0, description="A feedback partition this far ahead (event "
                                        "time) of its predictions pauses until they catch up.")
    prediction_ttl_s: float = Field(3600.0, gt=0.0, description="How long a prediction waits for feedback.")
    feedback_wait_s: float = Field(60.0, gt=0.0, description="How long feedback waits for its prediction "
                                   "before it goes to feedback-dlq as unmatched.")
    max_predictions: int = Field(100_000, ge=1, description="Predictions kept waiting at most (oldest go).")
    max_remembered_ids: int = Field(1_000_000, ge=1, description="Feedback event ids (for duplicates) and "
                                    "labeled prediction ids kept at most, each (oldest go).")
    max_event_bytes: int = Field(64_000, ge=1, description="Larger feedback events go to the DLQ as too_large.")
    max_prediction_bytes: int = Field(128_000, ge=1, description="Larger prediction events go to the DLQ as "
                                      "too_large. Serving logs the hashed features of the text: about 55 kB "
                                      "at its default LOOPLINE_MAX_TEXT_CHARS (1,000); raise both together.")
    max_clock_skew_s: float = Field(60.0, gt=0.0, description="Records stamped more than this ahead of the "
                                    "service's clock go to the DLQ as far_future and do not count as event time.")
    unknown_labels_shown: int = Field(20, ge=1, le=1_000, description="/metrics counts unknown_label dead "
                                      "letters for this many labels (the most frequent) plus '(other)': labels are "
                                      "user input, so their number is capped.")
    holdout_share: float = Field(0.1, gt=0.0, lt=1.0, description="Share of feedback held back to judge updates.")
    holdout_size: int = Field(2_000, ge=10, description="Recent held-back examples the gate uses.")
    min_holdout: int = Field(50, ge=1, description="No update is published before this many are held back.")
    gate_margin: float = Field(0.0, ge=0.0, le=1.0, description="Held-back accuracy an update may lose.")
    catch_up_size: int = Field(10_000, ge=0, description="Recently learned examples kept in memory (about 2.5 KB "
                               "each): when a retrain that read the examples table becomes champion, those with "
                               "feedback newer than what it read are learned again on its head.")
    replay_factor: float = Field(2.0, ge=0.0, description="Earlier learned examples learned again beside each new "
                                 "one in a window (rehearsal: one online pass ends about a point below batch "
                                 "training without it); 0: off.")
    replay_cap: int = Field(500, ge=0, description="At most this many replayed examples a window.")
    replay_size: int = Field(2_000, ge=0, description="Learned examples kept, a uniform sample of all of them, to "
                             "replay from (checkpointed).")
    trust_alpha: float = Field(3e-3, ge=0.0, lt=1.0, description="Feedback from a user whose recent "
                               "disagreements with the served intent are this unlikely, given how sure the model "
                               "was, goes to the DLQ as untrusted_user and is not learned; 0: trust every user.")
    trust_history: int = Field(20, ge=1, le=64, description="Feedback events per user the trust verdict reads.")
    keep_examples: bool = Field(True, description="Keep every judged example in the examples table "
                                "(LOOPLINE_EXAMPLES_URI), which retrains read.")
    guard_events: int = Field(500, ge=0, description="After a retrain becomes champion, its progressive accuracy "
                              "on this many feedback events is compared with the previous champion's on its last as "
                              "many; 0: no guard.")
    guard_margin: float = Field(0.02, ge=0.0, le=1.0, description="...and if it is lower by more than this, "
                                "`champion` goes back to the previous version (reason tagged on the new one).")
    checkpoint_interval_s: float = Field(10.0, gt=0.0, description="Wall time between checkpoints.")
    checkpoints_kept: int = Field(3, ge=2)
    metrics_port: int = Field(8001, ge=1, le=65535, description="Health and Prometheus metrics.")
    registry_interval_s: float = Field(300.0, ge=0.0, description="Event time between registry versions of "
                                       "the online head; 0: only on `loopline promote`.")
    registry_retry_first_s: float = Field(1.0, gt=0.0, description="Wait before retrying a failed registration; "
                                          "doubles on every failure...")
    registry_retry_max_s: float = Field(60.0, gt=0.0, description="...up to this. Registrations are retried until "
                                        "the registry answers; the learning loop never waits for it.")
    registry_request_timeout_s: int = Field(10, ge=1, description="MLflow HTTP timeout per request "
                                            "(MLFLOW_HTTP_REQUEST_TIMEOUT, if that is not set).")
    registry_request_retries: int = Field(1, ge=0, le=10, description="MLflow's own retries per request "
                                          "(MLFLOW_HTTP_REQUEST_MAX_RETRIES, if that is not set).")
    champion_check_s: float = Field(10.0, gt=0.0, description="How often the registry's champion is checked "
                                    "(a retrain that moved it restarts learning from it; serving holds such a "
                                    "retrain until this service's catch-up delta for it arrives).")
    admin_token: SecretStr | None = Field(None, description="Bearer token `loopline promote` must send; "
                                          "unset: POST /promote is off.")
    drift: bool = Field(True, description="Monitor drift (needs a drift reference in the model bundle).")
    drift_window_events: int = Field(2_000, ge=1, description="A drift window closes after this many events...")
    drift_window_s: float = Field(60.0, gt=0.0, description="...or after this many seconds.")
    drift_min_interval_s: float = Field(10.0, ge=0.0, description="A full drift window closes no sooner than "
                                        "this after the last; a busier stream is sampled (its newest rows).")
    drift_min_events: int = Field(200, ge=1, description="A timed-out drift window waits for this many events.")
    drift_share_threshold: float = Field(0.3, gt=0.0, le=1.0, description="Share of drifted columns that "
                                         "counts as drift.")
    drift_accuracy_drop: float = Field(0.05, ge=0.0, le=1.0, description="Accuracy below the reference's by "
                                       "this much, together with drift, emits loopline.drift.detected.")
    drift_alert_cooldown_s: float = Field(1800.0, ge=0.0, description="At most one drift event (retrain) "
                                          "per this many seconds.")
    drift_experiment: str = Field("loopline-drift", description="MLflow experiment of the drift reports.")

    _no_placeholder = field_validator("admin_token")(refuse_placeholder_token)
