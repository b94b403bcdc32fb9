"""Fine-tune the sentence encoder on labelled texts: a classification or a SetFit-style contrastive objective.

- `classify`: mean-pooled embedding -> linear layer -> cross-entropy. The layer starts
  as a cosine classifier on the frozen class centroids (weights = `scale` x unit
  centroid, bias 0), so the first steps push the encoder with a sensible head instead
  of a random one (the idea of LP-FT, Kumar et al. 2022, without the probe's training).
- `contrastive`: SetFit (Tunstall et al. 2022): per example and round, one positive
  (same label) and one negative pair; loss MSE between the pair's cosine and 1 or 0.

Both: AdamW, linear warm-up then linear decay to 0, weight decay off for biases and
LayerNorm. After every epoch a nearest-centroid classifier scores the validation
texts; the best state is kept, training stops after `patience` epochs without a gain,
and the time budget is checked between steps. The input encoder is never changed:
the result is a new `Encoder`. Same seed, same threads, no budget stop: same weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from models.encoder import Encoder

Objective = Literal["classify", "contrastive"]
StepProgress = Callable[[int, int], None]  # (steps done, steps planned)


@dataclass(frozen=True)
class FinetuneConfig:
    """How the encoder is fine-tuned."""

    objective: Objective = "classify"
    epochs: int = 4
    lr: float = 3e-5  # encoder body
    head_lr: float = 1e-3  # the classify layer: new, so it moves faster than the body
    scale: float = 20.0  # classify: logits = scale x cosine at the start
    warmup_share: float = 0.1
    batch_size: int = 32  # texts (classify) or pairs (contrastive) per step
    max_length: int = 32  # HWU64 requests: 99% fit in 32 tokens
    weight_decay: float = 0.01
    pairs_per_example: int = 5  # contrastive: rounds of (positive, negative) per example; SetFit's num_iterations
    budget_s: float | None = None  # wall-clock cap, checked between steps
    patience: int | None = 2  # epochs without a validation gain before stopping; None: never
    centroid_rows: int = 16  # per class, for the validation score's centroids
    seed: int = 0
    threads: int | None = None  # torch threads while training; None: leave as set

    def __post_init__(self) -> None:
        if self.objective not in ("classify", "contrastive"):
            raise ValueError(f"objective must be classify or contrastive, got {self.objective!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 2 or self.pairs_per_example < 1:
            raise ValueError("epochs, batch_size, pairs_per_example must be positive and max_length at least 2")
        if self.lr <= 0 or self.head_lr <= 0 or not 0.0 <= self.warmup_share < 1.0 or self.weight_decay < 0:
            raise ValueError("need lr, head_lr > 0, warmup_share in [0, 1) and weight_decay >= 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be at least 1 (or None)")


@dataclass
class FinetuneReport:
    """What a fine-tune did."""

    epochs_run: float  # fractional when the budget stopped it mid-epoch
    steps: int
    seconds: float
    best_score: float | None  # validation nearest-centroid accuracy of the returned encoder
    best_epoch: float | None  # 0: the input encoder was never beaten
    stopped: Literal["budget", "patience", "epochs"]
    history: list[float] = field(default_factory=list)  # validation score before training, then per epoch


def finetune(
    encoder: Encoder,
    texts: Sequence[str],
    labels: Sequence[str],
    val_texts: Sequence[str] | None,
    val_labels: Sequence[str] | None,
    config: FinetuneConfig,
    on_step: StepProgress | None = None,
) -> tuple[Encoder, FinetuneReport]:
    """A fine-tuned copy of `encoder` and the report; without validation texts the last state is returned."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts, at least one; got {len(texts)} and {len(labels)}")
    if len(set(labels)) < 2:
        raise ValueError("need at least two classes")
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(encoder, list(texts), list(labels), val_texts, val_labels, config, on_step)
    finally:
        torch.set_num_threads(old_threads)


