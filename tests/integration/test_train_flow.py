"""The train flow under prefect_test_harness against a real MLflow server on SQLite.

One model name per module; the tests run in order and build on each other:
v1 becomes champion, a broken compile registers nothing, a worse v2 stays
challenger, then promote and rollback from the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import numpy_helper
from prefect.cache_policies import NO_CACHE
from typer.testing import CliRunner

from flows.config import TrainConfig
from flows.gates import GateFailed
from flows.train import TrainResult
from loopline.cli import app
from loopline.ui import console
from models.bundle import DRIFT_REFERENCE_DIR, verify_bundle
from models.traffic import GENERATED_INTENTS as INTENTS
from services.common.registry import CHALLENGER, CHAMPION, Registry
from services.common.settings import CommonSettings
from services.feedback.drift import DriftSettings, Reference
from tests.integration.helpers import flow_settings

pytestmark = pytest.mark.slow
SMALL = {"encoder": "tiny", "n_events": 1_500, "n_users": 200, "epochs": 2, "seed": 3}


@pytest.fixture(scope="module")
def settings(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommonSettings]:
    with flow_settings(mlflow_server, tmp_path_factory.mktemp("state"), "flow-test") as settings:
        yield settings


@pytest.fixture(scope="module")
def first_run(settings: CommonSettings) -> TrainResult:
    from flows.train import train_flow

    return train_flow(TrainConfig(**SMALL))


def test_first_version_becomes_champion_with_lineage_and_artifacts(
    settings: CommonSettings, first_run: TrainResult
) -> None:
    registry = Registry(settings)
    assert first_run.promoted and first_run.version == 1
    version = registry.get(1)
    assert set(version.aliases) == {CHAMPION, CHALLENGER}
    for tag in (
        "data_hash",
        "code_version",
        "scenario",
        "parent_version",
        "source",
        "gate.passed",
        "gate.agreement",
        "metric.accuracy",
        "quantization",
        "deploy.decision",
        "data_uri",
        "n_classes",
        "classes",
        "fallback.threshold",
        "fallback.precision",
        "fallback.coverage",
    ):
        assert tag in version.tags, tag
    assert version.tags["scenario"] == "stable" and version.tags["gate.passed"] == "true"
    assert version.tags["data_uri"].startswith("generator:stable?seed=3") and version.tags["n_classes"] == "22"
    assert float(version.tags["gate.agreement"]) >= 0.99
    artifacts = {a.path for a in registry.client.list_artifacts(first_run.run_id)}
    assert {
        "eval_report.json",
        "confusion_matrix.png",
        "per_intent.csv",
        "quantization_report.json",
        "gate_report.json",
        "fallback.json",
        "data",
    } <= artifacts
    inputs = mlflow.get_run(first_run.run_id).inputs.dataset_inputs
    tags = {tag.key: tag.value for tag in inputs[0].tags}
    assert tags["uri"] == version.tags["data_uri"] and tags["mlflow.data.context"] == "training", \
        "the run names the data it trained on"
    assert version.run_id == first_run.run_id
    assert "accuracy" in version.description and "gates: passed" in version.description


def test_champion_loads_as_pyfunc_and_predicts_texts(
    settings: CommonSettings, first_run: TrainResult, tmp_path: Path
) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{CHAMPION}")
    texts = ["turn on wifi", "set an alarm for 7am", "play some jazz"]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["intent", "confidence", "fallback"] and len(out) == 3
    assert set(out["intent"]) <= set(INTENTS)
    assert ((out["confidence"] > 0) & (out["confidence"] <= 1)).all()
    from models.predict import Predictor

    direct = Predictor(Registry(settings).download(first_run.version, tmp_path))
    assert list(out["intent"]) == direct.predict(texts)
    with_users = model.predict(pd.DataFrame({"text": texts, "device": ["ios", "android", None]}))
    assert list(with_users["intent"]) == direct.predict(texts, [{"device": "ios"}, {"device": "android"}, None])


def test_the_bundle_carries_a_drift_reference_of_the_eval_rows(
    settings: CommonSettings, first_run: TrainResult, tmp_path: Path
) -> None:
    bundle = Registry(settings).download(first_run.version, tmp_path)
    assert any(name.startswith(f"{DRIFT_REFERENCE_DIR}/") for name in verify_bundle(bundle).files), \
        "the manifest must vouch for the reference"
    reference = Reference.load(bundle / DRIFT_REFERENCE_DIR)
    run = mlflow.get_run(first_run.run_id).data
    assert len(reference.frame) == min(int(run.params["n_eval"]), 5_000)
    assert reference.n_components == DriftSettings().n_components
    # the head's FP32 answers on the eval rows: exactly the logged FP32 accuracy, near the compiled one
    assert reference.accuracy == pytest.approx(run.metrics["fp32_accuracy"], abs=1e-9)
    assert reference.accuracy == pytest.approx(first_run.metrics["accuracy"], abs=0.02)
    assert set(reference.frame["predicted_intent"]) <= set(INTENTS)
    assert (reference.frame["device"] != "unknown").any(), "eval rows carry their users' features"


def _scramble_embeddings(quantize: Callable[..., Path]) -> Callable[..., Path]:
    """A compile step that silently corrupts the graph: word-embedding rows reversed."""

    def broken(src: Path, dst: Path, *args: Any, **kwargs: Any) -> Path:
        out = quantize(src, dst, *args, **kwargs)
        model = onnx.load(str(out))
        biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        array = numpy_helper.to_array(biggest)
        biggest.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array[::-1]), biggest.name))
        onnx.save(model, str(out))
        return Path(out)

    return broken


def test_broken_compile_is_stopped_by_the_gate(
    settings: CommonSettings, first_run: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.model_tasks as model_tasks
    import flows.train as train

    monkeypatch.setattr(model_tasks, "quantize_onnx", _scramble_embeddings(model_tasks.quantize_onnx))
    monkeypatch.setattr(train, "compile_encoder", model_tasks.compile_encoder.with_options(cache_policy=NO_CACHE))
    with pytest.raises(GateFailed, match="agreement with torch FP32") as failure:
        train.train_flow(TrainConfig(**SMALL))
    assert not failure.value.report.passed
    registry = Registry(settings)
    assert [v.version for v in registry.versions()] == [1], "a failed gate must register nothing"
    assert registry.champion().version == 1


def test_worse_challenger_keeps_champion_then_promote_and_rollback(
    settings: CommonSettings, first_run: TrainResult
) -> None:
    from flows.train import train_flow

    # This run is about the deploy decision: FP32 ONNX and looser gates, because a barely trained head
    # has near-tied classes that any numeric difference can flip on 80 eval rows.
    worse = train_flow(TrainConfig(**{**SMALL, "n_events": 400, "epochs": 1, "seed": 4, "quantize": "none",
                                       "min_agreement": 0.95, "max_accuracy_drop": 0.05}))
    registry = Registry(settings)
    assert worse.version == 2 and not worse.promoted, worse.reason
    assert "kept champion v1" in worse.reason
    assert registry.champion().version == 1 and registry.by_alias(CHALLENGER).version == 2
    assert registry.get(2).tags["vs_champion.version"] == "1"

    runner = CliRunner()
    console.width = 240  # the review table folds its cells on a narrow terminal
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "kept champion v1" in listed.output
    assert runner.invoke(app, ["models", "promote", "2"]).exit_code == 0
    assert registry.champion().version == 2
    rolled = runner.invoke(app, ["models", "rollback"])
    assert rolled.exit_code == 0, rolled.output
    assert registry.champion().version == 1
    # promote 2 again, then roll back twice: 2 -> 1, then nothing earlier is left (never back to 2)
    assert runner.invoke(app, ["models", "promote", "2"]).exit_code == 0
    assert runner.invoke(app, ["models", "rollback"]).exit_code == 0
    assert registry.champion().version == 1
    again = runner.invoke(app, ["models", "rollback"])
    assert again.exit_code == 2 and "no earlier champion" in again.output
    assert registry.champion().version == 1
    assert runner.invoke(app, ["models", "rollback", "2"]).exit_code == 0
    assert registry.champion().version == 2
    assert len(registry.client.get_registered_model(settings.model_name).tags["champion_history"]) <= 5000
    missing = runner.invoke(app, ["models", "promote", "99"])
    assert missing.exit_code == 2 and "no version 99" in missing.output


def test_a_promoted_version_is_announced_on_model_updates(
    settings: CommonSettings, first_run: TrainResult, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafka import KafkaConsumer

    from flows.train import train_flow

    monkeypatch.setenv("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", broker)
    result = train_flow(TrainConfig(**SMALL))  # same data as v1: not worse than the current champion v2
    assert result.promoted, result.reason
    consumer = KafkaConsumer("model-updates", bootstrap_servers=broker, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000)
    try:
        events = [json.loads(m.value) for m in consumer if m.key == settings.model_name.encode()]
    finally:
        consumer.close()
    announced = [e for e in events if e["kind"] == "full"]
    assert [e["version"] for e in announced] == [str(result.version)]
    assert announced[0]["uri"] == f"models:/{settings.model_name}/{result.version}"


def test_a_retrain_with_the_same_encoder_links_it_instead_of_uploading_it_again(
    settings: CommonSettings, first_run: TrainResult, tmp_path: Path
) -> None:
    from flows.train import train_flow
    from models.bundle import ENCODER_FILE, read_manifest
    from models.predict import Predictor

    registry = Registry(settings)
    result = train_flow(TrainConfig(**SMALL))
    assert result.promoted, result.reason
    version = registry.get(result.version)
    assert int(version.tags["linked_files"]) >= 2, version.tags
    stored = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{registry.client.get_model_version_download_uri(settings.model_name, str(result.version))}",
        dst_path=str(tmp_path / "raw"))
    uploaded = {p.name for p in Path(stored).rglob("*") if p.is_file()}
    assert ENCODER_FILE not in uploaded and "head.npz" in uploaded, sorted(uploaded)
    bundle = registry.download(result.version, tmp_path / "full")  # fetches the linked files, then verifies
    manifest = read_manifest(bundle)
    assert ENCODER_FILE in manifest.linked_files
    holder = read_manifest(registry.download(manifest.linked_version, tmp_path / "holder"))
    assert ENCODER_FILE not in holder.linked_files, "a link points at the version that stores the file"
    assert holder.files[ENCODER_FILE] == manifest.files[ENCODER_FILE]
    assert Predictor(bundle).predict(["wake me up at seven"])[0] in INTENTS


def test_a_fine_tuned_encoder_is_kept_only_past_its_margin_compiled_gated_and_recorded(
    settings: CommonSettings, first_run: TrainResult, tmp_path: Path
) -> None:
    from flows.train import train_flow
    from models.bundle import ENCODER_FILE, read_manifest

    registry = Registry(settings)
    before = read_manifest(registry.download(registry.champion().version, tmp_path / "before"))
    tuned = {**SMALL, "finetune": "classify", "finetune_budget_s": 60}
    # The random tiny encoder does not help the head (hashed n-grams carry it): at margin 0 it is not kept.
    kept = train_flow(TrainConfig(**{**tuned, "encoder_margin": 0.0}))
    version = registry.get(kept.version)
    assert version.tags["encoder.decision"].startswith("kept tiny: validation accuracy"), version.tags
    assert version.tags["encoder.finetuned"] == "false" and "kept tiny" in version.description
    run = mlflow.get_run(kept.run_id)
    assert {"encoder_val_frozen", "encoder_val_finetuned", "finetune_s"} <= set(run.data.metrics)
    assert run.data.metrics["encoder_val_finetuned"] < run.data.metrics["encoder_val_frozen"]
    assert read_manifest(registry.download(kept.version, tmp_path / "kept")).files[ENCODER_FILE] == \
        before.files[ENCODER_FILE]

    # Margin -1 keeps it whatever it scores: compiled, quantized and gated like any encoder, stored whole.
    forced = train_flow(TrainConfig(**{**tuned, "encoder_margin": -1.0}))
    version = registry.get(forced.version)
    assert version.tags["encoder.finetuned"] == "true" and version.tags["encoder"] == "tiny+classify"
    manifest = read_manifest(registry.download(forced.version, tmp_path / "forced"))
    assert manifest.files[ENCODER_FILE] != before.files[ENCODER_FILE] and not manifest.linked
    assert manifest.encoder["ref"] == "tiny+classify" and version.tags["gate.passed"] == "true"
