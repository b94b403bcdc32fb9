"""Parameters of a train run, as the Prefect UI shows them and deployments set them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from models.collected import Support
from models.split import SplitConfig
from models.traffic import SCENARIOS


class TrainConfig(BaseModel):
    """What to train on, with which encoder, and how strict the gates are."""

    model_config = {"extra": "forbid"}

    data_path: str | None = Field(None, description="Your own dataset: a path or URI (s3://...) of a CSV, Parquet "
                                                     "or JSONL file with text,label[,user_id,ts], any label set; "
                                                     "default: generated traffic.")
    from_champion: bool = Field(False, description="Train on the data the current champion was trained on "
                                                   "(its recorded URI; generated traffic if it came from the "
                                                   "generator), unless data_path is set. Scheduled and "
                                                   "triggered retrains do this.")
    scenario: str = Field("stable", description="Scenario of generated traffic.")
    n_events: int = Field(20_000, ge=200, description="Generated utterances.")
    n_users: int = Field(2_000, ge=1)
    seed: int = Field(0, description="Seeds the split, the few-shot draw, generated traffic and training.")
    holdout: float = Field(0.2, gt=0.0, lt=0.9, description="Share of the rows used that evaluates: the latest "
                                                            "with a ts column, else a seeded stratified draw.")
    shots: int | None = Field(None, ge=1, description="Train on this many rows of every class (a seeded draw), "
                                                      "as at a product launch; default: all rows.")
    encoder: str = Field("minilm", description="'minilm' (packaged all-MiniLM-L6-v2), 'tiny' (random, for "
                                               "tests) or a folder saved by Encoder.save.")
    epochs: int = Field(3, ge=1, le=50)
    finetune: Literal["auto", "off", "classify", "contrastive"] = Field(
        "off", description="Fine-tune the encoder on the training rows before export: 'auto' does (with the "
                           "classify objective) when classes have few rows (finetune_auto_max_per_class); the "
                           "fine-tuned encoder is kept only if the head scores better with it on a validation "
                           "split of the training rows by encoder_margin. Off by default until bench/real_data.py "
                           "measures it through this flow.")
    finetune_auto_max_per_class: int = Field(50, ge=1, description="'auto' fine-tunes when the median class has at "
                                                                   "most this many training rows.")
    finetune_budget_s: float = Field(600.0, gt=0.0, description="Wall-clock cap of a fine-tune (checked between "
                                                                "steps); the best state so far is kept.")
    finetune_epochs: int | None = Field(None, ge=1, le=50, description="Fine-tuning epochs; default: 10 up to "
                                                                       "2,000 training rows, else 1 (chosen on "
                                                                       "HWU64 validation rows; the budget caps "
                                                                       "both).")
    finetune_val_share: float = Field(0.2, gt=0.0, lt=0.9, description="Share of every class's training rows held "
                                                                       "out to stop fine-tuning and decide on it.")
    encoder_margin: float = Field(0.005, ge=-1.0, le=1.0, description="Validation accuracy the fine-tuned encoder "
                                                                      "must gain over the configured one to be kept "
                                                                      "(-1: always keep it).")
    quantize: Literal["int8", "none"] = Field("int8", description="Quantize the compiled encoder.")
    min_agreement: float = Field(0.99, ge=0.0, le=1.0,
                                 description="Gate: compiled model agrees with torch FP32 on this share of the "
                                             "rows torch FP32 decides (its top two intents tie_margin apart).")
    tie_margin: float = Field(0.01, ge=0.0, le=1.0,
                              description="Gate: rows whose top two FP32 probabilities are closer than this are "
                                          "near-ties any rounding may flip; agreement leaves them out.")
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0,
                                     description="Gate: compiled model loses at most this much accuracy.")
    deploy_margin: float = Field(0.0, ge=0.0, le=1.0,
                                 description="Challenger replaces champion unless worse by more than this share "
                                             "of the eval rows, beyond noise (a paired test on the rows where they "
                                             "disagree).")
    target_precision: float = Field(0.97, gt=0.0, le=1.0,
                                    description="Fallback: the confidence threshold is the lowest whose answered "
                                                "held-out requests are right at least this often.")
    out_of_scope: str = Field("oos", min_length=1, description="A class of that name (if the data has one) means "
                                                               "'not something the assistant does': serving "
                                                               "answers it with fallback.")
    announce: bool = Field(True, description="Publish the new version on model-updates if a broker is set.")
    collected: bool = Field(True, description="Also train on the examples the feedback service collected (the "
                                              "examples table) since the champion's training data was taken; "
                                              "held-back ones evaluate.")
    collected_since: float | None = Field(None, description="Collected examples written at or after this time "
                                                            "(seconds since the epoch); default: as above.")
    collected_until: float | None = Field(None, description="...and before this time; default: now.")
    collected_feedback_until: float | None = Field(
        None, description="Only collected examples whose feedback came at or before this time (seconds since the "
                          "epoch). The on-drift deployment sets it to the end of the drifted window, so the run "
                          "trains on what the alert saw, whenever it starts.")
    new_label_min_examples: int = Field(20, ge=1, description="A label only feedback carried becomes a class with "
                                                              "at least this many examples...")
    new_label_min_users: int = Field(5, ge=1, description="...from at least this many users.")

    @model_validator(mode="after")
    def _known_scenario(self) -> TrainConfig:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        return self

    def support(self) -> Support:
        return Support(min_examples=self.new_label_min_examples, min_users=self.new_label_min_users)

    def split(self) -> SplitConfig:
        return SplitConfig(holdout=self.holdout, seed=self.seed, shots=self.shots)
