"""Deployments of the train flow: a nightly schedule and a retrain when drift is detected.

`loopline flows serve` runs them in a long-lived process against a Prefect
server (schedules and event triggers need a real server, not ephemeral mode).
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.config import TrainConfig
from flows.train import train_flow

DRIFT_EVENT = "loopline.drift.detected"


def build_deployments(cron: str = "0 3 * * *", encoder: str = "minilm",
                      config: TrainConfig | None = None) -> list[RunnerDeployment]:
    """The nightly run and the drift-triggered run, same flow, same parameters (`config`, else the
    defaults with `encoder`: train on the champion's data)."""
    parameters = {"config": (config or TrainConfig(encoder=encoder, from_champion=True)).model_dump(mode="json")}
    # A drift run reads the collected examples up to the end of the window that drifted (the event's payload
    # names it), not up to whenever the run happens to start. Prefect renders the template as a number, and
    # as null for an event without it (then: up to the start).
    on_drift_parameters = {"config": {**parameters["config"],
                                      "collected_feedback_until": "{{ event.payload.window_to | default(none) }}"}}
    nightly = train_flow.to_deployment(
        name="nightly", schedules=[Cron(cron, timezone="UTC")], parameters=parameters,
        description="Retrain every night, gate, register, deploy if not worse.", tags=["loopline"])
    on_drift = train_flow.to_deployment(
        name="on-drift", parameters=parameters, tags=["loopline"],
        description=f"Retrain when the feedback service emits {DRIFT_EVENT}.",
        triggers=[DeploymentEventTrigger(name="drift detected", expect={DRIFT_EVENT},
                                         match={"prefect.resource.id": "loopline.*"},
                                         parameters=on_drift_parameters)],
    )
    # to_deployment is sync-compatible: called from sync code it returns the deployment itself.
    assert isinstance(nightly, RunnerDeployment) and isinstance(on_drift, RunnerDeployment)
    return [nightly, on_drift]


def serve_deployments(cron: str = "0 3 * * *", encoder: str = "minilm", config: TrainConfig | None = None) -> None:
    """Register both deployments and run their flow runs in this process until stopped."""
    # One run at a time: two runs would race on the champion alias and the Feast store.
    serve(*build_deployments(cron, encoder, config), limit=1)


def emit_drift_detected(source: str, payload: dict[str, object]) -> None:
    """Emit `loopline.drift.detected` (the feedback service calls this); the on-drift deployment reacts."""
    from prefect.events import emit_event

    emit_event(event=DRIFT_EVENT, resource={"prefect.resource.id": f"loopline.{source}"},
               payload=dict(payload))
