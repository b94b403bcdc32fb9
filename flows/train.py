"""The slow path: train -> quantize -> compile -> gate -> register -> deploy, as a Prefect flow.

The two expensive pure steps, embedding and compiling, are cached on their
inputs and on the source of `models/` (so changed code recomputes); a rerun on
the same data and encoder skips to training the head (about a second). Steps
that talk to MLflow, Feast or Kafka retry; deploy is never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from flows import progress
from flows.config import TrainConfig
from flows.gates import GateFailed, GateReport, check_gates
from models.bundle import ENCODER_FILE, HEAD_FILE, TOKENIZER_DIR, BundleError, write_manifest
from models.catalog import INTENTS
from models.compile import export_onnx, optimize_onnx
from models.data import load_dataset
from models.encoder import Encoder
from models.evaluate import Evaluation, evaluate, plot_confusion
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.predict import Predictor
from models.quantize import QuantizeConfig, quantize_onnx
from models.traffic import TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head
from services.common import features as feast_client
from services.common.events import MODEL_UPDATES, ModelUpdate
from services.common.kafka import publish
from services.common.registry import Registry, RegistryError, Version
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)
CACHE_TTL = timedelta(days=7)


@dataclass(frozen=True)
class Dataset:
    events: pd.DataFrame  # text, label, truth, user_id, ts; time ordered
    users: pd.DataFrame | None
    cut: int  # rows before `cut` train, the rest evaluate
    data_hash: str
    scenario: str


@dataclass(frozen=True)
class Compiled:
    onnx: bytes
    report: dict[str, Any]


@lru_cache(maxsize=2)
def load_encoder(ref: str) -> Encoder:
    if ref == "minilm":
        return Encoder.from_pretrained()
    if ref == "tiny":
        return Encoder.tiny_random(seed=0)
    return Encoder.from_pretrained(ref)


def frame_hash(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


def fingerprint(encoder_ref: str) -> str:
    """What a cached step's output depends on besides its inputs: the `models` source, the runtime
    versions and, for an encoder folder, its files (a re-saved folder must not hit the old cache)."""
    import onnxruntime
    import transformers

    digest = hashlib.sha256(f"{torch.__version__} {onnxruntime.__version__} {transformers.__version__}".encode())
    files = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.py"))
    if encoder_ref not in ("minilm", "tiny"):
        files += sorted(p for p in Path(encoder_ref).rglob("*") if p.is_file())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_version() -> str:
    """The git commit the code came from (with `-dirty` for local changes), if known."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return rev or "unknown"


@task(retries=2, retry_delay_seconds=2)
def load_data(config: TrainConfig) -> Dataset:
    """Generate traffic or read the user's file; split by time into train and eval."""
    if config.data_path is not None:
        frame = load_dataset(config.data_path, labels=INTENTS)
        if "ts" not in frame.columns:
            frame["ts"] = pd.Timestamp.now(tz="UTC")
        frame["truth"] = frame["label"]
        users, scenario = None, "custom"
    else:
        traffic = generate(TrafficConfig(seed=config.seed, n_events=config.n_events, n_users=config.n_users,
                                         scenario=config.scenario))
        frame = traffic.events.rename(columns={"true_label": "truth"})
        users, scenario = traffic.users, config.scenario
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    columns = [c for c in ("text", "label", "truth", "user_id", "ts") if c in frame.columns]
    frame = frame[columns]
    cut = int(len(frame) * (1 - config.holdout))
    if cut < 1 or cut >= len(frame):
        raise ValueError(f"{len(frame)} rows cannot be split with holdout {config.holdout}")
    return Dataset(frame, users, cut, frame_hash(frame[["text", "label"]]), scenario)


@task(retries=2, retry_delay_seconds=2)
def join_user_features(data: Dataset, settings: CommonSettings) -> list[dict[str, Any] | None] | None:
    """Point-in-time user features from Feast for every event (what the user looked like then)."""
    if "user_id" not in data.events.columns or data.users is None:
        # Without a user table for this data, joining whatever an earlier run left in the store would be wrong.
        return None
    store = feast_client.open_store(settings.state_dir / "feast", users=data.users, repo=settings.feature_repo)
    entity = data.events[["user_id", "ts"]].rename(columns={"ts": "event_timestamp"})
    return feast_client.user_records(feast_client.historical_user_features(store, entity))


