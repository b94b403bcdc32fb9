"""FTRL-Proximal against a plain per-coordinate reference of Algorithm 1, plus contract checks."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import scipy.sparse as sp

from models.ftrl import Batch, Example, FTRLParams, FTRLProximal, HeadDelta

CLASSES = ("a", "b", "c", "d")
SPARSE_DIM, DENSE_DIM = 40, 3


class ReferenceFTRL:
    """McMahan et al. 2013, Algorithm 1, one coordinate at a time, with floats and dicts.

    A coordinate is (feature, class); features are ("s", j) sparse, ("d", j) dense, and
    the bias is the dense feature that is always 1.
    """

    def __init__(self, n_classes: int, p: FTRLParams) -> None:
        self.k, self.p = n_classes, p
        self.z: dict = defaultdict(float)
        self.n: dict = defaultdict(float)

    def weight(self, key) -> float:
        z, n = self.z[key], self.n[key]
        if abs(z) <= self.p.l1:
            return 0.0
        return -(z - math.copysign(self.p.l1, z)) / ((self.p.beta + math.sqrt(n)) / self.p.alpha
                                                    + self.p.l2)

    @staticmethod
    def features(x: Example) -> list:
        feats = [(("s", int(j)), float(v)) for j, v in zip(x.indices, x.values, strict=True)]
        dense = [] if x.dense is None else list(x.dense)
        feats += [(("d", j), float(v)) for j, v in enumerate([*dense, 1.0])]
        return [(f, v) for f, v in feats if v != 0.0]  # Algorithm 1 loops over i with x_i != 0

    def proba(self, feats, weights=None) -> list[float]:
        w = weights or {}
        logits = [sum(v * w.get((f, k), self.weight((f, k))) for f, v in feats)
                  for k in range(self.k)]
        top = max(logits)
        exps = [math.exp(t - top) for t in logits]
        return [e / sum(exps) for e in exps]

    def update(self, feats, y: int, p: list[float], weights: dict | None = None) -> None:
        for f, v in feats:
            for k in range(self.k):
                key = (f, k)
                w = weights[key] if weights is not None else self.weight(key)
                g = (p[k] - (1.0 if k == y else 0.0)) * v
                sigma = (math.sqrt(self.n[key] + g * g) - math.sqrt(self.n[key])) / self.p.alpha
                self.z[key] += g - sigma * w
                self.n[key] += g * g

    def learn_one(self, x: Example, y: int) -> None:
        feats = self.features(x)
        self.update(feats, y, self.proba(feats))

    def learn_frozen(self, xs: list[Example], ys: list[int]) -> None:
        """A loop of learn_one in which every example sees the weights of the batch start."""
        all_feats = [self.features(x) for x in xs]
        frozen = {(f, k): self.weight((f, k)) for feats in all_feats for f, _ in feats
                  for k in range(self.k)}
        probas = [self.proba(feats, frozen) for feats in all_feats]
        for feats, y, p in zip(all_feats, ys, probas, strict=True):
            self.update(feats, y, p, frozen)


def random_stream(seed: int, n: int, dense: bool = True) -> list[tuple[Example, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(len(CLASSES)))
        active = np.sort(rng.choice(SPARSE_DIM, size=int(rng.integers(1, 8)), replace=False))
        values = rng.normal(size=len(active))
        values[active % len(CLASSES) == k] += 1.5  # learnable signal
        emb = rng.normal(size=DENSE_DIM) + (k - 1.5) * 0.5 if dense else None
        if emb is not None and rng.random() < 0.2:
            emb[int(rng.integers(DENSE_DIM))] = 0.0  # zero features are skipped, not stepped
        out.append((Example(active, values, emb), k))
    return out


def assert_matches(model: FTRLProximal, ref: ReferenceFTRL) -> None:
    k = len(CLASSES)
    for kind, z, n, w in (("s", model.z_sparse, model.n_sparse, model.w_sparse),
                          ("d", model.z_dense, model.n_dense, model.w_dense)):
        ref_z, ref_n, ref_w = np.zeros_like(z), np.zeros_like(n), np.zeros_like(w)
        for j in range(z.shape[0]):
            for c in range(k):
                key = ((kind, j), c)
                ref_z[j, c], ref_n[j, c], ref_w[j, c] = ref.z[key], ref.n[key], ref.weight(key)
        np.testing.assert_allclose(z, ref_z, rtol=0, atol=1e-9)
        np.testing.assert_allclose(n, ref_n, rtol=0, atol=1e-9)
        np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-9)


PARAMS = {
    "no_l1": FTRLParams(alpha=0.3, beta=1.0, l1=0.0, l2=0.1),
    "with_l1": FTRLParams(alpha=0.3, beta=1.0, l1=0.8, l2=0.1),
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_learn_one_equals_algorithm_1(name: str) -> None:
    params = PARAMS[name]
    model = FTRLProximal(CLASSES, SPARSE_DIM, DENSE_DIM, params)
    ref = ReferenceFTRL(len(CLASSES), params)
    for x, y in random_stream(1, 400):
        model.learn_one(x, CLASSES[y])
        ref.learn_one(x, y)
    assert_matches(model, ref)
    x, _ = random_stream(2, 1)[0]
    np.testing.assert_allclose(list(model.predict_proba_one(x).values()),
                               ref.proba(ref.features(x)), atol=1e-9)


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_learn_many_equals_loop_with_weights_of_batch_start(name: str, batch_size: int) -> None:
    params = PARAMS[name]
    model = FTRLProximal(CLASSES, SPARSE_DIM, DENSE_DIM, params)
    one = FTRLProximal(CLASSES, SPARSE_DIM, DENSE_DIM, params)
    ref = ReferenceFTRL(len(CLASSES), params)
    stream = random_stream(3, 300)
    for start in range(0, len(stream), batch_size):
        chunk = stream[start : start + batch_size]
        xs, ys = [x for x, _ in chunk], [y for _, y in chunk]
        csr = sp.csr_matrix(
            (np.concatenate([x.values for x in xs]), np.concatenate([x.indices for x in xs]),
             np.cumsum([0] + [len(x.indices) for x in xs])), shape=(len(xs), SPARSE_DIM))
        model.learn_many(Batch(csr, np.stack([x.dense for x in xs])), [CLASSES[y] for y in ys])
        ref.learn_frozen(xs, ys)
        if batch_size == 1:
            one.learn_one(xs[0], CLASSES[ys[0]])
    assert_matches(model, ref)
    if batch_size == 1:  # a batch of one is learn_one (up to BLAS summation order)
        for name in ("z_sparse", "n_sparse", "z_dense", "n_dense"):
            np.testing.assert_allclose(getattr(model, name), getattr(one, name), rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_learn_in_batches_is_learn_many_on_each_run_of_rows(batch_size: int) -> None:
    stream = random_stream(4, 200)
    xs, labels = [x for x, _ in stream], [CLASSES[y] for _, y in stream]
    csr = sp.csr_matrix((np.concatenate([x.values for x in xs]), np.concatenate([x.indices for x in xs]),
                         np.cumsum([0] + [len(x.indices) for x in xs])), shape=(len(xs), SPARSE_DIM))
    whole = Batch(csr, np.stack([x.dense for x in xs]))
    stepped = FTRLProximal(CLASSES, SPARSE_DIM, DENSE_DIM, PARAMS["with_l1"])
    looped = FTRLProximal(CLASSES, SPARSE_DIM, DENSE_DIM, PARAMS["with_l1"])
    stepped.learn_in_batches(whole, labels, batch_size)
    for start in range(0, len(xs), batch_size):
        rows = slice(start, start + batch_size)
        looped.learn_many(whole.take(rows), labels[rows])
    for name in ("z_sparse", "n_sparse", "w_sparse", "z_dense", "n_dense", "w_dense"):
        np.testing.assert_array_equal(getattr(stepped, name), getattr(looped, name), err_msg=name)
    np.testing.assert_array_equal(stepped.delta().rows, looped.delta().rows)


def test_l1_gives_exact_zeros_where_z_is_small() -> None:
    params = PARAMS["with_l1"]
    model = FTRLProximal(CLASSES, SPARSE_DIM, DENSE_DIM, params)
    for x, y in random_stream(4, 400):
        model.learn_one(x, CLASSES[y])
    touched = model.n_sparse > 0
    small = np.abs(model.z_sparse) <= params.l1
    assert (model.w_sparse[small] == 0.0).all()
    assert (model.w_sparse[~small] != 0.0).all()
    assert (touched & small).sum() > 0.1 * touched.sum(), "l1 should zero a real share"
    dense_model = FTRLProximal(CLASSES, SPARSE_DIM, DENSE_DIM, PARAMS["no_l1"])
    for x, y in random_stream(4, 400):
        dense_model.learn_one(x, CLASSES[y])
    assert (dense_model.w_sparse[dense_model.n_sparse > 0] != 0.0).mean() > 0.99


def trained(seed: int = 5, sparse_dim: int = SPARSE_DIM) -> FTRLProximal:
    model = FTRLProximal(CLASSES, sparse_dim, DENSE_DIM, PARAMS["with_l1"])
    for x, y in random_stream(seed, 300):
        model.learn_one(x, CLASSES[y])
    return model


def test_survives_save_and_load(tmp_path) -> None:
    model = trained()
    model.save(tmp_path / "head.npz")
    loaded = FTRLProximal.load(tmp_path / "head.npz")
    for name in ("z_sparse", "n_sparse", "w_sparse", "z_dense", "n_dense", "w_dense"):
        np.testing.assert_array_equal(getattr(model, name), getattr(loaded, name))
    assert loaded.classes == model.classes and loaded.params == model.params
    for x, y in random_stream(6, 50):  # and keeps learning identically
        model.learn_one(x, CLASSES[y])
        loaded.learn_one(x, CLASSES[y])
    np.testing.assert_array_equal(model.w_dense, loaded.w_dense)
    np.testing.assert_array_equal(model.w_sparse, loaded.w_sparse)


def test_does_not_mutate_its_input() -> None:
    model = trained()
    stream = random_stream(7, 20)
    x, y = stream[0]
    before = (x.indices.copy(), x.values.copy(), x.dense.copy())
    model.predict_proba_one(x)
    model.learn_one(x, CLASSES[y])
    for a, b in zip(before, x, strict=True):
        np.testing.assert_array_equal(a, b)
    csr = sp.random(5, SPARSE_DIM, density=0.2, format="csr", random_state=0)
    dense = np.ones((5, DENSE_DIM))
    csr_before, dense_before = csr.copy(), dense.copy()
    model.learn_many(Batch(csr, dense), ["a", "b", "c", "d", "a"])
    assert (csr != csr_before).nnz == 0
    np.testing.assert_array_equal(dense, dense_before)


def test_tolerates_unseen_and_missing_features() -> None:
    model = trained(sparse_dim=2 * SPARSE_DIM)  # the stream only uses the first half
    unseen = np.flatnonzero(model.n_sparse.sum(axis=1) == 0)
    assert len(unseen), "test needs a feature the model never saw"
    proba = model.predict_proba_one(Example(unseen[:2], np.ones(2), None))
    assert abs(sum(proba.values()) - 1) < 1e-12
    model.learn_one(Example(unseen[:2], np.ones(2), None), "b")  # dense missing: zeros
    model.learn_one(Example(np.array([], np.int64), np.array([]), None), "a")  # nothing but bias
    assert model.predict_one(Example(np.array([], np.int64), np.array([]))) in CLASSES


@pytest.mark.parametrize(
    ("example", "label", "message"),
    [
        (Example(np.array([1]), np.array([1.0])), "zzz", "unknown label"),
        (Example(np.array([SPARSE_DIM]), np.array([1.0])), "a", "out of range"),
        (Example(np.array([1, 1]), np.array([1.0, 1.0])), "a", "unique"),
        (Example(np.array([1]), np.array([1.0]), np.ones(DENSE_DIM + 1)), "a", "shape"),
    ],
)
def test_bad_input_is_refused_with_a_reason(example: Example, label: str, message: str) -> None:
    model = trained()
    state = model.z_sparse.copy()
    with pytest.raises(ValueError, match=message):
        model.learn_one(example, label)
    np.testing.assert_array_equal(state, model.z_sparse)


def test_delta_since_mark_carries_exactly_the_changed_coordinates() -> None:
    model = trained()
    serving_sparse, serving_dense = model.w_sparse.copy(), model.w_dense.copy()
    model.mark()
    assert len(model.delta().rows) == 0 and model.delta().dense_weights is None
    for x, y in random_stream(8, 5):
        model.learn_one(x, CLASSES[y])
    delta = HeadDelta.from_bytes(model.delta().to_bytes())
    changed = np.flatnonzero((serving_sparse != model.w_sparse).any(axis=1))
    assert set(changed) <= set(delta.rows.tolist())
    serving_sparse[delta.rows] = delta.sparse_weights
    serving_dense[:] = delta.dense_weights
    np.testing.assert_array_equal(serving_sparse, model.w_sparse)
    np.testing.assert_array_equal(serving_dense, model.w_dense)


def test_restore_undoes_learning_exactly_and_bytes_round_trip() -> None:
    rng = np.random.default_rng(5)
    model = FTRLProximal(("a", "b", "c"), sparse_dim=64, dense_dim=4)
    x = Batch(sp.random(30, 64, density=0.1, random_state=1, format="csr"), rng.normal(size=(30, 4)))
    model.learn_many(x, rng.integers(3, size=30))
    before = FTRLProximal.from_bytes(model.to_bytes())
    state = model.state_of(x.sparse.tocsr().indices)
    model.learn_many(x, rng.integers(3, size=30))
    assert not np.array_equal(model.w_sparse, before.w_sparse)
    model.restore(state)
    for name in ("z_sparse", "n_sparse", "w_sparse", "z_dense", "n_dense", "w_dense"):
        np.testing.assert_array_equal(getattr(model, name), getattr(before, name))
