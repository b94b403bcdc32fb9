"""The feedback service: consume, join, learn one event-time window at a time, publish gated deltas.

One loop in one thread: records from `predictions` and `feedback` go through intake
(bad ones to `feedback-dlq`) into the join store; whenever the watermark passes the
end of an update window, the window's examples are learned and judged
(`OnlineLearner`), and a published update goes to `model-updates` as a delta.

Exactly-once effect: every `checkpoint_interval_s`, at a window boundary, once the
broker has acknowledged every delta and dead letter produced so far, the head, the
join store, the watermark and the next offset of every partition are checkpointed
together; only then are the offsets committed to Kafka (for lag monitoring; the
checkpoint is what a restart resumes from). Everything after the checkpoint is
replayed after a crash, and because windows are cut in event time the replay makes
the same windows, the same decisions and the same deltas with the same sequence
numbers, which serving skips as already applied.
"""

from __future__ import annotations

import base64
import logging
import math
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from models.bundle import HEAD_FILE, verify_bundle
from models.ftrl import FTRLProximal
from services.common.events import FEEDBACK, FEEDBACK_DLQ, MODEL_UPDATES, PREDICTIONS, DeadLetter, ModelUpdate
from services.feedback.checkpoint import Checkpoint, CheckpointStore
from services.feedback.intake import Record, parse, rejected_letter
from services.feedback.join import (
    JoinSettings,
    JoinStore,
    StoredFeedback,
    Watermark,
    joined_from_bytes,
    joined_to_bytes,
)
from services.feedback.learner import LearnSettings, OnlineLearner, Progress, WindowReport
from services.feedback.settings import FeedbackSettings

log = logging.getLogger(__name__)
HEAD = "head.npz"
JOIN = "join.npz"
HOLDOUT = "holdout.npz"


class ServiceError(Exception):
    """The service cannot start or go on (no champion, broker gone for good, ...)."""


@dataclass
class Stats:
    windows: Counter[str]  # by decision
    dead_letters: Counter[str]  # by reason
    records: Counter[str]  # by topic


