"""Feature hashing: stable across processes, configurable, and what it says it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from models.features import FeatureSpec, feature_names, hash_batch, hash_features

TEXTS = ["Turn on WiFi!", "text mom i'm running late", "navigate to the airport", "ß café ㎞"]
USER = {"locale": "en_GB", "device": "ios", "fav_app_1": "spotify", "activity_tier": None}

SCRIPT = """
import json, sys
from models.features import FeatureSpec, hash_features
user = json.loads(sys.argv[2])
out = [[v.indices.tolist(), v.values.tolist()]
       for v in (hash_features(t, user, FeatureSpec(bits=int(sys.argv[1])))
                 for t in json.loads(sys.argv[3]))]
print(json.dumps(out))
"""


def in_subprocess(bits: int, hash_seed: str) -> list:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bits), json.dumps(USER), json.dumps(TEXTS)],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(out.stdout)


def test_identical_across_processes_with_different_hash_salts() -> None:
    a, b = in_subprocess(18, "1"), in_subprocess(18, "999")
    here = [[v.indices.tolist(), v.values.tolist()]
            for v in (hash_features(t, USER, FeatureSpec(bits=18)) for t in TEXTS)]
    assert a == b == here


@pytest.mark.parametrize("bits", [10, 18, 24])
def test_bit_width_bounds_the_indices(bits: int) -> None:
    x = hash_features("set an alarm for 7 am please", USER, FeatureSpec(bits=bits))
    assert x.indices.max() < 2**bits
    assert (np.diff(x.indices) > 0).all(), "sorted and unique"
    assert np.isclose((x.values**2).sum(), 1.0)


def test_features_cover_words_bigrams_chars_and_user() -> None:
    names = feature_names("Turn on wifi", USER, FeatureSpec())
    assert {"w:turn", "w2:turn on", "c3:<tu", "c4:ifi>", "u:device=ios"} <= set(names)
    assert not any(n.startswith("u:activity_tier") for n in names), "missing values are skipped"


def test_text_normalisation_makes_case_and_width_irrelevant() -> None:
    spec = FeatureSpec()
    a, b = hash_features("TURN ON WIFI", None, spec), hash_features("turn on wifi", None, spec)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_signs_make_collisions_cancel_in_expectation() -> None:
    spec = FeatureSpec(bits=16, word_ngrams=(1,), char_ngrams=())  # one feature per text
    x = hash_batch([f"word{i}" for i in range(4000)], None, spec)
    assert x.nnz == 4000
    assert abs(np.sign(x.data).mean()) < 0.05


def test_empty_and_unknown_user_are_fine() -> None:
    x = hash_features("   ", None, FeatureSpec())
    assert len(x.indices) == 0
    batch = hash_batch(["hello", "there"], [None, {"device": "watch"}], FeatureSpec())
    assert batch.shape == (2, 2**18)


def test_spec_round_trips_through_a_manifest() -> None:
    spec = FeatureSpec(bits=20, char_ngrams=(4,))
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="bits"):
        FeatureSpec(bits=40)
