"""Serving over HTTP vs its in-process floor vs a naive FastAPI + torch service, one run.

All three answer with the same model, built here as the train flow builds it: the
packaged all-MiniLM-L6-v2 exported to ONNX, fused and quantized to INT8 (default
`QuantizeConfig`), plus an FTRL head trained (models.train) on torch FP32 embeddings
and hashed features of a generated `stable` stream (`--events`), tokenizer and
manifest in one bundle folder. Requests are single texts from a held-out generated
stream (another seed), each with the user id of the generated user who sent it: as
in production, every answer starts with a read of that user's features from Feast's
online store (materialized here for each server from the generated user table).

Rows, for each concurrency level c (1, 8, 32):

- floor: `models.predict.Predictor(bundle)` in this process, no HTTP: the same Feast
  read per text as serving does (`online_user_features` on the store's SQLite online
  store), then features + ONNX Runtime encoder + head on batches of c texts (batch 1
  at c=1). p50/p99 are per call (one call answers c texts); req/s is texts per second.
  The Feast reads' own time is reported beside it.
- serving (max_wait_ms=W): the real service, `loopline serve` in its own process with
  LOOPLINE_BUNDLE, dynamic batching (LOOPLINE_MAX_BATCH, LOOPLINE_MAX_WAIT_MS=W) and
  its prediction log sending every prediction to the embedded Tansu broker: c clients
  each POST /v1/predict {"text"} over a keep-alive connection as soon as the previous
  answer arrived; p50/p99 per request, req/s of successful requests.
- naive: a plain FastAPI app under uvicorn (one worker, its own process), one sync
  `def` endpoint that reads the user's features from Feast as serving does, then runs
  torch FP32 `Encoder.encode([text])`, featurize and the same head per request: no
  batching, no ONNX. Same load as serving.

ORT intra-op threads (serving, floor) = torch threads (naive) = `--threads`. The load
generator is this process: uvloop, raw keep-alive HTTP/1.1, about 0.15 ms of CPU per
request (httpx.AsyncClient: 1.9 ms), 1,700-2,000 req/s against a trivial uvicorn app.
The machine has 2 cores, so client and servers share them; the client's CPU per request
is reported, and so is each server's (its whole process group, all threads).
A response counts only if it is 200 with an intent from the class list; failures are
counted and never add to throughput. Each round measures every level with the systems
taking turns (their order rotates per round); the table gives the median over rounds of
each round's p50, p99 and req/s. Ratios are within this run: p99 over the floor's p99
at the same c (the target is c=1: within 2x), req/s over naive's at the same c (the
target: 3x with dynamic batching). After the run /metrics tells how many prediction
events each service sent or dropped.

Run: `.venv/bin/python bench/serving.py [--quick] [--max-wait-ms 0 2] [--work DIR]`
(`--work` keeps the bundle and the servers' logs there and reuses the bundle).
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
for _var in THREAD_VARS:
    os.environ.setdefault(_var, "1")  # ORT and torch threads are set explicitly below

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from pydantic import BaseModel
from quantize import cpu_name  # bench/quantize.py: bench scripts run as `python bench/<name>.py`
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from workspace import workspace  # bench/workspace.py

from infra.broker import start_broker
from infra.process import HOST, ManagedProcess, free_port
from models.bundle import ENCODER_FILE, HEAD_FILE, TOKENIZER_DIR, BundleError, verify_bundle, write_manifest
from models.compile import export_onnx, optimize_onnx
from models.encoder import Encoder
from models.features import FeatureSpec
from models.ftrl import FTRLProximal
from models.predict import Predictor
from models.quantize import QuantizeConfig, quantize_onnx
from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head, user_records

console = Console(width=shutil.get_terminal_size((200, 40)).columns)  # wide tables unwrapped in logs
FLOOR, NAIVE = "floor", "naive"
FLOOR_STATE, NAIVE_STATE = "floor-state", "naive-state"  # their Feast stores
PREDICT = "/v1/predict"
CLASSES = frozenset(INTENTS)
START_TIMEOUT = 180.0  # seconds for a server to import, verify the bundle and load the model
REQUEST_TIMEOUT = 30.0  # a request not answered within this is a failure
DRAIN_TIMEOUT = 30.0  # seconds to wait for the prediction log to account for every prediction
P99_TARGET, RATE_TARGET = 2.0, 3.0  # p99 at c=1 <= 2x floor; req/s with batching >= 3x naive


# -- the model --------------------------------------------------------------------------------


def build_bundle(folder: Path, n_events: int, seed: int) -> Path:
    """The deployable bundle as the train flow builds it: INT8 fused encoder, FTRL head, manifest."""
    encoder = Encoder.from_pretrained()
    traffic = generate(TrafficConfig(n_events=n_events, seed=seed))
    texts, events = list(traffic.events["text"]), traffic.events
    users = user_records(list(events["user_id"]), traffic.users)
    config = HeadConfig()
    with progress_bar() as bar:
        task = bar.add_task("embed (torch FP32)", total=len(texts))
        embeddings = encoder.encode(texts, on_batch=functools.partial(bar.advance, task))
        task = bar.add_task("train FTRL head", total=len(texts) * config.epochs)
        head = train_head(featurize(texts, embeddings, FeatureSpec(), users), list(events["label"]), INTENTS,
                          config, on_batch=functools.partial(bar.advance, task))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp, console.status("export, fuse, quantize the encoder"):
        model = encoder.model.config
        fused = optimize_onnx(export_onnx(encoder, Path(tmp) / "fp32.onnx"), Path(tmp) / "fused.onnx",
                              model.num_attention_heads, model.hidden_size)
        quantize_onnx(fused, folder / ENCODER_FILE, QuantizeConfig())
    encoder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    head.save(folder / HEAD_FILE)
    write_manifest(folder, FeatureSpec(), INTENTS,
                   encoder={"dim": encoder.dim, "max_length": encoder.max_length, "ref": "minilm",
                            "quantization": QuantizeConfig().describe()},
                   lineage={"source": "bench/serving.py", "events": n_events, "seed": seed})
    return folder


def ensure_bundle(folder: Path, n_events: int, seed: int) -> Path:
    """Reuse a bundle built earlier with the same events and seed (`--work`), else build it."""
    try:
        lineage = verify_bundle(folder).lineage
        if lineage.get("events") == n_events and lineage.get("seed") == seed:
            console.print(f"reusing the bundle in {folder}")
            return folder
    except BundleError:
        pass
    return build_bundle(folder, n_events, seed)


def request_texts(n: int, seed: int) -> list[str]:
    """Held-out texts: a stream generated with another seed than the training stream."""
    return list(generate(TrafficConfig(n_events=n, seed=seed + 1)).events["text"])


def request_users(n: int, seed: int) -> list[str]:
    """Who sent each of `request_texts(n, seed)`: users of the training stream's user table."""
    return [str(u) for u in generate(TrafficConfig(n_events=n, seed=seed + 1, user_seed=seed)).events["user_id"]]


