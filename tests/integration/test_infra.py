"""The embedded process layer: each part starts, answers, and stops without leftovers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from infra.broker import DEFAULT_PARTITIONS, FEEDBACK, PREDICTIONS, TOPICS, admin_client, create_topics, start_broker
from infra.mlflow_server import start_mlflow
from infra.prefect_server import start_prefect
from infra.process import ManagedProcess, PortInUseError, ProcessError, free_port, port_is_free


def assert_group_gone(proc: ManagedProcess, pids: list[int]) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pgid, 0)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not proc.pid_path.exists()


def run_python(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run `code` in a fresh interpreter (another process, as services are); returns stdout."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=cwd, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# -- the process helper on its own -------------------------------------------------------


def test_free_port_is_free_until_someone_listens() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.create_server(("127.0.0.1", port)):
        assert not port_is_free(port)


def test_early_exit_reports_the_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess("dies", ["sh", "-c", "echo 'config is broken' >&2; exit 3"], tmp_path).start()
    with pytest.raises(ProcessError, match=r"(?s)exited with code 3.*config is broken"):
        proc.wait_healthy(lambda: False, timeout=30)
    proc.stop()


def test_timeout_reports_the_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess("slow", ["sh", "-c", "echo 'still booting'; exec sleep 60"], tmp_path).start()
    try:
        with pytest.raises(ProcessError, match=r"(?s)not healthy after.*still booting"):
            proc.wait_healthy(lambda: False, timeout=0.5)
    finally:
        proc.stop()


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    # A leader that ignores SIGTERM and two children, like a server with its workers.
    script = "trap '' TERM; sleep 300 & sleep 300 & wait"
    proc = ManagedProcess("stubborn", ["sh", "-c", script], tmp_path).start()
    proc.wait_healthy(lambda: len(proc.group_pids()) == 3, timeout=10)
    pids = proc.group_pids()
    proc.stop(timeout=1)
    assert_group_gone(proc, pids)


def test_pidfile_handle_stops_a_group_started_elsewhere(tmp_path: Path) -> None:
    # What `loopline down` does: another process started the group and has exited since.
    starter = "import sys; from pathlib import Path; from infra.process import ManagedProcess; " \
              "ManagedProcess('sleeper', ['sleep', '300'], Path(sys.argv[1])).start()"
    run_python(starter, str(tmp_path))
    handle = ManagedProcess.from_pidfile("sleeper", tmp_path)
    assert handle is not None and handle.running()
    pids = handle.group_pids()
    handle.stop()
    assert_group_gone(handle, pids)
    assert ManagedProcess.from_pidfile("sleeper", tmp_path) is None


@pytest.mark.parametrize("start", [start_broker, start_mlflow, start_prefect], ids=["broker", "mlflow", "prefect"])
def test_taken_port_fails_fast_with_a_clear_message(
        start: Callable[[Path, int], ManagedProcess], tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(PortInUseError, match=rf"port {port} on 127\.0\.0\.1 is already in use"):
            start(tmp_path, port)
    assert time.monotonic() - began < 1.0
    assert not list(tmp_path.glob("*.log")), "nothing may be spawned"


# -- broker ------------------------------------------------------------------------------


@pytest.fixture()
def own_broker(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A broker for one test, for tests that stop or pause it."""
    proc = start_broker(tmp_path, free_port())
    yield proc
    proc.stop()


def test_broker_has_the_topics(broker: str) -> None:
    with admin_client(broker) as admin:
        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(TOPICS))}
    assert partitions == dict(DEFAULT_PARTITIONS)
    # Co-partitioned, so a consumer owning partition p of one owns partition p of the other.
    assert partitions[PREDICTIONS] == partitions[FEEDBACK]


def test_broker_round_trip_with_a_consumer_group(broker: str) -> None:
    # A topic of its own: the session broker's `feedback` holds other tests' events.
    topic, n, partitions = f"round-trip-{uuid.uuid4().hex[:8]}", 40, 4
    assert create_topics(broker, {topic: partitions}) == [topic]
    producer = KafkaProducer(bootstrap_servers=broker)
    for i in range(n):
        producer.send(topic, key=f"pred-{i}".encode(), value=f"label-{i}".encode())
    producer.flush(timeout=10)
    producer.close()

    # Short rebalance timeouts: with the defaults a group join against Tansu takes ~23 s.
    consumer = KafkaConsumer(topic, bootstrap_servers=broker, group_id="test-round-trip",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_interval_ms=5000, session_timeout_ms=6000)
    got: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.update((r.key, r.value) for r in records)
    consumer.commit()
    committed = sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    consumer.close()
    assert got == {f"pred-{i}".encode(): f"label-{i}".encode() for i in range(n)}
    assert committed == n


