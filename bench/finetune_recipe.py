"""HWU64: does fine-tuning the encoder help the product head? Frozen vs fine-tuned encoders, on the test split.

Data: HWU64 (Liu, Eshghi, Swietojanski and Rieser, IWSDS 2019, arXiv:1903.05566;
CC BY 4.0), the 9,960-row training and 1,076-row test split of the literature.

For every case, (a) a 10-shot draw (`models.split.prepare(..., SplitConfig(seed, shots))`)
or (b) the full training split (seeded), every variant is scored beside its frozen twin:

- validation: `--val-per-class` rows of every intent from the training file that the
  case does not train on (for a draw, from the rows `prepare` holds out). They stop
  fine-tuning early and are what settings are chosen on; the test split never is.
  For a draw this means labelled rows beyond the shots: said so in the output.
- the encoder: frozen all-MiniLM-L6-v2, or `models.finetune.finetune` of it with the
  variant's `FinetuneConfig` (seed = the case's seed, `--budget-s` unless the variant
  sets one).
- the product head on top: `featurize(texts, embeddings, FeatureSpec())` (no users) and
  `train_head(..., HeadConfig(seed=seed))` on the case's training rows only; answers:
  argmax of `predict_proba_many`.

Reported per case and variant: test accuracy and macro-F1, validation accuracy of the
same head, fine-tune and head seconds, and McNemar's exact p against the frozen twin on
the same test rows (binomial test on the discordant pairs).

Run (results/finetune_recipe.json; settings chosen on validation of draw 0,
results/finetune_recipe-explore*.json): `OMP_NUM_THREADS=2 nice -n 19 .venv/bin/python bench/finetune_recipe.py
--draws 3 --full-seeds 1 --budget-s 900 --variant cls-e10:classify:epochs=10,lr=3e-5
--full-variant cls-e1:classify:epochs=1,lr=3e-5`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse
import dataclasses
import json
import platform
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from machine import cpu_name  # bench/machine.py: bench scripts run as `python bench/<name>.py`
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from scipy.stats import binomtest

from models.data import load_dataset
from models.encoder import Encoder
from models.evaluate import evaluate
from models.features import FeatureSpec
from models.finetune import FinetuneConfig, finetune
from models.ftrl import Batch
from models.split import SplitConfig, prepare
from models.train import HeadConfig, featurize, train_head

console = Console(width=shutil.get_terminal_size((180, 40)).columns)
DATA = Path("/work/shared/data/hwu64")  # the bench's default only: the product never reads this folder
RESULTS = Path(__file__).resolve().parent / "results"
ANCHORS = {"10-shot": {"USE+ConveRT (Casanueva et al. 2020)": 0.8583, "CPFT": 0.8713, "ICDA (2023)": 0.8741},
           "full": {"USE+ConveRT, about": 0.926, "best reported, about": 0.930}}
TARGETS = {"10-shot": 0.858, "full": 0.930}  # mean test accuracy over draws / seeds


@dataclass(frozen=True)
class Variant:
    name: str
    config: FinetuneConfig


@dataclass
class Rows:
    """One case's training and validation rows."""

    kind: str  # 10-shot or full
    seed: int
    train: pd.DataFrame
    val: pd.DataFrame


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DATA / "train.csv")
    parser.add_argument("--test", type=Path, default=DATA / "test.csv")
    parser.add_argument("--shots", type=int, default=10, help="rows per intent of a few-shot draw")
    parser.add_argument("--draws", type=int, default=3, help="few-shot draws, seeds 0..n-1 (0: none)")
    parser.add_argument("--full-seeds", type=int, default=1, help="full-data runs, seeds 0..n-1 (0: none)")
    parser.add_argument("--budget-s", type=float, default=600.0, help="time budget of one fine-tune")
    parser.add_argument("--val-per-class", type=int, default=5, help="validation rows per intent (training file)")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME:OBJECTIVE[:k=v,...]",
                        help="a fine-tune to compare, FinetuneConfig fields as k=v (repeatable; default: "
                             "classify and contrastive at their defaults)")
    parser.add_argument("--full-variant", action="append", default=None, metavar="NAME:OBJECTIVE[:k=v,...]",
                        help="the variants of the full-data cases (default: --variant's): epochs sized for "
                             "640 rows do not fit 9,960 in a budget, and the schedule is planned on epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--encoder", choices=("minilm", "tiny"), default="minilm",
                        help="tiny: a random tiny BERT, to check the script (its figures say nothing)")
    parser.add_argument("--limit-test", type=int, default=None, help="only the first N test rows (checks)")
    parser.add_argument("--out", type=Path, default=RESULTS / "finetune_recipe.json")
    return parser.parse_args(argv)


