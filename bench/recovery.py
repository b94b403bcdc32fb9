"""Accuracy recovery after `new_phrasing` drift: the online head vs a head retrained from scratch, one run.

For each seed, one generated `new_phrasing` stream (`models.traffic`, same users
throughout) is split in time:

- pre-onset (`--pre`): the first 80% train the initial model exactly as the train flow
  does (`flows.model_tasks`: torch FP32 MiniLM embeddings, `fit_head` on embedding +
  hashed n-grams + user features, `compile_encoder` to fused INT8 ONNX, `build_bundle`);
  the latest 20% measure it before the drift and warm the feedback service up;
- post-onset: the first `--stream` events are served and learned from, the latest
  `--test` events are the test slice, never fed to any learner.

Online: every event is answered by the bundle's compiled encoder and hashed features
(`models.predict.Predictor`: what serving computes) and the head serving has at that
moment; its prediction event (logged features and probabilities) and its feedback event
(the label the user reported, 2% noise) go as Kafka records through the real
`services.feedback.service.FeedbackService` (no broker: `process` + `tick`, event time
from the record timestamps, 4 partitions per topic keyed by prediction id): the join,
event-time windows of `--interval` s, progressive validation, the held-back share,
FTRL mini-batches and the gate against the live head, all at default settings.
Predictions come at `--rates` per second of event time and every one gets feedback (a
confirmation or a correction) 1-10 s later (uniform); the x axis counts post-onset
feedback events received, so a lower feedback share would only stretch event time.
"warm": the service was already running on the pre-onset held-out traffic when the
drift began (its held-back set is filled, as in production); "cold": it starts at the
onset from the flow's head, so its first windows have no held-back evidence. After
every `--step` feedback events the live head (what serving answers with: the learner's
`live` ServingHead, i.e. the last published delta) is scored on the test slice against
the intents users meant.

Baselines, on the same test slice: the pre-drift model (no learning); heads retrained
from scratch by the flow's `fit_head` (torch FP32 embeddings, same epochs) on the first
n post-onset feedback events received, n up to all of them (the target's reference);
and "FTRL alone": the flow's head updated with plain `learn_many` mini-batches of at most
32 on every feedback event as it arrives (warm-up included), no held-back share, gate or
window wait: what FTRL can do, so the cost of the service's safeguards shows.

Target (the issue): online accuracy reaches 95% of the retrained-on-all model's within
3,000 feedback events. Reported per seed and as the median over seeds.
Run: `.venv/bin/python bench/recovery.py [--quick] [--seeds 0 1 2] [--rates 50 200]`.
`--quick` is a smoke run with a random tiny encoder: its figures say nothing about MiniLM.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # torch and ORT threads are set explicitly (--threads)

import argparse
import json
import platform
import random
import shutil
import statistics
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from quantize import cpu_name  # bench/quantize.py: bench scripts run as `python bench/<name>.py`
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.features import USER_FIELDS
from models.ftrl import Batch, FTRLProximal
from models.predict import Predictor
from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import featurize
from services.common.events import FEEDBACK, PREDICTIONS, FeedbackEvent, LoggedFeatures, PredictionEvent
from services.feedback.intake import Record
from services.feedback.service import FeedbackService
from services.feedback.settings import FeedbackSettings

console = Console(width=shutil.get_terminal_size((200, 40)).columns)
TARGET_SHARE = 0.95  # of the retrained model's accuracy...
TARGET_BUDGET = 3_000  # ...within this many feedback events
PARTITIONS = 4  # of `predictions` and of `feedback`, both keyed by prediction id
T0 = 1_800_000_000.0  # event time of the first post-onset prediction
DELAY_S = (1.0, 10.0)  # feedback comes this long after its prediction (uniform)
TICK_S = 0.1  # the service loop ticks after each poll of at most 0.1 s
BATCH = 32  # FTRL alone: mini-batch, as the learner and the flow
QUICK = {"encoder": "tiny", "seeds": [0], "pre": 2_000, "stream": 1_500, "test": 500, "step": 100,
         "retrain_at": [500], "rates": [50.0]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pre", type=int, default=10_000, help="pre-onset events (80%% train, 20%% held out)")
    parser.add_argument("--stream", type=int, default=6_000, help="post-onset events served and learned from")
    parser.add_argument("--test", type=int, default=2_000, help="latest post-onset events: the test slice")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--strength", type=float, default=0.6, help="share of post-onset utterances reworded")
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0],
                        help="predictions (= feedback events) per second of event time; the first is the headline")
    parser.add_argument("--interval", type=float, default=5.0, help="LOOPLINE_UPDATE_INTERVAL_S")
    parser.add_argument("--step", type=int, default=250, help="score the live head every this many feedback events")
    parser.add_argument("--retrain-at", type=int, nargs="+", default=[500, 1_000, 2_000, 3_000],
                        help="also retrain from scratch on the first n feedback events (on all of them always)")
    parser.add_argument("--epochs", type=int, default=3, help="as the train flow (TrainConfig.epochs)")
    parser.add_argument("--encoder", default="minilm", help="'minilm' or, for --quick only, 'tiny'")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime threads for embedding (a second thread made both 1.5-3x slower "
                             "while other jobs shared the 2 cores)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny random encoder, small stream, 1 seed")
    parser.add_argument("--out", type=Path, help="JSON path (the plot goes beside it, .png); default "
                        "bench/results/recovery.json, for --quick a temporary folder")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; options given explicitly still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "loopline-bench" / "recovery-quick.json" if args.quick
                    else Path(__file__).resolve().parent / "results" / "recovery.json")
    return args


# -- data and the initial model, as the train flow makes them --------------------------------------


@dataclass
class Part:
    """Rows of the stream: texts, users (and the features Feast gives for them), reported and meant intents."""

    texts: list[str]
    user_ids: list[str]
    users: list[dict[str, Any] | None]
    labels: list[str]
    truth: np.ndarray  # class indices of the intents users meant
    reworded: np.ndarray  # worded with a post-onset template
    served: Batch | None = None  # features as the bundle computes them (INT8 encoder)
    fp32: np.ndarray | None = None  # torch FP32 embeddings, what the flow trains on

    def __add__(self, other: Part) -> Part:
        assert self.served is not None and other.served is not None
        assert self.served.dense is not None and other.served.dense is not None
        served = Batch(sp.vstack([self.served.sparse, other.served.sparse], format="csr"),
                       np.concatenate([self.served.dense, other.served.dense]))
        return Part(self.texts + other.texts, self.user_ids + other.user_ids, self.users + other.users,
                    self.labels + other.labels, np.concatenate([self.truth, other.truth]),
                    np.concatenate([self.reworded, other.reworded]), served)


def part(frame: pd.DataFrame, users: pd.DataFrame) -> Part:
    table = users.set_index("user_id").to_dict(orient="index")
    # Feast hands serving and the flow strings (feature_repo schema), so the hashed features match.
    rows = [{k: str(table[u][k]) for k in USER_FIELDS if k in table[u]} if u in table else None
            for u in frame["user_id"]]
    index = {c: i for i, c in enumerate(INTENTS)}
    return Part(list(frame["text"]), list(frame["user_id"]), rows, list(frame["label"]),
                np.array([index[v] for v in frame["true_label"]]),
                frame["template_id"].str.contains("/new/").to_numpy())


@dataclass
class SeedData:
    train: Part
    pre_eval: Part
    stream: Part
    test: Part
    head: FTRLProximal  # the pre-drift model, as the flow registered it


def traffic(seed: int, args: argparse.Namespace) -> tuple[Part, Part, Part, Part]:
    total = args.pre + args.stream + args.test
    config = TrafficConfig(seed=seed, n_users=args.users, n_events=total, scenario="new_phrasing",
                           onset=args.pre / total, strength=args.strength)
    generated = generate(config)
    events = generated.events.sort_values("ts", kind="stable").reset_index(drop=True)
    onset = int(np.argmax(events["after_onset"].to_numpy()))
    if onset != args.pre:
        raise RuntimeError(f"onset at row {onset}, expected {args.pre}")
    cut = int(args.pre * 0.8)  # the flow's time split (TrainConfig.holdout = 0.2)
    slices = (slice(0, cut), slice(cut, args.pre), slice(args.pre, args.pre + args.stream),
              slice(args.pre + args.stream, total))
    train, pre_eval, stream, test = (part(events.iloc[s], generated.users) for s in slices)
    return train, pre_eval, stream, test


@contextmanager
def flow_progress(bar: Progress, prefix: str) -> Iterator[None]:
    """Show the flow tasks' own progress callbacks (embed, train head) as bars here."""
    from flows import progress

    def track(description: str, total: int) -> Callable[[int], None]:
        task = bar.add_task(f"{prefix}{description}", total=total)
        return lambda n: bar.advance(task, n)

    progress.install(track)
    try:
        yield
    finally:
        progress.install(None)


