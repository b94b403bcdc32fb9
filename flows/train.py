"""The slow path: train -> quantize -> compile -> gate -> register -> deploy, as a Prefect flow.

The flow only orchestrates; the tasks live in data_tasks (traffic, Feast),
model_tasks (embed, head, compile, drift reference, bundle, gate; the expensive
ones cached) and registry_tasks (score the champion, register, deploy, announce;
retried, deploy never cached).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger

from flows.config import TrainConfig
from flows.data_tasks import (
    Collected,
    Dataset,
    collected_examples,
    frame_hash,
    join_user_features,
    load_data,
    materialize_features,
    with_collected,
)
from flows.finetune_tasks import EncoderChoice, choose_encoder
from flows.gates import GateFailed, GateReport
from flows.model_tasks import (
    build_bundle,
    compile_encoder,
    drift_reference,
    embed,
    fallback_threshold,
    fingerprint,
    fit_head,
    gate,
)
from flows.registry_tasks import (
    announce,
    champion_data,
    code_version,
    deploy,
    link_unchanged_files,
    register,
    score_champion,
)
from models.evaluate import Comparison, Evaluation, compare, evaluate, plot_confusion
from models.fallback import Fallback
from models.features import FeatureSpec
from models.train import featurize
from services.common.registry import COLLECTED_THROUGH_TAG, TAG_LIMIT, Registry, Version, class_tags
from services.common.settings import CommonSettings

DATASET_FILE = "dataset.parquet"  # the base rows a run used, with their split
COLLECTED_FILE = "collected.parquet"  # the examples-table rows it added


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: int
    promoted: bool
    reason: str
    metrics: dict[str, float]
    classes: tuple[str, ...] = ()
    data_uri: str = ""


@flow(name="train-quantize-compile-deploy", log_prints=False)
def train_flow(config: TrainConfig | None = None) -> TrainResult:
    """Train a model, compile it, gate it, register it, and deploy it if it is not worse."""
    config = config or TrainConfig()
    settings = CommonSettings()
    logger = get_run_logger()
    registry = Registry(settings)
    recorded = champion_data(settings) if config.from_champion or config.collected else None
    data = load_data(config, recorded)
    collected = collected_examples(settings, config, recorded, data.classes)
    if collected is not None:
        data = with_collected(data, collected)
    users = join_user_features(data, settings)
    texts, classes = list(data.events["text"]), data.classes
    train_rows, eval_rows = slice(0, data.cut), slice(data.cut, None)
    eval_texts, truth = texts[eval_rows], list(data.events["truth"])[eval_rows]
    eval_users = users[eval_rows] if users is not None else None

    bundle_dir = settings.work_dir / f"bundle-{uuid.uuid4().hex}"
    tuned_folder: Path | None = None
    try:
        with mlflow.start_run(experiment_id=registry.experiment_id(),
                              run_name=f"train-{data.scenario}-{data.data_hash[:8]}") as run:
            data_uri, data_hash = _log_data(data, run.info.run_id)
            mlflow.log_params({**config.model_dump(mode="json"), "data_uri": data_uri, "data_hash": data_hash,
                               "n_train": data.cut, "n_eval": len(truth), "n_classes": len(classes),
                               "split": data.how})
            mlflow.set_tag("split", data.note)
            labels = list(data.events["label"])
            choice = choose_encoder(texts[train_rows], labels[train_rows], users[train_rows] if users else None,
                                    classes, config, settings.work_dir)
            tuned_folder = Path(choice.ref) if choice.finetuned else None
            mlflow.log_metrics(choice.metrics)
            mlflow.set_tags(choice.tags())
            code = fingerprint(choice.ref)
            embeddings = embed(texts, choice.ref, code)
            head = fit_head(texts[train_rows], embeddings[train_rows], users[train_rows] if users else None,
                            labels[train_rows], classes, config.epochs, config.seed)
            eval_batch = featurize(eval_texts, embeddings[eval_rows], FeatureSpec(), eval_users)
            fp32_proba = head.predict_proba_many(eval_batch)
            fp32 = evaluate(fp32_proba, truth, classes)
            mlflow.log_metrics(fp32.metrics("fp32_"))
            compiled = compile_encoder(choice.ref, config.quantize, code)
            mlflow.log_dict(compiled.report, "quantization_report.json")

            parent = registry.champion()
            lineage = {"data_uri": data_uri, "data_hash": data_hash, "scenario": data.scenario,
                       "split_seed": data.split_seed, "holdout": data.holdout, "n_train": data.cut,
                       "n_classes": len(classes), "code_version": code_version(),
                       "parent_version": parent.version if parent else None, "source": "train",
                       "train_run_id": run.info.run_id,
                       # carried forward: the next retrain reads the examples table from here on
                       "collected_since": f"{data.collected.since:.3f}" if data.collected else None,
                       "collected_rows": data.collected.selection.rows if data.collected else 0,
                       COLLECTED_THROUGH_TAG: f"{data.collected.through:.3f}" if data.collected else None,
                       "examples_version": data.collected.table_version if data.collected else None}
            reference = drift_reference(eval_texts, embeddings[eval_rows], fp32_proba, head.classes, eval_users, truth)
            bundle = build_bundle(compiled, head, choice.ref, fp32.metrics("fp32_"), lineage, bundle_dir,
                                  reference, choice.label)
            try:
                report, proba = gate(fp32_proba, bundle, eval_texts, eval_users, truth, config, choice.ref)
            except GateFailed as exc:
                mlflow.log_dict(exc.report.to_dict(), "gate_report.json")
                mlflow.set_tag("gate_failure", str(exc)[:500])
                logger.error("gate failed, nothing registered: %s", exc)
                raise
            mlflow.log_dict(report.to_dict(), "gate_report.json")
            mlflow.log_metrics(report.metrics())
            fallback = fallback_threshold(proba, truth, classes, bundle, config)
            mlflow.log_dict(fallback.to_dict(), "fallback.json")
            mlflow.log_metrics({"fallback_threshold": fallback.threshold, "fallback_coverage": fallback.coverage})
            ev = evaluate(proba, truth, classes)
            mlflow.log_metrics(ev.metrics())
            _log_eval_artifacts(ev)

            scored = score_champion(settings, eval_texts, eval_users)
            champion = None if scored is None else (
                scored.version, compare(truth, (proba, classes), (scored.proba, scored.classes)))
            tags = {**{k: "" if v is None else v for k, v in lineage.items()},
                    **{f"metric.{k}": f"{v:.4f}" for k, v in ev.metrics().items()},
                    **{f"gate.{k}": v for k, v in report.to_tags().items()},
                    **_fallback_tags(fallback), **class_tags(classes),
                    "quantization": compiled.report["quantization"], **choice.tags(),
                    "deployed_mb": f"{compiled.report['deployed_mb']:.1f}"}
            if champion is not None:
                tags["vs_champion.version"] = champion[0].version
                tags["vs_champion.accuracy_delta"] = f"{champion[1].delta:+.4f}"
                tags["vs_champion.scored_on"] = champion[1].describe()[:TAG_LIMIT]
            description = _description(ev, report, fallback, champion, compiled.report, lineage, data.note,
                                       choice)
            linked = link_unchanged_files(settings, bundle, scored)
            if linked:
                tags["linked_files"] = str(len(linked))
            version = register(settings, bundle, tags, description)
            promoted, reason = deploy(settings, version, ev.accuracy, champion, config.deploy_margin)
            mlflow.set_tags({"registered_version": version.version, "deploy.decision": reason[:TAG_LIMIT]})
            logger.info("v%d %s: %s", version.version, "promoted" if promoted else "not promoted", reason)

        if promoted and config.announce and settings.kafka_bootstrap_servers:
            announce(settings, registry.get(version.version))
        if users is not None:
            materialize_features(settings)
    finally:
        shutil.rmtree(bundle_dir, ignore_errors=True)  # the registry holds its own copy
        if tuned_folder is not None:
            shutil.rmtree(tuned_folder, ignore_errors=True)  # the bundle holds it compiled
    return TrainResult(run.info.run_id, version.version, promoted, reason,
                       {**ev.metrics(), **_fallback_metrics(fallback)}, classes, data_uri)


def _log_data(data: Dataset, run_id: str) -> tuple[str, str]:
    """Log the rows this run used (`data/dataset.parquet`, with their split) as an artifact and an MLflow
    dataset input; returns the data URI and hash the version records. A few-shot run records the rows it
    drew, not the whole file: that is what its retrains train on again."""
    rows = data.events.drop(columns=["truth"]) if not data.generated else data.events
    rows = rows.assign(split=["train"] * data.cut + ["eval"] * (len(rows) - data.cut))
    from_table = rows["event_id"].notna() if "event_id" in rows.columns else pd.Series(False, index=rows.index)
    collected, rows = rows[from_table], rows[~from_table].drop(columns="event_id", errors="ignore")
    uri, digest = data.data_uri, data.data_hash
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / DATASET_FILE
        rows.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="data")
        if data.collected is not None:
            collected.to_parquet(Path(tmp) / COLLECTED_FILE, index=False)
            mlflow.log_artifact(str(Path(tmp) / COLLECTED_FILE), artifact_path="data")
    if data.collected is not None:
        _log_collected(data.collected, collected)
    if data.how == "shots":
        uri, digest = f"runs:/{run_id}/data/{DATASET_FILE}", frame_hash(rows[["text", "label"]])
    try:
        dataset = mlflow.data.from_pandas(rows, source=uri, name=Path(uri.split("?")[0]).name, targets="label")
    except MlflowException:  # runs:/ and generator: have no MLflow source type
        dataset = mlflow.data.from_pandas(rows, name=Path(uri.split("?")[0]).name, targets="label")
    mlflow.log_input(dataset, context="training", tags={"uri": uri[:TAG_LIMIT], "sha256_16": digest})
    return uri, digest


def _log_collected(collected: Collected, rows: pd.DataFrame) -> None:
    """The collected examples as a second dataset input: the table, its version and the window read."""
    window = f"written_at in [{collected.since:.3f}, {collected.until:.3f})"
    if collected.feedback_until is not None:
        window += f", feedback_ts <= {collected.feedback_until:.3f}"
    chosen = collected.selection
    dataset = mlflow.data.from_pandas(rows, name="examples-table", targets="label")
    mlflow.log_input(dataset, context="training", tags={
        "uri": collected.uri[:TAG_LIMIT], "table_version": str(collected.table_version), "window": window})
    mlflow.log_params({"collected_train": len(chosen.train), "collected_eval": len(chosen.eval),
                       "collected_table_version": collected.table_version, "collected_window": window})
    mlflow.set_tag("collected", chosen.describe()[:TAG_LIMIT])


def _fallback_tags(fallback: Fallback) -> dict[str, str]:
    return {"fallback.threshold": f"{fallback.threshold:.4f}", "fallback.precision": f"{fallback.precision:.4f}",
            "fallback.coverage": f"{fallback.coverage:.4f}"}


def _fallback_metrics(fallback: Fallback) -> dict[str, float]:
    return {"fallback_threshold": fallback.threshold, "fallback_precision": fallback.precision,
            "fallback_coverage": fallback.coverage}


def _log_eval_artifacts(ev: Evaluation) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_confusion(ev, Path(tmp) / "confusion_matrix.png", title=f"accuracy {ev.accuracy:.3f}")
        mlflow.log_artifact(str(png))
        ev.per_class.to_csv(Path(tmp) / "per_intent.csv")
        mlflow.log_artifact(str(Path(tmp) / "per_intent.csv"))
    mlflow.log_dict({"accuracy": ev.accuracy, "macro_f1": ev.macro_f1, "log_loss": ev.log_loss, "n": ev.n},
                    "eval_report.json")


def _description(ev: Evaluation, report: GateReport, fallback: Fallback,
                 champion: tuple[Version, Comparison] | None, quantization: dict[str, Any],
                 lineage: dict[str, Any], split: str, choice: EncoderChoice) -> str:
    """What a reviewer reads on the version page in MLflow."""
    vs = "no champion yet" if champion is None else (
        f"champion v{champion[0].version}: accuracy {champion[1].champion_accuracy:.4f} vs this version's "
        f"{champion[1].challenger_accuracy:.4f} (delta {champion[1].delta:+.4f}) {champion[1].describe()}")
    return "\n".join([
        f"accuracy {ev.accuracy:.4f}, macro-F1 {ev.macro_f1:.4f}, log loss {ev.log_loss:.4f} "
        f"on {ev.n} eval rows, {len(ev.classes)} classes; {vs}.",
        f"data: {lineage['data_uri']} (sha256 {lineage['data_hash']}); {split}.",
        f"fallback: {fallback.describe()}.",
        f"gates: {report.summary()}",
        f"encoder: {choice.label}, {quantization['quantization']}, {quantization['deployed_mb']:.1f} MB "
        f"(FP32 {quantization['fp32_mb']:.1f} MB); {choice.reason}.",
        "lineage: " + json.dumps(lineage, sort_keys=True),
    ])
