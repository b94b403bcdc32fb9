"""Flow tasks that read data: generated or user traffic, point-in-time user features from Feast."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
from prefect import task

from flows.config import TrainConfig
from models.catalog import INTENTS
from models.data import load_dataset
from models.traffic import TrafficConfig, generate
from services.common import features as feast_client
from services.common.settings import CommonSettings


@dataclass(frozen=True)
class Dataset:
    events: pd.DataFrame  # text, label, truth, user_id, ts; time ordered
    users: pd.DataFrame | None
    cut: int  # rows before `cut` train, the rest evaluate
    data_hash: str
    scenario: str


def frame_hash(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


@task(retries=2, retry_delay_seconds=2)
def load_data(config: TrainConfig) -> Dataset:
    """Generate traffic or read the user's file; split by time into train and eval."""
    if config.data_path is not None:
        frame = load_dataset(config.data_path, labels=INTENTS)
        if "ts" not in frame.columns:
            frame["ts"] = pd.Timestamp.now(tz="UTC")
        frame["truth"] = frame["label"]
        users, scenario = None, "custom"
    else:
        traffic = generate(TrafficConfig(seed=config.seed, n_events=config.n_events, n_users=config.n_users,
                                         scenario=config.scenario))
        frame = traffic.events.rename(columns={"true_label": "truth"})
        users, scenario = traffic.users, config.scenario
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    columns = [c for c in ("text", "label", "truth", "user_id", "ts") if c in frame.columns]
    frame = frame[columns]
    cut = int(len(frame) * (1 - config.holdout))
    if cut < 1 or cut >= len(frame):
        raise ValueError(f"{len(frame)} rows cannot be split with holdout {config.holdout}")
    return Dataset(frame, users, cut, frame_hash(frame[["text", "label"]]), scenario)


@task(retries=2, retry_delay_seconds=2)
def join_user_features(data: Dataset, settings: CommonSettings) -> list[dict[str, Any] | None] | None:
    """Point-in-time user features from Feast for every event (what the user looked like then)."""
    if "user_id" not in data.events.columns or data.users is None:
        # Without a user table for this data, joining whatever an earlier run left in the store would be wrong.
        return None
    store = feast_client.open_store(settings.state_dir / "feast", users=data.users, repo=settings.feature_repo)
    entity = data.events[["user_id", "ts"]].rename(columns={"ts": "event_timestamp"})
    return feast_client.user_records(feast_client.historical_user_features(store, entity))


@task(retries=2, retry_delay_seconds=2)
def materialize_features(settings: CommonSettings) -> None:
    """Bring the online store up to date for serving (the whole window: the user table was just rewritten)."""
    store = feast_client.open_store(settings.state_dir / "feast", repo=settings.feature_repo)
    feast_client.materialize(store, pd.Timestamp.now(tz="UTC").to_pydatetime(), full=True)
