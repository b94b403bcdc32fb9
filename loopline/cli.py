"""The `loopline` command."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import typer
from rich.table import Table

from loopline.cli_data import data_app
from loopline.cli_demo import demo
from loopline.cli_examples import examples_app
from loopline.cli_feedback import promote
from loopline.cli_models import models_app
from loopline.cli_send import feedback_app
from loopline.cli_stack import down, status, up
from loopline.cli_train import flows_app, serve_api, train
from loopline.ui import console, progress_display

app = typer.Typer(help="loopline: an online-learning MLOps pipeline with a feedback loop.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(examples_app, name="examples")
app.add_typer(flows_app, name="flows")
app.command()(train)
app.command("serve")(serve_api)
app.add_typer(feedback_app, name="feedback")  # no subcommand: the service; `send`: one event
app.command("promote")(promote)
app.command()(up)
app.command()(status)
app.command()(down)
app.command()(demo)


@app.command()
def evaluate(
    out: Path = typer.Option(Path("out"), help="Where the report and plots go."),
    events: int = typer.Option(20_000, min=500, help="Utterances in the training stream."),
    seed: int = typer.Option(0),
    tiny_encoder: bool = typer.Option(False, help="Random tiny BERT instead of MiniLM (fast)."),
) -> None:
    """Train and evaluate offline, in this process (no servers): stable and new_phrasing accuracy."""
    from dataclasses import replace

    from models.encoder import Encoder
    from models.evaluate import plot_confusion
    from models.offline import OfflineConfig, run_offline
    from models.traffic import TrafficConfig

    config = OfflineConfig(traffic=TrafficConfig(seed=seed, n_events=events))
    config = replace(config, drift=replace(config.drift, n_events=max(events // 4, 400)))
    console.rule("[bold]loopline: offline training and evaluation")
    encoder = Encoder.tiny_random(seed) if tiny_encoder else Encoder.from_pretrained()
    console.print(f"encoder: {'tiny random BERT' if tiny_encoder else 'all-MiniLM-L6-v2'} "
                  f"({encoder.dim}-d), features: 2^{config.spec.bits} hashed buckets")
    with progress_display() as track:
        result = run_offline(config, encoder, track)

    console.print(_per_intent_table(result.holdout))
    summary = Table(title="accuracy against the intents users meant")
    for column in ("evaluated on", "n", "accuracy", "macro-F1", "log loss"):
        summary.add_column(column, justify="right" if column != "evaluated on" else "left")
    for name, ev in (("held-out stable traffic", result.holdout),
                     ("new_phrasing, before onset", result.before_onset),
                     ("new_phrasing, after onset", result.after_onset)):
        summary.add_row(name, f"{ev.n:,}", f"{ev.accuracy:.3f}", f"{ev.macro_f1:.3f}",
                        f"{ev.log_loss:.3f}")
    console.print(summary)
    png = plot_confusion(result.holdout, out / "confusion_matrix.png",
                         title=f"held-out stable traffic: accuracy {result.holdout.accuracy:.3f}")
    result.holdout.per_class.to_csv(out / "per_intent.csv")
    console.print(f"confusion matrix: [bold]{png}[/], per-intent table: {out / 'per_intent.csv'}")


def _per_intent_table(evaluation) -> Table:
    table = Table(title="per-intent report (held-out stable traffic)")
    table.add_column("intent")
    for column in ("precision", "recall", "f1", "support"):
        table.add_column(column, justify="right")
    for intent, row in evaluation.per_class.iterrows():
        table.add_row(str(intent), f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}",
                      f"{int(row.support)}")
    return table


def main() -> None:
    # Our own loggers say what happens; libraries only speak up when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("loopline", "models", "flows", "services", "infra"):
        logging.getLogger(name).setLevel(logging.INFO)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    app()


if __name__ == "__main__":
    main()