def materialize_users(state_dir: Path, n_events: int, seed: int) -> Path:
    """A Feast store in `state_dir/feast` holding the training stream's users online, as the train flow
    leaves it for serving."""
    from services.common.features import materialize, open_store

    users = generate(TrafficConfig(n_events=n_events, seed=seed)).users
    folder = state_dir / "feast"
    materialize(open_store(folder, users), datetime.now(UTC), full=True)
    return folder


class UserReader:
    """Serving's read of one user's online features (`Service.user_features`), timed."""

    def __init__(self, feast_dir: Path) -> None:
        from services.common.features import open_store

        self.store = open_store(feast_dir, apply=False)
        self.seconds: list[float] = []

    def __call__(self, user_id: str) -> dict[str, Any] | None:
        from services.common.features import online_user_features, user_fields

        start = time.perf_counter()
        features = user_fields(online_user_features(self.store, [user_id])[0])
        self.seconds.append(time.perf_counter() - start)
        return features


# -- the naive baseline (runs in its own process: `--naive-server`) --------------------------


class NaiveQuery(BaseModel):
    text: str
    user_id: str | None = None


def naive_app(bundle: Path, threads: int, feast_dir: Path) -> Any:
    """FastAPI + torch FP32 as one would write it by hand: one sync endpoint, one text per call, the user's
    features read from Feast."""
    from fastapi import FastAPI

    torch.set_num_threads(threads)
    manifest = verify_bundle(bundle)
    encoder = Encoder.from_pretrained(max_length=int(manifest.encoder["max_length"]))  # the weights exported
    head = FTRLProximal.load(bundle / HEAD_FILE)
    if head.dense_dim != encoder.dim or tuple(head.classes) != manifest.classes:
        raise BundleError(f"{bundle}: the head does not fit the packaged encoder")
    app = FastAPI(title="naive baseline")
    read_user = UserReader(feast_dir)

    @app.post(PREDICT)
    def predict(query: NaiveQuery) -> dict[str, Any]:
        users = [read_user(query.user_id) if query.user_id else None]
        batch = featurize([query.text], encoder.encode([query.text]), manifest.spec, users)
        proba = head.predict_proba_many(batch)[0]
        best = int(proba.argmax())
        return {"intent": head.classes[best], "probability": float(proba[best])}

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    return app