class FeedbackService:
    """State (learner, join store, watermark, offsets) plus the Kafka loop around it."""

    def __init__(self, settings: FeedbackSettings, start: tuple[FTRLProximal, int] | None = None,
                 on_window: Callable[[WindowReport], None] | None = None) -> None:
        """Resume from the newest good checkpoint; without one, start from `start` (head, registry
        version) or else from the registry's champion."""
        self.settings = settings
        self.on_window = on_window
        self.checkpoints = CheckpointStore(settings.state_dir / "feedback" / "checkpoints", settings.checkpoints_kept)
        self.stats = Stats(Counter(), Counter(), Counter())
        self.offsets: dict[str, int] = {}  # "topic:partition" -> next offset to read
        self.watermark = Watermark(settings.lateness_s, settings.idle_s)
        self.checkpoint_number = 0
        self._letters: list[DeadLetter] = []
        restored = self.checkpoints.restore()
        self.problems = restored.problems  # damaged checkpoints skipped, for the operator
        if restored.checkpoint is not None:
            self._restore(restored.checkpoint)
        else:
            head, version = start or self._champion()
            self.learner = OnlineLearner(head, version, self._learn_settings())
            self.store = JoinStore(self._join_settings())

    # -- state ---------------------------------------------------------------------------------

    def _learn_settings(self) -> LearnSettings:
        s = self.settings
        return LearnSettings(holdout_share=s.holdout_share, holdout_size=s.holdout_size,
                             min_holdout=s.min_holdout, gate_margin=s.gate_margin)

    def _join_settings(self) -> JoinSettings:
        s = self.settings
        return JoinSettings(prediction_ttl_s=s.prediction_ttl_s, feedback_wait_s=s.feedback_wait_s,
                            max_predictions=s.max_predictions)

    def _champion(self) -> tuple[FTRLProximal, int]:
        from services.common.registry import Registry

        registry = Registry(self.settings)
        champion = registry.champion()
        if champion is None:
            raise ServiceError(f"{registry.name} has no champion yet: run `loopline train` first")
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.settings.state_dir) as tmp:
            bundle = registry.download(champion.version, Path(tmp))
            verify_bundle(bundle)
            return FTRLProximal.load(bundle / HEAD_FILE), champion.version

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        model = FTRLProximal.from_bytes(checkpoint.files[HEAD])
        self.learner = OnlineLearner(model, state["base_version"], self._learn_settings(), state["sequence"])
        self.learner.holdout.extend(joined_from_bytes(checkpoint.files[HOLDOUT]))
        self.learner.progress = Progress.from_json(state["progress"])
        self.store = JoinStore.from_bytes(checkpoint.files[JOIN], self._join_settings())
        self.offsets = {k: int(v) for k, v in state["offsets"].items()}
        self.watermark.restore({_partition_key(k): float(v) for k, v in state["max_ts"].items()}, time.time())
        self.checkpoint_number = checkpoint.number
        self.stats = Stats(Counter(state["windows"]), Counter(state["dead_letters"]), Counter(state["records"]))
        log.info("resumed from checkpoint %d: v%d+ftrl.%d, %d partitions", checkpoint.number,
                 self.learner.base_version, self.learner.sequence, len(self.offsets))

    def checkpoint(self) -> Checkpoint:
        state: dict[str, Any] = {
            "base_version": self.learner.base_version, "sequence": self.learner.sequence,
            "offsets": self.offsets,
            "max_ts": {f"{t}:{p}": ts for (t, p), ts in self.watermark.max_ts.items() if math.isfinite(ts)},
            "windows": dict(self.stats.windows), "dead_letters": dict(self.stats.dead_letters),
            "records": dict(self.stats.records), "progress": self.learner.progress.to_json(),
        }
        self.checkpoint_number += 1
        return Checkpoint(self.checkpoint_number, state,
                          {HEAD: self.learner.model.to_bytes(), JOIN: self.store.to_bytes(),
                           HOLDOUT: joined_to_bytes(list(self.learner.holdout))})

    # -- processing (no I/O: testable without a broker) -----------------------------------------

    def process(self, record: Record, now: float) -> None:
        """Take one record: into the join store, or to the dead letters."""
        self.stats.records[record.topic] += 1
        self.offsets[f"{record.topic}:{record.partition}"] = record.offset + 1
        self.watermark.observe((record.topic, record.partition), record.ts, now)
        model = self.learner.model
        item = parse(record, model.class_index, model.sparse_dim, model.dense_dim, self.settings.max_event_bytes)
        if isinstance(item, DeadLetter):
            self._dead(item)
        elif isinstance(item, StoredFeedback):
            rejected = self.store.add_feedback(item)
            if rejected is not None:
                self._dead(rejected_letter(rejected))
        else:
            self.store.add_prediction(item)

    def tick(self, now: float, flush: bool = False) -> list[WindowReport]:
        """Learn every update window the watermark has passed (all of them with `flush`).

        Windows are the aligned intervals [k * update_interval_s, (k + 1) * update_interval_s)
        of key time, each released whole once the watermark is past its end, so where they
        fall does not depend on when this runs.
        """
        mark = math.inf if flush else self.watermark.value(now)
        for rejected in self.store.expire(mark if not flush else -math.inf):
            self._dead(rejected_letter(rejected))
        interval = self.settings.update_interval_s
        reports = []
        while (first := self.store.first_key_time()) is not None:
            end = (math.floor(first / interval) + 1) * interval
            if end > mark:
                break
            report = self.learner.learn_window(self.store.release(end), end)
            self.stats.windows[report.decision] += 1
            reports.append(report)
            log.info("window up to %.1f: %s", end, report.describe())
            if self.on_window is not None:
                self.on_window(report)
        return reports

    def update_event(self, report: WindowReport) -> ModelUpdate:
        assert report.delta is not None
        base = self.learner.base_version
        return ModelUpdate(model=self.settings.model_name, kind="delta", version=f"{base}+ftrl.{report.sequence}",
                           base_version=base, sequence=report.sequence,
                           delta=base64.b64encode(report.delta.to_bytes()).decode(), window_end=report.window_end)

    def _dead(self, letter: DeadLetter) -> None:
        self.stats.dead_letters[letter.reason] += 1
        self._letters.append(letter)

    def take_letters(self) -> list[DeadLetter]:
        letters, self._letters = self._letters, []
        return letters

    # -- the Kafka loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then checkpoint what is complete and leave the group."""
        servers = self.settings.kafka_bootstrap_servers
        if not servers:
            raise ServiceError("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS is not set: the feedback service needs a broker")
        producer = Producer({"bootstrap.servers": servers, "acks": "all", "linger.ms": 0,
                             "message.max.bytes": 32 * 1024 * 1024, "enable.idempotence": False})
        consumer = Consumer({
            "bootstrap.servers": servers, "group.id": self.settings.group_id, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 60_000, "fetch.message.max.bytes": 8 * 1024 * 1024,
        })
        consumer.subscribe([PREDICTIONS, FEEDBACK], on_assign=self._on_assign)
        last_checkpoint = time.monotonic()
        try:
            while not stop.is_set():
                for message in consumer.consume(num_messages=1000, timeout=0.1):
                    record = _record(message)
                    if record is not None:
                        self.process(record, time.time())
                for report in self.tick(time.time()):
                    if report.decision == "published":
                        self._send(producer, MODEL_UPDATES, self.settings.model_name,
                                   self.update_event(report).model_dump_json().encode())
                self._send_letters(producer)
                producer.poll(0)
                due = time.monotonic() - last_checkpoint >= self.settings.checkpoint_interval_s
                if due and self._save(producer, consumer):
                    last_checkpoint = time.monotonic()
        finally:
            self._send_letters(producer)
            self._save(producer, consumer)
            consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = self.offsets.get(f"{tp.topic}:{tp.partition}", OFFSET_BEGINNING)
        self.watermark.track([(tp.topic, tp.partition) for tp in partitions], time.time())
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))

    def _send(self, producer: Producer, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                return
            except BufferError:  # the local queue is full while the broker is slow: wait, never drop
                producer.poll(0.5)

    def _send_letters(self, producer: Producer) -> None:
        for letter in self.take_letters():
            self._send(producer, FEEDBACK_DLQ, letter.key or letter.event_id, letter.model_dump_json().encode())

    def _save(self, producer: Producer, consumer: Consumer) -> bool:
        """Checkpoint, then commit offsets: only once everything produced so far is acknowledged."""
        if producer.flush(10) > 0:
            log.warning("broker has not acknowledged every update yet; checkpoint postponed")
            return False
        path = self.checkpoints.save(self.checkpoint())
        commits = [TopicPartition(*_partition_key(k), offset) for k, offset in self.offsets.items()]
        if commits:
            try:
                consumer.commit(offsets=commits, asynchronous=False)
            except Exception as exc:  # the checkpoint, not the committed offset, is what a restart uses
                log.warning("offset commit failed after %s: %s", path.name, exc)
        return True


def _partition_key(key: str) -> tuple[str, int]:
    topic, partition = key.rsplit(":", 1)
    return topic, int(partition)


def _record(message: Message) -> Record | None:
    error = message.error()
    if error is not None:
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume: %s", error)
        return None
    key = message.key()
    _, ts_ms = message.timestamp()
    return Record(message.topic() or "", message.partition() or 0, message.offset() or 0,
                  key.decode(errors="replace") if key is not None else None, message.value() or b"",
                  ts_ms / 1000 if ts_ms > 0 else time.time())
