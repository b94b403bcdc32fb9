"""Registrations handed to the registry worker: the loop learns and publishes on while one is in hand, a
promotion that lands later brings serving to the live head (no update lost, none applied twice), failed
registrations are retried until the registry answers, and a checkpoint taken meanwhile resumes them.

The registry is replaced by a keeper that registers what it is given as v2 and makes it the champion,
when a test lets it (`gate`) and after `failures` failed tries."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.ftrl import FTRLProximal, HeadDelta
from models.serving_head import ServingHead
from services.common.events import MODEL_UPDATES, ModelUpdate
from services.common.registry import Version
from services.feedback.history import decode
from services.feedback.learner import OnlineLearner
from services.feedback.registrar import CARRY_LIMIT, HeadSnapshot, Registering, merged
from services.feedback.service import FeedbackService
from services.feedback.settings import FeedbackSettings
from services.feedback.versions import HEAD_TAG, Registered
from tests.code.test_feedback_service import arrival, stream
from tests.conftest import TinyModel, head_copy


class Keeper:
    """What FeedbackService needs of `VersionKeeper`, with a registry that is slow or down on demand."""

    def __init__(self, failures: int = 0) -> None:
        self.gate = threading.Event()
        self.failures = failures
        self.registered: list[str] = []
        self.heads: dict[int, ServingHead] = {}  # what serving would load for each version made here
        self._champion = Version(1, ("champion",), {"source": "test"}, None, 0, "")

    def champion(self) -> Version:
        return self._champion

    def register(self, learner: OnlineLearner, offsets: dict[str, int], trigger: str) -> Registered:
        assert self.gate.wait(30), "the test never let the registry answer"
        if self.failures:
            self.failures -= 1
            raise ConnectionError("registry unreachable")
        key = f"{learner.base_version}+ftrl.{learner.sequence}"
        self.registered.append(key)
        version = 1 + len(self.registered)
        self.heads[version] = ServingHead.from_model(learner.model)
        tags = {"source": "online", "parent_version": str(learner.base_version),
                "online.sequence": str(learner.sequence), HEAD_TAG: key}
        self._champion = Version(version, ("champion",), tags, None, 0, "")
        return Registered(version, True, f"online head {key} not worse ({trigger})", False)


class Producer:
    """Keeps what the service sends to `model-updates`."""

    def __init__(self) -> None:
        self.updates: list[ModelUpdate] = []

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        if topic == MODEL_UPDATES:
            self.updates.append(ModelUpdate.model_validate_json(value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


@pytest.fixture
def settings(tmp_path: Path) -> FeedbackSettings:
    return FeedbackSettings(state_dir=tmp_path, update_interval_s=1.0, lateness_s=0.5, min_holdout=20,
                            holdout_share=0.15, feedback_wait_s=10.0, registry_interval_s=4.0,
                            registry_retry_first_s=0.01, registry_retry_max_s=0.05)


def started(settings: FeedbackSettings, keeper: Keeper, trained: TinyModel | None = None) -> FeedbackService:
    start = (head_copy(trained[1]), 1) if trained is not None else None
    svc = FeedbackService(settings, start=start, keeper=keeper)  # type: ignore[arg-type]
    svc.start_registrar()
    return svc


def feed_until(svc: FeedbackService, producer: Producer, records: list, stop: Any = lambda s: False) -> list:
    """Process records (a pass every 40), until `stop(svc)` holds after a pass; returns the records left."""
    for i, record in enumerate(records):
        svc.process(record, now=record.ts)
        if i % 40 == 0:
            svc.advance(producer, now=record.ts)
            if stop(svc):
                return records[i + 1:]
    return []


def settle(svc: FeedbackService, producer: Producer) -> None:
    """Wait for the registry worker's reports and apply them."""
    assert svc.registrar is not None
    deadline = time.monotonic() + 30
    while svc.registering is not None and time.monotonic() < deadline:
        time.sleep(0.01)
        svc.apply_registry_results(producer)
    assert svc.registering is None, "the registration never finished"


def served(producer: Producer, heads: dict[int, ServingHead]) -> tuple[str, ServingHead]:
    """What a serving replica that follows `model-updates` from v1 ends with; a full version's head is
    taken from `heads` (what the registry would hand it)."""
    version, sequence, head = 1, 0, heads[1]
    for update in producer.updates:
        if update.kind == "full":
            version, sequence, head = update.base_version, 0, heads[update.base_version]
        elif update.base_version == version and update.sequence == sequence + 1:
            head, sequence = head.apply(decode(update)), update.sequence
        elif update.base_version == version:
            assert update.sequence <= sequence, f"gap before {update.version}"
    return f"{version}+ftrl.{sequence}", head


