"""`label_flip`: part of the users report a wrong intent, consistently.

Two defences, tested apart and together. Per-user trust (services/feedback/trust.py)
withholds the feedback of users who disagree with the served intent where the model
was sure, more than the model's own confidence makes likely; the gate rejects updates
that lose on held-back feedback. Measured on this stream (200 users, 40% of them flip
every label from 30% of 3,000 events on; seeded; served intents and probabilities are
the tiny head's):

| defence                      | poisoned let in | honest withheld | clean accuracy after | worst head |
| ---------------------------- | --------------- | --------------- | -------------------- | ---------- |
| gate alone                   | 655 of 655      | 0               | 0.861                | 0.861      |
| trust (by confidence) + gate | 255 of 655      | 0               | 0.948                | 0.885      |
| trust (one population rate)  | 200 of 655      | 2               | 0.949                | 0.885      |

Clean accuracy was 0.885 before the stream.

A user's first flipped labels look like ordinary corrections, so some poisoned
examples are learned before the verdict; the honest corrections learned next to them
outweigh them. Honest feedback withheld on stable traffic: 0 of 3,000 (9 when every
user was held to one population rate); under `new_phrasing` drift: 0 (38). A user's
repeat of a correction they already sent is counted once (`repeated_correction`):
3 events in the flood, 1 on stable traffic, 3 under drift.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import featurize
from services.common.events import (
    FEEDBACK,
    PREDICTIONS,
    WITHHELD_REASONS,
    FeedbackEvent,
    LoggedFeatures,
    PredictionEvent,
)
from services.feedback.intake import Record
from services.feedback.learner import WindowReport
from services.feedback.service import FeedbackService
from services.feedback.settings import FeedbackSettings
from tests.conftest import SPEC, TinyModel, head_copy

T0 = 1_800_000_000.0
N_EVENTS = 3_000
ONSET = 0.3
DEFAULT_ALPHA = FeedbackSettings.model_fields["trust_alpha"].default
ID_PREFIX = "flip-feedback"  # event ids decide which examples are held back


def traffic(scenario: str = "label_flip", strength: float = 0.4) -> pd.DataFrame:
    return generate(TrafficConfig(n_events=N_EVENTS, n_users=200, seed=4, scenario=scenario, onset=ONSET,
                                  strength=strength)).events


def records(trained: TinyModel, events: pd.DataFrame) -> list[Record]:
    encoder = trained[0]
    texts = list(events["text"])
    batch = featurize(texts, encoder.encode(texts), SPEC)
    proba = trained[1].predict_proba_many(batch)
    served = np.array(INTENTS)[proba.argmax(axis=1)]  # what users were answered, and how sure the model was
    csr = batch.sparse.tocsr()
    rng, out, offsets = random.Random(4), [], {PREDICTIONS: 0, FEEDBACK: 0}

    def record(topic: str, key: str, value: bytes, ts: float) -> Record:
        offsets[topic] += 1
        return Record(topic, 0, offsets[topic] - 1, key, value, ts)

    for i, row in enumerate(events.itertuples()):
        pid, ts = f"flip-{i}", T0 + i * 0.01
        rows = slice(csr.indptr[i], csr.indptr[i + 1])
        prediction = PredictionEvent(
            prediction_id=pid, model_version="1", user_id=row.user_id, text=row.text, intent=served[i],
            features=LoggedFeatures.of(csr.indices[rows], csr.data[rows], batch.dense[i]),
            probabilities=dict(zip(INTENTS, map(float, proba[i]), strict=True)))
        out.append(record(PREDICTIONS, pid, prediction.model_dump_json().encode(), ts))
        feedback = FeedbackEvent(event_id=f"{ID_PREFIX}-{i}", prediction_id=pid, label=row.label)
        out.append(record(FEEDBACK, pid, feedback.model_dump_json().encode(), ts + rng.uniform(0.01, 0.2)))
    return sorted(out, key=lambda r: (r.ts, r.topic))


class CleanTraffic:
    """Traffic without attackers from the same kind of users, featurized once."""

    def __init__(self, trained: TinyModel) -> None:
        clean = generate(TrafficConfig(n_events=800, n_users=200, seed=9)).events
        texts = list(clean["text"])
        self.batch = featurize(texts, trained[0].encode(texts), SPEC)
        self.truth = clean["true_label"].to_numpy()

    def accuracy(self, svc: FeedbackService) -> float:
        """The live head's: what serving has."""
        proba = svc.learner.live.predict_proba_many(self.batch)
        return float((np.array(INTENTS)[proba.argmax(axis=1)] == self.truth).mean())


