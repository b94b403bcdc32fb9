"""Which collected examples a retrain learns from and which judge it (models/collected.py)."""

from __future__ import annotations

import pandas as pd

from models.collected import Support, select


def frame(rows: list[tuple[str, str, str, str, str | None, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"event_id": e, "text": f"text of {e}", "label": label, "user_id": user, "verdict": verdict,
                          "reason": reason, "written_at": written, "feedback_ts": written}
                         for e, label, user, verdict, reason, written in rows])


def test_the_latest_label_wins_the_first_verdict_decides_the_role() -> None:
    chosen = select(frame([
        ("a", "x", "u1", "held_back", None, 1.0), ("a", "y", "u1", "reviewed", None, 5.0),
        ("b", "x", "u2", "learned", None, 2.0), ("b", "x", "u2", "learned", None, 2.0),
    ]), ["x", "y"], Support())
    assert list(chosen.eval.label) == ["y"] and list(chosen.eval.event_id) == ["a"]
    assert list(chosen.train.event_id) == ["b"]
    assert chosen.left_out == {"superseded by a later label": 2}


def test_untrusted_users_and_withheld_rows_are_left_out() -> None:
    chosen = select(frame([
        ("a", "x", "mallory", "learned", None, 1.0), ("b", "y", "mallory", "withheld", "untrusted_user", 2.0),
        ("c", "x", "u2", "withheld", "repeated_correction", 3.0), ("d", "y", "u3", "learned", None, 4.0),
    ]), ["x", "y"], Support())
    assert list(chosen.train.event_id) == ["d"] and chosen.eval.empty
    assert chosen.left_out == {"rows of untrusted users": 2, "withheld": 1}


def test_a_new_label_needs_enough_examples_from_enough_users() -> None:
    rows = [(f"n{i}", "new", f"u{i % 5}", "unknown_label", "unknown_label", float(i)) for i in range(20)]
    rows += [(f"m{i}", "lonely", "u1", "unknown_label", "unknown_label", float(i)) for i in range(50)]
    chosen = select(frame(rows), ["x"], Support(min_examples=20, min_users=5, eval_share=0.2))
    assert chosen.admitted == {"new": 20} and chosen.refused == {"lonely": (50, 1)}
    assert set(chosen.train.label) | set(chosen.eval.label) == {"new"}
    assert 0 < len(chosen.eval) < 20, "a share of a new label's rows evaluates"
    again = select(frame(rows), ["x"], Support(min_examples=20, min_users=5, eval_share=0.2))
    assert list(again.eval.event_id) == list(chosen.eval.event_id), "chosen by event id: the same every time"
    assert "new classes new (20)" in chosen.describe() and "lonely (50 rows, 1 users)" in chosen.describe()
