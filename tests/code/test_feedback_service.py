"""FeedbackService without a broker: records in, windows learned, dead letters out, and a restart from a
checkpoint that ends with the same head and the same deltas as a run that never stopped."""

from __future__ import annotations

import base64
import json
import random
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import featurize
from services.common.events import FEEDBACK, PREDICTIONS, FeedbackEvent, LoggedFeatures, PredictionEvent
from services.feedback.intake import Record, dead_letter
from services.feedback.join import Joined
from services.feedback.learner import WindowReport
from services.feedback.metrics import FeedbackCollector
from services.feedback.service import REPLAY, FeedbackService
from services.feedback.settings import FeedbackSettings
from tests.conftest import SPEC, TinyModel, head_copy

PARTITIONS = 4
T0 = 1_800_000_000.0


def stream(trained: TinyModel, n: int = 900, seed: int = 21, version: str = "1", new_label_every: int = 0
           ) -> list[Record]:
    """Predictions and their feedback as serving and users would produce them, per partition in time order;
    with `new_label_every` k, every k-th feedback names an intent the model lacks."""
    encoder = trained[0]
    events = generate(TrafficConfig(n_events=n, n_users=60, seed=seed)).events
    texts = list(events["text"])
    batch = featurize(texts, encoder.encode(texts), SPEC)
    csr = batch.sparse.tocsr()
    rng = random.Random(seed)
    timed: list[tuple[float, str, str, bytes]] = []
    for i, row in enumerate(events.itertuples()):
        pid = f"pred-{seed}-{i}"
        ts = T0 + i * 0.02
        prediction = PredictionEvent(
            prediction_id=pid, model_version=version, user_id=row.user_id, text=row.text, intent=row.true_label,
            features=LoggedFeatures.of(csr.indices[csr.indptr[i]:csr.indptr[i + 1]],
                                       csr.data[csr.indptr[i]:csr.indptr[i + 1]], batch.dense[i]),
            probabilities={intent: 1 / len(INTENTS) for intent in INTENTS})
        timed.append((ts, PREDICTIONS, pid, prediction.model_dump_json().encode()))
        if rng.random() < 0.8:  # most users give feedback, after a realistic delay
            label = "order_pizza" if new_label_every and i % new_label_every == 0 else row.label
            feedback = FeedbackEvent(event_id=f"fb-{seed}-{i}", prediction_id=pid, label=label)
            timed.append((ts + rng.uniform(0.2, 3.0), FEEDBACK, pid, feedback.model_dump_json().encode()))
    return _records(timed)


def _records(timed: list[tuple[float, str, str, bytes]]) -> list[Record]:
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for ts, topic, key, value in sorted(timed, key=lambda t: t[0]):
        partition = zlib.crc32(key.encode()) % PARTITIONS
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(Record(topic, partition, offset, key, value, ts))
    return out


def arrival(records: list[Record], seed: int) -> list[Record]:
    """One way fetches could interleave partitions: each partition in order, the mix jittered."""
    rng = random.Random(seed)
    jittered = sorted(records, key=lambda r: (r.ts + rng.uniform(0, 0.3)))
    by_partition: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        by_partition.setdefault((r.topic, r.partition), []).append(r)
    cursors = {k: iter(v) for k, v in by_partition.items()}
    return [next(cursors[(r.topic, r.partition)]) for r in jittered]


@pytest.fixture
def settings(tmp_path: Path) -> FeedbackSettings:
    return FeedbackSettings(state_dir=tmp_path, update_interval_s=1.0, lateness_s=0.5, min_holdout=20,
                            holdout_share=0.15, feedback_wait_s=10.0)


def service(settings: FeedbackSettings, trained: TinyModel) -> FeedbackService:
    return FeedbackService(settings, start=(head_copy(trained[1]), 1))


def collect(reports: list[WindowReport], deltas: dict[int, bytes]) -> None:
    """Published deltas by sequence number; one published again (a replay) must be the same."""
    for report in reports:
        if report.decision == "published":
            d = report.delta
            content = d.rows.tobytes() + d.sparse_weights.tobytes() + d.dense_weights.tobytes()
            assert deltas.setdefault(report.sequence, content) == content, "a replayed delta must be identical"