def prepare(seed: int, args: argparse.Namespace, compiled: Any, work: Path, bar: Progress) -> SeedData:
    """Generate, embed, train the pre-drift head and bundle it; serving's features of everything served."""
    from flows.model_tasks import build_bundle, embed, fingerprint, fit_head

    train, pre_eval, stream, test = traffic(seed, args)
    with flow_progress(bar, f"seed {seed}: torch FP32 "):
        # One call, as the flow embeds its whole frame: the pre-onset training rows and the
        # post-onset stream (what a retrain from scratch trains on).
        fp32 = embed.fn(train.texts + stream.texts, args.encoder, fingerprint(args.encoder))
    train.fp32, stream.fp32 = fp32[: len(train.texts)], fp32[len(train.texts):]
    with flow_progress(bar, f"seed {seed}: "):
        head = fit_head.fn(train.texts, train.fp32, train.users, train.labels, INTENTS, args.epochs, seed)
    bundle = build_bundle.fn(compiled, head, args.encoder, {}, {"source": "bench/recovery.py", "seed": seed},
                             work / f"bundle-{seed}")
    predictor = Predictor(bundle, threads=args.threads)
    texts = pre_eval.texts + stream.texts + test.texts
    task = bar.add_task(f"seed {seed}: bundle INT8 encoder (serving features)", total=len(texts))
    served = predictor.encoder.encode(texts, on_batch=lambda n: bar.advance(task, n))
    batch = featurize(texts, served, predictor.spec, pre_eval.users + stream.users + test.users)  # = .features()
    a, b = len(pre_eval.texts), len(pre_eval.texts) + len(stream.texts)
    pre_eval.served, stream.served, test.served = batch.take(slice(0, a)), batch.take(slice(a, b)), \
        batch.take(slice(b, None))
    return SeedData(train, pre_eval, stream, test, predictor.head)


