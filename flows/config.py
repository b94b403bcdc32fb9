"""Parameters of a train run, as the Prefect UI shows them and deployments set them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from models.traffic import SCENARIOS


class TrainConfig(BaseModel):
    """What to train on, with which encoder, and how strict the gates are."""

    model_config = {"extra": "forbid"}

    data_path: Path | None = Field(None, description="Your own CSV/Parquet (text,label[,user_id,ts]); "
                                                     "default: generated traffic.")
    scenario: str = Field("stable", description="Scenario of generated traffic.")
    n_events: int = Field(20_000, ge=200, description="Generated utterances.")
    n_users: int = Field(2_000, ge=1)
    seed: int = 0
    holdout: float = Field(0.2, gt=0.0, lt=0.9, description="Latest share of events kept for evaluation.")
    encoder: str = Field("minilm", description="'minilm' (packaged all-MiniLM-L6-v2), 'tiny' (random, for "
                                               "tests) or a folder saved by Encoder.save.")
    epochs: int = Field(3, ge=1, le=50)
    quantize: Literal["int8", "none"] = Field("int8", description="Quantize the compiled encoder.")
    min_agreement: float = Field(0.99, ge=0.0, le=1.0,
                                 description="Gate: compiled model agrees with torch FP32 on this share.")
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0,
                                     description="Gate: compiled model loses at most this much accuracy.")
    deploy_margin: float = Field(0.0, ge=0.0, le=1.0,
                                 description="Challenger replaces champion unless worse by more than this.")
    announce: bool = Field(True, description="Publish the new version on model-updates if a broker is set.")

    @model_validator(mode="after")
    def _known_scenario(self) -> TrainConfig:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        return self
