"""Feedback from an application's own producer, on the real broker: both examples and `loopline feedback send`.

Each client runs as a subprocess and sends one event. Read back from `feedback`, it
parses as a FeedbackEvent, is keyed by its prediction id, and sits on the partition
that serving's prediction log (`PredictionLog`, confluent-kafka with murmur2_random)
puts a prediction with that id on, so the feedback service can join the two locally.
Each prediction id is picked so that a CRC32 partitioner (librdkafka's default) or
partition 0 would be wrong.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.partitioner.default import murmur2
from kafka.structs import TopicPartition

from infra.broker import DEFAULT_PARTITIONS, FEEDBACK, PREDICTIONS, admin_client
from services.common.events import FeedbackEvent
from services.serving.prediction_log import PredictionLog
from tests.integration.helpers import read_events, wait_until
from tests.integration.stack import bin_command

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PARTITIONS = DEFAULT_PARTITIONS[PREDICTIONS]
SENT = re.compile(r"^sent (?:feedback )?(?P<event_id>[0-9a-f]{32}) .*partition (?P<partition>\d+) "
                  r"offset (?P<offset>\d+)$", re.MULTILINE)

# Client name -> command line for (prediction id, label, source).
CLIENTS: dict[str, Callable[[str, str, str], list[str]]] = {
    "kafka-python": lambda pid, label, source: [
        sys.executable, str(EXAMPLES / "send_feedback_kafka_python.py"), pid, label, source],
    "confluent-kafka": lambda pid, label, source: [
        sys.executable, str(EXAMPLES / "send_feedback_confluent.py"), pid, label, source],
    "loopline feedback send": lambda pid, label, source: bin_command(
        "feedback", "send", "--prediction-id", pid, "--label", label, "--source", source),
}


def prediction_id_on(partition: int, prefix: str) -> str:
    """An id that murmur2 (Java, kafka-python) puts on `partition` and CRC32 (librdkafka's default) does not."""
    for i in itertools.count():
        pid = f"{prefix}{i}"
        if ((murmur2(pid.encode()) & 0x7FFFFFFF) % PARTITIONS == partition
                and zlib.crc32(pid.encode()) % PARTITIONS != partition):
            return pid
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def prediction_ids() -> dict[str, str]:
    """One prediction id per client, on partitions 1, 2, 3, ... by murmur2."""
    prefix = f"fbc-{uuid.uuid4().hex[:8]}-"
    return {client: prediction_id_on(1 + n % (PARTITIONS - 1), prefix) for n, client in enumerate(CLIENTS)}


@pytest.fixture(scope="module")
def serving_partitions(broker: str, prediction_ids: dict[str, str]) -> dict[str, int]:
    """Prediction id -> the partition serving's prediction log puts a prediction with that id on.

    Produced to a topic of this module's with as many partitions as `predictions`, so no
    feedback service ever reads these stand-ins as predictions.
    """
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    admin = admin_client(broker)
    try:
        admin.create_topics({topic: {"num_partitions": PARTITIONS, "replication_factor": 1}},
                            wait_for_metadata=True)
    finally:
        admin.close()
    plog = PredictionLog(broker, topic=topic)
    plog.start()
    try:
        for pid in prediction_ids.values():
            assert plog.offer(pid, json.dumps({"prediction_id": pid}).encode())
        assert wait_until(lambda: plog.sent == len(prediction_ids)), plog.dropped
    finally:
        plog.close(5)
    return read_partitions(broker, topic, set(prediction_ids.values()))


def read_partitions(broker: str, topic: str, keys: set[str], timeout: float = 20.0) -> dict[str, int]:
    """Key -> partition of the records on `topic` with those keys."""
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False)
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    got: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while not keys <= got.keys() and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                got.update((r.key.decode(), tp.partition) for r in records if r.key is not None)
    finally:
        consumer.close()
    return {key: part for key, part in got.items() if key in keys}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_feedback_lands_keyed_on_its_predictions_partition(client: str, broker: str, tmp_path: Path,
                                                           prediction_ids: dict[str, str],
                                                           serving_partitions: dict[str, int]) -> None:
    pid = prediction_ids[client]
    env = {**os.environ, "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS": broker}
    # From another folder: the examples must not need the repository around them.
    done = subprocess.run(CLIENTS[client](pid, "toggle_wifi", "correction"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    sent = SENT.search(done.stdout)
    assert sent, done.stdout

    got = read_events(broker, {pid}, topic=FEEDBACK)
    assert got.keys() == {pid}
    partition, value = got[pid]
    event = FeedbackEvent.model_validate(value)
    assert (event.event_id, event.prediction_id, event.label, event.source) == (
        sent["event_id"], pid, "toggle_wifi", "correction")
    assert partition == int(sent["partition"]) == serving_partitions[pid] != 0
    assert DEFAULT_PARTITIONS[FEEDBACK] == PARTITIONS
