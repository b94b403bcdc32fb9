"""bench/real_data.py end to end on a tiny made-up dataset: the real train flow (twice), registry downloads,
the FeedbackService stream and the batch retrain, with a random tiny encoder and small sizes."""

from __future__ import annotations

import itertools
import json
import sys

import pandas as pd
import pytest

from tests.conftest import import_bench

INTENTS = {  # invented intents, none of them HWU64's
    "water_plants": ["water the {x}", "give the {x} some water", "the {x} looks thirsty", "sprinkle the {x}"],
    "feed_cat": ["feed {x}", "give {x} her dinner", "put food out for {x}", "is it time to feed {x}"],
    "order_pizza": ["order a {x} pizza", "get me a {x} pizza delivered", "i want a {x} pizza", "pizza with {x}"],
    "book_haircut": ["book a haircut {x}", "get me a trim {x}", "schedule the barber {x}", "haircut appointment {x}"],
}
SLOTS = {
    "water_plants": ["ferns", "tomatoes", "cactus", "orchid", "basil", "roses", "lawn", "palm", "ivy", "herbs",
                     "bonsai", "lilies"],
    "feed_cat": ["luna", "milo", "the cat", "whiskers", "kitty", "tom", "cleo", "oscar", "nala", "simba", "felix",
                 "the kitten"],
    "order_pizza": ["pepperoni", "margherita", "veggie", "hawaiian", "cheese", "mushroom", "large", "small",
                    "spicy", "bbq chicken", "olive", "four cheese"],
    "book_haircut": ["tomorrow", "on friday", "next week", "at noon", "this evening", "on monday", "at 5pm",
                     "before the wedding", "saturday morning", "after work", "on the 3rd", "soon"],
}


