"""Do the per-user stats the feedback service pushes to Feast help the model? Measured before wiring them in.

The feedback service pushes `corrections_count` and `last_corrected_intent` per user after every update
window. Read online by serving and hashed like the other user features (`u:last_corrected_intent=...`,
`u:corrections=<bucket>`), they could tell the head "this user's last correction was set_alarm". This
script replays a stream twice through the same online head, once with the stats among the user features
and once without, and compares the answers on the same requests (paired).

How each stream runs, in one process (the loop's arithmetic, not its services):
- the champion: the flow's head settings (`train_head`, `HeadConfig()`) on the base training rows with
  fp32 MiniLM embeddings and the bundle's hashed n-grams and static user fields. Base rows have no stats:
  stats come from served predictions, and training data had none. Both variants start from this head;
- requests in order, in update windows of `--window` requests (the demo's 2 s at 60 requests/s);
  each is answered by the head as it is at the window's start, with the user's stats as Feast holds them
  then (pushed after earlier windows, so one window late, as in the service);
- feedback (the demo's feedback model: who answers, which requests) is then learned, all of it, with
  `learn_in_batches` (the service's held-back gate is left out, for both variants alike), and each
  correction (feedback naming another intent than the one served) updates the user's stats;
- accuracy is served accuracy (the answer against the intent the user meant) over every request.

Streams:
- `demo`: the generated demo's traffic (`loopline demo` full size: 10,000 training events, 18,000
  replayed with new wordings from a quarter in; 2,000 users with per-user intent habits);
- `hwu64-uniform`: HWU64, a 10-shot champion, the rest of the training split replayed with made-up
  users drawn uniformly (as `loopline demo --data` does); then the test split, its users drawn alike;
- `hwu64-habits`: the same, but made-up users with habits: each has 4 favourite intents, and 80% of the
  rows of an intent go to users who favour it.

Run: `.venv/bin/python bench/user_stats.py [--hwu64 ../shared/data/hwu64] [--encoder minilm|tiny]`
Writes `user_stats.json` to `--out`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse
import json
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from machine import cpu_name  # bench/machine.py: bench scripts run as `python bench/<name>.py`
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from scipy.stats import binomtest

from models.features import USER_FIELDS, FeatureSpec
from models.ftrl import FTRLProximal
from models.train import HeadConfig, featurize, train_head

console = Console()
STATS_FIELDS = ("last_corrected_intent", "corrections")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hwu64", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/hwu64",
                        help="folder with HWU64's train.csv and test.csv; missing: the HWU64 streams are skipped")
    parser.add_argument("--encoder", choices=("minilm", "tiny"), default="minilm")
    parser.add_argument("--window", type=int, default=120, help="requests per update window")
    parser.add_argument("--demo-events", type=int, default=18_000, help="replayed requests of the demo stream")
    parser.add_argument("--demo-train", type=int, default=10_000, help="training events of the demo stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


@dataclass
class Stream:
    """A champion's training rows and the requests replayed after it, each with its user and feedback."""

    name: str
    train: pd.DataFrame  # text, label, user_id
    requests: pd.DataFrame  # text, user_id, label (reported), true_label (meant), answered
    test: pd.DataFrame | None = None  # text, true_label, user_id: scored after the replay
    users: pd.DataFrame | None = None  # static user fields, by user_id


@dataclass
class UserStats:
    """What the feedback service pushes per user: corrections so far and the intent of the last one."""

    count: dict[str, int] = field(default_factory=dict)
    last: dict[str, str] = field(default_factory=dict)

    def fields(self, user: str) -> dict[str, str]:
        n = self.count.get(user, 0)
        return {"last_corrected_intent": self.last[user], "corrections": _bucket(n)} if n else {}

    def correct(self, user: str, label: str) -> None:
        self.count[user] = self.count.get(user, 0) + 1
        self.last[user] = label


def _bucket(n: int) -> str:
    """Hashed as a category: 1, 2-3, 4-7, 8+."""
    return "1" if n == 1 else "2-3" if n < 4 else "4-7" if n < 8 else "8+"


@dataclass(frozen=True)
class Outcome:
    served: np.ndarray  # per request: answered the meant intent?
    test: np.ndarray | None
    seconds: float


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    encoder = _encoder(args.encoder)
    streams = [_demo_stream(args)]
    if (args.hwu64 / "train.csv").exists():
        streams += [_hwu64_stream(args, habits=False), _hwu64_stream(args, habits=True)]
    else:
        console.print(f"[yellow]{args.hwu64}/train.csv not found: HWU64 streams skipped")
    results = []
    for stream in streams:
        embed = _embedder(encoder, stream)
        without = _replay(stream, embed, args.window, with_stats=False)
        with_stats = _replay(stream, embed, args.window, with_stats=True)
        results.append(_compare(stream, without, with_stats))
    record = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
              "encoder": args.encoder, "window": args.window, "seed": args.seed, "streams": results}
    _print(record)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "user_stats.json").write_text(json.dumps(record, indent=2))
    return record


