"""`loopline data`: generate traffic, or check your own dataset exactly as `loopline train` would read it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from loopline.ui import console, fail

if TYPE_CHECKING:
    from models.split import Prepared

data_app = typer.Typer(help="Generate traffic or check your own data.", no_args_is_help=True)

# The options of `loopline train` that decide whether a dataset can be trained on: `data check` takes the same.
DATA_HELP = ("Your own dataset, any label set: a path or URI (s3://...) of a .csv, .parquet or .jsonl file with "
             "text,label[,user_id,ts].")
HOLDOUT_HELP = "Share of the rows used that evaluates: the latest with a ts column, else a seeded stratified draw."
SHOTS_HELP = "Train on this many rows of every class (a seeded draw), as at a product launch [default: all]."


def holdout_option() -> float:
    return typer.Option(0.2, min=0.01, max=0.89, help=HOLDOUT_HELP)


def shots_option() -> int | None:
    return typer.Option(None, min=1, help=SHOTS_HELP, show_default=False)


def check_dataset(source: str, holdout: float, seed: int, shots: int | None) -> Prepared:
    """Read, validate and split a dataset as the train flow does; exits 2 with the reason if it cannot."""
    from models.data import DatasetError, load_dataset
    from models.split import SplitConfig, prepare

    try:
        frame = load_dataset(source)
        return prepare(frame, SplitConfig(holdout=holdout, seed=seed, shots=shots), source=source)
    except DatasetError as exc:
        fail(str(exc))


@data_app.command("check")
def data_check(
    source: str = typer.Argument(..., help=DATA_HELP),
    holdout: float = holdout_option(),
    seed: int = typer.Option(0, help="Seeds the split and the few-shot draw, as for `loopline train`."),
    shots: int | None = shots_option(),
) -> None:
    """Check your own dataset as `loopline train --data` reads it: same checks, same split, same errors."""
    prepared = check_dataset(source, holdout, seed, shots)
    counts = prepared.frame["label"].value_counts()
    console.print(f"[green]ok[/]: {len(prepared.frame):,} rows used, {len(prepared.classes)} classes "
                  f"({counts.min()}-{counts.max()} rows each), columns "
                  f"{', '.join(c for c in prepared.frame.columns if c != 'truth')}", highlight=False)
    console.print(f"split: {len(prepared.train):,} rows train, {len(prepared.eval):,} evaluate; {prepared.note}",
                  highlight=False)


@data_app.command("generate")
def data_generate(
    out: Path = typer.Option(Path("data"), help="Folder for events.parquet and users.parquet."),
    scenario: str = typer.Option("stable", help="stable, new_phrasing, new_app, prior_shift, label_flip."),
    events: int = typer.Option(20_000, min=1, help="Number of utterances."),
    users: int = typer.Option(2_000, min=1, help="Number of users."),
    seed: int = typer.Option(0, help="Same seed, same output."),
    onset: float = typer.Option(0.5, min=0.0, max=1.0, help="Drift starts at this share of the stream."),
    strength: float = typer.Option(0.6, min=0.0, max=1.0, help="How strong the drift is (see docs)."),
) -> None:
    """Generate phone-assistant traffic with a drift scenario, as Parquet."""
    from models.traffic import TrafficConfig, generate

    try:
        config = TrafficConfig(seed=seed, n_users=users, n_events=events, scenario=scenario,
                               onset=onset, strength=strength)
    except ValueError as exc:
        fail(str(exc))
    traffic = generate(config)
    out.mkdir(parents=True, exist_ok=True)
    traffic.events.to_parquet(out / "events.parquet", index=False)
    traffic.users.to_parquet(out / "users.parquet", index=False)
    after = traffic.events["after_onset"]
    console.print(
        f"wrote {len(traffic.events):,} events ({int(after.sum()):,} after onset) and "
        f"{len(traffic.users):,} users to [bold]{out}[/] (scenario {scenario}, seed {seed})"
    )
