"""Compiled encoder vs torch: latency, size and fidelity of MiniLM in FP32 and INT8, one run.

Rows, all on the real all-MiniLM-L6-v2:

- torch FP32 eager: `Encoder.encode` (the reference for every ratio);
- ORT FP32 fused: `export_onnx` + `optimize_onnx` (attention/LayerNorm/GELU fusion);
- ORT INT8 (chosen): the fused graph quantized with the default `QuantizeConfig`;
- ORT INT8 plain: `quantize_dynamic` with its defaults on the unfused export (the issue's baseline).

Fidelity: cosine of each row's embeddings to torch FP32 over the whole stream; an
FTRL head trained (models.train) on torch FP32 embeddings of the first 80% of a
generated `stable` stream predicts the held-out 20% from each row's embeddings:
agreement with the torch FP32 predictions and accuracy against the intended
intents. Latency: p50/p99 per `encode` call (tokenization included) at batch 1
and 32, with 1 and 2 threads; models take turns on short chunks of texts, so
machine load hits them alike, and each ratio is within the same run. `--sweep` adds the other
quantization options measured for the QuantizeConfig default.
Run: `.venv/bin/python bench/quantize.py [--sweep]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # threads are set per measurement below

import argparse
import json
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from machine import cpu_name  # bench/machine.py; other bench scripts import it from here too
from onnxruntime.quantization import quantize_dynamic
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.compile import OnnxEncoder, export_onnx, optimize_onnx
from models.encoder import Encoder
from models.features import FeatureSpec
from models.quantize import (
    QuantizeConfig,
    compare_embeddings,
    compare_predictions,
    file_size_mb,
    latency_samples,
    quantize_onnx,
    summarize_latency,
)
from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head, user_records

console = Console(width=shutil.get_terminal_size((200, 40)).columns)  # wide tables unwrapped in logs
TORCH = "torch FP32 eager"
FUSED = "ORT FP32 fused"
CHOSEN = "ORT INT8 (chosen)"
PLAIN = "ORT INT8 plain (unfused)"
# Options measured against the chosen default with --sweep (name -> config, source graph).
SWEEP: dict[str, tuple[QuantizeConfig, str]] = {
    "fused, per-tensor": (QuantizeConfig(per_channel=False), "fused"),
    "fused, per-channel, uint8 weights": (QuantizeConfig(weight_type="uint8"), "fused"),
    "fused, per-channel, reduce_range": (QuantizeConfig(reduce_range=True), "fused"),
    "fused, per-channel, FP32 embeddings": (QuantizeConfig(exclude=("EmbedLayerNormalization*",)), "fused"),
    "fused, per-channel, FP32 layer 0": (QuantizeConfig(exclude=("Attention_0", "/model/encoder/layer.0/*")),
                                         "fused"),
    "fused, per-channel, FP32 attention": (QuantizeConfig(exclude=("Attention_*",)), "fused"),
    "fused, per-channel, FP32 FFN output": (QuantizeConfig(exclude=("/model/encoder/layer.?/output/dense/*",)),
                                            "fused"),
    "unfused, per-channel": (QuantizeConfig(), "fp32"),
    "fused incl. SkipLayerNorm, per-channel": (QuantizeConfig(), "skipfused"),
    "fused, static minmax (QDQ)": (QuantizeConfig(method="static"), "fused"),
}


@dataclass
class Row:
    name: str
    path: Path | None
    size_mb: float
    fidelity: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def build(work: Path, encoder: Encoder, sweep: bool, texts: list[str]) -> list[Row]:
    fp32 = export_onnx(encoder, work / "fp32.onnx")
    config = encoder.model.config
    fused = optimize_onnx(fp32, work / "fused.onnx", config.num_attention_heads, config.hidden_size)
    chosen = quantize_onnx(fused, work / "int8.onnx", QuantizeConfig())
    plain = work / "plain.onnx"
    quantize_dynamic(fp32, plain)
    rows = [Row(TORCH, None, file_size_mb(fp32)), Row(FUSED, fused, file_size_mb(fused)),
            Row(CHOSEN, chosen, file_size_mb(chosen)), Row(PLAIN, plain, file_size_mb(plain))]
    sources = {"fused": fused, "fp32": fp32}
    if sweep:  # the optimizer's default fusions, SkipLayerNormalization included
        from onnxruntime.transformers.optimizer import optimize_model

        sources["skipfused"] = work / "skipfused.onnx"
        optimize_model(str(fp32), model_type="bert", num_heads=config.num_attention_heads,
                       hidden_size=config.hidden_size, opt_level=0).save_model_to_file(str(sources["skipfused"]))
    for i, (name, (cfg, source)) in enumerate(SWEEP.items() if sweep else []):
        with console.status(f"quantizing: {name}"):
            path = quantize_onnx(sources[source], work / f"sweep{i}.onnx", cfg,
                                 calibration_texts=texts, tokenizer=encoder.tokenizer)
        rows.append(Row(name, path, file_size_mb(path)))
    return rows


def measure_fidelity(rows: list[Row], encoder: Encoder, n_events: int, seed: int) -> dict[str, Any]:
    traffic = generate(TrafficConfig(seed=seed, n_events=n_events))
    events = traffic.events
    texts = list(events["text"])
    cut = int(len(texts) * 0.8)
    users = user_records(list(events["user_id"]), traffic.users)
    spec = FeatureSpec()
    hold = np.arange(cut, len(texts))
    truth = np.array([INTENTS.index(v) for v in events["true_label"].iloc[cut:]])
    torch.set_num_threads(2)
    with progress_bar() as bar:
        task = bar.add_task("embed: torch FP32", total=len(texts))
        reference = encoder.encode(texts, on_batch=lambda n: bar.advance(task, n))
        batch = featurize(texts, reference, spec, users)
        task = bar.add_task("train FTRL head", total=cut * HeadConfig().epochs)
        head = train_head(batch.take(np.arange(cut)), list(events["label"].iloc[:cut]), INTENTS,
                          HeadConfig(), on_batch=lambda n: bar.advance(task, n))
        ref_proba = head.predict_proba_many(batch.take(hold))
        for row in rows:
            if row.path is None:
                emb = reference
            else:
                task = bar.add_task(f"embed: {row.name}", total=len(texts))
                emb = OnnxEncoder(row.path, encoder.tokenizer, encoder.max_length, threads=2).encode(
                    texts, on_batch=lambda n, t=task: bar.advance(t, n))
            proba = head.predict_proba_many(featurize(texts, emb, spec, users).take(hold))
            row.fidelity = {**compare_embeddings(reference, emb),
                            **compare_predictions(ref_proba, proba, truth)}
    return {"events": len(texts), "train": cut, "holdout": len(hold), "texts": texts[cut:]}


def measure_latency(rows: list[Row], encoder: Encoder, texts: list[str], threads: list[int],
                    batches: list[int], repeats: int, n_texts: int, sweep_threads: int) -> None:
    for n_threads in threads:
        fns: dict[str, Callable[[list[str]], Any]] = {}
        for row in rows:
            if row.path is None:
                fns[row.name] = encoder.encode
            elif row.name in (FUSED, CHOSEN, PLAIN) or n_threads == sweep_threads:
                fns[row.name] = OnnxEncoder(row.path, encoder.tokenizer, encoder.max_length,
                                            threads=n_threads).encode
        torch.set_num_threads(n_threads)
        for size in batches:
            sample = texts[: max(n_texts, 8 * size)] if size == 1 else texts[: 8 * size]
            # Models take turns on short chunks (about 0.1 s each), so changes in machine
            # load hit them alike; each chunk starts with an untimed warm-up call.
            per_chunk = size * max(2, 24 // size)
            chunks = [sample[i : i + per_chunk] for i in range(0, len(sample), per_chunk)]
            samples: dict[str, list[np.ndarray]] = {name: [] for name in fns}
            with progress_bar() as bar:
                task = bar.add_task(f"latency: batch {size}, {n_threads} thread(s)",
                                    total=repeats * len(chunks))
                for _ in range(repeats):
                    for chunk in chunks:
                        for name, fn in fns.items():
                            samples[name].append(latency_samples(fn, chunk, size))
                        bar.advance(task)
            for row in rows:
                if row.name in samples:
                    row.latency[f"b{size}_t{n_threads}"] = summarize_latency(np.concatenate(samples[row.name]))


def report(rows: list[Row], args: argparse.Namespace, info: dict[str, Any], hardware: str) -> None:
    base = rows[0]
    ref_acc = base.fidelity["reference_accuracy"]
    quality = Table(title=f"MiniLM-L6 compiled: fidelity to torch FP32 ({info['holdout']:,} held-out rows, "
                          f"head trained on {info['train']:,} FP32 rows; cosine over {info['events']:,} texts)")
    for col in ("model", "size MB", "vs FP32", "cos mean", "cos min", "agreement", "accuracy", "Δ acc pts"):
        quality.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        f = row.fidelity
        quality.add_row(row.name, f"{row.size_mb:.1f}", f"{base.size_mb / row.size_mb:.2f}x smaller",
                        f"{f['cosine_mean']:.4f}", f"{f['cosine_min']:.4f}", f"{f['agreement']:.2%}",
                        f"{f['candidate_accuracy']:.4f}", f"{(f['candidate_accuracy'] - ref_acc) * 100:+.2f}")
    console.print(quality)
    keys = [f"b{b}_t{t}" for t in args.threads for b in args.batch]
    speed = Table(title="encode() latency per call, ms p50 / p99 (speedup vs torch FP32 at p50)")
    speed.add_column("model")
    for key in keys:
        b, t = key[1:].split("_t")
        speed.add_column(f"batch {b}, {t} thr", justify="right")
    for row in rows:
        cells = []
        for key in keys:
            if key not in row.latency:
                cells.append("")
                continue
            lat = row.latency[key]
            ratio = base.latency[key]["p50_ms"] / lat["p50_ms"]
            cells.append(f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} ({ratio:.2f}x)")
        speed.add_row(row.name, *cells)
    console.print(speed)
    console.print(f"hardware: {hardware}; load average before/after: {info['load_before']} / {info['load_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "hardware": hardware, "load_average": [info["load_before"], info["load_after"]],
        "events": info["events"], "holdout": info["holdout"], "repeats": args.repeats,
        "quantize_config": QuantizeConfig().describe(),
        "rows": {r.name: {"size_mb": r.size_mb, "size_ratio": base.size_mb / r.size_mb, **r.fidelity,
                          "latency": {k: {**v, "speedup_p50": base.latency[k]["p50_ms"] / v["p50_ms"]}
                                      for k, v in r.latency.items()}}
                 for r in rows},
    }, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6_000)
    parser.add_argument("--latency-texts", type=int, default=200, help="texts timed at batch 1 per pass")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="also measure the other quantization options")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/quantize.json"))
    args = parser.parse_args()

    load_before = [round(x, 2) for x in os.getloadavg()]
    encoder = Encoder.from_pretrained()
    calibration = list(generate(TrafficConfig(seed=args.seed + 1, n_events=512)).events["text"])
    with tempfile.TemporaryDirectory() as tmp:
        with console.status("export, fuse, quantize"):
            rows = build(Path(tmp), encoder, args.sweep, calibration)
        info = measure_fidelity(rows, encoder, args.events, args.seed)
        measure_latency(rows, encoder, info["texts"], args.threads, args.batch, args.repeats,
                        args.latency_texts, sweep_threads=min(args.threads))
    info["load_before"], info["load_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
    hardware = f"{cpu_name()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, " \
               f"torch {torch.__version__}, CPython {platform.python_version()}"
    report(rows, args, info, hardware)


if __name__ == "__main__":
    main()
