"""Compile gates: the deployable model must behave like the model it was compiled from.

The reference is the torch FP32 encoder plus the trained head; the candidate is
the bundle exactly as serving will load it (compiled INT8 encoder, tokenizer
files, head). A failed gate stops the run with the numbers that failed.

>>> ref = np.eye(3)[[0, 1, 2, 0]]
>>> report = check_gates(ref, ref, ["a", "b", "c", "a"], ["a", "b", "c"])
>>> report.passed, report.agreement
(True, 1.0)
>>> check_gates(ref, np.eye(3)[[1, 1, 2, 0]], ["a", "b", "c", "a"], ["a", "b", "c"])
Traceback (most recent call last):
...
flows.gates.GateFailed: agreement with torch FP32 0.7500 < 0.9900; accuracy drop 0.2500 > 0.0100
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class GateFailed(Exception):
    """The compiled model differs from its source by more than the gates allow."""

    def __init__(self, report: GateReport) -> None:
        super().__init__("; ".join(report.failures))
        self.report = report


@dataclass(frozen=True)
class GateReport:
    agreement: float  # share of the decided rows where both models pick the same intent
    reference_accuracy: float
    compiled_accuracy: float
    min_agreement: float
    max_accuracy_drop: float
    failures: list[str]
    measurements: dict[str, float] = field(default_factory=dict)  # latency, size
    agreement_all_rows: float = float("nan")  # near-ties included
    near_ties: int = 0  # rows left out of `agreement`: the reference's top two within tie_margin
    tie_margin: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.compiled_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "accuracy_drop": self.accuracy_drop}

    def metrics(self) -> dict[str, float]:
        return {"gate_agreement": self.agreement, "gate_agreement_all_rows": self.agreement_all_rows,
                "gate_near_ties": float(self.near_ties), "gate_accuracy_drop": self.accuracy_drop,
                **{f"gate_{k}": v for k, v in self.measurements.items()}}

    def to_tags(self) -> dict[str, str]:
        return {"passed": str(self.passed).lower(), "agreement": f"{self.agreement:.4f}",
                "agreement_all_rows": f"{self.agreement_all_rows:.4f}", "near_ties": str(self.near_ties),
                "accuracy_drop": f"{self.accuracy_drop:+.4f}",
                **{k: f"{v:.3f}" for k, v in self.measurements.items()}}

    def summary(self) -> str:
        state = "passed" if self.passed else "FAILED (" + "; ".join(self.failures) + ")"
        extra = ", ".join(f"{k} {v:.3g}" for k, v in self.measurements.items())
        return (f"{state}: agreement {self.agreement:.4f} (min {self.min_agreement}; {self.agreement_all_rows:.4f} "
                f"with the {self.near_ties} near-ties within {self.tie_margin:g}), accuracy "
                f"{self.compiled_accuracy:.4f} vs FP32 {self.reference_accuracy:.4f} "
                f"(max drop {self.max_accuracy_drop})" + (f"; {extra}" if extra else ""))


def check_gates(
    reference: np.ndarray,
    candidate: np.ndarray,
    truth: Sequence[str],
    classes: Sequence[str],
    min_agreement: float = 0.99,
    max_accuracy_drop: float = 0.01,
    measurements: dict[str, float] | None = None,
    tie_margin: float = 0.01,
) -> GateReport:
    """Compare two models' class probabilities on the same rows; raise GateFailed if a gate fails."""
    if reference.shape != candidate.shape or reference.shape[0] != len(truth):
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}, "
                         f"{len(truth)} labels")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in truth])
    ref_pred, cand_pred = reference.argmax(axis=1), candidate.argmax(axis=1)
    same = ref_pred == cand_pred
    top_two = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.ones((len(same), 2))
    decided = top_two[:, 1] - top_two[:, 0] >= tie_margin
    agreement = float(same[decided].mean()) if decided.any() else float(same.mean())
    ref_acc, cand_acc = float((ref_pred == y).mean()), float((cand_pred == y).mean())
    failures = []
    if not np.isfinite(candidate).all():
        failures.append("compiled model produced non-finite probabilities")
    if agreement < min_agreement:
        failures.append(f"agreement with torch FP32 {agreement:.4f} < {min_agreement:.4f}")
    if ref_acc - cand_acc > max_accuracy_drop:
        failures.append(f"accuracy drop {ref_acc - cand_acc:.4f} > {max_accuracy_drop:.4f}")
    report = GateReport(agreement, ref_acc, cand_acc, min_agreement, max_accuracy_drop, failures,
                        dict(measurements or {}), float(same.mean()), int((~decided).sum()), tie_margin)
    if failures:
        raise GateFailed(report)
    return report
