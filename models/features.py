"""Signed feature hashing of text n-grams and user attributes.

Each feature is a string with a namespace (`w:turn`, `w2:turn on`, `c3:urn`,
`u:device=ios`) hashed with MurmurHash3 (x86, 32 bit, fixed seed): the low
`bits` give the index and the top bit the sign, so collisions cancel in
expectation. MurmurHash3 is specified byte for byte, so the same text gives
the same features in every process and on every machine; Python's `hash()`
is salted per process and is never used.

Values are term counts (with their signs), scaled so the whole vector has
unit L2 norm, which keeps FTRL's per-coordinate learning rates comparable
between short and long utterances.

>>> spec = FeatureSpec(bits=18)
>>> x = hash_features("Turn on WiFi!", {"device": "ios"}, spec)
>>> len(x.indices), round(float((x.values ** 2).sum()), 6)
(23, 1.0)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import mmh3
import numpy as np
import scipy.sparse as sp

USER_FIELDS: tuple[str, ...] = ("locale", "device", "fav_app_1", "fav_app_2", "fav_app_3",
                                "activity_tier", "top_intent")
_TOKEN = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class FeatureSpec:
    """What gets hashed and into how many buckets; stored in every bundle manifest."""

    bits: int = 18
    word_ngrams: tuple[int, ...] = (1, 2)
    char_ngrams: tuple[int, ...] = (3, 4)
    user_fields: tuple[str, ...] = USER_FIELDS
    seed: int = 20130811
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 30:
            raise ValueError(f"bits must be between 8 and 30, got {self.bits}")
        if any(n < 1 for n in (*self.word_ngrams, *self.char_ngrams)):
            raise ValueError("n-gram sizes must be positive")

    @property
    def dim(self) -> int:
        return 1 << self.bits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            bits=int(data["bits"]),
            word_ngrams=tuple(data["word_ngrams"]),
            char_ngrams=tuple(data["char_ngrams"]),
            user_fields=tuple(data["user_fields"]),
            seed=int(data["seed"]),
            extra=dict(data.get("extra", {})),
        )


class SparseVector(NamedTuple):
    """Sorted unique indices with their values."""

    indices: np.ndarray  # int64
    values: np.ndarray  # float64


def normalize_text(text: str) -> str:
    """Unicode-normalise and lower-case; what both training and serving hash."""
    return unicodedata.normalize("NFKC", text).lower().strip()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize_text(text))


def feature_names(text: str, user: Mapping[str, Any] | None, spec: FeatureSpec) -> list[str]:
    """The namespaced feature strings for one example, before hashing."""
    words = tokens(text)
    names: list[str] = []
    for n in spec.word_ngrams:
        prefix = "w:" if n == 1 else f"w{n}:"
        names.extend(prefix + " ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    for word in words:
        padded = f"<{word}>"
        for n in spec.char_ngrams:
            names.extend(f"c{n}:{padded[i : i + n]}" for i in range(len(padded) - n + 1))
    if user:
        for name in spec.user_fields:
            value = user.get(name)
            if value is not None and value == value and value != "":  # skip None, NaN, ""
                names.append(f"u:{name}={value}")
    return names


def hash_features(text: str, user: Mapping[str, Any] | None, spec: FeatureSpec) -> SparseVector:
    """Hash one example into a unit-norm signed sparse vector."""
    mask = spec.dim - 1
    acc: dict[int, float] = {}
    for name in feature_names(text, user, spec):
        h = mmh3.hash(name, spec.seed, signed=False)
        index = h & mask
        acc[index] = acc.get(index, 0.0) + (-1.0 if h >> 31 else 1.0)
    if not acc:
        return SparseVector(np.empty(0, np.int64), np.empty(0, np.float64))
    indices = np.fromiter(acc.keys(), np.int64, len(acc))
    values = np.fromiter(acc.values(), np.float64, len(acc))
    order = np.argsort(indices)
    indices, values = indices[order], values[order]
    keep = values != 0.0  # opposite-signed collisions cancel exactly
    indices, values = indices[keep], values[keep]
    norm = float(np.sqrt((values**2).sum()))
    return SparseVector(indices, values / norm if norm > 0 else values)


def hash_batch(
    texts: Sequence[str], users: Sequence[Mapping[str, Any] | None] | None, spec: FeatureSpec
) -> sp.csr_matrix:
    """Hash many examples into a CSR matrix of shape (len(texts), 2**bits)."""
    if users is not None and len(users) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(users)} user rows")
    vectors = [hash_features(t, users[i] if users is not None else None, spec)
               for i, t in enumerate(texts)]
    return stack(vectors, spec.dim)


def stack(vectors: Sequence[SparseVector], dim: int) -> sp.csr_matrix:
    """Stack sparse vectors into one CSR matrix without copying per row."""
    lengths = np.fromiter((len(v.indices) for v in vectors), np.int64, len(vectors))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    if len(vectors):
        indices = np.concatenate([v.indices for v in vectors]).astype(np.int64)
        data = np.concatenate([v.values for v in vectors])
    else:
        indices, data = np.empty(0, np.int64), np.empty(0, np.float64)
    return sp.csr_matrix((data, indices, indptr), shape=(len(vectors), dim))
