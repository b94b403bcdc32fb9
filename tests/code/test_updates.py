"""UpdateFollower decisions, event by event: deltas in order, the alias decides full versions."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.train import featurize
from services.common.events import ModelUpdate
from services.serving.model_store import LoadError, ModelStore
from services.serving.updates import UpdateFollower
from tests.conftest import SPEC, head_copy


class Registry:
    """Stands in for the MLflow alias and the loads it causes."""

    def __init__(self, champion: int | None) -> None:
        self.alias, self.loads, self.refuse, self.down = champion, [], set(), False

    def champion(self) -> int | None:
        if self.down:
            raise ConnectionError("registry down")
        return self.alias

    def load(self, version: int) -> None:
        self.loads.append(version)
        if version in self.refuse:
            raise LoadError(f"version {version} refused: sha256 mismatch")


@pytest.fixture
def store(tiny_bundle) -> ModelStore:
    store = ModelStore()
    store.load_bundle(tiny_bundle(), version=4)
    return store


def full(version: int, model: str = "m") -> bytes:
    return ModelUpdate(model=model, kind="full", version=str(version), base_version=version,
                       uri=f"models:/{model}/{version}").model_dump_json().encode()


def deltas(trained, tmp_path: Path, base: int, n: int) -> list[bytes]:
    encoder, head, texts = trained
    learner = head_copy(head)
    out = []
    for sequence in range(1, n + 1):
        learner.mark()
        chunk = texts[sequence * 16:(sequence + 1) * 16]
        learner.learn_many(featurize(chunk, encoder.encode(chunk), SPEC), np.full(len(chunk), sequence))
        out.append(ModelUpdate(model="m", kind="delta", version=f"{base}+ftrl.{sequence}", base_version=base,
                               sequence=sequence, delta=base64.b64encode(learner.delta().to_bytes()).decode())
                   .model_dump_json().encode())
    return out


def test_deltas_apply_in_order_and_everything_else_is_counted(store, trained, tmp_path) -> None:
    follower = UpdateFollower(store, "m", None, champion=None, load=lambda v: None)
    one, two, three = deltas(trained, tmp_path, base=4, n=3)
    assert [follower.handle(e) for e in (one, one, three, two, three)] == [
        "applied", "stale", "gap", "applied", "applied"]
    assert store.current.version == "4+ftrl.3"
    assert follower.handle(b'{"model": "m", "kind": "delta"') == "invalid"
    assert follower.handle(full(9, model="another")) == "other_model"
    assert follower.handle(deltas(trained, tmp_path, base=5, n=1)[0]) == "other_version"
    assert follower.outcomes["applied"] == 3 and follower.outcomes["invalid"] == 1


def test_a_delta_that_does_not_fit_the_head_is_refused(store) -> None:
    bad = ModelUpdate(model="m", kind="delta", version="4+ftrl.1", base_version=4, sequence=1,
                      delta=base64.b64encode(b"not an npz").decode())
    follower = UpdateFollower(store, "m", None, champion=None, load=lambda v: None)
    assert follower.handle(bad.model_dump_json().encode()) == "refused"
    assert store.current.version == "4" and store.failed_loads == 1


def test_the_alias_not_the_notice_decides_which_full_version_serves(store) -> None:
    registry = Registry(champion=4)
    follower = UpdateFollower(store, "m", None, champion=registry.champion, load=registry.load, alias_check_s=0)
    follower.start(serving_champion=4)
    assert follower.handle(full(2)) == "stale", "an old notice replayed from the topic moves nothing"
    registry.alias = 6
    assert follower.handle(full(6)) == "loaded" and registry.loads == [6] and follower.last_champion == 6
    registry.alias = 5  # `loopline models rollback` moved the alias back and announced v5
    assert follower.handle(full(5)) == "loaded" and registry.loads == [6, 5]


def test_a_refused_champion_is_not_fetched_again_until_announced(store) -> None:
    registry = Registry(champion=7)
    registry.refuse.add(7)
    follower = UpdateFollower(store, "m", None, champion=registry.champion, load=registry.load, alias_check_s=0)
    follower.start(serving_champion=4)
    assert follower.check_alias() == "refused"
    assert follower.check_alias() == "stale", "the periodic check does not download it again"
    assert follower.handle(full(7)) == "refused" and registry.loads == [7, 7]
    registry.down = True
    assert follower.check_alias() == "registry_unreachable"
    assert follower.last_champion == 4


def test_a_registry_that_fails_mid_load_is_retried_later_not_refused(store) -> None:
    registry = Registry(champion=8)

    def flaky(version: int) -> None:
        raise ConnectionError("connection reset while downloading")

    follower = UpdateFollower(store, "m", None, champion=registry.champion, load=flaky, alias_check_s=0)
    follower.start(serving_champion=4)
    assert follower.check_alias() == "registry_unreachable"
    follower.load = registry.load
    assert follower.check_alias() == "loaded" and follower.last_champion == 8


def test_a_held_champion_serves_from_its_catch_up_delta_or_when_its_wait_runs_out(store, trained, tmp_path,
                                                                                  tiny_bundle) -> None:
    registry, swapped = Registry(champion=4), []

    def hold(version: int) -> None:
        store.hold(store.prepare(tiny_bundle(f"v{version}"), version), wait_s=60.0)

    follower = UpdateFollower(store, "m", None, champion=registry.champion, load=hold, alias_check_s=0,
                              swapped=lambda: swapped.append(store.current.version))
    follower.start(serving_champion=4)
    registry.alias = 5
    assert follower.handle(full(5)) == "held" and store.current.version == "4"
    assert follower.handle(deltas(trained, tmp_path, base=4, n=1)[0]) == "applied", "the live head learns on"
    assert follower.handle(deltas(trained, tmp_path, base=5, n=1)[0]) == "caught_up"
    assert store.current.version == "5+ftrl.1" and swapped == ["5+ftrl.1"]

    registry.alias = 6
    assert follower.handle(full(6)) == "held"
    follower.release_expired_hold()
    assert store.current.version == "5+ftrl.1", "60 s have not passed"
    store.held = replace(store.held, wait_s=0.0)
    follower.release_expired_hold()
    assert store.current.version == "6" and follower.outcomes["hold_expired"] == 1 and swapped[-1] == "6"


class Topic:
    """A consumer over a fixed list of `model-updates` values, then nothing."""

    class Message:
        def __init__(self, value: bytes, offset: int) -> None:
            self._value, self._offset = value, offset

        def value(self) -> bytes:
            return self._value

        def error(self) -> None:
            return None

        def offset(self) -> int:
            return self._offset

    def __init__(self, values: list[bytes], follower: UpdateFollower, empty_polls_first: int = 3) -> None:
        self.values, self.follower, self.read = values, follower, 0
        self.empty_polls_first = empty_polls_first  # polls that come back before any fetch has answered
        self.answered = False
        self.replayed_early = False

    def assignment(self) -> list[str]:
        return ["model-updates[0]"]

    def get_watermark_offsets(self, partition: str, cached: bool = False) -> tuple[int, int]:
        return (0, len(self.values)) if self.answered else (-1001, -1001)

    def poll(self, timeout: float) -> Message | None:
        self.replayed_early |= self.follower.replayed.is_set() and self.read < len(self.values)
        if self.empty_polls_first > 0:
            self.empty_polls_first -= 1
            time.sleep(0.01)
            return None
        self.answered = True
        if self.read < len(self.values):
            self.read += 1
            return self.Message(self.values[self.read - 1], self.read - 1)
        time.sleep(0.01)
        return None

    def close(self) -> None:
        pass


def test_a_replica_is_caught_up_only_once_the_topic_is_read_to_its_end(store, trained, tmp_path) -> None:
    """Also when its first polls come back empty before any fetch has answered (measured on the embedded
    broker: the first poll of a topic holding 5 records returned nothing)."""
    follower = UpdateFollower(store, "m", "127.0.0.1:1", champion=None, load=lambda v: None)
    topic = Topic(deltas(trained, tmp_path, base=4, n=3), follower)
    follower._consumer = lambda: topic  # type: ignore[method-assign]
    assert not follower.caught_up
    follower.start(serving_champion=4)
    try:
        assert follower.replayed.wait(10)
        assert follower.caught_up and not topic.replayed_early
        assert store.current.version == "4+ftrl.3", "ready means the replayed deltas are in"
    finally:
        follower.stop()


def test_without_a_broker_there_is_nothing_to_replay(store) -> None:
    follower = UpdateFollower(store, "m", None, champion=None, load=lambda v: None)
    follower.start(serving_champion=4)
    assert follower.caught_up
