"""bench/finetune_recipe.py end to end on made-up intents with the tiny encoder: every case, frozen and tuned."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import import_bench
from tests.integration.made_up import made_up


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return import_bench(monkeypatch, "finetune_recipe")


@pytest.mark.slow
def test_a_tiny_run_scores_each_variant_beside_its_frozen_twin(bench: ModuleType, tmp_path: Path) -> None:
    made_up(12, seed=1).to_csv(tmp_path / "train.csv", index=False)
    made_up(4, seed=2).to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "recipe.json"
    bench.main(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--encoder", "tiny",
                "--shots", "4", "--draws", "1", "--full-seeds", "1", "--val-per-class", "2", "--budget-s", "20",
                "--variant", "cls:classify:epochs=2", "--full-variant", "cls:classify:epochs=1", "--out", str(out)])

    written = json.loads(out.read_text())
    kinds = {(row["kind"], row["variant"]) for row in written["summary"]}
    assert kinds == {("4-shot", "frozen"), ("4-shot", "cls"), ("full", "frozen"), ("full", "cls")}, kinds
    for row in written["summary"]:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 <= row["test_macro_f1"] <= 1.0
        assert all(0.0 <= p <= 1.0 for p in row["mcnemar_p"])
        assert (row["variant"] == "frozen") == (row["finetune_s"] == 0.0)


def teardown_module() -> None:
    sys.modules.pop("finetune_recipe", None)
