"""Offline evaluation: accuracy, macro-F1, log loss, a per-intent table, a confusion plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


@dataclass(frozen=True)
class Evaluation:
    classes: tuple[str, ...]
    accuracy: float
    macro_f1: float
    log_loss: float
    n: int
    per_class: pd.DataFrame  # precision, recall, f1, support per intent
    confusion: np.ndarray  # rows: true intent, columns: predicted

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1,
                f"{prefix}log_loss": self.log_loss}


def evaluate(proba: np.ndarray, y_true: Sequence[str], classes: Sequence[str]) -> Evaluation:
    """Score class probabilities (columns in `classes` order) against true labels."""
    classes = tuple(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({y for y in y_true if y not in index})
    if unknown:
        raise ValueError(f"labels not among the model's classes: {', '.join(unknown[:5])}")
    if len(y_true) == 0:
        raise ValueError("nothing to evaluate")
    y = np.fromiter((index[v] for v in y_true), np.int64, len(y_true))
    pred = proba.argmax(axis=1)
    picked = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(classes, name="intent"),
    )
    present = support > 0  # macro-F1 over intents that occur in this set
    return Evaluation(
        classes=classes,
        accuracy=float((pred == y).mean()),
        macro_f1=float(f1[present].mean()),
        log_loss=float(-np.log(picked).mean()),
        n=len(y),
        per_class=per_class,
        confusion=confusion_matrix(y, pred, labels=labels),
    )


@dataclass(frozen=True)
class Comparison:
    """A challenger and the champion scored on the same rows: those whose true class both models have."""

    challenger_accuracy: float
    champion_accuracy: float
    n: int  # rows scored
    n_rows: int  # rows offered
    shared: int  # classes both models have
    added: tuple[str, ...]  # classes only the challenger has
    removed: tuple[str, ...]  # classes only the champion has
    lost: int = 0  # rows only the champion gets right
    gained: int = 0  # rows only the challenger gets right

    def significantly_worse(self, margin: float, z: float = 1.64) -> bool:
        """The challenger loses more than `margin` of the rows, beyond noise: a one-sided paired (McNemar-style)
        check on the rows the two disagree on, as the feedback service's gate judges online updates."""
        return self.lost - self.gained > margin * self.n + z * math.sqrt(self.lost + self.gained)

    @property
    def same_classes(self) -> bool:
        return not self.added and not self.removed

    @property
    def delta(self) -> float:
        return self.challenger_accuracy - self.champion_accuracy

    def describe(self) -> str:
        if self.same_classes:
            return f"on the same {self.n} rows and {self.shared} classes"
        changes = ", ".join(part for part in (
            f"adds {_names(self.added)}" if self.added else "",
            f"drops {_names(self.removed)}" if self.removed else "") if part)
        return (f"on the {self.n} of {self.n_rows} rows whose class both have ({self.shared} shared classes; "
                f"the challenger {changes})")


def _names(classes: tuple[str, ...]) -> str:
    shown = ", ".join(classes[:5])
    return f"{len(classes)} ({shown}{', ...' if len(classes) > 5 else ''})"


def compare(truth: Sequence[str], challenger: tuple[np.ndarray, Sequence[str]],
            champion: tuple[np.ndarray, Sequence[str]]) -> Comparison:
    """Accuracy of both models on the rows whose true class both have; each answers with its own classes.

    >>> eye = np.eye(3)
    >>> c = compare(["a", "b", "c"], (eye[[0, 1, 2]], "abc"), (eye[[0, 0, 1]], "abd"))
    >>> c.challenger_accuracy, c.champion_accuracy, c.n, c.added, c.removed
    (1.0, 0.5, 2, ('c',), ('d',))
    """
    (new_proba, new_classes), (old_proba, old_classes) = challenger, champion
    shared = set(new_classes) & set(old_classes)
    rows = np.array([t in shared for t in truth], dtype=bool)
    truth_arr = np.asarray(list(truth), dtype=object)[rows]

    def right(proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        return np.asarray(np.asarray(list(classes), dtype=object)[proba[rows].argmax(axis=1)] == truth_arr,
                          dtype=bool)

    new_right, old_right = right(new_proba, new_classes), right(old_proba, old_classes)

    def accuracy(correct: np.ndarray) -> float:
        return float(correct.mean()) if len(correct) else float("nan")

    return Comparison(accuracy(new_right), accuracy(old_right), int(rows.sum()), len(truth), len(shared),
                      tuple(sorted(set(new_classes) - shared)), tuple(sorted(set(old_classes) - shared)),
                      int((old_right & ~new_right).sum()), int((new_right & ~old_right).sum()))


def plot_confusion(evaluation: Evaluation, path: str | Path, title: str = "") -> Path:
    """Write a row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = evaluation.confusion.astype(float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(evaluation.classes)
    fig, ax = plt.subplots(figsize=(0.45 * k + 3, 0.45 * k + 2.5))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), evaluation.classes, rotation=90, fontsize=8)
    ax.set_yticks(range(k), evaluation.classes, fontsize=8)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    ax.set_title(title or f"accuracy {evaluation.accuracy:.3f}, macro-F1 {evaluation.macro_f1:.3f}"
                 f" (n={evaluation.n})")
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of true intent")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