def _encoder(name: str) -> Any:
    from models.encoder import Encoder

    return Encoder.tiny_random() if name == "tiny" else Encoder.from_pretrained()


def _embedder(encoder: Any, stream: Stream) -> Mapping[str, np.ndarray]:
    """Embeddings of every distinct text of the stream, computed once for both variants."""
    texts = sorted(set(stream.train["text"]) | set(stream.requests["text"]) |
                   (set(stream.test["text"]) if stream.test is not None else set()))
    with _progress() as progress:
        task = progress.add_task(f"{stream.name}: embedding {len(texts):,} texts", total=len(texts))
        vectors = encoder.encode(texts, on_batch=lambda n: progress.advance(task, n))
    return dict(zip(texts, vectors, strict=True))


def _replay(stream: Stream, embed: Mapping[str, np.ndarray], window: int, with_stats: bool) -> Outcome:
    started = time.perf_counter()
    spec = FeatureSpec(user_fields=(*USER_FIELDS, *STATS_FIELDS) if with_stats else USER_FIELDS)
    static = _static(stream)
    train = stream.train
    head = train_head(_batch(train["text"], [static.get(u) for u in train["user_id"]], embed, spec),
                      list(train["label"]), sorted(set(train["label"])), HeadConfig())
    stats, requests = UserStats(), stream.requests
    served = np.zeros(len(requests), dtype=bool)
    label = f"{stream.name}: replay {'with' if with_stats else 'without'} user stats"
    with _progress() as progress:
        task = progress.add_task(label, total=len(requests))
        for start in range(0, len(requests), window):
            part = requests.iloc[start:start + window]
            users = [_user(static, stats, u, with_stats) for u in part["user_id"]]
            answers = _answer(head, _batch(part["text"], users, embed, spec))
            served[start:start + len(part)] = answers == part["true_label"].to_numpy()
            learn = part["answered"].to_numpy() & part["label"].isin(head.class_index).to_numpy()
            if learn.any():
                batch = _batch(part["text"][learn], [u for u, k in zip(users, learn, strict=True) if k], embed, spec)
                head.learn_in_batches(batch, np.array([head.class_index[v] for v in part["label"][learn]]), 32)
            for user, reported, answer in zip(part["user_id"][learn], part["label"][learn], answers[learn],
                                              strict=True):
                if reported != answer:
                    stats.correct(user, reported)
            progress.advance(task, len(part))
    test = None
    if stream.test is not None:
        users = [_user(static, stats, u, with_stats) for u in stream.test["user_id"]]
        test = _answer(head, _batch(stream.test["text"], users, embed, spec)) == stream.test["true_label"].to_numpy()
    return Outcome(served, test, time.perf_counter() - started)


def _static(stream: Stream) -> dict[str, dict[str, Any]]:
    if stream.users is None:
        return {}
    return stream.users.set_index("user_id")[list(USER_FIELDS)].to_dict(orient="index")


def _user(static: Mapping[str, dict[str, Any]], stats: UserStats, user: str, with_stats: bool) -> dict[str, Any]:
    fields = dict(static.get(user) or {})
    if with_stats:
        fields.update(stats.fields(user))
    return fields


def _batch(texts: pd.Series, users: list[dict[str, Any] | None], embed: Mapping[str, np.ndarray],
           spec: FeatureSpec) -> Any:
    texts = list(texts)
    return featurize(texts, np.stack([embed[t] for t in texts]), spec, users)


def _answer(head: FTRLProximal, batch: Any) -> np.ndarray:
    return np.array(head.classes)[head.predict_proba_many(batch).argmax(axis=1)]


def _compare(stream: Stream, without: Outcome, with_stats: Outcome) -> dict[str, Any]:
    row: dict[str, Any] = {"stream": stream.name, "train_rows": len(stream.train), "requests": len(stream.requests),
                           "feedback": int(stream.requests["answered"].sum()),
                           "served": _paired(without.served, with_stats.served),
                           "seconds": {"without": round(without.seconds, 1), "with": round(with_stats.seconds, 1)}}
    if "after_onset" in stream.requests and stream.requests["after_onset"].any():
        after = stream.requests["after_onset"].to_numpy()
        row["served_after_onset"] = _paired(without.served[after], with_stats.served[after])
    if without.test is not None and with_stats.test is not None:
        row["test"] = _paired(without.test, with_stats.test)
    return row


