"""Decoding consumed events: the feedback service's decoder against the options it was chosen from, one run.

Events of the shape serving logs (64 hashed features, a 384-d embedding, 22 intents'
probabilities, 8 user features; about 4 KB) and feedback events, decoded into what
the join store takes, with every check the service makes, by:

- pydantic: `PredictionEvent.model_validate_json`, then `LoggedFeatures.arrays()` (base64
  by binascii) and the numeric checks on each record's own arrays (the decoder before
  services/feedback/decode.py);
- msgspec, per record: the service's structs, the same numeric checks per record;
- msgspec, batch checks: `decode_predictions` as the service runs it, the numeric checks
  once over the concatenated arrays of 1,000 records.

Each option decodes the same 1,000-record batches; the figure is the median over
`--repeats` passes of CPU time per record (thread time), with its ratio to pydantic.

Run: `.venv/bin/python bench/decode.py [--events 20000] [--repeats 7]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from machine import cpu_name  # bench/machine.py
from rich.console import Console
from rich.table import Table

from services.common.events import FEEDBACK, PREDICTIONS, FeedbackEvent, LoggedFeatures, PredictionEvent
from services.feedback.decode import FEEDBACK_DECODER, PREDICTION_DECODER, decode_feedback, decode_predictions
from services.feedback.intake import Record
from services.feedback.join import StoredFeedback, StoredPrediction

console = Console()
SPARSE_DIM, DENSE_DIM, BATCH = 2**20, 384, 1_000
INTENTS = [f"intent_{i:02d}" for i in range(22)]


def prediction_records(n: int, seed: int) -> list[Record]:
    rng = np.random.default_rng(seed)
    user = {"locale": "en_GB", "device": "android", "fav_app_1": "spotify", "fav_app_2": "maps",
            "fav_app_3": "mail", "activity_tier": "high", "top_intent": "play_music", "activity_level": "2.1"}
    out = []
    for i in range(n):
        proba = rng.dirichlet(np.ones(len(INTENTS)))
        event = PredictionEvent(
            prediction_id=f"p{i:08d}", model_version="3+ftrl.17", user_id=f"u{i % 2000:05d}", user=user,
            text="set an alarm for seven tomorrow morning", intent=INTENTS[int(proba.argmax())],
            features=LoggedFeatures.of(rng.integers(0, SPARSE_DIM, 64), rng.random(64), rng.random(DENSE_DIM)),
            probabilities=dict(zip(INTENTS, proba.tolist(), strict=True)))
        out.append(Record(PREDICTIONS, i % 4, i, event.prediction_id, event.model_dump_json().encode(), 1.8e9 + i))
    return out


def feedback_records(n: int) -> list[Record]:
    return [Record(FEEDBACK, i % 4, i, f"p{i:08d}", FeedbackEvent(
        event_id=f"f{i:08d}", prediction_id=f"p{i:08d}", label=INTENTS[i % len(INTENTS)]).model_dump_json().encode(),
        1.8e9 + i) for i in range(n)]


def _checked(record: Record, indices: np.ndarray, values: np.ndarray, embedding: np.ndarray | None,
             fields: tuple[str, str, str | None, str, str, float, dict[str, str] | None]) -> StoredPrediction | None:
    """The numeric checks on one record's own arrays, then what the join store takes."""
    if not (np.isfinite(values.sum()) and (embedding is None or np.isfinite(embedding.sum()))):
        return None
    if len(indices) and not (indices.min() >= 0 and indices.max() < SPARSE_DIM):
        return None
    if embedding is None or len(embedding) != DENSE_DIM or len(indices) != len(values):
        return None
    pid, version, user_id, text, intent, confidence, user = fields
    return StoredPrediction(pid, record.ts, version, user_id, text, intent, confidence, indices.astype(np.int64),
                            values, embedding, user)