def run_naive_server(bundle: Path, port: int, threads: int, feast_dir: Path) -> None:
    import uvicorn

    uvicorn.run(naive_app(bundle, threads, feast_dir), host=HOST, port=port, log_level="warning")


# -- servers ------------------------------------------------------------------------------


def server_env(threads: int, **loopline: str) -> dict[str, str]:
    """This environment without anyone's LOOPLINE_* settings, plus ours and one BLAS/numba thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPLINE_")}
    env.update(dict.fromkeys(THREAD_VARS, "1"))
    env.update({f"LOOPLINE_{key.upper()}": value for key, value in loopline.items()})
    return env


def ready(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # 503 raises: not ready yet
        return bool(response.status == 200)


def serving_name(max_wait_ms: float) -> str:
    return f"serving-wait{max_wait_ms:g}"  # its state folder (and its Feast store) under the work folder


def start_serving(work: Path, bundle: Path, broker: str, max_wait_ms: float, args: argparse.Namespace
                  ) -> ManagedProcess:
    port, name = free_port(), serving_name(max_wait_ms)
    env = server_env(args.threads, bundle=str(bundle), port=str(port), state_dir=str(work / name),
                     ort_threads=str(args.threads), max_batch=str(args.max_batch), max_wait_ms=str(max_wait_ms),
                     kafka_bootstrap_servers=broker)
    proc = ManagedProcess(name, [str(Path(sys.executable).parent / "loopline"), "serve"], work / "logs",
                          env=env, url=f"http://{HOST}:{port}")
    return proc.start_healthy(lambda: ready(proc.url), START_TIMEOUT)


def start_naive(work: Path, bundle: Path, args: argparse.Namespace) -> ManagedProcess:
    port, threads = free_port(), args.threads
    feast_dir = materialize_users(work / NAIVE_STATE, args.events, args.seed)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--naive-server", "--bundle", str(bundle),
           "--port", str(port), "--threads", str(threads), "--feast", str(feast_dir)]
    proc = ManagedProcess(NAIVE, cmd, work / "logs", env=server_env(threads), url=f"http://{HOST}:{port}")
    return proc.start_healthy(lambda: ready(proc.url), START_TIMEOUT)


def cpu_seconds(proc: ManagedProcess) -> float:
    """User + system CPU of every process in the group so far (all threads included)."""
    total = 0
    for pid in proc.group_pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def metric_values(url: str) -> dict[str, float]:
    """Prometheus text from /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    pairs = (line.rpartition(" ") for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, _, value in pairs}


