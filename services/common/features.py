"""Per-user features from Feast: open a state folder's store, join point-in-time, materialize, read online.

One store per state folder: `open_store(state_dir)` opens `feature_repo/` with
repo_path=state_dir, so the registry, the SQLite online store and the parquet
sources all live under `state_dir/data/` (see feature_repo/definitions.py).

Writers: `open_store` applies the definitions to a file registry and may rewrite
the user table, so one process at a time should do it per state folder; readers
(serving) can open with `apply=False`. Reads and materialization go through the
feature service only: `apply` adds and updates but never deletes, so a registry
applied by older definitions keeps views nothing reads any more (`user_stats_fv`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureStore, FeatureView, Project
from feast.data_source import DataSource

from models.features import USER_FIELDS

log = logging.getLogger(__name__)
# Feast logs "Registry cache expired, so refreshing" at INFO on every uncached registry read.
logging.getLogger("feast.infra.registry.registry").setLevel(logging.WARNING)


class _FileRegistryWorks(logging.Filter):
    """Feast 0.67 warns that `serve_features_while_materializing` "typically has no effect" outside a SQL
    registry; its file registry honours it (tests/integration/test_feast.py reads while materializing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("serve_features_while_materializing" in message and "`registry_type` is" in message)


logging.getLogger("feast.repo_config").addFilter(_FileRegistryWorks())

FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
SERVICE = "user_features"
USERS_PATH = Path("data/users.parquet")  # relative to the state folder, as in definitions.py
_TIME = pa.timestamp("us", tz="UTC")
_USERS_SCHEMA = pa.schema([("user_id", pa.string()), *((name, pa.string()) for name in USER_FIELDS),
                           ("activity_level", pa.float64()), ("event_timestamp", _TIME), ("created", _TIME)])


def open_store(state_dir: Path, users: pd.DataFrame | None = None, repo: Path = FEATURE_REPO,
               apply: bool = True) -> FeatureStore:
    """Open the feature store of `state_dir`, writing `users` (if given) and registering the definitions."""
    state_dir, repo = Path(state_dir).resolve(), Path(repo).resolve()
    (state_dir / USERS_PATH).parent.mkdir(parents=True, exist_ok=True)
    if users is not None:
        if missing := {"user_id", "event_timestamp"} - set(users.columns):
            raise ValueError(f"users lacks columns {sorted(missing)}")
        # A table without a creation time (e.g. the user's own) is taken as created when it became valid.
        users = users if "created" in users else users.assign(created=users["event_timestamp"])
        _write_parquet(pa.Table.from_pandas(users, preserve_index=False), state_dir / USERS_PATH)
    elif not (state_dir / USERS_PATH).exists():
        _write_parquet(_USERS_SCHEMA.empty_table(), state_dir / USERS_PATH)
    store = FeatureStore(repo_path=str(state_dir), fs_yaml_file=repo / "feature_store.yaml")
    if apply:
        store.apply(_definitions(repo))
    return store


def historical_user_features(store: FeatureStore, entity_df: pd.DataFrame) -> pd.DataFrame:
    """`entity_df` (user_id, event_timestamp, ...) with the features as they were at each timestamp, same row order."""
    if missing := {"user_id", "event_timestamp"} - set(entity_df.columns):
        raise ValueError(f"entity_df lacks columns {sorted(missing)}")
    keys = pd.DataFrame({"user_id": entity_df["user_id"].astype(str).to_numpy(),
                         "event_timestamp": _ns_utc(entity_df["event_timestamp"]).to_numpy()})
    # Feast 0.67's file (Dask) store drops, rather than nulls, an entity row for which some view has rows but
    # none valid at its time (all later, or expired), and collapses rows sharing (user_id, event_timestamp).
    # So each view is asked separately for the distinct keys and joined back: every input row gets one output row.
    distinct = keys.drop_duplicates(ignore_index=True)
    joined = keys
    for view in _service(store).feature_view_projections:
        refs = [f"{view.name_to_use()}:{feature.name}" for feature in view.features]
        part = store.get_historical_features(entity_df=distinct, features=refs).to_df()
        part = part.assign(user_id=part["user_id"].astype(str), event_timestamp=_ns_utc(part["event_timestamp"]))
        joined = joined.merge(part, on=["user_id", "event_timestamp"], how="left", validate="many_to_one")
    features = joined.drop(columns=["user_id", "event_timestamp"])
    for name in USER_FIELDS:
        features[name] = features[name].astype(object).where(features[name].notna(), None)
    features.index = entity_df.index
    return pd.concat([entity_df, features], axis=1)


def materialize(store: FeatureStore, end: datetime, full: bool = False) -> None:
    """Copy offline rows up to `end` into the online store, from where each view's last run (or end - ttl) left off.

    Only the feature service's views: the others an older registry holds are read by nobody.
    `full` starts every view at `end - ttl` again: needed after a table was rewritten with rows
    older than the last run (a regenerated user table keeps its old valid-from times).
    """
    end = _utc(end)
    served = {projection.name for projection in _service(store).feature_view_projections}
    for view in store.list_feature_views():
        if view.name not in served:
            continue
        # Unlike materialize_incremental, a first run starts at `end - ttl`, not at wall-clock now - ttl,
        # so replayed or simulated time works too.
        window_start = end - (view.ttl or timedelta(days=365))
        start = _utc(window_start if full else (view.most_recent_end_time or window_start))
        if start >= end:
            continue
        with _printed_to_debug_log():
            store.materialize(start, end, feature_views=[view.name])
        log.info("materialized %s from %s to %s", view.name, start, end)


def online_user_features(store: FeatureStore, user_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """Latest features per user id; None for a user the store knows nothing about."""
    if not user_ids:
        return []
    response = store.get_online_features(features=_service(store),
                                         entity_rows=[{"user_id": str(u)} for u in user_ids])
    columns = response.to_dict()
    names = [c for c in columns if c != "user_id"]
    rows: list[dict[str, Any] | None] = []
    for i in range(len(user_ids)):
        row = {name: columns[name][i] for name in names}
        rows.append(row if any(v is not None for v in row.values()) else None)
    return rows


def user_fields(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The featurizer's user dict (USER_FIELDS that have a value) from one feature row; None if there are none."""
    if row is None:
        return None
    fields = {name: row[name] for name in USER_FIELDS if name in row and _present(row[name])}
    return fields or None


def user_records(frame: pd.DataFrame) -> list[dict[str, Any] | None]:
    """`user_fields` of every row of a feature frame, in order."""
    return [user_fields(row) for row in frame.to_dict("records")]


def _present(value: Any) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and value != value)


def _service(store: FeatureStore) -> FeatureService:
    # The cached registry is enough (the default re-reads the registry file on every call).
    return store.get_feature_service(SERVICE, allow_cache=True)


def _definitions(repo: Path) -> list[Any]:
    """Fresh Feast objects from `repo/definitions.py` (fresh, because `apply` mutates them per store)."""
    spec = importlib.util.spec_from_file_location("loopline_feature_definitions", repo / "definitions.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no Feast definitions at {repo / 'definitions.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Project, Entity, DataSource, FeatureView, FeatureService)
    return [obj for obj in vars(module).values() if isinstance(obj, kinds)]


def _write_parquet(table: pa.Table, path: Path) -> None:
    # Write-then-rename, so a reader never sees half a file.
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _ns_utc(times: pd.Series) -> pd.Series:
    # One timestamp type on both sides of the join back (Feast hands back nanoseconds in UTC).
    return pd.to_datetime(times, utc=True).astype("datetime64[ns, UTC]")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@contextlib.contextmanager
def _printed_to_debug_log() -> Iterator[None]:
    """Send what Feast prints (banners, tqdm bars) to the debug log; exceptions still propagate.

    It swaps the process-wide sys.stdout and sys.stderr, so it wraps only calls that print (materialize)
    and never the per-request paths that serving runs on many threads.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield
    if out.getvalue().strip():
        log.debug("feast: %s", out.getvalue().strip())
