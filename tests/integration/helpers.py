"""Small helpers shared by integration tests: waiting for a condition, reading a topic, running flows."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from infra.broker import DEFAULT_PARTITIONS, PREDICTIONS
from services.common.settings import CommonSettings


@contextmanager
def flow_settings(mlflow_server: str, state: Path, model_prefix: str) -> Iterator[CommonSettings]:
    """The environment train flows run in from a test: this MLflow server, `state`, a model name of its own, no
    broker, a Prefect test server."""
    import pytest
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPLINE_MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("LOOPLINE_STATE_DIR", str(state))
        mp.setenv("LOOPLINE_MODEL_NAME", f"{model_prefix}-{uuid.uuid4().hex[:8]}")
        mp.delenv("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            try:
                yield CommonSettings()
            finally:
                drain_prefect_events()


def drain_prefect_events(timeout: float = 30.0) -> None:
    """Stop Prefect's events workers, waiting at most `timeout`. The harness drains them on exit without a
    limit, and once in a full test run that wait never ended (the worker idle, its done-event unset): a
    bounded drain first leaves it nothing to wait for."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, every: float = 0.02) -> bool:
    """Poll `condition` every `every` seconds until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


def drift_state(feedback_url: str, timeout: float = 300.0) -> str:
    """The feedback service's drift monitoring once it is past "starting": its observer imports Evidently
    and makes the drift project first, which takes a minute and more on a loaded 2-core machine."""
    def state() -> str:
        return str(httpx.get(f"{feedback_url}/healthz", timeout=5).json()["drift"])

    wait_until(lambda: state() != "starting", timeout, every=1)
    return state()


def read_events(broker: str, keys: set[str], timeout: float = 20.0, topic: str = PREDICTIONS
                ) -> dict[str, tuple[int, dict[str, object]]]:
    """Events on `topic` whose key is in `keys`, as key -> (partition, value); others share the broker."""
    partitions = [TopicPartition(topic, p) for p in range(DEFAULT_PARTITIONS[topic])]
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False)
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    got: dict[str, tuple[int, dict[str, object]]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not keys <= got.keys() and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                got.update((r.key.decode(), (tp.partition, json.loads(r.value))) for r in records
                           if r.key is not None and r.key.decode() in keys)
    finally:
        consumer.close()
    return got