def deltas_on(producer: Producer, base: int) -> dict[int, HeadDelta]:
    return {u.sequence: decode(u) for u in producer.updates if u.kind == "delta" and u.base_version == base}


def test_the_loop_learns_on_while_registering_and_a_late_promotion_brings_serving_to_the_live_head(
        settings, trained) -> None:
    keeper, producer = Keeper(), Producer()
    svc = started(settings, keeper, trained)
    records = arrival(stream(trained, n=1200), seed=1)
    rest = feed_until(svc, producer, records, lambda s: s.registering is not None)
    snapshot = svc.registering.snapshot  # type: ignore[union-attr]
    assert snapshot.base_version == 1 and snapshot.sequence > 0

    handed_at = svc.learner.sequence
    began = time.monotonic()
    rest = feed_until(svc, producer, rest, lambda s: s.learner.sequence >= handed_at + 3)
    assert svc.learner.sequence >= handed_at + 3, "deltas kept flowing while the registry did not answer"
    assert time.monotonic() - began < 20 and svc.registering is not None and not keeper.registered

    keeper.gate.set()
    settle(svc, producer)
    live_sequence_on_1 = max(deltas_on(producer, 1))
    carried = live_sequence_on_1 - snapshot.sequence
    assert keeper.registered == [snapshot.key]
    assert (svc.learner.base_version, svc.learner.sequence) == (2, carried)
    on_1, on_2 = deltas_on(producer, 1), deltas_on(producer, 2)
    assert sorted(on_2) == list(range(1, carried + 1)), "v2+ftrl.i is v1+ftrl.(k+i), numbered on v2"
    for i, delta in on_2.items():
        assert np.array_equal(delta.rows, on_1[snapshot.sequence + i].rows)
        assert np.array_equal(delta.sparse_weights, on_1[snapshot.sequence + i].sparse_weights)
    assert svc.stats.registrations == {"promoted": 1, "rebased": 1}

    # Serving: v1's deltas, then v2 (the registered head), then the carried deltas: the live head, exactly.
    heads = {1: ServingHead.from_model(head_copy(trained[1])), **keeper.heads}
    np.testing.assert_array_equal(heads[2].w_sparse, FTRLProximal.from_bytes(snapshot.head).w_sparse)
    version, head = served(producer, heads)
    assert version == f"2+ftrl.{carried}"
    np.testing.assert_array_equal(head.w_sparse, svc.learner.live.w_sparse)
    np.testing.assert_array_equal(head.w_dense, svc.learner.live.w_dense)

    feed_until(svc, producer, rest)  # registrations that fell due meanwhile: owed, then made on v2, v3...
    while svc.store.first_key_time() is not None or svc.registration_due is not None:
        svc.advance(producer, now=0.0, flush=True)
        settle(svc, producer)
    assert len(keeper.registered) >= 2 and keeper.registered[1].startswith("2+ftrl.")
    version, head = served(producer, {1: heads[1], **keeper.heads})
    assert version == f"{svc.learner.base_version}+ftrl.{svc.learner.sequence}"
    np.testing.assert_array_equal(head.w_sparse, svc.learner.live.w_sparse)
    assert svc.learner.progress.examples == sum(r.topic == "feedback" for r in records), \
        "every feedback event learned once"
    svc.registrar.stop()  # type: ignore[union-attr]


def test_a_failed_registration_is_retried_until_the_registry_answers(settings, trained) -> None:
    keeper, producer = Keeper(failures=3), Producer()
    keeper.gate.set()
    svc = started(settings, keeper, trained)
    records = arrival(stream(trained, n=600), seed=2)
    rest = feed_until(svc, producer, records, lambda s: s.learner.sequence > 0)
    answer: Future[dict[str, Any]] = Future()
    svc.promote_request(answer)  # `loopline promote`: answered after the first try, with what happened
    assert svc.registering is not None
    deadline = time.monotonic() + 30
    while not answer.done() and time.monotonic() < deadline:
        time.sleep(0.01)
        svc.apply_registry_results(producer)
    assert answer.result(0)["status"] == "failed" and "registry unreachable" in answer.result(0)["detail"]
    settle(svc, producer)
    assert svc.stats.registrations["failed"] == 3 and svc.stats.registrations["retried"] == 3
    assert svc.stats.registrations["promoted"] == 1 and svc.learner.base_version == 2
    assert rest, "the stream was not used up before the registration was handed over"
    svc.registrar.stop()  # type: ignore[union-attr]


