"""Serving's latency while a retrain runs beside it on the same 2 cores, against serving alone, one run.

`loopline serve` (the bundle, batching and prediction log of bench/serving.py, one ORT thread) answers one
client at a time (concurrency 1, keep-alive HTTP). In turns, each `--rounds` times:

- idle: nothing else runs;
- retrain, nice 10: `loopline train` on generated traffic (MiniLM, the flow's embed, fit, compile and gate
  steps, an ephemeral Prefect server) as the stack's runner runs it (infra/stack.py): `nice -n 10`, one
  compute thread (`--all-threads`: torch's default, every core);
- retrain, nice 0 (`--plain`): the same at normal priority, to show what the priority buys.

Each phase sends requests for as long as the retrain runs (idle: `--idle-s`) and records every latency. The
table gives per phase p50/p99 pooled over rounds, the median of the per-round p99, and the ratio of the
retrain phases' p99 to idle's. Target (issue "Close the slow path"): p99 while a retrain runs within 2x of
p99 without one.

With `--finetune classify` the retrain fine-tunes the encoder first (`loopline train --finetune`), the
heaviest step a retrain can take; the results go to `serving_retrain-finetune-classify.json`.

Run: `.venv/bin/python bench/serving_retrain.py [--rounds 2] [--events 6000] [--plain] [--finetune classify]
[--quick]`. Writes `serving_retrain.json` to `--out`.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
for _var in THREAD_VARS:
    os.environ.setdefault(_var, "1")  # this process: the load generator and serving's settings

import argparse
import asyncio
import contextlib
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from serving import (  # bench scripts share helpers as top-level modules (run from bench/)
    HOST,
    Connection,
    answered_intent,
    cpu_name,
    ensure_bundle,
    http_request,
    request_texts,
    start_serving,
)

from infra.broker import start_broker
from infra.process import free_port
from infra.stack import RUNNER_THREAD_VARS

console = Console()
TARGET_RATIO = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=6_000, help="generated utterances the retrain trains on")
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--idle-s", type=float, default=40.0, help="length of an idle phase")
    parser.add_argument("--plain", action="store_true", help="also a retrain at normal priority")
    parser.add_argument("--all-threads", action="store_true", help="retrains without the runner's thread limit")
    parser.add_argument("--finetune", choices=("off", "classify", "contrastive"), default="off",
                        help="the retrain fine-tunes the encoder first (`loopline train --finetune`)")
    parser.add_argument("--finetune-budget", type=float, default=300.0, help="seconds its fine-tune may take")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny encoder, 1 round, short phases")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.events, args.encoder, args.idle_s = 1, 400, "tiny", 5.0
    return args


async def requests_until(port: int, texts: list[str], done: Any) -> list[float]:
    """One client, one request at a time, until `done()`; latencies in ms of good answers."""
    conn = Connection(HOST, port)
    latencies: list[float] = []
    try:
        i = 0
        while not done():
            text = texts[i % len(texts)]
            began = time.perf_counter()
            status, body = await conn.send(http_request(text))
            answered_intent(status, body)
            latencies.append((time.perf_counter() - began) * 1e3)
            i += 1
    finally:
        conn.close()
    return latencies


def retrain(work: Path, args: argparse.Namespace, nice: int) -> subprocess.Popen[bytes]:
    """`loopline train` in its own state folder, as the runner would run a retrain."""
    state = Path(tempfile.mkdtemp(dir=work, prefix=f"retrain-nice{nice}-"))
    # As the stack's runner starts it (infra/stack.py): one compute thread unless `--all-threads`.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPLINE_", "PREFECT_API"))
           and k not in THREAD_VARS}
    if not args.all_threads:
        env.update(dict.fromkeys(RUNNER_THREAD_VARS, "1"))
    env.update(LOOPLINE_STATE_DIR=str(state), PREFECT_HOME=str(state / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = ["nice", "-n", str(nice), str(Path(sys.executable).parent / "loopline"), "train", "--encoder",
           args.encoder, "--events", str(args.events), "--finetune", args.finetune,
           "--finetune-budget", str(args.finetune_budget)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=(state / "train.log").open("wb"))


def phase(port: int, texts: list[str], name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    began = time.monotonic()
    if name == "idle":
        latencies = asyncio.run(requests_until(port, texts, lambda: time.monotonic() - began > args.idle_s))
        return {"latencies": latencies, "seconds": time.monotonic() - began, "returncode": 0}
    proc = retrain(work, args, 10 if name == "retrain, nice 10" else 0)
    latencies = asyncio.run(requests_until(port, texts, lambda: proc.poll() is not None))
    return {"latencies": latencies, "seconds": time.monotonic() - began, "returncode": proc.returncode}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    names = ["idle", "retrain, nice 10", *(["retrain, nice 0"] if args.plain else [])]
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        bundle = ensure_bundle(work / "bundle", 1_000 if args.quick else 2_000, 0)
        texts = request_texts(500, 1)
        broker = start_broker(work / "broker-state", free_port())
        stack.callback(broker.stop)
        serving = start_serving(work, bundle, broker.url, 0.0, args)
        stack.callback(serving.stop)
        port = int(serving.url.rsplit(":", 1)[1])
        asyncio.run(requests_until(port, texts, _after(3.0)))  # warm-up
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                with console.status(f"round {round_ + 1}/{args.rounds}: {name}"):
                    runs[name].append(phase(port, texts, name, work, args))
                console.print(f"round {round_ + 1}: {name}: {len(runs[name][-1]['latencies']):,} requests in "
                              f"{runs[name][-1]['seconds']:.0f} s")
    result = summarize(runs, args, load_before)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "serving_retrain.json" if args.finetune == "off" else f"serving_retrain-finetune-{args.finetune}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return result


def _after(seconds: float) -> Any:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def summarize(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, load_before: list[float]
              ) -> dict[str, Any]:
    phases = {}
    for name, rounds in runs.items():
        pooled = np.concatenate([np.array(r["latencies"]) for r in rounds])
        phases[name] = {"requests": len(pooled), "seconds": [round(r["seconds"], 1) for r in rounds],
                        "retrain_ok": all(r["returncode"] == 0 for r in rounds),
                        "p50_ms": float(np.median(pooled)), "p99_ms": float(np.percentile(pooled, 99)),
                        "p99_per_round_ms": [float(np.percentile(r["latencies"], 99)) for r in rounds]}
    idle = phases["idle"]["p99_ms"]
    for values in phases.values():
        values["p99_vs_idle"] = values["p99_ms"] / idle
    return {"hardware": f"{cpu_name()}, {os.cpu_count()} cores, CPython {platform.python_version()}",
            "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
            "config": {"rounds": args.rounds, "events": args.events, "encoder": args.encoder,
                       "idle_s": args.idle_s, "retrain_threads": "all" if args.all_threads else 1,
                       "finetune": args.finetune, "finetune_budget_s": args.finetune_budget},
            "phases": phases,
            "within_target": phases["retrain, nice 10"]["p99_vs_idle"] <= TARGET_RATIO}


def _print(result: dict[str, Any]) -> None:
    table = Table(title="serving at concurrency 1 while a retrain runs on the same machine")
    for column in ("phase", "requests", "p50 ms", "p99 ms", "p99 / idle", "retrain s"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    for name, p in result["phases"].items():
        table.add_row(name, f"{p['requests']:,}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}",
                      f"{p['p99_vs_idle']:.2f}x", "" if name == "idle" else ", ".join(map(str, p["seconds"])))
    console.print(table)
    console.print(f"target p99 within {TARGET_RATIO:g}x of idle with the runner's priority: "
                  f"{'met' if result['within_target'] else 'NOT met'}; {result['hardware']}")


if __name__ == "__main__":
    main()
