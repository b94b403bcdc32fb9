"""FTRL-Proximal multiclass head (McMahan et al. 2013, Algorithm 1).

Reduction: multinomial logistic regression (softmax). Every (feature, class)
pair is one coordinate with its own `z` and `n`, and Algorithm 1 runs on it
unchanged; only the gradient comes from the softmax loss,
`g[i, k] = (p_k - [y == k]) * x_i`. As in the paper, a coordinate is updated
only when its feature is non-zero, and its weight is exactly 0 whenever
`|z| <= l1`.

Features are a sparse hashed vector plus a dense embedding; a constant 1 is
appended to the dense part as the bias.

`learn_many` relation to `learn_one`: it applies exactly the per-coordinate
updates a loop of `learn_one` over the batch would, except that every example
is predicted with the weights as they stood at the start of the batch (the
model sees the batch's labels only after predicting all of it). A batch of one
is `learn_one`. This holds because, with the weights held fixed, the `sigma`
terms of consecutive updates telescope: summing the gradients `g` and the
squared gradients `g**2` per coordinate and taking one step gives the same
`z` and `n` as the loop.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> model = FTRLProximal(classes=("a", "b", "c"), sparse_dim=64, dense_dim=2)
>>> correct = 0
>>> for t in range(3000):
...     k = int(rng.integers(3))
...     x = Example(np.array([k, 10 + int(rng.integers(50))]), np.array([1.0, 1.0]),
...                 rng.normal(size=2))
...     correct += model.predict_one(x) == "abc"[k]
...     model.learn_one(x, "abc"[k])
>>> round(correct / 3000, 3)
0.998
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np
import scipy.sparse as sp

FORMAT_VERSION = 1


@dataclass(frozen=True)
class FTRLParams:
    """Per-coordinate learning rate `alpha / (beta + sqrt(n))`, L1 and L2 strengths."""

    alpha: float = 0.5
    beta: float = 1.0
    l1: float = 0.001
    l2: float = 0.01

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.beta < 0 or self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"need alpha > 0 and beta, l1, l2 >= 0, got {self}")


class Example(NamedTuple):
    """One example: sorted unique hashed indices, their values, and a dense embedding."""

    indices: np.ndarray
    values: np.ndarray
    dense: np.ndarray | None = None


class Batch(NamedTuple):
    """Many examples: a CSR matrix of hashed features and a (rows, dense_dim) array."""

    sparse: sp.csr_matrix
    dense: np.ndarray | None = None


@dataclass(frozen=True)
class HeadDelta:
    """Weights of the coordinates updated since `mark()`: what serving applies."""

    classes: tuple[str, ...]
    rows: np.ndarray  # sparse feature indices touched
    sparse_weights: np.ndarray  # (len(rows), n_classes)
    dense_weights: np.ndarray | None  # (dense_dim + 1, n_classes), None if untouched

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {
            "classes": np.array(self.classes),
            "rows": self.rows,
            "sparse_weights": self.sparse_weights,
        }
        if self.dense_weights is not None:
            arrays["dense_weights"] = self.dense_weights
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> HeadDelta:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            dense = f["dense_weights"] if "dense_weights" in f else None
            return cls(tuple(str(c) for c in f["classes"]), f["rows"], f["sparse_weights"], dense)


class FTRLProximal:
    """Softmax regression trained per coordinate with FTRL-Proximal."""

    def __init__(
        self,
        classes: Sequence[str],
        sparse_dim: int,
        dense_dim: int = 0,
        params: FTRLParams | None = None,
    ) -> None:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError("need at least two distinct classes")
        self.classes = tuple(classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.sparse_dim = int(sparse_dim)
        self.dense_dim = int(dense_dim)
        self.params = params or FTRLParams()
        k = len(self.classes)
        self.z_sparse = np.zeros((self.sparse_dim, k))
        self.n_sparse = np.zeros((self.sparse_dim, k))
        self.w_sparse = np.zeros((self.sparse_dim, k))
        self.z_dense = np.zeros((self.dense_dim + 1, k))
        self.n_dense = np.zeros((self.dense_dim + 1, k))
        self.w_dense = np.zeros((self.dense_dim + 1, k))
        self._touched = np.zeros(self.sparse_dim, dtype=np.bool_)
        self._dense_touched = False
        self._slot = np.full(self.sparse_dim, -1, dtype=np.int64)  # scratch for learn_many

    # -- one example -------------------------------------------------------

    def learn_one(self, x: Example, y: str) -> None:
        """Predict `x`, then take one Algorithm 1 step on every non-zero coordinate."""
        indices, values, dense = self._check_one(x)
        p = self.params
        _learn_one(indices, values, dense, self._label(y), self.z_sparse, self.n_sparse,
                   self.w_sparse, self.z_dense, self.n_dense, self.w_dense, self._touched,
                   p.alpha, p.beta, p.l1, p.l2)
        self._dense_touched = True

    def predict_proba_one(self, x: Example) -> dict[str, float]:
        """Class probabilities for `x`; does not change the model."""
        indices, values, dense = self._check_one(x)
        proba = _predict_one(indices, values, dense, self.w_sparse, self.w_dense)
        return dict(zip(self.classes, proba.tolist(), strict=True))

    def predict_one(self, x: Example) -> str:
        indices, values, dense = self._check_one(x)
        proba = _predict_one(indices, values, dense, self.w_sparse, self.w_dense)
        return self.classes[int(np.argmax(proba))]

    # -- micro-batches -----------------------------------------------------

    def learn_many(self, x: Batch, y: Sequence[str] | np.ndarray) -> None:
        """Predict the whole batch, then step each coordinate once with summed g and g**2."""
        csr, dense = self._check_many(x)
        labels = self._labels(y, csr.shape[0])
        if csr.shape[0] == 0:
            return
        error = self._proba(csr, dense)
        error[np.arange(len(labels)), labels] -= 1.0
        p = self.params
        _sparse_step(csr.indptr, csr.indices, csr.data, error, self.z_sparse, self.n_sparse,
                     self.w_sparse, self._touched, self._slot, p.alpha, p.beta, p.l1, p.l2)
        grad = dense.T @ error
        grad_sq = (dense * dense).T @ (error * error)
        _dense_step(grad, grad_sq, self.z_dense, self.n_dense, self.w_dense,
                    p.alpha, p.beta, p.l1, p.l2)
        self._dense_touched = True

    def predict_proba_many(self, x: Batch) -> np.ndarray:
        """(rows, n_classes) probabilities, columns in `classes` order."""
        csr, dense = self._check_many(x)
        return self._proba(csr, dense)

    def predict_many(self, x: Batch) -> list[str]:
        return [self.classes[i] for i in self.predict_proba_many(x).argmax(axis=1)]

    def _proba(self, csr: sp.csr_matrix, dense: np.ndarray) -> np.ndarray:
        logits = dense @ self.w_dense
        _add_sparse_logits(csr.indptr, csr.indices, csr.data, self.w_sparse, logits)
        return _softmax_rows(logits)

    # -- deltas for serving ------------------------------------------------

    def mark(self) -> None:
        """Start a new delta: forget which coordinates were updated so far."""
        self._touched[:] = False
        self._dense_touched = False

    def delta(self) -> HeadDelta:
        """Current weights of every coordinate updated since the last `mark()`."""
        rows = np.flatnonzero(self._touched)
        return HeadDelta(
            classes=self.classes,
            rows=rows,
            sparse_weights=self.w_sparse[rows].copy(),
            dense_weights=self.w_dense.copy() if self._dense_touched else None,
        )

    # -- persistence (npz, no pickle) --------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the full state; only sparse rows that were ever updated are stored."""
        rows = np.flatnonzero(self.n_sparse.any(axis=1))
        config = {
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "sparse_dim": self.sparse_dim,
            "dense_dim": self.dense_dim,
            "params": asdict(self.params),
        }
        with open(path, "wb") as f:
            np.savez(f, config=np.array(json.dumps(config)), rows=rows,
                     z_sparse=self.z_sparse[rows], n_sparse=self.n_sparse[rows],
                     z_dense=self.z_dense, n_dense=self.n_dense)

    @classmethod
    def load(cls, path: str | Path) -> FTRLProximal:
        with np.load(path, allow_pickle=False) as f:
            config = json.loads(str(f["config"]))
            if config["format_version"] != FORMAT_VERSION:
                raise ValueError(f"{path}: head format {config['format_version']} is not supported")
            model = cls(config["classes"], config["sparse_dim"], config["dense_dim"],
                        FTRLParams(**config["params"]))
            rows = f["rows"]
            model.z_sparse[rows] = f["z_sparse"]
            model.n_sparse[rows] = f["n_sparse"]
            model.z_dense[:] = f["z_dense"]
            model.n_dense[:] = f["n_dense"]
        p = model.params
        model.w_sparse[rows] = _weights(model.z_sparse[rows], model.n_sparse[rows], p.alpha,
                                        p.beta, p.l1, p.l2)
        model.w_dense[:] = _weights(model.z_dense, model.n_dense, p.alpha, p.beta, p.l1, p.l2)
        return model

    # -- input checks ------------------------------------------------------

    def _label(self, y: str) -> int:
        try:
            return self.class_index[y]
        except KeyError:
            raise ValueError(f"unknown label {y!r}; known: {', '.join(self.classes)}") from None

    def _labels(self, y: Sequence[str] | np.ndarray, rows: int) -> np.ndarray:
        if len(y) != rows:
            raise ValueError(f"{rows} rows but {len(y)} labels")
        if isinstance(y, np.ndarray) and y.dtype.kind in "iu":
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError("label index out of range")
            return y.astype(np.int64)
        return np.fromiter((self._label(v) for v in y), np.int64, rows)

    def _dense_aug(self, dense: np.ndarray | None, rows: int | None) -> np.ndarray:
        shape = (self.dense_dim,) if rows is None else (rows, self.dense_dim)
        if dense is None:  # a missing embedding counts as all zeros
            dense = np.zeros(shape)
        dense = np.asarray(dense, dtype=np.float64)
        if dense.shape != shape:
            raise ValueError(f"dense features have shape {dense.shape}, expected {shape}")
        ones = np.ones(1 if rows is None else (rows, 1))
        return np.concatenate([dense, ones], axis=-1)

    def _check_one(self, x: Example) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = np.asarray(x.indices, dtype=np.int64)
        values = np.asarray(x.values, dtype=np.float64)
        if indices.shape != values.shape or indices.ndim != 1:
            raise ValueError("indices and values must be 1-d and of equal length")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.sparse_dim):
            raise ValueError(f"sparse index out of range [0, {self.sparse_dim})")
        if len(np.unique(indices)) != len(indices):
            raise ValueError("sparse indices must be unique")
        return indices, values, self._dense_aug(x.dense, None)

    def _check_many(self, x: Batch) -> tuple[sp.csr_matrix, np.ndarray]:
        csr = sp.csr_matrix(x.sparse, dtype=np.float64)
        if csr.shape[1] != self.sparse_dim:
            raise ValueError(f"sparse width {csr.shape[1]}, expected {self.sparse_dim}")
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        return csr, self._dense_aug(x.dense, csr.shape[0])


