"""Flow tasks that read data: the user's dataset or generated traffic, point-in-time user features from Feast.

Where a run's data comes from, in order: `data_path` when given; with
`from_champion` (scheduled and triggered retrains), the data the champion was
trained on, as its version records it; else generated traffic.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import Task, get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from flows.config import TrainConfig
from models.collected import Selection, select
from models.data import DatasetError, is_uri, load_dataset
from models.split import prepare
from models.traffic import TrafficConfig, generate
from services.common import features as feast_client
from services.common.examples import ExamplesTable
from services.common.settings import CommonSettings

GENERATOR = "generator:"  # data_uri prefix of generated traffic: generator:<scenario>?seed=..&n_events=..
RUN_ARTIFACT = "runs:/"  # rows an earlier run logged (a few-shot champion's draw), fetched through MLflow
COLUMNS = ("text", "label", "truth", "user_id", "ts", "split")


@dataclass(frozen=True)
class RecordedData:
    """Where a version's training data came from and how it was split: a retrain on the same data splits it
    the same way, so the champion is scored on rows it did not train on."""

    uri: str | None  # None: the champion records none
    seed: int
    holdout: float
    collected_since: float | None = None  # collected examples written since then are new to that version


@dataclass(frozen=True)
class Collected:
    """What a run took from the examples table."""

    selection: Selection
    uri: str
    table_version: int | None
    since: float
    until: float
    feedback_until: float | None = None  # the end of the drifted window an on-drift run was asked to train on

    @property
    def through(self) -> float:
        """The newest feedback time among the rows taken (seconds since the epoch)."""
        chosen = self.selection
        times = pd.concat([chosen.train["ts"], chosen.eval["ts"]])
        return float(times.max().timestamp())


@dataclass(frozen=True)
class Dataset:
    events: pd.DataFrame  # text, label, truth[, user_id, ts]: the rows used, training rows first
    users: pd.DataFrame | None
    cut: int  # rows before `cut` train, the rest evaluate
    classes: tuple[str, ...]  # sorted, from the data
    data_hash: str  # of the table as read (text, label)
    data_uri: str  # what a retrain reads again: a path or URI, or generator:<scenario>?...
    scenario: str  # of generated traffic, else "custom"
    how: str  # time, stratified, shots or given
    note: str  # how the rows were split, in one line
    split_seed: int = 0
    holdout: float = 0.2
    collected: Collected | None = None  # examples from the examples table among `events` (with an event_id)

    @property
    def generated(self) -> bool:
        return self.data_uri.startswith(GENERATOR)


def frame_hash(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


def _retry_unless_bad_data(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A dataset that fails validation fails the same way again: only I/O errors are retried."""
    try:
        state.result()
    except DatasetError:
        return False
    except Exception:
        return True
    return False


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_data)
def load_data(config: TrainConfig, recorded: RecordedData | None = None) -> Dataset:
    """Read the dataset (or generate traffic), validate it and split it into training and evaluation rows."""
    source = config.data_path
    split = config.split()
    if source is None and config.from_champion and recorded is not None and recorded.uri is not None:
        source, split = recorded.uri, replace(split, seed=recorded.seed, holdout=recorded.holdout)
    if source is not None and not source.startswith(GENERATOR):
        if not is_uri(source) and not source.startswith(RUN_ARTIFACT):
            source = str(Path(source).resolve())  # a retrain reads it again, from another working folder
        frame, users, scenario = _read(source), None, "custom"
        frame["truth"] = frame["label"]
        data_hash = frame_hash(frame[["text", "label"]])
    else:
        traffic = generate(generator_config(config, source))
        frame = traffic.events.rename(columns={"true_label": "truth"})
        users, scenario = traffic.users, traffic.config.scenario
        source = (f"{GENERATOR}{scenario}?seed={traffic.config.seed}&n_events={traffic.config.n_events}"
                  f"&n_users={traffic.config.n_users}")
        data_hash = frame_hash(frame[["text", "label"]])
    frame = frame[[c for c in COLUMNS if c in frame.columns]]
    prepared = prepare(frame, split, source=source)
    get_run_logger().info("%s: %d rows, %d classes; %s", source, len(prepared.frame), len(prepared.classes),
                          prepared.note)
    return Dataset(prepared.frame, users, prepared.cut, prepared.classes, data_hash, source, scenario,
                   prepared.how, prepared.note, split.seed, split.holdout)


def generator_config(config: TrainConfig, recorded: str | None) -> TrafficConfig:
    """Generated traffic as a recorded `generator:` URI names it (a retrain regenerates the champion's rows),
    else as the config says."""
    if recorded is None:
        return TrafficConfig(seed=config.seed, n_events=config.n_events, n_users=config.n_users,
                             scenario=config.scenario)
    scenario, _, query = recorded.removeprefix(GENERATOR).partition("?")
    params = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    return TrafficConfig(scenario=scenario, seed=int(params.get("seed", config.seed)),
                         n_events=int(params.get("n_events", config.n_events)),
                         n_users=int(params.get("n_users", config.n_users)))


def with_collected(data: Dataset, collected: Collected) -> Dataset:
    """`data` plus the collected examples: their training rows after the base's, their evaluation rows last."""
    chosen = collected.selection
    base = data.events
    train = pd.concat([base.iloc[: data.cut], chosen.train], ignore_index=True)
    events = pd.concat([train, base.iloc[data.cut:], chosen.eval], ignore_index=True)
    if "user_id" in events.columns:
        events["user_id"] = events["user_id"].fillna("")
    classes = tuple(sorted(set(data.classes) | set(chosen.admitted)))
    note = f"{data.note}; plus {chosen.describe()}"
    return replace(data, events=events, cut=len(train), classes=classes, note=note, collected=collected)


@task(retries=2, retry_delay_seconds=2)
def collected_examples(settings: CommonSettings, config: TrainConfig, recorded: RecordedData | None,
                       classes: tuple[str, ...]) -> Collected | None:
    """The examples table's rows written since `recorded.collected_since` (or the window the config names),
    selected for a model over `classes` (models/collected.py); None when there is nothing to add."""
    since = config.collected_since if config.collected_since is not None else (
        recorded.collected_since if recorded is not None else None)
    if not config.collected or since is None:
        return None
    until = config.collected_until if config.collected_until is not None else time.time()
    table = ExamplesTable(settings.examples_location)
    version = table.version()
    if version is None:
        get_run_logger().info("no examples table at %s yet: nothing collected to add", table.uri)
        return None
    where = f"written_at >= {float(since)!r} AND written_at < {float(until)!r}"
    if config.collected_feedback_until is not None:
        where += f" AND feedback_ts <= {float(config.collected_feedback_until)!r}"
    rows = table.read(where)
    selection = select(rows, classes, config.support())
    get_run_logger().info("examples table %s (version %d), rows written %s to %s%s: %s", table.uri, version,
                          _iso(since), _iso(until), _feedback_cut(config.collected_feedback_until),
                          selection.describe())
    if selection.rows == 0:
        return None
    return Collected(selection, table.uri, version, since, until, config.collected_feedback_until)


def _feedback_cut(feedback_until: float | None) -> str:
    return "" if feedback_until is None else f" with feedback by {_iso(feedback_until)}"


def _iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat(timespec="seconds")


def _read(source: str) -> pd.DataFrame:
    """A dataset at a path or URI; `runs:/` (the rows an earlier run recorded) through MLflow."""
    if not source.startswith(RUN_ARTIFACT):
        return load_dataset(source)
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise DatasetError(f"{source}: cannot be fetched from the registry ({exc})") from exc
        frame = load_dataset(Path(local))
    return frame


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
