"""How a train run splits a dataset: stratified without ts, by time with it, per class with shots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import DatasetError
from models.split import SplitConfig, prepare


def sorted_by_label(n_classes: int = 13, per_class: int = 20) -> pd.DataFrame:
    """As many public intent datasets ship: every row of one class, then the next class."""
    return pd.DataFrame({"text": [f"request {c}-{i}" for c in range(n_classes) for i in range(per_class)],
                         "label": [f"intent_{c:02d}" for c in range(n_classes) for _ in range(per_class)]})


def test_a_file_sorted_by_label_without_ts_evaluates_every_class() -> None:
    data = prepare(sorted_by_label(), SplitConfig(holdout=0.2, seed=3))
    assert data.how == "stratified" and "no ts column" in data.note
    assert set(data.eval["label"]) == set(data.train["label"]) == set(data.classes)
    assert (data.eval["label"].value_counts() == 4).all()  # 20% of each class of 20
    assert len(data.frame) == 13 * 20 and data.cut == 13 * 16
    # shuffled, not class after class: a replay or a mini-batch of these rows is not one intent at a time
    assert data.train["label"].iloc[:20].nunique() > 5


def test_the_split_is_seeded() -> None:
    frame = sorted_by_label()
    first, again = prepare(frame, SplitConfig(seed=1)), prepare(frame, SplitConfig(seed=1))
    other = prepare(frame, SplitConfig(seed=2))
    assert first.frame["text"].tolist() == again.frame["text"].tolist()
    assert set(first.eval["text"]) != set(other.eval["text"])


def test_with_ts_the_latest_rows_evaluate() -> None:
    frame = sorted_by_label(2, 10).sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame["ts"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(20), unit="min")
    data = prepare(frame, SplitConfig(holdout=0.25))
    assert data.how == "time" and data.cut == 15
    assert data.eval["ts"].min() > data.train["ts"].max()


def test_shots_train_on_that_many_per_class_and_evaluate_on_others() -> None:
    data = prepare(sorted_by_label(5, 30), SplitConfig(holdout=0.2, seed=0, shots=10))
    assert data.how == "shots"
    assert (data.train["label"].value_counts() == 10).all()
    assert (data.eval["label"].value_counts() == 4).all()  # 20% of the 20 rows left of each class
    assert not set(data.train["text"]) & set(data.eval["text"])
    draws = {tuple(sorted(prepare(sorted_by_label(5, 30), SplitConfig(seed=s, shots=10)).train["text"]))
             for s in range(3)}
    assert len(draws) == 3


@pytest.mark.parametrize(("frame", "config", "message"), [
    (sorted_by_label(1, 5), SplitConfig(), r"a single class \(intent_00\)"),
    (pd.concat([sorted_by_label(2, 5), pd.DataFrame({"text": ["lonely"], "label": ["rare"]})], ignore_index=True),
     SplitConfig(), r"class\(es\) rare have a single row"),
    (sorted_by_label(3, 8), SplitConfig(shots=10), r"fewer than 10 rows \(8, 8, 8\)"),
    (sorted_by_label(2, 10).assign(ts=pd.date_range("2026-01-01", periods=20, tz="UTC")),
     SplitConfig(holdout=0.5), r"every row of class\(es\) intent_01 is in the latest 50%"),
])
def test_what_cannot_be_split_is_refused(frame: pd.DataFrame, config: SplitConfig, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        prepare(frame, config)
