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

Around that loop (only when running against a registry, `run`): the online head is
registered as a full version every `registry_interval_s` of event time and on
`loopline promote` (`versions.VersionKeeper`); when `champion` moves to it, deltas
continue from the new version. When a retrain moves `champion` elsewhere, learning
restarts from that version's head, and feedback on predictions of a version whose
encoder differs goes to the dead letters as `stale_model`. Released windows go to the
`Observer` thread for drift reports and per-user stats in Feast.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from models.ftrl import FTRLProximal
from services.common.events import FEEDBACK, FEEDBACK_DLQ, MODEL_UPDATES, PREDICTIONS, DeadLetter, ModelUpdate
from services.feedback.checkpoint import Checkpoint, CheckpointStore
from services.feedback.history import decode, published_deltas, same_delta, sync_delta
from services.feedback.intake import Record, parse, rejected_letter
from services.feedback.join import (
    Joined,
    JoinSettings,
    JoinStore,
    Rejected,
    StoredFeedback,
    StoredPrediction,
    Watermark,
    joined_from_bytes,
    joined_to_bytes,
)
from services.feedback.learner import LearnSettings, OnlineLearner, Progress, WindowReport
from services.feedback.observer import Observer, UserStat, load_reference
from services.feedback.settings import FeedbackSettings
from services.feedback.versions import Registered, VersionKeeper

log = logging.getLogger(__name__)
HEAD = "head.npz"
JOIN = "join.npz"
HOLDOUT = "holdout.npz"
USERS = "users.json"


class ServiceError(Exception):
    """The service cannot start or go on (no champion, broker gone for good, ...)."""


@dataclass
class Stats:
    windows: Counter[str]  # by decision
    dead_letters: Counter[str]  # by reason
    records: Counter[str]  # by topic
    registrations: Counter[str] = field(default_factory=Counter)  # promoted, kept, failed; base changes


