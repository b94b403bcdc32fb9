"""Faults on the feedback side, on real processes: bench/reliability_feedback.py's scenarios with one trial each.

- the feedback service killed with SIGKILL at a random point of a burst of traffic, then
  restarted, ends with exactly the head, progressive counts and delta sequence of one that
  was never killed: nothing lost, nothing applied twice;
- the same with its two newest checkpoints damaged on disk (bytes flipped in one, a file of
  the other truncated): the damage is reported (log lines, metric, /healthz) and the
  checkpoint before them replayed to the same state;
- the broker stopped (SIGSTOP) under load: every predict request is still answered, and
  afterwards every feedback event sent was learned once: none lost to a dropped prediction
  (serving keeps its prediction log through the pause) or learned twice.

This module has a broker and `loopline serve` of its own: the suite's broker belongs to
the hostile-events tests, whose dead-letter counters must match `feedback-dlq` exactly.
One pair of feedback services (steady, victim) serves every test, in file order; the
broker pause comes last: it stops the victim and is watched by the steady service alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import TinyModel

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench"
PAUSE_S = 8.0


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))  # bench scripts import each other as top-level modules
        import reliability_feedback

        yield reliability_feedback
    for name in ("reliability_feedback", "reliability_outcome"):  # another test may import modules of those names
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def stack(bench: ModuleType, trained: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with bench.running_stack(tmp_path_factory.mktemp("faults-feedback"), trained) as stack:
        yield stack


@pytest.fixture(scope="module")
def pair(bench: ModuleType, stack: Any) -> Iterator[Any]:
    with bench.feedback_pair(stack) as pair:
        yield pair


def test_killed_at_a_random_point_it_ends_with_the_state_of_a_service_never_killed(
        bench: ModuleType, stack: Any, pair: Any) -> None:
    outcome = bench.kill_feedback(stack, pair, trials=1, seed=11)
    assert outcome.held, outcome.detail
    trial = outcome.measured["trials"][0]
    assert trial["feedback_sent"] >= 0.5 * bench.BURST * bench.FEEDBACK_SHARE, trial


def test_damaged_newest_checkpoints_are_reported_and_the_one_before_them_replayed_to_the_same_state(
        bench: ModuleType, stack: Any, pair: Any) -> None:
    """Bytes flipped in the newest checkpoint and a file of the one before truncated (one restart for both
    kinds of damage; the bench has a row for each alone)."""
    outcome = bench.damaged_checkpoint(stack, pair, trials=1, how="flip+truncate")
    assert outcome.held, outcome.detail  # detected, logged, counted, in /healthz, resumed from the third newest
    trial = outcome.measured["trials"][0]
    assert len(trial["damaged"]) == 2, trial
    assert trial["replayed_records"] > 0, f"the older checkpoint covered as much as the damaged ones: {trial}"


def test_with_the_broker_paused_serving_answers_and_every_feedback_is_learned_once_after(
        bench: ModuleType, stack: Any, pair: Any) -> None:
    outcome = bench.pause_broker(stack, pair, PAUSE_S, trials=1, seed=13)
    assert outcome.held, outcome.detail  # no failed request, nothing lost or applied twice
    trial = outcome.measured["trials"][0]
    # Paced at PAUSE_RATE/s, slower when the cores are busy; a few per second show serving kept answering.
    assert trial["requests_during_pause"] >= 5 * PAUSE_S, trial
    assert trial["slowest_during_pause_s"] < bench.REQUEST_TIMEOUT_S, trial
    assert trial["learned"] == trial["feedback_sent"] > 0, trial
    assert not trial["prediction_events_dropped"], "serving's log keeps predictions through a pause"