def prediction_log(url: str) -> dict[str, Any]:
    """Predictions answered and prediction events sent/dropped, once every answered one is accounted for."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:  # the counters trail the answers by the broker's acknowledgement
        values = metric_values(url)
        answered = values.get(f'loopline_requests_total{{route="{PREDICT}",status="200"}}', 0.0)
        sent = values.get("loopline_prediction_log_sent", 0.0)
        dropped = {key.split('"')[1]: v for key, v in values.items()
                   if key.startswith("loopline_prediction_log_dropped{")}
        if sent + sum(dropped.values()) >= answered or time.monotonic() > deadline:
            return {"answered": int(answered), "sent": int(sent), "dropped": {k: int(v) for k, v in dropped.items()},
                    "unaccounted": int(answered - sent - sum(dropped.values()))}
        time.sleep(0.5)


# -- the load generator -------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs prebuilt requests and reads sized answers.

    About 0.15 ms of client CPU per request against 1.9 ms for httpx.AsyncClient (measured
    here); on 2 shared cores whatever the client burns is taken from the server.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head[1:] if line)}
        body = await self.reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"connection") == b"close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def http_request(text: str, user_id: str | None = None) -> bytes:
    body = json.dumps({"text": text} if user_id is None else {"text": text, "user_id": user_id}).encode()
    return (f"POST {PREDICT} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def answered_intent(status: int, body: bytes) -> str:
    """The intent of a good answer; ValueError for anything but a 200 naming an intent of the class list."""
    if status != 200:
        raise ValueError(f"HTTP {status}")
    intent = json.loads(body).get("intent")
    if intent not in CLASSES:
        raise ValueError(f"intent {intent!r} is not a class")
    return str(intent)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    agree: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count


async def send_all(conns: list[Connection], requests: list[bytes], expected: list[str], count: int,
                   on_done: Callable[[int], object]) -> tuple[Tally, float]:
    """`count` requests, one worker per connection, each sending as soon as its last answer came."""
    tally, next_index = Tally(), itertools.count()

    async def worker(conn: Connection) -> None:
        while (i := next(next_index)) < count:
            k = i % len(requests)
            start = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    intent = answered_intent(*await conn.send(requests[k]))
            except Exception as exc:  # whatever went wrong, the request failed: count it, reconnect
                conn.close()
                tally.failures[f"{type(exc).__name__}: {exc}"[:80]] += 1
            else:
                tally.latencies.append(time.perf_counter() - start)
                tally.agree += intent == expected[k]
            on_done(1)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    return tally, time.perf_counter() - start


# -- measurements -------------------------------------------------------------------------


@dataclass
class Run:
    """One measurement of one system at one concurrency level."""

    latencies_ms: np.ndarray  # successful requests (floor: calls)
    seconds: float
    answered: int  # successful requests (floor: texts)
    failures: dict[str, int]
    agree: int  # answers with the floor's intent for the same text
    server_cpu_s: float  # the server group's CPU (floor: this process's)
    client_cpu_s: float
    feast_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # floor: each Feast read's own time

    @property
    def rate(self) -> float:
        return self.answered / self.seconds

    def summary(self) -> dict[str, Any]:
        ms = self.latencies_ms if len(self.latencies_ms) else np.array([np.nan])  # all failed: no latency
        return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "req_s": self.rate,
                "answered": self.answered, "failures": self.failures,
                "agree_with_floor": self.agree / max(self.answered, 1),
                "server_cpu_ms_per_req": 1e3 * self.server_cpu_s / max(self.answered, 1),
                "client_cpu_us_per_req": 1e6 * self.client_cpu_s / max(self.answered, 1),
                **({"feast_read_p50_ms": float(np.median(self.feast_ms)),
                    "feast_read_p99_ms": float(np.percentile(self.feast_ms, 99))} if len(self.feast_ms) else {})}


@dataclass
class System:
    name: str
    proc: ManagedProcess | None = None  # None: the in-process floor
    max_wait_ms: float | None = None
    runs: dict[int, list[Run]] = field(default_factory=lambda: defaultdict(list))


def measure_http(proc: ManagedProcess, requests: list[bytes], expected: list[str], concurrency: int,
                 count: int, warmup: int, on_done: Callable[[int], object]) -> Run:
    port = int(proc.url.rsplit(":", 1)[1])

    async def load() -> Run:
        conns = [Connection(HOST, port) for _ in range(concurrency)]
        try:  # warm-up opens the connections and fills the server's pipeline; not recorded
            await send_all(conns, requests, expected, max(warmup, 2 * concurrency), lambda _: None)
            server_cpu, client_cpu = cpu_seconds(proc), time.process_time()
            tally, seconds = await send_all(conns, requests, expected, count, on_done)
            server_cpu, client_cpu = cpu_seconds(proc) - server_cpu, time.process_time() - client_cpu
        finally:
            for conn in conns:
                conn.close()
        return Run(np.array(tally.latencies) * 1e3, seconds, len(tally.latencies), dict(tally.failures),
                   tally.agree, server_cpu, client_cpu)

    return run_loop(load())


def run_loop(coro: Coroutine[Any, Any, Run]) -> Run:
    try:
        import uvloop  # uvicorn's loop: less client CPU per request than asyncio's own
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure_floor(predictor: Predictor, read_user: UserReader, texts: list[str], users: list[str],
                  expected: list[str], batch: int, count: int, on_done: Callable[[int], object]) -> Run:
    for _ in range(3):  # warm-up: first calls allocate ORT buffers for the shape
        predictor.predict_proba(texts[-batch:], [read_user(u) for u in users[-batch:]])
    read_user.seconds.clear()
    latencies, agree = [], 0
    cpu, start = time.process_time(), time.perf_counter()
    for first in range(0, count, batch):
        idx = [i % len(texts) for i in range(first, min(first + batch, count))]
        t0 = time.perf_counter()
        features = [read_user(users[i]) for i in idx]  # one read per request, as serving reads them
        proba = predictor.predict_proba([texts[i] for i in idx], features)
        latencies.append(time.perf_counter() - t0)
        agree += sum(predictor.classes[p] == expected[i] for p, i in zip(proba.argmax(axis=1), idx, strict=True))
        on_done(len(idx))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(np.array(latencies) * 1e3, seconds, count, {}, agree, cpu, cpu,
               np.array(read_user.seconds) * 1e3)


def measure_all(systems: list[System], predictor: Predictor, read_user: UserReader, texts: list[str],
                users: list[str], args: argparse.Namespace) -> None:
    """Rounds of every level; at each level the systems take turns, in an order that rotates per round."""
    requests = [http_request(t, u) for t, u in zip(texts, users, strict=True)]
    expected = predictor.predict(texts, [read_user(u) for u in users])  # the floor's answers, for agreement
    with progress_bar() as bar:
        overall = bar.add_task("all measurements", total=args.rounds * len(args.concurrency) * len(systems))
        for r in range(args.rounds):
            order = systems[r % len(systems):] + systems[: r % len(systems)]
            for c in args.concurrency:
                for system in order:
                    task = bar.add_task(f"round {r + 1}/{args.rounds}, c={c}: {system.name}", total=args.requests)
                    done = functools.partial(bar.advance, task)
                    if system.proc is None:
                        run = measure_floor(predictor, read_user, texts, users, expected, c, args.requests, done)
                    else:
                        run = measure_http(system.proc, requests, expected, c, args.requests, args.warmup, done)
                    system.runs[c].append(run)
                    bar.remove_task(task)
                    bar.advance(overall)


# -- report -------------------------------------------------------------------------------


def summarize(system: System, c: int) -> dict[str, Any]:
    """Medians over rounds of each round's p50, p99 and req/s; counts summed."""
    rounds = [run.summary() for run in system.runs[c]]
    failures: Counter[str] = Counter()
    for run in system.runs[c]:
        failures.update(run.failures)
    answered = sum(r["answered"] for r in rounds)
    return {
        **{k: statistics.median(r[k] for r in rounds)
           for k in ("p50_ms", "p99_ms", "req_s", "server_cpu_ms_per_req", "client_cpu_us_per_req")},
        "answered": answered, "failed": sum(failures.values()), "failures": dict(failures),
        "agree_with_floor": sum(run.agree for run in system.runs[c]) / max(answered, 1), "rounds": rounds,
        **({k: statistics.median(r[k] for r in rounds) for k in ("feast_read_p50_ms", "feast_read_p99_ms")}
           if system.proc is None else {}),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # a baseline with no successful request has no ratio


def add_ratios(results: dict[str, dict[int, dict[str, Any]]]) -> None:
    for rows in results.values():
        for c, row in rows.items():
            row["p99_vs_floor"] = ratio(row["p99_ms"], results[FLOOR][c]["p99_ms"])
            row["req_s_vs_naive"] = ratio(row["req_s"], results[NAIVE][c]["req_s"])


def targets(results: dict[str, dict[int, dict[str, Any]]], serving: list[System], levels: list[int]
            ) -> list[dict[str, Any]]:
    """One verdict per target, serving variant and level, with the numbers behind it."""
    verdicts = []
    for system in serving:
        rows = results[system.name]
        if 1 in rows:
            ratio = rows[1]["p99_vs_floor"]
            verdicts.append({"target": f"p99 at c=1 <= {P99_TARGET:g}x floor", "system": system.name,
                             "met": ratio <= P99_TARGET, "value": ratio,
                             "detail": f"{rows[1]['p99_ms']:.2f} ms vs floor {results[FLOOR][1]['p99_ms']:.2f} ms"})
        for c in (c for c in levels if c > 1):
            ratio = rows[c]["req_s_vs_naive"]
            verdicts.append({"target": f"req/s at c={c} >= {RATE_TARGET:g}x naive", "system": system.name,
                             "met": ratio >= RATE_TARGET, "value": ratio,
                             "detail": f"{rows[c]['req_s']:,.0f} vs naive {results[NAIVE][c]['req_s']:,.0f} req/s"})
    return verdicts


def print_table(results: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace) -> None:
    table = Table(title=f"POST {PREDICT}, one text per request: medians of {args.rounds} rounds x "
                        f"{args.requests:,} requests per system and level; {args.threads} ORT/torch thread(s)")
    for col in ("system", "c", "p50 ms", "p99 ms", "req/s", "p99 vs floor", "req/s vs naive", "failed",
                "server CPU ms/req", "same intent as floor"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for c in args.concurrency:
        for name, rows in results.items():
            row = rows[c]
            label = f"floor, in-process ORT, batch {c}" if name == FLOOR else name
            table.add_row(label, str(c), f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['req_s']:,.0f}",
                          f"{row['p99_vs_floor']:.2f}x", f"{row['req_s_vs_naive']:.2f}x", f"{row['failed']:,}",
                          f"{row['server_cpu_ms_per_req']:.2f}", f"{row['agree_with_floor']:.2%}")
        table.add_section()
    console.print(table)
    console.print("floor rows: p50/p99 per call of c texts, req/s = texts/s; its CPU column is this process's.")
    for c in args.concurrency:
        floor = results[FLOOR][c]
        console.print(f"Feast online read inside the floor at c={c}: p50 {floor['feast_read_p50_ms']:.2f} ms, "
                      f"p99 {floor['feast_read_p99_ms']:.2f} ms per user (one read per request)")


def report(results: dict[str, dict[int, dict[str, Any]]], verdicts: list[dict[str, Any]],
           logs: dict[str, dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> None:
    print_table(results, args)
    for v in verdicts:
        mark = "[green]met[/green]" if v["met"] else "[red]not met[/red]"
        console.print(f"target {v['target']}, {v['system']}: {mark} ({v['value']:.2f}x; {v['detail']})")
    for name, counts in logs.items():
        console.print(f"prediction log, {name}: {counts['answered']:,} predictions answered (warm-up included), "
                      f"{counts['sent']:,} events sent to the broker, dropped "
                      f"{ {k: v for k, v in counts['dropped'].items() if v} or 'none'}, "
                      f"unaccounted {counts['unaccounted']}")
    client = {name: rows[max(rows)]["client_cpu_us_per_req"] for name, rows in results.items() if name != FLOOR}
    console.print("load generator CPU per request at c=" + str(max(args.concurrency)) + ": "
                  + ", ".join(f"{name} {us:.0f} us" for name, us in client.items()))
    console.print(f"hardware: {info['hardware']}; load average before/after: {info['load_before']} / "
                  f"{info['load_after']}; client and servers share the cores; wall time {info['wall_s']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        **info, "threads": args.threads, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
        "rounds": args.rounds, "requests_per_measurement": args.requests, "warmup": args.warmup,
        "events": args.events, "request_texts": args.texts, "concurrency": args.concurrency,
        "rows": {name: {str(c): row for c, row in rows.items()} for name, rows in results.items()},
        "targets": verdicts, "prediction_log": logs,
    }, indent=2))
    console.print(f"results: {args.out}")


# -- main ---------------------------------------------------------------------------------


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, refresh_per_second=4)  # few redraws: this process is also the client


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-wait-ms", type=float, nargs="+", default=[0.0, 2.0],
                        help="one serving variant per value (LOOPLINE_MAX_WAIT_MS)")
    parser.add_argument("--max-batch", type=int, default=32, help="LOOPLINE_MAX_BATCH")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads = torch threads")
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per system, level, round")
    parser.add_argument("--warmup", type=int, default=64, help="unrecorded requests before each measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=2_000, help="training events for the head")
    parser.add_argument("--texts", type=int, default=2_000, help="held-out request texts")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 200 requests, smaller head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep bundle and logs here and reuse the bundle")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving.json"))
    parser.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)  # the benchmark starts it
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--feast", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.warmup, args.events, args.texts = 200, 1, 32, 1_000, 500
    return args