# -- kernels (Algorithm 1, compiled) ------------------------------------------


@numba.njit(cache=True, inline="always")
def _weight(z: float, n: float, alpha: float, beta: float, l1: float, l2: float) -> float:
    if abs(z) <= l1:
        return 0.0
    sign = 1.0 if z > 0 else -1.0
    return -(z - sign * l1) / ((beta + np.sqrt(n)) / alpha + l2)


@numba.njit(cache=True, inline="always")
def _step(z: np.ndarray, n: np.ndarray, w: np.ndarray, j: int, k: int, g: float, g_sq: float,
          alpha: float, beta: float, l1: float, l2: float) -> None:
    n_old = n[j, k]
    n_new = n_old + g_sq
    sigma = (np.sqrt(n_new) - np.sqrt(n_old)) / alpha
    z[j, k] += g - sigma * w[j, k]
    n[j, k] = n_new
    w[j, k] = _weight(z[j, k], n_new, alpha, beta, l1, l2)


@numba.njit(cache=True)
def _weights(z: np.ndarray, n: np.ndarray, alpha: float, beta: float, l1: float,
             l2: float) -> np.ndarray:
    w = np.zeros_like(z)
    for j in range(z.shape[0]):
        for k in range(z.shape[1]):
            w[j, k] = _weight(z[j, k], n[j, k], alpha, beta, l1, l2)
    return w


