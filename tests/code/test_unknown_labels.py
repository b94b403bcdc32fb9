"""unknown_label dead letters are counted per label asked for, with the label set capped: labels are user input."""

from __future__ import annotations

from collections import Counter

from services.feedback.service import MAX_UNKNOWN_LABELS, OTHER_LABEL, Stats


def test_the_most_asked_for_labels_are_shown_and_the_rest_summed_as_other() -> None:
    stats = Stats(Counter(), Counter(), Counter())
    for label, n in (("make_coffee", 5), ("book_flight", 3), ("dance", 1), ("sing", 1)):
        for _ in range(n):
            stats.count_unknown(label)
    assert stats.top_unknown(2) == [("make_coffee", 5), ("book_flight", 3), (OTHER_LABEL, 2)]
    assert stats.top_unknown(10) == [("make_coffee", 5), ("book_flight", 3), ("dance", 1), ("sing", 1)]


def test_a_flood_of_made_up_labels_does_not_grow_the_state() -> None:
    stats = Stats(Counter(), Counter(), Counter())
    for i in range(MAX_UNKNOWN_LABELS + 500):
        stats.count_unknown(f"made-up-{i}")
    stats.count_unknown("made-up-0")  # a label already counted keeps counting under its name
    assert len(stats.unknown_labels) == MAX_UNKNOWN_LABELS + 1  # plus the (other) bucket
    assert stats.unknown_labels[OTHER_LABEL] == 500 and stats.unknown_labels["made-up-0"] == 2
    assert sum(n for _, n in stats.top_unknown(20)) == MAX_UNKNOWN_LABELS + 501
