"""FeedbackPacer: feedback partitions far ahead of their predictions are held back until those catch up."""

from __future__ import annotations

from services.common.events import FEEDBACK, PREDICTIONS
from services.feedback.pacing import FeedbackPacer


def never_quiet(_: tuple[str, int]) -> bool:
    return False


def test_feedback_ahead_of_its_predictions_is_paused_and_resumed_when_they_catch_up() -> None:
    pacer = FeedbackPacer(max_ahead_s=4.0)
    times = {(PREDICTIONS, 0): 100.0, (FEEDBACK, 0): 103.0, (PREDICTIONS, 1): 100.0, (FEEDBACK, 1): 110.0}
    assert pacer.decide(times, never_quiet) == ([1], [])
    assert pacer.decide(times, never_quiet) == ([], []), "a paused partition is not paused again"
    times[(PREDICTIONS, 1)] = 107.0  # 3 s behind: within the bound but not within half of it
    assert pacer.decide(times, never_quiet) == ([], [])
    times[(PREDICTIONS, 1)] = 108.5
    assert pacer.decide(times, never_quiet) == ([], [1])
    assert pacer.paused == set() and pacer.pauses == 1


def test_predictions_ahead_of_feedback_hold_nothing_back() -> None:
    pacer = FeedbackPacer(max_ahead_s=1.0)
    assert pacer.decide({(PREDICTIONS, 0): 500.0, (FEEDBACK, 0): 10.0}, never_quiet) == ([], [])


def test_quiet_predictions_hold_nothing_back() -> None:
    """A prediction partition with nothing more to read must not stop its feedback for good."""
    pacer = FeedbackPacer(max_ahead_s=1.0)
    times = {(PREDICTIONS, 0): 100.0, (FEEDBACK, 0): 200.0}
    assert pacer.decide(times, lambda p: p == (PREDICTIONS, 0)) == ([], [])
    assert pacer.decide(times, never_quiet) == ([0], [])
    assert pacer.decide(times, lambda p: p == (PREDICTIONS, 0)) == ([], [0])


def test_a_partition_whose_predictions_this_consumer_does_not_read_is_never_paused() -> None:
    pacer = FeedbackPacer(max_ahead_s=1.0)
    assert pacer.decide({(FEEDBACK, 3): 1e9}, never_quiet) == ([], [])


def test_after_a_new_assignment_nothing_counts_as_paused() -> None:
    pacer = FeedbackPacer(max_ahead_s=1.0)
    pacer.decide({(PREDICTIONS, 0): 0.0, (FEEDBACK, 0): 10.0}, never_quiet)
    pacer.forget()
    assert pacer.paused == set()


def test_feedback_stamped_ahead_of_the_clock_does_not_hold_a_live_partition() -> None:
    """Live traffic (predictions read up to the clock) and one feedback record stamped 50 s ahead: without
    the clock bound the partition would stay paused until predictions reached that time."""
    pacer, now = FeedbackPacer(max_ahead_s=5.0), 1_000.0
    times = {(PREDICTIONS, 0): now - 0.2, (FEEDBACK, 0): now + 50.0}
    assert pacer.decide(times, never_quiet, now) == ([], [])
    behind = {(PREDICTIONS, 0): now - 30.0, (FEEDBACK, 0): now + 50.0}
    assert pacer.decide(behind, never_quiet, now) == ([0], []), "a backlog is still paced"
    assert pacer.decide({(PREDICTIONS, 0): now - 2.0, (FEEDBACK, 0): now + 50.0}, never_quiet, now) == ([], [0])
