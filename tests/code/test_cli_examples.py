"""`loopline examples`: counts, export, reviewed labels and forgetting a user, on a real Delta table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from loopline.cli import app
from services.common.examples import ExamplesTable, rows_table
from tests.code.test_examples_table import row

runner = CliRunner()


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExamplesTable:
    monkeypatch.setenv("LOOPLINE_STATE_DIR", str(tmp_path / "state"))
    examples = ExamplesTable(str((tmp_path / "state" / "examples").resolve()))
    day = 86_400.0
    examples.append(rows_table(
        [row(i, user=f"u{i % 4}", label="set_alarm", feedback_ts=1.8e9 + (i % 2) * day) for i in range(12)]
        + [row(i, user="u9", label="order_pizza", verdict="unknown_label", reason="unknown_label")
           for i in range(12, 15)]), "feedback", 1)
    return examples


def test_counts_per_label_verdict_and_day(table: ExamplesTable) -> None:
    result = runner.invoke(app, ["examples"])
    assert result.exit_code == 0, result.output
    assert "15 examples" in result.output
    assert "order_pizza" in result.output and "unknown_label" in result.output
    assert "2027-01-15" in result.output and "2027-01-16" in result.output


def test_export_is_a_dataset_and_reviewed_labels_come_back_once(table: ExamplesTable, tmp_path: Path) -> None:
    out = tmp_path / "review.csv"
    result = runner.invoke(app, ["examples", "export", str(out), "--verdict", "unknown_label"])
    assert result.exit_code == 0, result.output
    exported = pd.read_csv(out)
    assert list(exported.columns[:4]) == ["text", "label", "user_id", "ts"] and len(exported) == 3
    assert runner.invoke(app, ["data", "check", str(out), "--holdout", "0.3"]).exit_code == 2, "one class only"

    exported["label"] = "order_food"  # a reviewer renames the new intent
    exported.to_csv(out, index=False)
    first = runner.invoke(app, ["examples", "import", str(out)])
    assert first.exit_code == 0 and "imported 3 reviewed examples" in first.output, first.output
    again = runner.invoke(app, ["examples", "import", str(out)])
    assert again.exit_code == 0 and "already imported" in again.output
    reviewed = table.read("verdict = 'reviewed'")
    assert sorted(reviewed.event_id) == ["e12", "e13", "e14"] and set(reviewed.label) == {"order_food"}


def test_bad_input_exits_2_with_a_reason(table: ExamplesTable, tmp_path: Path) -> None:
    cases = [(["examples", "export", str(tmp_path / "x.xlsx")], "expected a .csv or .parquet"),
             (["examples", "export", str(tmp_path / "x.csv"), "--verdict", "good"], "unknown verdict(s) good"),
             (["examples", "export", str(tmp_path / "x.csv"), "--since", "yesterday-ish"], "is not a time"),
             (["examples", "import", str(tmp_path / "missing.csv")], "no such file")]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nturn on wifi,\n")
    cases.append((["examples", "import", str(bad)], "missing label in row(s) 2"))
    for args, reason in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and reason in result.output, (args, result.output)


def test_forget_deletes_every_row_of_a_user(table: ExamplesTable) -> None:
    result = runner.invoke(app, ["examples", "forget", "--user", "u9", "--user", "u1"])
    assert result.exit_code == 0 and "deleted 6 examples of 2 user(s)" in result.output, result.output
    assert set(table.read().user_id) == {"u0", "u2", "u3"}
