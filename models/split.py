"""Which rows a train run learns from and which it evaluates on, and the checks that make that possible.

- With a `ts` column: time order, the latest `holdout` share evaluates (what comes
  next is what the model will meet).
- Without one: a seeded split stratified by label, `holdout` of every class
  evaluates. Time order is unknown, and a file sorted by label would otherwise hold
  out whole classes.
- With `shots`: `shots` rows of every class train (seeded), as at a product launch;
  `holdout` of the rows left of each class evaluate (at least one where any is left):
  the gates and the fallback threshold need more than a handful of rows to mean much.
- With a `split` column (`train` or `eval` on every row): that split, as given. The
  rows a run used are recorded so, and a retrain on them scores the champion on rows
  it did not train on.

`prepare` refuses what cannot be trained and evaluated: a single class, a class
too small for the split, a class whose rows all fall in the holdout. `loopline data
check` and `loopline train` both call it, so they accept and refuse the same files.

>>> frame = pd.DataFrame({"text": list("abcdefgh"), "label": ["x"] * 4 + ["y"] * 4})
>>> data = prepare(frame, SplitConfig(holdout=0.25, seed=1))
>>> data.classes, data.cut, len(data.frame), data.how
(('x', 'y'), 6, 8, 'stratified')
>>> sorted(data.frame["label"][data.cut:])
['x', 'y']
>>> prepare(frame[frame.label == "x"], SplitConfig())
Traceback (most recent call last):
...
models.data.DatasetError: dataset: a single class (x); a classifier needs at least two
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.data import DatasetError, class_list

SPLIT = "split"  # optional column: train or eval on every row


@dataclass(frozen=True)
class SplitConfig:
    """How a run splits its data."""

    holdout: float = 0.2  # share of the rows used that evaluates
    seed: int = 0
    shots: int | None = None  # train on this many rows per class

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 0.9:
            raise ValueError(f"holdout must be in (0, 0.9), got {self.holdout}")
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"shots must be at least 1, got {self.shots}")


@dataclass(frozen=True)
class Prepared:
    """The rows a run uses, training rows first: `frame[:cut]` trains, `frame[cut:]` evaluates."""

    frame: pd.DataFrame
    cut: int
    classes: tuple[str, ...]
    how: str  # time, stratified or shots
    note: str  # one line for the run's log and the CLI

    @property
    def train(self) -> pd.DataFrame:
        return self.frame.iloc[: self.cut]

    @property
    def eval(self) -> pd.DataFrame:
        return self.frame.iloc[self.cut :]


def prepare(frame: pd.DataFrame, config: SplitConfig, source: str = "dataset") -> Prepared:
    """Split `frame` (validated: text, label[, truth, user_id, ts]) for training; DatasetError if it cannot
    be. `truth`, when present, is what evaluation scores against (generated traffic's intended label)."""
    counts = frame["label"].value_counts()
    if len(counts) < 2:
        raise DatasetError(f"{source}: a single class ({counts.index[0]}); a classifier needs at least two")
    if SPLIT in frame.columns and config.shots is None:
        train, evaluate = _given(frame, source)
        how = "given"
        note = f"the split column decides: {len(train):,} rows train, {len(evaluate):,} evaluate"
    elif config.shots is not None:
        train, evaluate = _few_shot(frame, counts, config, source)
        how = "shots"
        note = (f"{config.shots} rows of each of {len(counts)} classes train, {len(evaluate):,} more evaluate "
                f"(seeded draw, seed {config.seed}; {len(frame) - len(train) - len(evaluate):,} rows unused)")
    elif "ts" in frame.columns:
        train, evaluate = _by_time(frame, config, source)
        how = "time"
        note = f"time order: the latest {config.holdout:.0%} ({len(evaluate):,} rows) evaluate"
    else:
        train, evaluate = _stratified(frame, counts, config, source)
        how = "stratified"
        note = (f"no ts column: a seeded split stratified by label (seed {config.seed}), {config.holdout:.0%} "
                f"of every class ({len(evaluate):,} rows) evaluate")
    used = pd.concat([frame.loc[train], frame.loc[evaluate]], ignore_index=True).drop(columns=[SPLIT],
                                                                                      errors="ignore")
    labels = used["label"] if "truth" not in used.columns else pd.concat([used["label"], used["truth"]])
    return Prepared(used, len(train), class_list(labels), how, note)


def _given(frame: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
    split = frame[SPLIT].astype("string").str.strip().str.lower()
    bad = ~split.isin(["train", "eval"])
    if bad.any():
        first = int(bad.to_numpy().nonzero()[0][0])
        raise DatasetError(f"{source}: column split must say train or eval on every row; row {first + 2} says "
                           f"{frame[SPLIT].iloc[first]!r}")
    train, evaluate = frame.index[split == "train"].to_numpy(), frame.index[split == "eval"].to_numpy()
    if len(train) == 0 or len(evaluate) == 0:
        raise DatasetError(f"{source}: column split needs rows of both train and eval")
    untrained = sorted(set(frame["label"]) - set(frame.loc[train, "label"]))
    if untrained:
        raise DatasetError(f"{source}: class(es) {', '.join(untrained[:5])} have no train row in column split: "
                           "nothing to learn them from")
    return train, evaluate


def _by_time(frame: pd.DataFrame, config: SplitConfig, source: str) -> tuple[np.ndarray, np.ndarray]:
    order = frame.sort_values("ts", kind="stable").index.to_numpy()
    cut = int(len(order) * (1 - config.holdout))
    if cut < 1 or cut >= len(order):
        raise DatasetError(f"{source}: {len(order)} rows cannot be split with holdout {config.holdout}")
    trained = set(frame.loc[order[:cut], "label"])
    late = sorted(set(frame["label"]) - trained)
    if late:
        raise DatasetError(f"{source}: every row of class(es) {', '.join(late[:5])} is in the latest "
                           f"{config.holdout:.0%}, which evaluates: nothing to learn them from; add earlier rows "
                           f"or drop the ts column for a stratified split")
    return order[:cut], order[cut:]


def _stratified(frame: pd.DataFrame, counts: pd.Series, config: SplitConfig,
                source: str) -> tuple[np.ndarray, np.ndarray]:
    small = sorted(counts[counts < 2].index)
    if small:
        raise DatasetError(f"{source}: class(es) {', '.join(small[:5])} have a single row; every class needs "
                           "at least 2 (one to train on, one to evaluate)")
    rng = np.random.default_rng(config.seed)
    train, evaluate = [], []
    for label in sorted(counts.index):
        rows = rng.permutation(frame.index[frame["label"] == label].to_numpy())
        n_eval = min(max(1, round(len(rows) * config.holdout)), len(rows) - 1)
        evaluate.append(rows[:n_eval])
        train.append(rows[n_eval:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(evaluate))


def _few_shot(frame: pd.DataFrame, counts: pd.Series, config: SplitConfig,
              source: str) -> tuple[np.ndarray, np.ndarray]:
    shots = config.shots
    assert shots is not None
    small = sorted(counts[counts < shots].index)
    if small:
        raise DatasetError(f"{source}: class(es) {', '.join(small[:5])} have fewer than {shots} rows "
                           f"({', '.join(str(counts[c]) for c in small[:5])}); --shots {shots} trains on "
                           f"{shots} of each")
    rng = np.random.default_rng(config.seed)
    train, evaluate = [], []
    for label in sorted(counts.index):
        rows = rng.permutation(frame.index[frame["label"] == label].to_numpy())
        left = len(rows) - shots
        train.append(rows[:shots])
        evaluate.append(rows[shots : shots + (max(1, round(left * config.holdout)) if left else 0)])
    if not sum(len(e) for e in evaluate):
        raise DatasetError(f"{source}: every class has exactly {shots} rows: none left to evaluate on")
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(evaluate))
