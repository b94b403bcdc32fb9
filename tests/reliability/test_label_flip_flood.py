"""A label-flip flood through the real serving and feedback processes.

40% of the users report a wrong intent for everything from 30% of the stream on
(`label_flip` traffic, 2,000 predictions over HTTP, each with its feedback on the
topic). Per-user trust must withhold at least 60% of the poisoned feedback (read back
from feedback-dlq as `untrusted_user`) and at most 1% of the rest, and no head that
reached serving (the champion plus every delta on `model-updates`, rebuilt offline) may
be less accurate on clean traffic than the champion by more than 0.02 (about the noise
of 600 clean texts); serving's own answers on clean traffic after the flood are held to
it too. Without trust the gate alone lets heads lose up to 0.05
(tests/code/test_label_flip.py).
"""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.integration.stack import Feedback, Serving

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_poisoned_feedback_is_withheld_and_no_head_serving_holds_loses_clean_accuracy(
        loop_serving: Serving, loop_feedback: Feedback, serving_scenarios: ModuleType) -> None:
    outcome = serving_scenarios.label_flip_flood(loop_serving, loop_feedback)
    print(outcome.detail)
    measured = outcome.measured
    assert measured["poisoned_withheld"] >= serving_scenarios.TRUST_CATCHES * measured["poisoned"], outcome.detail
    assert measured["clean_withheld"] <= serving_scenarios.TRUST_SPARES * 2_000, outcome.detail
    assert measured["worst_head_accuracy"] >= measured["champion_accuracy"] - serving_scenarios.FLOOD_BOUND
    assert measured["after_accuracy"] >= measured["champion_accuracy"] - serving_scenarios.FLOOD_BOUND
    assert outcome.held and outcome.requests_failed == 0, outcome.detail
