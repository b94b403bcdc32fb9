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

    alpha: float = 1.0
    beta: float = 1.0
    l1: float = 0.0001
    l2: float = 0.0001

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

    def take(self, rows: slice | np.ndarray) -> Batch:
        """The examples at `rows` (a slice or an index array), both parts alike."""
        return Batch(self.sparse[rows], None if self.dense is None else self.dense[rows])


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
            dense = f["dense_weights"] if "dense_weights" in f.files else None
            return cls(tuple(str(c) for c in f["classes"]), f["rows"], f["sparse_weights"], dense)


class RowState(NamedTuple):
    rows: np.ndarray
    z_sparse: np.ndarray
    n_sparse: np.ndarray
    w_sparse: np.ndarray
    z_dense: np.ndarray
    n_dense: np.ndarray
    w_dense: np.ndarray


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
        # Three separate arrays rather than one (feature, 3, class) block: the compiler
        # only vectorises the per-class loop when z, n and w cannot alias (measured 4x).
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
        self.predict_then_learn_many(x, y)

    def predict_then_learn_many(self, x: Batch, y: Sequence[str] | np.ndarray) -> np.ndarray:
        """`learn_many` that also returns the probabilities it predicted the batch with.

        Those are progressive-validation predictions: made before the batch's labels
        were learned, so scoring them is honest.
        """
        csr, dense = self._check_many(x)
        labels = self._labels(y, csr.shape[0])
        if csr.shape[0] == 0:
            return self._proba(csr, dense)
        return self._step_rows(csr.indptr, csr.indices, csr.data, dense, labels)

    def learn_in_batches(self, x: Batch, y: Sequence[str] | np.ndarray, batch_size: int) -> None:
        """`learn_many` on each run of `batch_size` consecutive rows in turn: the same steps, checked
        once and sliced as raw arrays (a scipy slice per mini-batch cost more than the step itself)."""
        csr, dense = self._check_many(x)
        labels = self._labels(y, csr.shape[0])
        indptr, indices, data = csr.indptr, csr.indices, csr.data
        for start in range(0, csr.shape[0], batch_size):
            stop = min(start + batch_size, csr.shape[0])
            first, last = indptr[start], indptr[stop]
            self._step_rows(indptr[start:stop + 1] - first, indices[first:last], data[first:last],
                            dense[start:stop], labels[start:stop])

    def _step_rows(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, dense: np.ndarray,
                   labels: np.ndarray) -> np.ndarray:
        """One summed step over checked rows (CSR parts); returns the probabilities predicted before it."""
        proba = _softmax_proba(indptr, indices, data, dense, self.w_sparse, self.w_dense)
        error = proba.copy()
        error[np.arange(len(labels)), labels] -= 1.0
        p = self.params
        _sparse_step(indptr, indices, data, error, self.z_sparse, self.n_sparse,
                     self.w_sparse, self._touched, self._slot, p.alpha, p.beta, p.l1, p.l2)
        error_sq = error * error
        # Rows 0..dense_dim-1 are the embedding, the last row is the bias (x = 1).
        grad = np.vstack([dense.T @ error, error.sum(axis=0)])
        grad_sq = np.vstack([(dense * dense).T @ error_sq, error_sq.sum(axis=0)])
        _dense_step(grad, grad_sq, self.z_dense, self.n_dense, self.w_dense,
                    p.alpha, p.beta, p.l1, p.l2)
        self._dense_touched = True
        return proba

    def predict_proba_many(self, x: Batch) -> np.ndarray:
        """(rows, n_classes) probabilities, columns in `classes` order."""
        csr, dense = self._check_many(x)
        return self._proba(csr, dense)

    def predict_many(self, x: Batch) -> list[str]:
        return [self.classes[i] for i in self.predict_proba_many(x).argmax(axis=1)]

    def _proba(self, csr: sp.csr_matrix, dense: np.ndarray) -> np.ndarray:
        return softmax_proba(csr, dense, self.w_sparse, self.w_dense)

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
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> FTRLProximal:
        return cls.from_bytes(Path(path).read_bytes(), source=str(path))

    def to_bytes(self) -> bytes:
        rows = np.flatnonzero(self.n_sparse.any(axis=1))
        config = {
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "sparse_dim": self.sparse_dim,
            "dense_dim": self.dense_dim,
            "params": asdict(self.params),
        }
        buf = io.BytesIO()
        np.savez(buf, config=np.array(json.dumps(config)), rows=rows,
                 z_sparse=self.z_sparse[rows], n_sparse=self.n_sparse[rows],
                 w_sparse=self.w_sparse[rows], z_dense=self.z_dense, n_dense=self.n_dense,
                 w_dense=self.w_dense)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "head") -> FTRLProximal:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            config = json.loads(str(f["config"]))
            if config["format_version"] != FORMAT_VERSION:
                raise ValueError(f"{source}: head format {config['format_version']} is not supported")
            model = cls(config["classes"], config["sparse_dim"], config["dense_dim"],
                        FTRLParams(**config["params"]))
            # The cached weights are stored too, so a loaded model predicts bit for bit alike.
            rows = f["rows"]
            for name in ("z", "n", "w"):
                getattr(model, f"{name}_sparse")[rows] = f[f"{name}_sparse"]
                getattr(model, f"{name}_dense")[:] = f[f"{name}_dense"]
        return model

    # -- undo (a gate that rejects an update) -----------------------------

    def state_of(self, rows: np.ndarray) -> RowState:
        """A copy of the state of these sparse rows and of all dense ones, for `restore`."""
        rows = np.unique(rows)
        return RowState(rows, self.z_sparse[rows], self.n_sparse[rows], self.w_sparse[rows],
                        self.z_dense.copy(), self.n_dense.copy(), self.w_dense.copy())

    def restore(self, state: RowState) -> None:
        """Put back what `state_of` copied: learning that touched only those rows is undone exactly."""
        rows = state.rows
        self.z_sparse[rows], self.n_sparse[rows], self.w_sparse[rows] = state.z_sparse, state.n_sparse, state.w_sparse
        self.z_dense[:], self.n_dense[:], self.w_dense[:] = state.z_dense, state.n_dense, state.w_dense

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

    def _dense(self, dense: np.ndarray | None, rows: int | None) -> np.ndarray:
        return checked_dense(dense, (self.dense_dim,) if rows is None else (rows, self.dense_dim))

    def _check_one(self, x: Example) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = np.asarray(x.indices, dtype=np.int64)
        values = np.asarray(x.values, dtype=np.float64)
        if indices.shape != values.shape or indices.ndim != 1:
            raise ValueError("indices and values must be 1-d and of equal length")
        if len(indices) > 1 and not (indices[1:] > indices[:-1]).all():  # sorted is the fast path
            order = np.argsort(indices, kind="stable")
            indices, values = indices[order], values[order]
            if (indices[1:] == indices[:-1]).any():
                raise ValueError("sparse indices must be unique")
        if len(indices) and (indices[0] < 0 or indices[-1] >= self.sparse_dim):
            raise ValueError(f"sparse index out of range [0, {self.sparse_dim})")
        return indices, values, self._dense(x.dense, None)

    def _check_many(self, x: Batch) -> tuple[sp.csr_matrix, np.ndarray]:
        return batch_arrays(x, self.sparse_dim, self.dense_dim)


