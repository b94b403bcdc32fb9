"""bench/recovery.py end to end on a tiny stream: the real flow tasks, bundle and FeedbackService, small sizes."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import import_bench


@pytest.fixture
def recovery(monkeypatch):
    return import_bench(monkeypatch, "recovery")


@pytest.mark.slow  # 12-20 s: compiles the tiny encoder and imports the flow tasks (Prefect)
def test_a_tiny_run_measures_every_curve_and_writes_json_and_plot(recovery, tmp_path) -> None:
    out = tmp_path / "recovery.json"
    args = recovery.parse_args(["--quick", "--pre", "500", "--stream", "300", "--test", "150", "--users", "80",
                                "--step", "100", "--retrain-at", "100", "--epochs", "1", "--out", str(out)])
    assert args.encoder == "tiny" and args.seeds == [0] and args.stream == 300, "explicit options beat --quick's"
    result = recovery.run_recovery(args)

    assert json.loads(out.read_text()) == result and out.with_suffix(".png").stat().st_size > 10_000
    assert "QUICK" in result["encoder"], "a tiny-encoder run says so in its results"
    seed = result["seeds"][0]
    assert sorted(seed["online"]) == ["50/s cold", "50/s warm"]
    cold, warm = seed["online"]["50/s cold"], seed["online"]["50/s warm"]
    for online in (cold, warm):
        assert online["curve"]["feedback"] == [0, 100, 200, 300] == seed["ftrl_alone"]["feedback"]
        assert online["dead_letters"] == 0 and sum(online["decisions"].values()) == len(online["windows"]) > 0
        assert all(0.0 <= a <= 1.0 for a in online["curve"]["accuracy"])
    assert cold["curve"]["accuracy"][0] == seed["pre_drift"]["test"] and cold["curve"]["learned"][0] == 0, \
        "a cold service starts from the flow's head"
    assert warm["curve"]["learned"][0] > 0, "a warm service has learned pre-onset feedback before the drift"
    assert sorted(seed["retrained"]) == ["100", "300", "all_by_wording"]
    summary = result["summary"]["online"]["50/s warm"]
    first, sustained = recovery.events_to(warm["curve"], recovery.TARGET_SHARE * seed["retrained"]["300"])
    assert summary["events_to_target"] == [first] and summary["events_to_target_sustained"] == [sustained], \
        "the summary is read off this seed's curve against 95% of the retrain on every event"
    assert summary["final_accuracy"] == warm["curve"]["accuracy"][-1]


def test_events_to_target_reports_first_and_sustained_crossing(recovery) -> None:
    curve = {"feedback": [0, 250, 500, 750, 1000], "accuracy": [0.80, 0.91, 0.89, 0.92, 0.93]}
    assert recovery.events_to(curve, 0.90) == (250, 750)
    assert recovery.events_to(curve, 0.95) == (None, None)
    assert recovery.median_or_none([250, None]) is None and recovery.median_or_none([250, 750, 500]) == 500


def teardown_module() -> None:
    sys.modules.pop("recovery", None)  # another test may import a module of that name
