"""A retrain made champion while the service learned on: what the old head learned after the retrain's newest
collected feedback is learned again on the new head and published as its first delta."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.events import MODEL_UPDATES, ModelUpdate
from services.common.registry import COLLECTED_THROUGH_TAG, Version
from services.feedback.history import decode
from services.feedback.registrar import ChampionSeen
from services.feedback.settings import FeedbackSettings
from tests.code.test_feedback_service import T0, feed, finish, service, stream
from tests.conftest import TinyModel, head_copy


@pytest.fixture
def settings(tmp_path: Path) -> FeedbackSettings:
    return FeedbackSettings(state_dir=tmp_path, update_interval_s=1.0, lateness_s=0.5, min_holdout=20,
                            holdout_share=0.15, feedback_wait_s=10.0)


class Sent:
    """Stands in for the Kafka producer: keeps what was produced."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.records.append((topic, value))

    def poll(self, timeout: float) -> int:
        return 0

    def updates(self) -> list[ModelUpdate]:
        return [ModelUpdate.model_validate_json(v) for t, v in self.records if t == MODEL_UPDATES]


def retrain_promoted(svc: Any, trained: TinyModel, tags: dict[str, str]) -> Sent:
    champion = Version(2, ("champion",), {"source": "train", **tags}, None, 0, "")
    sent = Sent()
    svc._apply_champion(ChampionSeen(1, champion, head=head_copy(trained[1]), same_inputs=True), sent)
    return sent


def test_examples_learned_after_the_retrains_data_are_learned_again_on_it(settings: FeedbackSettings,
                                                                          trained: TinyModel) -> None:
    svc = service(settings, trained)
    feed(svc, stream(trained, n=600, seed=31), {})
    finish(svc, {})
    learned = list(svc.learner.recent)
    through = T0 + 6.0  # the retrain read feedback up to here
    missed = [j for j in learned if j.feedback.ts > through]
    assert learned and 0 < len(missed) < len(learned)
    progress = svc.learner.progress.examples

    sent = retrain_promoted(svc, trained, {COLLECTED_THROUGH_TAG: f"{through:.3f}"})
    assert svc.learner.base_version == 2 and svc.stats.registrations["catch_up_published"] == 1
    [update] = sent.updates()
    assert (update.base_version, update.sequence, update.kind) == (2, 1, "delta")
    assert list(svc.learner.recent) == missed, "only what the retrain did not read, in order"
    assert decode(update).rows.size > 0
    assert svc.learner.progress.examples == progress, "progressive validation counted these examples once already"


def test_a_retrain_that_read_no_collected_examples_gets_no_catch_up(settings: FeedbackSettings,
                                                                    trained: TinyModel) -> None:
    svc = service(settings, trained)
    feed(svc, stream(trained, n=300, seed=32), {})
    finish(svc, {})
    sent = retrain_promoted(svc, trained, {COLLECTED_THROUGH_TAG: ""})  # trained with --no-collected
    assert svc.learner.base_version == 2 and not sent.updates() and not svc.learner.recent
    assert not any(k.startswith("catch_up") for k in svc.stats.registrations)


def test_a_retrain_that_read_everything_gets_an_update_that_changes_nothing(settings: FeedbackSettings,
                                                                          trained: TinyModel) -> None:
    """Serving holds the retrain until its first update: with nothing to catch up, that update still comes."""
    svc = service(settings, trained)
    feed(svc, stream(trained, n=300, seed=33), {})
    finish(svc, {})
    newest = max(j.feedback.ts for j in svc.learner.recent)
    sent = retrain_promoted(svc, trained, {COLLECTED_THROUGH_TAG: f"{newest:.3f}"})
    assert svc.stats.registrations["catch_up_empty"] == 1
    [update] = sent.updates()
    assert (update.base_version, update.sequence) == (2, 1) and svc.learner.sequence == 1
    delta = decode(update)
    assert delta.rows.size == 0 and delta.dense_weights is None
    before = svc.learner.live.predict_proba_many(svc.learner.batch(list(svc.learner.holdout)))
    assert (svc.learner.live.apply(delta).predict_proba_many(svc.learner.batch(list(svc.learner.holdout)))
            == before).all(), "the update changes no weight"
