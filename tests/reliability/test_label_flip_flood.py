"""A label-flip flood through the real serving and feedback processes.

40% of the users report a wrong intent for everything from 30% of the stream on
(`label_flip` traffic, 2,000 predictions over HTTP, each with its feedback on the
topic). The feedback service's gate must reject updates after the onset, and no head
that reached serving (the champion plus every delta on `model-updates`, rebuilt offline)
may be less accurate on clean traffic than the champion by more than 0.05, the bound
tests/code/test_label_flip.py holds on the same kind of stream without processes; serving's
own answers on clean traffic after the flood are held to it too.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.integration.stack import Feedback, Serving

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_the_gate_keeps_poisoned_updates_from_serving(loop_serving: Serving, loop_feedback: Feedback,
                                                       serving_scenarios: ModuleType) -> None:
    outcome = serving_scenarios.label_flip_flood(loop_serving, loop_feedback)
    print(outcome.detail)
    measured = outcome.measured
    assert measured["rejected_after_onset"] > 0, outcome.detail
    assert measured["worst_head_accuracy"] >= measured["champion_accuracy"] - serving_scenarios.FLOOD_BOUND
    assert measured["after_accuracy"] >= measured["champion_accuracy"] - serving_scenarios.FLOOD_BOUND
    assert outcome.held and outcome.requests_failed == 0, outcome.detail
