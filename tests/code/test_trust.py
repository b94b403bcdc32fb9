"""UserTrust: a run of disagreements no typical user produces is caught, the population rate is robust to
a minority of attackers, and the state survives a checkpoint."""

from __future__ import annotations

import random

import pytest

from services.feedback.trust import RATE_FLOOR, TrustSettings, UserTrust


def honest_population(trust: UserTrust, users: int = 50, events: int = 20, rate: float = 0.15,
                      seed: int = 0, name: str = "user") -> None:
    rng = random.Random(seed)
    for _ in range(events):
        for u in range(users):
            trust.judge(f"{name}-{u}", rng.random() < rate)


def test_nobody_is_distrusted_before_the_population_rate_is_known() -> None:
    trust = UserTrust()
    trust.start_window()
    assert all(trust.judge("attacker", True).trusted for _ in range(20))


def test_a_run_of_disagreements_is_caught_after_a_few_events_and_says_why() -> None:
    trust = UserTrust(TrustSettings(alpha=1e-3))
    honest_population(trust)
    trust.start_window()
    assert 0.1 < trust.rate < 0.2
    for _ in range(10):  # an honest record first: the attack starts late
        trust.judge("attacker", False)
    verdicts = [trust.judge("attacker", True) for _ in range(6)]
    first_distrust = next(i for i, v in enumerate(verdicts) if not v.trusted)
    assert 2 <= first_distrust <= 4, [v.p_value for v in verdicts]
    distrusted = verdicts[first_distrust]
    assert distrusted.p_value < 1e-3 and distrusted.disagreed == distrusted.run == first_distrust + 1
    assert "disagreed with the served intent" in distrusted.describe("attacker")
    assert not trust.judge("attacker", False).trusted, "one agreement does not clear the record"


@pytest.mark.parametrize("seed", range(3))
def test_honest_users_are_rarely_distrusted(seed: int) -> None:
    trust = UserTrust(TrustSettings(alpha=1e-3))
    honest_population(trust, seed=seed)
    rng, judged, distrusted = random.Random(seed + 10), 0, 0
    for _ in range(40):
        trust.start_window()
        for u in range(50):
            judged += 1
            distrusted += not trust.judge(f"user-{u}", rng.random() < 0.15).trusted
    assert distrusted <= 0.01 * judged, (distrusted, judged)


def test_a_minority_of_attackers_does_not_move_the_population_rate_much() -> None:
    trust = UserTrust()
    honest_population(trust, users=60)
    honest_population(trust, users=40, rate=1.0, name="attacker")
    trust.start_window()
    assert trust.rate < 0.3


def test_the_rate_has_a_floor_so_a_perfect_model_does_not_make_every_correction_suspect() -> None:
    trust = UserTrust()
    honest_population(trust, rate=0.0)
    trust.start_window()
    assert trust.rate == RATE_FLOOR
    assert trust.judge("user-1", True).trusted and trust.judge("user-1", True).trusted


def test_alpha_zero_trusts_everyone() -> None:
    trust = UserTrust(TrustSettings(alpha=0.0))
    honest_population(trust)
    trust.start_window()
    assert all(trust.judge("attacker", True).trusted for _ in range(20))


def test_the_state_survives_a_checkpoint_and_decides_the_same() -> None:
    trust = UserTrust()
    honest_population(trust)
    copy = UserTrust.from_bytes(trust.to_bytes(), trust.settings)
    for t in (trust, copy):
        t.start_window()
    assert trust.rate == copy.rate and trust.records == copy.records
    assert [trust.judge("user-3", True) for _ in range(8)] == [copy.judge("user-3", True) for _ in range(8)]


def test_users_remembered_are_bounded_least_recently_seen_first() -> None:
    trust = UserTrust(TrustSettings(max_users=3))
    for user in ("a", "b", "c", "a", "d"):
        trust.judge(user, False)
    assert list(trust.records) == ["c", "a", "d"]