def feed(svc: FeedbackService, records: list[Record], deltas: dict[int, bytes]) -> None:
    for i, record in enumerate(records):
        svc.process(record, now=record.ts)
        if i % 40 == 0:
            collect(svc.tick(now=record.ts), deltas)


def finish(svc: FeedbackService, deltas: dict[int, bytes]) -> None:
    collect(svc.tick(now=0.0, flush=True), deltas)


def test_windows_are_learned_and_published(settings, trained, tmp_path) -> None:
    svc, deltas = service(settings, trained), {}
    records = stream(trained)
    feed(svc, arrival(records, seed=1), deltas)
    finish(svc, deltas)
    assert svc.stats.windows["published"] >= 3 and sorted(deltas) == list(range(1, len(deltas) + 1))
    n_feedback = sum(r.topic == FEEDBACK for r in records)
    learned = svc.learner.progress.examples
    assert learned == n_feedback, "every feedback event was joined and scored exactly once"
    assert not svc.store.ready and not svc.store.waiting and sum(svc.stats.dead_letters.values()) == 0


@pytest.mark.parametrize("crash_at", [0.15, 0.5, 0.85])
def test_a_restart_from_a_checkpoint_learns_exactly_what_an_uninterrupted_run_does(
        settings, trained, tmp_path, crash_at) -> None:
    records = stream(trained)
    steady, steady_deltas = service(settings, trained), {}
    feed(steady, arrival(records, seed=1), steady_deltas)
    finish(steady, steady_deltas)

    order = arrival(records, seed=2)  # another interleaving of the same topics
    first, deltas = service(settings, trained), {}
    cut = int(len(order) * crash_at)
    feed(first, order[:cut], deltas)
    first.checkpoints.save(first.checkpoint())
    feed(first, order[cut:cut + 200], deltas)  # work done after the checkpoint, lost in the crash

    resumed = FeedbackService(settings)  # no start head given: it must come from the checkpoint
    rest = [r for r in order if r.offset >= resumed.offsets.get(f"{r.topic}:{r.partition}", 0)]
    feed(resumed, rest, deltas)
    finish(resumed, deltas)

    assert deltas == steady_deltas, "same deltas with the same sequence numbers"
    for name in ("z_sparse", "n_sparse", "w_sparse", "z_dense", "n_dense", "w_dense"):
        np.testing.assert_array_equal(getattr(resumed.learner.model, name), getattr(steady.learner.model, name))
    assert resumed.learner.progress == steady.learner.progress, "every event scored exactly once"
    assert resumed.stats.windows == steady.stats.windows
    # Windows replayed earlier examples from a pool the checkpoint carried: the same pool at the end.
    assert len(steady.learner.replay) > 0
    assert ids(resumed.learner.replay.examples()) == ids(steady.learner.replay.examples())


def test_a_checkpoint_from_before_replay_resumes_with_an_empty_pool(settings, trained) -> None:
    svc, deltas = service(settings, trained), {}
    feed(svc, arrival(stream(trained), seed=1), deltas)
    checkpoint = svc.checkpoint()
    assert len(svc.learner.replay) > 0 and REPLAY in checkpoint.files
    older = replace(checkpoint, files={k: v for k, v in checkpoint.files.items() if k != REPLAY})
    svc.checkpoints.save(older)
    resumed = FeedbackService(settings)
    assert len(resumed.learner.replay) == 0 and resumed.learner.sequence == svc.learner.sequence


def ids(examples: list[Joined]) -> list[str]:
    return [j.feedback.event_id for j in examples]


def test_a_damaged_newest_checkpoint_is_skipped_reported_and_the_one_before_it_resumed(
        settings, trained, tmp_path) -> None:
    svc, deltas = service(settings, trained), {}
    order = arrival(stream(trained, n=300), seed=1)
    feed(svc, order[:200], deltas)
    svc.checkpoints.save(svc.checkpoint())
    feed(svc, order[200:], deltas)
    newest = svc.checkpoints.save(svc.checkpoint())
    head = newest / "head.npz"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))

    resumed = FeedbackService(settings)
    assert resumed.checkpoint_number == svc.checkpoint_number - 1
    assert len(resumed.problems) == 1 and resumed.problems[0].startswith(newest.name)
    metrics = generate_latest(collector_registry(resumed)).decode()
    assert "loopline_feedback_checkpoints_skipped_total 1.0" in metrics


