"""JoinStore and Watermark: both sides wait, order comes from the data, nothing is lost across a checkpoint."""

from __future__ import annotations

import random

import numpy as np
import pytest

from services.feedback.join import JoinSettings, JoinStore, StoredFeedback, StoredPrediction, Watermark


def prediction(pid: str, ts: float, embedding: bool = True) -> StoredPrediction:
    return StoredPrediction(pid, ts, "1", f"user-{pid}" if embedding else None, f"text for {pid} ✓", "navigate",
                            0.7, np.array([3, 9], np.int64), np.array([1.0, 0.5], np.float32),
                            np.full(4, ts, np.float32) if embedding else None)


def feedback(event_id: str, pid: str, ts: float, offset: int = 0) -> StoredFeedback:
    return StoredFeedback(event_id, pid, "set_alarm", ts, 0, offset, pid, f'{{"event_id": "{event_id}"}}'.encode())


def test_feedback_joins_whichever_side_comes_first_and_waits_for_the_watermark() -> None:
    store = JoinStore()
    store.add_prediction(prediction("p1", 10.0))
    assert store.add_feedback(feedback("f1", "p1", 12.0)) is None
    assert store.add_feedback(feedback("f2", "p2", 11.0)) is None  # its prediction is not there yet
    store.add_prediction(prediction("p2", 10.5))
    assert store.advance(10.9) == ([], []), "nothing before the watermark yet"
    released, rejected = store.advance(20.0)
    assert [j.feedback.event_id for j in released] == ["f2", "f1"], "key order: time, not arrival"
    assert rejected == [] and store.counts["joined"] == 2


def test_order_is_a_function_of_the_data_not_of_arrival() -> None:
    events = [("p", f"p{i}", 100.0 + i) for i in range(30)] + [("f", f"p{i}", 100.5 + i) for i in range(30)]
    outcomes = set()
    for seed in range(5):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        store = JoinStore()
        for kind, pid, ts in shuffled:
            if kind == "p":
                store.add_prediction(prediction(pid, ts))
            else:
                store.add_feedback(feedback(f"f-{pid}", pid, ts))
        windows = [tuple(j.feedback.event_id for j in store.advance(end)[0]) for end in (110.0, 120.0, 200.0)]
        outcomes.add(tuple(windows))
    assert len(outcomes) == 1 and sum(map(len, next(iter(outcomes)))) == 30


@pytest.mark.parametrize(("second", "reason"), [
    (feedback("f1", "p1", 13.0), "duplicate"),  # the same event again
    (feedback("f9", "p1", 13.0), "already_labeled"),  # another event for a labeled prediction
])
def test_a_prediction_is_learned_once(second: StoredFeedback, reason: str) -> None:
    store = JoinStore()
    store.add_prediction(prediction("p1", 10.0))
    store.add_feedback(feedback("f1", "p1", 12.0))
    rejected = store.add_feedback(second)
    assert rejected is not None and rejected.reason == reason and rejected.feedback.value == second.value
    store.add_prediction(prediction("p1", 10.0))  # the prediction log re-sent it
    assert len(store.advance(50.0)[0]) == 1 and store.counts["duplicate_prediction"] == 1


def test_unmatched_feedback_is_rejected_after_its_wait_and_old_predictions_expire() -> None:
    store = JoinStore(JoinSettings(feedback_wait_s=30, prediction_ttl_s=100, max_predictions=3))
    assert store.add_feedback(feedback("f1", "nobody", 10.0)) is None
    assert store.advance(39.0) == ([], [])
    _, rejected = store.advance(41.0)
    assert [(r.feedback.event_id, r.reason) for r in rejected] == [("f1", "unmatched")]
    assert "30 s" in rejected[0].detail
    for i in range(5):
        store.add_prediction(prediction(f"p{i}", 50.0 + i))
    assert list(store.predictions) == ["p2", "p3", "p4"] and store.counts["evicted_prediction"] == 2
    store.advance(152.5)
    assert list(store.predictions) == ["p3", "p4"] and store.counts["expired_prediction"] == 1


def test_feedback_stamped_ahead_does_not_hold_back_the_expiry_of_feedback_after_it() -> None:
    store = JoinStore(JoinSettings(feedback_wait_s=30))
    store.add_feedback(feedback("ahead", "later", 1_000.0))
    store.add_feedback(feedback("f1", "nobody", 10.0))
    store.add_feedback(feedback("f2", "joins", 12.0))
    store.add_prediction(prediction("joins", 11.0))
    _, rejected = store.advance(41.0)
    assert [r.feedback.event_id for r in rejected] == ["f1"]
    assert list(store.waiting) == ["later"]
    restored = JoinStore.from_bytes(store.to_bytes(), store.settings)
    assert restored.advance(1_029.0)[1] == [] and [r.feedback.event_id for r in restored.advance(1_031.0)[1]] == \
        ["ahead"]


