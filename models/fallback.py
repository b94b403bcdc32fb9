"""The fallback answer: "I did not understand" instead of a wrong action when the model is unsure.

Intent routers do this (Rasa's FallbackClassifier, Dialogflow's fallback intent,
Lex's FallbackIntent). A request is *answered* when the top intent's probability
reaches `threshold` and the top intent is not the out-of-scope class; otherwise
the caller gets `fallback: true` (with the ranked intents still there).

The threshold is chosen on held-out rows: the lowest one whose answered rows are
right at least `target_precision` of the time, so as many requests as possible are
answered at that precision. Precision and coverage on those rows are kept with it.

>>> proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
>>> policy = choose_threshold(proba, ["a", "a", "b", "a"], ["a", "b"], target_precision=0.95)
>>> policy.threshold, policy.precision, policy.coverage
(0.7, 1.0, 0.75)
>>> policy.answered(proba, ["a", "b"]).tolist()
[True, True, True, False]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Fallback:
    threshold: float  # answer when the top probability is at least this
    target_precision: float
    precision: float  # of the answered held-out rows it was chosen on
    coverage: float  # share of those rows answered
    n: int  # rows it was chosen on
    out_of_scope: str | None = None  # a class that means "not something the assistant does"

    def answered(self, proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Which rows of `proba` (columns in `classes` order) get an answer rather than the fallback."""
        top = proba.argmax(axis=1)
        answered = proba[np.arange(len(top)), top] >= self.threshold
        if self.out_of_scope is not None and self.out_of_scope in classes:
            answered &= top != list(classes).index(self.out_of_scope)
        return answered

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["precision"] = None if np.isnan(self.precision) else self.precision  # JSON has no NaN
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Fallback:
        precision = body.get("precision")
        return cls(float(body["threshold"]), float(body["target_precision"]),
                   float("nan") if precision is None else float(precision), float(body["coverage"]),
                   int(body["n"]), body.get("out_of_scope"))

    def describe(self) -> str:
        oos = f", out-of-scope class {self.out_of_scope!r}" if self.out_of_scope else ""
        return (f"threshold {self.threshold:.3f} (target precision {self.target_precision:g}): precision "
                f"{self.precision:.4f}, coverage {self.coverage:.4f} on {self.n} held-out rows{oos}")


NEVER = Fallback(0.0, 0.0, float("nan"), 1.0, 0)  # bundles from before fallbacks: every request answered


def choose_threshold(proba: np.ndarray, truth: Sequence[str], classes: Sequence[str], target_precision: float,
                     out_of_scope: str | None = None) -> Fallback:
    """The lowest threshold whose answered rows reach `target_precision` (1.0, answering nothing, if none does)."""
    if len(truth) == 0:
        raise ValueError("no rows to choose a threshold on")
    classes = list(classes)
    oos = out_of_scope if out_of_scope in classes else None
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(t, -1) for t in truth])
    top = proba.argmax(axis=1)
    confidence = proba[np.arange(len(top)), top]
    candidates = top != index[oos] if oos is not None else np.ones(len(top), dtype=bool)
    order = np.argsort(-confidence[candidates], kind="stable")
    conf = confidence[candidates][order]
    right = (top == y)[candidates][order]
    precision = np.cumsum(right) / np.arange(1, len(right) + 1)
    # Answering the first k rows means a threshold of conf[k-1]; rows tied with it are answered too.
    last_of_tie = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.array([], dtype=bool)
    ok = np.flatnonzero((precision >= target_precision) & last_of_tie)
    if len(ok) == 0:
        return Fallback(1.0 + 1e-9, target_precision, float("nan"), 0.0, len(truth), oos)
    k = int(ok[-1])
    return Fallback(float(conf[k]), target_precision, float(precision[k]), (k + 1) / len(truth), len(truth), oos)