def collector_registry(svc: FeedbackService) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FeedbackCollector(svc))
    return registry


def test_every_bad_event_goes_to_the_dead_letters_with_its_reason(settings, trained, tmp_path) -> None:
    svc = service(settings, trained)
    good = stream(trained, n=40)
    first_pred = next(r for r in good if r.topic == PREDICTIONS)
    first_fb = next(r for r in good if r.topic == FEEDBACK)
    t = T0 + 100

    def bad(value: bytes, offset: int, topic: str = FEEDBACK) -> Record:
        return Record(topic, 0, 10_000 + offset, "k", value, t)

    def fb(**fields: object) -> bytes:
        return FeedbackEvent(**{"prediction_id": first_pred.key, "label": "navigate", **fields}).model_dump_json(
        ).encode()

    cases = {
        "invalid_json": bad(b'{"prediction_id": "x", "label": ', 1),
        "wrong_schema": bad(b'{"prediction_id": 7, "label": ["navigate"], "colour": "red"}', 2),
        "unknown_label": bad(fb(label="order_pizza"), 3),
        "too_large": bad(b" " * (settings.max_event_bytes + 1), 4),
        "duplicate": bad(first_fb.value, 5),
        "already_labeled": bad(fb(event_id="another-event-for-the-same-prediction"), 6),
        "unmatched": bad(fb(prediction_id="nobody-predicted-this", event_id="lonely"), 7),
    }
    no_event_id = bad(b'{"prediction_id": "x", "label": "navigate"}', 9)  # a replay would make up another
    bad_prediction = bad(b'{"prediction_id": "p", "features": {}}', 8, topic=PREDICTIONS)
    garbage = Record(FEEDBACK, 1, 0, None, b"\xff\xfe\x00", t)
    for record in [*good, *cases.values(), bad_prediction, no_event_id, garbage]:
        svc.process(record, now=record.ts)
    svc.tick(now=t + 100)  # long enough for the lonely feedback to give up waiting
    letters = svc.take_letters()
    by_reason = {letter.reason: letter for letter in letters}
    assert set(by_reason) == set(cases), sorted(by_reason)
    for reason, record in cases.items():
        letter = next(x for x in letters if x.reason == reason and x.offset == record.offset)
        assert base64.b64decode(letter.value) == record.value, "the original bytes are kept"
        assert letter.detail
    assert "order_pizza" in by_reason["unknown_label"].detail
    assert sum(svc.stats.dead_letters.values()) == len(letters) == len(cases) + 3
    assert svc.stats.dead_letters["invalid_json"] == 2 and svc.stats.dead_letters["wrong_schema"] == 3
    assert any(x.offset == no_event_id.offset and "event_id" in x.detail for x in letters)
    assert svc.take_letters() == [], "taken once"
    assert dead_letter(cases["too_large"], "too_large", "x").event_id == by_reason["too_large"].event_id, \
        "a replay makes the same dead letter id"


def test_predictions_with_unusable_features_are_dead_lettered_with_what_is_wrong(settings, trained) -> None:
    svc = service(settings, trained)
    good = json.loads(next(r for r in stream(trained, n=5) if r.topic == PREDICTIONS).value)
    indices, _, embedding = LoggedFeatures.model_validate(good["features"]).arrays()
    dim = len(embedding)

    def broken(**features: object) -> bytes:
        return json.dumps({**good, "features": {**good["features"], **features}}).encode()

    cases = {
        "Invalid base64": broken(embedding="not base64!"),
        "whole 4-byte values": broken(embedding=base64.b64encode(b"\0" * 6).decode()),
        f"must have {dim} values": broken(embedding=base64.b64encode(np.zeros(dim - 1, "<f4").tobytes()).decode()),
        "not all finite": broken(embedding=base64.b64encode(np.full(dim, np.nan, "<f4").tobytes()).decode()),
        "outside 0..": broken(indices=base64.b64encode(np.r_[-1, indices[1:]].astype("<i4")).decode()),
        "differ in length": broken(values=base64.b64encode(np.ones(len(indices) + 1, "<f4")).decode()),
        "schema_version": json.dumps({**good, "schema_version": 1}).encode(),
    }
    for offset, value in enumerate(cases.values()):
        svc.process(Record(PREDICTIONS, 0, offset, "k", value, T0), now=T0)
    letters = svc.take_letters()
    assert [letter.reason for letter in letters] == ["wrong_schema"] * len(cases)
    for expected, letter in zip(cases, letters, strict=True):
        assert expected in letter.detail, (expected, letter.detail)
    assert not svc.store.predictions, "nothing unusable is kept for joining"