class Run:
    """One pass of the stream through a feedback service, with the clean accuracy of the live head after
    every tick and the events trust withheld."""

    def __init__(self, trained: TinyModel, state: Path, events: pd.DataFrame, trust_alpha: float) -> None:
        clean = CleanTraffic(trained)
        settings = FeedbackSettings(state_dir=state, update_interval_s=1.0, min_holdout=30, gate_margin=0.0,
                                    trust_alpha=trust_alpha)
        self.reports: list[WindowReport] = []
        self.svc = FeedbackService(settings, start=(head_copy(trained[1]), 1), on_window=self.reports.append)
        self.before = clean.accuracy(self.svc)
        self.heads: list[float] = []
        for i, record in enumerate(records(trained, events)):
            self.svc.process(record, now=record.ts)
            if i % 200 == 0 and self.svc.tick(now=record.ts):
                self.heads.append(clean.accuracy(self.svc))
        self.svc.tick(now=0.0, flush=True)
        self.after = clean.accuracy(self.svc)
        self.heads.append(self.after)
        letters = self.svc.take_letters()
        assert {x.reason for x in letters} <= set(WITHHELD_REASONS), "nothing else is wrong with this stream"
        untrusted = [x for x in letters if x.reason == "untrusted_user"]
        self.withheld = [json.loads(base64.b64decode(x.value))["event_id"] for x in untrusted]
        self.details = [x.detail for x in untrusted]
        # A user's correction sent again: counted once (its first copy was judged like any other).
        self.repeated = [json.loads(base64.b64decode(x.value))["event_id"] for x in letters if x not in untrusted]
        poisoned = dict(zip([f"{ID_PREFIX}-{i}" for i in range(len(events))], events["poisoned"], strict=True))
        self.poisoned = int(events["poisoned"].sum())
        self.poisoned_withheld = sum(bool(poisoned[e]) for e in self.withheld)
        self.clean_withheld = len(self.withheld) - self.poisoned_withheld

    def describe(self) -> str:
        return (f"clean accuracy {self.before:.3f} -> {self.after:.3f} (worst head {min(self.heads):.3f}); "
                f"withheld {self.poisoned_withheld} of {self.poisoned} poisoned, {self.clean_withheld} clean; "
                f"repeated corrections counted once {len(self.repeated)}; "
                f"windows {dict(self.svc.stats.windows)}")


@pytest.fixture(scope="module")
def flood() -> pd.DataFrame:
    return traffic()


def test_trust_withholds_most_poisoned_feedback_and_no_head_loses_clean_accuracy(
        trained: TinyModel, flood: pd.DataFrame, tmp_path: Path) -> None:
    run = Run(trained, tmp_path, flood, trust_alpha=DEFAULT_ALPHA)
    print(run.describe())
    assert run.poisoned_withheld >= 0.5 * run.poisoned, run.describe()
    assert run.clean_withheld <= 0.01 * (N_EVENTS - run.poisoned), run.describe()
    assert min(run.heads) >= run.before - 0.01, "no head the service published is less accurate on clean traffic"
    assert run.after > run.before + 0.03, "the clean corrections are still learned"
    assert all("disagreed with the served intent" in d for d in run.details), "each withheld event says why"


def test_the_gate_alone_rejects_poisoned_updates_and_keeps_clean_accuracy_within_bound(
        trained: TinyModel, flood: pd.DataFrame, tmp_path: Path) -> None:
    run = Run(trained, tmp_path, flood, trust_alpha=0.0)
    print(run.describe())
    assert not run.withheld
    onset = T0 + ONSET * N_EVENTS * 0.01
    judged = [r for r in run.reports if r.decision in ("published", "rejected")]
    before = [r.decision == "rejected" for r in judged if r.window_end <= onset]
    after = [r.decision == "rejected" for r in judged if r.window_end > onset]
    assert sum(after) >= 2, "poisoned updates were rejected"
    # The gate is a one-sided test at z = 1.64: a clean window that happens to look worse on a few dozen
    # held-back examples is turned away now and then (5% of neutral updates by design), not as a rule.
    assert sum(before) <= max(1, 0.1 * len(before)), "clean updates are published"
    assert all(r.candidate_accuracy < r.live_accuracy for r in judged if r.decision == "rejected"), \
        "each one with the numbers"
    assert run.after >= run.before - 0.05, "the live head's clean accuracy stays within 0.05 of where it started"


@pytest.mark.parametrize(("scenario", "strength", "most_withheld"),
                         [("stable", 0.4, 0.01), ("new_phrasing", 0.6, 0.02)])
def test_trust_withholds_little_honest_feedback_even_under_drift(
        trained: TinyModel, tmp_path: Path, scenario: str, strength: float, most_withheld: float) -> None:
    run = Run(trained, tmp_path, traffic(scenario, strength), trust_alpha=DEFAULT_ALPHA)
    print(run.describe())
    assert run.poisoned == 0
    assert run.clean_withheld <= most_withheld * N_EVENTS, run.describe()
