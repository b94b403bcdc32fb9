"""Learning from joined feedback one update window at a time, behind a gate.

For each window: every example is first scored by the current head (progressive
validation: predicted before its label is learned); a deterministic share of them
(by event id) is held back, never learned, and joins a bounded set of recent
held-back examples; the rest is learned with FTRL `learn_many`. The result is a
candidate. It is published only if it is not less accurate than the live head (what
serving has) on the held-back set by more than `gate_margin`; then serving gets the
changed coordinates as a delta and the candidate becomes live. "Less accurate" is a
paired comparison on the examples where the two heads disagree, so noise in a few
thousand held-back examples does not reject a sound update. Otherwise the window's
learning is undone exactly and the report says why, with both accuracies. Nothing
reaches serving unjudged: until `min_holdout` examples are held back there is no
evidence to judge by, so the first examples fill the held-back set, whatever their
share, and learning starts with the window that completes it. Held back by share
alone, the service learned nothing from its first `min_holdout / holdout_share`
examples (500 at the defaults: 5% of HWU64's training split).

Published examples are also kept, the last `recent_size` of them: when a retrain
becomes champion, the service learns again on its head (`catch_up`, through the same
gate) those its training data did not include. A uniform sample of them is learned
again beside each window's new examples (`replay.py`): up to `replay_factor` per new
example, at most `replay_cap` a window.
"""

from __future__ import annotations

import zlib
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from models.ftrl import Batch, FTRLProximal, HeadDelta, RowState
from models.serving_head import ServingHead
from services.feedback.join import Joined
from services.feedback.replay import ReplayPool

Decision = Literal["published", "rejected", "no_evidence", "empty"]


@dataclass(frozen=True)
class LearnSettings:
    holdout_share: float = 0.1
    holdout_size: int = 2_000
    min_holdout: int = 50
    gate_margin: float = 0.0  # accuracy the candidate may lose on the held-back set
    gate_z: float = 1.64  # ...beyond which the loss must also be significant (one-sided, paired)
    batch_size: int = 32  # learn_many steps once per mini-batch with summed gradients: as in training
    recent_size: int = 10_000  # learned examples kept for a catch-up onto a retrained head (about 25 MB)
    replay_size: int = 2_000  # the pool earlier examples are replayed from (checkpointed)
    replay_factor: float = 2.0  # replayed examples per new learned example in a window...
    replay_cap: int = 500  # ...and at most this many a window, so a busy window costs little more


@dataclass(frozen=True)
class WindowReport:
    window_end: float
    examples: int
    learned: int
    held_back: int
    correct: int  # progressive: predicted right before learning
    log_loss: float  # progressive, summed
    decision: Decision
    live_accuracy: float | None = None  # on the held-back set
    candidate_accuracy: float | None = None
    sequence: int = 0  # the delta's sequence number when published
    delta: HeadDelta | None = None
    predicted: list[str] = field(default_factory=list)  # progressive predictions, for drift
    confidence: np.ndarray | None = None
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per example: held back?

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else float("nan")

    def describe(self) -> str:
        gate = ("" if self.live_accuracy is None else
                f"; held-back accuracy candidate {self.candidate_accuracy:.4f} vs live {self.live_accuracy:.4f}")
        return f"{self.decision}: {self.examples} examples, progressive accuracy {self.accuracy:.4f}{gate}"


@dataclass
class Progress:
    """Progressive validation since the start, overall and per intent (by the label users gave)."""

    examples: int = 0
    correct: int = 0
    log_loss: float = 0.0
    per_intent: Counter[str] = field(default_factory=Counter)
    per_intent_correct: Counter[str] = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"examples": self.examples, "correct": self.correct, "log_loss": self.log_loss,
                "per_intent": dict(self.per_intent), "per_intent_correct": dict(self.per_intent_correct)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Progress:
        return cls(d["examples"], d["correct"], d["log_loss"], Counter(d["per_intent"]),
                   Counter(d["per_intent_correct"]))


@dataclass(frozen=True)
class Comparison:
    """The live head against another on the held-back set (paired, as the window gate judges)."""

    examples: int
    live_accuracy: float
    other_accuracy: float
    live_worse: bool  # the live head loses to the other by more than the margin allows

    def describe(self) -> str:
        return (f"held-back accuracy {self.live_accuracy:.4f} vs {self.other_accuracy:.4f} "
                f"on {self.examples} examples")


