"""`label_flip`: part of the users report a wrong intent, consistently; the gate keeps most of it out.

The held-back examples that judge updates come from the same users, so the gate
rejects updates while the held-back set is still mostly clean, and cannot tell a
poisoned update from a good one where the attackers are most of an intent's
feedback. Measured on this stream (40% of the users flip every label from 30% of
the stream on; seeded): clean accuracy 0.885 before; after 3,000 events 0.861
with the gate (2 windows rejected, both after the onset) and 0.858 with every
update accepted. Over four sets of event ids the gated head ended 0.020-0.045 below
where it started, the ungated one 0.023-0.048: on a consistent attacker group the
gate alone is a weak defence, so this test holds the bound, not the difference.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from models.catalog import INTENTS
from models.traffic import TrafficConfig, generate
from models.train import featurize
from services.common.events import FEEDBACK, PREDICTIONS, FeedbackEvent, LoggedFeatures, PredictionEvent
from services.feedback.intake import Record
from services.feedback.learner import WindowReport
from services.feedback.service import FeedbackService
from services.feedback.settings import FeedbackSettings
from tests.conftest import SPEC, TinyModel, head_copy

T0 = 1_800_000_000.0
N_EVENTS = 3_000
ONSET = 0.3
ID_PREFIX = "flip-feedback"  # event ids decide which examples are held back


def records(trained: TinyModel) -> list[Record]:
    encoder = trained[0]
    events = generate(TrafficConfig(n_events=N_EVENTS, n_users=200, seed=4, scenario="label_flip", onset=ONSET,
                                    strength=0.4)).events
    texts = list(events["text"])
    batch = featurize(texts, encoder.encode(texts), SPEC)
    csr = batch.sparse.tocsr()
    rng, out, offsets = random.Random(4), [], {PREDICTIONS: 0, FEEDBACK: 0}

    def record(topic: str, key: str, value: bytes, ts: float) -> Record:
        offsets[topic] += 1
        return Record(topic, 0, offsets[topic] - 1, key, value, ts)

    for i, row in enumerate(events.itertuples()):
        pid, ts = f"flip-{i}", T0 + i * 0.01
        rows = slice(csr.indptr[i], csr.indptr[i + 1])
        prediction = PredictionEvent(
            prediction_id=pid, model_version="1", user_id=row.user_id, text=row.text, intent=row.true_label,
            features=LoggedFeatures.of(csr.indices[rows], csr.data[rows], batch.dense[i]),
            probabilities={intent: 1 / len(INTENTS) for intent in INTENTS})
        out.append(record(PREDICTIONS, pid, prediction.model_dump_json().encode(), ts))
        feedback = FeedbackEvent(event_id=f"{ID_PREFIX}-{i}", prediction_id=pid, label=row.label)
        out.append(record(FEEDBACK, pid, feedback.model_dump_json().encode(), ts + rng.uniform(0.01, 0.2)))
    return sorted(out, key=lambda r: (r.ts, r.topic))


def clean_accuracy(svc: FeedbackService, encoder, clean) -> float:
    texts = list(clean["text"])
    proba = svc.learner.live.predict_proba_many(featurize(texts, encoder.encode(texts), SPEC))
    return float((np.array(INTENTS)[proba.argmax(axis=1)] == clean["true_label"].to_numpy()).mean())


def run(trained: TinyModel, state: Path, gate_margin: float
        ) -> tuple[float, float, FeedbackService, list[WindowReport]]:
    clean = generate(TrafficConfig(n_events=800, n_users=200, seed=9)).events  # no attackers, same kind of users
    settings = FeedbackSettings(state_dir=state, update_interval_s=1.0, min_holdout=30, gate_margin=gate_margin)
    reports: list[WindowReport] = []
    svc = FeedbackService(settings, start=(head_copy(trained[1]), 1), on_window=reports.append)
    before = clean_accuracy(svc, trained[0], clean)
    for i, record in enumerate(records(trained)):
        svc.process(record, now=record.ts)
        if i % 200 == 0:
            svc.tick(now=record.ts)
    svc.tick(now=0.0, flush=True)
    return before, clean_accuracy(svc, trained[0], clean), svc, reports


def test_the_gate_rejects_poisoned_updates_and_keeps_clean_accuracy_within_bound(
        trained: TinyModel, tmp_path: Path) -> None:
    before, gated, svc, reports = run(trained, tmp_path / "gated", gate_margin=0.0)
    print(f"clean accuracy {before:.3f} -> {gated:.3f}; windows {dict(svc.stats.windows)}")
    rejected = [r for r in reports if r.decision == "rejected"]
    assert rejected, "poisoned updates were rejected"
    assert min(r.window_end for r in rejected) > T0 + ONSET * N_EVENTS * 0.01, "none before the onset"
    assert all(r.candidate_accuracy < r.live_accuracy for r in rejected), "each one with the numbers"
    assert gated >= before - 0.05, "the live head's clean accuracy stays within 0.05 of where it started"