def accuracy(model: Any, data: Part, rows: np.ndarray | None = None) -> float:
    assert data.served is not None
    right = model.predict_proba_many(data.served).argmax(axis=1) == data.truth
    return float(right.mean() if rows is None else right[rows].mean())


def by_wording(model: Any, data: Part) -> dict[str, float]:
    return {"reworded": accuracy(model, data, data.reworded), "old_wording": accuracy(model, data, ~data.reworded)}


def head_copy(head: FTRLProximal) -> FTRLProximal:
    return FTRLProximal.from_bytes(head.to_bytes())


# -- the online path: records through the feedback service ----------------------------------------


@dataclass(order=True)
class Pending:
    ts: float
    topic: str = field(compare=False)
    row: int = field(compare=False)
    partition: int = field(compare=False)
    offset: int = field(compare=False, default=0)


def schedule(n_rows: int, warm: int, rate: float, seed: int) -> list[Pending]:
    """Prediction and feedback records of rows 0..n_rows-1 in event-time order, offsets per partition.
    Row `warm` (the first post-onset one) is predicted at T0."""
    rng = random.Random(seed)
    items = []
    for i in range(n_rows):
        ts = T0 + (i - warm) / rate
        partition = zlib.crc32(pid(seed, i).encode()) % PARTITIONS
        items.append(Pending(ts, PREDICTIONS, i, partition))
        items.append(Pending(ts + rng.uniform(*DELAY_S), FEEDBACK, i, partition))
    items.sort()
    offsets: Counter[tuple[str, int]] = Counter()
    for item in items:
        item.offset = offsets[(item.topic, item.partition)]
        offsets[(item.topic, item.partition)] += 1
    return items


def arrival(items: list[Pending]) -> np.ndarray:
    """Rows in the order their feedback arrives."""
    return np.array([item.row for item in items if item.topic == FEEDBACK])


def pid(seed: int, row: int) -> str:
    return f"s{seed}-p{row}"