def parse_variant(text: str) -> Variant:
    """`name:objective[:field=value,...]` into a named FinetuneConfig."""
    name, objective, *rest = text.split(":")
    kinds = {f.name: type(f.default) for f in dataclasses.fields(FinetuneConfig)}
    values: dict[str, Any] = {"objective": objective}
    for item in (rest[0].split(",") if rest and rest[0] else []):
        key, value = item.split("=", 1)
        if key not in kinds:
            raise SystemExit(f"--variant {text}: FinetuneConfig has no field {key!r}")
        kind = float if key == "budget_s" else kinds[key]
        values[key] = None if value.lower() == "none" else kind(value) if kind is not type(None) else int(value)
    return Variant(name, FinetuneConfig(**values))


# -- rows -----------------------------------------------------------------------------------------


def per_class(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to `n` seeded rows of every label."""
    return frame.sample(frac=1.0, random_state=seed).groupby("label", sort=True).head(n)


def cases(frame: pd.DataFrame, args: argparse.Namespace) -> list[Rows]:
    out = []
    for seed in range(args.draws):
        drawn = prepare(frame, SplitConfig(seed=seed, shots=args.shots), source=str(args.train))
        out.append(Rows(f"{args.shots}-shot", seed, drawn.train.reset_index(drop=True),
                        per_class(drawn.eval, args.val_per_class, seed).reset_index(drop=True)))
    for seed in range(args.full_seeds):
        val = per_class(frame, args.val_per_class, seed)
        out.append(Rows("full", seed, frame.drop(index=val.index).sample(frac=1.0, random_state=seed)
                        .reset_index(drop=True), val.reset_index(drop=True)))
    return out


# -- scoring --------------------------------------------------------------------------------------


def encode(encoder: Encoder, texts: list[str], bar: Progress, label: str) -> np.ndarray:
    task = bar.add_task(label, total=len(texts))
    out = encoder.encode(texts, on_batch=lambda n: bar.advance(task, n))
    bar.remove_task(task)
    return out


@dataclass
class Scored:
    test: dict[str, float]
    val_accuracy: float
    right: np.ndarray  # per test row: answered correctly
    head_s: float


def score(sparse: dict[str, sp.csr_matrix], emb: dict[str, np.ndarray], rows: Rows, test: pd.DataFrame,
          classes: tuple[str, ...]) -> Scored:
    """The product head on these embeddings: trained on the case's rows, scored on validation and test."""
    start = time.monotonic()
    head = train_head(Batch(sparse["train"], emb["train"]), list(rows.train["label"]), classes,
                      HeadConfig(seed=rows.seed))
    head_s = time.monotonic() - start
    proba = head.predict_proba_many(Batch(sparse["test"], emb["test"]))
    result = evaluate(proba, list(test["label"]), classes)
    val_proba = head.predict_proba_many(Batch(sparse["val"], emb["val"]))
    val_right = np.array(classes)[val_proba.argmax(axis=1)] == rows.val["label"].to_numpy()
    right = np.array(classes)[proba.argmax(axis=1)] == test["label"].to_numpy()
    return Scored({"accuracy": result.accuracy, "macro_f1": result.macro_f1}, float(val_right.mean()), right,
                  round(head_s, 2))


def mcnemar(frozen: np.ndarray, tuned: np.ndarray) -> dict[str, float]:
    """Exact McNemar: of the rows exactly one of the two gets right, is the split 50/50?"""
    lost, won = int((frozen & ~tuned).sum()), int((~frozen & tuned).sum())
    p = binomtest(won, won + lost, 0.5).pvalue if won + lost else 1.0
    return {"won": won, "lost": lost, "p": float(p)}


def centroid_accuracy(emb: dict[str, np.ndarray], rows: Rows, test: pd.DataFrame) -> float:
    """Diagnostic only: nearest class mean of the training embeddings, on the test rows."""
    labels = rows.train["label"].to_numpy()
    classes = sorted(set(labels))
    means = np.stack([emb["train"][labels == c].mean(axis=0) for c in classes])
    pred = np.array(classes)[(emb["test"] @ means.T).argmax(axis=1)]
    return float((pred == test["label"].to_numpy()).mean())


def run_case(rows: Rows, variants: list[Variant], base: Encoder, test: pd.DataFrame, test_frozen: np.ndarray,
             args: argparse.Namespace, bar: Progress) -> list[dict[str, Any]]:
    classes = tuple(sorted(set(rows.train["label"])))
    texts = {"train": list(rows.train["text"]), "val": list(rows.val["text"]), "test": list(test["text"])}
    sparse = {k: featurize(v, None, FeatureSpec()).sparse for k, v in texts.items()}
    name = f"{rows.kind} seed {rows.seed}"
    emb = {"train": encode(base, texts["train"], bar, f"{name}: frozen, train rows"),
           "val": encode(base, texts["val"], bar, f"{name}: frozen, val rows"), "test": test_frozen}
    frozen = score(sparse, emb, rows, test, classes)
    common = {"kind": rows.kind, "seed": rows.seed, "train_rows": len(rows.train), "val_rows": len(rows.val)}
    out = [{**common, "variant": "frozen", "test": frozen.test, "val_accuracy": frozen.val_accuracy,
            "finetune_s": 0.0, "head_s": frozen.head_s, "centroid_test_accuracy": centroid_accuracy(emb, rows, test)}]
    console.log(f"{name}: frozen  test {frozen.test['accuracy']:.4f}  val {frozen.val_accuracy:.4f}")
    for variant in variants:
        config = variant.config
        if config.budget_s is None:
            config = dataclasses.replace(config, budget_s=args.budget_s)
        config = dataclasses.replace(config, seed=rows.seed, threads=args.threads)
        task = bar.add_task(f"{name}: {variant.name}, steps", total=None)
        tuned, report = finetune(base, texts["train"], list(rows.train["label"]), texts["val"],
                                 list(rows.val["label"]), config,
                                 on_step=lambda s, total, task=task: bar.update(task, completed=s, total=total))
        bar.remove_task(task)
        emb = {k: encode(tuned, v, bar, f"{name}: {variant.name}, {k} rows") for k, v in texts.items()}
        scored = score(sparse, emb, rows, test, classes)
        out.append({**common, "variant": variant.name, "objective": config.objective,
                    "config": dataclasses.asdict(config), "test": scored.test, "val_accuracy": scored.val_accuracy,
                    "finetune": dataclasses.asdict(report), "finetune_s": report.seconds, "head_s": scored.head_s,
                    "mcnemar_vs_frozen": mcnemar(frozen.right, scored.right),
                    "centroid_test_accuracy": centroid_accuracy(emb, rows, test)})
        console.log(f"{name}: {variant.name}  test {scored.test['accuracy']:.4f}  val {scored.val_accuracy:.4f}  "
                    f"centroid val {report.best_score:.4f} at epoch {report.best_epoch}  {report.seconds:.0f} s, "
                    f"stopped: {report.stopped}")
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["kind"], run["variant"]), []).append(run)
    out = []
    for (kind, variant), group in groups.items():
        acc = [r["test"]["accuracy"] for r in group]
        out.append({"kind": kind, "variant": variant, "n": len(group), "test_accuracy": statistics.mean(acc),
                    "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "test_macro_f1": statistics.mean(r["test"]["macro_f1"] for r in group),
                    "val_accuracy": statistics.mean(r["val_accuracy"] for r in group),
                    "finetune_s": statistics.mean(r["finetune_s"] for r in group),
                    "mcnemar_p": [r["mcnemar_vs_frozen"]["p"] for r in group if "mcnemar_vs_frozen" in r],
                    "centroid_test_accuracy": statistics.mean(r["centroid_test_accuracy"] for r in group),
                    "target": TARGETS.get("full" if kind == "full" else "10-shot")})
    return out


