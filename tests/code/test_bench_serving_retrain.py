"""bench/serving_retrain.py --quick end to end: serving answers while a real `loopline train` runs beside it."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import import_bench


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return import_bench(monkeypatch, "serving_retrain")


@pytest.mark.slow  # 60-90 s: a tiny-encoder train flow under serving load
def test_a_quick_run_measures_serving_idle_and_beside_a_retrain(bench: ModuleType, tmp_path: Path) -> None:
    result = bench.main(["--quick", "--finetune", "classify", "--finetune-budget", "20", "--out", str(tmp_path)])

    written = json.loads((tmp_path / "serving_retrain-finetune-classify.json").read_text())
    assert written["config"]["finetune"] == "classify", "the retrain fine-tuned the encoder first"
    assert written == json.loads(json.dumps(result))
    phases = written["phases"]
    assert set(phases) == {"idle", "retrain, nice 10"}
    assert phases["retrain, nice 10"]["retrain_ok"], "the retrain ran to completion"
    for name, phase in phases.items():
        assert phase["requests"] > 100 and 0 < phase["p50_ms"] <= phase["p99_ms"], name
    assert phases["idle"]["p99_vs_idle"] == 1.0
