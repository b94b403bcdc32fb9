"""Serving settings, from `LOOPLINE_*` environment variables (plus the shared ones)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from services.common.settings import CommonSettings, refuse_placeholder_token


class ServingSettings(CommonSettings):
    """How the serving service listens, batches, limits input and guards its admin routes."""

    host: str = Field("127.0.0.1", description="Listen address; loopback unless you mean otherwise.")
    port: int = Field(8000, ge=1, le=65535)
    admin_token: SecretStr | None = Field(None, description="Bearer token for /v1/admin/*; unset: admin off.")
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads per call.")
    max_batch: int = Field(32, ge=1, le=1024, description="Dynamic batching: most requests per model call.")
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0, description="Dynamic batching: longest wait for company "
                               "(0: batch what queued during the previous call, measured best on 2 cores).")
    max_queue: int = Field(1024, ge=1, description="Requests waiting for the model beyond this get 503 "
                           "with Retry-After instead of ever-growing latency.")
    max_text_chars: int = Field(1000, ge=1, description="Longer texts are refused with 422.")
    max_batch_texts: int = Field(256, ge=1, description="Most texts in one /v1/predict/batch request.")
    top_k: int = Field(3, ge=1, description="Probabilities returned per prediction.")
    log_capacity: int = Field(10_000, ge=1, description="Prediction log buffer; overflow is dropped and counted.")
    log_send_timeout_s: float = Field(120.0, gt=0.0, description="A prediction event the broker has not "
                                      "acknowledged within this is dropped and counted as send_failed; long "
                                      "enough to ride out a broker restart, with `log_capacity` events held.")
    max_body_bytes: int = Field(1_000_000, ge=1, description="Larger request bodies are refused with 413.")
    champion_check_s: float = Field(30.0, ge=0.0, description="How often to look for a moved `champion` "
                                    "alias besides model-updates notices; 0: only on notices.")
    catch_up_wait_s: float = Field(60.0, ge=0.0, description="A new champion retrained on collected feedback "
                                   "keeps the online head serving until the feedback service's catch-up delta "
                                   "for it arrives, or at most this long; 0: serve it at once.")
    bundle: Path | None = Field(None, description="Serve this bundle folder instead of the registry's @champion.")

    _no_placeholder = field_validator("admin_token")(refuse_placeholder_token)