@numba.njit(cache=True)
def _softmax_inplace(v: np.ndarray) -> None:
    top = v.max()
    total = 0.0
    for k in range(v.shape[0]):
        v[k] = np.exp(v[k] - top)
        total += v[k]
    for k in range(v.shape[0]):
        v[k] /= total


@numba.njit(cache=True)
def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    for r in range(logits.shape[0]):
        _softmax_inplace(logits[r])
    return logits


@numba.njit(cache=True)
def _predict_one(indices: np.ndarray, values: np.ndarray, dense: np.ndarray,
                 w_sparse: np.ndarray, w_dense: np.ndarray) -> np.ndarray:
    k_classes = w_sparse.shape[1]
    logits = np.zeros(k_classes)
    for a in range(indices.shape[0]):
        j, v = indices[a], values[a]
        for k in range(k_classes):
            logits[k] += v * w_sparse[j, k]
    for j in range(dense.shape[0]):
        v = dense[j]
        if v != 0.0:
            for k in range(k_classes):
                logits[k] += v * w_dense[j, k]
    _softmax_inplace(logits)
    return logits


@numba.njit(cache=True)
def _learn_one(indices: np.ndarray, values: np.ndarray, dense: np.ndarray, y: int,
               z_s: np.ndarray, n_s: np.ndarray, w_s: np.ndarray, z_d: np.ndarray,
               n_d: np.ndarray, w_d: np.ndarray, touched: np.ndarray, alpha: float,
               beta: float, l1: float, l2: float) -> None:
    error = _predict_one(indices, values, dense, w_s, w_d)
    error[y] -= 1.0
    for a in range(indices.shape[0]):
        j, v = indices[a], values[a]
        if v == 0.0:
            continue
        touched[j] = True
        for k in range(error.shape[0]):
            g = error[k] * v
            _step(z_s, n_s, w_s, j, k, g, g * g, alpha, beta, l1, l2)
    for j in range(dense.shape[0]):
        v = dense[j]
        if v == 0.0:
            continue
        for k in range(error.shape[0]):
            g = error[k] * v
            _step(z_d, n_d, w_d, j, k, g, g * g, alpha, beta, l1, l2)


