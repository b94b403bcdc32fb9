"""The prediction log against a real broker: delivered with its key, bounded, loud when it drops, self-healing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from kafka.partitioner.default import murmur2

from infra.broker import DEFAULT_PARTITIONS, PREDICTIONS
from infra.process import ManagedProcess
from services.serving.prediction_log import PredictionLog
from tests.integration.helpers import read_events, wait_until

OFFER_BUDGET = 0.005  # seconds; offer() runs on the request path


def event(key: str) -> bytes:
    return json.dumps({"schema_version": 1, "event_id": key, "prediction_id": key}).encode()


def assert_accounted(plog: PredictionLog, offered: int) -> None:
    """No silent loss: every offered event is sent, dropped for a reason, or still buffered."""
    assert plog.sent + sum(plog.dropped.values()) + plog.buffered == offered


@pytest.fixture()
def prefix() -> str:
    return f"pl-{uuid.uuid4().hex[:8]}-"


@pytest.fixture()
def running_broker(broker: str, broker_process: ManagedProcess) -> Iterator[ManagedProcess]:
    """The session broker, resumed after the test whatever happened to it."""
    yield broker_process
    broker_process.resume()


def test_offered_events_land_on_the_topic_with_their_keys(broker: str, prefix: str) -> None:
    plog = PredictionLog(broker)
    plog.start()
    keys = {f"{prefix}{i}" for i in range(50)}
    try:
        assert all(plog.offer(k, event(k)) for k in sorted(keys))
        assert wait_until(lambda: plog.sent == len(keys)), (plog.sent, plog.dropped)
        assert plog.broker_ok
        assert_accounted(plog, len(keys))
    finally:
        plog.close(5)
    got = read_events(broker, keys)
    assert got.keys() == keys
    assert all(value["event_id"] == key for key, (_, value) in got.items())
    # Same partition as kafka-python's (Java's) murmur2 partitioner, which publishes `feedback`:
    # that is what keeps predictions and feedback co-partitioned for local joins.
    n = DEFAULT_PARTITIONS[PREDICTIONS]
    assert all(part == (murmur2(key.encode()) & 0x7FFFFFFF) % n for key, (part, _) in got.items())
    assert plog.dropped == {"buffer_full": 0, "send_failed": 0, "closed": 0}


def test_a_full_buffer_drops_and_counts_without_blocking(running_broker: ManagedProcess, prefix: str) -> None:
    plog = PredictionLog(running_broker.url, capacity=20, send_timeout=30)
    plog.start()
    try:
        assert wait_until(lambda: plog.broker_ok)
        running_broker.pause()
        try:
            durations, accepted = [], []
            for i in range(50):
                started = time.perf_counter()
                accepted.append(plog.offer(f"{prefix}{i}", event(f"{prefix}{i}")))
                durations.append(time.perf_counter() - started)
            assert max(durations) < OFFER_BUDGET, f"slowest offer {max(durations) * 1e3:.2f} ms"
            assert accepted == [True] * 20 + [False] * 30
            assert plog.dropped["buffer_full"] == 30
            assert plog.buffered == 20
            assert_accounted(plog, 50)
        finally:
            running_broker.resume()
        # The buffered 20 were waiting, not lost: they go out once the broker answers.
        assert wait_until(lambda: plog.sent == 20), (plog.sent, plog.dropped)
        assert plog.buffered == 0
    finally:
        plog.close(5)


def test_logging_resumes_after_the_broker_was_paused(running_broker: ManagedProcess, prefix: str) -> None:
    plog = PredictionLog(running_broker.url, send_timeout=2, probe_interval=0.5, stale_after=1.5)
    plog.start()
    try:
        assert plog.offer(f"{prefix}before", event(f"{prefix}before"))
        assert wait_until(lambda: plog.sent == 1 and plog.broker_ok)
        running_broker.pause()
        try:
            durations = []
            for i in range(10):
                started = time.perf_counter()
                assert plog.offer(f"{prefix}during-{i}", event(f"{prefix}during-{i}"))
                durations.append(time.perf_counter() - started)
            assert max(durations) < OFFER_BUDGET, f"slowest offer {max(durations) * 1e3:.2f} ms"
            assert wait_until(lambda: not plog.broker_ok, timeout=5), "/readyz must see the stalled broker"
            # Not acknowledged within send_timeout: dropped and counted, not waited on forever.
            assert wait_until(lambda: plog.dropped["send_failed"] == 10, timeout=10), plog.dropped
            assert_accounted(plog, 11)
        finally:
            running_broker.resume()
        assert wait_until(lambda: plog.broker_ok, timeout=10)
        after = {f"{prefix}after-{i}" for i in range(10)}
        assert all(plog.offer(k, event(k)) for k in sorted(after))
        assert wait_until(lambda: plog.sent == 11), (plog.sent, plog.dropped)
        assert_accounted(plog, 21)
    finally:
        plog.close(5)
    # The "during" events may land too (a timed-out request can still be applied after SIGCONT);
    # consumers dedup by event_id, so only the events after the resume are asserted.
    assert read_events(running_broker.url, after | {f"{prefix}before"}).keys() == after | {f"{prefix}before"}


def test_a_disabled_log_never_blocks_and_drops_nothing() -> None:
    plog = PredictionLog(None)
    plog.start()
    started = time.perf_counter()
    assert not any(plog.offer(f"k{i}", b"{}") for i in range(1000))
    assert time.perf_counter() - started < 1000 * OFFER_BUDGET
    assert not plog.enabled
    assert not plog.broker_ok
    assert (plog.sent, plog.buffered) == (0, 0)
    assert plog.dropped == {"buffer_full": 0, "send_failed": 0, "closed": 0}
    plog.close(1)
