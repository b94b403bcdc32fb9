"""Freshness under load: seconds from a feedback event being produced to serving answering with what learned it.

The whole loop runs as real processes, started here: the embedded Tansu broker, the
MLflow server (SQLite), a Feast store in the state folder, `loopline serve` (follows
`model-updates`) and `loopline feedback` (joins, learns each event-time window, gates,
publishes deltas). The model is the deployable bundle bench/serving.py builds (MiniLM
fused + INT8, FTRL head), registered as `champion` in the MLflow server.

Load, from two processes of their own (the measuring loop is a third):

- feedback producer: serving answers about 250 requests/s on these 2 cores, so
  thousands of feedback events per second cannot come from predictions made over
  HTTP. The prediction events are computed ahead, as serving computes them
  (`models.predict.Predictor` on the bundle: hashed features, the INT8 embedding,
  probabilities; Feast online user features; built like `Service.answer`), for a pool
  of generated requests (another seed than training, same users), and produced to
  `predictions` at the target rate with fresh ids, each followed `--feedback-delay`
  later by its FeedbackEvent on `feedback` (label: what the generated user reported).
  confluent-kafka with the murmur2_random partitioner, as serving's prediction log, so
  both stay co-partitioned. Every `--sample-every`-th feedback event produced during
  the measured period is a sample.
- predict traffic: `--predict-rate` POST /v1/predict per second on one keep-alive
  connection (pool texts, known user ids, so serving reads Feast); every answer gets
  feedback too (all of those are samples) and its `model_version` is noted.

Measured: for each sample not held back (`OnlineLearner.held_back`, the service's own
rule), t0 is its feedback record's timestamp (CreateTime, set when it was produced; its
prediction was produced earlier, so the join keys on it). The delta that learned it is
the one on `model-updates` whose `window_end` closes the aligned window [k*I, (k+1)*I)
holding t0; every later version contains it too. Serving answering with it is the
first time this process (GET /v1/models/current every `--poll-ms`) or the predict
traffic saw that version or a later one. Freshness = that time - t0: waiting for the
window to end (I/2 on average), the watermark's lateness, consuming, learning, the
gate, publishing, serving applying the delta, and the poll period. A sample whose
window was not published (rejected by the gate) was never learned and is counted apart.
A record the service joins after its window was released is learned in a later window
("late" in the join store's counts, read from its last checkpoint); for those the
mapping above gives too small a freshness, so their count is reported next to it.

Also reported for the measured period: feedback events/s produced and consumed by the
service, examples/s it scored, predict req/s, windows by decision, dead letters by
reason, consumer lag (records produced minus records the service counted, every
second) and the CPU of every process. Each (rate, interval, round) gets a fresh broker,
serving and feedback service, so no run sees another's topics. After the load stops
the run waits (`--drain`) until the service has consumed everything, so samples stuck
in a backlog get their true, long freshness instead of being dropped. Percentiles
of all rounds' samples pooled (rates and lags: medians over rounds). Every feedback
event produced is accounted for in the examples table or the dead letters (`account`).

Before the live runs, `profile_service` feeds the same pool to a FeedbackService in
this process (no broker: `process`, `tick` and checkpoints as its loop calls them) at
each rate and interval with a CPU timer on each stage, which says where its time goes
and how many feedback events per second one core sustains (`--skip-profile` skips it).

`--skip-recovery` skips the last phase, the accuracy-recovery curve after
`new_phrasing` onset against a model retrained from scratch, which bench/recovery.py
(`run_recovery`) measures; it runs only if that file is there.

Run: `.venv/bin/python bench/freshness.py [--rates 5000 1000] [--intervals 1 5] [--profile-data FILE] [--quick]`
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
for _var in THREAD_VARS:
    os.environ.setdefault(_var, "1")  # every process here gets one BLAS/numba thread: 2 cores are shared

import argparse
import bisect
import contextlib
import functools
import gc
import hashlib
import heapq
import http.client
import json
import logging
import math
import multiprocessing as mp
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from workspace import workspace  # bench/workspace.py

from infra.broker import start_broker
from infra.mlflow_server import start_mlflow
from infra.process import HOST, ManagedProcess, free_port
from models.bundle import HEAD_FILE
from models.ftrl import FTRLProximal
from models.traffic import TrafficConfig, generate
from services.common.events import (
    FEEDBACK,
    MODEL_UPDATES,
    PREDICTION_SCHEMA_VERSION,
    PREDICTIONS,
    SCHEMA_VERSION,
    FeedbackEvent,
    ModelUpdate,
    PredictionEvent,
)
from services.feedback.learner import LearnSettings, OnlineLearner

console = Console(width=shutil.get_terminal_size((200, 40)).columns)  # wide tables unwrapped in logs

START_TIMEOUT = 180.0  # seconds for serving / the feedback service to import, download and load
TARGET_INTERVAL, TARGET_P95_S = 1.0, 2.0  # p95 freshness within 2 s at update_interval=1
# Scheduled registry versions stay on, as in production, but every 60 s of event time (the default is 300 s):
# a 60-s measured period then holds at least one registration, the pause it may cause included.
REGISTRY_INTERVAL_S = 60
CHAMPION = 1  # the bundle is the first version of a fresh registered model
PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all", "enable.idempotence": False,
    # Tansu's CPU goes with the request rate: at 1,000 events/s it spent 0.59 cores with linger 5 ms and
    # 0.18 with 50 ms (measured here). The linger is part of the measured freshness (t0 is the produce call).
    "linger.ms": 50, "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 2 * 1024 * 1024,
    # Same key -> same partition as serving's prediction log and kafka-python: predictions and
    # feedback of one prediction id stay co-partitioned, which the service's local join relies on.
    "partitioner": "murmur2_random",
}
SENTINEL_EVENT, SENTINEL_PREDICTION = "e" * 32, "p" * 32
GC_STAGE = "of all the above: Python's garbage collector"


# -- the traffic pool: prediction events computed ahead, as serving computes them -------------


@dataclass
class Pool:
    """Per generated request: its text, user, reported label, and its PredictionEvent minus the head."""

    texts: list[str]
    user_ids: list[str]
    labels: list[str]
    tails: list[bytes]  # the event's JSON after `"prediction_id":"..."`: model version, user, features, ...

    def prediction(self, row: int, event_id: str, t: float, prediction_id: str, cycle: int = 0) -> bytes:
        """`cycle`: which pass through the pool this is. Each pass after the first comes from other users
        (`u00091` becomes `u00091~3`), as live traffic would: the same user sending the same request, and
        its label noise, again every `len(pool)` events is what per-user trust rightly takes for poisoning."""
        tail = self.tails[row]
        if cycle:
            user = self.user_ids[row]
            tail = tail.replace(f'"user_id":"{user}"'.encode(), f'"user_id":"{user}~{cycle}"'.encode(), 1)
        return _event_head(PREDICTION_SCHEMA_VERSION, event_id, t, prediction_id) + tail

    def feedback(self, row: int, event_id: str, t: float, prediction_id: str) -> bytes:
        return _event_head(SCHEMA_VERSION, event_id, t, prediction_id) + self._label_tails[row]

    def __post_init__(self) -> None:
        self._label_tails = [f',"label":"{label}","source":"bench-freshness"}}'.encode() for label in self.labels]

    def save(self, path: Path) -> None:
        raw = b"".join(self.tails)
        offsets = np.cumsum([0] + [len(t) for t in self.tails]).astype(np.int64)
        np.savez(path, tails=np.frombuffer(raw, dtype=np.uint8), offsets=offsets,
                 meta=np.frombuffer(json.dumps([self.texts, self.user_ids, self.labels]).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path: Path) -> Pool:
        with np.load(path, allow_pickle=False) as f:
            texts, user_ids, labels = json.loads(f["meta"].tobytes())
            raw, offsets = f["tails"].tobytes(), f["offsets"]
        return cls(texts, user_ids, labels, [raw[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)])


def _event_head(schema_version: int, event_id: str, t: float, prediction_id: str) -> bytes:
    return (f'{{"schema_version":{schema_version},"event_id":"{event_id}","time":{t!r},'
            f'"prediction_id":"{prediction_id}"').encode()


def build_pool(bundle: Path, feast_dir: Path, size: int, seed: int) -> Pool:
    """Prediction events for `size` generated requests as `Service.answer` builds them, with the user
    features serving reads from the Feast online store."""
    from services.common.features import online_user_features, open_store, user_fields

    traffic = generate(TrafficConfig(n_events=size, seed=seed + 2, user_seed=seed)).events
    texts, user_ids = list(traffic["text"]), [str(u) for u in traffic["user_id"]]
    unique = sorted(set(user_ids))
    rows = online_user_features(open_store(feast_dir, apply=False), unique)
    online = dict(zip(unique, map(user_fields, rows), strict=True))
    return pool_of(bundle, texts, list(traffic["label"]), user_ids, [online[u] for u in user_ids])


def pool_of(bundle: Path, texts: list[str], labels: list[str], user_ids: list[str],
            users: list[dict[str, Any] | None]) -> Pool:
    """The prediction events serving would log for these requests (`users`: their online features)."""
    from models.predict import Predictor
    from services.common.events import LoggedFeatures

    size = len(texts)
    predictor = Predictor(bundle, threads=os.cpu_count() or 1)
    head = _event_head(PREDICTION_SCHEMA_VERSION, SENTINEL_EVENT, 0.0, SENTINEL_PREDICTION)
    tails: list[bytes] = []
    with progress_bar() as bar:
        task = bar.add_task("prediction events, as serving makes them", total=size, status="")
        for first in range(0, size, 64):
            chunk = range(first, min(first + 64, size))
            batch = predictor.features([texts[i] for i in chunk], [users[i] for i in chunk])
            proba = predictor.head.predict_proba_many(batch)
            csr = batch.sparse.tocsr()
            for j, i in enumerate(chunk):
                user = users[i]
                event = PredictionEvent(
                    event_id=SENTINEL_EVENT, time=0.0, prediction_id=SENTINEL_PREDICTION, model_version=str(CHAMPION),
                    user_id=user_ids[i], user=None if user is None else {k: str(v) for k, v in user.items()},
                    text=texts[i], intent=predictor.classes[int(proba[j].argmax())],
                    features=LoggedFeatures.of(csr.indices[csr.indptr[j]:csr.indptr[j + 1]],
                                               csr.data[csr.indptr[j]:csr.indptr[j + 1]],
                                               None if batch.dense is None else batch.dense[j]),
                    probabilities=dict(zip(predictor.classes, proba[j].tolist(), strict=True)))
                dumped = event.model_dump_json().encode()
                if not dumped.startswith(head):  # the schema's field order changed: fail loudly, not subtly
                    raise RuntimeError(f"PredictionEvent JSON no longer starts with {head!r}")
                tails.append(dumped[len(head):])
            bar.advance(task, len(chunk))
    pool = Pool(texts, user_ids, labels, tails)
    # What the service will parse must be what the schemas accept.
    PredictionEvent.model_validate_json(pool.prediction(0, uuid.uuid4().hex, time.time(), uuid.uuid4().hex))
    FeedbackEvent.model_validate_json(pool.feedback(0, uuid.uuid4().hex, time.time(), uuid.uuid4().hex))
    return pool


# -- load processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """What a load process does and when (wall clock): produce from `start` to `until`, sample in
    [sample_from, sample_to)."""

    broker: str
    pool: str
    rate: float
    feedback_delay: float
    sample_every: int
    start: float
    sample_from: float
    sample_to: float
    until: float
    out: str
    serving_url: str = ""


class Counters:
    """Progress of the load processes, readable by the measuring loop while they run."""

    def __init__(self, ctx: Any) -> None:
        self.predictions: Synchronized[int] = ctx.Value("q", 0, lock=False)
        self.feedback: Synchronized[int] = ctx.Value("q", 0, lock=False)
        self.requests: Synchronized[int] = ctx.Value("q", 0, lock=False)
        self.served_feedback: Synchronized[int] = ctx.Value("q", 0, lock=False)


def new_id() -> str:
    """A random 32-hex-digit id, like uuid4().hex at a third of its cost."""
    return os.urandom(16).hex()


def _producer(broker: str, delivered: Callable[[Any, Any], None]) -> Any:
    from confluent_kafka import Producer

    return Producer({**PRODUCER_CONFIG, "bootstrap.servers": broker, "on_delivery": delivered})


def _produce(producer: Any, topic: str, key: str, value: bytes, ts_ms: int) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key.encode(), timestamp=ts_ms)
            return
        except BufferError:  # librdkafka's queue is full: the broker is behind; wait, never drop
            producer.poll(0.05)


def run_feedback_load(plan: LoadPlan, counters: Counters) -> None:
    """Predictions at `plan.rate`/s, each followed `feedback_delay` later by its feedback."""
    pool = Pool.load(Path(plan.pool))
    failed: Counter[str] = Counter()
    acked: dict[str, float] = {}  # sampled feedback event id -> when the broker acknowledged it
    sampled: dict[bytes, str] = {}  # key -> event id, for the delivery callback

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed[msg.topic() or "?"] += 1
        elif msg.topic() == FEEDBACK and (eid := sampled.pop(msg.key(), None)) is not None:
            acked[eid] = time.time()

    producer = _producer(plan.broker, delivered)
    pending: deque[tuple[float, str, int]] = deque()  # (feedback due, prediction id, pool row)
    samples: list[tuple[str, int, int]] = []  # event id, feedback record ts (ms), how many were produced before
    offset = int.from_bytes(os.urandom(4), "little")  # where in the pool this run starts
    made = fed = 0
    time.sleep(max(0.0, plan.start - time.time()))
    while (now := time.time()) < plan.until:
        due = int((now - plan.start) * plan.rate)
        while made < due:
            pid, eid, t = new_id(), new_id(), time.time()
            cycle, row = divmod(offset + made, len(pool.tails))
            _produce(producer, PREDICTIONS, pid, pool.prediction(row, eid, t, pid, cycle), int(t * 1000))
            pending.append((t + plan.feedback_delay, pid, row))
            made += 1
        now = time.time()
        while pending and pending[0][0] <= now:
            _, pid, row = pending.popleft()
            eid, t = new_id(), time.time()
            ts_ms = int(t * 1000)
            if fed % plan.sample_every == 0 and plan.sample_from <= t < plan.sample_to:
                samples.append((eid, ts_ms, fed))
                sampled[pid.encode()] = eid
            _produce(producer, FEEDBACK, pid, pool.feedback(row, eid, t, pid), ts_ms)
            fed += 1
        counters.predictions.value, counters.feedback.value = made, fed
        producer.poll(0)
        time.sleep(0.002)
    left = producer.flush(60)
    Path(plan.out).write_text(json.dumps({"samples": samples, "acked": acked, "failed": dict(failed),
                                          "unflushed": left, "predictions": made, "feedback": fed}))


def run_predict_load(plan: LoadPlan, counters: Counters) -> None:
    """POST /v1/predict at `plan.rate`/s on one keep-alive connection; feedback for every answer."""
    pool = Pool.load(Path(plan.pool))
    host, port = plan.serving_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    failed: Counter[str] = Counter()
    producer = _producer(plan.broker, lambda err, msg: failed.update(["feedback_send"] if err else []))
    seen: dict[str, float] = {}  # model version -> first answer with it (when received)
    latencies: list[float] = []
    pending: deque[tuple[float, str, int]] = deque()
    samples: list[tuple[str, int, int]] = []
    sent = fed = 0
    time.sleep(max(0.0, plan.start - time.time()))
    while (now := time.time()) < plan.until:
        if sent < int((now - plan.start) * plan.rate):
            row = (sent * 7919) % len(pool.texts)  # a stride through the pool, away from the producer's rows
            body = json.dumps({"text": pool.texts[row], "user_id": pool.user_ids[row]})
            sent += 1
            t_sent = time.time()
            try:
                conn.request("POST", "/v1/predict", body, {"content-type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                failed[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                continue
            t_got = time.time()
            if response.status != 200:
                failed[f"HTTP {response.status}"] += 1
                continue
            answer = json.loads(data)
            latencies.append(t_got - t_sent)
            seen.setdefault(answer["model_version"], t_got)
            pending.append((t_got + plan.feedback_delay, answer["prediction_id"], row))
        now = time.time()
        while pending and pending[0][0] <= now:
            _, pid, row = pending.popleft()
            eid, t = uuid.uuid4().hex, time.time()
            ts_ms = int(t * 1000)
            if plan.sample_from <= t < plan.sample_to:
                samples.append((eid, ts_ms, fed))
            _produce(producer, FEEDBACK, pid, pool.feedback(row, eid, t, pid), ts_ms)
            fed += 1
        counters.requests.value, counters.served_feedback.value = sent, fed
        producer.poll(0)
        wake = min(plan.start + (sent + 1) / plan.rate, pending[0][0] if pending else math.inf)
        time.sleep(min(max(0.0, wake - time.time()), 0.01))
    producer.flush(60)
    Path(plan.out).write_text(json.dumps({"samples": samples, "seen": seen, "failed": dict(failed),
                                          "latencies": latencies, "requests": sent, "feedback": fed}))


# -- the stack ----------------------------------------------------------------------------


@dataclass
class Shared:
    """What every run uses: the MLflow server with the champion, the Feast store, the pool."""

    work: Path
    bundle: Path
    state: Path  # serving's state folder: holds the Feast store
    pool: Path
    mlflow: ManagedProcess | None = None
    model_name: str = ""


def prepare(work: Path, bundle: Path, args: argparse.Namespace) -> Shared:
    """The Feast store (the generated users, materialized) and the pool of prediction events."""
    from services.common.features import materialize, open_store

    state = work / "state"
    with console.status("materializing the Feast store"):
        users = generate(TrafficConfig(n_events=args.events, seed=args.seed)).users
        materialize(open_store(state / "feast", users), datetime.now(UTC), full=True)
    schema = json.dumps(PredictionEvent.model_json_schema(), sort_keys=True)  # a schema change makes a new pool
    key = hashlib.sha256(f"{(bundle / HEAD_FILE).stat().st_mtime}:{args.pool}:{args.seed}:{schema}".encode()
                         ).hexdigest()
    pool_path = work / f"pool-{key[:12]}.npz"
    if not pool_path.exists():
        build_pool(bundle, state / "feast", args.pool, args.seed).save(pool_path)
    return Shared(work, bundle, state, pool_path)


def prepare_data_file(work: Path, base: Shared, data: str, seed: int) -> Shared:
    """The in-process profile on a label set of your own: a bundle with the base bundle's INT8 encoder and
    a head trained (torch FP32 embeddings, as bench/serving.py trains its head) on `data` (text,label), and
    a pool of prediction events for its rows, shuffled, one made-up user per 5 rows (no user features)."""
    from models.bundle import ENCODER_FILE, TOKENIZER_DIR, verify_bundle, write_manifest
    from models.data import load_dataset
    from models.encoder import Encoder
    from models.features import FeatureSpec
    from models.train import HeadConfig, featurize, train_head

    frame = load_dataset(data).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    texts, labels = list(frame["text"].astype(str)), list(frame["label"].astype(str))
    classes = sorted(set(labels))
    folder = work / f"bundle-{Path(data).stem}-{len(classes)}-intents"
    pool_path = work / f"pool-{Path(data).stem}-{len(classes)}-intents.npz"
    if not (folder / HEAD_FILE).exists():
        with console.status(f"a head for {data}: {len(texts):,} rows, {len(classes)} intents"):
            encoder = Encoder.from_pretrained()
            head = train_head(featurize(texts, encoder.encode(texts), FeatureSpec()), labels, classes, HeadConfig())
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.copy2(base.bundle / ENCODER_FILE, folder / ENCODER_FILE)
        shutil.copytree(base.bundle / TOKENIZER_DIR, folder / TOKENIZER_DIR)
        head.save(folder / HEAD_FILE)
        write_manifest(folder, FeatureSpec(), classes, encoder=verify_bundle(base.bundle).encoder,
                       lineage={"source": "bench/freshness.py --profile-data", "data": data})
        pool_path.unlink(missing_ok=True)
    if not pool_path.exists():
        user_ids = [f"d{i // 5:05d}" for i in range(len(texts))]
        pool_of(folder, texts, labels, user_ids, [None] * len(texts)).save(pool_path)
    return Shared(work, folder, base.state, pool_path)


def start_registry(shared: Shared, stack: contextlib.ExitStack) -> None:
    """The MLflow server the runs share (each run registers its own model in it: `register_champion`)."""
    with console.status("starting the MLflow server (SQLite; ~25 s)"):
        shared.mlflow = start_mlflow(shared.work / "mlflow-state", free_port())
        stack.callback(shared.mlflow.stop)


def register_champion(shared: Shared) -> None:
    """A fresh model in the registry, the bundle its version 1 and champion: every run starts where the
    precomputed prediction events (made by version 1) are learnable, whatever earlier runs registered."""
    import mlflow

    from services.common.registry import Registry
    from services.common.settings import CommonSettings

    assert shared.mlflow is not None
    shared.model_name = f"loopline-freshness-{uuid.uuid4().hex[:8]}"
    settings = CommonSettings(state_dir=shared.state, mlflow_tracking_uri=shared.mlflow.url,
                              model_name=shared.model_name)
    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id()):
        version = registry.register(shared.bundle, {"source": "bench/freshness.py"}).version
    if version != CHAMPION:
        raise RuntimeError(f"expected version {CHAMPION} of a fresh model, got {version}")
    registry.promote(version, "bench/freshness.py")


def loopline_env(**loopline: str) -> dict[str, str]:
    """This environment without anyone's LOOPLINE_* settings, plus ours and one BLAS/numba thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
    env.update(dict.fromkeys(THREAD_VARS, "1"))
    env.update({f"LOOPLINE_{key.upper()}": value for key, value in loopline.items()})
    return env


