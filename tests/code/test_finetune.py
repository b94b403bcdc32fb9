"""Encoder fine-tuning on a tiny random BERT: both objectives run, stop when told, leave the input alone, repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.encoder import Encoder
from models.finetune import FinetuneConfig, _pairs, finetune

TEXTS = ["wake me up at seven", "set an alarm for six am", "alarm at noon please", "cancel my morning alarm",
         "what is the weather today", "will it rain tomorrow", "is it sunny in paris", "how cold is it outside",
         "play some jazz", "put on my running playlist", "next song please", "play the new album by adele"]
LABELS = ["alarm"] * 4 + ["weather"] * 4 + ["music"] * 4
VAL_TEXTS = ["alarm for five", "rain in london", "play rock music"]
VAL_LABELS = ["alarm", "weather", "music"]
FAST = {"batch_size": 4, "max_length": 16, "lr": 1e-3}


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.tiny_random(seed=3, hidden_size=16, layers=1)


def weights(encoder: Encoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in encoder.model.state_dict().items()}


@pytest.mark.parametrize("objective", ["classify", "contrastive"])
def test_runs_and_leaves_the_input_encoder_alone(encoder: Encoder, objective: str) -> None:
    before = weights(encoder)
    steps: list[tuple[int, int]] = []
    config = FinetuneConfig(objective=objective, epochs=2, patience=None, pairs_per_example=1, **FAST)  # type: ignore[arg-type]
    tuned, report = finetune(encoder, TEXTS, LABELS, VAL_TEXTS, VAL_LABELS, config,
                             on_step=lambda s, total: steps.append((s, total)))
    assert tuned is not encoder and tuned.model is not encoder.model
    assert all(torch.equal(v, before[k]) for k, v in encoder.model.state_dict().items())
    per_epoch = 3 if objective == "classify" else 6  # 12 texts, or 24 pairs, in fours
    assert report.steps == 2 * per_epoch and steps[-1] == (2 * per_epoch, 2 * per_epoch)
    assert report.stopped == "epochs" and report.epochs_run == 2.0
    assert len(report.history) == 3 and report.best_score == max(report.history)
    assert tuned.encode(VAL_TEXTS).shape == (3, encoder.dim)


@pytest.mark.parametrize("objective", ["classify", "contrastive"])
def test_training_pulls_classes_apart(encoder: Encoder, objective: str) -> None:
    def gap(model: Encoder) -> float:  # mean cosine within a class minus across classes, training texts
        emb, y = model.encode(TEXTS), np.array(LABELS)
        sims, same = emb @ emb.T, y[:, None] == y[None, :]
        return float(sims[same & ~np.eye(len(y), dtype=bool)].mean() - sims[~same].mean())

    config = FinetuneConfig(objective=objective, epochs=10, pairs_per_example=1, **FAST)  # type: ignore[arg-type]
    tuned, _ = finetune(encoder, TEXTS, LABELS, None, None, config)
    assert gap(encoder) < 0.05 and gap(tuned) > 0.3


def test_without_validation_returns_the_last_state(encoder: Encoder) -> None:
    tuned, report = finetune(encoder, TEXTS, LABELS, None, None, FinetuneConfig(epochs=1, **FAST))
    assert report.best_score is None and report.history == [] and report.steps == 3
    assert not np.allclose(tuned.encode(TEXTS), encoder.encode(TEXTS))


def test_a_spent_budget_stops_before_the_first_step(encoder: Encoder) -> None:
    tuned, report = finetune(encoder, TEXTS, LABELS, VAL_TEXTS, VAL_LABELS,
                             FinetuneConfig(epochs=50, budget_s=0.0, **FAST))
    assert report.stopped == "budget" and report.steps == 0 and report.best_epoch == 0.0
    np.testing.assert_array_equal(tuned.encode(TEXTS), encoder.encode(TEXTS))


def test_a_tiny_budget_is_respected(encoder: Encoder) -> None:
    _, report = finetune(encoder, TEXTS * 4, LABELS * 4, VAL_TEXTS, VAL_LABELS,
                         FinetuneConfig(epochs=1000, budget_s=0.5, patience=None, **FAST))
    assert report.stopped == "budget" and 0 < report.steps < 1000 * 12
    assert report.seconds < 0.5 + 2.0  # the step and one validation after the check


def test_patience_stops_when_validation_stops_improving(encoder: Encoder) -> None:
    # lr 0 after warm-up is impossible; a very small lr leaves the validation score flat, so it never gains
    config = FinetuneConfig(epochs=30, patience=2, **{**FAST, "lr": 1e-12, "head_lr": 1e-12})
    _, report = finetune(encoder, TEXTS, LABELS, VAL_TEXTS, VAL_LABELS, config)
    assert report.stopped == "patience" and report.epochs_run == 2.0 and report.best_epoch == 0.0
    assert report.history == [report.history[0]] * 3


def test_same_seed_same_weights(encoder: Encoder) -> None:
    for objective in ("classify", "contrastive"):
        # no validation: the last state comes back (with it, both seeds might keep the input's)
        runs = [finetune(encoder, TEXTS, LABELS, None, None,
                         FinetuneConfig(objective=objective, epochs=2, seed=seed, pairs_per_example=1,  # type: ignore[arg-type]
                                        patience=None, **FAST))[0].encode(TEXTS)
                for seed in (7, 7, 8)]
        np.testing.assert_array_equal(runs[0], runs[1])
        assert not np.array_equal(runs[0], runs[2])


def test_threads_are_set_while_training_and_restored(encoder: Encoder) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    finetune(encoder, TEXTS, LABELS, None, None, FinetuneConfig(epochs=1, threads=1, **FAST),
             on_step=lambda s, t: seen.append(torch.get_num_threads()))
    assert set(seen) == {1} and torch.get_num_threads() == before


def test_pairs_are_setfit_pairs() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    pairs = _pairs(y, rounds=3, rng=np.random.default_rng(0))
    assert len(pairs) == 2 * 3 * len(y)
    for a, b, target in pairs:
        assert (y[a] == y[b]) == (target == 1.0)
        assert a != b or np.sum(y == y[a]) == 1  # a partner other than itself where there is one


@pytest.mark.parametrize("bad", [{"objective": "triplet"}, {"epochs": 0}, {"warmup_share": 1.0},
                                 {"patience": 0}, {"lr": 0.0}])
def test_config_refuses_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)