def made_up(per_intent_train: int, per_intent_test: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Distinct texts per intent from templates x slots; the first rows train, the next ones test."""
    train, test = [], []
    for intent, templates in INTENTS.items():
        texts = [t.format(x=s) for s, t in itertools.product(SLOTS[intent], templates)]
        train += [(t, intent) for t in texts[:per_intent_train]]
        test += [(t, intent) for t in texts[per_intent_train:per_intent_train + per_intent_test]]
    return pd.DataFrame(train, columns=["text", "label"]), pd.DataFrame(test, columns=["text", "label"])


@pytest.fixture
def real_data(monkeypatch):
    return import_bench(monkeypatch, "real_data")


def test_a_tiny_run_reports_every_row_with_consistent_counts(real_data, tmp_path, monkeypatch) -> None:
    import flows.model_tasks as model_tasks

    check_gates, calls = model_tasks.check_gates, []

    def refuse_first_bundle(fp32, compiled, truth, classes, min_agreement, max_drop, measurements, tie_margin):
        calls.append(min_agreement)  # (a)'s first bundle fails a gate no bundle passes; the rerun is as given
        return check_gates(fp32, compiled, truth, classes, 1.5 if len(calls) == 1 else min_agreement, max_drop,
                           measurements, tie_margin)

    monkeypatch.setattr(model_tasks, "check_gates", refuse_first_bundle)
    train, test = made_up(per_intent_train=36, per_intent_test=10)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "results"
    result = real_data.main(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                             "--encoder", "tiny", "--seeds", "1", "--limit", "120,32", "--events-at", "20,50,500",
                             "--rate", "5", "--users", "10", "--out", str(out)])

    assert json.loads((out / "real_data.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "real_data.png").stat().st_size > 10_000
    assert result["tiny"] and "arXiv:1903.05566" in result["dataset"]["citation"]
    assert result["dataset"]["n_train"] == 120 and result["dataset"]["n_test"] == 32, "--limit takes N,M rows"
    (seed,) = result["seeds"]
    for row in (seed["a"], seed["b"], seed["d"], *seed["c"]["points"].values()):
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in seed["batched_test_accuracy"].values())
    assert sorted(seed["batched_test_accuracy"]) == ["a", "b", "d"]
    assert seed["a"]["head_rows"] == 96, "the flow's head sees 80% of the training rows"
    assert seed["b"]["head_rows"] == 40 and seed["d"]["head_rows"] == 120
    assert not seed["a"]["gate"]["passed_at_defaults"] and seed["b"]["gate"]["passed_at_defaults"]
    gate = seed["a"]["gate"]
    assert calls[1] == gate["relaxed_to"]["min_agreement"] == min(calls[0], gate["agreement"]), \
        "a refused bundle is measured with the gate relaxed only as far as it measured, and flagged"
    assert result["summary"]["gate_refused_at_defaults"] == {"a": [0], "b": []}
    fallback = seed["a"]["fallback"]
    assert 0.0 <= fallback["coverage"] <= 1.0 and fallback["answered"] == round(fallback["coverage"] * 32)

    c = seed["c"]
    assert list(c["points"]) == ["20", "50", "all"], "points past the stream's end are dropped; all is added"
    counts = c["counts"]
    assert counts["streamed"] == c["stream_rows"] == 120 - 40, "the rows the 10-shot draw did not train on"
    assert counts["learned"] + counts["held_back"] + counts["withheld"] + sum(counts["other_dead_letters"].values()) \
        == counts["streamed"], "every streamed event is learned, held back or withheld (or dead-lettered)"
    assert counts["learned"] == counts["learned_published"] + counts["learned_undone"]
    assert counts["judged"] == counts["learned"] + counts["held_back"] == c["points"]["all"]["judged"]
    assert c["settings_changed"] == {}, "the feedback service runs at production defaults"
    assert c["curve"]["streamed"][0] == 0 and c["curve"]["accuracy"][0] == seed["b"]["accuracy"], \
        "the stream starts from the 10-shot champion as registered"
    assert c["last_windows_accuracy"]["min"] <= c["last_windows_accuracy"]["mean"] <= 1.0
    assert 0 <= seed["c_vs_d"]["only_c_right"] <= 32 and len(seed["c_vs_d"]["ci95_points"]) == 2

    summary = result["summary"]
    assert set(summary["c"]) == {"20", "50", "all"} and summary["a"]["accuracy"]["min"] == seed["a"]["accuracy"]

    # Fine-tuned twins of (a) and (b): the flow fine-tunes, its encoder gate decides, scored on the same rows.
    for key in ("a", "b"):
        twin = seed[f"{key}_ft"]
        assert twin["encoder_decision"].startswith(("fine-tuned", "kept tiny")), twin["encoder_decision"]
        assert twin["encoder_kept"] == twin["encoder_decision"].startswith("fine-tuned")
        assert twin["finetune_s"] > 0 and 0.0 <= twin["val_frozen"] <= 1.0 and twin["int8_agreement"] > 0
        versus = twin["vs_frozen"]
        assert versus["only_finetuned_right"] - versus["only_frozen_right"] == \
            round((twin["accuracy"] - seed[key]["accuracy"]) * 32)
        assert summary[f"{key}_ft"]["kept"] == int(twin["encoder_kept"])
    assert "a_ft_accuracy" in summary["targets_met"] and result["config"]["finetune"] == "classify"


def teardown_module() -> None:
    sys.modules.pop("real_data", None)  # another test may import a module of that name


def test_validation_scores_on_a_stratified_share_of_the_training_file_and_never_reads_test(real_data, tmp_path
                                                                                           ) -> None:
    train, _ = made_up(per_intent_train=20, per_intent_test=0)
    train.to_csv(tmp_path / "train.csv", index=False)
    args = real_data.parse_args(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "absent.csv"),
                                 "--validation", "0.25"])
    fitted, scored, path = real_data.load(args, tmp_path)
    assert len(scored) == len(train) // 4 and len(fitted) + len(scored) == len(train)
    assert (scored["label"].value_counts() == 5).all(), "a quarter of every intent"
    pairs = [set(zip(part["text"], part["label"], strict=True)) for part in (scored, fitted)]
    assert not pairs[0] & pairs[1], "no row both trains and scores"
    assert sorted(pd.read_csv(path)["text"]) == sorted(fitted["text"]), "the flow trains on the rest only"