def bin_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("loopline")), *args]


def http_get(url: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def metric_values(url: str) -> dict[str, float]:
    """Prometheus text from /metrics as {'name{labels}': value} (as bench/serving.py reads it)."""
    lines = http_get(url, "/metrics")[1].decode().splitlines()
    pairs = (line.rpartition(" ") for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, _, value in pairs}


def start_serving(shared: Shared, run_dir: Path, broker: str) -> ManagedProcess:
    assert shared.mlflow is not None
    port = free_port()
    env = loopline_env(state_dir=str(shared.state), mlflow_tracking_uri=shared.mlflow.url,
                       kafka_bootstrap_servers=broker, model_name=shared.model_name, port=str(port))
    proc = ManagedProcess("serving", bin_command("serve"), run_dir, env=env, url=f"http://{HOST}:{port}")

    def ready() -> bool:
        status, body = http_get(proc.url, "/readyz", 2)
        return status == 200 and json.loads(body).get("feature_store") == "ok"

    return proc.start_healthy(ready, START_TIMEOUT)


def start_feedback(shared: Shared, run_dir: Path, broker: str, interval: float, extra: dict[str, str]
                   ) -> ManagedProcess:
    assert shared.mlflow is not None
    port = free_port()
    env = loopline_env(state_dir=str(run_dir / "feedback-state"), mlflow_tracking_uri=shared.mlflow.url,
                       kafka_bootstrap_servers=broker, model_name=shared.model_name,
                       group_id=f"freshness-{uuid.uuid4().hex[:8]}", update_interval_s=f"{interval:g}",
                       metrics_port=str(port))
    env.update(extra)
    proc = ManagedProcess("feedback", bin_command("feedback"), run_dir, env=env, url=f"http://{HOST}:{port}")
    return proc.start_healthy(lambda: http_get(proc.url, "/metrics", 2)[0] == 200, START_TIMEOUT)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), to tell other load from ours."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_consuming(shared: Shared, broker: str, feedback: ManagedProcess, timeout: float = 120.0) -> None:
    """One prediction and its feedback, then wait until the service has counted both: it has joined its
    group and reads from the partitions, so the load does not start as a backlog."""
    pool = Pool.load(shared.pool)
    producer = _producer(broker, lambda err, msg: None)
    pid, t = uuid.uuid4().hex, time.time()
    _produce(producer, PREDICTIONS, pid, pool.prediction(0, uuid.uuid4().hex, t, pid), int(t * 1000))
    _produce(producer, FEEDBACK, pid, pool.feedback(0, uuid.uuid4().hex, t, pid), int(t * 1000))
    producer.flush(10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = metric_values(feedback.url)
        if all(metric(values, "loopline_feedback_records_total", topic=t) >= 1 for t in (PREDICTIONS, FEEDBACK)):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the feedback service consumed nothing within {timeout:.0f} s:\n{feedback.log_tail()}")


def pid_cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def read_updates(broker: str, model: str) -> list[dict[str, Any]]:
    """Every event on `model-updates`, in topic order, with its record time."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"freshness-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "fetch.message.max.bytes": 64 * 1024 * 1024})
    try:
        partitions = sorted(consumer.list_topics(MODEL_UPDATES, timeout=10).topics[MODEL_UPDATES].partitions)
        consumer.assign([TopicPartition(MODEL_UPDATES, p, OFFSET_BEGINNING) for p in partitions])
        updates: list[dict[str, Any]] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + 30
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                at_end.add(message.partition() or 0)
                continue
            update = ModelUpdate.model_validate_json(message.value() or b"")
            if update.model == model:
                updates.append({"version": update.version, "kind": update.kind, "sequence": update.sequence,
                                "window_end": update.window_end, "ts": message.timestamp()[1] / 1000,
                                "offset": message.offset(), "partition": message.partition()})
        return sorted(updates, key=lambda u: (u["partition"], u["offset"]))
    finally:
        consumer.close()


def join_counts(state: Path) -> dict[str, int]:
    """The join store's counts (joined, late, ...) in the service's newest good checkpoint."""
    import io

    from services.feedback.checkpoint import CheckpointStore
    from services.feedback.service import JOIN

    checkpoint = CheckpointStore(state / "feedback" / "checkpoints").restore().checkpoint
    if checkpoint is None:
        return {}
    # Only the metadata: rebuilding every stored prediction (JoinStore.from_bytes) takes minutes after a backlog.
    with np.load(io.BytesIO(checkpoint.files[JOIN]), allow_pickle=False) as f:
        meta = json.loads(f["meta"].tobytes())
    return {k: int(v) for k, v in meta["counts"].items()} | {"checkpoint": checkpoint.number}


# -- where the service's time goes: an in-process profile ---------------------------------


class StageTimer:
    """CPU time (this thread) spent inside chosen functions, patched in place and restored on exit."""

    def __init__(self) -> None:
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._patched: list[tuple[Any, str, Any]] = []
        self._gc_started = 0.0

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # renamed since: leave it out rather than fail
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu[label] += time.thread_time() - start
                self.calls[label] += 1

        setattr(owner, name, timed)
        self._patched.append((owner, name, original))

    def _gc(self, phase: str, _: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self.cpu[GC_STAGE] += time.thread_time() - self._gc_started
            self.calls[GC_STAGE] += 1

    def __enter__(self) -> StageTimer:
        gc.callbacks.append(self._gc)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._gc)
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)


def synthetic_records(pool: Pool, rate: float, seconds: float, delay: float, t0: float) -> Iterator[Any]:
    """Prediction and feedback records in time order, partitioned by key as the producer does."""
    from services.feedback.intake import Record

    n = int(rate * seconds)
    ids = [(uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex) for _ in range(n)]
    offsets: Counter[tuple[str, int]] = Counter()

    def stream(topic: str, lag: float) -> Iterator[tuple[float, int, str]]:
        return ((t0 + i / rate + lag, i, topic) for i in range(n))

    for ts, i, topic in heapq.merge(stream(PREDICTIONS, 0.0), stream(FEEDBACK, delay)):
        pid, pred_event, fb_event = ids[i]
        cycle, row = divmod(i, len(pool.tails))
        partition = zlib.crc32(pid.encode()) % 4
        offset = offsets[topic, partition]
        offsets[topic, partition] += 1
        value = (pool.prediction(row, pred_event, ts, pid, cycle) if topic == PREDICTIONS else
                 pool.feedback(row, fb_event, ts, pid))
        yield Record(topic, partition, offset, pid, value, ts)


def profile_service(shared: Shared, rate: float, interval: float, args: argparse.Namespace) -> dict[str, Any]:
    """`args.profile_seconds` of event time at `rate` through a FeedbackService in this process, as its
    loop drives it (the records of up to 1,000 or 0.1 s as one batch, then a tick; a checkpoint every
    checkpoint interval of event time), the clock keeping up with event time; CPU per stage. Not included:
    the Kafka consumer (librdkafka threads, message objects) and the observer thread (drift)."""
    from models.serving_head import ServingHead
    from services.feedback import decode
    from services.feedback.checkpoint import CheckpointStore
    from services.feedback.join import JoinStore
    from services.feedback.service import FeedbackService, tune_gc
    from services.feedback.settings import FeedbackSettings

    undo = "  undo point / restore / delta"
    in_process = [(decode, "decode_predictions", "decode predictions (a batch at a time)"),
                  (decode, "decode_feedback", "decode feedback"),
                  (JoinStore, "add_prediction", "join: add"), (JoinStore, "add_feedback", "join: add")]
    in_tick = [(JoinStore, "first_key_time", "join: first_key_time (scans every joined example, every tick)"),
               (JoinStore, "release", "join: release (sorts the joined examples)"),
               (JoinStore, "expire", "join: expire"), (OnlineLearner, "learn_window", "learn_window (total)")]
    in_window = [(OnlineLearner, "batch", "  batch(): the window's, and the whole held-back set's again"),
                 (FTRLProximal, "predict_proba_many", "  FTRL predict: window (progressive), candidate on held-back"),
                 (FTRLProximal, "learn_in_batches", "  FTRL learn_in_batches (mini-batches of 32)"),
                 (ServingHead, "predict_proba_many", "  live head predict on held-back"),
                 (ServingHead, "apply", "  live head apply(delta): copies all weights"),
                 (FTRLProximal, "state_of", undo), (FTRLProximal, "restore", undo), (FTRLProximal, "delta", undo)]
    in_checkpoint = [(FeedbackService, "checkpoint", "checkpoint: serialize"),
                     (CheckpointStore, "save", "checkpoint: write + fsync")]
    pool = Pool.load(shared.pool)
    overrides = {k.removeprefix("LOOPLINE_").lower(): v for k, v in args.service_env}
    overrides = {k: v for k, v in overrides.items() if k in FeedbackSettings.model_fields}

    def drive(seconds: float, timer: StageTimer | None) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            settings = FeedbackSettings(state_dir=Path(tmp), update_interval_s=interval,
                                        kafka_bootstrap_servers=None, **overrides)
            service = FeedbackService(settings, start=(FTRLProximal.load(shared.bundle / HEAD_FILE), CHAMPION))
            t0 = float(math.floor(time.time()))
            service.watermark.track([(t, p) for t in (PREDICTIONS, FEEDBACK) for p in range(4)], t0)
            if timer is not None:
                for owner, name, label in in_process + in_tick + in_window + in_checkpoint:
                    timer.wrap(owner, name, label)
            cpu: defaultdict[str, float] = defaultdict(float)
            last_tick = last_checkpoint = float(t0)
            feedback = 0
            batch: list[Any] = []  # what one poll returns: the records since the last tick, up to 1,000
            for record in synthetic_records(pool, rate, seconds, args.feedback_delay, t0):
                batch.append(record)
                feedback += record.topic == FEEDBACK
                if len(batch) == 1000 or record.ts - last_tick >= 0.1:
                    start = time.thread_time()
                    service.process_batch(batch, record.ts)
                    cpu["process"] += time.thread_time() - start
                    batch = []
                    start = time.thread_time()
                    service.tick(record.ts)
                    service.take_letters()
                    cpu["tick"] += time.thread_time() - start
                    last_tick = record.ts
                if record.ts - last_checkpoint >= settings.checkpoint_interval_s:
                    start = time.thread_time()
                    service.checkpoints.save(service.checkpoint())
                    cpu["checkpoint"] += time.thread_time() - start
                    last_checkpoint = record.ts
            return {"cpu": cpu, "feedback": feedback, "windows": dict(service.stats.windows)}

    tune_gc()  # as the service's loop does
    drive(2.0, None)  # numba loads its compiled kernels on first use: not part of the service's steady state
    with StageTimer() as timer:
        done = drive(args.profile_seconds, timer)
    cpu, total = done["cpu"], sum(done["cpu"].values())

    def stages(group: list[tuple[Any, str, str]]) -> dict[str, float]:
        return {label: timer.cpu[label] for label in dict.fromkeys(label for _, _, label in group)}

    rows = stages(in_process)
    rest = "process_batch(): the rest (watermark, counters, offsets, join dispatch)"
    rows[rest] = cpu["process"] - sum(rows.values())
    tick = stages(in_tick)
    rows |= tick | stages(in_window)
    rows["tick(): the rest (windows loop, dead letters)"] = cpu["tick"] - sum(tick.values())
    rows |= stages(in_checkpoint)
    rows[GC_STAGE] = timer.cpu[GC_STAGE]
    return {"rate": rate, "interval_s": interval, "event_seconds": args.profile_seconds,
            "intents": len(FTRLProximal.load(shared.bundle / HEAD_FILE).classes),
            "feedback": done["feedback"], "cpu_s": total, "windows": done["windows"],
            "sustained_feedback_per_s_one_core": done["feedback"] / total if total else float("nan"),
            "stages_cpu_s": rows, "us_per_feedback": {k: 1e6 * v / max(done["feedback"], 1) for k, v in rows.items()}}


def print_profile(profiles: list[dict[str, Any]]) -> None:
    for p in profiles:
        table = Table(title=f"feedback service in one process, {p['intents']} intents, {p['rate']:,.0f} feedback/s "
                            f"of event time, "
                            f"update_interval {p['interval_s']:g} s, {p['event_seconds']:g} s: {p['cpu_s']:.1f} s "
                            f"CPU = {p['sustained_feedback_per_s_one_core']:,.0f} feedback/s on one whole core "
                            f"(consumer and observer thread not included; indented rows are inside learn_window)")
        for col in ("stage", "CPU s", "share", "µs per feedback event"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for stage, cpu in p["stages_cpu_s"].items():
            table.add_row(stage, f"{cpu:.2f}", f"{cpu / p['cpu_s']:.1%}", f"{p['us_per_feedback'][stage]:.1f}")
        console.print(table)


# -- one run --------------------------------------------------------------------------------


class VersionPoller:
    """GET /v1/models/current every `period` s on a keep-alive connection; first time each version answers."""

    def __init__(self, url: str, period: float) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.period = host, int(port), period
        self.seen: dict[str, float] = {}
        self.polls = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="version-poller", daemon=True)

    def __enter__(self) -> VersionPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def current(self) -> str:
        return max(self.seen, key=self.seen.__getitem__) if self.seen else "-"

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                conn.request("GET", "/v1/models/current")
                response = conn.getresponse()
                body = response.read()
                now = time.time()
                if response.status == 200:
                    self.seen.setdefault(json.loads(body)["version"], now)
                self.polls += 1
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))


@dataclass
class Snapshot:
    """Counters at one moment: the service's metrics, the load processes', CPU per process."""

    t: float
    metrics: dict[str, float]
    predictions: int
    feedback: int
    requests: int
    served_feedback: int
    cpu: dict[str, float]


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return values.get(f"{name}{{{label}}}" if label else name, 0.0)


def labelled(values: dict[str, float], name: str) -> dict[str, float]:
    """{label value: sample} of a metric with one label."""
    return {key.split('"')[1]: v for key, v in values.items() if key.startswith(name + "{")}


def _kill_if_alive(proc: Any) -> None:
    if proc.is_alive():
        proc.kill()


def run_once(shared: Shared, rate: float, interval: float, round_no: int, args: argparse.Namespace,
             held_back: Callable[[str], bool]) -> dict[str, Any]:
    run_dir = shared.work / f"run-{rate:g}-{interval:g}s-round{round_no}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    ctx = mp.get_context("spawn")  # never fork a process that holds ONNX Runtime and librdkafka threads
    name = f"{rate:,.0f}/s, interval {interval:g} s, round {round_no}"
    with contextlib.ExitStack() as stack:
        with console.status(f"{name}: registering the champion, starting broker, serving, feedback service"):
            register_champion(shared)
            broker = start_broker(run_dir / "broker-state", free_port())
            stack.callback(broker.stop)
            serving = start_serving(shared, run_dir, broker.url)
            stack.callback(serving.stop)
            feedback = start_feedback(shared, run_dir, broker.url, interval, dict(args.service_env))
            stack.callback(feedback.stop)
            wait_consuming(shared, broker.url, feedback)
        start = time.time() + 5.0  # the load processes start, import and load the pool meanwhile
        sample_from = start + args.warmup
        sample_to = sample_from + args.duration
        until = sample_to + interval + args.tail
        counters = Counters(ctx)
        plans = {
            "feedback-load": LoadPlan(broker.url, str(shared.pool), rate, args.feedback_delay, args.sample_every,
                                      start, sample_from, sample_to, until, str(run_dir / "feedback-load.json")),
            "predict-load": LoadPlan(broker.url, str(shared.pool), args.predict_rate, args.feedback_delay, 1,
                                     start, sample_from, sample_to, until, str(run_dir / "predict-load.json"),
                                     serving.url),
        }
        targets = {"feedback-load": run_feedback_load, "predict-load": run_predict_load}
        procs = {key: ctx.Process(target=targets[key], args=(plan, counters), name=key) for key, plan in plans.items()}
        for proc in procs.values():
            proc.start()
            stack.callback(_kill_if_alive, proc)
        managed = {"broker": broker, "serving": serving, "feedback": feedback}
        if shared.mlflow is not None:
            managed["mlflow"] = shared.mlflow

        def snapshot() -> Snapshot:
            cpu = {key: pid_cpu_seconds(p.group_pids()) for key, p in managed.items()}
            cpu.update({key: pid_cpu_seconds([p.pid]) for key, p in procs.items() if p.pid is not None})
            cpu["measuring (this process)"] = time.process_time()
            cpu["other processes on the machine"] = machine_busy_seconds() - sum(cpu.values())
            try:
                values = metric_values(feedback.url)
            except OSError:
                values = {}
            return Snapshot(time.time(), values, counters.predictions.value, counters.feedback.value,
                            counters.requests.value, counters.served_feedback.value, cpu)

        series: list[dict[str, Any]] = []
        marks: dict[str, Snapshot] = {}
        drained = False
        with VersionPoller(serving.url, args.poll_ms / 1000) as poller, progress_bar() as bar:
            task = bar.add_task(name, total=until - time.time(), status="")
            t_begin = time.time()
            while (now := time.time()) < until + args.drain:
                snap = snapshot()
                if "from" not in marks and now >= sample_from:
                    marks["from"] = snap
                if "to" not in marks and now >= sample_to:
                    marks["to"] = snap
                consumed = metric(snap.metrics, "loopline_feedback_records_total", topic=FEEDBACK)
                consumed_p = metric(snap.metrics, "loopline_feedback_records_total", topic=PREDICTIONS)
                lag = (snap.feedback + snap.served_feedback - consumed
                       + snap.predictions + snap.requests - consumed_p + 2)  # + the pair of wait_consuming
                series.append({"t": round(snap.t, 3), "produced_feedback": snap.feedback + snap.served_feedback,
                               "produced_precomputed": snap.feedback, "produced_served": snap.served_feedback,
                               "consumed_feedback": consumed, "produced_predictions": snap.predictions,
                               "consumed_predictions": consumed_p, "lag_records": lag, "version": poller.current})
                phase = ("warm-up" if now < sample_from else "measuring" if now < sample_to else
                         "tail" if now < until else "drain")
                bar.update(task, completed=min(now - t_begin, until - t_begin),
                           status=f"{phase}; serving {poller.current}; lag {lag:,.0f} records")
                if now >= until and not any(p.is_alive() for p in procs.values()) and lag <= 0:
                    drained = True
                    break  # everything produced has been consumed
                time.sleep(0.5)
            time.sleep(max(2 * interval, 3.0) + args.drain_extra)  # the last windows: learned, published, applied
            end = snapshot()
            marks.setdefault("from", end)
            marks.setdefault("to", end)
        for proc in procs.values():
            proc.join(60)
        updates = read_updates(broker.url, shared.model_name)
        serving_metrics = metric_values(serving.url)
        serving_updates = labelled(serving_metrics, "loopline_model_updates")
        # Served predictions whose event serving dropped: their feedback is rightly unmatched, not lost.
        unlogged = int(sum(labelled(serving_metrics, "loopline_prediction_log_dropped").values()))
        broker_rss = broker.rss_bytes()
        feedback.stop(30)  # its last checkpoint holds the join store's counts
        logs = {key: p.log_tail(12) for key, p in (("feedback", feedback), ("serving", serving))}
    joins = join_counts(run_dir / "feedback-state")
    loads = {key: json.loads(Path(plan.out).read_text()) if Path(plan.out).exists() else {}
             for key, plan in plans.items()}
    # Every feedback event the broker took, plus wait_consuming's one.
    produced = 1 + sum(load.get("feedback", 0) - load.get("failed", {}).get(FEEDBACK, 0) for load in loads.values())
    accounting = account(run_dir / "feedback-state", produced,
                         labelled(end.metrics, "loopline_feedback_dead_letters_total"), unlogged)
    seen = dict(poller.seen)
    for version, t in loads["predict-load"].get("seen", {}).items():
        seen[version] = min(seen.get(version, math.inf), t)
    result = analyze(rate, interval, held_back, updates, seen, loads, marks, end, series,
                     accounting.pop("_not_learned"))
    result.update({"round": round_no, "drained": drained, "join_counts": joins, "accounting": accounting,
                   "broker_rss_gb": broker_rss / 1e9,
                   "serving_model_updates": serving_updates, "polls": poller.polls,
                   "poll_errors": poller.errors, "log_tails": logs})
    return result


# -- analysis -----------------------------------------------------------------------------

# Dead letters of judged feedback that the examples table also keeps as a row (withheld or unknown label).
KEPT_LETTERS = {"untrusted_user", "repeated_correction", "stale_model", "unknown_label"}
# Reasons this load can rightly produce: per-user trust withholding (the pool comes round again). Every
# prediction is by version 1 or a version registered from its online head, so `stale_model` is not one;
# `unmatched` for feedback whose prediction was produced is a lost event.
EXPECTED_LETTERS = {"untrusted_user", "repeated_correction"}


def account(state_dir: Path, produced: int, letters: dict[str, float], unlogged: int) -> dict[str, Any]:
    """Every feedback event produced, found again: as a row of the examples table (learned, held back,
    withheld) or as a dead letter with a reason this load can produce. The rest is lost, and so is every
    `unmatched` letter beyond the `unlogged` predictions (answered, but their event dropped by serving)."""
    from services.common.examples import ExamplesTable

    rows = ExamplesTable(str((state_dir / "examples").resolve())).read()
    verdicts = Counter(rows["verdict"])
    distinct = int(rows["event_id"].nunique())
    letters = {k: int(v) for k, v in letters.items() if v}
    without_row = sum(n for reason, n in letters.items() if reason not in KEPT_LETTERS)
    lost = max(produced - distinct - without_row, 0) + max(letters.get("unmatched", 0) - unlogged, 0)
    not_learned = set(rows.loc[~rows["verdict"].isin(["learned", "held_back"]), "event_id"])
    return {"produced": produced, "rows": distinct, "duplicate_rows": len(rows) - distinct,
            "predictions_serving_did_not_log": unlogged,
            "verdicts": dict(verdicts), "dead_letters": letters, "lost": lost,
            "unexpected_letters": {k: n for k, n in letters.items() if k not in EXPECTED_LETTERS},
            "_not_learned": not_learned}



def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return dict.fromkeys(("p50", "p95", "p99", "max", "mean"), float("nan"))
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def consumption_clock(series: list[dict[str, Any]]) -> Callable[[float, int, str], float]:
    """When the service had consumed a given feedback event, estimated from the counters sampled every
    0.5 s: its place in the feedback stream (events of both producers before it) against the
    service's count of consumed feedback records. Partitions are read side by side, so it is an estimate."""
    t = np.array([s["t"] for s in series])
    consumed = np.maximum.accumulate(np.array([s["consumed_feedback"] for s in series]))
    precomputed = np.array([s["produced_precomputed"] for s in series], dtype=float)
    served = np.array([s["produced_served"] for s in series], dtype=float)

    def at(t0: float, index: int, source: str) -> float:
        other = served if source == "precomputed" else precomputed
        position = index + 2 + float(np.interp(t0, t, other))  # + the feedback of wait_consuming
        k = int(np.searchsorted(consumed, position))
        if k >= len(t):
            return math.inf
        if k == 0 or consumed[k] == consumed[k - 1]:
            return float(t[k])
        share = (position - consumed[k - 1]) / (consumed[k] - consumed[k - 1])
        return float(t[k - 1] + share * (t[k] - t[k - 1]))

    return at


def analyze(rate: float, interval: float, held_back: Callable[[str], bool], updates: list[dict[str, Any]],
            seen: dict[str, float], loads: dict[str, dict[str, Any]], marks: dict[str, Snapshot], end: Snapshot,
            series: list[dict[str, Any]], not_learned: set[str]) -> dict[str, Any]:
    """`not_learned`: event ids the examples table holds as withheld (never learned, so never fresh)."""
    # Serving answers with update i from the first time it was seen answering with i or any later one.
    visible = [math.inf] * len(updates)
    running = math.inf
    for i in range(len(updates) - 1, -1, -1):
        running = min(running, seen.get(updates[i]["version"], math.inf))
        visible[i] = running
    # The first delta that learned each window. After a registry version becomes champion the service
    # publishes the deltas of the registration's flight again on the new version ("carried over"): those
    # repeat a window that an earlier delta already brought to serving.
    by_window: dict[int, int] = {}
    for i, u in enumerate(updates):
        if u["kind"] == "delta" and u["window_end"] is not None:
            by_window.setdefault(round(u["window_end"] / interval), i)
    last_window = max(by_window, default=-1)
    on_topic = [u["ts"] for u in updates]
    consumed_at = consumption_clock(series)

    outcome: Counter[str] = Counter()
    fresh: dict[str, list[float]] = {"all": [], "precomputed": [], "served": []}
    wait, after = [], []
    slowest: dict[int, float] = {}  # per second of feedback time: the slowest sample's freshness
    for source, load in (("precomputed", loads["feedback-load"]), ("served", loads["predict-load"])):
        for event_id, ts_ms, index in load.get("samples", []):
            if held_back(event_id):
                outcome["held_back"] += 1
                continue
            if event_id in not_learned:  # withheld (trust) or not learnable: no freshness to measure
                outcome["withheld"] += 1
                continue
            t0 = ts_ms / 1000
            k = math.floor(t0 / interval) + 1  # the window [(k-1)I, kI) ends at kI
            learned_by = by_window.get(k)
            if learned_by is None:  # rejected by the gate (or, past the last published window, never released)
                outcome["window_not_published" if k < last_window else "window_not_published_by_end"] += 1
                continue
            # A record consumed after its window was released (a backlog) is joined late and learned in a
            # later window: then the first delta published after it was consumed is the earliest it can be in.
            consumed = consumed_at(t0, index, source)
            j = bisect.bisect_left(on_topic, consumed)
            answered = max(visible[learned_by], visible[j] if j < len(visible) else math.inf)
            if not math.isfinite(answered):
                outcome["not_seen_by_end"] += 1
                continue
            outcome["learned"] += 1
            if answered > visible[learned_by]:
                outcome["of which consumed after its window was published"] += 1
            fresh[source].append(answered - t0)
            fresh["all"].append(answered - t0)
            second = int(t0)
            slowest[second] = max(slowest.get(second, 0.0), answered - t0)
            wait.append(k * interval - t0)
            after.append(answered - k * interval)

    a, b = marks["from"], marks["to"]
    seconds = max(b.t - a.t, 1e-9)
    # Per delta of the measured period: window end -> on the topic (the service) -> answering (serving).
    measured_deltas = [i for i in by_window.values() if a.t <= updates[i]["window_end"] <= b.t + interval]
    published = [updates[i]["ts"] - updates[i]["window_end"] for i in measured_deltas]
    applied = [visible[i] - updates[i]["ts"] for i in measured_deltas if math.isfinite(visible[i])]

    def rate_of(name: str, **labels: str) -> float:
        return (metric(b.metrics, name, **labels) - metric(a.metrics, name, **labels)) / seconds

    registered = {o: int(metric(b.metrics, "loopline_feedback_registrations_total", outcome=o)
                         - metric(a.metrics, "loopline_feedback_registrations_total", outcome=o))
                  for o in ("promoted", "kept", "failed", "dropped")}
    windows = {d: int(metric(end.metrics, "loopline_feedback_windows_total", decision=d)
                      - metric(a.metrics, "loopline_feedback_windows_total", decision=d))
               for d in ("published", "rejected", "no_evidence", "empty")}
    measured = [s for s in series if a.t <= s["t"] <= b.t]
    cpu = {key: (b.cpu.get(key, 0.0) - a.cpu.get(key, 0.0)) / seconds for key in b.cpu}
    pred_load, fb_load = loads["predict-load"], loads["feedback-load"]
    acks = fb_load.get("acked", {})
    acked = [acks[e] - ts / 1000 for e, ts, _ in fb_load.get("samples", []) if e in acks]
    return {
        "rate": rate, "interval_s": interval, "seconds": seconds,
        "freshness_s": {k: percentiles(v) | {"n": len(v)} for k, v in fresh.items()},
        "window_wait_s": percentiles(wait), "after_window_end_s": percentiles(after),
        "delta_on_topic_after_window_end_s": percentiles(published),
        "serving_answers_after_delta_on_topic_s": percentiles(applied),
        "samples": dict(outcome),
        "produced_feedback_per_s": (b.feedback + b.served_feedback - a.feedback - a.served_feedback) / seconds,
        "produced_predictions_per_s": (b.predictions + b.requests - a.predictions - a.requests) / seconds,
        "consumed_feedback_per_s": rate_of("loopline_feedback_records_total", topic=FEEDBACK),
        "consumed_predictions_per_s": rate_of("loopline_feedback_records_total", topic=PREDICTIONS),
        "examples_per_s": rate_of("loopline_feedback_examples_total"),
        "predict_req_per_s": (b.requests - a.requests) / seconds,
        "predict_latency_ms": {k: 1e3 * v for k, v in percentiles(pred_load.get("latencies", [])).items()},
        "predict_failures": pred_load.get("failed", {}), "produce_failures": fb_load.get("failed", {}),
        "ack_after_produce_ms": {k: 1e3 * v for k, v in percentiles(acked).items()},
        "windows_from_measurement_to_end": windows,
        "registrations_in_measured_period": registered,
        "slowest_by_second": {str(k): round(v, 3) for k, v in sorted(slowest.items())},
        "windows_whole_run": {k: int(v) for k, v in labelled(end.metrics, "loopline_feedback_windows_total").items()},
        "dead_letters": {k: int(v) for k, v in labelled(end.metrics, "loopline_feedback_dead_letters_total").items()},
        "lag_records": {"max": max((s["lag_records"] for s in measured), default=float("nan")),
                        "at_start": measured[0]["lag_records"] if measured else float("nan"),
                        "at_end": measured[-1]["lag_records"] if measured else float("nan")},
        "cpu_cores": cpu, "updates_on_topic": len(updates), "versions_seen": len(seen),
        "progressive_accuracy": metric(end.metrics, "loopline_feedback_progressive_accuracy"),
        "series": series,
        "_fresh": fresh["all"],  # pooled over rounds by `report`, not written out
    }


def summarize(runs: list[dict[str, Any]], rate: float, interval: float) -> dict[str, Any]:
    rows = [r for r in runs if r["rate"] == rate and r["interval_s"] == interval]

    def med(get: Callable[[dict[str, Any]], float]) -> float:
        values = [v for v in map(get, rows) if v is not None and not math.isnan(v)]
        return statistics.median(values) if values else float("nan")

    def field(*path: str) -> Callable[[dict[str, Any]], float]:
        def get(row: dict[str, Any]) -> float:
            value: Any = row
            for key in path:
                value = value.get(key, float("nan")) if isinstance(value, dict) else float("nan")
            return float("nan") if value is None else float(value)
        return get

    windows: Counter[str] = Counter()
    samples: Counter[str] = Counter()
    letters: Counter[str] = Counter()
    registered: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    late = joined = produced = lost = 0
    for r in rows:
        registered.update(r["registrations_in_measured_period"])
        verdicts.update(r["accounting"]["verdicts"])
        unexpected.update(r["accounting"]["unexpected_letters"])
        produced += r["accounting"]["produced"]
        lost += r["accounting"]["lost"]
        windows.update(r["windows_from_measurement_to_end"])
        samples.update(r["samples"])
        letters.update(r["dead_letters"])
        late += r["join_counts"].get("late", 0)
        joined += r["join_counts"].get("joined", 0)
    return {
        "rate": rate, "interval_s": interval, "rounds": len(rows),
        **{f"{k}_s": med(field("freshness_s", "all", k)) for k in ("p50", "p95", "p99", "max")},
        "served_p50_s": med(lambda r: r["freshness_s"]["served"]["p50"]),
        "served_p95_s": med(lambda r: r["freshness_s"]["served"]["p95"]),
        "window_wait_p50_s": med(lambda r: r["window_wait_s"]["p50"]),
        "after_window_end_p50_s": med(lambda r: r["after_window_end_s"]["p50"]),
        "after_window_end_p95_s": med(lambda r: r["after_window_end_s"]["p95"]),
        "delta_on_topic_after_window_end_p50_s": med(lambda r: r["delta_on_topic_after_window_end_s"]["p50"]),
        "serving_after_delta_p50_s": med(lambda r: r["serving_answers_after_delta_on_topic_s"]["p50"]),
        "serving_after_delta_p95_s": med(lambda r: r["serving_answers_after_delta_on_topic_s"]["p95"]),
        **{key: med(field(key)) for key in (
            "produced_feedback_per_s", "consumed_feedback_per_s", "consumed_predictions_per_s", "examples_per_s",
            "predict_req_per_s")},
        "lag_records_at_start": med(lambda r: r["lag_records"]["at_start"]),
        "lag_records_at_end": med(lambda r: r["lag_records"]["at_end"]),
        "windows": dict(windows), "samples": dict(samples), "late_joins": late, "joins": joined,
        "dead_letters": dict(letters), "drained": all(r["drained"] for r in rows),
        "registrations": dict(registered),
        "fewest_registrations_in_a_period": min((r["registrations_in_measured_period"]["promoted"]
                                                 + r["registrations_in_measured_period"]["kept"] for r in rows),
                                                default=0),
        "feedback_produced": produced, "feedback_lost": lost, "verdicts": dict(verdicts),
        "unexpected_letters": dict(unexpected),
        # Kept up: at the end of the measured period less than 2 s of records (a prediction and a feedback
        # per event) were waiting, so the lag was not growing without bound.
        "kept_up": all(r["lag_records"]["at_end"] < 2 * 2 * r["rate"] for r in rows),
        "cpu_cores": {key: med(field("cpu_cores", key))
                      for key in rows[0]["cpu_cores"]} if rows else {},
    }


def print_table(summaries: list[dict[str, Any]], args: argparse.Namespace) -> None:
    table = Table(title=f"Freshness: feedback produced -> serving answers with the head that learned it; "
                        f"percentiles pooled over every sample of {args.rounds} round(s) x {args.duration:g} s "
                        f"measured (other columns: medians of rounds), + {args.predict_rate:g} predict req/s")
    for col in ("target feedback/s", "update interval", "p50 s", "p95 s", "p99 s", "samples",
                "after window end p50/p95 s",
                "window end -> delta on topic p50 s", "delta on topic -> serving p50/p95 s",
                "feedback/s produced", "feedback/s consumed", "predictions/s consumed", "examples/s learned",
                "predict req/s", "windows published/rejected", "registry versions in a measured period (fewest)",
                "lag at start/end (records)", "kept up", "late joins", "feedback produced / lost", "dead letters"):
        table.add_column(col, justify="right")
    for s in summaries:
        w = s["windows"]
        pooled = s["pooled"]
        table.add_row(f"{s['rate']:,.0f}", f"{s['interval_s']:g} s", f"{pooled['p50']:.2f}", f"{pooled['p95']:.2f}",
                      f"{pooled['p99']:.2f}", f"{pooled['n']:,}",
                      f"{s['after_window_end_p50_s']:.2f} / {s['after_window_end_p95_s']:.2f}",
                      f"{s['delta_on_topic_after_window_end_p50_s']:.2f}",
                      f"{s['serving_after_delta_p50_s']:.2f} / {s['serving_after_delta_p95_s']:.2f}",
                      f"{s['produced_feedback_per_s']:,.0f}", f"{s['consumed_feedback_per_s']:,.0f}",
                      f"{s['consumed_predictions_per_s']:,.0f}", f"{s['examples_per_s']:,.0f}",
                      f"{s['predict_req_per_s']:.1f}",
                      f"{w.get('published', 0)}/{w.get('rejected', 0)}",
                      str(s["fewest_registrations_in_a_period"]),
                      f"{s['lag_records_at_start']:,.0f} / {s['lag_records_at_end']:,.0f}",
                      "yes" if s["kept_up"] else "no",
                      f"{s['late_joins']:,} of {s['joins']:,}",
                      f"{s['feedback_produced']:,} / {s['feedback_lost']:,}",
                      ", ".join(f"{k} {v:,}" for k, v in s["dead_letters"].items()) or "none")
    console.print(table)
    cpu = Table(title="CPU during the measured period (cores of the 2; medians over rounds)")
    names = list(summaries[0]["cpu_cores"]) if summaries else []
    cpu.add_column("run", justify="right")
    for key in names:
        cpu.add_column(key, justify="right")
    cpu.add_column("total", justify="right")
    for s in summaries:
        values = [s["cpu_cores"][key] for key in names]
        cpu.add_row(f"{s['rate']:,.0f}/s, {s['interval_s']:g} s", *(f"{v:.2f}" for v in values),
                    f"{sum(values):.2f}")
    console.print(cpu)


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    """Freshness distribution per rate and interval (rounds pooled), from the stored percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    for s in sorted(summaries, key=lambda s: (s["rate"], s["interval_s"])):
        if s["pooled_percentiles"]:
            x = s["pooled_percentiles"]
            ax.plot(x, np.linspace(0, 1, len(x)), label=f"{s['rate']:,.0f} feedback/s, update_interval "
                    f"{s['interval_s']:g} s (n={s['pooled']['n']:,})")
    ax.axvline(TARGET_P95_S, color="grey", linestyle=":", label=f"target: p95 {TARGET_P95_S:g} s at 1 s")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= max(max(s["pooled_percentiles"] or [1])
                                                                          for s in summaries) * 1.5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("seconds from feedback produced to serving answering with the head that learned it")
    ax.set_ylabel("share of learned feedback events")
    ax.set_title("Freshness under load (rounds pooled)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the last phase: accuracy recovery (bench/recovery.py) --------------------------------


def recovery_phase(args: argparse.Namespace) -> dict[str, Any] | None:
    """HOOK for bench/recovery.py: the accuracy-recovery curve after `new_phrasing` onset against a
    model retrained from scratch. Runs its `run_recovery` with its own defaults (`--quick` passed on);
    it writes bench/results/recovery.json itself, and its summary is kept here too."""
    if args.skip_recovery:
        return None
    try:
        from recovery import parse_args as recovery_args  # bench/recovery.py
        from recovery import run_recovery
    except ImportError:
        console.print("[yellow]recovery curve skipped: bench/recovery.py (run_recovery) is not there yet[/]")
        return None
    options = recovery_args(["--quick"] if args.quick else [])
    result = run_recovery(options)
    return {"results": str(options.out), "summary": result.get("summary")}


# -- main ---------------------------------------------------------------------------------


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), console=console, refresh_per_second=2)


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("LOOPLINE_"):
        raise argparse.ArgumentTypeError(f"expected LOOPLINE_NAME=value, got {text!r}")
    return key, value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[5000.0, 1000.0],
                        help="target feedback events (and precomputed predictions) per second, one run set each")
    parser.add_argument("--intervals", type=float, nargs="+", default=[1.0, 5.0], help="LOOPLINE_UPDATE_INTERVAL_S")
    parser.add_argument("--predict-rate", type=float, default=25.0, help="POST /v1/predict per second")
    parser.add_argument("--feedback-delay", type=float, default=0.2, help="seconds from prediction to its feedback")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before sampling starts")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per run")
    parser.add_argument("--tail", type=float, default=5.0, help="seconds of load after the last sample (plus one "
                        "interval), so its window closes under load")
    parser.add_argument("--drain", type=float, default=300.0,
                        help="most seconds to wait after the load for the service to consume everything")
    parser.add_argument("--drain-extra", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sample-every", type=int, default=10, help="every n-th precomputed feedback is a sample")
    parser.add_argument("--poll-ms", type=float, default=25.0, help="GET /v1/models/current period")
    parser.add_argument("--pool", type=int, default=10_000, help="generated requests precomputed as events")
    parser.add_argument("--events", type=int, default=2_000, help="training events for the head (bench/serving.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--service-env", type=env_pair, nargs="*",
                        default=[("LOOPLINE_REGISTRY_INTERVAL_S", str(REGISTRY_INTERVAL_S))],
                        help="extra LOOPLINE_*=value for `loopline feedback` (default: a scheduled registry version "
                             f"every {REGISTRY_INTERVAL_S} s of event time, so each measured period holds one)")
    parser.add_argument("--profile-seconds", type=float, default=20.0, help="event seconds of the in-process profile")
    parser.add_argument("--skip-profile", action="store_true", help="skip the in-process profile of the service")
    parser.add_argument("--profile-data", help="also profile on this text,label file's intents (e.g. "
                                               "../shared/data/hwu64/train.csv), update_interval 1 s")
    parser.add_argument("--skip-runs", action="store_true", help="only the profile (no broker, no servers)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 15 s warm-up, 20 s measured")
    parser.add_argument("--skip-recovery", action="store_true", help="skip the recovery curve (bench/recovery.py)")
    parser.add_argument("--work", type=Path, help="keep bundle, pool, logs here and reuse bundle and pool")
    parser.add_argument("--out", type=Path, default=Path("bench/results/freshness.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench/results/freshness.png"))
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from the results in --out")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.duration, args.pool, args.profile_seconds = 1, 15.0, 20.0, 3_000, 5.0
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers it started, as Ctrl-C does
    if args.replot:
        plot(json.loads(args.out.read_text())["summary"], args.plot)
        console.print(f"plot: {args.plot}")
        return
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the broker's health probe while it boots
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    # Imported here, not at the top: the spawned load processes import this module, and these pull in torch.
    from quantize import cpu_name  # bench/quantize.py: bench scripts run as `python bench/<name>.py`
    from serving import ensure_bundle  # bench/serving.py: the same deployable bundle

    runs: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    with workspace(args.work, "freshness") as work, contextlib.ExitStack() as stack:
        shared = prepare(work, ensure_bundle(work / "bundle", args.events, args.seed), args)
        if not args.skip_profile:
            for rate in args.rates:
                for interval in args.intervals:
                    with console.status(f"profiling the service in process: {rate:,.0f}/s, interval {interval:g} s"):
                        profiles.append(profile_service(shared, rate, interval, args))
            if args.profile_data:
                other = prepare_data_file(work, shared, args.profile_data, args.seed)
                for rate in args.rates:
                    with console.status(f"profiling on {args.profile_data}: {rate:,.0f}/s, interval 1 s"):
                        profiles.append(profile_service(other, rate, 1.0, args) | {"data": args.profile_data})
            print_profile(profiles)
        if not args.skip_runs:
            start_registry(shared, stack)
            share = float(dict(args.service_env).get("LOOPLINE_HOLDOUT_SHARE", LearnSettings().holdout_share))
            learner = OnlineLearner(FTRLProximal.load(shared.bundle / HEAD_FILE), CHAMPION,
                                    LearnSettings(holdout_share=share))
            for r in range(1, args.rounds + 1):
                for rate in args.rates:
                    for interval in (args.intervals if r % 2 else args.intervals[::-1]):  # take turns going first
                        try:
                            result = run_once(shared, rate, interval, r, args, learner.held_back)
                        except Exception as exc:  # e.g. a service that did not start: the other runs go on
                            console.print_exception()
                            failed.append({"rate": rate, "interval_s": interval, "round": r, "error": repr(exc)})
                            continue
                        runs.append(result)
                        f = result["freshness_s"]["all"]
                        console.print(
                            f"{rate:,.0f}/s, interval {interval:g} s, round {r}: p50 {f['p50']:.2f} s, p95 "
                            f"{f['p95']:.2f} s (n={f['n']:,}); feedback/s produced "
                            f"{result['produced_feedback_per_s']:,.0f}, consumed "
                            f"{result['consumed_feedback_per_s']:,.0f}; lag {result['lag_records']['at_start']:,.0f}"
                            f" -> {result['lag_records']['at_end']:,.0f} records; samples {result['samples']}")
        recovery = recovery_phase(args)
    report(runs, failed, profiles, recovery, args, {
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, CPython {platform.python_version()}",
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": time.perf_counter() - started})


def report(runs: list[dict[str, Any]], failed: list[dict[str, Any]], profiles: list[dict[str, Any]],
           recovery: dict[str, Any] | None, args: argparse.Namespace, info: dict[str, Any]) -> None:
    fresh: dict[tuple[float, float], list[float]] = {}
    for r in runs:
        fresh.setdefault((r["rate"], r["interval_s"]), []).extend(r.pop("_fresh", []))
    summaries = [summarize(runs, rate, interval) for rate in args.rates for interval in args.intervals
                 if (rate, interval) in fresh]
    for s in summaries:
        values = fresh[s["rate"], s["interval_s"]]
        s["pooled"] = percentiles(values) | {"n": len(values)}
        # The distribution, for the plot (and to redraw it): percentiles 0, 0.5, ..., 100.
        s["pooled_percentiles"] = np.percentile(values, np.linspace(0, 100, 201)).tolist() if values else []
    for r in runs:  # every 2 s is enough to show the lag; every 0.5 s only served the estimates above
        r["series"] = r["series"][::4]
    verdicts = []
    if summaries:
        print_table(summaries, args)
        for s in summaries:
            if s["interval_s"] == TARGET_INTERVAL:
                p95 = s["pooled"]["p95"]
                registered = s["fewest_registrations_in_a_period"] >= 1
                met = (p95 <= TARGET_P95_S and s["kept_up"] and s["feedback_lost"] == 0 and registered
                       and not s["unexpected_letters"])
                verdicts.append({"target": f"p95 freshness <= {TARGET_P95_S:g} s at update_interval "
                                           f"{TARGET_INTERVAL:g} s, nothing lost, a registry version in every "
                                           "measured period", "rate": s["rate"], "met": met, "value": p95,
                                 "kept_up": s["kept_up"], "lost": s["feedback_lost"], "registered": registered})
                console.print(f"target p95 <= {TARGET_P95_S:g} s at update_interval {TARGET_INTERVAL:g} s, "
                              f"{s['rate']:,.0f} feedback/s: {'[green]met[/]' if met else '[red]not met[/]'} "
                              f"(pooled p95 {p95:.2f} s; service {'kept up' if s['kept_up'] else 'fell behind'}; "
                              f"{s['feedback_lost']:,} of {s['feedback_produced']:,} feedback events lost; "
                              f"fewest registry versions in a measured period: "
                              f"{s['fewest_registrations_in_a_period']}; verdicts {s['verdicts']}; "
                              f"unexpected dead letters {s['unexpected_letters'] or 'none'})")
        for s in summaries:
            console.print(f"{s['rate']:,.0f}/s, interval {s['interval_s']:g} s: samples {s['samples']}; pooled "
                          f"p50 {s['pooled']['p50']:.2f} p95 {s['pooled']['p95']:.2f} s; served-only p50/p95 "
                          f"{s['served_p50_s']:.2f}/{s['served_p95_s']:.2f} s; waiting for the window to end p50 "
                          f"{s['window_wait_p50_s']:.2f} s")
    for f in failed:
        console.print(f"[red]run failed[/]: {f}")
    console.print(f"hardware: {info['hardware']}; load average before/after {info['load_before']} / "
                  f"{info['load_after']}; broker, MLflow, serving, the feedback service, both load processes and "
                  f"this one share the cores; wall time {info['wall_s']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite({
        **info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summaries, "targets": verdicts, "profile": profiles, "runs": runs, "failed_runs": failed,
        "recovery": recovery,
    }), indent=2))
    console.print(f"results: {args.out}")
    if summaries and args.plot:
        plot(summaries, args.plot)
        console.print(f"plot: {args.plot}")


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a measurement that has no value is null."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


if __name__ == "__main__":
    main()
