"""Offset jumps in a poll: the records after one are fetched again once; a jump that comes again is accepted."""

from __future__ import annotations

from services.feedback.gaps import Gaps
from services.feedback.intake import Record


def records(topic: str, partition: int, *offsets: int) -> list[Record]:
    return [Record(topic, partition, o, None, b"", 0.0) for o in offsets]


def test_a_jump_leaves_out_the_rest_of_that_partition_and_seeks_back_once() -> None:
    gaps = Gaps()
    poll = records("predictions", 0, 10, 11, 15, 16) + records("feedback", 1, 4, 5)
    kept, seeks = gaps.contiguous(poll, {"predictions:0": 10, "feedback:1": 4})
    assert [(r.topic, r.offset) for r in kept] == [("predictions", 10), ("predictions", 11), ("feedback", 4),
                                                   ("feedback", 5)]
    assert seeks == {("predictions", 0): 12} and gaps.refetched == 1

    # fetched again from 12: the records are there now
    kept, seeks = gaps.contiguous(records("predictions", 0, 12, 13, 14, 15), {"predictions:0": 12})
    assert [r.offset for r in kept] == [12, 13, 14, 15] and seeks == {}


def test_a_jump_that_comes_again_after_the_seek_is_accepted() -> None:
    gaps = Gaps()
    kept, seeks = gaps.contiguous(records("feedback", 2, 7), {"feedback:2": 5})
    assert kept == [] and seeks == {("feedback", 2): 5}
    kept, seeks = gaps.contiguous(records("feedback", 2, 7, 8), {"feedback:2": 5})
    assert [r.offset for r in kept] == [7, 8] and seeks == {} and gaps.accepted == 1


def test_a_partition_seen_for_the_first_time_has_no_jump() -> None:
    kept, seeks = Gaps().contiguous(records("predictions", 3, 40, 41), {})
    assert [r.offset for r in kept] == [40, 41] and seeks == {}
