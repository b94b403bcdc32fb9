"""`loopline feedback send` refuses bad input before it sends, and says when there is no broker;
`loopline feedback` with no subcommand still starts the service."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infra.process import free_port
from loopline.cli import app

runner = CliRunner()
BOOTSTRAP_ENV = "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS"


@pytest.mark.parametrize(("args", "problem"), [
    (["--prediction-id", "p-1", "--label", ""], "label: String should have at least 1"),
    (["--prediction-id", "x" * 65, "--label", "toggle_wifi"], "prediction_id: String should have at most"),
    (["--prediction-id", "p-1", "--label", "toggle_wifi", "--source", "s" * 65], "source: String should"),
])
def test_send_refuses_an_invalid_event(args: list[str], problem: str) -> None:
    # A port nobody listens on: the event must be refused before any connection is tried.
    result = runner.invoke(app, ["feedback", "send", *args, "--bootstrap-servers", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 2
    assert "not a valid feedback event" in result.output and problem in " ".join(result.output.split())


def test_send_needs_a_broker_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    result = runner.invoke(app, ["feedback", "send", "--prediction-id", "p-1", "--label", "toggle_wifi"])
    assert result.exit_code == 2 and BOOTSTRAP_ENV in result.output


def test_send_says_when_no_broker_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, f"127.0.0.1:{free_port()}")
    result = runner.invoke(app, ["feedback", "send", "--prediction-id", "p-1", "--label", "toggle_wifi",
                                 "--timeout", "0.5"])
    assert result.exit_code == 2 and "no broker answered" in result.output


def test_feedback_without_a_subcommand_starts_the_service(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LOOPLINE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    result = runner.invoke(app, ["feedback"])
    # The service's own check on its settings, so the service (not `send`, not help) ran.
    assert result.exit_code == 2 and "the feedback service reads predictions" in " ".join(result.output.split())
    assert "send" in runner.invoke(app, ["feedback", "--help"]).output