def _run(encoder: Encoder, texts: list[str], labels: list[str], val_texts: Sequence[str] | None,
         val_labels: Sequence[str] | None, config: FinetuneConfig,
         on_step: StepProgress | None) -> tuple[Encoder, FinetuneReport]:
    start = time.monotonic()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tuned = Encoder(copy.deepcopy(encoder.model), encoder.tokenizer, encoder.max_length)
    classes = sorted(set(labels))
    y = np.array([classes.index(v) for v in labels])
    validate = _validator(tuned, texts, y, val_texts, val_labels, classes, config)

    head: torch.nn.Linear | None = None
    if config.objective == "classify":
        head = _centroid_head(tuned, texts, y, len(classes), config)
    steps_per_epoch = -(-_units(len(texts), config) // config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = _optimizer(tuned.model, head, config)
    warmup = int(total * config.warmup_share)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))

    history = [validate()] if validate else []
    best_score, best_epoch = (history[0] if history else float("-inf")), 0.0
    best_state: dict[str, torch.Tensor] | None = None
    stopped: Literal["budget", "patience", "epochs"] = "epochs"
    step, since_gain, epochs_run = 0, 0, 0.0
    for epoch in range(config.epochs):
        tuned.model.train()
        for batch in _batches(texts, y, config, rng):
            if config.budget_s is not None and time.monotonic() - start >= config.budget_s:
                stopped = "budget"
                break
            loss = _loss(tuned, head, batch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
        epochs_run = step / steps_per_epoch
        if validate and step > (epoch * steps_per_epoch):  # an epoch cut before its first step scores nothing new
            score = validate()
            history.append(score)
            if score > best_score:
                best_score, best_epoch, since_gain = score, epochs_run, 0
                best_state = {k: v.detach().clone() for k, v in tuned.model.state_dict().items()}
            else:
                since_gain += 1
        if stopped == "budget":
            break
        if config.patience is not None and validate and since_gain >= config.patience:
            stopped = "patience"
            break

    if validate:  # the best state, or the input's weights when nothing beat them
        tuned.model.load_state_dict(best_state if best_state is not None else encoder.model.state_dict())
    tuned.model.eval()
    return tuned, FinetuneReport(
        epochs_run=round(epochs_run, 3), steps=step, seconds=round(time.monotonic() - start, 2),
        best_score=best_score if validate else None, best_epoch=round(best_epoch, 3) if validate else None,
        stopped=stopped, history=history)


# -- objectives ------------------------------------------------------------------------------------


Batch = tuple[list[str], torch.Tensor]  # texts, targets (class ids, or pair similarities 1/0)


def _units(n: int, config: FinetuneConfig) -> int:
    """Training units per epoch: texts, or pairs (two per example per round)."""
    return n if config.objective == "classify" else 2 * n * config.pairs_per_example


def _batches(texts: list[str], y: np.ndarray, config: FinetuneConfig, rng: np.random.Generator) -> list[Batch]:
    if config.objective == "classify":
        order = rng.permutation(len(texts))
        return [([texts[i] for i in idx], torch.as_tensor(y[idx]))
                for idx in (order[s : s + config.batch_size] for s in range(0, len(order), config.batch_size))]
    pairs = _pairs(y, config.pairs_per_example, rng)
    out = []
    for s in range(0, len(pairs), config.batch_size):
        chunk = pairs[s : s + config.batch_size]
        # one forward over both sides: left texts, then right texts
        out.append(([texts[a] for a, _, _ in chunk] + [texts[b] for _, b, _ in chunk],
                    torch.tensor([t for _, _, t in chunk], dtype=torch.float32)))
    return out


def _pairs(y: np.ndarray, rounds: int, rng: np.random.Generator) -> list[tuple[int, int, float]]:
    """SetFit's pair generation: for each round and example, one positive and one negative partner, shuffled."""
    by_class = {int(c): np.flatnonzero(y == c) for c in np.unique(y)}
    pairs = []
    for _ in range(rounds):
        for i, c in enumerate(y):
            same = by_class[int(c)]
            if len(same) > 1:  # a partner other than itself where the class has one
                j = int(same[rng.integers(len(same) - 1)])
                pairs.append((i, j if j != i else int(same[-1]), 1.0))
            else:
                pairs.append((i, i, 1.0))
            j = int(rng.integers(len(y)))
            while y[j] == c:  # rejection: with many classes almost every draw is already another class
                j = int(rng.integers(len(y)))
            pairs.append((i, j, 0.0))
    return [pairs[k] for k in rng.permutation(len(pairs))]


def _loss(tuned: Encoder, head: torch.nn.Linear | None, batch: Batch, config: FinetuneConfig) -> torch.Tensor:
    batch_texts, target = batch
    emb = tuned.forward(_tokenize(tuned, batch_texts, config.max_length))
    if head is not None:
        return torch.nn.functional.cross_entropy(head(emb), target)
    half = len(batch_texts) // 2  # unit vectors: the dot product is the cosine
    cosine = (emb[:half] * emb[half:]).sum(dim=1)
    return torch.nn.functional.mse_loss(cosine, target)


def _tokenize(encoder: Encoder, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    return encoder.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                             return_tensors="pt")


def _optimizer(model: torch.nn.Module, head: torch.nn.Linear | None, config: FinetuneConfig) -> torch.optim.AdamW:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay, "lr": config.lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": config.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "weight_decay": 0.0, "lr": config.head_lr})
    return torch.optim.AdamW(groups)


# -- embeddings for the head's start and for validation -----------------------------------------------


@torch.inference_mode()
def _embed(encoder: Encoder, texts: Sequence[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    encoder.model.eval()
    parts = [encoder.forward(_tokenize(encoder, texts[s : s + batch_size], max_length)).numpy()
             for s in range(0, len(texts), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)


def _centroids(emb: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit-length class means (rows in class-id order)."""
    means = np.stack([emb[y == c].mean(axis=0) for c in range(n_classes)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-9)


def _centroid_head(tuned: Encoder, texts: list[str], y: np.ndarray, n_classes: int,
                   config: FinetuneConfig) -> torch.nn.Linear:
    head = torch.nn.Linear(tuned.dim, n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(config.scale * _centroids(_embed(tuned, texts, config.max_length), y,
                                                                     n_classes)))
        head.bias.zero_()
    return head


def _validator(tuned: Encoder, texts: list[str], y: np.ndarray, val_texts: Sequence[str] | None,
               val_labels: Sequence[str] | None, classes: list[str],
               config: FinetuneConfig) -> Callable[[], float] | None:
    """Nearest-centroid accuracy on the validation texts, centroids from up to `centroid_rows` training rows
    per class. Chosen over a probe: no fitting and no settings of its own, so the score moves with the
    encoder alone, and one encode pass of a few hundred texts per epoch costs seconds."""
    if not val_texts:
        return None
    if val_labels is None or len(val_labels) != len(val_texts):
        raise ValueError("validation texts need as many labels")
    index = {c: i for i, c in enumerate(classes)}
    keep = [i for i, v in enumerate(val_labels) if v in index]  # a class never trained on cannot be scored
    vt, vy = [val_texts[i] for i in keep], np.array([index[val_labels[i]] for i in keep])
    rows = np.concatenate([np.flatnonzero(y == c)[: config.centroid_rows] for c in range(len(classes))])
    ct, cy = [texts[i] for i in rows], y[rows]

    def score() -> float:
        centroids = _centroids(_embed(tuned, ct, config.max_length), cy, len(classes))
        pred = (_embed(tuned, vt, config.max_length) @ centroids.T).argmax(axis=1)
        tuned.model.train()
        return float((pred == vy).mean()) if len(vy) else 0.0

    return score
