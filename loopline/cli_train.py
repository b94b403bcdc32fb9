"""`loopline train` (one flow run) and `loopline flows serve` (scheduled and triggered runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from loopline.ui import console, describe_invalid, fail, progress_display

flows_app = typer.Typer(help="Prefect deployments of the train flow.", no_args_is_help=True)


def train(
    data: Path | None = typer.Option(None, help="Your own CSV/Parquet (text,label[,user_id,ts]); "
                                                "default: generated traffic."),
    scenario: str = typer.Option("stable", help="Scenario of generated traffic."),
    events: int = typer.Option(20_000, min=200, help="Generated utterances."),
    seed: int = typer.Option(0),
    encoder: str = typer.Option("minilm", help="minilm, tiny, or a folder saved by Encoder.save."),
    epochs: int = typer.Option(3, min=1),
    margin: float = typer.Option(0.0, min=0.0, max=1.0, help="Challenger replaces champion unless worse "
                                                              "by more than this accuracy."),
) -> None:
    """One run of train -> quantize -> compile -> gate -> register -> deploy."""
    from pydantic import ValidationError

    from flows.config import TrainConfig

    try:
        config = TrainConfig(data_path=data, scenario=scenario, n_events=events, seed=seed, encoder=encoder,
                             epochs=epochs, deploy_margin=margin)
    except ValidationError as exc:
        fail(describe_invalid(exc))
    if data is not None and not data.exists():
        fail(f"{data}: no such file")

    from flows import progress
    from flows.gates import GateFailed
    from flows.train import train_flow
    from models.data import DatasetError
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    console.rule("[bold]loopline: train -> quantize -> compile -> deploy")
    console.print(f"registry: {settings.tracking_uri}  model: [bold]{settings.model_name}[/]")
    with progress_display() as track:
        progress.install(track)
        try:
            result = train_flow(config)
        except GateFailed as exc:
            fail(f"gate failed, nothing registered: {exc}\n{exc.report.summary()}")
        except DatasetError as exc:
            fail(str(exc))
        finally:
            progress.install(None)

    table = Table(title=f"{settings.model_name} v{result.version}")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("champion", "yes" if result.promoted else "no")
    console.print(table)
    console.print(("[green]promoted[/]: " if result.promoted else "[yellow]not promoted[/]: ") + result.reason)
    console.print(f"MLflow run {result.run_id}; review with `loopline models list`")


@flows_app.command("serve")
def serve(
    cron: str = typer.Option("0 3 * * *", help="Schedule of the nightly retrain (cron, UTC)."),
    encoder: str = typer.Option("minilm", help="Encoder the scheduled runs use."),
    scenario: str = typer.Option("stable", help="Scenario of the generated traffic the runs train on."),
    events: int = typer.Option(20_000, min=200, help="Generated utterances the runs train on."),
    seed: int = typer.Option(0),
) -> None:
    """Register and serve the deployments: nightly cron and retrain on `loopline.drift.detected`."""
    import os

    from pydantic import ValidationError

    from flows.config import TrainConfig
    from flows.deployments import DRIFT_EVENT, serve_deployments

    try:
        config = TrainConfig(encoder=encoder, scenario=scenario, n_events=events, seed=seed)
    except ValidationError as exc:
        fail(describe_invalid(exc))
    if not os.environ.get("PREFECT_API_URL"):
        fail("PREFECT_API_URL is not set: start `prefect server start` (or `loopline up`) and export "
             "PREFECT_API_URL=http://127.0.0.1:4200/api; schedules only run against a real server")
    console.print(f"serving deployments: nightly ({cron}) and on-drift ({DRIFT_EVENT}); Ctrl-C stops")
    try:
        serve_deployments(cron=cron, config=config)
    except ValueError as exc:
        fail(str(exc))


def serve_api() -> None:
    """Start the serving API (uvicorn) with settings from LOOPLINE_* variables."""
    import uvicorn
    from pydantic import ValidationError

    from services.serving.app import create_app
    from services.serving.settings import ServingSettings

    try:
        settings = ServingSettings()
    except ValidationError as exc:
        fail(describe_invalid(exc))
    console.print(f"serving on http://{settings.host}:{settings.port} (docs at /docs)")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
