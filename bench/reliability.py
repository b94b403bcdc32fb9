"""Reliability under faults and hostile input, on real processes: one table of what survived.

Every row is an `Outcome` (bench/reliability_outcome.py): a fault or an input, how many
trials, how many of them kept the guarantee, and summed over the trials the feedback
events lost, the events applied twice and the requests that failed. The scenarios live
in one module per part of the system, each with a `run` function that starts what it
needs, runs its scenarios with their own trial counts and returns its rows:

- bench/reliability_feedback.py: the feedback service killed with SIGKILL at random
  points, its newest checkpoint damaged on disk, the broker paused under load.
- bench/reliability_serving.py: serving killed with SIGKILL inside full-version swaps
  and inside streams of head deltas, a soak with RSS sampled, a label-flip flood.
- bench/reliability_registry.py: the MLflow server stopped (SIGSTOP) or killed while
  traffic flows and registrations fall due.

The same scenarios, with fewer trials, are the tests in tests/reliability/, which assert
that each row held. `--trials N` gives every scenario N trials; `--quick` is a smoke run
(fewest trials, short pauses); `--only feedback registry` runs those parts alone.
Results go to bench/results/reliability.json (reliability-<parts>.json for a part run).

Run: `.venv/bin/python bench/reliability.py [--quick] [--trials N] [--only PART ...] [--work DIR]`
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the machine's cores are shared by every process started here

import argparse
import json
import logging
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import reliability_feedback  # bench/reliability_feedback.py: bench scripts import each other
from reliability_outcome import Outcome
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from workspace import workspace

console = Console(width=shutil.get_terminal_size((200, 40)).columns)  # wide tables unwrapped in logs

Run = Callable[[Path, int | None, bool, Progress | None], list[Outcome]]


def serving_rows(work: Path, trials: int | None, quick: bool, progress: Progress | None) -> list[Outcome]:
    import reliability_serving  # imported here: it starts from the tests' stack helpers

    if quick:
        return reliability_serving.run(trials or 3, soak_s=60.0, floods=1, work=work)
    return reliability_serving.run(trials or 20, soak_s=600.0, floods=3, work=work)


def registry_rows(work: Path, trials: int | None, quick: bool, progress: Progress | None) -> list[Outcome]:
    import reliability_registry

    return [reliability_registry.mlflow_down(work, trials or (1 if quick else 2), outage_s=10.0 if quick else 30.0)]


# part name -> (what it covers, its run(work, trials, quick, progress) -> rows); one per scenario module.
SCENARIOS: dict[str, tuple[str, Run]] = {
    "feedback": ("feedback service, checkpoints, broker", reliability_feedback.run),
    "serving": ("serving swaps and deltas, soak, label-flip flood", serving_rows),
    "registry": ("registry outage", registry_rows),
}
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, help="trials of every scenario (default: each scenario's own)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewest trials, short pauses")
    parser.add_argument("--work", type=Path, help="keep state folders and process logs here")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS),
                        help="run these parts only")
    parser.add_argument("--out", type=Path, help="default bench/results/reliability[-<only>].json")
    args = parser.parse_args(argv)
    if args.out is None:
        parts = [part for part in SCENARIOS if part in args.only]
        args.out = RESULTS / ("reliability.json" if len(parts) == len(SCENARIOS)
                              else f"reliability-{'-'.join(parts)}.json")
    return args


def run_all(args: argparse.Namespace) -> tuple[list[Outcome], list[dict[str, str]]]:
    outcomes: list[Outcome] = []
    failed: list[dict[str, str]] = []
    with workspace(args.work, "reliability") as work, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, refresh_per_second=2) as progress:
        for i, (name, (part, run)) in enumerate(SCENARIOS.items()):
            if name not in args.only:
                continue
            try:
                outcomes.extend(run(work / f"{i}-{name}", args.trials, args.quick, progress))
            except Exception as exc:  # one part failing to start must not hide the others' rows
                console.print_exception()
                failed.append({"part": part, "error": repr(exc)})
    return outcomes, failed


def print_table(outcomes: list[Outcome], hardware: str) -> None:
    table = Table(title=f"Reliability: faults and hostile input on real processes ({hardware})")
    table.add_column("fault or input")
    for column in ("trials", "survived", "events lost", "events applied twice", "requests failed"):
        table.add_column(column, justify="right")
    for o in outcomes:
        color = "green" if o.held else "red"
        table.add_row(o.fault, str(o.trials), f"[{color}]{o.survived}[/]", str(o.events_lost),
                      str(o.applied_twice), str(o.requests_failed))
    console.print(table)
    for o in outcomes:
        console.print(f"[bold]{o.fault}[/]: {o.detail}")


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the processes it started, as Ctrl-C does
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # reconnect noise while the broker is paused
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    outcomes, failed = run_all(args)
    from quantize import cpu_name  # bench/quantize.py; imported late: it pulls in torch

    hardware = f"{cpu_name()}, {os.cpu_count()} cores, CPython {platform.python_version()}"
    print_table(outcomes, hardware)
    for f in failed:
        console.print(f"[red]not run[/]: {f['part']}: {f['error']}")
    info: dict[str, Any] = {
        "hardware": hardware, "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
        "settings": {"trials": args.trials, "quick": args.quick, "only": args.only},
        "held": all(o.held for o in outcomes) and not failed,
        "outcomes": [o.as_json() for o in outcomes], "not_run": failed,
    }
    console.print(f"hardware: {hardware}; load average before/after {info['load_before']} / {info['load_after']} "
                  f"(other jobs share the cores); wall time {info['wall_s']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2))
    console.print(f"results: {args.out}")
    if not info["held"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
