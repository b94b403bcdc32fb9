"""bench/user_stats.py: it finds a gain where user stats decide the answer, and runs end to end on small streams."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from tests.conftest import import_bench
from tests.integration.made_up import made_up


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return import_bench(monkeypatch, "user_stats")


def test_stats_that_decide_the_answer_are_found(bench: ModuleType) -> None:
    """Each user means one intent by the same vague words: only the user's last correction tells which."""
    train = made_up(12, seed=1)[["text", "label"]].assign(user_id="")
    intents = sorted(set(train["label"]))
    users = [f"u{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    chosen = rng.integers(0, len(users), 1_200)
    requests = pd.DataFrame({"text": "do the usual", "user_id": [users[i] for i in chosen],
                             "label": [intents[i % len(intents)] for i in chosen], "answered": True})
    requests["true_label"] = requests["label"]
    stream = bench.Stream("planted", train, requests)
    embed = {t: np.zeros(4, dtype=np.float32) for t in {*train["text"], "do the usual"}}

    without = bench._replay(stream, embed, 40, with_stats=False)
    with_stats = bench._replay(stream, embed, 40, with_stats=True)
    compared = bench._paired(without.served, with_stats.served)
    assert compared["without"] < 0.3 and compared["with"] > 0.6, compared
    assert compared["gained"] > compared["lost"] and compared["mcnemar_p"] < 1e-6


@pytest.mark.slow
def test_a_small_run_writes_paired_results_for_every_stream(bench: ModuleType, tmp_path: Path) -> None:
    data = tmp_path / "intents"
    data.mkdir()
    made_up(40, seed=2).to_csv(data / "train.csv", index=False)
    made_up(8, seed=3).to_csv(data / "test.csv", index=False)
    result = bench.main(["--encoder", "tiny", "--demo-events", "600", "--demo-train", "500", "--hwu64", str(data),
                         "--out", str(tmp_path)])

    written = json.loads((tmp_path / "user_stats.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert [s["stream"] for s in written["streams"]] == ["demo", "hwu64-uniform", "hwu64-habits"]
    for stream in written["streams"]:
        for part in ("served", "test") if stream["stream"] != "demo" else ("served", "served_after_onset"):
            r = stream[part]
            assert r["gained"] - r["lost"] == round((r["with"] - r["without"]) * r["n"]), (stream["stream"], part)
