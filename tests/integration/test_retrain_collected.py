"""A retrain reads what the loop collected: the examples table's rows since the champion's data was taken,
new labels only with enough support, untrusted and withheld rows left out, and the run names what it read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from flows.config import TrainConfig
from services.common.examples import ExamplesTable, rows_table
from services.common.registry import Registry
from services.common.settings import CommonSettings
from tests.integration.helpers import flow_settings
from tests.integration.made_up import made_up

pytestmark = pytest.mark.slow
TINY = {"encoder": "tiny", "epochs": 2, "seed": 3}
TOAST = ["toast the bread", "make me some toast", "brown two slices", "crisp the loaf please", "toast a bagel",
         "warm the bread up", "golden toast now", "pop the toaster", "toast some crumpets", "i want toast"]


@pytest.fixture(scope="module")
def settings(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommonSettings]:
    with flow_settings(mlflow_server, tmp_path_factory.mktemp("state"), "collected") as settings:
        yield settings


def example(i: int, text: str, label: str, user: str, verdict: str = "learned", reason: str | None = None
            ) -> dict[str, object]:
    now = time.time()
    return {"event_id": f"fb-{i}", "prediction_id": f"p-{i}", "text": text, "user_id": user, "user_features": None,
            "model_version": "1", "predicted": "feed_the_cat", "confidence": 0.4, "label": label,
            "verdict": verdict, "reason": reason, "window_decision": "published", "prediction_ts": now - 1,
            "feedback_ts": now, "window_end": now, "partition": 0, "offset": i}


def test_a_retrain_learns_collected_examples_and_a_well_supported_new_intent(
        settings: CommonSettings, tmp_path: Path) -> None:
    from flows.train import train_flow

    data = tmp_path / "household.csv"
    made_up(30, seed=1).to_csv(data, index=False)
    first = train_flow(TrainConfig(data_path=str(data), **TINY))
    assert first.promoted and "make_toast" not in first.classes

    table = ExamplesTable(settings.examples_location)
    rows = [example(i, TOAST[i % 10] + f" {i}", "make_toast", f"user-{i % 6}",
                    verdict="unknown_label", reason="unknown_label") for i in range(30)]  # 30 rows, 6 users
    rows += [example(100 + i, f"bake a pie number {i}", "bake_pie", "user-0", verdict="unknown_label",
                     reason="unknown_label") for i in range(40)]  # plenty of rows, one user: not an intent
    rows += [example(200 + i, f"the dragon {i}", "summon_the_dragon", "user-1", verdict="held_back")
             for i in range(10)]
    rows += [example(300 + i, f"give the cat fish {i}", "summon_the_dragon", "mallory", verdict="withheld",
                     reason="untrusted_user") for i in range(5)]
    rows += [example(310, "feed the cat now", "brew_a_potion", "mallory")]  # learned before the verdict came
    table.append(rows_table(rows), "feedback", 1)
    table.append(rows_table(rows[:10]), "feedback", 1)  # a replayed commit adds nothing

    second = train_flow(TrainConfig(from_champion=True, **TINY))
    assert "make_toast" in second.classes, "30 examples from 6 users: a new class"
    assert "bake_pie" not in second.classes, "one user cannot invent an intent"
    version = Registry(settings).get(second.version)
    assert version.tags["collected_rows"] == str(30 + 10)  # toast (train and eval) + held-back dragons
    assert float(version.tags["collected_since"]) <= time.time()
    run = mlflow.get_run(second.run_id)
    inputs = {tag.key: tag.value for i in run.inputs.dataset_inputs for tag in i.tags
              if i.dataset.name == "examples-table"}
    assert inputs["uri"] == table.uri and inputs["table_version"] == str(table.version())
    assert "too little support for bake_pie (40 rows, 1 users)" in run.data.tags["collected"]
    assert "rows of untrusted users" in run.data.tags["collected"]
    collected = pd.read_parquet(mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{second.run_id}/data/collected.parquet", dst_path=str(tmp_path / "dl")))
    assert set(collected["label"]) == {"make_toast", "summon_the_dragon"}
    assert "mallory" not in set(collected["user_id"]), "an untrusted user's learned rows are left out too"
    held = collected[collected["text"].str.startswith("the dragon")]
    assert set(held["split"]) == {"eval"}, "held-back rows were never learned online: they evaluate"
    base = pd.read_parquet(mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{second.run_id}/data/dataset.parquet", dst_path=str(tmp_path / "dl2")))
    assert len(base) == len(made_up(30, seed=1)) and "event_id" not in base.columns

    third = train_flow(TrainConfig(from_champion=True, **TINY))
    assert "make_toast" in third.classes, "the next retrain reads the table from where the last one started"

    # An on-drift run reads up to the end of the drifted window: feedback that came later is not read.
    before = min(float(r["feedback_ts"]) for r in rows) - 1  # type: ignore[arg-type]
    fourth = train_flow(TrainConfig(from_champion=True, collected_feedback_until=before, **TINY))
    assert "make_toast" not in fourth.classes
    assert Registry(settings).get(fourth.version).tags["collected_rows"] == "0"