def test_an_oversized_prediction_is_dead_lettered_as_too_large(settings, trained) -> None:
    svc = service(settings, trained)
    good = json.loads(next(r for r in stream(trained, n=5) if r.topic == PREDICTIONS).value)
    limit = settings.max_prediction_bytes
    assert limit > 2 * len(json.dumps(good)), "an ordinary prediction is far inside the limit"
    huge = json.dumps({**good, "text": "x" * limit}).encode()
    svc.process(Record(PREDICTIONS, 0, 0, "k", huge, T0), now=T0)
    [letter] = svc.take_letters()
    assert letter.reason == "too_large" and str(limit) in letter.detail
    assert not svc.store.predictions


def test_records_stamped_ahead_of_the_clock_are_dead_lettered_before_they_count_as_event_time(
        settings, trained) -> None:
    svc = service(settings, trained)
    good = stream(trained, n=20)
    for record in good:
        svc.process(record, now=record.ts)
    now = max(r.ts for r in good)
    reached = dict(svc.watermark.max_ts)
    skew = settings.max_clock_skew_s
    ahead = [replace(r, offset=r.offset + 1000, ts=now + skew + 1) for r in good[:2]]  # valid events
    ahead.append(Record(FEEDBACK, 1, 5000, None, b"garbage", now + 10 * 365 * 86_400))
    for record in ahead:
        svc.process(record, now=now)
    letters = svc.take_letters()
    assert [x.reason for x in letters] == ["far_future"] * len(ahead)
    assert "LOOPLINE_MAX_CLOCK_SKEW_S" in letters[0].detail
    assert svc.watermark.max_ts == reached, "event time did not move"
    assert svc.offsets[f"{FEEDBACK}:1"] == 5001, "consumed all the same"
    just_inside = replace(good[0], offset=good[0].offset + 2000, ts=now + skew)
    svc.process(just_inside, now=now)
    assert not any(x.reason == "far_future" for x in svc.take_letters())


def test_feedback_on_predictions_of_a_version_with_other_inputs_is_dead_lettered(settings, trained) -> None:
    svc = service(settings, trained)
    ours, theirs = stream(trained, n=200, seed=5, version="1+ftrl.3"), stream(trained, n=60, seed=6, version="9")
    for record in sorted(ours + [replace(r, partition=r.partition + PARTITIONS) for r in theirs],
                         key=lambda r: r.ts):
        svc.process(record, now=record.ts)
    assert svc.check_champion_now, "a prediction by a newer version makes the service look at the registry"
    svc.tick(now=0.0, flush=True)
    n_theirs = sum(r.topic == FEEDBACK for r in theirs)
    assert svc.stats.dead_letters == {"stale_model": n_theirs}
    assert svc.learner.progress.examples == sum(r.topic == FEEDBACK for r in ours)
    assert all("9" in letter.detail for letter in svc.take_letters())


