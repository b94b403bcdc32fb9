"""How far feedback runs ahead of its predictions on a backlog, with and without FeedbackPacer.

A broker of its own gets a backlog of `--events` predictions (3 kB) and their feedback
(150 B), one of each per millisecond of event time, on one partition each. A consumer
configured as the feedback service's reads it all, spending `--cost-us` of CPU per
record as the service does, once without pausing and once with the service's
FeedbackPacer deciding after every batch. Reported: the most event time the feedback
read was ahead of the predictions read (what decides how long feedback waits in the
join store and whether it can expire as unmatched), and the wall time to read it all.

Run: `.venv/bin/python bench/pacing.py [--events 30000] [--cost-us 100]`
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from infra.broker import start_broker
from infra.process import free_port
from services.common.events import FEEDBACK, PREDICTIONS
from services.feedback.pacing import FeedbackPacer

console = Console()
MAX_AHEAD_S = 5.0  # the service's default LOOPLINE_MAX_FEEDBACK_AHEAD_S


def fill(servers: str, events: int) -> None:
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 50, "batch.size": 1_000_000, "acks": "all",
                         "enable.idempotence": False})
    start_ms = int(time.time() * 1000) - events  # one event of each kind per millisecond, ending now
    for i in range(events):
        for topic, size in ((PREDICTIONS, 3000), (FEEDBACK, 150)):
            while True:
                try:
                    producer.produce(topic, b"x" * size, key=b"k", partition=0, timestamp=start_ms + i)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)


def read_all(servers: str, events: int, cost_s: float, pacing: bool) -> dict[str, float]:
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"pacing-{pacing}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.message.max.bytes": 8 * 1024 * 1024,
                         "fetch.wait.max.ms": 50})  # as the feedback service's consumer
    consumer.subscribe([PREDICTIONS, FEEDBACK])
    pacer = FeedbackPacer(MAX_AHEAD_S)
    newest = {(PREDICTIONS, 0): float("-inf"), (FEEDBACK, 0): float("-inf")}
    read, worst, started = 0, 0.0, time.perf_counter()
    try:
        while read < 2 * events and time.perf_counter() - started < 600:
            for message in consumer.consume(1000, 0.1):
                if message.error():
                    continue
                until = time.perf_counter() + cost_s
                while time.perf_counter() < until:  # the service's CPU per record, without its code
                    pass
                read += 1
                newest[(message.topic() or "", 0)] = message.timestamp()[1] / 1000
            if min(newest.values()) > float("-inf"):
                worst = max(worst, newest[(FEEDBACK, 0)] - newest[(PREDICTIONS, 0)])
            if pacing:
                pause, resume = pacer.decide(newest, lambda _: False)  # a backlog: nothing goes quiet
                if pause:
                    consumer.pause([TopicPartition(FEEDBACK, p) for p in pause])
                if resume:
                    consumer.resume([TopicPartition(FEEDBACK, p) for p in resume])
    finally:
        consumer.close()
    return {"records_read": read, "feedback_ahead_max_s": round(worst, 2),
            "wall_s": round(time.perf_counter() - started, 1), "pauses": pacer.pauses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--cost-us", type=float, default=100.0, help="CPU spent per record read")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "pacing.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loopline-bench-pacing-") as tmp:
        broker = start_broker(Path(tmp), free_port(), partitions={PREDICTIONS: 1, FEEDBACK: 1})
        try:
            fill(broker.url, args.events)
            rows = {name: read_all(broker.url, args.events, args.cost_us / 1e6, pacing)
                    for name, pacing in (("without pausing", False), (f"pausing at {MAX_AHEAD_S:g} s", True))}
        finally:
            broker.stop()
    table = Table(title=f"{args.events:,} predictions and their feedback as a backlog, {args.cost_us:g} us per record")
    for column in ("", "feedback ahead at most (s)", "wall (s)", "pauses"):
        table.add_column(column, justify="right" if column else "left")
    for name, row in rows.items():
        table.add_row(name, f"{row['feedback_ahead_max_s']:.1f}", f"{row['wall_s']:.1f}", str(row["pauses"]))
    console.print(table)
    console.print(f"{platform.processor() or platform.machine()}, CPython {platform.python_version()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"events": args.events, "cost_us": args.cost_us, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