class OnlineLearner:
    """FTRL head + the live head serving has + the held-back set that judges updates."""

    def __init__(self, model: FTRLProximal, base_version: int, settings: LearnSettings | None = None,
                 sequence: int = 0) -> None:
        self.model = model
        self.base_version = base_version
        self.sequence = sequence
        self.settings = settings or LearnSettings()
        self.live = ServingHead.from_model(model)
        self.holdout: deque[Joined] = deque(maxlen=self.settings.holdout_size)
        self.recent: deque[Joined] = deque(maxlen=self.settings.recent_size)  # learned and published, in order
        self.replay = ReplayPool(self.settings.replay_size)
        self.progress = Progress()
        model.mark()

    def held_back(self, event_id: str) -> bool:
        """Deterministic: the same event is held back in every replay."""
        return zlib.crc32(event_id.encode()) % 10_000 < self.settings.holdout_share * 10_000

    def _hold(self, examples: Sequence[Joined]) -> np.ndarray:
        """Which examples of a window are held back: by share, and every one while the held-back set is
        short of `min_holdout` (a replay from a checkpoint, which holds the set, decides alike)."""
        short = max(0, self.settings.min_holdout - len(self.holdout))
        held = np.zeros(len(examples), dtype=bool)
        for i, joined in enumerate(examples):
            held[i] = short > 0 or self.held_back(joined.feedback.event_id)
            short -= int(held[i])
        return held

    def learn_window(self, examples: Sequence[Joined], window_end: float) -> WindowReport:
        if not examples:
            return WindowReport(window_end, 0, 0, 0, 0, 0.0, "empty")
        labels = np.array([self.model.class_index[j.feedback.label] for j in examples])
        batch = self.batch(examples)
        proba = self.model.predict_proba_many(batch)
        predicted = proba.argmax(axis=1)
        correct = predicted == labels
        log_loss = float(-np.log(np.clip(proba[np.arange(len(labels)), labels], 1e-15, 1.0)).sum())
        self._record(examples, correct, log_loss)

        held = self._hold(examples)
        self.holdout.extend(j for j, h in zip(examples, held, strict=True) if h)
        learn = np.flatnonzero(~held)
        report = WindowReport(window_end, len(examples), len(learn), int(held.sum()), int(correct.sum()), log_loss,
                              "empty", predicted=[self.model.classes[i] for i in predicted],
                              confidence=proba.max(axis=1), held=held)
        if len(self.holdout) < self.settings.min_holdout:
            return replace(report, decision="no_evidence")  # every example went to the held-back set
        if len(learn) == 0:
            return report

        new = [examples[int(i)] for i in learn]
        return self._learn_judged(batch.take(learn), labels[learn], new, report, rehearse=True)

    def catch_up(self, examples: Sequence[Joined], window_end: float) -> WindowReport:
        """Learn examples an earlier head learned after this head's training data was read (a retrain
        promoted while the service learned on), through the same gate; progress does not count them again."""
        examples = [j for j in examples if j.feedback.label in self.model.class_index]
        report = WindowReport(window_end, len(examples), len(examples), 0, 0, 0.0, "empty")
        if not examples:
            return report
        if len(self.holdout) < self.settings.min_holdout:
            return replace(report, decision="no_evidence")
        labels = np.array([self.model.class_index[j.feedback.label] for j in examples])
        return self._learn_judged(self.batch(examples), labels, examples, report)

    def unchanged_update(self, window_end: float) -> WindowReport:
        """A published update that changes no weight: it tells serving, which holds a new version until its
        first update, that this head is as current as it gets (a catch-up with nothing to add, or refused)."""
        delta = self.model.delta()  # nothing pending: after a reset, or an undone window
        if len(delta.rows) or delta.dense_weights is not None:
            raise RuntimeError("learned weights are pending: they would go out unjudged")
        self.sequence += 1
        return WindowReport(window_end, 0, 0, 0, 0, 0.0, "published", sequence=self.sequence, delta=delta)

    def _learn_judged(self, batch: Batch, labels: np.ndarray, learned: list[Joined],
                      report: WindowReport, rehearse: bool = False) -> WindowReport:
        """Learn `batch`; keep it if the held-back set does not judge the result worse than the live head.
        Then, with `rehearse`, replay earlier examples on top, judged the same way and undone alone if
        worse: the new examples are judged as if there were no replay, so replayed ones cannot hide a
        harmful window."""
        undo = self.model.state_of(batch.sparse.tocsr().indices)
        self.model.learn_in_batches(batch, labels, self.settings.batch_size)

        judge = self.batch(list(self.holdout))
        truth = np.array([self.model.class_index[j.feedback.label] for j in self.holdout])
        live_right = self.live.predict_proba_many(judge).argmax(axis=1) == truth
        cand_right = self.model.predict_proba_many(judge).argmax(axis=1) == truth
        if self._worse(live_right, cand_right):
            self._undo(undo)
            return replace(report, decision="rejected", live_accuracy=float(live_right.mean()),
                           candidate_accuracy=float(cand_right.mean()))
        if rehearse:
            cand_right = self._rehearse(len(labels), judge, truth, live_right, cand_right)
        report = replace(report, live_accuracy=float(live_right.mean()), candidate_accuracy=float(cand_right.mean()))

        delta = self.model.delta()
        self.model.mark()
        self.live.apply(delta, in_place=True)  # the learner's own copy: no one else reads it
        self.sequence += 1
        self.recent.extend(learned)
        self.replay.add(learned)
        return replace(report, decision="published", sequence=self.sequence, delta=delta)

    def _rehearse(self, new: int, judge: Batch, truth: np.ndarray, live_right: np.ndarray,
                  cand_right: np.ndarray) -> np.ndarray:
        """Learn a reproducible sample of earlier examples; keep it unless the held-back set judges the
        result worse than the live head. Returns what the head now gets right on that set."""
        s = self.settings
        replayed = self.replay.sample(min(int(s.replay_factor * new), s.replay_cap), (self.base_version, self.sequence))
        if not replayed:
            return cand_right
        batch = self.batch(replayed)
        undo = self.model.state_of(batch.sparse.tocsr().indices)
        self.model.learn_in_batches(batch, np.array([self.model.class_index[j.feedback.label] for j in replayed]),
                                    s.batch_size)
        rehearsed_right = self.model.predict_proba_many(judge).argmax(axis=1) == truth
        if self._worse(live_right, rehearsed_right):
            self.model.restore(undo)  # back to the judged window; its rows stay marked for the delta
            return cand_right
        return rehearsed_right

    def compare(self, other: ServingHead) -> Comparison | None:
        """How the live head does against `other` (e.g. the registry version it started from), or None
        before `min_holdout` examples are held back."""
        if len(self.holdout) < self.settings.min_holdout:
            return None
        judge = self.batch(list(self.holdout))
        truth = np.array([self.model.class_index[j.feedback.label] for j in self.holdout])
        live_right = self.live.predict_proba_many(judge).argmax(axis=1) == truth
        other_right = other.predict_proba_many(judge).argmax(axis=1) == truth
        return Comparison(len(truth), float(live_right.mean()), float(other_right.mean()),
                          self._worse(other_right, live_right))

    def forget_users(self, users: set[str]) -> int:
        """Drop these users' examples from the held-back set (their feedback is no longer trusted to judge
        by); returns how many went."""
        kept = [j for j in self.holdout if j.prediction.user_id not in users]
        dropped = len(self.holdout) - len(kept)
        if dropped:
            self.holdout = deque(kept, maxlen=self.settings.holdout_size)
        self.recent = deque((j for j in self.recent if j.prediction.user_id not in users),
                            maxlen=self.settings.recent_size)
        self.replay.keep(lambda j: j.prediction.user_id not in users)
        return dropped

    def rebase(self, version: int) -> None:
        """The live head became registry version `version`: later deltas count from there."""
        self.base_version, self.sequence = version, 0

    def _undo(self, state: RowState) -> None:
        # Back to exactly the live head, with nothing pending: the next delta starts from here, and a
        # checkpoint taken now (which does not store pending marks) loses nothing.
        self.model.restore(state)
        self.model.mark()

    def _worse(self, live_right: np.ndarray, cand_right: np.ndarray) -> bool:
        """McNemar-style paired check on the held-back set: only the examples the two heads disagree on
        count, so a candidate is rejected for being worse, not for noise in a few thousand examples."""
        lost = int((live_right & ~cand_right).sum())
        gained = int((cand_right & ~live_right).sum())
        allowed = self.settings.gate_margin * len(live_right) + self.settings.gate_z * np.sqrt(lost + gained)
        return lost - gained > allowed

    def batch(self, examples: Sequence[Joined]) -> Batch:
        """The logged model input of each example, as the head takes it."""
        lengths = [len(j.prediction.indices) for j in examples]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate([j.prediction.indices for j in examples]) if examples else np.zeros(0, np.int64)
        values = np.concatenate([j.prediction.values for j in examples]) if examples else np.zeros(0)
        sparse = sp.csr_matrix((values.astype(np.float64), indices, indptr),
                               shape=(len(examples), self.model.sparse_dim))
        dense = None
        if self.model.dense_dim:
            dense = np.stack([_embedding(j, self.model.dense_dim) for j in examples]).astype(np.float64)
        return Batch(sparse, dense)

    def _record(self, examples: Sequence[Joined], correct: np.ndarray, log_loss: float) -> None:
        p = self.progress
        p.examples += len(examples)
        p.correct += int(correct.sum())
        p.log_loss += log_loss
        for j, ok in zip(examples, correct, strict=True):
            p.per_intent[j.feedback.label] += 1
            p.per_intent_correct[j.feedback.label] += int(ok)


def _embedding(joined: Joined, dim: int) -> np.ndarray:
    embedding = joined.prediction.embedding
    if embedding is None or len(embedding) != dim:
        raise ValueError(f"prediction {joined.prediction.prediction_id} has no {dim}-d embedding")
    return embedding
