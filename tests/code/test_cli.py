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


def test_data_check_accepts_any_labels_and_says_how_it_splits(tmp_path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "".join(f"make me a {d},make_coffee\nbrew {d} tea,make_tea\n"
                                              for d in ("strong", "weak", "hot", "cold", "big")))
    ok = runner.invoke(app, ["data", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "10 rows used, 2 classes" in ok.output and "stratified by label" in ok.output
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nturn on wifi,toggle_wifi\n")
    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 2 and "a single class (toggle_wifi)" in result.output


def test_evaluate_with_the_tiny_encoder_writes_its_report(tmp_path) -> None:
    result = runner.invoke(app, ["evaluate", "--out", str(tmp_path), "--events", "2000",
                                 "--tiny-encoder"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 10_000
    per_intent = pd.read_csv(tmp_path / "per_intent.csv")
    assert len(per_intent) == 22
    assert "new_phrasing, after onset" in result.output


def test_train_refuses_bad_parameters_before_starting_anything(tmp_path) -> None:
    unknown = runner.invoke(app, ["train", "--scenario", "chaos"])
    assert unknown.exit_code == 2 and "unknown scenario 'chaos'" in unknown.output
    nowhere = tmp_path / ("a-folder-name-long-enough-that-a-wrapping-console-would-split-it-" * 2) / "nope.csv"
    missing = runner.invoke(app, ["train", "--data", str(nowhere)])
    # One line, whatever the path's length: output that is not a terminal is never wrapped.
    assert missing.exit_code == 2 and f"{nowhere}: no such file" in missing.output
    too_few = runner.invoke(app, ["train", "--events", "10"])
    assert too_few.exit_code == 2


def test_models_commands_explain_bad_settings(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LOOPLINE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LOOPLINE_MODEL_NAME", "bad name/with slash")
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 2 and "bad settings" in result.output and "model name" in result.output


def test_flows_serve_needs_a_prefect_server(monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = runner.invoke(app, ["flows", "serve"])
    assert result.exit_code == 2 and "PREFECT_API_URL" in result.output


def test_serve_refuses_a_placeholder_admin_token(monkeypatch) -> None:
    monkeypatch.setenv("LOOPLINE_ADMIN_TOKEN", "changeme")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "placeholder" in result.output


class PromoteOnly:
    """What POST /promote needs of the feedback service."""

    def __init__(self) -> None:
        self.promotions = 0

    def request_promotion(self) -> dict:
        self.promotions += 1
        return {"status": "unchanged", "version": 1, "detail": "nothing learned since v1"}


def test_promote_sends_the_stack_token_from_the_state_folder_or_says_how_to_get_one(monkeypatch, tmp_path) -> None:
    from typing import Any, cast

    from infra.process import free_port
    from services.common.admin import ensure_stack_admin_token
    from services.feedback.metrics import serve_metrics

    monkeypatch.delenv("LOOPLINE_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("LOOPLINE_STATE_DIR", str(tmp_path))
    port = free_port()
    monkeypatch.setenv("LOOPLINE_METRICS_PORT", str(port))
    missing = runner.invoke(app, ["promote"])
    assert missing.exit_code == 2 and "LOOPLINE_ADMIN_TOKEN" in missing.output and "status --env" in missing.output

    service = PromoteOnly()
    server = serve_metrics(cast(Any, service), port, ensure_stack_admin_token(tmp_path))
    try:
        done = runner.invoke(app, ["promote"])
        assert done.exit_code == 0 and "unchanged" in done.output and service.promotions == 1, done.output
        monkeypatch.setenv("LOOPLINE_ADMIN_TOKEN", "someone-elses-" + "x" * 16)  # the environment's comes first
        refused = runner.invoke(app, ["promote"])
        assert refused.exit_code == 2 and "401" in refused.output and service.promotions == 1
    finally:
        server.shutdown()
        server.server_close()
