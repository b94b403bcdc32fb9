"""The traffic generator: deterministic, and each drift scenario changes what it claims."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from models import catalog
from models.traffic import TrafficConfig, generate

N_EVENTS = 6_000


@pytest.fixture(scope="module")
def streams() -> dict[str, pd.DataFrame]:
    return {s: generate(TrafficConfig(seed=3, n_events=N_EVENTS, scenario=s, onset=0.5,
                                      strength=0.6)).events
            for s in ("stable", "new_phrasing", "new_app", "prior_shift", "label_flip")}


def halves(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return events[~events["after_onset"]], events[events["after_onset"]]


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    config = TrafficConfig(seed=11, n_events=800, n_users=300, scenario="new_app")
    a, b = generate(config), generate(config)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.users, b.users)
    c = generate(TrafficConfig(seed=12, n_events=800, n_users=300, scenario="new_app"))
    assert (a.events["text"] != c.events["text"]).mean() > 0.5


def test_defaults_cover_the_use_case() -> None:
    traffic = generate(TrafficConfig(n_events=3_000))
    assert len(catalog.INTENTS) >= 20
    assert set(traffic.events["true_label"]) == set(catalog.INTENTS)
    users = traffic.users
    assert len(users) >= 2_000 and users["user_id"].is_unique
    for column in ("locale", "device", "fav_app_1", "activity_level", "event_timestamp"):
        assert users[column].notna().all()
    events = traffic.events
    assert events["event_id"].is_unique
    assert events["ts"].is_monotonic_increasing
    assert set(events["user_id"]) <= set(users["user_id"])
    # Habits are real: users open their favourite apps far more often than chance.
    opens = events[events["template_id"].str.startswith("open_app/")].merge(users, on="user_id")
    favourite = [any(row[f"fav_app_{i}"] in row["text"] for i in (1, 2, 3))
                 for _, row in opens.iterrows()]
    assert np.mean(favourite) > 0.5  # chance is about 3/24


def test_every_intent_has_new_phrasings_with_fresh_words() -> None:
    assert set(catalog.NEW_PHRASINGS) == set(catalog.TEMPLATES) == set(catalog.INTENTS)
    assert not set(catalog.APPS) & set(catalog.NEW_APPS)


def _tokens(texts: pd.Series) -> list[str]:
    return [t for text in texts for t in re.findall(r"[a-z']+", text)]


def _oov_rate(events: pd.DataFrame) -> float:
    before, after = halves(events)
    vocab = set(_tokens(before["text"]))
    after_tokens = _tokens(after["text"])
    return sum(t not in vocab for t in after_tokens) / len(after_tokens)


def test_new_phrasing_brings_unseen_wordings(streams) -> None:
    before, after = halves(streams["new_phrasing"])
    assert not before["template_id"].str.contains("/new/").any()
    share = after["template_id"].str.contains("/new/").mean()
    assert share == pytest.approx(0.6, abs=0.04)
    assert _oov_rate(streams["stable"]) < 0.01  # typos only
    assert _oov_rate(streams["new_phrasing"]) > 0.08


def _mentions_new_app(texts: pd.Series) -> pd.Series:
    pattern = r"\b(?:" + "|".join(catalog.NEW_APPS) + r")\b"
    return texts.str.contains(pattern)


def test_new_app_brings_unseen_app_names(streams) -> None:
    before, after = halves(streams["new_app"])
    assert not _mentions_new_app(before["text"]).any()
    assert not _mentions_new_app(streams["stable"]["text"]).any()
    opens = after[after["template_id"].str.startswith("open_app/base/")]
    assert _mentions_new_app(opens["text"]).mean() == pytest.approx(0.6, abs=0.08)


def _total_variation(events: pd.DataFrame) -> float:
    before, after = halves(events)
    p = before["true_label"].value_counts(normalize=True)
    q = after["true_label"].value_counts(normalize=True)
    return 0.5 * float(p.subtract(q, fill_value=0).abs().sum())


def test_prior_shift_moves_the_intent_mix(streams) -> None:
    assert _total_variation(streams["stable"]) < 0.06
    assert _total_variation(streams["prior_shift"]) > 0.15  # users keep half their own habits
    before, _ = halves(streams["prior_shift"])
    assert (before["label"] == before["true_label"]).mean() > 0.95  # labels stay honest


def test_label_flip_poisons_a_group_of_users(streams) -> None:
    before, after = halves(streams["label_flip"])
    assert (before["label"] != before["true_label"]).mean() < 0.04  # ordinary noise
    wrong = after["label"] != after["true_label"]
    assert wrong.mean() > 0.4
    assert (after["poisoned"] == wrong).mean() > 0.97  # poisoned rows are the wrong ones
    # A group: poisoned users are poisoned on (nearly) every event after onset.
    per_user = after.groupby("user_id")["poisoned"].mean()
    assert ((per_user == 0) | (per_user == 1)).all()
    assert per_user.mean() == pytest.approx(0.6, abs=0.06)


@pytest.mark.parametrize("onset", [0.0, 0.25, 1.0])
def test_onset_is_where_the_drift_starts(onset: float) -> None:
    events = generate(TrafficConfig(n_events=400, n_users=100, scenario="new_app",
                                    onset=onset)).events
    assert int(events["after_onset"].sum()) == 400 - round(onset * 400)
    if 0 < onset < 1:
        first = int(np.argmax(events["after_onset"].to_numpy()))
        assert first == round(onset * 400)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"scenario": "nope"}, "unknown scenario"), ({"onset": 1.5}, "onset"),
     ({"strength": -0.1}, "strength"), ({"n_events": 0}, "positive")],
)
def test_bad_config_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficConfig(**kwargs)
