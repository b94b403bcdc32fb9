"""A short soak of the real serving and feedback processes (bench/reliability_serving.py runs 10 minutes).

One minute of predictions with user features, each answered prediction followed by its
feedback: no request may fail, serving may answer no 5xx, the feedback service may
dead-letter nothing (per-user trust may withhold at most 1% of this honest feedback)
and must judge every feedback event exactly once (read per event from its checkpoint),
and the RSS of each process
group may grow by less than 30 MB over the second half. A leak of 1 KB per request (the
size of one logged prediction event) would add about 0.6 MB per 30 s here, so this
bound catches only gross leaks; the bench's 10 minutes reports the growth itself.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.stack import Feedback, Serving

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_a_minute_of_predictions_and_feedback_fails_nothing_and_memory_stays_flat(
        loop_serving: Serving, loop_feedback: Feedback, serving_scenarios: ModuleType, tmp_path: Path) -> None:
    outcome = serving_scenarios.soak(loop_serving, loop_feedback, 60.0, plot=tmp_path / "soak.png")
    print(outcome.detail)
    assert outcome.requests_failed == 0 and not any(outcome.measured["errors"].values()), outcome.detail
    assert (outcome.events_lost, outcome.applied_twice) == (0, 0), outcome.detail
    for name, growth in outcome.measured["growth"].items():
        assert growth["second_half_mb"] < 30, f"{name}: {outcome.detail}"
    assert outcome.held and (tmp_path / "soak.png").stat().st_size > 10_000
