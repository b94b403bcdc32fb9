"""Feast on SQLite in a temporary state folder: point-in-time joins, materialization, online reads, and a
state folder whose registry still holds the per-user stats view of earlier definitions."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast.data_source import PushMode
from feast.feature_view import FeatureViewState

from models.features import USER_FIELDS, FeatureSpec, hash_features
from models.traffic import TrafficConfig, generate
from services.common.features import (
    FEATURE_REPO,
    historical_user_features,
    materialize,
    online_user_features,
    open_store,
    user_fields,
    user_records,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 10, tzinfo=UTC)


def profile(user_id: str, valid_from: datetime, device: str, created: datetime | None = None) -> dict:
    return {"user_id": user_id, "locale": "en_GB", "device": device, "fav_app_1": "spotify",
            "fav_app_2": "maps", "fav_app_3": "camera", "activity_level": 1.5, "activity_tier": "medium",
            "top_intent": "play_music", "event_timestamp": valid_from, "created": created or valid_from}


@pytest.fixture
def users() -> pd.DataFrame:
    """u1 switches from android to ios at T1; u2 has one profile from T0."""
    return pd.DataFrame([profile("u1", T0, "android"), profile("u1", T1, "ios"), profile("u2", T0, "android")])


def test_historical_features_are_point_in_time_correct(tmp_path: Path, users: pd.DataFrame) -> None:
    # A later-created row with the same valid-from time corrects u2's profile.
    corrected = profile("u2", T0, "ios", created=T0 + timedelta(hours=1))
    store = open_store(tmp_path, pd.concat([users, pd.DataFrame([corrected])], ignore_index=True))
    ttl = store.get_feature_view("user_profile_fv").ttl
    cases = [  # (user, when, expected device), in no particular time order
        ("u1", T1 + timedelta(hours=1), "ios"),
        ("u1", T1 + timedelta(hours=1), "ios"),  # the same request twice gets two rows
        ("u1", T0 - timedelta(days=1), None),  # before the first profile row
        ("u1", T0 + timedelta(days=1), "android"),
        ("u1", T1, "ios"),  # a row is valid from its own timestamp on
        ("nobody", T1, None),
        ("u2", T0 + ttl - timedelta(days=1), "ios"),
        ("u2", T0 + ttl + timedelta(days=1), None),  # the profile has expired
    ]
    entity_df = pd.DataFrame({"user_id": [c[0] for c in cases], "event_timestamp": [c[1] for c in cases]},
                             index=[10 * i + 7 for i in range(len(cases))])

    joined = historical_user_features(store, entity_df)

    assert joined.index.tolist() == entity_df.index.tolist()
    assert joined["user_id"].tolist() == entity_df["user_id"].tolist()
    assert joined["device"].tolist() == [c[2] for c in cases]
    assert set(joined.columns) == {"user_id", "event_timestamp", *USER_FIELDS, "activity_level"}
    records = user_records(joined)
    assert records[2] is None and records[5] is None
    assert records[0] == {"locale": "en_GB", "device": "ios", "fav_app_1": "spotify", "fav_app_2": "maps",
                          "fav_app_3": "camera", "activity_tier": "medium", "top_intent": "play_music"}


def test_materialize_then_online_read_gives_latest_values(tmp_path: Path, users: pd.DataFrame) -> None:
    store = open_store(tmp_path, users)

    materialize(store, T0 + timedelta(days=1))
    assert online_user_features(store, ["u1"])[0]["device"] == "android"
    materialize(store, T1 + timedelta(days=1))  # picks up where the last run ended
    u1, u2, nobody = online_user_features(store, ["u1", "u2", "nobody"])

    assert u1 is not None and u1["device"] == "ios" and u1["activity_level"] == pytest.approx(1.5)
    assert u2 is not None and u2["device"] == "android"
    assert nobody is None
    assert online_user_features(store, []) == []
    assert user_fields(nobody) is None and user_fields(u1)["device"] == "ios"


def test_a_reader_gets_the_last_materialized_values_while_a_materialization_runs(tmp_path: Path,
                                                                                  users: pd.DataFrame) -> None:
    """A retrain materializes while serving reads: the view's MATERIALIZING state in the shared registry must
    not fail the reads of another process's store."""
    writer = open_store(tmp_path, users)
    materialize(writer, T0 + timedelta(days=1))
    view = writer.get_feature_view("user_profile_fv")
    view.state = FeatureViewState.MATERIALIZING  # what `materialize` commits to the registry until it is done
    writer.registry.apply_feature_view(view, writer.project, commit=True)
    reader = open_store(tmp_path, apply=False)
    assert reader.get_feature_view("user_profile_fv").state == FeatureViewState.MATERIALIZING
    assert online_user_features(reader, ["u1"])[0]["device"] == "android"


