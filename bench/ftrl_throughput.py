"""FTRL throughput and progressive accuracy: loopline vs Vowpal Wabbit vs River, one run.

Every learner sees the same events in the same order and does progressive
validation (predict each event, then learn it), which is also what is timed:

- loopline `learn_one`: one `predict_proba_one` + `learn_one` per event, features
  already hashed (a list of Example objects);
- loopline `learn_many`: `predict_then_learn_many` on micro-batches (`--batch`);
- Vowpal Wabbit `--ftrl --oaa K`, natively: VW's own C++ driver reads a text file
  of the same features (`-d`), parse included, as a VW user runs it;
- Vowpal Wabbit from Python, one `learn(line)` per event;
- River `OneVsRestClassifier(LogisticRegression(optimizer=optim.FTRLProximal()))`,
  on a prefix of the stream (`--river-events`) because it is slow.

Features: word 1-2 grams and character 4-grams hashed into 2^20 buckets (about 30
active per event), plus a 384-d embedding (MiniLM by default, `--tiny-encoder`
for a quick run), 20 intents. Each timing is the median of `--repeats` runs with
fresh models. Run: `.venv/bin/python bench/ftrl_throughput.py`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core for every learner we control

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from models.encoder import Encoder
from models.features import FeatureSpec, hash_batch
from models.ftrl import Batch, Example, FTRLParams, FTRLProximal
from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate

console = Console()
N_CLASSES = 20
SPEC = FeatureSpec(bits=20, char_ngrams=(4,))


def build_stream(n_events: int, tiny: bool, seed: int) -> tuple[Batch, np.ndarray, list[str]]:
    classes = list(INTENTS[:N_CLASSES])
    events = generate(TrafficConfig(seed=seed, n_events=int(n_events * 1.15))).events
    events = events[events["true_label"].isin(classes) & events["label"].isin(classes)]
    events = events.iloc[:n_events]
    texts = list(events["text"])
    encoder = Encoder.tiny_random(seed) if tiny else Encoder.from_pretrained()
    with console.status(f"embedding {len(texts):,} texts"):
        dense = encoder.encode(texts).astype(np.float64)
    if dense.shape[1] != 384:  # the tiny encoder is narrower: pad to the benchmark's shape
        dense = np.pad(dense, ((0, 0), (0, 384 - dense.shape[1])))
    y = np.array([classes.index(v) for v in events["label"]])
    return Batch(hash_batch(texts, None, SPEC), dense), y, classes


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median seconds over `repeats` runs, and the accuracy the last run reported."""
    seconds, accuracy = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        accuracy = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), accuracy


def loopline_one(examples: list[Example], y: np.ndarray, classes: list[str],
                 params: FTRLParams) -> float:
    model = FTRLProximal(classes, SPEC.dim, 384, params)
    correct = 0
    for x, label in zip(examples, y, strict=True):
        proba = model.predict_proba_one(x)
        correct += max(proba, key=proba.__getitem__) == classes[label]
        model.learn_one(x, classes[label])
    return correct / len(y)


def loopline_many(batch: Batch, y: np.ndarray, classes: list[str], params: FTRLParams,
                  size: int) -> float:
    model = FTRLProximal(classes, SPEC.dim, 384, params)
    correct = 0
    for start in range(0, len(y), size):
        proba = model.predict_then_learn_many(batch.take(slice(start, start + size)),
                                              y[start : start + size])
        correct += int((proba.argmax(axis=1) == y[start : start + size]).sum())
    return correct / len(y)


def vw_lines(batch: Batch, y: np.ndarray) -> list[str]:
    lines = []
    for r in range(len(y)):
        row = batch.sparse[r]
        sparse = " ".join(f"{j}:{v:.6g}" for j, v in zip(row.indices, row.data, strict=True))
        dense = " ".join(f"d{j}:{v:.6g}" for j, v in enumerate(batch.dense[r]))
        lines.append(f"{y[r] + 1} |s {sparse} |d {dense}")
    return lines


def vw_args(params: FTRLParams) -> str:
    # The same alpha, beta, l1 and l2: VW's FTRL uses them in the same per-coordinate formula.
    return (f"--ftrl --ftrl_alpha {params.alpha} --ftrl_beta {params.beta} --l1 {params.l1}"
            f" --l2 {params.l2} --oaa {N_CLASSES} -b {SPEC.bits} --quiet")


def vw_native(path: Path, params: FTRLParams) -> float:
    from vowpalwabbit import Workspace

    vw = Workspace(f"{vw_args(params)} -d {path}")  # VW's own driver runs the file
    accuracy = 1.0 - vw.get_sum_loss() / vw.get_weighted_examples()
    vw.finish()
    return accuracy


