"""kill -9 of a real `loopline serve` inside a full-version swap and inside a stream of head deltas.

The scenarios are bench/reliability_serving.py's, with two trials each (the bench runs
twenty): after every kill the restarted server must answer with a whole model, the
champion the registry names or base + deltas 1..K without a gap, equal to that model
computed offline for fixed inputs, and must then reach the last delta published, each
applied once. Serving keeps no model state on disk, so this holds only as long as a
restart loads `@champion` and replays `model-updates` in order from the beginning. A
kill inside a load also leaves its download folder behind; the restarted server must
have removed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.conftest import TinyModel
from tests.integration.stack import Serving

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.fixture(scope="module")
def faults_serving(loop_serving: Serving, serving_scenarios: ModuleType, trained: TinyModel) -> Iterator[Serving]:
    yield loop_serving
    serving_scenarios.settle(loop_serving, trained)  # the flood and soak tests then start from a clean champion


def test_kill_9_inside_a_swap_restarts_on_the_whole_champion(faults_serving: Serving, serving_scenarios: ModuleType,
                                                             trained: TinyModel) -> None:
    outcome = serving_scenarios.kill_during_swap(faults_serving, trained, trials=2, seed=1, min_inside=1)
    print(outcome.detail)
    assert outcome.held, outcome.detail
    assert outcome.measured["landed"]["inside"] >= 1, "a kill landed between the start and the end of a load"


def test_kill_9_inside_a_delta_stream_restarts_on_base_plus_every_delta(
        faults_serving: Serving, serving_scenarios: ModuleType, trained: TinyModel) -> None:
    outcome = serving_scenarios.kill_during_deltas(faults_serving, trained, trials=2, seed=1)
    print(outcome.detail)
    assert outcome.held, outcome.detail
    assert outcome.events_lost == 0 and outcome.applied_twice == 0
