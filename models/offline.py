"""The offline part of the loop, end to end: traffic -> embed -> train head -> evaluate.

Trains on the first part of a `stable` stream (time order, reported labels),
evaluates on the held-out rest against the intents users meant, and evaluates
again on a drifting stream before and after its onset, so the report shows
whether drift actually hurts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from models.data import class_list
from models.encoder import Encoder
from models.evaluate import Evaluation, evaluate
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.traffic import Traffic, TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head, user_records

# track(description, total) returns a callback that is told how much got done.
Track = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class OfflineConfig:
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    drift: TrafficConfig = field(
        default_factory=lambda: TrafficConfig(n_events=6_000, scenario="new_phrasing", onset=0.5)
    )
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    head: HeadConfig = field(default_factory=HeadConfig)
    holdout: float = 0.2


@dataclass(frozen=True)
class OfflineResult:
    model: FTRLProximal
    holdout: Evaluation  # held-out stable traffic
    before_onset: Evaluation  # drifting stream, before its onset
    after_onset: Evaluation  # drifting stream, after its onset
    train: pd.DataFrame
    traffic: Traffic


def _noop_track(_description: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


def run_offline(config: OfflineConfig, encoder: Encoder, track: Track = _noop_track) -> OfflineResult:
    """Generate, embed, train and evaluate; `track` reports progress of the long steps."""
    traffic = generate(config.traffic)
    # Same users as the training stream, fresh events: only the drift differs.
    user_seed = config.traffic.seed if config.traffic.user_seed is None else config.traffic.user_seed
    drift_events = generate(replace(config.drift, seed=config.traffic.seed + 1,
                                    user_seed=user_seed, n_users=config.traffic.n_users)).events
    events = traffic.events
    cut = int(len(events) * (1 - config.holdout))
    train, holdout = events.iloc[:cut], events.iloc[cut:]

    texts = list(events["text"]) + list(drift_events["text"])
    embeddings = encoder.encode(texts, on_batch=track("embed", len(texts)))
    users = user_records(list(events["user_id"]) + list(drift_events["user_id"]), traffic.users)
    batch = featurize(texts, embeddings, config.spec, users)

    train_rows = np.arange(cut)
    total = len(train_rows) * config.head.epochs
    # The classes of the generated data (what users reported and what they meant), as the train flow takes them.
    classes = class_list([*events["label"], *events["true_label"], *drift_events["true_label"]])
    model = train_head(batch.take(train_rows), list(train["label"]), classes, config.head,
                       on_batch=track("train head", total))

    def score(rows: np.ndarray, truth: pd.Series) -> Evaluation:
        return evaluate(model.predict_proba_many(batch.take(rows)), list(truth), classes)

    offset = len(events)
    after = drift_events["after_onset"].to_numpy()
    return OfflineResult(
        model=model,
        holdout=score(np.arange(cut, offset), holdout["true_label"]),
        before_onset=score(offset + np.flatnonzero(~after), drift_events["true_label"][~after]),
        after_onset=score(offset + np.flatnonzero(after), drift_events["true_label"][after]),
        train=train,
        traffic=traffic,
    )