@task(retries=2, retry_delay_seconds=2)
def materialize_features(settings: CommonSettings) -> None:
    """Bring the online store up to date for serving (the whole window: the user table was just rewritten)."""
    store = feast_client.open_store(settings.state_dir / "feast", repo=settings.feature_repo)
    feast_client.materialize(store, pd.Timestamp.now(tz="UTC").to_pydatetime(), full=True)


@task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=CACHE_TTL)
def embed(texts: list[str], encoder_ref: str, code: str) -> np.ndarray:
    """Sentence embeddings from the torch FP32 encoder."""
    return load_encoder(encoder_ref).encode(texts, on_batch=progress.track("embed", len(texts)))


@task
def fit_head(texts: list[str], embeddings: np.ndarray, users: list[dict[str, Any] | None] | None,
             labels: list[str], epochs: int, seed: int) -> FTRLProximal:
    """FTRL head over the embedding plus hashed text and user features."""
    head = HeadConfig(epochs=epochs, seed=seed)
    batch = featurize(texts, embeddings, FeatureSpec(), users)
    return train_head(batch, labels, INTENTS, head, on_batch=progress.track("train head", len(labels) * epochs))


@task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=CACHE_TTL)
def compile_encoder(encoder_ref: str, quantize: str, code: str) -> Compiled:
    """Export to ONNX, fuse the transformer graph, quantize to INT8."""
    encoder = load_encoder(encoder_ref)
    config = QuantizeConfig()
    advance = progress.track("compile", 3 if quantize == "int8" else 2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_onnx(encoder, work / "fp32.onnx")
        advance(1)
        model = encoder.model.config
        final = optimize_onnx(work / "fp32.onnx", work / "fused.onnx",
                              num_heads=model.num_attention_heads, hidden_size=model.hidden_size)
        advance(1)
        report: dict[str, Any] = {"fp32_mb": (work / "fp32.onnx").stat().st_size / 1e6,
                                  "fused_mb": final.stat().st_size / 1e6, "quantization": "none"}
        if quantize == "int8":
            final = quantize_onnx(final, work / "int8.onnx", config)
            advance(1)
            report["quantization"] = config.describe()
        report["deployed_mb"] = final.stat().st_size / 1e6
        return Compiled(final.read_bytes(), report)


@task
def build_bundle(compiled: Compiled, head: FTRLProximal, encoder_ref: str, metrics: dict[str, float],
                 lineage: dict[str, Any], out: Path) -> Path:
    """Write encoder, tokenizer, head and the manifest that vouches for them."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ENCODER_FILE).write_bytes(compiled.onnx)
    encoder = load_encoder(encoder_ref)
    encoder.tokenizer.save_pretrained(out / TOKENIZER_DIR)
    head.save(out / HEAD_FILE)
    write_manifest(out, FeatureSpec(), INTENTS,
                   encoder={"dim": encoder.dim, "max_length": encoder.max_length, "ref": encoder_ref,
                            **compiled.report},
                   metrics=metrics, lineage=lineage)
    return out


@task
def gate(reference: np.ndarray, bundle: Path, texts: list[str], users: list[dict[str, Any] | None] | None,
         truth: list[str], config: TrainConfig) -> tuple[GateReport, np.ndarray]:
    """Compare the deployable bundle with the torch FP32 model; raise GateFailed if it is off."""
    predictor = Predictor(bundle)
    proba = predictor.predict_proba(texts, users)
    progress.track("gates", 1)(1)
    sample = texts[:64]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same one thread the compiled encoder gets
    try:
        torch_ms = latency_ms(load_encoder(config.encoder).encode, sample)
    finally:
        torch.set_num_threads(threads)
    compiled_ms = latency_ms(predictor.encoder.encode, sample)
    measurements = {"torch_fp32_ms_p50": torch_ms, "compiled_ms_p50": compiled_ms,  # batch 1, one thread
                    "speedup": torch_ms / compiled_ms,
                    "size_mb": (bundle / ENCODER_FILE).stat().st_size / 1e6}
    report = check_gates(reference, proba, truth, INTENTS, config.min_agreement, config.max_accuracy_drop,
                         measurements)
    return report, proba


def latency_ms(encode: Callable[..., np.ndarray], texts: list[str]) -> float:
    """Median milliseconds to encode one text (batch 1), after one warm-up call."""
    encode(texts[:1])
    times = []
    for text in texts:
        start = time.perf_counter()
        encode([text])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


@task(retries=2, retry_delay_seconds=3)
def score_champion(settings: CommonSettings, texts: list[str], users: list[dict[str, Any] | None] | None,
                   truth: list[str]) -> tuple[Version, Evaluation] | None:
    """The current champion, evaluated on this run's eval set."""
    registry = Registry(settings)
    champion = registry.champion()
    if champion is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proba = Predictor(registry.download(champion.version, Path(tmp))).predict_proba(texts, users)
        except (BundleError, RegistryError) as exc:
            # A champion that no longer verifies must not block its own replacement.
            get_run_logger().warning("champion v%d cannot be scored, treated as absent: %s", champion.version, exc)
            return None
    return champion, evaluate(proba, truth, INTENTS)


@task(retries=2, retry_delay_seconds=3)
def register(settings: CommonSettings, bundle: Path, tags: dict[str, Any], description: str) -> Version:
    """Log the bundle as a pyfunc version and point `challenger` at it."""
    return Registry(settings).register(bundle, tags, description)


@task(cache_policy=NO_CACHE)
def deploy(settings: CommonSettings, challenger: Version, accuracy: float,
           champion: tuple[Version, Evaluation] | None, margin: float) -> tuple[bool, str]:
    """Move `champion` to the challenger unless it is worse than the current one by more than `margin`."""
    registry = Registry(settings)
    if champion is None:
        reason = f"first version (accuracy {accuracy:.4f})"
    else:
        current, ev = champion
        if accuracy < ev.accuracy - margin:
            reason = (f"kept champion v{current.version}: challenger v{challenger.version} accuracy "
                      f"{accuracy:.4f} < champion {ev.accuracy:.4f} - margin {margin:.4f}")
            registry.client.set_model_version_tag(registry.name, str(challenger.version), "deploy.decision", reason)
            return False, reason
        reason = (f"challenger v{challenger.version} accuracy {accuracy:.4f} vs champion "
                  f"v{current.version} {ev.accuracy:.4f} (margin {margin:.4f})")
    registry.promote(challenger.version, reason)
    registry.client.set_model_version_tag(registry.name, str(challenger.version), "deploy.decision",
                                          f"promoted: {reason}")
    return True, reason


@task(retries=3, retry_delay_seconds=2)
def announce(settings: CommonSettings, version: Version) -> None:
    """Tell serving replicas about the new champion on `model-updates`."""
    assert settings.kafka_bootstrap_servers is not None
    event = ModelUpdate(model=settings.model_name, kind="full", version=str(version.version),
                        base_version=version.version, uri=f"models:/{settings.model_name}/{version.version}")
    publish(settings.kafka_bootstrap_servers, MODEL_UPDATES, settings.model_name, event)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: int
    promoted: bool
    reason: str
    metrics: dict[str, float]


@flow(name="train-quantize-compile-deploy", log_prints=False)
def train_flow(config: TrainConfig | None = None) -> TrainResult:
    """Train a model, compile it, gate it, register it, and deploy it if it is not worse."""
    config = config or TrainConfig()
    settings = CommonSettings()
    logger = get_run_logger()
    registry = Registry(settings)
    data = load_data(config)
    users = join_user_features(data, settings)
    texts = list(data.events["text"])
    train_rows, eval_rows = slice(0, data.cut), slice(data.cut, None)
    eval_texts, truth = texts[eval_rows], list(data.events["truth"])[eval_rows]
    eval_users = users[eval_rows] if users is not None else None

    bundle_dir = settings.work_dir / f"bundle-{uuid.uuid4().hex}"
    try:
        with mlflow.start_run(experiment_id=registry.experiment_id(),
                              run_name=f"train-{data.scenario}-{data.data_hash[:8]}") as run:
            mlflow.log_params({**config.model_dump(mode="json"), "data_hash": data.data_hash,
                               "n_train": data.cut, "n_eval": len(truth)})
            code = fingerprint(config.encoder)
            embeddings = embed(texts, config.encoder, code)
            head = fit_head(texts[train_rows], embeddings[train_rows], users[train_rows] if users else None,
                            list(data.events["label"])[train_rows], config.epochs, config.seed)
            eval_batch = featurize(eval_texts, embeddings[eval_rows], FeatureSpec(), eval_users)
            reference = head.predict_proba_many(eval_batch)
            fp32 = evaluate(reference, truth, INTENTS)
            mlflow.log_metrics(fp32.metrics("fp32_"))
            compiled = compile_encoder(config.encoder, config.quantize, code)
            mlflow.log_dict(compiled.report, "quantization_report.json")

            parent = registry.champion()
            lineage = {"data_hash": data.data_hash, "scenario": data.scenario, "code_version": code_version(),
                       "parent_version": parent.version if parent else None, "source": "train",
                       "train_run_id": run.info.run_id}
            bundle = build_bundle(compiled, head, config.encoder, fp32.metrics("fp32_"), lineage, bundle_dir)
            try:
                report, proba = gate(reference, bundle, eval_texts, eval_users, truth, config)
            except GateFailed as exc:
                mlflow.log_dict(exc.report.to_dict(), "gate_report.json")
                mlflow.set_tag("gate_failure", str(exc)[:500])
                logger.error("gate failed, nothing registered: %s", exc)
                raise
            mlflow.log_dict(report.to_dict(), "gate_report.json")
            mlflow.log_metrics(report.metrics())
            ev = evaluate(proba, truth, INTENTS)
            mlflow.log_metrics(ev.metrics())
            _log_eval_artifacts(ev)

            champion = score_champion(settings, eval_texts, eval_users, truth)
            tags = {**{k: "" if v is None else v for k, v in lineage.items()},
                    **{f"metric.{k}": f"{v:.4f}" for k, v in ev.metrics().items()},
                    **{f"gate.{k}": v for k, v in report.to_tags().items()},
                    "quantization": compiled.report["quantization"],
                    "deployed_mb": f"{compiled.report['deployed_mb']:.1f}"}
            if champion is not None:
                tags["vs_champion.version"] = champion[0].version
                tags["vs_champion.accuracy_delta"] = f"{ev.accuracy - champion[1].accuracy:+.4f}"
            description = _description(ev, report, champion, compiled.report, lineage)
            version = register(settings, bundle, tags, description)
            promoted, reason = deploy(settings, version, ev.accuracy, champion, config.deploy_margin)
            mlflow.set_tags({"registered_version": version.version, "deploy.decision": reason})
            logger.info("v%d %s: %s", version.version, "promoted" if promoted else "not promoted", reason)

        if promoted and config.announce and settings.kafka_bootstrap_servers:
            announce(settings, registry.get(version.version))
        if users is not None:
            materialize_features(settings)
    finally:
        shutil.rmtree(bundle_dir, ignore_errors=True)  # the registry holds its own copy
    return TrainResult(run.info.run_id, version.version, promoted, reason, ev.metrics())


def _log_eval_artifacts(ev: Evaluation) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_confusion(ev, Path(tmp) / "confusion_matrix.png", title=f"accuracy {ev.accuracy:.3f}")
        mlflow.log_artifact(str(png))
        ev.per_class.to_csv(Path(tmp) / "per_intent.csv")
        mlflow.log_artifact(str(Path(tmp) / "per_intent.csv"))
    mlflow.log_dict({"accuracy": ev.accuracy, "macro_f1": ev.macro_f1, "log_loss": ev.log_loss, "n": ev.n},
                    "eval_report.json")


def _description(ev: Evaluation, report: GateReport, champion: tuple[Version, Evaluation] | None,
                 quantization: dict[str, Any], lineage: dict[str, Any]) -> str:
    """What a reviewer reads on the version page in MLflow."""
    vs = "no champion yet" if champion is None else (
        f"champion v{champion[0].version}: accuracy {champion[1].accuracy:.4f} "
        f"(delta {ev.accuracy - champion[1].accuracy:+.4f})")
    return "\n".join([
        f"accuracy {ev.accuracy:.4f}, macro-F1 {ev.macro_f1:.4f}, log loss {ev.log_loss:.4f} "
        f"on {ev.n} eval rows; {vs}.",
        f"gates: {report.summary()}",
        f"encoder: {quantization['quantization']}, {quantization['deployed_mb']:.1f} MB "
        f"(FP32 {quantization['fp32_mb']:.1f} MB).",
        "lineage: " + json.dumps(lineage, sort_keys=True),
    ])
