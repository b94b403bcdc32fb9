"""ReplayPool: a reproducible uniform sample of learned examples, and what the learner does with it."""

from __future__ import annotations

import random

import numpy as np

from services.feedback.join import Joined, StoredFeedback, StoredPrediction
from services.feedback.replay import ReplayPool


def joined(i: int) -> Joined:
    prediction = StoredPrediction(f"p{i}", float(i), "1", None, "text", "x", 0.5, np.zeros(0, np.int64),
                                  np.zeros(0, np.float32), None)
    return Joined(prediction, StoredFeedback(f"f{i}", prediction.prediction_id, "x", float(i), 0, i, None, b"{}"))


def ids(examples: list[Joined]) -> list[str]:
    return [j.feedback.event_id for j in examples]


def test_the_pool_is_the_same_sample_however_the_stream_was_cut_and_ordered() -> None:
    stream = [joined(i) for i in range(5_000)]
    in_windows = ReplayPool(200)
    for start in range(0, len(stream), 137):
        in_windows.add(stream[start:start + 137])
    shuffled = ReplayPool(200)
    shuffled.add(random.Random(3).sample(stream, len(stream)))
    assert len(in_windows) == 200 and ids(in_windows.examples()) == ids(shuffled.examples())

    again = ReplayPool(200)
    again.add(stream[:2_500] + stream[:2_500] + stream[2_500:])  # duplicates are kept once
    assert ids(again.examples()) == ids(in_windows.examples())


def test_the_pool_samples_the_whole_stream_not_only_its_end() -> None:
    pool = ReplayPool(500)
    for start in range(0, 20_000, 250):
        pool.add([joined(i) for i in range(start, start + 250)])
    positions = np.array([int(j.feedback.event_id[1:]) for j in pool.examples()])
    # Uniform over 20,000: each quarter of the stream holds about a quarter of the pool.
    assert all(90 < n < 160 for n in np.histogram(positions, bins=4, range=(0, 20_000))[0])


def test_a_sample_is_reproducible_distinct_and_capped_by_the_pool() -> None:
    pool = ReplayPool(300)
    pool.add(joined(i) for i in range(1_000))
    first = pool.sample(50, (2, 7))
    assert ids(first) == ids(pool.sample(50, (2, 7))) and len(set(ids(first))) == 50
    assert ids(first) != ids(pool.sample(50, (2, 8)))
    assert len(pool.sample(1_000, (2, 7))) == 300 and pool.sample(0, (1, 1)) == []


def test_kept_examples_only_and_the_pool_refills() -> None:
    pool = ReplayPool(100)
    pool.add(joined(i) for i in range(1_000))
    changes = pool.changes
    pool.keep(lambda j: int(j.feedback.event_id[1:]) % 2 == 0)
    assert pool.changes == changes + 1 and all(int(i[1:]) % 2 == 0 for i in ids(pool.examples()))
    assert len(pool) < 100
    pool.add(joined(i) for i in range(1_000, 3_000))
    assert len(pool) == 100
    assert len(ReplayPool(0).sample(10, (1, 1))) == 0
