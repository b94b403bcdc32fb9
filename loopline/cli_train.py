"""`loopline train` (one flow run) and `loopline flows serve` (scheduled and triggered runs)."""

from __future__ import annotations

import typer
from rich.table import Table

from loopline.cli_data import DATA_HELP, check_dataset, holdout_option, shots_option
from loopline.ui import console, describe_invalid, fail, progress_display

flows_app = typer.Typer(help="Prefect deployments of the train flow.", no_args_is_help=True)


def train(
    data: str | None = typer.Option(None, help=DATA_HELP + " Default: generated traffic.", show_default=False),
    holdout: float = holdout_option(),
    shots: int | None = shots_option(),
    scenario: str = typer.Option("stable", help="Scenario of generated traffic."),
    events: int = typer.Option(20_000, min=200, help="Generated utterances."),
    seed: int = typer.Option(0, help="Seeds the split, the few-shot draw, generated traffic and training."),
    encoder: str = typer.Option("minilm", help="minilm, tiny, or a folder saved by Encoder.save."),
    epochs: int = typer.Option(3, min=1),
    margin: float = typer.Option(0.0, min=0.0, max=1.0, help="Challenger replaces champion unless worse "
                                                              "by more than this accuracy."),
    target_precision: float = typer.Option(0.97, min=0.01, max=1.0, help="Fallback: the confidence threshold "
                                           "is the lowest at which answered held-out requests are right this "
                                           "often."),
    out_of_scope: str = typer.Option("oos", help="A class of this name means 'not something the assistant "
                                                 "does': answered with fallback."),
    collected: bool = typer.Option(True, help="Also train on the examples the feedback service collected since the "
                                              "champion's data was taken (the examples table); held-back ones "
                                              "evaluate."),
    finetune: str = typer.Option("off", help="Fine-tune the encoder before export: off, auto (when classes have "
                                             "few rows), classify or contrastive. Kept only if the head scores "
                                             "better with it on a validation split of the training rows."),
    finetune_budget: float = typer.Option(600.0, min=1.0, help="Seconds a fine-tune may take at most."),
) -> None:
    """One run of train -> quantize -> compile -> gate -> register -> deploy."""
    from pydantic import ValidationError

    from flows.config import TrainConfig

    try:
        config = TrainConfig(data_path=data, holdout=holdout, shots=shots, scenario=scenario, n_events=events,
                             seed=seed, encoder=encoder, epochs=epochs, deploy_margin=margin,
                             target_precision=target_precision, out_of_scope=out_of_scope, collected=collected,
                             finetune=finetune, finetune_budget_s=finetune_budget)
    except ValidationError as exc:
        fail(describe_invalid(exc))
    if data is not None:  # the flow would refuse it too, after seconds of imports: say it now, as `data check` does
        prepared = check_dataset(data, holdout, seed, shots)
        console.print(f"{data}: {len(prepared.frame):,} rows, {len(prepared.classes)} classes; {prepared.note}",
                      highlight=False)
    elif shots is not None:
        fail("--shots needs --data: generated traffic is not drawn per class")

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
    table.add_row("classes", str(len(result.classes)))
    table.add_row("data", result.data_uri)
    table.add_row("champion", "yes" if result.promoted else "no")
    console.print(table)
    console.print(("[green]promoted[/]: " if result.promoted else "[yellow]not promoted[/]: ") + result.reason)
    console.print(f"MLflow run {result.run_id}; review with `loopline models list`")


@flows_app.command("serve")
def serve(
    cron: str = typer.Option("0 3 * * *", help="Schedule of the nightly retrain (cron, UTC)."),
    data: str | None = typer.Option(None, help="Train every run on this dataset (path or URI) [default: the data "
                                               "the champion was trained on, as its version records it].",
                                    show_default=False),
    encoder: str = typer.Option("minilm", help="Encoder the scheduled runs use."),
    scenario: str = typer.Option("stable", help="Generated traffic, when the champion came from the generator: "
                                                "its scenario."),
    events: int = typer.Option(20_000, min=200, help="Generated utterances, when the champion came from the "
                                                     "generator."),
    seed: int = typer.Option(0),
) -> None:
    """Register and serve the deployments: nightly cron and retrain on `loopline.drift.detected`."""
    import os

    from pydantic import ValidationError

    from flows.config import TrainConfig
    from flows.deployments import DRIFT_EVENT, serve_deployments

    try:
        config = TrainConfig(data_path=data, from_champion=data is None, encoder=encoder, scenario=scenario,
                             n_events=events, seed=seed)
    except ValidationError as exc:
        fail(describe_invalid(exc))
    if data is not None:
        check_dataset(data, config.holdout, seed, None)
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