def vw_python(lines: list[str], y: np.ndarray, params: FTRLParams) -> float:
    from vowpalwabbit import Workspace

    vw = Workspace(vw_args(params))
    correct = 0
    for line, label in zip(lines, y, strict=True):
        correct += vw.predict(line) == label + 1
        vw.learn(line)
    vw.finish()
    return correct / len(y)


def river_run(batch: Batch, y: np.ndarray, n: int) -> float:
    from river import linear_model, multiclass, optim

    model = multiclass.OneVsRestClassifier(
        linear_model.LogisticRegression(optimizer=optim.FTRLProximal())
    )
    correct = 0
    for r in range(n):
        row = batch.sparse[r]
        x = {f"s{j}": v for j, v in zip(row.indices, row.data, strict=True)}
        x.update({f"d{j}": v for j, v in enumerate(batch.dense[r])})
        correct += model.predict_one(x) == y[r]
        model.learn_one(x, int(y[r]))
    return correct / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--river-events", type=int, default=1_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny-encoder", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ftrl_throughput.json"))
    args = parser.parse_args()

    batch, y, classes = build_stream(args.events, args.tiny_encoder, args.seed)
    n = len(y)
    nnz = batch.sparse.nnz / n
    params = FTRLParams()
    examples = [Example(batch.sparse[r].indices.astype(np.int64), batch.sparse[r].data,
                        batch.dense[r]) for r in range(n)]
    loopline_one(examples[:50], y[:50], classes, params)  # compile the kernels outside timing
    loopline_many(batch.take(slice(64)), y[:64], classes, params, 32)

    rows: dict[str, tuple[float, float, int]] = {}
    with console.status("loopline learn_one"):
        rows["loopline learn_one"] = (*timed(lambda: loopline_one(examples, y, classes, params),
                                             args.repeats), n)
    for size in args.batch:
        with console.status(f"loopline learn_many, batch {size}"):
            rows[f"loopline learn_many (batch {size})"] = (
                *timed(lambda s=size: loopline_many(batch, y, classes, params, s), args.repeats), n)
    lines = vw_lines(batch, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.vw"
        path.write_text("\n".join(lines) + "\n")
        with console.status("Vowpal Wabbit native"):
            rows["Vowpal Wabbit native (-d file)"] = (*timed(lambda: vw_native(path, params),
                                                             args.repeats), n)
    with console.status("Vowpal Wabbit python"):
        rows["Vowpal Wabbit python learn()"] = (*timed(lambda: vw_python(lines, y, params),
                                                       args.repeats), n)
    r = min(args.river_events, n)
    with console.status(f"River on {r:,} events"):
        rows["River OvR LogisticRegression(FTRL)"] = (*timed(lambda: river_run(batch, y, r), 1), r)
    prefix_accuracy = loopline_many(batch.take(slice(r)), y[:r], classes, params, 1)

    report(rows, args, n, nnz, prefix_accuracy, r)


def report(rows: dict[str, tuple[float, float, int]], args: argparse.Namespace, n: int,
           nnz: float, prefix_accuracy: float, river_n: int) -> None:
    speed = {name: count / sec for name, (sec, _, count) in rows.items()}
    vw = speed["Vowpal Wabbit native (-d file)"]
    river = speed["River OvR LogisticRegression(FTRL)"]
    table = Table(title=f"FTRL progressive validation, {n:,} events, {nnz:.1f} active sparse "
                        f"+ 384 dense features, 2^{SPEC.bits} buckets, {N_CLASSES} classes")
    for col in ("learner", "events/s", "vs VW native", "vs River", "PV accuracy", "events"):
        table.add_column(col, justify="left" if col == "learner" else "right")
    for name, (_sec, acc, count) in rows.items():
        table.add_row(name, f"{speed[name]:,.0f}", f"{speed[name] / vw:.2f}x",
                      f"{speed[name] / river:,.0f}x", f"{acc:.4f}", f"{count:,}")
    console.print(table)
    console.print(f"loopline learn_one accuracy on River's {river_n:,}-event prefix: "
                  f"{prefix_accuracy:.4f}")
    hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
               f"{platform.python_implementation()} {platform.python_version()}"
    console.print(f"hardware: {hardware}; median of {args.repeats} runs; BLAS/numba threads 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "events": n, "active_sparse": nnz, "hardware": hardware, "repeats": args.repeats,
        "rows": {k: {"seconds": s, "accuracy": a, "events": c, "events_per_s": speed[k]}
                 for k, (s, a, c) in rows.items()},
        "river_prefix_accuracy_loopline": prefix_accuracy,
    }, indent=2))


if __name__ == "__main__":
    main()