@numba.njit(cache=True)
def _add_sparse_logits(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                       w_sparse: np.ndarray, logits: np.ndarray) -> None:
    for r in range(indptr.shape[0] - 1):
        for a in range(indptr[r], indptr[r + 1]):
            j, v = indices[a], data[a]
            for k in range(w_sparse.shape[1]):
                logits[r, k] += v * w_sparse[j, k]


@numba.njit(cache=True)
def _sparse_step(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, error: np.ndarray,
                 z: np.ndarray, n: np.ndarray, w: np.ndarray, touched: np.ndarray,
                 slot: np.ndarray, alpha: float, beta: float, l1: float, l2: float) -> None:
    # Gather per-coordinate sums of g and g**2 over the batch, then step each once.
    k_classes = error.shape[1]
    rows = np.empty(indices.shape[0], dtype=np.int64)
    used = 0
    for a in range(indices.shape[0]):
        j = indices[a]
        if data[a] != 0.0 and slot[j] < 0:
            slot[j] = used
            rows[used] = j
            used += 1
    grad = np.zeros((used, k_classes))
    grad_sq = np.zeros((used, k_classes))
    for r in range(indptr.shape[0] - 1):
        for a in range(indptr[r], indptr[r + 1]):
            v = data[a]
            if v == 0.0:
                continue
            s = slot[indices[a]]
            for k in range(k_classes):
                g = error[r, k] * v
                grad[s, k] += g
                grad_sq[s, k] += g * g
    for s in range(used):
        j = rows[s]
        slot[j] = -1
        touched[j] = True
        for k in range(k_classes):
            _step(z, n, w, j, k, grad[s, k], grad_sq[s, k], alpha, beta, l1, l2)


@numba.njit(cache=True)
def _dense_step(grad: np.ndarray, grad_sq: np.ndarray, z: np.ndarray, n: np.ndarray,
                w: np.ndarray, alpha: float, beta: float, l1: float, l2: float) -> None:
    for j in range(grad.shape[0]):
        for k in range(grad.shape[1]):
            if grad_sq[j, k] != 0.0:  # feature j was zero in every row: no step
                _step(z, n, w, j, k, grad[j, k], grad_sq[j, k], alpha, beta, l1, l2)
