"""`loopline data check`, `loopline train --data` and the train flow's own data step accept and refuse the same
files, with the same row-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger
from typer.testing import CliRunner

from flows.config import TrainConfig
from flows.data_tasks import load_data
from loopline.cli import app
from models.data import DatasetError

runner = CliRunner()


def rows(n_classes: int, per_class: int) -> list[tuple[str, str]]:
    """Sorted by label, as many public intent datasets ship."""
    return [(f"please do thing {i} of kind {c}", f"intent_{c}") for c in range(n_classes) for i in range(per_class)]


def csv(rows: list[tuple[str, str]], extra: str = "") -> str:
    return "text,label\n" + "".join(f"{t},{label}\n" for t, label in rows) + extra


GOOD = {
    "sorted_by_label_no_ts.csv": csv(rows(13, 10)),
    "with_ts.csv": "text,label,ts\n" + "".join(f"{t},{label},2026-01-01T00:{i % 60:02d}:00Z\n"
                                                for i, (t, label) in enumerate(sorted(rows(3, 10), key=str))),
    "lines.jsonl": "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows(4, 5)),
}
BAD = {
    "empty_text.csv": (csv(rows(2, 5), "  ,intent_0\n"), "empty text in row(s) 12"),
    "missing_label.csv": (csv(rows(2, 5), "turn it off,\n"), "missing label in row(s) 12"),
    "single_class.csv": (csv(rows(1, 8)), "a single class (intent_0)"),
    "class_too_small.csv": (csv(rows(3, 6), "only once,intent_rare\n"), "class(es) intent_rare have a single row"),
    "broken.jsonl": ('{"text": "hi", "label": "a"}\n{"text": \n', "line 2 is not JSON"),
    "all_late.csv": ("text,label,ts\n" + "".join(f"{t},{label},2026-01-01T00:{i:02d}:00Z\n"
                                                 for i, (t, label) in enumerate(rows(2, 5))),
                     "every row of class(es) intent_1 is in the latest 50%"),
}


def write(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def flow_reads(source: str, **options: object) -> str:
    """What the train flow's data step says of the file: its split note, or its error."""
    with disable_run_logger():
        try:
            return load_data.fn(TrainConfig(data_path=source, **options)).note
        except DatasetError as exc:
            return f"error: {exc}"


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_files_pass_both_and_split_alike(tmp_path: Path, name: str) -> None:
    source = write(tmp_path, name, GOOD[name])
    checked = runner.invoke(app, ["data", "check", source, "--seed", "5"])
    assert checked.exit_code == 0, checked.output
    note = flow_reads(source, seed=5)
    assert not note.startswith("error") and note in " ".join(checked.output.split())


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_fail_both_with_the_same_message(tmp_path: Path, name: str) -> None:
    content, message = BAD[name]
    source = write(tmp_path, name, content)
    holdout = ["--holdout", "0.5"] if name == "all_late.csv" else []
    checked = runner.invoke(app, ["data", "check", source, *holdout])
    trained = runner.invoke(app, ["train", "--data", source, *holdout])
    flow = flow_reads(source, holdout=0.5 if holdout else 0.2)
    assert checked.exit_code == trained.exit_code == 2
    assert message in checked.output and message in flow
    # The CLI says exactly what the flow says, on one line (output that is not a terminal is not wrapped).
    assert checked.output.strip() == trained.output.strip() == flow


def test_shots_are_checked_alike(tmp_path: Path) -> None:
    source = write(tmp_path, "small.csv", csv(rows(3, 6)))
    checked = runner.invoke(app, ["data", "check", source, "--shots", "8"])
    trained = runner.invoke(app, ["train", "--data", source, "--shots", "8"])
    assert checked.exit_code == trained.exit_code == 2
    assert checked.output.strip() == trained.output.strip() == flow_reads(source, shots=8)
    assert "fewer than 8 rows" in checked.output
    assert runner.invoke(app, ["train", "--shots", "8"]).exit_code == 2  # generated traffic has no per-class draw