def prediction_record(item: Pending, seed: int, rows: Part, svc: FeedbackService) -> tuple[Record, str]:
    """What serving logs for this request, answered by the head it has now."""
    assert rows.served is not None
    x = rows.served.take(np.array([item.row]))
    assert x.dense is not None
    proba = svc.learner.live.predict_proba_many(x)[0]
    intent = INTENTS[int(proba.argmax())]
    csr = x.sparse.tocsr()
    learner = svc.learner
    version = f"{learner.base_version}+ftrl.{learner.sequence}" if learner.sequence else str(learner.base_version)
    event = PredictionEvent(
        prediction_id=pid(seed, item.row), time=item.ts, model_version=version,
        user_id=rows.user_ids[item.row], user=rows.users[item.row], text=rows.texts[item.row], intent=intent,
        features=LoggedFeatures.of(csr.indices, csr.data, x.dense[0]),
        probabilities=dict(zip(INTENTS, proba.tolist(), strict=True)))
    value = event.model_dump_json().encode()
    return Record(PREDICTIONS, item.partition, item.offset, pid(seed, item.row), value, item.ts), intent


def feedback_record(item: Pending, seed: int, rows: Part, served_intent: str) -> Record:
    label = rows.labels[item.row]
    event = FeedbackEvent(event_id=f"s{seed}-f{item.row}", time=item.ts, prediction_id=pid(seed, item.row),
                          label=label, source="confirmation" if label == served_intent else "correction")
    return Record(FEEDBACK, item.partition, item.offset, pid(seed, item.row), event.model_dump_json().encode(),
                  item.ts)


def run_online(data: SeedData, seed: int, rate: float, warm: bool, args: argparse.Namespace,
               bar: Progress) -> dict[str, Any]:
    """Serve and learn through FeedbackService; score the live head every `step` post-onset feedback events."""
    rows = (data.pre_eval + data.stream) if warm else data.stream
    n_warm = len(data.pre_eval.texts) if warm else 0
    items = schedule(len(rows.texts), n_warm, rate, seed)
    n_post = len(data.stream.texts)
    curve: dict[str, list[float]] = {"feedback": [], "learned": [], "accuracy": []}
    windows: list[dict[str, Any]] = []
    served: dict[int, str] = {}
    served_right = 0
    name = f"{rate:g}/s {'warm' if warm else 'cold'}"
    task = bar.add_task(f"seed {seed}: FeedbackService, {name}", total=len(items))
    with tempfile.TemporaryDirectory() as state:
        settings = FeedbackSettings(state_dir=Path(state), update_interval_s=args.interval)
        svc = FeedbackService(settings, start=(head_copy(data.head), 1))
        undone = watch_undo(svc, data.test)

        def tick(now: float, flush: bool = False) -> None:
            for r in svc.tick(now, flush=flush):
                window = {"end_s": r.window_end - T0, "examples": r.examples, "learned": r.learned,
                          "held_back": r.held_back, "holdout_size": len(svc.learner.holdout),
                          "decision": r.decision, "live": r.live_accuracy, "candidate": r.candidate_accuracy}
                if r.decision in ("rejected", "no_evidence"):  # what the discarded candidate would have scored
                    # None when nothing was undone: a window whose examples all went to the held-back set
                    candidate, undone[0] = undone[0], float("nan")
                    window["test_live"] = accuracy(svc.learner.live, data.test)
                    window["test_candidate"] = None if np.isnan(candidate) else candidate
                windows.append(window)

        def score(received: int, now: float) -> None:
            tick(now)
            curve["feedback"].append(received)
            curve["learned"].append(svc.learner.progress.examples)
            curve["accuracy"].append(accuracy(svc.learner.live, data.test))

        received, last_tick = 0, -np.inf
        for item in items:
            post = item.row >= n_warm
            if item.topic == FEEDBACK and post and received == 0:
                score(0, item.ts)  # the head serving has when the first post-onset feedback comes
            if item.topic == PREDICTIONS:
                record, served[item.row] = prediction_record(item, seed, rows, svc)
                served_right += post and served[item.row] == INTENTS[rows.truth[item.row]]
            else:
                record = feedback_record(item, seed, rows, served[item.row])
            svc.process(record, now=item.ts)
            if item.ts - last_tick >= TICK_S:
                tick(item.ts)
                last_tick = item.ts
            if item.topic == FEEDBACK and post:
                received += 1
                if received % args.step == 0 or received == n_post:
                    score(received, item.ts)
            bar.advance(task)
        tick(0.0, flush=True)
        return {"rate": rate, "warm": warm, "curve": curve, "windows": windows,
                "decisions": dict(Counter(w["decision"] for w in windows)),
                "dead_letters": sum(svc.stats.dead_letters.values()),
                "final": by_wording(svc.learner.live, data.test),
                "after_flush_accuracy": accuracy(svc.learner.live, data.test),
                "served_accuracy_post_onset": served_right / n_post,
                "progressive_accuracy": svc.learner.progress.accuracy,
                "feedback_per_window": rate * args.interval}


