"""The guard after a promotion: a retrain that does worse on live feedback is rolled back."""

from __future__ import annotations

from services.feedback.guard import GuardSettings, PromotionGuard


def test_a_promoted_version_worse_by_more_than_the_margin_is_rolled_back() -> None:
    guard = PromotionGuard(GuardSettings(events=100, margin=0.02))
    assert guard.observe([True] * 90 + [False] * 10) is None  # the old champion: 0.90 on its last 100
    assert guard.promoted(5, previous=4)
    assert guard.observe([True] * 80 + [False] * 19) is None, "judged after 100 events, not before"
    rollback = guard.observe([False])
    assert rollback is not None and (rollback.version, rollback.to) == (5, 4)
    assert "v5 scored 0.8000 on its first 100 feedback events, v4 0.9000" in rollback.reason
    assert guard.watch is None, "judged once"


def test_a_version_within_the_margin_stays_and_no_record_means_no_watch() -> None:
    guard = PromotionGuard(GuardSettings(events=50, margin=0.05))
    guard.observe([True] * 45 + [False] * 5)
    assert guard.promoted(2, previous=1)
    assert guard.observe([True] * 43 + [False] * 7) is None  # 0.86 >= 0.90 - 0.05
    short = PromotionGuard(GuardSettings(events=50, margin=0.05))
    short.observe([True] * 10)
    assert not short.promoted(2, previous=1), "the previous champion has too few events to compare with"
    assert not PromotionGuard(GuardSettings(events=0)).promoted(2, previous=1), "events=0 turns it off"


def test_the_guard_survives_a_checkpoint_round_trip() -> None:
    settings = GuardSettings(events=20, margin=0.0)
    guard = PromotionGuard(settings)
    guard.observe([True] * 20)
    guard.promoted(3, previous=2)
    guard.observe([False] * 5)
    again = PromotionGuard.from_json(guard.to_json(), settings)
    assert again.watch == guard.watch and list(again.recent) == list(guard.recent)
    assert again.observe([False] * 15) is not None
