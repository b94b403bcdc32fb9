"""The feedback service: consume, join, learn one event-time window at a time, publish gated deltas.

One loop in one thread: records from `predictions` and `feedback` go through intake
(bad ones to `feedback-dlq`) into the join store; whenever the watermark passes the
end of an update window, the window's examples are learned and judged
(`OnlineLearner`), and a published update goes to `model-updates` as a delta.

Exactly-once effect: every `checkpoint_interval_s`, at a window boundary, once the
broker has acknowledged every delta and dead letter produced so far, the head, the
join store, the watermark and the next offset of every partition are checkpointed
together: copied by the loop, written by the `CheckpointWriter` thread while the loop
learns on; only once it is on disk are the offsets committed to Kafka (for lag
monitoring; the checkpoint is what a restart resumes from) and its examples to the
examples table. Everything after the checkpoint is
replayed after a crash, and because windows are cut in event time the replay makes
the same windows, the same decisions and the same deltas with the same sequence
numbers, which serving skips as already applied.

Around that loop (only when running against a registry, `run`): the online head is
registered as a full version every `registry_interval_s` of event time and on
`loopline promote` (`versions.VersionKeeper`). The loop never waits for the registry: at
the window boundary where a registration falls due it hands a snapshot of the head to
the `registrar.Registrar` thread and learns on; the snapshot and every delta published
after it are checkpointed until the outcome is back, so a crash neither loses the
registration nor makes another version (a replay finds it by its key). When `champion`
moves to the registered head at sequence k while the loop has gone on to k+j, the loop
continues on the new version by publishing the deltas k+1..k+j again, numbered 1..j on
it: serving, which loads the new version, ends with the live head, and the numbers stay
those a run without any wait would have given. When a retrain moves `champion`
elsewhere, learning restarts from that version's head, and feedback on predictions of a
version whose encoder differs goes to the dead letters as `stale_model`. Released
windows go to the `Observer` thread for drift reports.
"""

from __future__ import annotations

import base64
import gc
import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from models.ftrl import FTRLProximal, HeadDelta
from services.common.events import (
    FEEDBACK,
    FEEDBACK_DLQ,
    MODEL_UPDATES,
    PREDICTIONS,
    DeadLetter,
    DeadLetterReason,
    ModelUpdate,
)
from services.common.examples import ExamplesTable
from services.common.registry import COLLECTED_THROUGH_TAG, bound_registry_requests
from services.feedback.checkpoint import Checkpoint, CheckpointStore, CheckpointWriter
from services.feedback.collect import Collector
from services.feedback.decode import decode_batch
from services.feedback.gaps import Gaps
from services.feedback.guard import GuardSettings, PromotionGuard
from services.feedback.history import decode, published_deltas, same_delta, sync_delta
from services.feedback.intake import Record, far_future, rejected_letter
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
from services.feedback.observer import Observer, load_reference
from services.feedback.pacing import FeedbackPacer
from services.feedback.registrar import (
    Attempt,
    Carried,
    ChampionSeen,
    HeadSnapshot,
    Registering,
    Registrar,
)
from services.feedback.replay import ReplayPool
from services.feedback.settings import FeedbackSettings
from services.feedback.trust import TrustSettings, UserTrust
from services.feedback.versions import HEAD_TAG, VersionKeeper

log = logging.getLogger(__name__)
HEAD = "head.npz"
JOIN = "join.npz"
HOLDOUT = "holdout.npz"
REPLAY = "replay.npz"
TRUST = "trust.json"
REGISTERING_HEAD = "registering-head.npz"
REGISTERING_HOLDOUT = "registering-holdout.npz"


MAX_UNKNOWN_LABELS = 1_000
OTHER_LABEL = "(other)"  # parenthesised: a dataset may well have a class named "other"


class ServiceError(Exception):
    """The service cannot start or go on (no champion, broker gone for good, ...)."""


