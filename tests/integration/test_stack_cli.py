"""`loopline up | status | down` as users run them: real commands, real servers, free ports, a tmp state folder."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from infra.broker import FEEDBACK, TOPICS, admin_client
from infra.process import ManagedProcess, free_port, port_is_free
from infra.stack import HEALTHY, INFRA_PARTS, MARKER, MODEL_PARTS, PART_NAMES, STOPPED, WAITING, Stack
from models.traffic import TrafficConfig, generate
from services.common.events import FeedbackEvent
from services.common.examples import ExamplesTable
from services.common.features import materialize, open_store
from services.common.registry import Registry, Version
from services.common.settings import CommonSettings
from tests.conftest import TinyModel
from tests.integration.helpers import drift_state, wait_until
from tests.integration.stack import bin_command, register


def loopline(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """Run `loopline` in an environment that names no server, as a fresh shell would (retrains on the tiny
    encoder, as in every test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPLINE_", "PREFECT_API"))}
    env["COLUMNS"] = "200"  # one table row per line
    env["LOOPLINE_RUNNER_ENCODER"] = "tiny"
    return subprocess.run(bin_command(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False)


def port_flags() -> list[str]:
    ports: list[int] = []
    while len(ports) < len(PART_NAMES):  # a port freed a moment ago can be handed out again: one per part
        if (port := free_port()) not in ports:
            ports.append(port)
    return [arg for name, port in zip(PART_NAMES, ports, strict=True) for arg in (f"--{name}-port", str(port))]


def group_pids(state: Path) -> list[int]:
    """Every process of every part running from `state`."""
    handles = (ManagedProcess.from_pidfile(name, state) for name in PART_NAMES)
    return [pid for handle in handles if handle is not None for pid in handle.group_pids()]


def marked_processes(state: Path) -> list[int]:
    """Processes anywhere on the machine that a stack in `state` started."""
    marker = f"{MARKER}={state.resolve()}:".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def health(state: Path) -> dict[str, str]:
    return {row.part.name: row.health for row in Stack.load(state).status()}


def assert_down(state: Path, pids: list[int]) -> None:
    done = loopline("down", "--state-dir", str(state))
    assert done.returncode == 0, done.stdout + done.stderr
    after = loopline("status", "--state-dir", str(state))
    assert after.returncode == 1  # not everything is healthy
    assert health(state) == dict.fromkeys(PART_NAMES, STOPPED)
    assert not list(state.glob("*.pid"))
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not marked_processes(state)
    assert all(port_is_free(part.port) for part in Stack.load(state).parts.values())


def send_feedback(stack: Stack, n: int) -> None:
    """`n` requests through serving, each answered with feedback on the broker, as an app would."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=stack.parts["broker"].url)
    with httpx.Client(base_url=stack.parts["serving"].url, timeout=30) as http:
        for i, event in enumerate(generate(TrafficConfig(n_events=n, n_users=30, seed=4)).events.itertuples()):
            answer = http.post("/v1/predict", json={"text": event.text, "user_id": event.user_id}).json()
            feedback = FeedbackEvent(event_id=f"stack-{i}", prediction_id=answer["prediction_id"], label=event.label)
            producer.send(FEEDBACK, key=answer["prediction_id"].encode(), value=feedback.model_dump_json().encode())
    producer.flush(10)
    producer.close()


def drift_retrain(stack: Stack, registry: Registry) -> Version:
    """Emit `loopline.drift.detected` on the stack's Prefect; the runner's on-drift run must complete and register
    a version."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import emit_drift_detected

    async def completed() -> int:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("train-quantize-compile-deploy/on-drift")
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            return sum(r.state_name == "Completed" for r in runs)

    runner = stack.handle("runner")
    assert runner is not None
    with temporary_settings({PREFECT_API_URL: stack.parts["prefect"].url}):
        emit_drift_detected("feedback", {"drift_share": 0.7, "accuracy": 0.6, "reason": "test"})
        assert wait_until(lambda: asyncio.run(completed()) > 0, 480, every=3), runner.log_tail(80)
    return max((v for v in registry.versions() if v.tags.get("source") == "train"), key=lambda v: v.version)


def assert_infra_up_and_models_waiting(state: Path) -> None:
    """`status` and the servers agree: infrastructure healthy, serving and feedback waiting for a champion."""
    status = loopline("status", "--state-dir", str(state))
    assert status.returncode == 0, status.stdout
    stack = Stack.load(state)
    rows = {row.part.name: row for row in stack.status()}
    assert {n: r.health for n, r in rows.items()} == {**dict.fromkeys(INFRA_PARTS, HEALTHY),
                                                      **dict.fromkeys(MODEL_PARTS, WAITING)}
    for name, row in rows.items():
        line = next(line for line in status.stdout.splitlines() if f" {name} " in line)
        assert row.part.url in line and row.health in line and (row.pid is None or str(row.pid) in line)

    admin = admin_client(stack.parts["broker"].url)
    try:
        assert set(TOPICS) <= set(admin.list_topics())
    finally:
        admin.close()
    assert httpx.get(f"{stack.parts['mlflow'].url}/health", timeout=5).status_code == 200
    assert httpx.get(f"{stack.parts['prefect'].url}/health", timeout=5).status_code == 200
    assert httpx.get(stack.parts["evidently"].url, timeout=5).status_code == 200  # the UI itself


def test_a_taken_port_fails_clearly_and_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    flags = port_flags()
    taken = int(flags[flags.index("--prefect-port") + 1])
    with socket.create_server(("127.0.0.1", taken)):
        up = loopline("up", "--state-dir", str(state), *flags)
    assert up.returncode != 0
    assert f"cannot start prefect: port {taken} on 127.0.0.1 is already in use" in " ".join(up.stdout.split())
    assert "Traceback" not in up.stdout + up.stderr
    assert not list(state.glob("*.pid"))
    assert not marked_processes(state)


@pytest.mark.slow
def test_up_down_up_again_then_up_with_a_champion_starts_serving_feedback_and_the_runner(
        tmp_path: Path, trained: TinyModel) -> None:
    """One stack through its life (each `up` of infrastructure costs half a minute on 2 cores): up from a clean
    state, down, up again with no ports given (the state folder remembers them), then a champion appears and
    another `up` starts serving and the feedback service next to the running infrastructure."""
    state = tmp_path / "state"
    try:
        for flags in (port_flags(), []):
            up = loopline("up", "--state-dir", str(state), *flags)
            assert up.returncode == 0, up.stdout + up.stderr
            assert "no champion yet: run `loopline train`" in up.stdout
            assert_infra_up_and_models_waiting(state)
            if flags:
                assert_down(state, group_pids(state))
        stack = Stack.load(state)
        before = {row.part.name: row.pid for row in stack.status()}

        # What `loopline train` leaves behind: a champion in the stack's registry, a Feast store in the state folder.
        registry = Registry(CommonSettings(state_dir=state, mlflow_tracking_uri=stack.parts["mlflow"].url,
                                           model_name=stack.model_name))
        materialize(open_store(state / "feast", generate(TrafficConfig(n_events=200, n_users=30, seed=4)).users),
                    datetime.now(UTC))
        registry.promote(register(registry, tmp_path / "v1", trained[1], trained), "first version")

        again = loopline("up", "--state-dir", str(state))
        assert again.returncode == 0, again.stdout + again.stderr
        for name in INFRA_PARTS:
            assert re.search(rf"^{name} +already running$", again.stdout, re.MULTILINE), again.stdout
        for name in MODEL_PARTS:
            assert re.search(rf"^{name} +started in ", again.stdout, re.MULTILINE), again.stdout
        rows = {row.part.name: row for row in stack.status()}
        assert {n: r.health for n, r in rows.items()} == dict.fromkeys(PART_NAMES, HEALTHY)
        assert all(rows[name].pid == before[name] for name in INFRA_PARTS)  # left alone

        serving = stack.parts["serving"].url
        answer = httpx.post(f"{serving}/v1/predict", json={"text": "turn on wifi"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"].startswith("1")
        feedback = httpx.get(f"{stack.parts['feedback'].url}/healthz", timeout=5).json()
        assert feedback["version"].startswith("1+ftrl.")
        # The UI shows the drift project the feedback service writes into the shared workspace, once the
        # service's observer has imported Evidently and made it (a minute and more on a loaded 2-core machine).
        assert drift_state(stack.parts["feedback"].url) == "on"
        projects = f"{stack.parts['evidently'].url}/api/projects"
        assert wait_until(lambda: stack.model_name in httpx.get(projects, timeout=5).text, 30)
        assert loopline("status", "--state-dir", str(state)).returncode == 0

        # Admin actions need a token: `up` made one, and `loopline promote` finds it through `status --env`.
        assert httpx.post(f"{stack.parts['feedback'].url}/promote", timeout=10).status_code == 401
        exports = loopline("status", "--env", "--state-dir", str(state)).stdout
        client = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in exports.splitlines())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPLINE_", "PREFECT_API"))}
        promote = subprocess.run(bin_command("promote"), env={**env, **client}, capture_output=True, text=True,
                                 timeout=360, check=False)
        assert promote.returncode == 0 and "unchanged v1" in promote.stdout, promote.stdout + promote.stderr

        # The runner closes the slow path: feedback reaches the examples table, a drift alert a completed retrain
        # whose version names the examples it read.
        table = ExamplesTable(str(state / "examples"))
        send_feedback(stack, 120)
        assert wait_until(lambda: len(table.read()) >= 100, 90), Stack.load(state).handle("feedback")
        retrained = drift_retrain(stack, registry)
        assert int(retrained.tags["collected_rows"]) >= 100 and retrained.tags["examples_version"], retrained.tags
    finally:
        pids = group_pids(state)
        assert_down(state, pids)
