"""The head as serving holds it: weights only, immutable, replaced whole by each delta.

A request takes one `ServingHead` reference and uses it to the end, so it sees
the weights before a delta or after it, never a mix; applying a delta copies
the weights (tens of milliseconds every few seconds) instead of locking every
request.

>>> import numpy as np, scipy.sparse as sp
>>> from models.ftrl import Batch, FTRLProximal
>>> model = FTRLProximal(("a", "b"), sparse_dim=8)
>>> head = ServingHead.from_model(model)
>>> model.mark()
>>> x = Batch(sp.csr_matrix(([1.0], ([0], [3])), shape=(1, 8)), None)
>>> model.learn_many(x, np.array([1]))
>>> newer = head.apply(model.delta())
>>> bool(np.allclose(newer.predict_proba_many(x), model.predict_proba_many(x))), head is newer
(True, False)
"""

from __future__ import annotations

import numpy as np

from models.ftrl import Batch, FTRLProximal, HeadDelta, batch_arrays, softmax_proba


class ServingHead:
    """Predicts exactly like the FTRLProximal it was taken from."""

    def __init__(self, classes: tuple[str, ...], w_sparse: np.ndarray, w_dense: np.ndarray) -> None:
        if w_sparse.shape[1] != len(classes) or w_dense.shape[1] != len(classes):
            raise ValueError("weights and classes disagree")
        for array in (w_sparse, w_dense):
            array.flags.writeable = False  # shared by concurrent requests: never changed in place
        self.classes, self.w_sparse, self.w_dense = classes, w_sparse, w_dense

    @classmethod
    def from_model(cls, model: FTRLProximal) -> ServingHead:
        return cls(model.classes, model.w_sparse.copy(), model.w_dense.copy())

    @property
    def sparse_dim(self) -> int:
        return int(self.w_sparse.shape[0])

    @property
    def dense_dim(self) -> int:
        return int(self.w_dense.shape[0]) - 1

    def predict_proba_many(self, x: Batch) -> np.ndarray:
        csr, dense = batch_arrays(x, self.sparse_dim, self.dense_dim)
        return softmax_proba(csr, dense, self.w_sparse, self.w_dense)

    def apply(self, delta: HeadDelta, in_place: bool = False) -> ServingHead:
        """A new head with the delta's coordinates set; this one stays as it was.

        `in_place` changes this head instead, without copying every weight: only for a head
        that nothing else reads (the feedback service's copy of what serving has).
        """
        if delta.classes != self.classes:
            raise ValueError("delta is for a head with other classes")
        if len(delta.rows) and (delta.rows.max() >= self.sparse_dim or delta.rows.min() < 0):
            raise ValueError("delta touches features outside this head")
        w_dense = self.w_dense.copy() if delta.dense_weights is None else np.array(delta.dense_weights)
        if w_dense.shape != self.w_dense.shape:
            raise ValueError(f"delta dense weights {w_dense.shape}, expected {self.w_dense.shape}")
        if not in_place:
            w_sparse = self.w_sparse.copy()
            w_sparse[delta.rows] = delta.sparse_weights
            return ServingHead(self.classes, w_sparse, w_dense)
        self.w_sparse.flags.writeable = True
        self.w_sparse[delta.rows] = delta.sparse_weights
        self.w_sparse.flags.writeable = False
        w_dense.flags.writeable = False
        self.w_dense = w_dense
        return self