def test_remembered_ids_are_bounded_and_a_forgotten_repeat_is_still_never_learned_twice() -> None:
    store = JoinStore(JoinSettings(max_remembered_ids=2, feedback_wait_s=5))
    for i in range(4):
        store.add_prediction(prediction(f"p{i}", 10.0 + i))
        store.add_feedback(feedback(f"f{i}", f"p{i}", 10.5 + i))
    assert list(store.seen) == ["f2", "f3"] and list(store.labeled) == ["p2", "p3"]
    assert store.counts["forgotten_event_id"] == store.counts["forgotten_labeled"] == 2
    assert store.add_feedback(feedback("f0", "p0", 14.0)) is None, "forgotten: not known as a duplicate"
    released, rejected = store.advance(30.0)
    assert len(released) == 4 and [(r.feedback.event_id, r.reason) for r in rejected] == [("f0", "unmatched")]


def test_a_join_later_than_its_window_is_learned_once_in_the_next() -> None:
    store = JoinStore()
    store.add_prediction(prediction("p1", 10.0))
    assert store.advance(20.0) == ([], [])
    store.add_feedback(feedback("f1", "p1", 12.0))  # arrives after the window up to 20 was released
    released, _ = store.advance(21.0)
    assert [j.key for j in released] == [(20.0, "f1")] and store.counts["late"] == 1


def test_checkpoint_round_trip_keeps_everything() -> None:
    store = JoinStore()
    for i in range(6):
        store.add_prediction(prediction(f"p{i}", 10.0 + i, embedding=i % 2 == 0))
    store.add_feedback(feedback("f0", "p0", 20.0, offset=7))
    store.add_feedback(feedback("f1", "p1", 21.0))
    store.add_feedback(feedback("fx", "px", 22.0))
    store.advance(5.0)

    restored = JoinStore.from_bytes(store.to_bytes())
    assert list(restored.predictions) == list(store.predictions)
    assert all(_same(restored.predictions[k], p) for k, p in store.predictions.items())
    assert restored.waiting == store.waiting and restored.labeled == store.labeled
    assert restored.seen == store.seen and restored.counts == store.counts
    assert list(restored.seen) == list(store.seen) and list(restored.labeled) == list(store.labeled), \
        "the oldest first, as expiry and forgetting expect"
    assert restored.released_until == store.released_until
    a, b = restored.advance(100.0)[0], store.advance(100.0)[0]
    assert [j.key for j in a] == [j.key for j in b] and all(
        _same(x.prediction, y.prediction) and x.feedback == y.feedback for x, y in zip(a, b, strict=True))
    assert JoinStore.from_bytes(JoinStore().to_bytes()).predictions == {}


def test_a_frozen_copy_serializes_the_store_as_it_was_while_the_store_moves_on() -> None:
    store = JoinStore()
    for i in range(4):
        store.add_prediction(prediction(f"p{i}", 10.0 + i, embedding=i % 2 == 0))
    store.add_feedback(feedback("f0", "p0", 20.0))
    store.add_feedback(feedback("fx", "px", 22.0, offset=3))
    before = store.to_bytes()
    frozen = store.frozen()
    store.add_prediction(prediction("later", 30.0))
    store.add_feedback(feedback("f1", "p1", 31.0))
    store.advance(100.0)
    assert frozen.to_bytes() == before
    assert store.to_bytes() != before


def _same(a: StoredPrediction, b: StoredPrediction) -> bool:
    arrays = ("indices", "values", "embedding")
    plain = all(getattr(a, f) == getattr(b, f) for f in a.__dataclass_fields__ if f not in arrays)
    return plain and all(np.array_equal(getattr(a, f), getattr(b, f)) if getattr(a, f) is not None
                         else getattr(b, f) is None for f in arrays)


def test_watermark_waits_for_the_slowest_partition_until_it_goes_idle() -> None:
    mark = Watermark(lateness_s=1.0, idle_s=5.0)
    p0, p1 = ("feedback", 0), ("feedback", 1)
    mark.track([p0, p1], now=100.0)
    assert mark.value(100.0) == float("-inf")
    mark.observe(p0, 100.0, now=100.0)
    mark.observe(p1, 99.0, now=100.0)
    mark.observe(p0, 103.0, now=103.0)
    assert mark.value(103.0) == 98.0, "the slower partition holds it back"
    assert mark.value(106.0) == 100.0, "partition 1 is idle: it holds back only to wall clock - idle_s"
    assert mark.value(120.0) == 114.0, "traffic stopped: everything is released idle_s + lateness later"
    mark.track([p1], now=120.0)
    assert list(mark.max_ts) == [p1], "a partition no longer assigned is forgotten"


def test_after_a_restore_no_partition_goes_idle_before_it_is_assigned_again() -> None:
    """A restarted service takes seconds to start and join its group; the records after its checkpoint
    are unread until then, so silence before the assignment must not release anything."""
    mark = Watermark(lateness_s=1.0, idle_s=5.0)
    p0, p1 = ("feedback", 0), ("feedback", 1)
    mark.restore({p0: 100.0, p1: 99.0})
    assert mark.value(200.0) == 98.0, "held at the checkpoint's event time, however long start-up took"
    mark.track([p0, p1], now=200.0)
    mark.observe(p0, 101.0, now=201.0)
    assert mark.value(204.0) == 98.0, "partition 1's idle clock starts at the assignment"
    assert mark.value(205.5) == 100.0, "then it stops holding back; partition 0, read lately, still does"