class FeedbackService:
    """State (learner, join store, watermark, offsets) plus the Kafka loop around it."""

    def __init__(self, settings: FeedbackSettings, start: tuple[FTRLProximal, int] | None = None,
                 on_window: Callable[[WindowReport], None] | None = None,
                 keeper: VersionKeeper | None = None) -> None:
        """Resume from the newest good checkpoint; without one, start from `start` (head, registry
        version) or else from the registry's champion. Registry versions and champion following
        need a `keeper`: given, or made from the settings when there is no `start`."""
        self.settings = settings
        self.on_window = on_window
        self.keeper = keeper if keeper is not None or start is not None else VersionKeeper(settings)
        self.observer: Observer | None = None
        self.accepted_bases: set[int] = set()  # registry versions whose predictions this head can learn from
        self.corrections: dict[str, tuple[int, str, float]] = {}  # user -> count, last intent, time
        self.next_registration: float | None = None  # event time of the next scheduled registry version
        self.registration_due: str | None = None
        self.check_champion_now = False
        self._asked: set[int] = set()
        self._promotions: queue.Queue[Future[dict[str, Any]]] = queue.Queue()
        self._published: dict[int, ModelUpdate] = {}  # deltas on the base version found at start, by sequence
        self._servers: str | None = None
        self.last_window_end: float | None = None
        self._save_now = False  # a base change is checkpointed at once
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
            self.accepted_bases = {version}

    # -- state ---------------------------------------------------------------------------------

    def _learn_settings(self) -> LearnSettings:
        s = self.settings
        return LearnSettings(holdout_share=s.holdout_share, holdout_size=s.holdout_size,
                             min_holdout=s.min_holdout, gate_margin=s.gate_margin)

    def _join_settings(self) -> JoinSettings:
        s = self.settings
        return JoinSettings(prediction_ttl_s=s.prediction_ttl_s, feedback_wait_s=s.feedback_wait_s,
                            max_predictions=s.max_predictions, max_remembered_ids=s.max_remembered_ids)

    def _champion(self) -> tuple[FTRLProximal, int]:
        assert self.keeper is not None
        champion = self.keeper.champion()
        if champion is None:
            raise ServiceError(f"{self.keeper.registry.name} has no champion yet: run `loopline train` first")
        return self.keeper.bundles.head(champion.version), champion.version

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        model = FTRLProximal.from_bytes(checkpoint.files[HEAD])
        self.learner = OnlineLearner(model, state["base_version"], self._learn_settings(), state["sequence"])
        self.learner.holdout.extend(joined_from_bytes(checkpoint.files[HOLDOUT]))
        self.learner.progress = Progress.from_json(state["progress"])
        self.store = JoinStore.from_bytes(checkpoint.files[JOIN], self._join_settings())
        self.offsets = {k: int(v) for k, v in state["offsets"].items()}
        self.watermark.restore({_partition_key(k): float(v) for k, v in state["max_ts"].items()})
        self.checkpoint_number = checkpoint.number
        self.stats = Stats(Counter(state["windows"]), Counter(state["dead_letters"]), Counter(state["records"]),
                           Counter(state.get("registrations", {})))
        self.accepted_bases = set(state.get("accepted_bases", [self.learner.base_version]))
        self.next_registration = state.get("next_registration")
        self.corrections = {u: (int(c), str(i), float(t)) for u, (c, i, t) in
                            json.loads(checkpoint.files[USERS]).items()} if USERS in checkpoint.files else {}
        log.info("resumed from checkpoint %d: v%d+ftrl.%d, %d partitions", checkpoint.number,
                 self.learner.base_version, self.learner.sequence, len(self.offsets))

    def checkpoint(self) -> Checkpoint:
        state: dict[str, Any] = {
            "base_version": self.learner.base_version, "sequence": self.learner.sequence,
            "offsets": self.offsets,
            "max_ts": {f"{t}:{p}": ts for (t, p), ts in self.watermark.max_ts.items() if math.isfinite(ts)},
            "windows": dict(self.stats.windows), "dead_letters": dict(self.stats.dead_letters),
            "records": dict(self.stats.records), "progress": self.learner.progress.to_json(),
            "registrations": dict(self.stats.registrations), "accepted_bases": sorted(self.accepted_bases),
            "next_registration": self.next_registration,
        }
        self.checkpoint_number += 1
        return Checkpoint(self.checkpoint_number, state,
                          {HEAD: self.learner.model.to_bytes(), JOIN: self.store.to_bytes(),
                           HOLDOUT: joined_to_bytes(list(self.learner.holdout)),
                           USERS: json.dumps(self.corrections, sort_keys=True).encode()})

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
            self._notice_version(item)
            self.store.add_prediction(item)

    def _notice_version(self, prediction: StoredPrediction) -> None:
        """A prediction by a newer version than the one learned on: serving follows a new champion, so
        check the registry before its feedback is released (and found stale)."""
        base = base_of(prediction.model_version)
        if base is not None and base > self.learner.base_version and base not in self.accepted_bases | self._asked:
            self._asked.add(base)
            self.check_champion_now = True

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
            if end > mark or self._registration_due(end):
                break
            examples = self._learnable(self.store.release(end))
            report = self.learner.learn_window(examples, end)
            self.last_window_end = end
            self.stats.windows[report.decision] += 1
            reports.append(report)
            log.info("window up to %.1f: %s", end, report.describe())
            stats = self._count_corrections(examples)
            if self.observer is not None:
                self.observer.observe(examples, stats)
            if self.on_window is not None:
                self.on_window(report)
        return reports

    def _registration_due(self, end: float) -> bool:
        """Whether the head as it is now (every window up to the last registration time) is to be
        registered before the window ending at `end` is learned. Event time decides, so a replay
        registers the same head."""
        interval = self.settings.registry_interval_s
        if self.keeper is None or interval <= 0 or self.registration_due is not None:
            return self.registration_due is not None
        due = self.next_registration is not None and end > self.next_registration
        if self.next_registration is None or due:
            self.next_registration = math.ceil(end / interval) * interval
        if due and self.learner.sequence > 0:
            self.registration_due = "schedule"
            return True
        return False

    def _learnable(self, examples: list[Joined]) -> list[Joined]:
        """Examples the current head can learn; the others to the dead letters with the reason."""
        keep = []
        for joined in examples:
            base = base_of(joined.prediction.model_version)
            if base not in self.accepted_bases:
                self._dead(rejected_letter(Rejected(
                    joined.feedback, "stale_model", f"prediction by model {joined.prediction.model_version}; "
                    f"learning on v{self.learner.base_version}, whose inputs differ")))
            elif joined.feedback.label not in self.learner.model.class_index:
                self._dead(rejected_letter(Rejected(
                    joined.feedback, "unknown_label", f"v{self.learner.base_version} has no intent "
                    f"{joined.feedback.label!r}")))
            else:
                keep.append(joined)
        return keep

    def _count_corrections(self, examples: list[Joined]) -> list[UserStat]:
        """Per-user corrections (feedback naming another intent than the one served), changed users only."""
        changed: dict[str, UserStat] = {}
        for joined in examples:
            user, label = joined.prediction.user_id, joined.feedback.label
            if user is None or label == joined.prediction.intent:
                continue
            count = self.corrections.get(user, (0, "", 0.0))[0] + 1
            ts = max(joined.prediction.ts, joined.feedback.ts)
            self.corrections[user] = (count, label, ts)
            changed[user] = UserStat(user, count, label, ts)
        return list(changed.values())

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
            "fetch.wait.max.ms": 50,  # see services/serving/updates.py: the embedded broker holds empty fetches
        })
        consumer.subscribe([PREDICTIONS, FEEDBACK], on_assign=self._on_assign)
        tune_gc()
        self._start_observer()
        self._servers = servers
        self._published = self._published_on_base()
        last_checkpoint = time.monotonic()
        next_champion_check = 0.0 if self.keeper is not None else math.inf
        try:
            while not stop.is_set():
                for message in consumer.consume(num_messages=1000, timeout=0.1):
                    record = _record(message)
                    if record is not None:
                        self.process(record, time.time())
                if self.check_champion_now or time.monotonic() >= next_champion_check:
                    next_champion_check = time.monotonic() + self.settings.champion_check_s
                    self._follow_champion(producer)
                for report in self.tick(time.time()):
                    if report.decision == "published" and self._publish(producer, report) == "synced":
                        break  # the sync delta carries the head after every window of this tick
                if self.registration_due is not None:
                    self._register(self.registration_due, producer)
                while not self._promotions.empty():
                    request = self._promotions.get()
                    request.set_result(self._promote_request(producer))
                self._send_letters(producer)
                producer.poll(0)
                due = self._save_now or time.monotonic() - last_checkpoint >= self.settings.checkpoint_interval_s
                if due and self._save(producer, consumer):
                    last_checkpoint, self._save_now = time.monotonic(), False
        finally:
            self._send_letters(producer)
            self._save(producer, consumer)
            consumer.close()
            while not self._promotions.empty():
                self._promotions.get().set_result({"status": "stopped", "detail": "the service is stopping"})
            if self.observer is not None:
                self.observer.close()

    # -- registry versions and the champion --------------------------------------------------

    def request_promotion(self, timeout: float = 300.0) -> dict[str, Any]:
        """From another thread (`loopline promote`): register the live head at the next window boundary
        and move `champion` to it if it passes; returns what happened."""
        if self.keeper is None:
            return {"status": "unavailable", "detail": "this service runs without a registry"}
        request: Future[dict[str, Any]] = Future()
        self._promotions.put(request)
        return request.result(timeout)

    def _promote_request(self, producer: Producer) -> dict[str, Any]:
        if self.learner.sequence == 0:
            return {"status": "unchanged", "version": self.learner.base_version,
                    "detail": f"nothing learned since v{self.learner.base_version}: nothing to register"}
        result = self._register("loopline promote", producer)
        if result is None:
            return {"status": "failed", "detail": "registration failed; see the service log"}
        return {"status": "promoted" if result.promoted else "registered", "version": result.version,
                "detail": result.reason}

    def _register(self, trigger: str, producer: Producer) -> Registered | None:
        """Register the live head; on promotion, continue the deltas from the new version."""
        assert self.keeper is not None
        self.registration_due = None
        try:
            result = self.keeper.register(self.learner, dict(self.offsets), trigger)
        except Exception:  # the registry being down costs this version, not learning
            log.exception("registering the online head failed")
            self.stats.registrations["failed"] += 1
            return None
        self.stats.registrations["promoted" if result.promoted else "kept"] += 1
        if result.promoted:
            self._rebase(result.version, producer)
        return result

    def _rebase(self, version: int, producer: Producer, announce: bool = True) -> None:
        """The live head is registry version `version` now: later deltas are numbered on it."""
        log.info("v%d+ftrl.%d is v%d now; deltas continue on it", self.learner.base_version,
                 self.learner.sequence, version)
        self.learner.rebase(version)
        self.accepted_bases.add(version)
        self._published = self._published_on_base()  # a replay past a promotion meets its own deltas
        self.stats.registrations["rebased"] += 1
        if announce:
            name = self.settings.model_name
            event = ModelUpdate(model=name, kind="full", version=str(version), base_version=version,
                                uri=f"models:/{name}/{version}")
            self._send(producer, MODEL_UPDATES, name, event.model_dump_json().encode())
        self._save_now = True  # a base change is checkpointed before any delta on the new base

    def _follow_champion(self, producer: Producer) -> None:
        """Follow a champion someone else moved (a retrain, a rollback) by learning on from it."""
        assert self.keeper is not None
        self.check_champion_now = False
        try:
            champion = self.keeper.champion()
        except Exception as exc:
            log.warning("registry unreachable, learning on v%d: %s", self.learner.base_version, exc)
            return
        if champion is None or champion.version == self.learner.base_version:
            return
        tags = champion.tags
        if tags.get("source") == "online" and tags.get("parent_version") == str(self.learner.base_version):
            registered_at = int(tags.get("online.sequence", "-1"))
            if registered_at > self.learner.sequence:  # registered before a crash: the replay gets there
                return
            if registered_at == self.learner.sequence:
                self._rebase(champion.version, producer, announce=False)
                return
        try:
            self._reset(champion.version)
        except Exception:
            log.exception("champion v%d could not be loaded; learning on v%d", champion.version,
                          self.learner.base_version)

    def _reset(self, version: int) -> None:
        """Learn on from registry version `version`'s head; keep what its inputs allow."""
        assert self.keeper is not None
        bundles, old = self.keeper.bundles, self.learner
        head = bundles.head(version)
        same_inputs = bundles.inputs(version) == bundles.inputs(old.base_version)
        self.learner = OnlineLearner(head, version, self._learn_settings())
        self.learner.progress = old.progress
        self._published = self._published_on_base()
        if same_inputs:
            self.learner.holdout.extend(j for j in old.holdout if j.feedback.label in head.class_index)
        self.accepted_bases = (self.accepted_bases if same_inputs else set()) | {version}
        self.stats.registrations["reset"] += 1
        if self.observer is not None and not same_inputs:
            self.observer.new_reference(load_reference(bundles.get(version)), version)
        log.warning("champion moved from v%d to v%d: learning on from it (%s)", old.base_version, version,
                    "same inputs, held-back examples kept" if same_inputs else
                    "other encoder: feedback on older predictions goes to the dead letters as stale_model")
        self._save_now = True

    def _published_on_base(self) -> dict[int, ModelUpdate]:
        """Deltas on the base version already in `model-updates` (what serving may hold), by sequence."""
        if self.keeper is None or not self._servers:
            return {}
        found = published_deltas(self._servers, self.settings.model_name, self.learner.base_version)
        return {u.sequence: u for u in found}

    def _publish(self, producer: Producer, report: WindowReport) -> str:
        """Send a published window's delta, or a sync delta if an earlier history numbered it otherwise."""
        assert report.delta is not None
        earlier = self._published.get(report.sequence)
        if earlier is not None and not same_delta(decode(earlier), report.delta):
            self._sync(producer, report)
            return "synced"
        self._send(producer, MODEL_UPDATES, self.settings.model_name,
                   self.update_event(report).model_dump_json().encode())
        return "sent"

    def _sync(self, producer: Producer, report: WindowReport) -> None:
        """One delta from what serving holds (base + the published deltas) to the live head, which by now
        includes every window learned in this tick."""
        assert self.keeper is not None
        base, published = self.learner.base_version, sorted(self._published.values(), key=lambda u: u.sequence)
        delta = sync_delta(self.learner.live, self.keeper.bundles.head(base), published)
        sequence = self.learner.sequence = published[-1].sequence + 1
        self._send(producer, MODEL_UPDATES, self.settings.model_name, ModelUpdate(
            model=self.settings.model_name, kind="delta", version=f"{base}+ftrl.{sequence}", base_version=base,
            sequence=sequence, delta=base64.b64encode(delta.to_bytes()).decode(),
            window_end=self.last_window_end).model_dump_json().encode())
        log.warning("v%d+ftrl.%d was published from another history (a lost state folder?): published "
                    "v%d+ftrl.%d with this head's weights on the %d coordinates either touched", base,
                    report.sequence, base, sequence, len(delta.rows))
        self._published = {}
        self.stats.registrations["synced"] += 1
        self._save_now = True

    def _start_observer(self) -> None:
        if self.keeper is None or self.observer is not None:
            return
        reference = None
        if self.settings.drift:
            try:
                reference = load_reference(self.keeper.bundles.get(self.learner.base_version))
            except Exception:
                log.exception("no drift reference for v%d: drift monitoring is off", self.learner.base_version)
        self.observer = Observer(self.settings, reference, self.learner.base_version)

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


def tune_gc() -> None:
    """The join store and the held-back set are many long-lived objects that Python's collector
    would walk again and again (18-23 us per feedback event at 5,000/s): leave what exists at start
    alone and collect the youngest generation 70x less often. Nothing here makes reference cycles."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


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


def base_of(model_version: str) -> int | None:
    """The registry version under a served version: 3 for '3' and for '3+ftrl.7'."""
    head = model_version.split("+", 1)[0]
    return int(head) if head.isdigit() else None