# The per-user stats view as feature_repo/definitions.py declared it until it was dropped (bench/user_stats.py
# measured it to help no stream), appended to today's definitions to write a state folder as that code did.
EARLIER_STATS_VIEW = """
from feast import PushSource
from feast.types import Int64

user_stats_source = FileSource(name="user_stats_source", path="data/user_stats.parquet",
                               timestamp_field="event_timestamp", created_timestamp_column="created")
user_stats_push = PushSource(name="user_stats_push", batch_source=user_stats_source)
user_stats_fv = FeatureView(name="user_stats_fv", entities=[user], ttl=timedelta(days=90), online=True,
                            source=user_stats_push, schema=[Field(name="corrections_count", dtype=Int64),
                                                            Field(name="last_corrected_intent", dtype=String)])
user_features = FeatureService(name="user_features", features=[user_profile_fv, user_stats_fv])
"""
_TIME = pa.timestamp("us", tz="UTC")
EARLIER_STATS_SCHEMA = pa.schema([("user_id", pa.string()), ("corrections_count", pa.int64()),
                                  ("last_corrected_intent", pa.string()), ("event_timestamp", _TIME),
                                  ("created", _TIME)])


def test_a_state_folder_whose_registry_still_has_the_stats_view_opens_and_reads(tmp_path: Path,
                                                                                 users: pd.DataFrame) -> None:
    earlier = tmp_path / "earlier_repo"
    shutil.copytree(FEATURE_REPO, earlier)
    with (earlier / "definitions.py").open("a") as definitions:
        definitions.write(EARLIER_STATS_VIEW)
    state = tmp_path / "state"
    (state / "data").mkdir(parents=True)
    pq.write_table(EARLIER_STATS_SCHEMA.empty_table(), state / "data" / "user_stats.parquet")
    before = open_store(state, users, repo=earlier)
    materialize(before, T1 + timedelta(days=1))
    before.push("user_stats_push", pd.DataFrame({
        "user_id": ["u1"], "corrections_count": [2], "last_corrected_intent": ["navigate"],
        "event_timestamp": [pd.Timestamp(T1)], "created": [pd.Timestamp(T1)]}), to=PushMode.ONLINE_AND_OFFLINE)
    assert online_user_features(before, ["u1"])[0]["corrections_count"] == 2
    (state / "data" / "user_stats.parquet").unlink()  # so that any read of the stats' offline copy would fail

    store = open_store(state)  # today's definitions applied over that registry
    assert store.get_feature_view("user_stats_fv").name == "user_stats_fv", "apply does not delete it"
    service = store.get_feature_service("user_features")
    assert [view.name for view in service.feature_view_projections] == ["user_profile_fv"]
    stats_materialized = store.get_feature_view("user_stats_fv").most_recent_end_time
    materialize(store, T1 + timedelta(days=2), full=True)
    assert store.get_feature_view("user_profile_fv").most_recent_end_time == T1 + timedelta(days=2)
    assert store.get_feature_view("user_stats_fv").most_recent_end_time == stats_materialized, "left alone"

    joined = historical_user_features(store, pd.DataFrame({"user_id": ["u1", "u2"], "event_timestamp": [T1, T1]}))
    assert set(joined.columns) == {"user_id", "event_timestamp", *USER_FIELDS, "activity_level"}
    assert joined["device"].tolist() == ["ios", "android"]
    for reader in (store, open_store(state, apply=False)):  # serving opens without applying
        u1, nobody = online_user_features(reader, ["u1", "nobody"])
        assert u1 is not None and set(u1) == {*USER_FIELDS, "activity_level"} and u1["device"] == "ios"
        assert nobody is None


def test_generated_user_table_round_trips(tmp_path: Path) -> None:
    traffic = generate(TrafficConfig(seed=3, n_users=40, n_events=300))
    store = open_store(tmp_path, traffic.users)
    events = traffic.events.sample(frac=1.0, random_state=0)  # shuffled: order must still be kept

    joined = historical_user_features(store, events[["user_id", "ts"]].rename(columns={"ts": "event_timestamp"}))

    table = traffic.users.set_index("user_id")
    expected = table.loc[events["user_id"], list(USER_FIELDS)].to_dict("records")
    assert user_records(joined) == expected
    assert joined["activity_level"].tolist() == table.loc[events["user_id"], "activity_level"].tolist()
    # What the featurizer gets is exactly what it would get from the user table.
    spec = FeatureSpec(bits=12)
    text = events["text"].iloc[0]
    served, truth = hash_features(text, user_records(joined)[0], spec), hash_features(text, expected[0], spec)
    assert served.indices.tolist() == truth.indices.tolist() and served.values.tolist() == truth.values.tolist()
    assert len(truth.indices) > len(hash_features(text, None, spec).indices)  # the user fields did count