def pydantic_predictions(records: Sequence[Record]) -> list[StoredPrediction | None]:
    out = []
    for record in records:
        event = PredictionEvent.model_validate_json(record.value)
        indices, values, embedding = event.features.arrays()
        out.append(_checked(record, indices, values, embedding, (
            event.prediction_id, event.model_version, event.user_id, event.text, event.intent,
            max(event.probabilities.values(), default=0.0), event.user)))
    return out


def msgspec_per_record(records: Sequence[Record]) -> list[StoredPrediction | None]:
    out = []
    for record in records:
        event = PREDICTION_DECODER.decode(record.value)
        f = event.features
        out.append(_checked(record, np.frombuffer(f.indices, "<i4"), np.frombuffer(f.values, "<f4"),
                            None if f.embedding is None else np.frombuffer(f.embedding, "<f4"), (
            event.prediction_id, event.model_version, event.user_id, event.text, event.intent,
            max(event.probabilities.values(), default=0.0), event.user)))
    return out


def pydantic_feedback(records: Sequence[Record]) -> list[StoredFeedback]:
    out = []
    for r in records:
        e = FeedbackEvent.model_validate_json(r.value)
        out.append(StoredFeedback(e.event_id, e.prediction_id, e.label, r.ts, r.partition, r.offset, r.key, r.value))
    return out


def cpu_us_per_record(decode: Callable[[Sequence[Record]], list[Any]], records: list[Record], repeats: int
                      ) -> float:
    passes = []
    for _ in range(repeats):
        start = time.thread_time()
        for first in range(0, len(records), BATCH):
            decode(records[first:first + BATCH])
        passes.append((time.thread_time() - start) / len(records))
    return 1e6 * statistics.median(passes)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    args = parser.parse_args(argv)
    predictions, feedback = prediction_records(args.events, 0), feedback_records(args.events)
    # Every option gives the join store the same predictions.
    reference = pydantic_predictions(predictions[:BATCH])
    batched = decode_predictions(predictions[:BATCH], SPARSE_DIM, DENSE_DIM, 1 << 20)
    assert [p.indices.tobytes() for p in reference if p] == [p.indices.tobytes() for p in batched
                                                              if isinstance(p, StoredPrediction)]
    assert FEEDBACK_DECODER.decode(feedback[0].value).event_id == "f00000000"
    options: dict[str, dict[str, Callable[[Sequence[Record]], list[Any]]]] = {
        "prediction": {"pydantic (before)": pydantic_predictions, "msgspec, checks per record": msgspec_per_record,
                       "msgspec, checks per batch (the service)":
                           lambda batch: decode_predictions(batch, SPARSE_DIM, DENSE_DIM, 1 << 20)},
        "feedback": {"pydantic (before)": pydantic_feedback,
                     "msgspec (the service)": lambda batch: [decode_feedback(r, 4096) for r in batch]},
    }
    results: dict[str, dict[str, float]] = {}
    for kind, decoders in options.items():
        records = predictions if kind == "prediction" else feedback
        results[kind] = {name: cpu_us_per_record(decode, records, args.repeats) for name, decode in decoders.items()}
    table = Table(title=f"CPU per event decoded, median of {args.repeats} passes over {args.events:,} events "
                        f"(batches of {BATCH:,}); prediction events {len(predictions[0].value):,} bytes")
    for col in ("event", "decoder", "µs per event", "vs pydantic"):
        table.add_column(col, justify="left" if col in ("event", "decoder") else "right")
    for kind, timings in results.items():
        base = timings["pydantic (before)"]
        for name, us in timings.items():
            table.add_row(kind, name, f"{us:.1f}", f"{base / us:.2f}x faster" if us < base else "1.00x")
    console.print(table)
    info = {"hardware": f"{cpu_name()}, {os.cpu_count()} cores, CPython "
                        f"{platform.python_version()}, msgspec {msgspec.__version__}",
            "events": args.events, "repeats": args.repeats, "us_per_event": results}
    console.print(info["hardware"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2))
    console.print(f"results: {args.out}")
    return info


if __name__ == "__main__":
    main()