def main() -> None:
    args = parse_args()
    if args.naive_server:
        run_naive_server(args.bundle, args.port, args.threads, args.feast)
        return
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    with workspace(args.work, "serving") as work, contextlib.ExitStack() as stack:
        bundle = ensure_bundle(work / "bundle", args.events, args.seed)
        texts, users = request_texts(args.texts, args.seed), request_users(args.texts, args.seed)
        # kafka-python logs every refused connection of the broker's health probe while it boots.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        with console.status("starting the broker and the servers"):
            broker = start_broker(work / "broker-state", free_port())
            stack.callback(broker.stop)
            serving = []
            for wait in args.max_wait_ms:
                materialize_users(work / serving_name(wait), args.events, args.seed)
                proc = start_serving(work, bundle, broker.url, wait, args)
                stack.callback(proc.stop)
                serving.append(System(f"serving (max_wait_ms={wait:g})", proc, wait))
            naive = start_naive(work, bundle, args)
            stack.callback(naive.stop)
        floor = System(FLOOR)
        systems = [floor, *serving, System(NAIVE, naive)]
        read_user = UserReader(materialize_users(work / FLOOR_STATE, args.events, args.seed))
        measure_all(systems, Predictor(bundle, threads=args.threads), read_user, texts, users, args)
        with console.status("waiting for the prediction logs to account for every prediction"):
            logs = {s.name: prediction_log(s.proc.url) for s in serving if s.proc is not None}
    results = {s.name: {c: summarize(s, c) for c in args.concurrency} for s in systems}
    add_ratios(results)
    hardware = (f"{cpu_name()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, torch {torch.__version__}, "
                f"CPython {platform.python_version()}")
    info = {"hardware": hardware, "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
            "wall_s": time.perf_counter() - started, "quantization": QuantizeConfig().describe()}
    report(results, targets(results, serving, args.concurrency), logs, args, info)


if __name__ == "__main__":
    main()
