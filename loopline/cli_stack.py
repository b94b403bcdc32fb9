"""`loopline up | down | status`: the embedded stack on 127.0.0.1, kept in one state folder."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from loopline.ui import console, describe_invalid, fail

if TYPE_CHECKING:
    from infra.stack import Stack, StackSettings

STATE_HELP = "State folder for logs, PID files and data [env LOOPLINE_STATE_DIR, default .state]."
HEALTH_STYLE = {"healthy": "green", "unhealthy": "red", "stopped": "dim", "waiting": "yellow", "off": "dim"}


def _port(part: str, env: str, default: int) -> Any:
    return typer.Option(None, f"--{part}-port", min=1, max=65535,
                        help=f"Port of {part} [env {env}, default {default}].", show_default=False)


def _settings(**given: Any) -> StackSettings:
    """StackSettings from the flags given, the rest from LOOPLINE_* variables and defaults."""
    from pydantic import ValidationError

    from infra.stack import StackSettings

    try:
        return StackSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        fail(describe_invalid(exc))


def _recorded(state_dir: Path | None) -> Stack:
    """The stack recorded in the state folder, or the one the settings describe if `up` never ran there."""
    from infra.stack import Stack, StackError

    settings = _settings(state_dir=state_dir)
    try:
        return Stack.load(settings.state_dir)
    except StackError:
        return Stack.from_settings(settings)


def _quiet_logs() -> None:
    logging.getLogger("infra.process").setLevel(logging.WARNING)  # the lines printed here say the same
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # refused connections while the broker boots


def _report(name: str, what: str) -> None:
    style = "yellow" if what.startswith("waiting") else "green"
    console.print(f"[{style}]{name:<10}[/] {what}")


def up(
    state_dir: Path | None = typer.Option(None, help=STATE_HELP, show_default=False),
    broker_port: int | None = _port("broker", "LOOPLINE_BROKER_PORT", 9092),
    mlflow_port: int | None = _port("mlflow", "LOOPLINE_MLFLOW_PORT", 5000),
    prefect_port: int | None = _port("prefect", "LOOPLINE_PREFECT_PORT", 4200),
    evidently_port: int | None = _port("evidently", "LOOPLINE_EVIDENTLY_PORT", 8002),
    serving_port: int | None = _port("serving", "LOOPLINE_PORT", 8000),
    feedback_port: int | None = _port("feedback", "LOOPLINE_METRICS_PORT", 8001),
    runner_port: int | None = _port("runner", "LOOPLINE_RUNNER_PORT", 8003),
) -> None:
    """Start the broker, MLflow, Prefect, the Evidently UI, serving, feedback and the retrain runner; wait until
    healthy.

    Parts already running are left alone. Serving, the feedback service and the runner (nightly and on-drift
    retrains; LOOPLINE_RUNNER_ENABLED=false leaves it out) start once the registry has a champion
    (`loopline train`); until then they wait for the next `up`.
    """
    from infra.process import ProcessError
    from infra.stack import Stack, StackError

    settings = _settings(state_dir=state_dir, broker_port=broker_port, mlflow_port=mlflow_port,
                         prefect_port=prefect_port, evidently_port=evidently_port, serving_port=serving_port,
                         feedback_port=feedback_port, runner_port=runner_port)
    _quiet_logs()
    try:
        stack = Stack.for_up(settings)
        console.print(f"state folder: [bold]{stack.state_dir}[/]")
        with console.status("starting the embedded stack (MLflow and Prefect take 20-60 s)..."):
            stack.up(_report)
    except (StackError, ProcessError) as exc:
        fail(f"{exc}\nnothing this `loopline up` started is left running; parts that ran before it were left alone")
    except Exception as exc:  # a server answering oddly (topics, registry): same rollback, same exit code
        fail(f"{type(exc).__name__}: {exc}\nnothing this `loopline up` started is left running")
    _print_table(stack)
    console.print(f'use it from other commands: eval "$(loopline status --env --state-dir {stack.state_dir})"',
                  soft_wrap=True)


def status(
    state_dir: Path | None = typer.Option(None, help=STATE_HELP, show_default=False),
    env: bool = typer.Option(False, "--env", help="Print `export` lines for clients of the stack instead."),
) -> None:
    """Show each part of the stack, its URL, PID and health (exit 1 unless all are healthy, waiting or off)."""
    _quiet_logs()
    stack = _recorded(state_dir)
    if env:
        for key, value in stack.client_env().items():
            typer.echo(f"export {key}={shlex.quote(value)}")
        return
    if not _print_table(stack):
        raise typer.Exit(code=1)


def down(state_dir: Path | None = typer.Option(None, help=STATE_HELP, show_default=False)) -> None:
    """Stop the parts `loopline up` started from this state folder (and only those)."""
    from infra.stack import StackError

    _quiet_logs()
    stack = _recorded(state_dir)
    try:
        stopped = stack.down(_report)
    except StackError as exc:
        fail(f"some parts could not be stopped:\n{exc}")
    if not stopped:
        console.print(f"nothing was running from {stack.state_dir}")


def _print_table(stack: Stack) -> bool:
    """Print the status table; True if every part is healthy or waiting for a model."""
    table = Table(title=f"loopline stack in {stack.state_dir}")
    for column in ("part", "URL", "PID", "health", ""):
        table.add_column(column, no_wrap=column != "")
    rows = stack.status()
    for row in rows:
        table.add_row(row.part.name, row.part.url, str(row.pid or "-"),
                      f"[{HEALTH_STYLE[row.health]}]{row.health}[/]", row.detail)
    console.print(table)
    return all(row.health in ("healthy", "waiting", "off") for row in rows)