def test_a_checkpoint_taken_while_registering_resumes_it_with_the_deltas_since(settings, trained) -> None:
    keeper, producer = Keeper(), Producer()
    svc = started(settings, keeper, trained)
    records = arrival(stream(trained, n=1200), seed=3)
    rest = feed_until(svc, producer, records, lambda s: s.registering is not None)
    snapshot = svc.registering.snapshot  # type: ignore[union-attr]
    handed_at = svc.learner.sequence
    rest = feed_until(svc, producer, rest, lambda s: s.learner.sequence >= handed_at + 2)
    svc.checkpoints.save(svc.checkpoint())  # then the process dies: the registry never answered it
    svc.registrar.stop(timeout=0.1)  # type: ignore[union-attr]
    carried = [c.delta for c in svc.registering.carried]  # type: ignore[union-attr]

    keeper_again = Keeper()
    again = started(settings, keeper_again)
    assert again.registering is not None and again.registering.snapshot.key == snapshot.key
    assert again.registering.snapshot.head == snapshot.head
    assert [(d.rows.tolist(), d.sparse_weights.tolist()) for d in (c.delta for c in again.registering.carried)] \
        == [(d.rows.tolist(), d.sparse_weights.tolist()) for d in carried]
    keeper_again.gate.set()
    resumed = Producer()
    settle(again, resumed)
    assert keeper_again.registered == [snapshot.key], "resumed, not dropped, and registered once"
    assert (again.learner.base_version, again.learner.sequence) == (2, len(carried))
    assert [u.sequence for u in resumed.updates if u.kind == "delta"] == list(range(1, len(carried) + 1))
    again.registrar.stop()  # type: ignore[union-attr]


def test_carried_deltas_merge_into_one_with_the_same_effect(trained) -> None:
    rng = np.random.default_rng(0)
    head = ServingHead.from_model(head_copy(trained[1]))
    classes, dim = head.classes, head.w_sparse.shape[0]
    deltas = [HeadDelta(classes, np.sort(rng.choice(dim, 30, replace=False)).astype(np.int64),
                        rng.normal(size=(30, len(classes))), None if i % 3 else rng.normal(size=head.w_dense.shape))
              for i in range(10)]
    one_by_one = head
    for delta in deltas:
        one_by_one = one_by_one.apply(delta)
    at_once = head.apply(merged(deltas))
    np.testing.assert_array_equal(at_once.w_sparse, one_by_one.w_sparse)
    np.testing.assert_array_equal(at_once.w_dense, one_by_one.w_dense)

    registering = Registering(HeadSnapshot(1, 3, b"", (), {}, {}, "schedule"))
    for i in range(CARRY_LIMIT + 1):
        registering.carry(float(i), deltas[i % len(deltas)])
    assert len(registering.carried) == 1 and registering.carried[0].window_end == CARRY_LIMIT


def test_a_champion_moved_by_a_retrain_drops_the_registration_in_hand(settings, trained) -> None:
    """A registration that can never land (here: every try fails) must not outlive the base it was built on:
    once the loop learns on from another champion it is dropped, its waiter told, the worker stops trying."""
    from services.feedback.registrar import ChampionSeen

    keeper, producer = Keeper(failures=10**9), Producer()
    keeper.gate.set()
    svc = started(settings, keeper, trained)
    records = arrival(stream(trained, n=600), seed=4)
    feed_until(svc, producer, records, lambda s: s.learner.sequence > 0)
    answer: Future[dict[str, Any]] = Future()
    svc.promote_request(answer)
    assert svc.registering is not None
    retrained = Version(5, ("champion",), {"source": "train"}, None, 0, "")
    svc._apply_champion(ChampionSeen(svc.learner.base_version, retrained, head=head_copy(trained[1])), producer)

    assert svc.registering is None and svc.learner.base_version == 5
    assert answer.result(0)["status"] == "dropped" and "moved to v5" in answer.result(0)["detail"]
    assert svc.stats.registrations["dropped"] == 1
    time.sleep(0.2)  # the worker takes the abandon job between tries
    tries = svc.stats.registrations["failed"]
    svc.apply_registry_results(producer)
    failed_then = svc.stats.registrations["failed"]
    time.sleep(0.3)  # retries come every 10-50 ms here: none may follow
    svc.apply_registry_results(producer)
    assert svc.stats.registrations["failed"] == failed_then, (tries, failed_then)
    svc.registrar.stop()  # type: ignore[union-attr]
