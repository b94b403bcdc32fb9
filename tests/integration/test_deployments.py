"""Deployments against a real Prefect server: the nightly schedule and the drift trigger."""

from __future__ import annotations

import asyncio
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import TrainConfig
from flows.deployments import DRIFT_EVENT, build_deployments, emit_drift_detected

pytestmark = pytest.mark.slow


async def _flow_runs(deployment_id: object) -> list[object]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_nightly_schedule_and_drift_trigger_create_runs(prefect_server: str) -> None:
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        nightly, on_drift = build_deployments(cron="15 2 * * *", encoder="tiny")
        nightly_id, drift_id = nightly.apply(), on_drift.apply()

        async def read() -> tuple[object, object]:
            async with get_client() as client:
                return await client.read_deployment(nightly_id), await client.read_deployment(drift_id)

        nightly_read, drift_read = asyncio.run(read())
        assert [s.schedule.cron for s in nightly_read.schedules] == ["15 2 * * *"]
        assert drift_read.parameters["config"]["encoder"] == "tiny"
        assert drift_read.parameters["config"]["from_champion"], "retrains train on the champion's data"
        # Other tests on the session server may have run this deployment already: count only new runs.
        earlier = {r.id for r in asyncio.run(_flow_runs(drift_id))}  # type: ignore[attr-defined]

        # An alert names its window by feedback times: the run trains on what the alert saw. An event
        # without one (sent by hand) reads up to the run's start.
        window_to = 1_765_000_123.25
        emit_drift_detected("feedback", {"drift_share": 0.6, "accuracy": 0.7, "window_from": window_to - 60,
                                         "window_to": window_to})
        runs = _new_runs(drift_id, earlier, 1)
        config = runs[0].parameters["config"]  # type: ignore[attr-defined]
        assert config["encoder"] == "tiny"
        assert config["collected_feedback_until"] == window_to, "a number, not the template's text"
        TrainConfig.model_validate(config)

        emit_drift_detected("feedback", {"drift_share": 0.6, "accuracy": 0.7})
        later = _new_runs(drift_id, earlier, 2)
        configs = [r.parameters["config"] for r in later]  # type: ignore[attr-defined]
        assert sorted(c["collected_feedback_until"] is None for c in configs) == [False, True]


def _new_runs(deployment_id: object, earlier: set[object], count: int) -> list[object]:
    """Wait up to 60 s for `count` runs of the deployment that are not in `earlier`."""
    deadline = time.monotonic() + 60
    runs: list[object] = []
    while len(runs) < count and time.monotonic() < deadline:
        time.sleep(1)
        runs = [r for r in asyncio.run(_flow_runs(deployment_id)) if r.id not in earlier]  # type: ignore[attr-defined]
    assert len(runs) >= count, f"{len(runs)} new run(s) of the on-drift deployment within 60 s of {DRIFT_EVENT}"
    return runs