def test_broker_pause_blocks_produce_until_resume(own_broker: ManagedProcess) -> None:
    # Not idempotent: kafka-python 3.0.12's idempotent producer never gets a new producer
    # id after a batch expires, so it would stay stuck after resume.
    producer = KafkaProducer(bootstrap_servers=own_broker.url, enable_idempotence=False,
                             request_timeout_ms=1000, delivery_timeout_ms=2000, max_block_ms=2000)
    try:
        producer.send(FEEDBACK, key=b"k", value=b"before").get(timeout=10)
        own_broker.pause()
        try:
            with pytest.raises(KafkaTimeoutError):
                producer.send(FEEDBACK, key=b"k", value=b"during").get(timeout=10)
        finally:
            own_broker.resume()
        assert producer.send(FEEDBACK, key=b"k", value=b"after").get(timeout=10).offset >= 1
    finally:
        producer.close(timeout=2)


def test_broker_ignores_a_dotenv_and_stops_cleanly(tmp_path: Path) -> None:
    # Tansu reads .env from its working directory; our flags must win over it.
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / ".env").write_text("LISTENER_URL=tcp://127.0.0.1:1\nRUST_LOG=debug\n")
    port = free_port()
    proc = start_broker(tmp_path, port)
    try:
        assert proc.url == f"127.0.0.1:{port}"
        assert proc.rss_bytes() < 200 * 2**20
        with pytest.raises(ProcessError, match="already runs"):
            start_broker(tmp_path, free_port())
        pids = proc.group_pids()
    finally:
        proc.stop()
    assert_group_gone(proc, pids)


# -- MLflow and Prefect --------------------------------------------------------------------


def test_mlflow_starts_answers_and_stops_as_a_group(tmp_path: Path) -> None:
    proc = start_mlflow(tmp_path, free_port())
    try:
        assert httpx.get(f"{proc.url}/health", timeout=5).text.strip() == "OK"
        pids = proc.group_pids()
        assert len(pids) >= 2, "the CLI and its uvicorn worker: why stop must signal the group"
        assert proc.rss_bytes() < 900 * 2**20
    finally:
        proc.stop()
    assert_group_gone(proc, pids)


def test_prefect_starts_answers_and_stops_as_a_group(tmp_path: Path) -> None:
    proc = start_prefect(tmp_path, free_port())
    try:
        assert proc.url.endswith("/api")
        assert httpx.get(f"{proc.url}/health", timeout=5).json() is True
        assert (tmp_path / "prefect" / "prefect.db").exists(), "its database lives in the state folder"
        pids = proc.group_pids()
    finally:
        proc.stop()
    assert_group_gone(proc, pids)


LOG_MODEL = """
import json, sys, tempfile
import mlflow, mlflow.pyfunc

class Bundle(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.manifest = json.load(open(context.artifacts["bundle"] + "/manifest.json"))
    def predict(self, context, model_input, params=None):
        return [self.manifest["answer"]] * len(model_input)

mlflow.set_tracking_uri(sys.argv[1])
bundle = tempfile.mkdtemp()
json.dump({"answer": 42}, open(bundle + "/manifest.json", "w"))
mlflow.set_experiment("infra-test")
with mlflow.start_run():
    info = mlflow.pyfunc.log_model(name="model", python_model=Bundle(), artifacts={"bundle": bundle},
                                   registered_model_name="infra-test", pip_requirements=[])
mlflow.MlflowClient().set_registered_model_alias("infra-test", "champion", info.registered_model_version)
print(mlflow.get_experiment_by_name("infra-test").artifact_location)
"""

LOAD_MODEL = """
import os, sys
import mlflow, mlflow.pyfunc, pandas as pd

mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/infra-test@champion")
print(list(model.predict(pd.DataFrame({"x": [1, 2]}))))
print(sorted(os.listdir(mlflow.artifacts.download_artifacts("models:/infra-test@champion"))))
"""


@pytest.mark.slow
def test_mlflow_registry_works_across_processes(mlflow_server: str, tmp_path: Path) -> None:
    # Clients in other processes, in other working directories, share no path with the
    # server: artifacts must go over HTTP (mlflow-artifacts:/), not to a local folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    artifact_root = run_python(LOG_MODEL, mlflow_server, env=env, cwd=tmp_path).strip().splitlines()[-1]
    assert artifact_root.startswith("mlflow-artifacts:/")
    predictions, files = run_python(LOAD_MODEL, mlflow_server, env=env, cwd=tmp_path).strip().splitlines()[-2:]
    assert predictions == "[42, 42]"
    assert "MLmodel" in files


ONE_TASK_FLOW = """
from prefect import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow(name="infra-test")
def doubled() -> int:
    return double(21)

print(doubled())
"""


@pytest.mark.slow
def test_prefect_runs_a_flow_against_the_server(prefect_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path)}
    assert run_python(ONE_TASK_FLOW, env=env, cwd=tmp_path).strip().splitlines()[-1] == "42"
    # The session server is shared with other tests: look only at this flow's runs.
    only_this_flow = {"flows": {"name": {"any_": ["infra-test"]}}}
    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json=only_this_flow, timeout=10).json()
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