@dataclass
class Stats:
    windows: Counter[str]  # by decision
    dead_letters: Counter[str]  # by reason
    records: Counter[str]  # by topic
    # promoted, kept, failed and retried attempts; base changes (rebased, reset, synced); dropped registrations
    registrations: Counter[str] = field(default_factory=Counter)
    # unknown_label dead letters by the label asked for: at most MAX_UNKNOWN_LABELS labels, the rest as OTHER
    unknown_labels: Counter[str] = field(default_factory=Counter)

    def count_unknown(self, label: str | None) -> None:
        name = label if label is not None else OTHER_LABEL
        if name not in self.unknown_labels and len(self.unknown_labels) >= MAX_UNKNOWN_LABELS:
            name = OTHER_LABEL  # labels are user input: a flood of made-up ones must not grow the state
        self.unknown_labels[name] += 1

    def top_unknown(self, n: int) -> list[tuple[str, int]]:
        """The `n` most asked-for unknown labels and, as '(other)', all the rest."""
        named = [(k, v) for k, v in self.unknown_labels.most_common() if k != OTHER_LABEL]
        rest = sum(v for _, v in named[n:]) + self.unknown_labels.get(OTHER_LABEL, 0)
        return named[:n] + ([(OTHER_LABEL, rest)] if rest else [])


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
        self.next_registration: float | None = None  # event time of the next scheduled registry version
        self.registration_due: str | None = None
        self.check_champion_now = False
        self.registrar: Registrar | None = None  # started by `run` (or a test)
        self.registering: Registering | None = None  # handed to the registrar, outcome not applied yet
        self.owed: str | None = None  # a registration that fell due while another was in hand
        self._owed_waiters: list[Future[dict[str, Any]]] = []
        self._checking = False  # a champion check is with the registrar
        self._base_head: tuple[int, FTRLProximal] | None = None  # the base version's head, when at hand
        self._asked: set[int] = set()
        self._asked_at = 0.0  # monotonic time of the last question to the registrar
        self._promotions: queue.Queue[Future[dict[str, Any]]] = queue.Queue()
        self._published: dict[int, ModelUpdate] = {}  # deltas on the base version found at start, by sequence
        self._servers: str | None = None
        self.last_window_end: float | None = None
        # Examples released from the join store and not learned yet: /metrics reads while a window is learned,
        # and counting them neither as pending nor as learned made a busy service look idle.
        self.learning_now = 0
        self._save_now = False  # a base change is checkpointed at once
        self._replay_written: tuple[ReplayPool, int, bytes] | None = None
        self.checkpoints = CheckpointStore(settings.state_dir / "feedback" / "checkpoints", settings.checkpoints_kept)
        self.writer = CheckpointWriter(self.checkpoints)
        self._saving: tuple[dict[str, int], float, float] | None = None  # offsets, start and end of building
        self.stats = Stats(Counter(), Counter(), Counter())
        self.offsets: dict[str, int] = {}  # "topic:partition" -> next offset to read
        self.gaps = Gaps()
        self.watermark = Watermark(settings.lateness_s, settings.idle_s)
        self.pacer = FeedbackPacer(settings.max_feedback_ahead_s)
        self._assigned: set[tuple[str, int]] = set()  # partitions this consumer reads now
        self.checkpoint_number = 0
        self._letters: list[DeadLetter] = []
        self.trust = UserTrust(self._trust_settings())
        table = ExamplesTable(settings.examples_location) if settings.keep_examples else None
        self.collector = Collector(table, settings.group_id)
        self.guard = PromotionGuard(self._guard_settings())
        self._next_retention = 0.0  # monotonic time of the next retention pass over the examples table
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
                             min_holdout=s.min_holdout, gate_margin=s.gate_margin, recent_size=s.catch_up_size,
                             replay_size=s.replay_size, replay_factor=s.replay_factor, replay_cap=s.replay_cap)

    def _guard_settings(self) -> GuardSettings:
        return GuardSettings(events=self.settings.guard_events, margin=self.settings.guard_margin)

    def _trust_settings(self) -> TrustSettings:
        return TrustSettings(alpha=self.settings.trust_alpha, history=self.settings.trust_history)

    def _join_settings(self) -> JoinSettings:
        s = self.settings
        return JoinSettings(prediction_ttl_s=s.prediction_ttl_s, feedback_wait_s=s.feedback_wait_s,
                            max_predictions=s.max_predictions, max_remembered_ids=s.max_remembered_ids)

    def _champion(self) -> tuple[FTRLProximal, int]:
        assert self.keeper is not None
        champion = self.keeper.champion()
        if champion is None:
            raise ServiceError(f"{self.keeper.registry.name} has no champion yet: run `loopline train` first")
        return self.keeper.start_head(champion.version), champion.version

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        model = FTRLProximal.from_bytes(checkpoint.data(HEAD))
        self.learner = OnlineLearner(model, state["base_version"], self._learn_settings(), state["sequence"])
        self.learner.holdout.extend(joined_from_bytes(checkpoint.data(HOLDOUT)))
        if REPLAY in checkpoint.files:  # older checkpoints have none: the pool refills from what is learned
            self.learner.replay.add(joined_from_bytes(checkpoint.data(REPLAY)))
        self.learner.progress = Progress.from_json(state["progress"])
        self.store = JoinStore.from_bytes(checkpoint.data(JOIN), self._join_settings())
        self.offsets = {k: int(v) for k, v in state["offsets"].items()}
        self.watermark.restore({_partition_key(k): float(v) for k, v in state["max_ts"].items()})
        self.checkpoint_number = checkpoint.number
        self.stats = Stats(Counter(state["windows"]), Counter(state["dead_letters"]), Counter(state["records"]),
                           Counter(state.get("registrations", {})), Counter(state.get("unknown_labels", {})))
        self.accepted_bases = set(state.get("accepted_bases", [self.learner.base_version]))
        self.next_registration = state.get("next_registration")
        # Older checkpoints also hold users.json (per-user correction counts, no longer kept): ignored.
        if TRUST in checkpoint.files:
            self.trust = UserTrust.from_bytes(checkpoint.data(TRUST), self._trust_settings())
        files = {name: checkpoint.data(name) for name in checkpoint.files}
        self.registering = _registering_from(state, files)
        self.owed = state.get("owed")
        self.collector.restore(files)
        if "guard" in state:
            self.guard = PromotionGuard.from_json(state["guard"], self._guard_settings())
        log.info("resumed from checkpoint %d: v%d+ftrl.%d, %d partitions", checkpoint.number,
                 self.learner.base_version, self.learner.sequence, len(self.offsets))

    def checkpoint(self) -> Checkpoint:
        state: dict[str, Any] = {
            "base_version": self.learner.base_version, "sequence": self.learner.sequence,
            "offsets": dict(self.offsets),
            "max_ts": {f"{t}:{p}": ts for (t, p), ts in self.watermark.max_ts.items() if math.isfinite(ts)},
            "windows": dict(self.stats.windows), "dead_letters": dict(self.stats.dead_letters),
            "records": dict(self.stats.records), "progress": self.learner.progress.to_json(),
            "registrations": dict(self.stats.registrations), "accepted_bases": sorted(self.accepted_bases),
            "unknown_labels": dict(self.stats.unknown_labels),
            "next_registration": self.next_registration, "owed": self.owed, "guard": self.guard.to_json(),
        }
        # The join store, the held-back set and the trust records are copied here and serialized by the
        # checkpoint writer.
        holdout = list(self.learner.holdout)
        files: dict[str, bytes | Callable[[], bytes]] = {
            HEAD: self.learner.model.to_bytes(), JOIN: self.store.frozen().to_bytes,
            HOLDOUT: lambda: joined_to_bytes(holdout), TRUST: self.trust.frozen_bytes(),
            REPLAY: self._replay_bytes()}
        if self.registering is not None:
            state["registering"], extra = _registering_to(self.registering)
            files |= extra
        self.checkpoint_number += 1
        files |= self.collector.seal(self.checkpoint_number)
        return Checkpoint(self.checkpoint_number, state, files)

    def _replay_bytes(self) -> bytes | Callable[[], bytes]:
        """The replay pool, serialized by the writer; once the pool is full it seldom changes, and an
        unchanged pool reuses the bytes the last checkpoint wrote."""
        pool, changes = self.learner.replay, self.learner.replay.changes
        written = self._replay_written
        if written is not None and written[0] is pool and written[1] == changes:
            return written[2]
        examples = pool.examples()

        def encode() -> bytes:
            data = joined_to_bytes(examples)
            self._replay_written = (pool, changes, data)  # set by the writer thread: one atomic assignment
            return data
        return encode

    # -- processing (no I/O: testable without a broker) -----------------------------------------

    def process(self, record: Record, now: float) -> None:
        """Take one record (see `process_batch`)."""
        self.process_batch([record], now)

    def process_batch(self, records: Sequence[Record], now: float) -> None:
        """Take a poll's records, in order: each into the join store, or to the dead letters. They are decoded
        together (services/feedback/decode.py); what each one does is as if it came alone."""
        model = self.learner.model
        items = decode_batch(records, model.sparse_dim, model.dense_dim, self.settings.max_event_bytes,
                             self.settings.max_prediction_bytes)
        records_seen, offsets, skew = self.stats.records, self.offsets, self.settings.max_clock_skew_s
        for record, item in zip(records, items, strict=True):
            records_seen[record.topic] += 1
            offsets[f"{record.topic}:{record.partition}"] = record.offset + 1
            # Before the watermark sees it: event time stamped years ahead would expire everything pending.
            ahead = far_future(record, now, skew)
            if ahead is not None:
                self._dead(ahead)
                continue
            self.watermark.observe((record.topic, record.partition), record.ts, now)
            if isinstance(item, DeadLetter):
                self._dead(item)
            elif isinstance(item, StoredFeedback):
                rejected = self.store.add_feedback(item)
                if rejected is not None:
                    self._dead(rejected_letter(self._unknown_label_first(rejected)))
            else:
                self._notice_version(item)
                self.store.add_prediction(item)

    def _unknown_label_first(self, rejected: Rejected) -> Rejected:
        """Feedback the join refused that also names an intent the model lacks: the label is what its sender
        most needs to hear about (a duplicate stays a duplicate)."""
        label = rejected.feedback.label
        if rejected.reason == "duplicate" or label in self.learner.model.class_index:
            return rejected
        return Rejected(rejected.feedback, "unknown_label",
                        f"label {label!r} is not one of the model's intents; and {rejected.detail}")

    def _notice_version(self, prediction: StoredPrediction) -> None:
        """A prediction by a newer version than the one learned on: serving follows a new champion, so
        check the registry before its feedback is released (and found stale)."""
        base = base_of(prediction.model_version)
        if base is not None and base > self.learner.base_version and base not in self.accepted_bases | self._asked:
            self._asked.add(base)
            self.check_champion_now = True
            log.info("serving answers with v%d: asking the registry for the champion", base)

    def tick(self, now: float, flush: bool = False) -> list[WindowReport]:
        """Learn every update window the watermark has passed (all of them with `flush`).

        Windows are the aligned intervals [k * update_interval_s, (k + 1) * update_interval_s)
        of key time, each released whole once the watermark is past its end, so where they
        fall does not depend on when this runs.
        """
        mark = math.inf if flush else self.watermark.value(now)
        for rejected in self.store.expire(mark if not flush else -math.inf):
            self._dead(rejected_letter(self._unknown_label_first(rejected)))
        interval = self.settings.update_interval_s
        reports = []
        while (first := self.store.first_key_time()) is not None:
            end = (math.floor(first / interval) + 1) * interval
            if end > mark or self._registration_due(end):
                break
            self.learning_now = len(self.store.ready)  # before the release too: a reading in between counts them
            released = self.store.release(end)
            self.learning_now = len(released)
            try:
                examples = self._learnable(released, end)
                report = self.learner.learn_window(examples, end)
                for joined, held in zip(examples, report.held, strict=True):
                    self.collector.keep(joined, "held_back" if held else "learned", None, report.decision, end)
                rollback = self.guard.observe(predicted == joined.feedback.label for predicted, joined
                                              in zip(report.predicted, examples, strict=True))
                if rollback is not None:
                    self.stats.registrations["guard_rollback"] += 1
                    if self.registrar is not None:
                        self.registrar.roll_back(rollback)
                        self._checking = True  # the registrar reports the champion after the rollback
            finally:
                self.learning_now = 0
            self.last_window_end = end
            self.stats.windows[report.decision] += 1
            reports.append(report)
            log.info("window up to %.1f: %s", end, report.describe())
            if self.observer is not None:
                self.observer.observe(examples)
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

    def _learnable(self, examples: list[Joined], end: float) -> list[Joined]:
        """Examples the current head can learn from users it trusts; the others to the dead letters with the
        reason, and to the examples table as withheld (or, for a label the head lacks, as unknown_label)."""
        keep: list[Joined] = []
        distrusted: dict[str, str] = {}  # user -> why
        self.trust.start_window()
        for joined in examples:
            base = base_of(joined.prediction.model_version)
            if base not in self.accepted_bases:
                self._withhold(joined, end, "stale_model", f"prediction by model {joined.prediction.model_version}; "
                               f"learning on v{self.learner.base_version}, whose inputs differ")
            elif joined.feedback.label not in self.learner.model.class_index:
                self._withhold(joined, end, "unknown_label", f"v{self.learner.base_version} has no intent "
                               f"{joined.feedback.label!r}; kept in the examples table for the next retrain")
            elif (user := joined.prediction.user_id) is None:
                keep.append(joined)
            elif (verdict := self.trust.judge(user, joined.feedback.label != joined.prediction.intent,
                                              joined.prediction.confidence,
                                              (joined.prediction.text, joined.feedback.label))).repeated:
                self._withhold(joined, end, "repeated_correction", verdict.describe(user))
            elif not verdict.trusted:
                distrusted[user] = verdict.describe(user)
                self._withhold(joined, end, "untrusted_user", distrusted[user])
            else:
                keep.append(joined)
        if not distrusted:
            return keep
        # What such a user sent earlier in the window goes too: the verdict came late, not the attack.
        for joined in keep:
            if (why := distrusted.get(joined.prediction.user_id or "")) is not None:
                self._withhold(joined, end, "untrusted_user", why)
        dropped = self.learner.forget_users(set(distrusted))
        log.info("%d users not trusted in this window; %d of their held-back examples dropped", len(distrusted),
                 dropped)
        return [j for j in keep if j.prediction.user_id not in distrusted]

    def _withhold(self, joined: Joined, end: float, reason: DeadLetterReason, detail: str) -> None:
        """Not learned online: a dead letter with the reason, and a row in the examples table."""
        self._dead(rejected_letter(Rejected(joined.feedback, reason, detail)))
        verdict = "unknown_label" if reason == "unknown_label" else "withheld"
        self.collector.keep(joined, verdict, reason, None, end)

    def update_event(self, report: WindowReport) -> ModelUpdate:
        assert report.delta is not None
        return self._delta_event(report.sequence, report.delta, report.window_end)

    def _delta_event(self, sequence: int, delta: HeadDelta, window_end: float | None) -> ModelUpdate:
        base = self.learner.base_version
        return ModelUpdate(model=self.settings.model_name, kind="delta", version=f"{base}+ftrl.{sequence}",
                           base_version=base, sequence=sequence, delta=base64.b64encode(delta.to_bytes()).decode(),
                           window_end=window_end)

    def _dead(self, letter: DeadLetter) -> None:
        self.stats.dead_letters[letter.reason] += 1
        if letter.reason == "unknown_label":
            self.stats.count_unknown(letter.label)
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
        self._servers = servers
        self._published = self._published_on_base()  # before the observer's thread imports Evidently: seconds of CPU
        self._start_observer()
        self.start_registrar()
        self.collector.commit()  # batches a checkpoint held when the last run stopped (the table skips repeats)
        last_checkpoint = time.monotonic()
        next_champion_check = 0.0 if self.registrar is not None else math.inf
        try:
            while not stop.is_set():
                records = self._contiguous(consumer, [r for m in consumer.consume(num_messages=1000, timeout=0.1)
                                                      if (r := _record(m))])
                if records:
                    self.process_batch(records, time.time())
                self._pace(consumer, time.time())
                if self.check_champion_now or time.monotonic() >= next_champion_check:
                    next_champion_check = time.monotonic() + self.settings.champion_check_s
                    self.ask_champion()
                self.advance(producer, time.time())
                self._send_letters(producer)
                producer.poll(0)
                due = self._save_now or time.monotonic() - last_checkpoint >= self.settings.checkpoint_interval_s
                if due and self._save(producer, consumer):
                    last_checkpoint, self._save_now = time.monotonic(), False
                elif not due:
                    self._finish_save(consumer)
        finally:
            phases: dict[str, float] = {}
            began = time.monotonic()
            if self.registrar is not None:
                self.registrar.stop(timeout=1.0)  # a registration in hand is checkpointed: the next start resumes it
            self._send_letters(producer)
            self._save(producer, consumer, wait=True)
            self.writer.close()
            phases["checkpoint"] = time.monotonic() - began
            consumer.close()
            phases["consumer"] = time.monotonic() - began - phases["checkpoint"]
            stopped = {"status": "stopped", "detail": "the service is stopping; the registration resumes at its "
                       "next start"}
            for waiter in [*(self.registering.waiters if self.registering else []), *self._owed_waiters]:
                if not waiter.done():
                    waiter.set_result(stopped)
            while not self._promotions.empty():
                self._promotions.get().set_result({"status": "stopped", "detail": "the service is stopping"})
            if self.observer is not None:
                self.observer.close()
            phases["observer"] = time.monotonic() - began - phases["checkpoint"] - phases["consumer"]
            log.info("stopped in %.1f s (%s)", time.monotonic() - began,
                     ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))

    def advance(self, producer: Producer, now: float, flush: bool = False) -> None:
        """One pass after consuming: apply what the registry worker reported, learn and publish the windows
        the watermark passed, hand over a registration that fell due, take `loopline promote` requests."""
        self.apply_registry_results(producer)
        for report in self.tick(now, flush):
            if report.decision == "published" and self._publish(producer, report) == "synced":
                break  # the sync delta carries the head after every window of this tick
        if self.registration_due is not None:
            self.hand_over(self.registration_due)
        while not self._promotions.empty():
            self.promote_request(self._promotions.get())

    # -- registry versions and the champion --------------------------------------------------

    def start_registrar(self) -> None:
        """Start the registry worker (with a keeper only) and give it back a registration a checkpoint held."""
        if self.keeper is None or self.registrar is not None:
            return
        s = self.settings
        bound_registry_requests(s.registry_request_timeout_s, s.registry_request_retries)
        self.registrar = Registrar(self.keeper, self._learn_settings(), self._servers, s.registry_retry_first_s,
                                   s.registry_retry_max_s, s.drift)
        self.registrar.start()
        if self.registering is not None:
            log.info("resuming the registration of %s", self.registering.snapshot.key)
            self.registrar.register(self.registering.snapshot)

    def ask_champion(self) -> None:
        """Have the registrar look at the champion; if it is still busy with the last question, ask once the
        answer is in (that answer may predate what prompted this one: a new champion seen in a prediction)."""
        if self.registrar is None or self._checking:
            return
        self.check_champion_now = False
        self._checking = True
        self._asked_at = time.monotonic()
        self.registrar.check_champion(self.learner.base_version)

    def request_promotion(self, timeout: float = 300.0) -> dict[str, Any]:
        """From another thread (`loopline promote`): register the live head at the next window boundary
        and move `champion` to it if it passes; returns what happened on the first try."""
        if self.keeper is None:
            return {"status": "unavailable", "detail": "this service runs without a registry"}
        request: Future[dict[str, Any]] = Future()
        self._promotions.put(request)
        return request.result(timeout)

    def promote_request(self, request: Future[dict[str, Any]]) -> None:
        if self.registering is None and self.learner.sequence == 0:
            request.set_result({"status": "unchanged", "version": self.learner.base_version,
                                "detail": f"nothing learned since v{self.learner.base_version}: nothing to register"})
            return
        self.hand_over("loopline promote", [request])

    def hand_over(self, trigger: str, waiters: list[Future[dict[str, Any]]] | None = None) -> None:
        """At a window boundary: give the registrar a snapshot of the live head; while it still holds one,
        owe the registration until that one is done."""
        self.registration_due = None
        waiters = [*self._owed_waiters, *(waiters or [])]
        if self.registrar is None:
            for waiter in waiters:
                waiter.set_result({"status": "unavailable", "detail": "the registry worker is not running"})
            return
        if self.registering is not None:
            self.owed, self._owed_waiters = self.owed or trigger, waiters
            return
        self.owed, self._owed_waiters = None, []
        if self.learner.sequence == 0:
            for waiter in waiters:
                waiter.set_result({"status": "unchanged", "version": self.learner.base_version, "detail":
                                   f"nothing learned since v{self.learner.base_version}: nothing to register"})
            return
        snapshot = HeadSnapshot.of(self.learner, self.offsets, trigger)
        self.registering = Registering(snapshot, waiters=waiters)
        self._save_now = True  # a crash after the registry moved `champion` must resume this very snapshot
        self.registrar.register(snapshot)
        log.info("registration of %s handed over (%s)", snapshot.key, trigger)

    def apply_registry_results(self, producer: Producer) -> None:
        """Apply what the registrar reported since the last pass (between windows, so at a boundary)."""
        if self.registrar is None:
            return
        while True:
            try:
                result = self.registrar.results.get_nowait()
            except queue.Empty:
                return
            if isinstance(result, Attempt):
                self._apply_attempt(result, producer)
            else:
                self._checking = False
                self._apply_champion(result, producer)

    def _apply_attempt(self, attempt: Attempt, producer: Producer) -> None:
        current = self.registering
        if attempt.number > 1:
            self.stats.registrations["retried"] += 1
        result = attempt.registered
        if result is None:
            self.stats.registrations["failed"] += 1
            if current is not None and attempt.snapshot is current.snapshot:
                _answer(current.waiters, {"status": "failed", "detail": f"registry unreachable ({attempt.error}); "
                                          f"{attempt.snapshot.key} is registered once it is back"})
            return
        self.stats.registrations["promoted" if result.promoted else "kept"] += 1
        if current is None or attempt.snapshot is not current.snapshot:
            return  # the champion check saw it promoted first and the loop went on from it
        log.info("v%d registered from %s after %d attempt(s): %s", result.version, attempt.snapshot.key,
                 attempt.number, result.reason)
        _answer(current.waiters, {"status": "promoted" if result.promoted else "registered",
                                  "version": result.version, "detail": result.reason})
        self.registering = None
        if result.promoted and self.learner.base_version == attempt.snapshot.base_version:
            self._rebase(result.version, producer, carried=current.carried, published=attempt.published,
                         base_head=attempt.snapshot.head)
        self._save_now = True  # the registration is done: no checkpoint may resume it again
        if self.owed is not None:
            self.registration_due = self.owed  # at the next window boundary

    def _apply_champion(self, seen: ChampionSeen, producer: Producer) -> None:
        """Follow a champion someone else moved (a retrain, a rollback) by learning on from it; or continue on
        the registration in hand if the registry already made it the champion."""
        base = self.learner.base_version
        if seen.error is not None:
            log.warning("registry: %s; learning on v%d", seen.error, base)
            return
        champion = seen.champion
        if champion is None or champion.version == base:
            return
        if seen.asked_base != base:
            self.check_champion_now = True  # asked before the base changed: ask again
            return
        tags, current = champion.tags, self.registering
        if current is not None and tags.get(HEAD_TAG) == current.snapshot.key:
            _answer(current.waiters, {"status": "promoted", "version": champion.version,
                                      "detail": f"champion is v{champion.version}, the registered {tags[HEAD_TAG]}"})
            self.registering = None
            self._rebase(champion.version, producer, carried=current.carried, published=seen.published,
                         base_head=current.snapshot.head)
            if self.owed is not None:
                self.registration_due = self.owed
            return
        if tags.get("source") == "online" and tags.get("parent_version") == str(base):
            registered_at = int(tags.get("online.sequence", "-1"))
            if registered_at > self.learner.sequence:  # registered before a crash: the replay gets there
                return
            if registered_at == self.learner.sequence:
                self._rebase(champion.version, producer, announce=False, published=seen.published)
                return
        if seen.head is None:
            log.warning("champion v%d moved but its head is not at hand; asking again", champion.version)
            self.check_champion_now = True
            return
        old = self.learner
        self._reset(champion.version, seen)
        if seen.same_inputs:
            self._catch_up(old, champion.tags.get(COLLECTED_THROUGH_TAG), producer)

    def _rebase(self, version: int, producer: Producer, announce: bool = True, carried: list[Carried] | None = None,
                published: tuple[ModelUpdate, ...] = (), base_head: bytes | None = None) -> None:
        """The registered head is registry version `version` now: deltas are numbered on it. `carried` are the
        deltas published since the registered head; they go out again on the new version, so serving, which
        loads it, ends with the live head."""
        carried = carried or []
        log.info("v%d+ftrl.%d is v%d now; deltas continue on it (%d carried over)", self.learner.base_version,
                 self.learner.sequence - len(carried), version, len(carried))
        self.learner.rebase(version)
        self.accepted_bases.add(version)
        self._published = {u.sequence: u for u in published}  # a replay past a promotion meets its own deltas
        self._base_head = (version, FTRLProximal.from_bytes(base_head)) if base_head is not None else None
        self.stats.registrations["rebased"] += 1
        if announce:
            name = self.settings.model_name
            event = ModelUpdate(model=name, kind="full", version=str(version), base_version=version,
                                uri=f"models:/{name}/{version}")
            self._send(producer, MODEL_UPDATES, name, event.model_dump_json().encode())
        for sequence, delta in enumerate(carried, 1):
            self.learner.sequence = sequence
            if self._publish_delta(producer, sequence, delta.delta, delta.window_end) == "synced":
                break  # the sync delta carries the live head
        self._save_now = True  # a base change is checkpointed before any delta on the new base

    def _reset(self, version: int, seen: ChampionSeen) -> None:
        """Learn on from registry version `version`'s head; keep what its inputs allow."""
        assert seen.head is not None
        old, head, same_inputs = self.learner, seen.head, seen.same_inputs
        self.learner = OnlineLearner(head, version, self._learn_settings())
        self.learner.progress = old.progress
        self._published = {u.sequence: u for u in seen.published}
        self._base_head = None
        if same_inputs:
            self.learner.holdout.extend(j for j in old.holdout if j.feedback.label in head.class_index)
            self.learner.replay.add(j for j in old.replay.examples() if j.feedback.label in head.class_index)
        self.accepted_bases = (self.accepted_bases if same_inputs else set()) | {version}
        self.stats.registrations["reset"] += 1
        if seen.champion is not None and seen.champion.tags.get("source") == "train" and version > old.base_version:
            if self.guard.promoted(version, old.base_version):
                log.info("guard: v%d is watched for %d feedback events against v%d", version,
                         self.settings.guard_events, old.base_version)
        else:
            self.guard.reset()
        self._drop_registration(version, old.base_version)
        if self.observer is not None and not same_inputs:
            self.observer.new_reference(seen.reference, version)
        log.warning("champion moved from v%d to v%d: learning on from it (%s)", old.base_version, version,
                    "same inputs, held-back examples kept" if same_inputs else
                    "other encoder: feedback on older predictions goes to the dead letters as stale_model")
        self._save_now = True

    def _catch_up(self, old: OnlineLearner, collected_through: str | None, producer: Producer) -> None:
        """What the old head learned after the new champion's training data was read (the retrain's time on
        the runner, plus rows not yet in the examples table then), learned again on the new head. Without it
        a promoted retrain serves a head that never saw the latest feedback."""
        if not collected_through:
            return  # trained without the examples table: it did not see what the old head learned either
        through = float(collected_through)
        missed = [j for j in old.recent if j.feedback.ts > through]
        report = self.learner.catch_up(missed, self.last_window_end or 0.0)
        self.stats.registrations[f"catch_up_{report.decision}"] += 1
        gate = ("" if report.live_accuracy is None else f"; held-back accuracy {report.candidate_accuracy:.4f} "
                f"vs {report.live_accuracy:.4f} without")
        log.info("catch-up on v%d, %.1f s after asking the registry: %d learned examples with feedback after %s, "
                 "%s%s", self.learner.base_version, time.monotonic() - self._asked_at, len(missed), collected_through,
                 report.decision, gate)
        if report.decision != "published":  # serving holds the new version until its first update: send one
            report = self.learner.unchanged_update(self.last_window_end or 0.0)
        self._publish(producer, report)

    def _drop_registration(self, version: int, old_base: int) -> None:
        """A registration in hand on the old base is moot once another champion is learned on: were it to
        fail for good (its base deleted), it would hold up every later registration, also across restarts."""
        dropped, self.registering = self.registering, None
        if dropped is None:
            return
        if self.registrar is not None:
            self.registrar.abandon(dropped.snapshot)
        self.stats.registrations["dropped"] += 1
        log.warning("registration of %s dropped: champion moved to v%d", dropped.snapshot.key, version)
        _answer(dropped.waiters, {"status": "dropped", "detail": f"champion moved to v{version}; the online head "
                                  f"{dropped.snapshot.key} on v{old_base} was not registered"})

    def _published_on_base(self) -> dict[int, ModelUpdate]:
        """Deltas on the base version already in `model-updates` (what serving may hold), by sequence."""
        if self.keeper is None or not self._servers:
            return {}
        found = published_deltas(self._servers, self.settings.model_name, self.learner.base_version)
        log.info("%d deltas on v%d already in %s (up to ftrl.%d)", len(found), self.learner.base_version,
                 MODEL_UPDATES, max((u.sequence for u in found), default=0))
        return {u.sequence: u for u in found}

    def _publish(self, producer: Producer, report: WindowReport) -> str:
        assert report.delta is not None
        return self._publish_delta(producer, report.sequence, report.delta, report.window_end)

    def _publish_delta(self, producer: Producer, sequence: int, delta: HeadDelta, window_end: float | None) -> str:
        """Send a delta, or a sync delta if an earlier history numbered it otherwise."""
        earlier = self._published.get(sequence)
        if earlier is not None and not same_delta(decode(earlier), delta):
            self._sync(producer, sequence)
            return "synced"
        self._send(producer, MODEL_UPDATES, self.settings.model_name,
                   self._delta_event(sequence, delta, window_end).model_dump_json().encode())
        self._carry(window_end, delta)
        return "sent"

    def _carry(self, window_end: float | None, delta: HeadDelta) -> None:
        """Keep a delta on the base of the registration in hand: if it is promoted, this goes out again."""
        current = self.registering
        if current is not None and current.snapshot.base_version == self.learner.base_version:
            current.carry(window_end, delta)

    def _sync(self, producer: Producer, sequence_made: int) -> None:
        """One delta from what serving holds (base + the published deltas) to the live head, which by now
        includes every window learned in this tick."""
        base, published = self.learner.base_version, sorted(self._published.values(), key=lambda u: u.sequence)
        delta = sync_delta(self.learner.live, self._base_model(base), published)
        sequence = self.learner.sequence = published[-1].sequence + 1
        self._send(producer, MODEL_UPDATES, self.settings.model_name,
                   self._delta_event(sequence, delta, self.last_window_end).model_dump_json().encode())
        self._carry(self.last_window_end, delta)
        log.warning("v%d+ftrl.%d was published from another history (a lost state folder?): published "
                    "v%d+ftrl.%d with this head's weights on the %d coordinates either touched", base,
                    sequence_made, base, sequence, len(delta.rows))
        self._published = {}
        self.stats.registrations["synced"] += 1
        self._save_now = True

    def _base_model(self, version: int) -> FTRLProximal:
        if self._base_head is not None and self._base_head[0] == version:
            return self._base_head[1]
        assert self.keeper is not None
        return self.keeper.bundles.head(version)

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

    def _contiguous(self, consumer: Consumer, records: list[Record]) -> list[Record]:
        """The poll's records without any after a jump in a partition's offsets, which is sought back
        (services/feedback/gaps.py)."""
        kept, seeks = self.gaps.contiguous(records, self.offsets)
        for (topic, partition), offset in seeks.items():
            log.warning("%s[%d]: the client skipped from offset %d; fetching from there again", topic, partition,
                        offset)
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # e.g. revoked meanwhile: whoever gets it starts from the checkpoint
                log.warning("%s[%d]: seek back failed: %s", topic, partition, exc)
                self.gaps.seeked.pop(f"{topic}:{partition}", None)
        return kept

    def _pace(self, consumer: Consumer, now: float) -> None:
        """Pause feedback partitions far ahead of their predictions, resume them once those caught up
        (services/feedback/pacing.py). Pausing drops what the client fetched ahead for the partition;
        it fetches again from the next unread offset on resume, so nothing is skipped."""
        assigned = {p: ts for p, ts in self.watermark.max_ts.items() if p in self._assigned}
        pause, resume = self.pacer.decide(assigned, lambda p: self.watermark.quiet(p, now), now)
        if pause:
            consumer.pause([TopicPartition(FEEDBACK, p) for p in pause])
        if resume:
            consumer.resume([TopicPartition(FEEDBACK, p) for p in resume])

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = self.offsets.get(f"{tp.topic}:{tp.partition}", OFFSET_BEGINNING)
        self.watermark.track([(tp.topic, tp.partition) for tp in partitions], time.time())
        consumer.assign(partitions)
        # A pause the application set outlives a reassignment in the client: start every partition
        # running, as the pacer now believes they are.
        consumer.resume([tp for tp in partitions if tp.topic == FEEDBACK])
        self.pacer.forget()
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
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

    def _save(self, producer: Producer, consumer: Consumer, wait: bool = False) -> bool:
        """Start a checkpoint, once everything produced so far is acknowledged and the previous checkpoint is
        on disk; False if it cannot start yet. With `wait`, return once it is on disk and offsets are committed."""
        # A base change or a hand-over (`_save_now`) must be on disk soon: it waits for the write in flight.
        self._finish_save(consumer, wait or self._save_now)
        if self.writer.busy:
            return False
        waited = time.monotonic()
        if producer.flush(10) > 0:
            log.warning("broker has not acknowledged every update yet; checkpoint postponed")
            return False
        if time.monotonic() - waited > 1.0:
            log.warning("the broker took %.1f s to acknowledge what was produced", time.monotonic() - waited)
        began = time.monotonic()
        self.writer.start(self.checkpoint())  # built here, in step with the loop; written on the writer's thread
        self._saving = (dict(self.offsets), began, time.monotonic())
        self._finish_save(consumer, wait)
        return True

    def _finish_save(self, consumer: Consumer, wait: bool = False) -> None:
        """Once the checkpoint being written is on disk: commit its examples, then its offsets."""
        path = self.writer.written(wait)
        if path is None or self._saving is None:
            return
        (offsets, began, built), self._saving = self._saving, None
        written = time.monotonic()
        self.collector.commit()  # after the checkpoint holds the batch: a crash in between commits it at start
        self._expire_examples()
        if built - began + time.monotonic() - written > 1.0:  # the loop learns nothing meanwhile
            log.warning("slow checkpoint: %s built in %.1f s, written in %.1f s beside the loop, examples "
                        "committed in %.1f s", path.name, built - began, written - built, time.monotonic() - written)
        commits = [TopicPartition(*_partition_key(k), offset) for k, offset in offsets.items()]
        if commits:
            try:
                consumer.commit(offsets=commits, asynchronous=False)
            except Exception as exc:  # the checkpoint, not the committed offset, is what a restart uses
                log.warning("offset commit failed after %s: %s", path.name, exc)

    def _expire_examples(self) -> None:
        """Retention (`LOOPLINE_EXAMPLES_RETENTION_DAYS`), at most hourly: old rows leave the examples table."""
        days, table = self.settings.examples_retention_days, self.collector.table
        if days <= 0 or table is None or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + 3600.0
        try:
            gone = table.expire(time.time() - days * 86_400)
        except Exception as exc:  # the next pass tries again; learning goes on
            log.warning("examples table %s: retention failed: %s", table.uri, exc)
            return
        if gone:
            log.info("retention: %d examples older than %g days deleted", gone, days)


