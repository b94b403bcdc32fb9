"""Deterministic phone-assistant traffic with named drift scenarios.

Users have habits (locale, device, favourite apps, activity level, preferred
intents); each event is one utterance with the intent the user meant
(`true_label`) and the label the user reported as feedback (`label`, which
differs by ordinary label noise and, under `label_flip`, by poisoning).
Everything is drawn from one seeded generator, so a seed fixes the output.

Scenarios change the stream from event index `onset * n_events` on:

| scenario      | what `strength` controls                                     |
| ------------- | ------------------------------------------------------------ |
| stable        | nothing changes                                              |
| new_phrasing  | share of utterances worded with templates never seen before  |
| new_app       | share of app-name slots filled with apps never seen before   |
| prior_shift   | weight of a new intent mix (mass moves onto a few intents)   |
| label_flip    | share of users in a group that reports a wrong intent        |
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from string import Formatter

import numpy as np
import pandas as pd

from models import catalog

SCENARIOS: tuple[str, ...] = ("stable", "new_phrasing", "new_app", "prior_shift", "label_flip")
# The label set of generated traffic, sorted as a model trained on it orders its classes (models.data.class_list).
GENERATED_INTENTS: tuple[str, ...] = tuple(sorted(catalog.INTENTS))
TYPO_KEYS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class TrafficConfig:
    """How much traffic, from whom, and which drift."""

    seed: int = 0
    n_users: int = 2_000
    n_events: int = 20_000
    scenario: str = "stable"
    onset: float = 0.5
    strength: float = 0.6
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: float = 14.0
    typo_rate: float = 0.08
    label_noise: float = 0.02
    user_seed: int | None = None  # fixes the user table apart from the events; default: seed

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {SCENARIOS}")
        if not 0.0 <= self.onset <= 1.0:
            raise ValueError(f"onset must be in [0, 1], got {self.onset}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.n_users < 1 or self.n_events < 1:
            raise ValueError("n_users and n_events must be positive")

    @property
    def onset_index(self) -> int:
        return round(self.onset * self.n_events)


@dataclass(frozen=True)
class Traffic:
    """A generated stream: one row per utterance, plus the user table."""

    events: pd.DataFrame
    users: pd.DataFrame
    config: TrafficConfig


def generate(config: TrafficConfig) -> Traffic:
    """Generate users and a time-ordered event stream for `config`."""
    user_seed = config.seed if config.user_seed is None else config.user_seed
    users = _make_users(np.random.default_rng([user_seed, 0]), config)
    events = _make_events(np.random.default_rng([config.seed, 1]), config, users)
    return Traffic(events=events, users=users.drop(columns=["_affinity"]), config=config)


def _make_users(rng: np.random.Generator, config: TrafficConfig) -> pd.DataFrame:
    n = config.n_users
    locales = rng.choice(catalog.LOCALES, size=n, p=catalog.LOCALE_WEIGHTS)
    devices = rng.choice(catalog.DEVICES, size=n, p=catalog.DEVICE_WEIGHTS)
    favourites = np.array([rng.choice(catalog.APPS, size=3, replace=False) for _ in range(n)])
    activity = rng.lognormal(mean=0.0, sigma=0.8, size=n)
    affinity = rng.dirichlet(np.full(len(catalog.INTENTS), 0.3), size=n)
    signup = [config.start - timedelta(days=float(d)) for d in rng.uniform(1, 720, size=n)]
    tier = np.where(activity > 2.0, "high", np.where(activity > 0.6, "medium", "low"))
    return pd.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in range(n)],
            "locale": locales,
            "device": devices,
            "fav_app_1": favourites[:, 0],
            "fav_app_2": favourites[:, 1],
            "fav_app_3": favourites[:, 2],
            "activity_level": activity.round(4),
            "activity_tier": tier,
            "top_intent": [catalog.INTENTS[i] for i in affinity.argmax(axis=1)],
            "signup_ts": pd.to_datetime(signup, utc=True),
            # Feast reads these two as the feature row's event and creation time.
            "event_timestamp": pd.Timestamp(config.start),
            "created": pd.Timestamp(config.start),
            "_affinity": list(affinity),
        }
    )


def _global_prior(n_intents: int) -> np.ndarray:
    # A fixed, mildly skewed intent mix (messages and music are common).
    weights = 1.0 / np.sqrt(np.arange(1, n_intents + 1))
    order = np.array([4, 7, 0, 9, 5, 6, 1, 2, 3, 13, 11, 10, 8, 15, 16, 17, 12, 14, 18, 19, 20, 21])
    prior = np.empty(n_intents)
    prior[order[:n_intents]] = weights
    return prior / prior.sum()


def _shifted_prior(rng: np.random.Generator, n_intents: int) -> np.ndarray:
    # After the shift most traffic goes to a few intents that used to be rare.
    rare = np.argsort(_global_prior(n_intents))[: n_intents // 2]
    hot = rng.choice(rare, size=4, replace=False)
    prior = np.full(n_intents, 0.2 / (n_intents - 4))
    prior[hot] = 0.8 / 4
    return prior


def _flip_map(rng: np.random.Generator, n_intents: int) -> np.ndarray:
    """A derangement: every intent is reported as some other intent."""
    shift = int(rng.integers(1, n_intents))
    return (np.arange(n_intents) + shift) % n_intents


def _make_events(rng: np.random.Generator, config: TrafficConfig, users: pd.DataFrame) -> pd.DataFrame:
    n, intents = config.n_events, catalog.INTENTS
    k = len(intents)
    prior = _global_prior(k)
    shifted = _shifted_prior(rng, k)
    flip = _flip_map(rng, k)
    attackers = rng.random(len(users)) < config.strength if config.scenario == "label_flip" else None

    affinity = np.stack(users["_affinity"].to_list())
    habits = _Habits(
        locale=users["locale"].to_list(),
        favourites=users[["fav_app_1", "fav_app_2", "fav_app_3"]].to_numpy().tolist(),
    )
    user_ids = users["user_id"].to_list()
    activity = users["activity_level"].to_numpy()
    user_idx = rng.choice(len(users), size=n, p=activity / activity.sum())
    offsets = np.sort(rng.uniform(0.0, config.days * 86_400.0, size=n))
    onset = config.onset_index

    rows = []
    for i in range(n):
        u = int(user_idx[i])
        after = i >= onset  # under `stable` nothing changes here; the mark still helps compare
        mix = prior
        if after and config.scenario == "prior_shift":
            mix = (1 - config.strength) * prior + config.strength * shifted
        p = 0.5 * mix + 0.5 * affinity[u]
        intent = int(rng.choice(k, p=p / p.sum()))
        new_wording = after and config.scenario == "new_phrasing" and rng.random() < config.strength
        new_apps = after and config.scenario == "new_app"
        text, template_id = _utterance(rng, config, habits, u, intent, new_wording, new_apps)

        label, poisoned = intent, False
        if after and attackers is not None and attackers[u]:
            label, poisoned = int(flip[intent]), True
        elif rng.random() < config.label_noise:
            label = int(rng.integers(k))
        rows.append(
            (
                str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i, version=4)),
                config.start + timedelta(seconds=float(offsets[i])),
                user_ids[u],
                text,
                intents[label],
                intents[intent],
                template_id,
                after,
                poisoned,
            )
        )
    events = pd.DataFrame(
        rows,
        columns=["event_id", "ts", "user_id", "text", "label", "true_label", "template_id",
                 "after_onset", "poisoned"],
    )
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    events["scenario"] = config.scenario
    return events


@dataclass(frozen=True)
class _Habits:
    """Per-user attributes the utterances draw on, as plain lists for speed."""

    locale: list[str]
    favourites: list[list[str]]


def _utterance(
    rng: np.random.Generator,
    config: TrafficConfig,
    habits: _Habits,
    u: int,
    intent: int,
    new_wording: bool,
    new_apps: bool,
) -> tuple[str, str]:
    name = catalog.INTENTS[intent]
    pool = catalog.NEW_PHRASINGS[name] if new_wording else catalog.TEMPLATES[name]
    t = int(rng.integers(len(pool)))
    template = pool[t]
    locale = habits.locale[u]
    values: dict[str, str] = {}
    # dict.fromkeys keeps template order; a set's order would depend on PYTHONHASHSEED.
    for slot in dict.fromkeys(f for _, f, _, _ in Formatter().parse(template) if f):
        values[slot] = _slot_value(rng, config, habits, u, slot, locale, new_apps)
    text = template.format(**values)
    text = _pick(rng, catalog.PREFIXES) + text + _pick(rng, catalog.SUFFIXES)
    if rng.random() < config.typo_rate:
        text = _typo(rng, text)
    return text, f"{name}/{'new' if new_wording else 'base'}/{t}"


def _slot_value(
    rng: np.random.Generator,
    config: TrafficConfig,
    habits: _Habits,
    u: int,
    slot: str,
    locale: str,
    new_apps: bool,
) -> str:
    if slot in catalog.APP_SLOTS and new_apps and rng.random() < config.strength:
        return _pick(rng, catalog.NEW_APPS)
    if slot == "app":
        # Habit: users mostly open their favourite apps.
        if rng.random() < 0.6:
            return habits.favourites[u][int(rng.integers(3))]
        return _pick(rng, catalog.APPS)
    if slot == "contact":
        return _pick(rng, catalog.CONTACTS_BY_LOCALE[locale])
    if slot == "city":
        return _pick(rng, catalog.CITIES_BY_LOCALE[locale])
    return _pick(rng, catalog.SLOT_VALUES[slot])


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _typo(rng: np.random.Generator, text: str) -> str:
    """One keyboard slip in a word of four letters or more: swap, drop, double or replace."""
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 4]
    if not long_words:
        return text
    wi = long_words[int(rng.integers(len(long_words)))]
    w = words[wi]
    pos = int(rng.integers(1, len(w) - 1))
    kind = int(rng.integers(4))
    if kind == 0:
        w = w[:pos] + w[pos + 1] + w[pos] + w[pos + 2 :]
    elif kind == 1:
        w = w[:pos] + w[pos + 1 :]
    elif kind == 2:
        w = w[:pos] + w[pos] + w[pos:]
    else:
        w = w[:pos] + TYPO_KEYS[int(rng.integers(len(TYPO_KEYS)))] + w[pos + 1 :]
    words[wi] = w
    return " ".join(words)