def _paired(without: np.ndarray, with_stats: np.ndarray) -> dict[str, Any]:
    """Accuracies and McNemar's exact test on the requests where the two differ."""
    gained = int((with_stats & ~without).sum())
    lost = int((without & ~with_stats).sum())
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"n": len(without), "without": float(without.mean()), "with": float(with_stats.mean()),
            "points": 100 * float(with_stats.mean() - without.mean()), "gained": gained, "lost": lost,
            "mcnemar_p": float(p)}


def _demo_stream(args: argparse.Namespace) -> Stream:
    from loopline.demo.plan import N_USERS, DemoPlan
    from models.traffic import TrafficConfig, generate

    # The demo's own plan (drift onset, strength, feedback model), with the number of requests given here.
    plan = replace(DemoPlan.make("full", encoder=args.encoder, seed=args.seed), events=args.demo_events)
    trained = generate(TrafficConfig(n_events=args.demo_train, n_users=N_USERS, seed=args.seed))
    replay = generate(plan.traffic()).events
    answered, _ = plan.feedback.plan(replay["user_id"].tolist(), plan.seed)
    requests = replay[["text", "user_id", "label", "true_label", "after_onset"]].assign(answered=answered)
    return Stream("demo", trained.events[["text", "label", "user_id"]], requests.reset_index(drop=True),
                  users=trained.users)


def _hwu64_stream(args: argparse.Namespace, habits: bool) -> Stream:
    from loopline.demo.your_data import replay_requests
    from models.data import load_dataset
    from models.split import SplitConfig, prepare

    source = str(args.hwu64 / "train.csv")
    frame = load_dataset(source)
    train = prepare(frame, SplitConfig(seed=args.seed, shots=10), source=source).train[["text", "label"]]
    rest = replay_requests(source, 10, args.seed)
    test = load_dataset(str(args.hwu64 / "test.csv"))[["text", "label"]].rename(columns={"label": "true_label"})
    rng = np.random.default_rng([args.seed, 17])
    labels = sorted(set(frame["label"]))
    if habits:
        assign = _habit_users(labels, rng)
        rest = rest.assign(user_id=[assign(label) for label in rest["label"]])
        test = test.assign(user_id=[assign(label) for label in test["true_label"]])
    else:
        test = test.assign(user_id=[f"u{i:05d}" for i in rng.integers(0, 2_000, len(test))])
    from loopline.demo.plan import FeedbackModel

    answered, _ = FeedbackModel().plan(rest["user_id"].tolist(), args.seed)
    name = "hwu64-habits" if habits else "hwu64-uniform"
    return Stream(name, train.assign(user_id=""), rest.assign(answered=answered).reset_index(drop=True), test)


def _habit_users(labels: list[str], rng: np.random.Generator, n_users: int = 2_000, favourites: int = 4,
                 loyal: float = 0.8) -> Any:
    """Made-up users with 4 favourite intents each; 80% of an intent's rows go to a user who favours it."""
    fans: dict[str, list[str]] = {label: [] for label in labels}
    for i in range(n_users):
        for label in rng.choice(labels, size=favourites, replace=False):
            fans[str(label)].append(f"u{i:05d}")

    def assign(label: str) -> str:
        if fans.get(label) and rng.random() < loyal:
            return str(rng.choice(fans[label]))
        return f"u{int(rng.integers(n_users)):05d}"
    return assign


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _print(record: dict[str, Any]) -> None:
    table = Table(title=f"Per-user stats as user features: served accuracy without / with ({record['encoder']}, "
                        f"windows of {record['window']} requests)")
    for column in ("stream", "rows scored", "without", "with", "points", "gained / lost", "McNemar p"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for stream in record["streams"]:
        for part in ("served", "served_after_onset", "test"):
            if part not in stream:
                continue
            r = stream[part]
            table.add_row(f"{stream['stream']} {part.replace('_', ' ')}", f"{r['n']:,}", f"{r['without']:.2%}",
                          f"{r['with']:.2%}", f"{r['points']:+.2f}", f"{r['gained']} / {r['lost']}",
                          f"{r['mcnemar_p']:.3g}")
    console.print(table)
    m = record["machine"]
    console.print(f"{m['cpu']}, {m['cores']} cores, Python {m['python']}")


if __name__ == "__main__":
    main()
