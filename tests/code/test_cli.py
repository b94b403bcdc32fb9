"""The `loopline` command: it works, and bad input exits non-zero with a readable message."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from loopline.cli import app

runner = CliRunner()


def test_data_generate_writes_parquet_feast_can_read(tmp_path) -> None:
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path), "--events", "500",
                                 "--users", "50", "--scenario", "label_flip", "--seed", "4"])
    assert result.exit_code == 0, result.output
    events = pd.read_parquet(tmp_path / "events.parquet")
    users = pd.read_parquet(tmp_path / "users.parquet")
    assert len(events) == 500 and len(users) == 50
    assert str(users["event_timestamp"].dtype).startswith("datetime64")
    assert "250 after onset" in result.output


def test_data_generate_refuses_an_unknown_scenario(tmp_path) -> None:
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path), "--scenario", "chaos"])
    assert result.exit_code == 2
    assert "unknown scenario 'chaos'" in result.output
    assert not (tmp_path / "events.parquet").exists()


def test_data_check_accepts_good_and_explains_bad_files(tmp_path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("text,label\nturn on wifi,toggle_wifi\n")
    ok = runner.invoke(app, ["data", "check", str(good)])
    assert ok.exit_code == 0 and "1 rows" in ok.output
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nturn on wifi,make_coffee\n")
    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 2
    assert "unknown label(s) make_coffee" in result.output
    assert runner.invoke(app, ["data", "check", str(bad), "--any-labels"]).exit_code == 0


def test_demo_with_the_tiny_encoder_writes_its_report(tmp_path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--events", "2000",
                                 "--tiny-encoder"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 10_000
    per_intent = pd.read_csv(tmp_path / "per_intent.csv")
    assert len(per_intent) == 22
    assert "new_phrasing, after onset" in result.output
