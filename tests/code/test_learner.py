"""OnlineLearner: progressive validation, held-back examples, a gate that publishes or undoes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.ftrl import FTRLProximal
from models.serving_head import ServingHead
from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import featurize
from services.feedback.join import Joined, StoredFeedback, StoredPrediction
from services.feedback.learner import LearnSettings, OnlineLearner
from tests.conftest import SPEC, TinyModel, head_copy


def examples(trained: TinyModel, n: int, seed: int, flip: bool = False) -> list[Joined]:
    """Joined examples as the service would build them: logged features + the label users gave."""
    encoder = trained[0]
    events = generate(TrafficConfig(n_events=n, n_users=40, seed=seed)).events
    texts = list(events["text"])
    batch = featurize(texts, encoder.encode(texts), SPEC)
    csr = batch.sparse.tocsr()
    out = []
    for i, row in enumerate(events.itertuples()):
        # a fixed derangement onto unrelated intents (sorted neighbours are often alike: set_alarm, set_reminder)
        label = INTENTS[(INTENTS.index(row.true_label) + 7) % len(INTENTS)] if flip else row.label
        prediction = StoredPrediction(
            f"p{seed}-{i}", float(i), "1", None, row.text, "x", 0.5,
            csr.indices[csr.indptr[i]:csr.indptr[i + 1]].astype(np.int64),
            csr.data[csr.indptr[i]:csr.indptr[i + 1]].astype(np.float32), batch.dense[i].astype(np.float32))
        out.append(Joined(prediction, StoredFeedback(f"f{seed}-{i}", prediction.prediction_id, label, float(i) + 1,
                                                     0, i, None, b"{}")))
    return out


@pytest.fixture
def learner(trained: TinyModel, tmp_path: Path) -> OnlineLearner:
    return OnlineLearner(head_copy(trained[1]), base_version=1,
                         settings=LearnSettings(holdout_share=0.2, min_holdout=40))


def test_clean_windows_are_published_and_deltas_rebuild_the_live_head(learner: OnlineLearner,
                                                                      trained: TinyModel) -> None:
    serving = ServingHead.from_model(learner.model)
    stream = examples(trained, 600, seed=11)
    reports = [learner.learn_window(stream[i:i + 150], window_end=i + 150.0) for i in range(0, 600, 150)]
    # The first 40 examples fill the held-back set (min_holdout), the rest of the window is learned and judged.
    assert reports[0].held_back >= 40 and reports[0].learned == 150 - reports[0].held_back
    assert reports[0].decision in ("published", "rejected") and reports[0].live_accuracy is not None
    assert learner.learn_window(stream[:0], window_end=700.0).decision == "empty"
    published = [r for r in reports if r.decision == "published"]
    assert published and [r.sequence for r in published] == list(range(1, len(published) + 1))
    for report in published:
        serving = serving.apply(report.delta)
    np.testing.assert_array_equal(serving.w_sparse, learner.live.w_sparse)
    np.testing.assert_array_equal(serving.w_dense, learner.model.w_dense)
    assert learner.progress.examples == 600 and sum(r.examples for r in reports) == 600
    assert sum(r.held_back for r in reports) + sum(r.learned for r in reports) == 600
    assert 0.1 < sum(r.held_back for r in reports) / 600 < 0.3
    assert sum(learner.progress.per_intent.values()) == 600


def test_a_label_flip_flood_is_rejected_and_leaves_no_trace(learner: OnlineLearner, trained: TinyModel) -> None:
    # Enough clean windows that the flood's own held-back share (a fifth of it) is a minority of the set
    # that judges it: with 400, the flood's 40 were a third of the set and judged on each other.
    clean = examples(trained, 800, seed=12)
    for i in range(0, 800, 100):
        learner.learn_window(clean[i:i + 100], window_end=i + 100.0)
    before = FTRLProximal.from_bytes(learner.model.to_bytes())
    sequence = learner.sequence

    report = learner.learn_window(examples(trained, 200, seed=13, flip=True), window_end=1000.0)
    assert report.decision == "rejected" and report.candidate_accuracy < report.live_accuracy
    assert "rejected" in report.describe() and f"{report.live_accuracy:.4f}" in report.describe()
    assert learner.sequence == sequence
    for name in ("z_sparse", "n_sparse", "w_sparse", "z_dense", "n_dense", "w_dense"):
        np.testing.assert_array_equal(getattr(learner.model, name), getattr(before, name))


def test_held_back_examples_are_chosen_by_event_id_alone(learner: OnlineLearner) -> None:
    ids = [f"event-{i}" for i in range(2000)]
    first = [learner.held_back(i) for i in ids]
    assert first == [learner.held_back(i) for i in ids] and 0.17 < np.mean(first) < 0.23
    assert learner.learn_window([], window_end=1.0).decision == "empty"


def test_catch_up_learns_what_an_earlier_head_learned_through_the_gate(learner: OnlineLearner,
                                                                       trained: TinyModel) -> None:
    stream = examples(trained, 600, seed=14)
    for i in range(0, 600, 150):
        learner.learn_window(stream[i:i + 150], window_end=i + 150.0)
    learned = list(learner.recent)
    assert learned and all(not learner.held_back(j.feedback.event_id) for j in learned[40:])

    # A retrained head on the same inputs, promoted while this one learned on: it keeps the held-back set.
    fresh = OnlineLearner(head_copy(trained[1]), base_version=2, settings=learner.settings)
    fresh.holdout.extend(learner.holdout)
    progress = fresh.progress.examples
    report = fresh.catch_up(learned[-200:], window_end=700.0)
    assert report.decision == "published" and report.learned == 200 and report.sequence == 1
    assert fresh.progress.examples == progress  # progressive validation counted these once already
    assert list(fresh.recent) == learned[-200:]
    serving = ServingHead.from_model(trained[1]).apply(report.delta)
    np.testing.assert_array_equal(serving.w_sparse, fresh.live.w_sparse)

    # Labels the new head lacks are skipped; with no held-back evidence nothing is learned unjudged.
    assert OnlineLearner(head_copy(trained[1]), 3, learner.settings).catch_up(learned, 700.0).decision == "no_evidence"
    flipped = examples(trained, 300, seed=15, flip=True)
    assert fresh.catch_up(flipped, window_end=800.0).decision == "rejected"


def test_windows_replay_earlier_examples_and_a_harmful_replay_is_undone_alone(trained: TinyModel) -> None:
    def learner(replay_factor: float) -> OnlineLearner:
        return OnlineLearner(head_copy(trained[1]), base_version=1, settings=LearnSettings(
            holdout_share=0.2, min_holdout=40, replay_factor=replay_factor))

    stream = examples(trained, 600, seed=16)
    plain, rehearsing = learner(0.0), learner(2.0)
    for i in range(0, 600, 150):
        a = plain.learn_window(stream[i:i + 150], window_end=i + 150.0)
        b = rehearsing.learn_window(stream[i:i + 150], window_end=i + 150.0)
        assert a.decision == b.decision == "published"
    assert len(plain.replay) == len(rehearsing.replay) > 0  # both keep a pool; only one replays from it
    assert not np.array_equal(plain.model.w_dense, rehearsing.model.w_dense)

    # A pool of wrong labels (as if the labels had changed meaning): the window is learned and published,
    # the replay on top is judged worse and undone, leaving exactly the window's own learning.
    poisoned, alone = learner(2.0), learner(0.0)
    for one in (poisoned, alone):
        one.holdout.extend(stream[:200])
    poisoned.replay.add(examples(trained, 300, seed=17, flip=True))
    window = stream[200:350]
    a, b = poisoned.learn_window(window, 400.0), alone.learn_window(window, 400.0)
    assert a.decision == b.decision == "published"
    for name in ("z_sparse", "n_sparse", "w_sparse", "z_dense", "n_dense", "w_dense"):
        np.testing.assert_array_equal(getattr(poisoned.model, name), getattr(alone.model, name))
    np.testing.assert_array_equal(poisoned.live.w_sparse, alone.live.w_sparse)
