"""The demo on your own data: a few-shot champion, then the rest of your utterances as live traffic.

The champion trains on `shots` rows of every intent (the train flow's seeded draw,
`models.split.prepare`), as at a product launch. Every other row of the file is
replayed as a predict request, shuffled (a file sorted by label would otherwise
arrive one intent at a time), and the row's label comes back as the user's feedback.
Rows without `user_id` get made-up users, seeded, so per-user trust and the feedback
model have someone to attribute requests to; time is the replay's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd

from models.data import load_dataset
from models.split import SplitConfig, prepare

N_USERS = 2_000


def replay_requests(source: str, shots: int, seed: int, limit: int | None = None) -> pd.DataFrame:
    """The rows the few-shot champion did not train on, shuffled: text, user_id, label, true_label, after_onset."""
    frame = load_dataset(source)
    trained = set(prepare(frame, SplitConfig(seed=seed, shots=shots), source=source).train["text"])
    rest = frame[~frame["text"].isin(trained)]
    rest = rest.sample(frac=1.0, random_state=np.random.default_rng([seed, 11]).integers(2**31)).reset_index(
        drop=True)
    if limit is not None:
        rest = rest.iloc[:limit]
    if "user_id" not in rest.columns or (rest["user_id"] == "").all():
        rng = np.random.default_rng([seed, 13])
        rest = rest.assign(user_id=[f"u{i:05d}" for i in rng.integers(0, N_USERS, len(rest))])
    return pd.DataFrame({"text": rest["text"], "user_id": rest["user_id"], "label": rest["label"],
                         "true_label": rest["label"], "after_onset": False})


def held_out_rows(source: str) -> pd.DataFrame:
    """A test file (text, label) the demo scores through serving before and after the replay."""
    return load_dataset(source)[["text", "label"]]


@dataclass(frozen=True)
class TestScore:
    accuracy: float
    answered: float  # share not answered with fallback
    precision: float | None  # accuracy of the answered requests
    version: str  # the model version that answered (the last chunk's)
    n: int


def score_over_http(serving_url: str, rows: pd.DataFrame, chunk: int = 64) -> TestScore:
    """Send every test row to serving's batch endpoint and score the answers against the labels.

    These requests are logged to `predictions` like any other; no feedback follows them."""
    correct, answered, version = [], [], ""
    with httpx.Client(base_url=serving_url, timeout=120) as http:
        for start in range(0, len(rows), chunk):
            part = rows.iloc[start:start + chunk]
            response = http.post("/v1/predict/batch", json={"items": [{"text": t} for t in part["text"]]})
            response.raise_for_status()
            for answer, label in zip(response.json()["predictions"], part["label"], strict=True):
                correct.append(answer["intent"] == label)
                answered.append(not answer["fallback"])
                version = answer["model_version"]
    right, said = np.array(correct), np.array(answered)
    return TestScore(float(right.mean()), float(said.mean()), float(right[said].mean()) if said.any() else None,
                     version, len(right))