def test_scheduled_registrations_fall_on_the_same_heads_in_a_replay(settings, trained) -> None:
    settings = settings.model_copy(update={"registry_interval_s": 4.0})
    records = stream(trained)

    def run(svc: FeedbackService, records: list[Record], points: list[tuple[int, float]], end: bool) -> None:
        def tick(flush: bool) -> None:
            while True:
                svc.tick(now=0.0, flush=flush)
                if svc.registration_due is None:
                    return
                points.append((svc.learner.sequence, svc.next_registration or 0.0))
                svc.registration_due = None  # what run() does: register, then go on

        for i, record in enumerate(records):
            svc.process(record, now=record.ts)
            if i % 40 == 0:
                tick(flush=False)
        if end:
            tick(flush=True)

    keeper = object()  # tick only asks whether there is one; registering is run()'s business
    steady_points: list[tuple[int, float]] = []
    steady = FeedbackService(settings, start=(head_copy(trained[1]), 1), keeper=keeper)  # type: ignore[arg-type]
    run(steady, arrival(records, 1), steady_points, end=True)
    assert len(steady_points) >= 2

    first = FeedbackService(settings, start=(head_copy(trained[1]), 1), keeper=keeper)  # type: ignore[arg-type]
    order = arrival(records, seed=3)
    points: list[tuple[int, float]] = []
    run(first, order[:len(order) // 2], points, end=False)
    first.checkpoints.save(first.checkpoint())
    resumed = FeedbackService(settings, keeper=keeper)  # type: ignore[arg-type]
    replayed = len(points)
    rest = [r for r in order if r.offset >= resumed.offsets.get(f"{r.topic}:{r.partition}", 0)]
    run(resumed, rest, points, end=True)
    assert points[:replayed] == steady_points[:replayed] and points == steady_points
    np.testing.assert_array_equal(resumed.learner.model.w_sparse, steady.learner.model.w_sparse)


class RecordingConsumer:
    """Stands in for the Kafka client: records which partitions were assigned, paused, resumed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []

    def _log(self, name: str, partitions: list) -> None:
        self.calls.append((name, sorted((tp.topic, tp.partition) for tp in partitions)))

    def assign(self, partitions: list) -> None:
        self._log("assign", partitions)

    def pause(self, partitions: list) -> None:
        self._log("pause", partitions)

    def resume(self, partitions: list) -> None:
        self._log("resume", partitions)


def test_feedback_ahead_is_paused_only_while_assigned_and_a_reassignment_resumes_it(settings, trained) -> None:
    from confluent_kafka import TopicPartition

    svc, consumer = service(settings, trained), RecordingConsumer()
    svc.watermark.restore({(PREDICTIONS, 0): 100.0, (FEEDBACK, 0): 200.0})  # a checkpoint taken on a backlog
    svc._pace(consumer, now=1000.0)
    assert consumer.calls == [], "nothing is paused before the group assigns it"
    svc._on_assign(consumer, [TopicPartition(PREDICTIONS, 0), TopicPartition(FEEDBACK, 0)])
    svc._pace(consumer, now=1000.0)
    assert consumer.calls[-1] == ("pause", [(FEEDBACK, 0)])
    svc._on_assign(consumer, [TopicPartition(PREDICTIONS, 0), TopicPartition(FEEDBACK, 0)])
    assert consumer.calls[-2:] == [("assign", [(FEEDBACK, 0), (PREDICTIONS, 0)]), ("resume", [(FEEDBACK, 0)])], \
        "the client keeps an application's pause across assignments: it must be lifted"
    assert svc.pacer.paused == set()


def test_metrics_read_while_a_window_is_learned_count_its_examples_as_pending(settings, trained) -> None:
    """/metrics is read from another thread: a service learning a window must not look idle (a bench that
    waited for idle once read the counts of a restarted service in the middle of its first window)."""
    svc = service(settings, trained)
    registry = collector_registry(svc)
    seen: list[tuple[float, float]] = []
    learn_window = svc.learner.learn_window

    def reading_meanwhile(examples, end):  # type: ignore[no-untyped-def]
        text = generate_latest(registry).decode()
        pending = next(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith('loopline_feedback_pending{kind="joined_unreleased"}'))
        seen.append((pending, float(len(examples))))
        return learn_window(examples, end)

    svc.learner.learn_window = reading_meanwhile  # type: ignore[method-assign]
    feed(svc, stream(trained, n=200), {})
    finish(svc, {})
    assert seen and all(pending >= n for pending, n in seen), seen
    assert generate_latest(registry).decode().count('loopline_feedback_pending{kind="joined_unreleased"} 0.0') == 1
