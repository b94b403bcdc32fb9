"""Flow task that fine-tunes the encoder on the training rows, and keeps it only if the head does better with it.

The decision is made on a validation split cut from the training rows (stratified, seeded), never on
the evaluation rows the gates and the champion comparison use: the product head (hashed n-grams +
embedding, FTRL) is trained on the rest with each encoder and scored there. The fine-tuned encoder is kept
if it beats the configured one by `encoder_margin`; it was fine-tuned on the rows outside the validation
split, and the head of the version is then trained on every training row as usual.

"auto" fine-tunes when the data calls for it: few examples per class (a launch, a new intent), where the
frozen encoder is weakest. With hundreds per class the frozen encoder is close to the fine-tuned one
and a fine-tune costs minutes of CPU per retrain.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task

from flows import progress
from flows.config import TrainConfig
from flows.model_tasks import load_encoder
from models.encoder import Encoder
from models.features import FeatureSpec
from models.finetune import FinetuneConfig, Objective, finetune
from models.train import HeadConfig, featurize, train_head


@dataclass(frozen=True)
class EncoderChoice:
    ref: str  # what the later steps load: the configured encoder, or the folder of the fine-tuned one
    label: str  # what the manifest and the registry call it
    finetuned: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {"encoder": self.label, "encoder.finetuned": str(self.finetuned).lower(),
                "encoder.decision": self.reason[:500]}


def wanted(config: TrainConfig, labels: list[str]) -> Objective | None:
    """The objective to fine-tune with, or None."""
    if config.finetune == "off":
        return None
    if config.finetune != "auto":
        return config.finetune
    per_class = float(np.median(list(Counter(labels).values())))
    return "classify" if per_class <= config.finetune_auto_max_per_class else None


def validation_split(labels: list[str], share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): `share` of every class with at least two rows, seeded."""
    rng = np.random.default_rng([seed, 23])
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    val: list[int] = []
    for rows in by_class.values():
        if len(rows) >= 2:
            val.extend(rng.choice(rows, size=max(1, round(share * len(rows))), replace=False).tolist())
    chosen = np.zeros(len(labels), dtype=bool)
    chosen[val] = True
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)


@task
def choose_encoder(texts: list[str], labels: list[str], users: list[dict[str, Any] | None] | None,
                   classes: tuple[str, ...], config: TrainConfig, work_dir: Path) -> EncoderChoice:
    """Fine-tune the configured encoder if the config (or, for "auto", the data) asks for it; keep it if the
    head scores better with it on the validation split by `encoder_margin`."""
    objective = wanted(config, labels)
    if objective is None:
        why = ("fine-tuning off" if config.finetune == "off" else
               f"not fine-tuned: more than {config.finetune_auto_max_per_class} training rows per class (median)")
        return EncoderChoice(config.encoder, config.encoder, False, why)
    logger = get_run_logger()
    fit, val = validation_split(labels, config.finetune_val_share, config.seed)
    if len(val) == 0:
        return EncoderChoice(config.encoder, config.encoder, False, "not fine-tuned: no class has two rows")
    base = load_encoder(config.encoder)
    started = time.monotonic()
    fit_texts, val_texts = [texts[i] for i in fit], [texts[i] for i in val]
    fit_labels, val_labels = [labels[i] for i in fit], [labels[i] for i in val]
    epochs = config.finetune_epochs or (10 if len(fit) <= 2_000 else 1)
    settings = FinetuneConfig(objective=objective, epochs=epochs, budget_s=config.finetune_budget_s,
                              seed=config.seed)
    advance = progress.track(f"fine-tune ({objective})", 100)
    done = [0]

    def on_step(step: int, planned: int) -> None:
        percent = int(100 * step / max(planned, 1))
        advance(percent - done[0])
        done[0] = percent

    tuned, report = finetune(base, fit_texts, fit_labels, val_texts, val_labels, settings, on_step)
    frozen_score = _head_accuracy(base, texts, labels, users, fit, val, classes, config)
    tuned_score = _head_accuracy(tuned, texts, labels, users, fit, val, classes, config)
    seconds = time.monotonic() - started
    metrics = {"encoder_val_frozen": frozen_score, "encoder_val_finetuned": tuned_score, "finetune_s": seconds,
               "finetune_epochs": float(report.epochs_run)}
    compared = (f"validation accuracy {tuned_score:.4f} fine-tuned ({objective}, {report.epochs_run:g} epochs, "
                f"{seconds:.0f} s, stopped by {report.stopped}) vs {frozen_score:.4f} {config.encoder} on "
                f"{len(val)} training rows held out for it")
    if tuned_score < frozen_score + config.encoder_margin:
        reason = f"kept {config.encoder}: {compared}; the margin is {config.encoder_margin:.4f}"
        logger.info("%s", reason)
        return EncoderChoice(config.encoder, config.encoder, False, reason, metrics)
    folder = _save(tuned, work_dir)
    reason = f"fine-tuned: {compared}"
    logger.info("%s", reason)
    return EncoderChoice(str(folder), f"{config.encoder}+{objective}", True, reason, metrics)


def _head_accuracy(encoder: Encoder, texts: list[str], labels: list[str], users: list[dict[str, Any] | None] | None,
                   fit: np.ndarray, val: np.ndarray, classes: tuple[str, ...], config: TrainConfig) -> float:
    """The product head trained on the fit rows with this encoder, scored on the validation rows."""
    rows = np.concatenate([fit, val])
    embeddings = encoder.encode([texts[i] for i in rows])
    row_users = [users[i] for i in rows] if users is not None else None
    batch = featurize([texts[i] for i in rows], embeddings, FeatureSpec(), row_users)
    head = train_head(batch.take(np.arange(len(fit))), [labels[i] for i in fit], classes,
                      HeadConfig(epochs=config.epochs, seed=config.seed))
    proba = head.predict_proba_many(batch.take(np.arange(len(fit), len(rows))))
    predicted = np.array(head.classes)[proba.argmax(axis=1)]
    return float((predicted == np.array([labels[i] for i in val])).mean())


def _save(encoder: Encoder, work_dir: Path) -> Path:
    """The fine-tuned encoder in a folder named by its weights (the compile and embed caches key on it)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    folder = work_dir / "encoders" / digest.hexdigest()[:16]
    if not folder.exists():
        tmp = folder.with_suffix(".tmp")
        encoder.save(tmp)
        tmp.replace(folder)
    return folder
