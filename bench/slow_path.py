"""The slow path, end to end: does a retrain on what the loop collected equal a retrain on the same rows as a file?

Input: the state folder and output folder of a finished `loopline demo --data TRAIN --test TEST --retrain`
(the demo starts the retrain after the replay, from the stack's runner). The demo's own record
(`demo.json`) says which replayed requests got feedback; the few-shot draw is what the champion's run
recorded. Then:

1. **Nothing lost**: every feedback event the demo's producer had acknowledged is a row of the examples
   table (matched by text and label: the demo does not know the event ids serving's clients chose).
2. **A file run on the same rows**: the few-shot draw plus exactly the utterances that got feedback, with
   the same train/eval split the retrain used (rows the feedback service held back evaluate; a row the
   retrain left out, e.g. withheld from an untrusted user, trains, as it would in a file), trained by the
   same flow with the same seed and `collected=False`.
3. Both registered bundles scored on the test split as serving loads them (`models.predict.Predictor`),
   with a paired comparison on the same rows. Target: within 0.3 points.

Run: `.venv/bin/python bench/slow_path.py --state STATE --record OUT/demo.json --test TEST`
Writes `slow_path.json` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from machine import cpu_name  # bench/machine.py: bench scripts run as `python bench/<name>.py`
from rich.console import Console
from rich.table import Table

console = Console()
TARGET_POINTS = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, required=True, help="state folder of the finished data demo")
    parser.add_argument("--record", type=Path, required=True, help="its out/demo.json")
    parser.add_argument("--test", required=True, help="the test file the demo scored")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from infra.stack import Stack

    stack = Stack.load(args.state)
    os.environ.update(stack.client_env())  # before MLflow and Prefect are imported: the demo's registry
    from loopline.demo.your_data import replay_requests
    from models.data import load_dataset
    from services.common.examples import ExamplesTable
    from services.common.registry import Registry
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    registry = Registry(settings)
    record = json.loads(args.record.read_text())
    plan = record["plan"]
    retrained = max((v for v in registry.versions() if v.tags.get("source") == "train"
                     and int(v.tags.get("collected_rows", "0") or 0) > 0), key=lambda v: v.version)
    base, collected = (_artifact(retrained.run_id, f"data/{name}") for name in ("dataset.parquet", "collected.parquet"))

    replayed = replay_requests(plan["data"], plan["shots"], plan["seed"], plan["events"])
    acked = [index for index, _ts, ok in record["feedback"] if ok]
    given = replayed.iloc[acked][["text", "label", "user_id"]].reset_index(drop=True)
    table = ExamplesTable(settings.examples_location).read()
    lost = _missing(given, table)
    split = dict(zip(zip(collected["text"], collected["label"], strict=True), collected["split"], strict=True))
    given = given.assign(split=[split.get((t, lab), "train") for t, lab in zip(given["text"], given["label"],
                                                                                strict=True)])
    file_rows = pd.concat([base[["text", "label", "split"]], given[["text", "label", "split"]]], ignore_index=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "same_rows.csv"
        file_rows.to_csv(path, index=False)
        began = time.monotonic()
        from flows.config import TrainConfig
        from flows.train import train_flow

        config = TrainConfig(data_path=str(path), collected=False, encoder=plan["encoder"], seed=plan["seed"],
                             announce=False)
        as_file = train_flow(config)
        file_s = time.monotonic() - began
        test = load_dataset(args.test)
        scores = {name: _score(registry, version, test, Path(tmp) / name)
                  for name, version in (("collected", retrained.version), ("file", as_file.version))}

    right_c, right_f = scores["collected"], scores["file"]
    result = {
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, CPython {platform.python_version()}",
        "state": str(args.state), "retrained_version": retrained.version, "file_version": as_file.version,
        "feedback_acked": len(acked), "table_rows": len(table), "lost": len(lost), "lost_examples": lost[:10],
        "collected_train": int((collected["split"] == "train").sum()),
        "collected_eval": int((collected["split"] == "eval").sum()),
        "file_rows": len(file_rows), "file_train_s": round(file_s, 1),
        "test_rows": len(test), "accuracy_collected": float(right_c.mean()), "accuracy_file": float(right_f.mean()),
        "difference_points": float((right_c.mean() - right_f.mean()) * 100),
        "only_collected_right": int((right_c & ~right_f).sum()), "only_file_right": int((right_f & ~right_c).sum()),
    }
    result["within_target"] = abs(result["difference_points"]) <= TARGET_POINTS and result["lost"] == 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slow_path.json").write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return result


def _artifact(run_id: str | None, path: str) -> pd.DataFrame:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp))


def _missing(given: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Feedback the demo sent that no table row carries (text and label), as `text -> label`."""
    kept = set(zip(table["text"], table["label"], strict=True))
    return [f"{t} -> {lab}" for t, lab in zip(given["text"], given["label"], strict=True) if (t, lab) not in kept]


def _score(registry: Any, version: int, test: pd.DataFrame, folder: Path) -> np.ndarray:
    from models.predict import Predictor

    predictor = Predictor(registry.download(version, folder))
    answers = [predictor.predict([text])[0] for text in test["text"]]  # one text per call, as serving encodes
    return np.array(answers) == test["label"].to_numpy()


def _print(r: dict[str, Any]) -> None:
    table = Table(title="retrain on collected feedback vs the same rows as a file (test split)")
    for column in ("", "value"):
        table.add_column(column)
    table.add_row("feedback acknowledged by the broker", f"{r['feedback_acked']:,}")
    table.add_row("examples table rows / not found there", f"{r['table_rows']:,} / {r['lost']}")
    table.add_row("collected rows the retrain used", f"{r['collected_train']:,} train, {r['collected_eval']:,} eval")
    table.add_row(f"v{r['retrained_version']} (collected) test accuracy", f"{r['accuracy_collected']:.4f}")
    table.add_row(f"v{r['file_version']} (file) test accuracy", f"{r['accuracy_file']:.4f}")
    table.add_row("difference", f"{r['difference_points']:+.2f} points (target within {TARGET_POINTS})")
    table.add_row("only one right", f"collected {r['only_collected_right']}, file {r['only_file_right']}")
    table.add_row("hardware", r["hardware"])
    console.print(table)


if __name__ == "__main__":
    main()