def show(summary: list[dict[str, Any]]) -> None:
    table = Table(title="HWU64 test split: product head on frozen vs fine-tuned encoders",
                  caption="centroid acc: nearest class mean of the embeddings alone, a diagnostic")
    for col in ("case", "variant", "n", "test acc", "macro-F1", "val acc", "fine-tune s", "McNemar p", "centroid acc",
                "target"):
        table.add_column(col, justify="left" if col in ("case", "variant") else "right")
    for s in summary:
        sd = f" ±{s['test_accuracy_sd']:.4f}" if s["n"] > 1 else ""
        table.add_row(s["kind"], s["variant"], str(s["n"]), f"{s['test_accuracy']:.4f}{sd}",
                      f"{s['test_macro_f1']:.4f}", f"{s['val_accuracy']:.4f}", f"{s['finetune_s']:.0f}",
                      ", ".join(f"{p:.3g}" for p in s["mcnemar_p"]) or "-", f"{s['centroid_test_accuracy']:.4f}",
                      f"{s['target']:.3f}")
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in (args.variant or ["classify:classify", "contrastive:contrastive"])]
    full_variants = [parse_variant(v) for v in args.full_variant] if args.full_variant else variants
    frame = load_dataset(args.train)
    test = load_dataset(args.test)
    test = test.head(args.limit_test) if args.limit_test else test
    base = Encoder.from_pretrained() if args.encoder == "minilm" else Encoder.tiny_random()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        test_frozen = encode(base, list(test["text"]), bar, "frozen, test rows")
        for rows in cases(frame, args):
            chosen = full_variants if rows.kind == "full" else variants
            runs.extend(run_case(rows, chosen, base, test, test_frozen, args, bar))
    summary = summarize(runs)
    show(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "what": __doc__.splitlines()[0],
        "data": {"train": str(args.train), "test": str(args.test), "test_rows": len(test)},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "validation_note": (f"{args.val_per_class} rows per intent from the training file that the case does not "
                            "train on stop fine-tuning early and choose settings; for a few-shot draw these are "
                            "labelled rows beyond the shots. The test split chose nothing."),
        "anchors": ANCHORS, "seconds": round(time.monotonic() - started, 1), "summary": summary, "runs": runs,
    }, indent=2))
    console.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