def watch_undo(svc: FeedbackService, test: Part) -> list[float]:
    """Measurement only: score the candidate on the test slice just before the learner undoes a window
    (gate rejection or no evidence yet), so the report can say whether the discarded update was good."""
    learner, last = svc.learner, [float("nan")]
    undo = learner._undo

    def scored_undo(state: Any) -> None:
        last[0] = accuracy(learner.model, test)
        undo(state)

    learner._undo = scored_undo  # type: ignore[method-assign]
    return last


def post_onset_arrival(data: SeedData, seed: int, args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """Arrival order of the headline warm run (rows of pre_eval + stream), and the number of warm-up rows."""
    n_warm = len(data.pre_eval.texts)
    return arrival(schedule(n_warm + len(data.stream.texts), n_warm, args.rates[0], seed)), n_warm


def run_ftrl_alone(data: SeedData, seed: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """The flow's head, learn_many on every feedback event as it arrives (warm-up included), no safeguards."""
    order, n_warm = post_onset_arrival(data, seed, args)
    rows = data.pre_eval + data.stream
    served = rows.served
    assert served is not None
    model = head_copy(data.head)
    labels = np.array([model.class_index[v] for v in rows.labels])
    curve: dict[str, list[float]] = {"feedback": [], "accuracy": []}
    pending: list[int] = []
    received = 0

    def learn() -> None:
        if pending:
            idx = np.array(pending)
            model.learn_many(served.take(idx), labels[idx])
            pending.clear()

    for row in order:
        if row >= n_warm and received == 0:
            learn()
            curve["feedback"].append(0)
            curve["accuracy"].append(accuracy(model, data.test))
        pending.append(int(row))
        if len(pending) == BATCH:
            learn()
        if row >= n_warm:
            received += 1
            if received % args.step == 0 or received == len(data.stream.texts):
                learn()
                curve["feedback"].append(received)
                curve["accuracy"].append(accuracy(model, data.test))
    return curve


def run_retrained(data: SeedData, seed: int, args: argparse.Namespace, bar: Progress) -> dict[str, Any]:
    """Heads retrained from scratch by the flow's fit_head on the first n post-onset feedback events received."""
    from flows.model_tasks import fit_head

    order, n_warm = post_onset_arrival(data, seed, args)
    order = order[order >= n_warm] - n_warm
    sizes = sorted({n for n in args.retrain_at if n < len(order)} | {len(order)})
    s = data.stream
    assert s.fp32 is not None
    out: dict[str, Any] = {}
    with flow_progress(bar, f"seed {seed}: retrain from scratch, "):
        for n in sizes:
            rows = order[:n]
            head = fit_head.fn([s.texts[i] for i in rows], s.fp32[rows], [s.users[i] for i in rows],
                               [s.labels[i] for i in rows], INTENTS, args.epochs, seed)
            out[str(n)] = accuracy(head, data.test)
    out["all_by_wording"] = by_wording(head, data.test)  # the last one: trained on all
    return out


# -- summary, report, plot -----------------------------------------------------------------------


def events_to(curve: dict[str, list[float]], level: float) -> tuple[int | None, int | None]:
    """First scored point at or above `level`, and the first from which it never falls below again."""
    xs, ys = curve["feedback"], curve["accuracy"]
    first = next((int(x) for x, y in zip(xs, ys, strict=True) if y >= level), None)
    stays = None
    for x, y in zip(reversed(xs), reversed(ys), strict=True):
        if y < level:
            break
        stays = int(x)
    return first, stays


def median_or_none(values: list[int | None]) -> float | None:
    if any(v is None for v in values):
        return None  # not reached on some seed: a median would hide it
    return float(statistics.median(v for v in values if v is not None))


def variant_names(args: argparse.Namespace) -> list[tuple[str, float, bool]]:
    """(name, rate, warm): warm at every rate, cold at the headline rate."""
    return [(f"{r:g}/s warm", r, True) for r in args.rates] + [(f"{args.rates[0]:g}/s cold", args.rates[0], False)]


def summarize(seeds: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    med = statistics.median
    n_all = str(args.stream)
    budget = min(TARGET_BUDGET, args.stream)
    retrained = [s["retrained"][n_all] for s in seeds]

    def at(curve: dict[str, list[float]], n: int) -> float:
        return curve["accuracy"][curve["feedback"].index(n)] if n in curve["feedback"] else float("nan")

    def block(curves: list[dict[str, list[float]]], runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        target = [events_to(c, TARGET_SHARE * r) for c, r in zip(curves, retrained, strict=True)]
        parity = [events_to(c, r)[0] for c, r in zip(curves, retrained, strict=True)]
        first = [t[0] for t in target]
        out: dict[str, Any] = {
            "events_to_target": first, "events_to_target_sustained": [t[1] for t in target],
            "median_events_to_target": median_or_none(first),
            "met": all(f is not None and f <= TARGET_BUDGET for f in first),
            "events_to_retrained_accuracy": parity, "median_events_to_retrained_accuracy": median_or_none(parity),
            "start_accuracy": med(c["accuracy"][0] for c in curves),
            f"accuracy_at_{budget}": med(at(c, budget) for c in curves),
            "final_accuracy": med(c["accuracy"][-1] for c in curves),
            "median_curve": {"feedback": curves[0]["feedback"],
                             "accuracy": [med(c["accuracy"][i] for c in curves)
                                          for i in range(len(curves[0]["feedback"]))]}}
        if runs:
            out["decisions"] = dict(sum((Counter(r["decisions"]) for r in runs), Counter()))
            out["served_accuracy_post_onset"] = med(r["served_accuracy_post_onset"] for r in runs)
            out["final_by_wording"] = {k: med(r["final"][k] for r in runs) for k in runs[0]["final"]}
            for decision in ("rejected", "no_evidence"):  # learning the service threw away, all seeds
                undone = [w for r in runs for w in r["windows"] if w["decision"] == decision]
                out[decision] = {"windows": len(undone), "learned_then_undone": sum(w["learned"] for w in undone),
                                 "post_onset_windows": sum(w["end_s"] > 0 for w in undone),
                                 "test_gain_of_undone_candidates": [round(w["test_candidate"] - w["test_live"], 4)
                                                                    for w in undone
                                                                    if w["test_candidate"] is not None]}
        return out

    sizes = [k for k in seeds[0]["retrained"] if k.isdigit()]
    return {
        "seeds": len(seeds),
        "pre_drift_pre_onset_accuracy": med(s["pre_drift"]["pre_onset"] for s in seeds),
        "pre_drift_test_accuracy": med(s["pre_drift"]["test"] for s in seeds),
        "pre_drift_test_by_wording": {k: med(s["pre_drift"]["test_by_wording"][k] for s in seeds)
                                      for k in ("reworded", "old_wording")},
        "retrained_accuracy": med(retrained),
        "retrained_by_wording": {k: med(s["retrained"]["all_by_wording"][k] for s in seeds)
                                 for k in ("reworded", "old_wording")},
        "retrained_on_first_n": {n: med(s["retrained"][n] for s in seeds) for n in sizes},
        "online": {name: block([s["online"][name]["curve"] for s in seeds], [s["online"][name] for s in seeds])
                   for name, _, _ in variant_names(args)},
        "ftrl_alone": block([s["ftrl_alone"] for s in seeds]),
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    summ, n = result["summary"], args.stream
    budget = min(TARGET_BUDGET, n)
    label = "QUICK SMOKE RUN, random tiny encoder: not MiniLM figures. " if args.quick else ""
    table = Table(title=f"{label}new_phrasing recovery: accuracy on {args.test:,} held-out post-onset events, "
                        f"medians over {summ['seeds']} seed(s)")
    for col in ("model", "at 0", f"at {budget:,}", f"at {n:,}", "to 95% of retrained", "per seed: first / for good",
                "to 100%", "windows (all seeds)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("pre-drift model, no learning", *[f"{summ['pre_drift_test_accuracy']:.4f}"] * 3, "", "", "", "")
    table.add_row(f"retrained from scratch on all {n:,}", "", "", f"{summ['retrained_accuracy']:.4f}",
                  "", "", "", "")
    table.add_row(f"target: 95% of it by {TARGET_BUDGET:,}", "", "",
                  f"{TARGET_SHARE * summ['retrained_accuracy']:.4f}", "", "", "", "")

    def events(value: float | None) -> str:
        return "not reached" if value is None else f"{value:,.0f}"

    rows = [(f"online {name} ({float(name.split('/')[0]) * args.interval:g}/window)", b)
            for name, b in summ["online"].items()] + [("FTRL alone (no safeguards)", summ["ftrl_alone"])]
    for name, b in rows:
        per_seed = ", ".join(f"{'-' if f is None else f} / {'-' if s is None else s}"
                             for f, s in zip(b["events_to_target"], b["events_to_target_sustained"], strict=True))
        table.add_row(name, f"{b['start_accuracy']:.4f}", f"{b[f'accuracy_at_{budget}']:.4f}",
                      f"{b['final_accuracy']:.4f}", events(b["median_events_to_target"]), per_seed,
                      events(b["median_events_to_retrained_accuracy"]),
                      ", ".join(f"{k} {v}" for k, v in sorted(b.get("decisions", {}).items())))
    console.print(table)
    retrained = Table(title="retrained from scratch on the first n post-onset feedback events (median accuracy)")
    for key in summ["retrained_on_first_n"]:
        retrained.add_column(f"n={int(key):,}", justify="right")
    retrained.add_row(*(f"{v:.4f}" for v in summ["retrained_on_first_n"].values()))
    console.print(retrained)
    headline = summ["online"][variant_names(args)[0][0]]
    words = ", ".join(f"{name} {w['reworded']:.4f} / {w['old_wording']:.4f}" for name, w in (
        ("pre-drift", summ["pre_drift_test_by_wording"]), ("retrained", summ["retrained_by_wording"]),
        ("online at the end", headline["final_by_wording"])))
    console.print(f"test accuracy on reworded / old-wording utterances: {words}")
    for name, b in summ["online"].items():
        rejected = b["rejected"]
        if rejected["windows"]:
            gains = ", ".join(f"{g * 100:+.2f}" for g in rejected["test_gain_of_undone_candidates"])
            console.print(f"{name}: the gate rejected {rejected['windows']} window(s) "
                          f"({rejected['learned_then_undone']:,} learned examples undone); on the test slice "
                          f"those candidates were {gains} points vs the live head")
    console.print(f"pre-drift model on pre-onset held-out traffic: {summ['pre_drift_pre_onset_accuracy']:.4f}; "
                  f"hardware: {result['hardware']}; wall {result['wall_s']:.0f} s; "
                  f"load average before/after {result['load_average']}")
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def plot(result: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = result["summary"]
    names = variant_names(args)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for s in result["seeds"]:
        c = s["online"][names[0][0]]["curve"]
        ax.plot(c["feedback"], c["accuracy"], color="tab:blue", alpha=0.25, linewidth=0.8)
    styles = [("tab:blue", "-"), ("tab:purple", "-"), ("tab:cyan", "-"), ("tab:olive", "-")]
    for i, (name, _, warm) in enumerate(names):
        c = summ["online"][name]["median_curve"]
        color, style = ("tab:orange", "-") if not warm else styles[i % len(styles)]
        ax.plot(c["feedback"], c["accuracy"], color=color, linestyle=style, linewidth=2 if i == 0 else 1.3,
                label=f"online: FeedbackService live head, {name}")
    c = summ["ftrl_alone"]["median_curve"]
    ax.plot(c["feedback"], c["accuracy"], color="tab:green", linestyle="--", linewidth=1.3,
            label="FTRL alone (no hold-back, gate or window wait)")
    sizes = [int(k) for k in summ["retrained_on_first_n"]]
    ax.plot(sizes, list(summ["retrained_on_first_n"].values()), "s", color="tab:red",
            label="retrained from scratch on the first n feedback events")
    ax.axhline(summ["retrained_accuracy"], color="tab:red", linewidth=1,
               label=f"retrained on all {args.stream:,}: {summ['retrained_accuracy']:.3f}")
    ax.axhline(TARGET_SHARE * summ["retrained_accuracy"], color="tab:red", linestyle=":", linewidth=1,
               label=f"target, 95% of retrained: {TARGET_SHARE * summ['retrained_accuracy']:.3f}")
    ax.axhline(summ["pre_drift_test_accuracy"], color="grey", linestyle="-.", linewidth=1,
               label=f"pre-drift model, no learning: {summ['pre_drift_test_accuracy']:.3f}")
    if args.stream >= TARGET_BUDGET:
        ax.axvline(TARGET_BUDGET, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("post-onset feedback events received")
    ax.set_ylabel(f"accuracy on {args.test:,} held-out post-onset events")
    title = (f"Recovery after new_phrasing drift (strength {args.strength:g}), "
             f"median of {len(result['seeds'])} seed(s), thin: per seed")
    if args.quick:
        title = "QUICK SMOKE RUN (random tiny encoder, not MiniLM)\n" + title
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the run -------------------------------------------------------------------------------------


def run_recovery(args: argparse.Namespace) -> dict[str, Any]:
    """Measure, print the tables, write `args.out` (JSON) and the plot beside it; return the JSON."""
    import onnxruntime as ort
    import torch

    from flows.model_tasks import compile_encoder, fingerprint

    if args.encoder == "tiny" and not args.quick:
        console.print("[yellow]the tiny encoder is random: its figures are not MiniLM's (labelled as such)[/]")
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    torch.set_num_threads(args.threads)
    phases: defaultdict[str, float] = defaultdict(float)
    seeds = []
    with tempfile.TemporaryDirectory() as tmp, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console) as bar:
        t = time.perf_counter()
        with console.status("compile the encoder: ONNX export, fusion, INT8 (as the flow)"):
            compiled = compile_encoder.fn(args.encoder, "int8", fingerprint(args.encoder))
        phases["compile"] += time.perf_counter() - t
        for seed in args.seeds:
            t = time.perf_counter()
            data = prepare(seed, args, compiled, Path(tmp), bar)
            phases["embed_and_train"] += time.perf_counter() - t
            t = time.perf_counter()
            online = {name: run_online(data, seed, rate, warm, args, bar) for name, rate, warm in variant_names(args)}
            phases["feedback_service"] += time.perf_counter() - t
            t = time.perf_counter()
            retrained = run_retrained(data, seed, args, bar)
            ftrl_alone = run_ftrl_alone(data, seed, args)
            phases["baselines"] += time.perf_counter() - t
            pre_drift = {"pre_onset": accuracy(data.head, data.pre_eval), "test": accuracy(data.head, data.test),
                         "test_by_wording": by_wording(data.head, data.test)}
            seeds.append({"seed": seed, "pre_drift": pre_drift, "retrained": retrained, "online": online,
                          "ftrl_alone": ftrl_alone})
    hardware = (f"{cpu_name()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, torch {torch.__version__}, "
                f"CPython {platform.python_version()}")
    learner = FeedbackSettings(state_dir=Path(tempfile.gettempdir()), update_interval_s=args.interval)
    result: dict[str, Any] = {
        "quick": args.quick,
        "encoder": "tiny (QUICK SMOKE RUN: random tiny encoder, not MiniLM)" if args.encoder == "tiny"
                   else args.encoder,
        "hardware": hardware, "wall_s": time.perf_counter() - started, "phases_s": dict(phases),
        "load_average": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "target": {"share_of_retrained": TARGET_SHARE, "within_feedback_events": TARGET_BUDGET},
        "config": {**{k: v for k, v in vars(args).items() if k != "out"},
                   "partitions": PARTITIONS, "feedback_delay_s": list(DELAY_S), "feedback_share": 1.0,
                   "feedback_service": learner.model_dump(include={
                       "update_interval_s", "lateness_s", "idle_s", "holdout_share", "holdout_size", "min_holdout",
                       "gate_margin"})},
        "summary": summarize(seeds, args), "seeds": seeds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args, args.out.with_suffix(".png"))
    report(result, args)
    return result


def main() -> None:
    run_recovery(parse_args())


if __name__ == "__main__":
    main()
