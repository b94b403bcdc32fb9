"""Flow tasks that build the model: embed, train the head, compile and quantize, drift reference, bundle, gate.

Embedding and compiling are the expensive pure steps: cached on their inputs, their
task source and `fingerprint` (models source, runtime versions, encoder folder files).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from flows import progress
from flows.config import TrainConfig
from flows.gates import GateReport, check_gates
from models.bundle import DRIFT_REFERENCE_DIR, ENCODER_FILE, HEAD_FILE, TOKENIZER_DIR, set_fallback, write_manifest
from models.compile import export_onnx, optimize_onnx
from models.encoder import Encoder
from models.fallback import Fallback, choose_threshold
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.predict import Predictor
from models.quantize import QuantizeConfig, latency_samples, quantize_onnx, summarize_latency
from models.train import HeadConfig, featurize, train_head
from services.feedback.drift import DriftSettings, Reference, build_reference

CACHE_TTL = timedelta(days=7)


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


@task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=CACHE_TTL)
def embed(texts: list[str], encoder_ref: str, code: str) -> np.ndarray:
    """Sentence embeddings from the torch FP32 encoder."""
    return load_encoder(encoder_ref).encode(texts, on_batch=progress.track("embed", len(texts)))


@task
def fit_head(texts: list[str], embeddings: np.ndarray, users: list[dict[str, Any] | None] | None,
             labels: list[str], classes: tuple[str, ...], epochs: int, seed: int) -> FTRLProximal:
    """FTRL head over the embedding plus hashed text and user features, one output per class of the data."""
    head = HeadConfig(epochs=epochs, seed=seed)
    batch = featurize(texts, embeddings, FeatureSpec(), users)
    return train_head(batch, labels, classes, head, on_batch=progress.track("train head", len(labels) * epochs))


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
def drift_reference(texts: list[str], embeddings: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                    users: list[dict[str, Any] | None] | None, truth: list[str]) -> Reference:
    """What drift monitoring compares traffic with: held-out rows and the trained head's answers on them."""
    picked = proba.argmax(axis=1)
    predicted = [classes[i] for i in picked]
    correct = np.array([p == t for p, t in zip(predicted, truth, strict=True)])
    return build_reference(texts, embeddings, predicted, proba[np.arange(len(picked)), picked],
                           users if users is not None else [None] * len(texts), correct,
                           n_components=DriftSettings().n_components)  # the monitor refuses any other K


@task
def build_bundle(compiled: Compiled, head: FTRLProximal, encoder_ref: str, metrics: dict[str, float],
                 lineage: dict[str, Any], out: Path, reference: Reference | None = None,
                 label: str | None = None) -> Path:
    """Write encoder, tokenizer, head, drift reference and the manifest that vouches for them."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ENCODER_FILE).write_bytes(compiled.onnx)
    encoder = load_encoder(encoder_ref)
    encoder.save_tokenizer(out / TOKENIZER_DIR)
    head.save(out / HEAD_FILE)
    if reference is not None:
        reference.save(out / DRIFT_REFERENCE_DIR)
    write_manifest(out, FeatureSpec(), head.classes,
                   encoder={"dim": encoder.dim, "max_length": encoder.max_length,
                            "ref": label or encoder_ref, **compiled.report},
                   metrics=metrics, lineage=lineage)
    return out


@task
def gate(fp32_proba: np.ndarray, bundle: Path, texts: list[str], users: list[dict[str, Any] | None] | None,
         truth: list[str], config: TrainConfig, encoder_ref: str) -> tuple[GateReport, np.ndarray]:
    """Compare the deployable bundle with the torch FP32 model; raise GateFailed if it is off."""
    predictor = Predictor(bundle)
    proba = predictor.predict_proba(texts, users)
    progress.track("gates", 1)(1)
    sample = texts[:64]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same one thread the compiled encoder gets
    try:
        torch_ms = latency_ms(load_encoder(encoder_ref).encode, sample)
    finally:
        torch.set_num_threads(threads)
    compiled_ms = latency_ms(predictor.encoder.encode, sample)
    measurements = {"torch_fp32_ms_p50": torch_ms, "compiled_ms_p50": compiled_ms,  # batch 1, one thread
                    "speedup": torch_ms / compiled_ms,
                    "size_mb": (bundle / ENCODER_FILE).stat().st_size / 1e6}
    report = check_gates(fp32_proba, proba, truth, predictor.classes, config.min_agreement,
                         config.max_accuracy_drop, measurements, config.tie_margin)
    return report, proba


@task
def fallback_threshold(proba: np.ndarray, truth: list[str], classes: tuple[str, ...], bundle: Path,
                       config: TrainConfig) -> Fallback:
    """Choose the confidence threshold on the compiled model's held-out answers and record it in the bundle."""
    policy = choose_threshold(proba, truth, classes, config.target_precision, config.out_of_scope)
    set_fallback(bundle, policy)
    return policy


def latency_ms(encode: Callable[[list[str]], Any], texts: list[str]) -> float:
    """Median milliseconds to encode one text (batch 1), after one warm-up call."""
    return summarize_latency(latency_samples(encode, texts))["p50_ms"]
