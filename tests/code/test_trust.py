"""UserTrust: disagreements where the model was sure, more than the model expects, are caught; users the model
serves badly are not mistaken for attackers; the calibration resists a minority of attackers; the state
survives a checkpoint."""

from __future__ import annotations

import random

import pytest

from services.feedback.trust import CALIBRATION_FLOOR, TrustSettings, UserTrust


def honest_population(trust: UserTrust, users: int = 50, events: int = 20, confidence: float = 0.85,
                      seed: int = 0, name: str = "user") -> None:
    """Users who disagree exactly as often as the model expects (1 - confidence)."""
    rng = random.Random(seed)
    for _ in range(events):
        for u in range(users):
            trust.judge(f"{name}-{u}", rng.random() < 1 - confidence, confidence)


def test_nobody_is_distrusted_before_the_calibration_is_known() -> None:
    trust = UserTrust()
    trust.start_window()
    assert all(trust.judge("attacker", True, 0.99).trusted for _ in range(20))


def test_disagreeing_where_the_model_was_sure_is_caught_after_a_few_events_and_says_why() -> None:
    trust = UserTrust()
    honest_population(trust)
    trust.start_window()
    assert 0.7 < trust.calibration < 1.3  # type: ignore[operator]
    for _ in range(10):  # an honest record first: the attack starts late
        trust.judge("attacker", False, 0.95)
    verdicts = [trust.judge("attacker", True, 0.95) for _ in range(6)]
    first_distrust = next(i for i, v in enumerate(verdicts) if not v.trusted)
    assert 1 <= first_distrust <= 3, [v.p_value for v in verdicts]
    distrusted = verdicts[first_distrust]
    assert distrusted.p_value < trust.settings.alpha and distrusted.disagreed == distrusted.run == first_distrust + 1
    assert "disagreed with the served intent" in distrusted.describe("attacker")
    assert not trust.judge("attacker", False, 0.95).trusted, "one agreement does not clear the record"


def test_a_user_the_model_serves_badly_is_not_taken_for_an_attacker() -> None:
    """Corrections where the model was unsure are what an honest user of a badly served intent sends."""
    trust = UserTrust()
    honest_population(trust)
    trust.start_window()
    rng = random.Random(1)
    verdicts = [trust.judge("badly-served", rng.random() < 0.6, 0.4) for _ in range(60)]
    assert all(v.trusted for v in verdicts), min(v.p_value for v in verdicts)


@pytest.mark.parametrize("seed", range(3))
def test_honest_users_are_rarely_distrusted(seed: int) -> None:
    trust = UserTrust()
    honest_population(trust, seed=seed)
    rng, judged, distrusted = random.Random(seed + 10), 0, 0
    for _ in range(40):
        trust.start_window()
        for u in range(50):
            confidence = rng.uniform(0.3, 0.99)
            judged += 1
            distrusted += not trust.judge(f"user-{u}", rng.random() < 1 - confidence, confidence).trusted
    assert distrusted <= 0.01 * judged, (distrusted, judged)


def test_a_minority_of_attackers_does_not_move_the_calibration_much() -> None:
    trust = UserTrust()
    honest_population(trust, users=60)
    for _ in range(20):
        for u in range(40):
            trust.judge(f"attacker-{u}", True, 0.9)
    trust.start_window()
    assert trust.calibration is not None and trust.calibration < 2.0  # honest users alone: about 1


def test_the_calibration_has_a_floor() -> None:
    trust = UserTrust()
    honest_population(trust, confidence=0.5, seed=3)
    for _ in range(20):  # users who agree far more than the model expects
        for u in range(50):
            trust.judge(f"user-{u}", False, 0.5)
    trust.start_window()
    assert trust.calibration == CALIBRATION_FLOOR


def test_alpha_zero_trusts_everyone() -> None:
    trust = UserTrust(TrustSettings(alpha=0.0))
    honest_population(trust)
    trust.start_window()
    assert all(trust.judge("attacker", True, 0.99).trusted for _ in range(20))


def test_the_state_survives_a_checkpoint_and_decides_the_same() -> None:
    trust = UserTrust()
    honest_population(trust)
    copy = UserTrust.from_bytes(trust.to_bytes(), trust.settings)
    for t in (trust, copy):
        t.start_window()
    assert trust.calibration == copy.calibration and trust.records == copy.records
    assert [trust.judge("user-3", True, 0.9) for _ in range(8)] == [copy.judge("user-3", True, 0.9) for _ in range(8)]
    trust.judge("user-4", True, 0.9, ("turn on wifi", "wifi_on"))
    copy = UserTrust.from_bytes(trust.to_bytes(), trust.settings)
    assert copy.records == trust.records and copy.judge("user-4", True, 0.9, ("turn on wifi", "wifi_on")).repeated


def test_a_checkpoint_without_corrections_starts_collecting_them() -> None:
    second_format = b'{"calibration": 1.0, "records": [["u", 1, "5g==", 1, true]]}'
    record = UserTrust.from_bytes(second_format).records["u"]
    assert (record.bits, record.n, record.seen, record.corrections) == (1, 1, 0, None)


def test_a_checkpoint_of_the_first_format_starts_the_records_again() -> None:
    old = b'{"rate": 0.1, "records": [["u", 3, 5]]}'
    assert UserTrust.from_bytes(old).records == {}


def test_users_remembered_are_bounded_least_recently_seen_first() -> None:
    trust = UserTrust(TrustSettings(max_users=3))
    for user in ("a", "b", "c", "a", "d"):
        trust.judge(user, False, 0.9)
    assert list(trust.records) == ["c", "a", "d"]


def test_the_same_correction_from_the_same_user_counts_once() -> None:
    """A user asking the same thing and correcting the same confident answer each time is one piece of
    evidence: counted each time, honest repeats were withheld as an attack."""
    trust = UserTrust()
    honest_population(trust)
    trust.start_window()
    request = ("play bohemian rhapsody", "play_music")
    first = trust.judge("fan", True, 0.95, request)
    assert first.trusted and not first.repeated
    repeats = [trust.judge("fan", True, 0.95, ("Play  Bohemian Rhapsody ", "play_music")) for _ in range(15)]
    assert all(v.repeated for v in repeats), "casefolded, spaces collapsed: the same request"
    assert "already sent this correction" in repeats[0].describe("fan")
    assert trust.records["fan"].bits == 1, "repeats do not enter the record"
    assert not trust.judge("fan", True, 0.95, (request[0], "play_radio")).repeated, "another intent meant"
    assert not trust.judge("fan", False, 0.95, request).repeated, "agreeing is never a repeat"


def test_a_correction_counts_again_once_it_left_the_users_record() -> None:
    trust = UserTrust(TrustSettings(history=5))
    trust.judge("u", True, 0.9, ("turn on wifi", "wifi_on"))
    for _ in range(4):
        trust.judge("u", False, 0.9)
    assert trust.judge("u", True, 0.9, ("turn on wifi", "wifi_on")).repeated, "still among the last 5 events"
    trust.judge("u", False, 0.9)
    assert not trust.judge("u", True, 0.9, ("turn on wifi", "wifi_on")).repeated


def test_repeats_do_not_hide_an_attacker_who_varies_the_request() -> None:
    trust = UserTrust()
    honest_population(trust)
    trust.start_window()
    verdicts = [trust.judge("attacker", True, 0.95, (f"request {i}", "wrong_intent")) for i in range(6)]
    assert not verdicts[-1].trusted and not any(v.repeated for v in verdicts)
