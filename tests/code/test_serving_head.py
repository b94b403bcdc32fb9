"""ServingHead: predicts like the learner, deltas rebuild it, bad deltas are refused."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.ftrl import Batch, FTRLProximal, HeadDelta
from models.serving_head import ServingHead

CLASSES = ("a", "b", "c")


def _batch(rng: np.random.Generator, rows: int) -> Batch:
    sparse = sp.random(rows, 256, density=0.05, random_state=rng, format="csr")
    return Batch(sparse, rng.normal(size=(rows, 4)))


def test_deltas_keep_serving_in_step_with_the_learner() -> None:
    rng = np.random.default_rng(0)
    model = FTRLProximal(CLASSES, 256, 4)
    head = ServingHead.from_model(model)
    probe = _batch(rng, 50)
    for _ in range(10):
        model.mark()
        x = _batch(rng, 32)
        model.learn_many(x, rng.integers(0, 3, 32))
        old = head
        before = old.predict_proba_many(probe)
        head = head.apply(model.delta())
        np.testing.assert_array_equal(old.predict_proba_many(probe), before)  # the old head never changes
    np.testing.assert_allclose(head.predict_proba_many(probe), model.predict_proba_many(probe), atol=1e-12)


def test_weights_cannot_be_changed_in_place() -> None:
    head = ServingHead.from_model(FTRLProximal(CLASSES, 16))
    with pytest.raises(ValueError, match="read-only"):
        head.w_sparse[0, 0] = 1.0


@pytest.mark.parametrize(("delta", "message"), [
    (HeadDelta(("x", "y", "z"), np.array([1]), np.zeros((1, 3)), None), "other classes"),
    (HeadDelta(CLASSES, np.array([16]), np.zeros((1, 3)), None), "outside this head"),
    (HeadDelta(CLASSES, np.array([1]), np.zeros((1, 3)), np.zeros((5, 3))), "dense weights"),
])
def test_a_delta_that_does_not_fit_is_refused(delta: HeadDelta, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServingHead.from_model(FTRLProximal(CLASSES, 16)).apply(delta)
