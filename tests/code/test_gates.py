"""The compile gates: agreement is judged on the rows the FP32 model decides, accuracy on every row."""

from __future__ import annotations

import numpy as np
import pytest

from flows.gates import GateFailed, check_gates

CLASSES = ["a", "b", "c"]


def rows(*probabilities: tuple[float, float, float]) -> np.ndarray:
    return np.array(probabilities)


def test_near_ties_flipped_by_rounding_do_not_fail_the_gate() -> None:
    decided = [(0.8, 0.1, 0.1)] * 98
    ties = [(0.401, 0.399, 0.2)] * 2  # 0.002 apart: any rounding may turn these over
    reference = rows(*decided, *ties)
    compiled = rows(*decided, *[(0.399, 0.401, 0.2)] * 2)
    truth = ["a"] * 98 + ["c"] * 2  # both models wrong on the ties: accuracy is the same
    report = check_gates(reference, compiled, truth, CLASSES, tie_margin=0.01)
    assert report.passed and report.agreement == 1.0 and report.near_ties == 2
    assert report.agreement_all_rows == pytest.approx(0.98) and "2 near-ties within 0.01" in report.summary()
    with pytest.raises(GateFailed, match=r"agreement with torch FP32 0\.9800 < 0\.9900"):
        check_gates(reference, compiled, truth, CLASSES, tie_margin=0.0)  # counted, they fail it


def test_a_decided_row_that_flips_still_counts_and_accuracy_is_judged_on_every_row() -> None:
    reference = rows(*[(0.8, 0.1, 0.1)] * 50, *[(0.1, 0.8, 0.1)] * 50)
    compiled = reference.copy()
    compiled[:2] = (0.1, 0.8, 0.1)  # two confident answers changed: a broken compile, not rounding
    truth = ["a"] * 50 + ["b"] * 50
    with pytest.raises(GateFailed) as failed:
        check_gates(reference, compiled, truth, CLASSES, min_agreement=0.99, max_accuracy_drop=0.01)
    assert failed.value.report.agreement == pytest.approx(0.98) and failed.value.report.near_ties == 0
    assert "accuracy drop 0.0200 > 0.0100" in str(failed.value)