# -- shared by the learner and the serving head ---------------------------------


def checked_dense(dense: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Dense features as float64 of `shape`; a missing embedding counts as all zeros."""
    if dense is None:
        return np.zeros(shape)
    dense = np.asarray(dense, dtype=np.float64)
    if dense.shape != shape:
        raise ValueError(f"dense features have shape {dense.shape}, expected {shape}")
    return dense


def batch_arrays(x: Batch, sparse_dim: int, dense_dim: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """A batch as the kernels take it: canonical float64 CSR of the right width, checked dense rows."""
    csr = sp.csr_matrix(x.sparse, dtype=np.float64)
    if csr.shape[1] != sparse_dim:
        raise ValueError(f"sparse width {csr.shape[1]}, expected {sparse_dim}")
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr, checked_dense(x.dense, (csr.shape[0], dense_dim))


def softmax_proba(csr: sp.csr_matrix, dense: np.ndarray, w_sparse: np.ndarray, w_dense: np.ndarray) -> np.ndarray:
    """Class probabilities from weights; the bias is the last row of `w_dense`."""
    return _softmax_proba(csr.indptr, csr.indices, csr.data, dense, w_sparse, w_dense)


def _softmax_proba(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, dense: np.ndarray,
                   w_sparse: np.ndarray, w_dense: np.ndarray) -> np.ndarray:
    logits = dense @ w_dense[:-1] + w_dense[-1]
    _add_sparse_logits(indptr, indices, data, w_sparse, logits)
    return _softmax_rows(logits)


# -- kernels (Algorithm 1, compiled) ------------------------------------------
# Row j of z, n, w holds feature j's coordinates, one per class. The class loops
# are branch-free so they vectorise; fastmath only lets the compiler reorder
# and use reciprocals, well inside the 1e-9 the tests hold the kernels to
# against the plain reference.

_jit = numba.njit(cache=True, fastmath=True, error_model="numpy")
_jit_inline = numba.njit(cache=True, fastmath=True, error_model="numpy", inline="always")


@_jit_inline
def _step(z: np.ndarray, n: np.ndarray, w: np.ndarray, g: np.ndarray, g_sq: np.ndarray,
          alpha: float, beta: float, l1: float, l2: float) -> None:
    """Algorithm 1 for one feature's coordinates: z, n, then w from the new z and n."""
    inv_alpha = 1.0 / alpha
    for k in range(z.shape[0]):
        n_old = n[k]
        n_new = n_old + g_sq[k]
        root = np.sqrt(n_new)
        z_new = z[k] + g[k] - (root - np.sqrt(n_old)) * inv_alpha * w[k]
        z[k] = z_new
        n[k] = n_new
        # w = -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2), and 0 when |z| <= l1.
        w[k] = -np.copysign(max(abs(z_new) - l1, 0.0), z_new) / ((beta + root) * inv_alpha + l2)


@_jit
def _softmax_inplace(v: np.ndarray) -> None:
    top = v.max()
    total = 0.0
    for k in range(v.shape[0]):
        v[k] = np.exp(v[k] - top)
        total += v[k]
    for k in range(v.shape[0]):
        v[k] /= total


@_jit
def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    for r in range(logits.shape[0]):
        _softmax_inplace(logits[r])
    return logits


@_jit
def _predict_one(indices: np.ndarray, values: np.ndarray, dense: np.ndarray,
                 w_sparse: np.ndarray, w_dense: np.ndarray) -> np.ndarray:
    logits = np.zeros(w_sparse.shape[1])
    for a in range(indices.shape[0]):
        w = w_sparse[indices[a]]
        v = values[a]
        for k in range(logits.shape[0]):
            logits[k] += v * w[k]
    for j in range(dense.shape[0]):
        w = w_dense[j]
        v = dense[j]
        for k in range(logits.shape[0]):
            logits[k] += v * w[k]
    bias = w_dense[dense.shape[0]]  # the last dense row is the bias, x = 1
    for k in range(logits.shape[0]):
        logits[k] += bias[k]
    _softmax_inplace(logits)
    return logits


@_jit_inline
def _gradient(error: np.ndarray, v: float, g: np.ndarray, g_sq: np.ndarray) -> None:
    """g and g**2 of one feature with value `v`, for every class, into `g` and `g_sq`."""
    for k in range(error.shape[0]):
        g[k] = error[k] * v
        g_sq[k] = g[k] * g[k]


@_jit
def _learn_one(indices: np.ndarray, values: np.ndarray, dense: np.ndarray, y: int,
               z_s: np.ndarray, n_s: np.ndarray, w_s: np.ndarray, z_d: np.ndarray,
               n_d: np.ndarray, w_d: np.ndarray, touched: np.ndarray, alpha: float,
               beta: float, l1: float, l2: float) -> None:
    error = _predict_one(indices, values, dense, w_s, w_d)
    error[y] -= 1.0
    g = np.empty_like(error)
    g_sq = np.empty_like(error)
    for a in range(indices.shape[0]):
        v = values[a]
        if v == 0.0:  # Algorithm 1 only visits features with x_i != 0
            continue
        j = indices[a]
        touched[j] = True
        _gradient(error, v, g, g_sq)
        _step(z_s[j], n_s[j], w_s[j], g, g_sq, alpha, beta, l1, l2)
    for j in range(dense.shape[0] + 1):
        v = dense[j] if j < dense.shape[0] else 1.0  # the last row is the bias
        if v == 0.0:
            continue
        _gradient(error, v, g, g_sq)
        _step(z_d[j], n_d[j], w_d[j], g, g_sq, alpha, beta, l1, l2)


@_jit
def _add_sparse_logits(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                       w_sparse: np.ndarray, logits: np.ndarray) -> None:
    for r in range(indptr.shape[0] - 1):
        out = logits[r]
        for a in range(indptr[r], indptr[r + 1]):
            w = w_sparse[indices[a]]
            v = data[a]
            for k in range(w.shape[0]):
                out[k] += v * w[k]


@_jit
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
        e = error[r]
        for a in range(indptr[r], indptr[r + 1]):
            v = data[a]
            if v == 0.0:
                continue
            s = slot[indices[a]]
            acc, acc_sq = grad[s], grad_sq[s]
            for k in range(k_classes):
                g = e[k] * v
                acc[k] += g
                acc_sq[k] += g * g
    for s in range(used):
        j = rows[s]
        slot[j] = -1
        touched[j] = True
        _step(z[j], n[j], w[j], grad[s], grad_sq[s], alpha, beta, l1, l2)


@_jit
def _dense_step(grad: np.ndarray, grad_sq: np.ndarray, z: np.ndarray, n: np.ndarray,
                w: np.ndarray, alpha: float, beta: float, l1: float, l2: float) -> None:
    # A feature that was zero in every row has g**2 == 0: its step is a no-op.
    for j in range(grad.shape[0]):
        _step(z[j], n[j], w[j], grad[j], grad_sq[j], alpha, beta, l1, l2)