def _answer(waiters: list[Future[dict[str, Any]]], result: dict[str, Any]) -> None:
    """Tell `loopline promote` callers what became of their registration (once)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(result)


def _registering_to(registering: Registering) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The registration in hand as checkpoint state and files."""
    snapshot = registering.snapshot
    state = {"base_version": snapshot.base_version, "sequence": snapshot.sequence, "trigger": snapshot.trigger,
             "offsets": dict(snapshot.offsets), "progress": snapshot.progress,
             "carried": [c.window_end for c in registering.carried]}
    if registering.holdout_bytes is None:  # the same on every checkpoint: encode it once
        registering.holdout_bytes = joined_to_bytes(list(snapshot.holdout))
    files = {REGISTERING_HEAD: snapshot.head, REGISTERING_HOLDOUT: registering.holdout_bytes}
    files |= {_carried_file(i): c.delta.to_bytes() for i, c in enumerate(registering.carried)}
    return state, files


def _registering_from(state: dict[str, Any], files: dict[str, bytes]) -> Registering | None:
    saved = state.get("registering")
    if saved is None:
        return None
    snapshot = HeadSnapshot(int(saved["base_version"]), int(saved["sequence"]), files[REGISTERING_HEAD],
                            tuple(joined_from_bytes(files[REGISTERING_HOLDOUT])), saved["progress"],
                            {k: int(v) for k, v in saved["offsets"].items()}, str(saved["trigger"]))
    carried = [Carried(end, HeadDelta.from_bytes(files[_carried_file(i)])) for i, end in enumerate(saved["carried"])]
    return Registering(snapshot, carried, holdout_bytes=files[REGISTERING_HOLDOUT])


def _carried_file(index: int) -> str:
    return f"carried-{index:06d}.npz"


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
