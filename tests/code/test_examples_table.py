"""The examples table: every judged example exactly once across crashes, deletable by user and by age."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from services.common.examples import ExamplesError, ExamplesTable, conform, rows_table
from services.feedback.service import FeedbackService
from services.feedback.settings import FeedbackSettings
from tests.code.test_feedback_service import arrival, feed, finish, service, stream
from tests.conftest import TinyModel


def row(i: int, user: str = "u1", **changes: object) -> dict[str, object]:
    return {"event_id": f"e{i}", "prediction_id": f"p{i}", "text": f"text {i}", "user_id": user,
            "user_features": {"plan": "pro"}, "model_version": "1", "predicted": "a", "confidence": 0.5,
            "label": "b", "verdict": "learned", "reason": None, "window_decision": "published",
            "prediction_ts": float(i), "feedback_ts": float(i), "window_end": 10.0, "partition": 0,
            "offset": i} | changes


def test_a_commit_number_the_table_holds_is_skipped(tmp_path: Path) -> None:
    table = ExamplesTable(str(tmp_path / "examples"))
    assert table.read().empty and table.committed("w") is None
    rows = rows_table([row(i) for i in range(10)])
    assert table.append(rows, "w", 1).rows == 10
    assert table.append(rows, "w", 1).rows == 0, "a replayed commit is a no-op"
    assert table.append(rows.slice(0, 2), "other-writer", 1).rows == 2, "numbers are per writer"
    assert table.append(rows.slice(0, 3), "w", 2).rows == 3
    assert len(ExamplesTable(table.uri).read()) == 15 and table.committed("w") == 2
    assert list(table.read("verdict = 'learned' AND feedback_ts < 2").event_id.sort_values()) == ["e0", "e0", "e0",
                                                                                                  "e1", "e1", "e1"]


def test_forgetting_a_user_removes_the_rows_from_disk_and_retention_deletes_by_age(tmp_path: Path) -> None:
    table = ExamplesTable(str(tmp_path / "examples"))
    table.append(rows_table([row(i, user="obrien-secret-id" if i % 3 == 0 else "u2") for i in range(30)]), "w", 1)
    table.append(rows_table([row(i, user="u2") for i in range(30, 40)]), "w", 2)
    assert table.forget_users(["obrien-secret-id", "nobody", "o'quote"]) == 10
    left = table.read()
    assert len(left) == 30 and set(left.user_id) == {"u2"}
    on_disk = [p for p in (tmp_path / "examples").rglob("*") if p.is_file() and b"obrien-secret-id" in p.read_bytes()]
    assert on_disk == [], "neither the data files nor the table's log may keep a forgotten user's id"
    assert table.expire(before_ts=35.0) == 25
    assert sorted(table.read().event_id) == [f"e{i}" for i in range(35, 40)]
    table.compact()
    assert len(table.read()) == 5 and table.committed("w") == 2, "compaction keeps rows and commit numbers"


def test_rows_missing_a_column_are_refused_with_its_name() -> None:
    with pytest.raises(ExamplesError, match="label"):
        conform(pa.table({"event_id": ["e"], "text": ["t"]}))


@pytest.fixture
def settings(tmp_path: Path) -> FeedbackSettings:
    return FeedbackSettings(state_dir=tmp_path, update_interval_s=1.0, lateness_s=0.5, min_holdout=20,
                            holdout_share=0.15, feedback_wait_s=10.0)


def saved(svc: FeedbackService, commit: bool = True) -> None:
    """What the service's loop does at a checkpoint: save it, then commit the examples it holds."""
    svc.checkpoints.save(svc.checkpoint())
    if commit:
        svc.collector.commit()


def rows_of(svc: FeedbackService) -> list[tuple[str, str, str, str | None]]:
    assert svc.collector.table is not None
    frame = svc.collector.table.read()
    return sorted(zip(frame.event_id, frame.label, frame.verdict, frame.reason.where(frame.reason.notna(), None),
                      strict=True))


@pytest.mark.parametrize(("crash_at", "committed_before_crash"), [(0.3, True), (0.6, False), (0.9, False)])
def test_every_judged_example_is_kept_once_across_crashes(
        settings: FeedbackSettings, trained: TinyModel, tmp_path: Path, crash_at: float,
        committed_before_crash: bool) -> None:
    records = stream(trained, new_label_every=25)
    steady = service(settings.model_copy(update={"state_dir": tmp_path / "steady"}), trained)
    feed(steady, arrival(records, seed=1), {})
    finish(steady, {})
    saved(steady)
    expected = rows_of(steady)
    verdicts = {verdict for _, _, verdict, _ in expected}
    assert {"learned", "held_back", "unknown_label"} <= verdicts
    assert {label for _, label, verdict, _ in expected if verdict == "unknown_label"} == {"order_pizza"}
    assert len({e for e, *_ in expected}) == len(expected), "one row per feedback event"

    crashy = settings.model_copy(update={"state_dir": tmp_path / "crashy"})
    order, deltas = arrival(records, seed=2), {}
    first = service(crashy, trained)
    cut = int(len(order) * crash_at)
    feed(first, order[: cut // 2], deltas)
    saved(first)
    feed(first, order[cut // 2: cut], deltas)
    # kill -9 right after a checkpoint, before (or after) its examples reached the table
    saved(first, commit=committed_before_crash)
    feed(first, order[cut: cut + 300], deltas)  # work lost in the crash

    resumed = FeedbackService(crashy)
    resumed.collector.commit()  # what `run` does first
    resumed.collector.commit()  # twice: a restart that crashes again before its first checkpoint
    rest = [r for r in order if r.offset >= resumed.offsets.get(f"{r.topic}:{r.partition}", 0)]
    feed(resumed, rest, deltas)
    finish(resumed, deltas)
    saved(resumed)
    assert rows_of(resumed) == expected, "the same rows as an uninterrupted run, none twice, none lost"
