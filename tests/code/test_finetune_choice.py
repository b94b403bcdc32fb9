"""When the train flow fine-tunes the encoder, and the validation split it decides on."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from flows.config import TrainConfig
from flows.finetune_tasks import validation_split, wanted


def test_auto_fine_tunes_only_when_classes_have_few_rows() -> None:
    few = [c for c in "abcd" for _ in range(10)]
    many = [c for c in "abcd" for _ in range(400)]
    auto = TrainConfig(finetune="auto")
    assert wanted(auto, few) == "classify" and wanted(auto, many) is None
    assert wanted(TrainConfig(finetune="auto", finetune_auto_max_per_class=500), many) == "classify"
    assert wanted(TrainConfig(), few) is None, "off unless asked"
    assert wanted(TrainConfig(finetune="contrastive"), many) == "contrastive"
    with pytest.raises(ValidationError):
        TrainConfig(finetune="sometimes")


def test_the_validation_split_takes_a_share_of_every_class_and_is_seeded() -> None:
    labels = [c for c, n in (("a", 10), ("b", 20), ("c", 1)) for _ in range(n)]
    fit, val = validation_split(labels, 0.2, seed=3)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(labels)))
    assert Counter(labels[i] for i in val) == {"a": 2, "b": 4}, "a class of one row is never held out"
    assert np.array_equal(validation_split(labels, 0.2, seed=3)[1], val)
    assert not np.array_equal(validation_split(labels, 0.2, seed=4)[1], val)
