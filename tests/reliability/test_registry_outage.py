"""The MLflow server stops answering (SIGSTOP) while the loop runs: deltas keep reaching serving, the
registration that falls due lands once it is back, and nothing is lost, learned twice or refused.

Runs bench/reliability_registry.py's scenario with one short outage on a stack of its own (MLflow
server, broker, `loopline serve`, `loopline feedback`)."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.fixture
def scenario(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # bench scripts import each other as top-level modules
    import reliability_registry

    return reliability_registry


def test_a_hung_mlflow_server_holds_up_neither_deltas_nor_the_registration(scenario, tmp_path: Path) -> None:
    outcome = scenario.mlflow_down(tmp_path, trials=1, outage_s=15.0, modes=("stop",), registry_interval_s=5.0)
    trial = outcome.measured["trials"][0]
    summary = f"{outcome.detail}\n{outcome.measured}"
    assert trial["served_advances"] >= 1, f"no delta reached serving while MLflow hung: {summary}"
    assert trial["pending_in_outage"] >= 1, f"no registration fell due in the outage: {summary}"
    assert trial["registered_version"] is not None, f"the registration never landed: {summary}"
    assert outcome.measured["serving_has_live_head"], summary
    assert outcome.measured["serving_gaps"] == 0, summary
    assert (outcome.events_lost, outcome.applied_twice, outcome.requests_failed) == (0, 0, 0), summary
    assert outcome.held, summary
