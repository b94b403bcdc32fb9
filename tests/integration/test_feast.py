"""Feast on SQLite in a temporary state folder: point-in-time joins, materialization, online reads, pushes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from models.features import USER_FIELDS, FeatureSpec, hash_features
from models.traffic import TrafficConfig, generate
from services.common.features import (
    historical_user_features,
    materialize,
    online_user_features,
    open_store,
    push_user_stats,
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


def stats(user_id: str, count: int, intent: str, at: datetime) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [user_id], "corrections_count": [count], "last_corrected_intent": [intent],
                         "event_timestamp": [at]})


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
    assert joined["corrections_count"].isna().all()
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
    assert u2 is not None and u2["corrections_count"] is None  # no stats pushed yet
    assert nobody is None
    assert online_user_features(store, []) == []
    assert user_fields(nobody) is None and user_fields(u1)["device"] == "ios"


def test_pushed_stats_are_visible_online_and_offline(tmp_path: Path, users: pd.DataFrame) -> None:
    store = open_store(tmp_path, users)
    push_user_stats(store, stats("u1", 1, "set_alarm", T1))
    push_user_stats(store, stats("u1", 2, "navigate", T1 + timedelta(hours=2)))
    push_user_stats(store, stats("newcomer", 1, "take_photo", T1))

    u1, newcomer = online_user_features(store, ["u1", "newcomer"])
    assert (u1["corrections_count"], u1["last_corrected_intent"]) == (2, "navigate")
    assert u1["device"] is None  # pushes do not need the profile to be materialized
    assert newcomer is not None and newcomer["corrections_count"] == 1

    when = [T1 - timedelta(hours=1), T1 + timedelta(hours=1), T1 + timedelta(hours=3)]
    joined = historical_user_features(store, pd.DataFrame({"user_id": "u1", "event_timestamp": when}))
    assert joined["corrections_count"].tolist() == [pd.NA, 1, 2]
    assert joined["last_corrected_intent"].tolist() == [None, "set_alarm", "navigate"]
    assert joined["device"].tolist() == ["android", "ios", "ios"]  # no stats yet does not hide the profile

    reopened = open_store(tmp_path)  # the state folder keeps users, stats and the online store
    assert online_user_features(reopened, ["u1"])[0]["corrections_count"] == 2
    assert historical_user_features(reopened, pd.DataFrame({"user_id": ["u1"], "event_timestamp": [T1]}))[
        "device"].tolist() == ["ios"]


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
