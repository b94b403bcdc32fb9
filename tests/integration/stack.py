"""A serving process on a fresh model name, as integration tests of serving and feedback need it.

`start_serving` registers v1 (a tiny bundle) as champion in the given MLflow server,
materializes a Feast store in the state folder, starts `loopline serve` against the
broker and waits until it answers with the online store open.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import mlflow
import pandas as pd
from kafka import KafkaProducer

from infra.process import ManagedProcess, free_port
from models.ftrl import FTRLProximal
from models.traffic import TrafficConfig, generate
from services.common.events import MODEL_UPDATES, WITHHELD_REASONS, ModelUpdate
from services.common.features import materialize, open_store
from services.common.registry import Registry
from services.common.settings import CommonSettings
from tests.conftest import TinyModel, build_bundle
from tests.integration.helpers import wait_until

TOKEN = "s3rving-test-" + uuid.uuid4().hex


@dataclass
class Serving:
    url: str
    process: ManagedProcess
    settings: CommonSettings
    registry: Registry
    users: pd.DataFrame
    work: Path
    producer: KafkaProducer

    def predict(self, text: str, user_id: str | None = None) -> dict:
        response = httpx.post(f"{self.url}/v1/predict", json={"text": text, "user_id": user_id}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def current(self) -> str:
        return httpx.get(f"{self.url}/v1/models/current", timeout=10).json()["version"]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics, by name and labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        label = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{name}{{{label}}} (\S+)$" if label else rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} {labels} not in /metrics"
        return float(match.group(1))

    def register(self, head: FTRLProximal, model: TinyModel, name: str) -> int:
        return register(self.registry, self.work / name, head, model)

    def announce(self, update: ModelUpdate) -> None:
        self.producer.send(MODEL_UPDATES, key=update.model.encode(), value=update.model_dump_json().encode())
        self.producer.flush(10)


def register(registry: Registry, folder: Path, head: FTRLProximal, model: TinyModel) -> int:
    """Build a bundle with this head and register it, as a flow run would."""
    build_bundle(folder, model[0], head)
    with mlflow.start_run(experiment_id=registry.experiment_id()):
        return registry.register(folder, {"source": "test"}).version


def bin_command(*args: str) -> list[str]:
    """This environment's `loopline` script with arguments."""
    return [str(Path(sys.executable).with_name("loopline")), *args]


@contextmanager
def start_serving(mlflow_server: str, broker: str, trained: TinyModel, state: Path, work: Path,
                  **env_extra: str) -> Iterator[Serving]:
    settings = CommonSettings(state_dir=state, mlflow_tracking_uri=mlflow_server, kafka_bootstrap_servers=broker,
                              model_name=f"serving-test-{uuid.uuid4().hex[:8]}")
    registry = Registry(settings)
    users = generate(TrafficConfig(n_events=200, n_users=30, seed=4)).users
    materialize(open_store(state / "feast", users), datetime.now(UTC))
    registry.promote(register(registry, work / "v1", trained[1], trained), "first version")

    port = free_port()
    env = {**os.environ, "LOOPLINE_STATE_DIR": str(state), "LOOPLINE_MLFLOW_TRACKING_URI": mlflow_server,
           "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS": broker, "LOOPLINE_MODEL_NAME": settings.model_name,
           "LOOPLINE_PORT": str(port), "LOOPLINE_ADMIN_TOKEN": TOKEN, "LOOPLINE_CHAMPION_CHECK_S": "60",
           "LOOPLINE_LOG_SEND_TIMEOUT_S": "2"}
    env.pop("LOOPLINE_BUNDLE", None)
    url = f"http://127.0.0.1:{port}"
    env.update(env_extra)
    process = ManagedProcess("serving", bin_command("serve"), state, env=env, url=url)
    process.start_healthy(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, timeout=120)
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        assert wait_until(lambda: httpx.get(f"{url}/readyz").json()["feature_store"] == "ok", 60), \
            process.log_tail()
        yield Serving(url, process, settings, registry, users, work, producer)
    finally:
        process.stop()
        producer.close(5)


@dataclass
class Feedback:
    process: ManagedProcess
    state: Path

    def metric(self, name: str, label: str = "") -> float:
        text = httpx.get(f"{self.process.url}/metrics", timeout=5).text
        wanted = f"{name}{{{label}}}" if label else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def judged(self) -> float:
        """Feedback events accounted for: learned (or held back), or withheld by per-user trust."""
        return self.metric("loopline_feedback_examples_total") + sum(
            self.metric("loopline_feedback_dead_letters_total", f'reason="{reason}"') for reason in WITHHELD_REASONS)

    @property
    def token(self) -> str:
        """The admin token POST /promote takes."""
        return (self.process.env or {})["LOOPLINE_ADMIN_TOKEN"]

    def start(self) -> None:
        self.process.start_healthy(lambda: httpx.get(f"{self.process.url}/metrics", timeout=2).status_code == 200,
                                   timeout=120)


def feedback_service(serving: Serving, state: Path, name: str = "feedback", **settings: str) -> Feedback:
    """`loopline feedback` against the serving fixture's broker and registry; versions are
    registered only on `loopline promote` unless `settings` say otherwise. POST /promote takes a token of
    its own unless `settings` name one (`Feedback.token`)."""
    settings.setdefault("admin_token", "f33dback-test-" + uuid.uuid4().hex)
    port = free_port()
    env = {**os.environ, "LOOPLINE_STATE_DIR": str(state),
           "LOOPLINE_MLFLOW_TRACKING_URI": serving.settings.tracking_uri,
           "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS": serving.settings.kafka_bootstrap_servers or "",
           "LOOPLINE_MODEL_NAME": serving.settings.model_name, "LOOPLINE_GROUP_ID": f"fb-{uuid.uuid4().hex[:8]}",
           "LOOPLINE_UPDATE_INTERVAL_S": "1", "LOOPLINE_MIN_HOLDOUT": "10", "LOOPLINE_HOLDOUT_SHARE": "0.2",
           "LOOPLINE_CHECKPOINT_INTERVAL_S": "1", "LOOPLINE_FEEDBACK_WAIT_S": "5", "LOOPLINE_IDLE_S": "1",
           "LOOPLINE_METRICS_PORT": str(port), "LOOPLINE_REGISTRY_INTERVAL_S": "0",
           **{f"LOOPLINE_{k.upper()}": v for k, v in settings.items()}}
    return Feedback(ManagedProcess(name, bin_command("feedback"), state, env=env, url=f"http://127.0.0.1:{port}"),
                    state)
