"""The examples table's storage format: Delta Lake (deltalake) against Apache Iceberg (pyiceberg), one run.

The feedback service commits the examples it judged once per checkpoint (about every 10 s), each batch under
the checkpoint's number so a replay after a crash is a no-op (services/common/examples.py). Both formats get
the same seeded rows, shaped like the service's (about 6 words of text, 64 intents, 200 users, mostly
"learned"), and the same operations:

- Delta: the product's own writer, `ExamplesTable` (it compacts every COMPACT_EVERY commits by itself).
- Iceberg: the closest equivalent with pyiceberg 0.12: a SqlCatalog on a SQLite file, the same schema, column
  statistics on the same columns, one append per checkpoint whose number is kept in the snapshot summary
  (a replay finds it in the latest snapshot and skips), `table.delete(EqualTo("user_id", ...))`, then
  `maintenance.expire_snapshots()`. pyiceberg 0.12 has no compaction and no orphan-file removal; in place of
  Delta's compaction it merges manifests and expires every snapshot but the current one every COMPACT_EVERY
  commits (`--plain-iceberg`: neither, as pyiceberg comes).

Measured, in that order:

1. append latency per checkpoint for batches of 10, 500 and 5,000 rows (a fresh table per size);
2. commit latency over `--commits` commits of 10-100 rows, the two formats interleaved commit by commit so both
   see the same load: median of the first and last 100; then Delta's `compact()` and a few more commits;
3. a replay of already-committed numbers: asserted a no-op, timed;
4. a read of the rows written since T, the last ~20% of them (a filter on written_at);
5. forgetting one user: time, and what of that user is still on disk (every file under the table's folder:
   decoded user_id values in data files, and raw bytes of the id in any file);
6. files and bytes on disk at the end.

Run: `nice -n 10 .venv/bin/python bench/examples_table.py [--quick] [--commits 1000] [--plain-iceberg]
[--out bench/results]`. Writes `examples_table.json` and `examples_table.png` to `--out`
(`examples_table-plain-iceberg.*` with `--plain-iceberg`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from machine import cpu_name  # bench/machine.py: bench scripts run as `python bench/<name>.py`
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import EqualTo, GreaterThanOrEqual
from pyiceberg.table.snapshots import ancestors_of
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common.events import WITHHELD_REASONS
from services.common.examples import COMPACT_EVERY, SCHEMA, STATS_COLUMNS, ExamplesTable, rows_table, sql_string

console = Console(width=shutil.get_terminal_size((160, 40)).columns)
T = TypeVar("T")

WRITER = "loopline-feedback"  # the feedback service's group id names its commits
COMMIT_KEY = f"loopline.commit.{WRITER}"  # Iceberg: the snapshot summary property holding the checkpoint number
T0 = 1_767_225_600.0  # 2026-01-01 UTC: made-up event times, commit n written at T0 + 10 s * n
CHECKPOINT_S = 10.0
USERS = 200
INTENTS = tuple(f"intent_{i:02d}" for i in range(64))
WORDS = ("turn", "on", "the", "wifi", "text", "mom", "i", "am", "late", "navigate", "to", "airport", "play", "some",
         "jazz", "set", "an", "alarm", "for", "seven", "what", "is", "weather", "take", "a", "photo", "call", "dad",
         "order", "pizza", "remind", "me", "tomorrow")
VERDICT_SHARES = {"learned": 0.85, "held_back": 0.08, "withheld": 0.03, "unknown_label": 0.03, "reviewed": 0.01}
VICTIM = "user-042"  # the user forgotten in phase 5
ICEBERG_PROPERTIES = {
    # Statistics on Delta's STATS_COLUMNS only: never user_id, whose bounds would outlive a deletion in manifests.
    "write.metadata.metrics.default": "none",
    **{f"write.metadata.metrics.column.{name}": "full" for name in STATS_COLUMNS.split(",")},
    # Drop old metadata.json files: each one is a full copy of the growing snapshot list.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}
# Iceberg's answer to ExamplesTable's compaction every COMPACT_EVERY commits (pyiceberg 0.12 cannot compact):
# merge manifests at commit (Java Iceberg's default; pyiceberg's is off) and expire all but the current snapshot.
# Without it every commit rewrites the whole snapshot list: the last 100 of 1,000 commits took 839 ms, not 83 ms.
ICEBERG_MAINTAINED = {"commit.manifest-merge.enabled": "true"}


@dataclass(frozen=True)
class Settings:
    commits: int
    append_sizes: tuple[int, ...]
    append_reps: int
    read_reps: int
    replay_reps: int
    after_compact: int  # commits after Delta's compact()
    seed: int
    iceberg_maintenance: bool  # merge manifests, expire snapshots every COMPACT_EVERY commits


# -- rows ---------------------------------------------------------------------------------------------


def make_rows(number: int, size: int, seed: int) -> pa.Table:
    """Checkpoint `number`'s batch: the same (number, size, seed) gives the same rows, as a replay does."""
    rng = np.random.default_rng([seed, number, size])
    written = T0 + CHECKPOINT_S * number
    verdicts = rng.choice(list(VERDICT_SHARES), size, p=list(VERDICT_SHARES.values()))
    predicted = rng.integers(0, len(INTENTS), size)
    label = np.where(rng.random(size) < 0.7, predicted, rng.integers(0, len(INTENTS), size))
    rows = []
    for i in range(size):
        verdict = str(verdicts[i])
        feedback_ts = written - float(rng.uniform(1, 30))
        rows.append({
            "event_id": f"fb-{number}-{i}", "prediction_id": f"pr-{number}-{i}",
            "text": " ".join(rng.choice(WORDS, 6)), "user_id": f"user-{int(rng.integers(0, USERS)):03d}",
            "user_features": {"locale": str(rng.choice(["en_US", "en_GB", "de_DE"])),
                              "device": str(rng.choice(["android", "ios", "web"]))},
            "model_version": "3+ftrl.17", "predicted": INTENTS[predicted[i]], "confidence": float(rng.random()),
            "label": INTENTS[label[i]], "verdict": verdict,
            "reason": str(rng.choice(WITHHELD_REASONS)) if verdict == "withheld" else None,
            "window_decision": "published", "prediction_ts": feedback_ts - float(rng.uniform(1, 10)),
            "feedback_ts": feedback_ts, "window_end": written - 1.0, "partition": i % 3,
            "offset": number * 1000 + i, "written_at": written})
    return rows_table(rows)


# -- the two formats ------------------------------------------------------------------------------------


class Store(Protocol):
    name: str
    folder: Path

    def append(self, rows: pa.Table, number: int) -> bool:
        """Commit `rows` as checkpoint `number`; False when the table holds that number already."""

    def read_since(self, ts: float) -> int:
        """Rows written at or after `ts` (read in full; the count is returned)."""

    def user_rows(self, user: str) -> int: ...

    def forget(self, user: str) -> None: ...


class DeltaStore:
    name = "delta"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.table = ExamplesTable(str(folder))

    def append(self, rows: pa.Table, number: int) -> bool:
        return self.table.append(rows, WRITER, number).version is not None

    def read_since(self, ts: float) -> int:
        return len(self.table.read(f"written_at >= {ts!r}"))

    def user_rows(self, user: str) -> int:
        return len(self.table.read(f"user_id = {sql_string(user)}"))

    def forget(self, user: str) -> None:
        self.table.forget_users([user])  # delete, then vacuum with no retention

    def compact(self) -> None:
        self.table.compact()


class IcebergStore:
    name = "iceberg"

    def __init__(self, folder: Path, maintain: bool) -> None:
        self.folder = folder
        self.maintain = maintain
        self._commits = 0
        folder.mkdir(parents=True, exist_ok=True)
        catalog = SqlCatalog("loopline", uri=f"sqlite:///{folder / 'catalog.db'}",
                             warehouse=(folder / "warehouse").as_uri())
        catalog.create_namespace_if_not_exists("loopline")
        self.table = catalog.create_table_if_not_exists("loopline.examples", schema=SCHEMA,
                                                        properties=iceberg_properties(maintain))

    def committed(self) -> int | None:
        """The highest checkpoint number in the table: the latest snapshot that carries one (a delete made
        elsewhere may not)."""
        self.table.refresh()  # another writer may have committed meanwhile, as Delta's update_incremental
        for snapshot in ancestors_of(self.table.current_snapshot(), self.table.metadata):
            mark = snapshot.summary.additional_properties.get(COMMIT_KEY) if snapshot.summary else None
            if mark is not None:
                return int(mark)
        return None

    def append(self, rows: pa.Table, number: int) -> bool:
        done = self.committed()
        if done is not None and done >= number:
            return False
        self.table.append(rows, snapshot_properties={COMMIT_KEY: str(number)})
        self._commits += 1
        if self.maintain and self._commits % COMPACT_EVERY == 0:  # inside the commit, as Delta's compaction
            self.expire()
        return True

    def read_since(self, ts: float) -> int:
        self.table.refresh()
        return self.table.scan(row_filter=GreaterThanOrEqual("written_at", ts)).to_arrow().num_rows

    def user_rows(self, user: str) -> int:
        self.table.refresh()
        return self.table.scan(row_filter=EqualTo("user_id", user)).to_arrow().num_rows

    def forget(self, user: str) -> None:
        done = self.committed()
        # The delete's snapshot carries the number on: once its ancestors expire, nothing else would.
        self.table.delete(EqualTo("user_id", user), snapshot_properties={} if done is None else
                          {COMMIT_KEY: str(done)})

    def expire(self) -> int:
        """Expire every snapshot but the current one; the number expired."""
        before = len(self.table.snapshots())
        self.table.maintenance.expire_snapshots().older_than(datetime.now(UTC)).commit()
        self.table.refresh()
        return before - len(self.table.snapshots())


def iceberg_properties(maintain: bool) -> dict[str, str]:
    return ICEBERG_PROPERTIES | (ICEBERG_MAINTAINED if maintain else {})


def both(work: Path, tag: str, s: Settings) -> list[Store]:
    return [DeltaStore(work / tag / "delta"), IcebergStore(work / tag / "iceberg", s.iceberg_maintenance)]


# -- measuring ------------------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """fn()'s result and its wall time in ms."""
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def spread(ms: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2),
            "n": len(ms)}


def disk(folder: Path) -> dict[str, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def traces(folder: Path, user: str) -> dict[str, Any]:
    """What of `user` is on disk under `folder`: rows in data files (decoded user_id values: compressed pages
    can hide raw bytes) and any file whose raw bytes hold the id (logs, manifests, the catalog)."""
    needle, rows, data_files, hits = user.encode(), 0, 0, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if needle in path.read_bytes():
            hits.append(str(path.relative_to(folder)))
        if path.suffix == ".parquet" and "user_id" in pq.read_schema(path).names:
            ids = pq.read_table(path, columns=["user_id"])["user_id"].cast(pa.string())  # Delta's rewrites: string_view
            found = pc.sum(pc.equal(ids, user)).as_py() or 0
            rows, data_files = rows + found, data_files + (found > 0)
    return {"user_rows_in_data_files": rows, "data_files_with_user_rows": data_files,
            "files_with_user_id_bytes": len(hits), "files_with_user_id_bytes_first": hits[:6]}


def bench_appends(work: Path, s: Settings, bar: Progress) -> dict[str, dict[str, Any]]:
    """Phase 1: append latency per batch size, a fresh table per size."""
    out: dict[str, dict[str, Any]] = {"delta": {}, "iceberg": {}}
    task = bar.add_task("appends by batch size", total=len(s.append_sizes) * s.append_reps)
    for size in s.append_sizes:
        stores = both(work, f"append-{size}", s)
        batches = [make_rows(n, size, s.seed) for n in range(s.append_reps + 1)]
        for store in stores:
            assert store.append(batches[0], 0)  # the first commit creates the table: not timed
        times: dict[str, list[float]] = {store.name: [] for store in stores}
        for n in range(1, s.append_reps + 1):
            for store in stores:
                done, ms = timed(partial(store.append, batches[n], n))
                assert done
                times[store.name].append(ms)
            bar.advance(task)
        for name, took in times.items():
            out[name][str(size)] = spread(took)
    return out


def bench_commits(stores: list[Store], s: Settings, bar: Progress) -> tuple[dict[str, list[float]], list[int]]:
    """Phase 2: `s.commits` checkpoints of 10-100 rows; per-commit latency for each format."""
    sizes = [int(x) for x in np.random.default_rng([s.seed, 2]).integers(10, 101, s.commits)]
    times: dict[str, list[float]] = {store.name: [] for store in stores}
    task = bar.add_task(f"{s.commits} commits of 10-100 rows, interleaved", total=s.commits)
    for n, size in enumerate(sizes):
        rows = make_rows(n, size, s.seed)
        for store in stores if n % 2 == 0 else stores[::-1]:  # alternate who goes first: warm caches are shared
            done, ms = timed(partial(store.append, rows, n))
            assert done, f"{store.name}: commit {n} was skipped"
            times[store.name].append(ms)
        bar.advance(task)
    return times, sizes


def bench_replay(store: Store, numbers: Iterable[int], s: Settings) -> dict[str, Any]:
    """Phase 3: commit numbers the table holds are skipped; the skip is timed."""
    ms = []
    for number in numbers:
        done, took = timed(partial(store.append, make_rows(number, 10, s.seed), number))
        assert not done, f"{store.name}: replay of commit {number} appended rows"
        ms.append(took)
    return {"noop": True, **spread(ms)}


def bench_read(store: Store, since: float, expected: int, reps: int) -> dict[str, Any]:
    """Phase 4: the rows written since `since`, read `reps` times."""
    ms = []
    for _ in range(reps):
        rows, took = timed(lambda: store.read_since(since))
        assert rows == expected, f"{store.name}: read {rows} rows since T, expected {expected}"
        ms.append(took)
    return {"rows": expected, **spread(ms)}


def bench_forget(store: Store, user: str) -> dict[str, Any]:
    """Phase 5: forget `user`; what is left of them on disk, before and (Iceberg) after expiring snapshots."""
    before = store.user_rows(user)
    _, ms = timed(lambda: store.forget(user))
    out: dict[str, Any] = {"user": user, "rows": before, "seconds": round(ms / 1000, 2),
                           "after_delete": traces(store.folder, user)}
    if isinstance(store, IcebergStore):
        expired, ms = timed(store.expire)
        out.update(expire_snapshots_s=round(ms / 1000, 2), snapshots_expired=expired,
                   after_expire_snapshots=traces(store.folder, user))
    assert store.user_rows(user) == 0, f"{store.name}: the user's rows are still read"
    return out


# -- the run --------------------------------------------------------------------------------------------


def summarize_commits(ms: list[float], sizes: list[int]) -> dict[str, Any]:
    return {"first_100_median_ms": round(statistics.median(ms[:100]), 2),
            "last_100_median_ms": round(statistics.median(ms[-100:]), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "max_ms": round(max(ms), 2),
            "total_s": round(sum(ms) / 1000, 1), "rows": sum(sizes)}


def bench_grown(store: Store, sizes: list[int], s: Settings) -> dict[str, Any]:
    """Phases 3 and 4 on a table that took `s.commits` commits of `sizes` rows."""
    assert store.read_since(0.0) == sum(sizes), f"{store.name}: rows lost or doubled"
    last, since = s.commits - 1, int(0.8 * s.commits)  # since: the last ~20% of the rows
    return {"disk_after_commits": disk(store.folder),
            "replay": bench_replay(store, [last] * s.replay_reps + [0, last // 2], s),
            "read_since": {"since_commit": since,
                           **bench_read(store, T0 + CHECKPOINT_S * since, sum(sizes[since:]), s.read_reps)}}


def bench_after_compact(stores: list[Store], delta: DeltaStore, s: Settings, bar: Progress) -> dict[str, Any]:
    """Delta's compact(), then more commits to both formats (the tables stay equal for phase 5)."""
    _, compact_ms = timed(delta.compact)
    task = bar.add_task(f"{s.after_compact} more commits (Delta after compact())", total=s.after_compact)
    times: dict[str, list[float]] = {store.name: [] for store in stores}
    for n in range(s.commits, s.commits + s.after_compact):
        rows = make_rows(n, 50, s.seed)
        for store in stores:
            times[store.name].append(timed(partial(store.append, rows, n))[1])
        bar.advance(task)
    return {"delta": {"compact_s": round(compact_ms / 1000, 2), **spread(times["delta"])},
            "iceberg": {"compact_s": None, **spread(times["iceberg"])}}


def forget_and_replay(store: Store, last: int, s: Settings) -> dict[str, Any]:
    """Phase 5, then check the table still skips its last commit number and takes the next."""
    out = bench_forget(store, VICTIM)
    assert not store.append(make_rows(last, 50, s.seed), last), f"{store.name}: replay after a delete appended"
    assert store.append(make_rows(last + 1, 10, s.seed), last + 1), f"{store.name}: the next commit was skipped"
    return {**out, "replay_noop_after": True}


def run(s: Settings, work: Path) -> dict[str, Any]:
    formats: dict[str, dict[str, Any]] = {"delta": {}, "iceberg": {}}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        for name, by_size in bench_appends(work, s, bar).items():
            formats[name]["append"] = by_size

        stores = both(work, "commits", s)
        delta = stores[0]
        assert isinstance(delta, DeltaStore)
        commit_ms, sizes = bench_commits(stores, s, bar)
        task = bar.add_task("replays, reads", total=len(stores))
        for store in stores:
            formats[store.name]["commits"] = summarize_commits(commit_ms[store.name], sizes)
            formats[store.name] |= bench_grown(store, sizes, s)
            bar.advance(task)

        for name, after in bench_after_compact(stores, delta, s, bar).items():
            formats[name]["after_compact"] = after

        task = bar.add_task(f"forget {VICTIM}", total=len(stores))
        for store in stores:
            formats[store.name]["forget"] = forget_and_replay(store, s.commits + s.after_compact - 1, s)
            formats[store.name]["disk_end"] = disk(store.folder)
            bar.advance(task)
    return {"formats": formats, "commit_ms": {k: [round(v, 3) for v in ms] for k, ms in commit_ms.items()}}


def ratios(formats: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Iceberg / Delta for every median and size."""
    d, i = formats["delta"], formats["iceberg"]
    pairs = {f"append_{size}_rows_ms": (d["append"][size]["median_ms"], i["append"][size]["median_ms"])
             for size in d["append"]}
    pairs |= {
        "commit_first_100_ms": (d["commits"]["first_100_median_ms"], i["commits"]["first_100_median_ms"]),
        "commit_last_100_ms": (d["commits"]["last_100_median_ms"], i["commits"]["last_100_median_ms"]),
        "commit_after_compact_ms": (d["after_compact"]["median_ms"], i["after_compact"]["median_ms"]),
        "commits_total_s": (d["commits"]["total_s"], i["commits"]["total_s"]),
        "replay_noop_ms": (d["replay"]["median_ms"], i["replay"]["median_ms"]),
        "read_since_ms": (d["read_since"]["median_ms"], i["read_since"]["median_ms"]),
        "forget_user_s": (d["forget"]["seconds"], i["forget"]["seconds"]),
        "disk_end_bytes": (d["disk_end"]["bytes"], i["disk_end"]["bytes"]),
        "disk_end_files": (d["disk_end"]["files"], i["disk_end"]["files"]),
    }
    return {k: round(b / a, 2) if a else None for k, (a, b) in pairs.items()}


def versions() -> dict[str, str]:
    return {name: version(name) for name in ("deltalake", "pyiceberg", "pyarrow", "sqlalchemy", "numpy")} | {
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version}


# -- report ---------------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> None:
    d, i, r = result["formats"]["delta"], result["formats"]["iceberg"], result["ratios"]
    table = Table(title=f"examples table: Delta Lake vs Iceberg ({result['config']['commits']} commits)")
    for col in ("measure", "Delta (ExamplesTable)", iceberg_label(result["config"]), "Iceberg / Delta"):
        table.add_column(col, justify="left" if col == "measure" else "right")

    def row(label: str, delta: str, iceberg: str, ratio: str | None = None) -> None:
        table.add_row(label, delta, iceberg, "" if ratio is None else _ratio(r.get(ratio)))

    for size in d["append"]:
        row(f"append {int(size):,} rows, median ms", _ms(d["append"][size]), _ms(i["append"][size]),
            f"append_{size}_rows_ms")
    c_d, c_i = d["commits"], i["commits"]
    row("commit 10-100 rows: first 100, median ms", f"{c_d['first_100_median_ms']:.1f}",
        f"{c_i['first_100_median_ms']:.1f}", "commit_first_100_ms")
    row("commit 10-100 rows: last 100, median ms", f"{c_d['last_100_median_ms']:.1f}",
        f"{c_i['last_100_median_ms']:.1f}", "commit_last_100_ms")
    row("  p95 / max over all commits, ms", f"{c_d['p95_ms']:.0f} / {c_d['max_ms']:.0f}",
        f"{c_i['p95_ms']:.0f} / {c_i['max_ms']:.0f}")
    row("  all commits, total s", f"{c_d['total_s']:.1f}", f"{c_i['total_s']:.1f}", "commits_total_s")
    row("compact(), s", f"{d['after_compact']['compact_s']:.2f}", "none in pyiceberg 0.12")
    if result["config"]["iceberg_maintenance"]:
        row("  (in its place, every 100 commits)", "", "merged manifests, expired snapshots")
    row("commit 50 rows after that, median ms", _ms(d["after_compact"]), _ms(i["after_compact"]),
        "commit_after_compact_ms")
    row("replay of a committed number: no-op, median ms", _noop(d["replay"]), _noop(i["replay"]), "replay_noop_ms")
    row(f"read rows since T ({d['read_since']['rows']:,} rows), median ms", _ms(d["read_since"]),
        _ms(i["read_since"]), "read_since_ms")
    f_d, f_i = d["forget"], i["forget"]
    row(f"forget one user ({f_d['rows']} rows), s", f"{f_d['seconds']:.2f} (delete + vacuum)",
        f"{f_i['seconds']:.2f} (delete)", "forget_user_s")
    row("  user rows left in data files after", _left(f_d["after_delete"]), _left(f_i["after_delete"]))
    row("  ... after expire_snapshots()", "", f"{_left(f_i['after_expire_snapshots'])} "
        f"({f_i['expire_snapshots_s']:.2f} s, {f_i['snapshots_expired']} snapshots)")
    row("  files holding the id's bytes (any kind)", _files(f_d["after_delete"]),
        _files(f_i["after_expire_snapshots"]))
    row("  replay still a no-op after the delete", _yes(f_d["replay_noop_after"]), _yes(f_i["replay_noop_after"]))
    row("disk at the end: files", f"{d['disk_end']['files']:,}", f"{i['disk_end']['files']:,}", "disk_end_files")
    row("disk at the end: MB", _mb(d["disk_end"]), _mb(i["disk_end"]), "disk_end_bytes")
    row("  (after the commits, before compact/delete)", f"{d['disk_after_commits']['files']:,} files, "
        f"{_mb(d['disk_after_commits'])} MB", f"{i['disk_after_commits']['files']:,} files, "
        f"{_mb(i['disk_after_commits'])} MB")
    console.print(table)
    console.print(f"hardware: {result['hardware']}; nice {result['nice']}; versions "
                  f"{', '.join(f'{k} {v}' for k, v in result['versions'].items())}; wall {result['wall_s']:.0f} s; "
                  f"load average before/after {result['load_average']}", highlight=False)


def _ms(x: dict[str, Any]) -> str:
    return f"{x['median_ms']:.1f} ({x['min_ms']:.1f}-{x['max_ms']:.1f})"


def _noop(x: dict[str, Any]) -> str:
    return f"{_yes(x['noop'])}, {x['median_ms']:.2f}"


def _left(t: dict[str, Any]) -> str:
    return f"{t['user_rows_in_data_files']} rows in {t['data_files_with_user_rows']} files"


def _files(t: dict[str, Any]) -> str:
    first = ", ".join(p.rsplit("/", 1)[-1][:28] for p in t["files_with_user_id_bytes_first"][:2])
    return f"{t['files_with_user_id_bytes']}" + (f" ({first})" if first else "")


def _mb(x: dict[str, int]) -> str:
    return f"{x['bytes'] / 1e6:.1f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _yes(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def iceberg_label(config: dict[str, Any]) -> str:
    upkeep = f"expires snapshots every {COMPACT_EVERY}" if config["iceberg_maintenance"] else "no maintenance"
    return f"Iceberg (pyiceberg, SqlCatalog; {upkeep})"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for (name, ms), color in zip(result["commit_ms"].items(), ("tab:blue", "tab:orange"), strict=True):
        label = "Delta (ExamplesTable)" if name == "delta" else iceberg_label(result["config"])
        ax.plot(range(len(ms)), ms, color=color, linewidth=0.5, alpha=0.35)
        window = min(25, len(ms))  # a running median: Delta's compactions are single spikes
        rolling = [statistics.median(ms[max(0, k - window + 1):k + 1]) for k in range(len(ms))]
        ax.plot(range(len(ms)), rolling, color=color, linewidth=1.8, label=f"{label}, running median of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("commit number (one per feedback-service checkpoint, 10-100 rows each)")
    ax.set_ylabel("commit latency, ms (log)")
    ax.set_title(f"examples table: commit latency as the table grows ({result['config']['commits']} commits; Delta "
                 f"compacts every {COMPACT_EVERY})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def settings(args: argparse.Namespace) -> Settings:
    reps = 3 if args.quick else 9
    return Settings(commits=args.commits or (100 if args.quick else 1000), append_sizes=(10, 500, 5000),
                    append_reps=reps, read_reps=3 if args.quick else 5, replay_reps=reps,
                    after_compact=5 if args.quick else 20, seed=args.seed, iceberg_maintenance=not args.plain_iceberg)


def run_examples_table(args: argparse.Namespace) -> dict[str, Any]:
    """Measure, print the table, write examples_table.json and .png to `args.out` (-plain-iceberg with that)."""
    s = settings(args)
    if s.commits < 100:
        raise SystemExit("--commits must be at least 100 (the first and last 100 are compared)")
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    hardware = f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    console.rule(f"[bold]examples table: Delta Lake vs Iceberg, {s.commits} commits")
    console.print(f"hardware: {hardware}", highlight=False)
    with tempfile.TemporaryDirectory(prefix="loopline-extable-") as tmp:
        measured = run(s, Path(tmp))
    result: dict[str, Any] = {
        "benchmark": "examples table: Delta Lake vs Iceberg (bench/examples_table.py)",
        "quick": args.quick, "hardware": hardware, "versions": versions(), "nice": os.nice(0),
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "config": {**s.__dict__, "append_sizes": list(s.append_sizes), "commit_rows": [10, 100], "users": USERS,
                   "intents": len(INTENTS), "verdict_shares": VERDICT_SHARES, "writer": WRITER,
                   "delta_compact_every": COMPACT_EVERY, "delta_stats_columns": STATS_COLUMNS,
                   "iceberg_properties": iceberg_properties(s.iceberg_maintenance), "forgotten_user": VICTIM},
        "formats": measured["formats"],
        "ratios": ratios(measured["formats"]),
        "commit_ms": measured["commit_ms"],
    }
    stem = "examples_table" + ("" if s.iceberg_maintenance else "-plain-iceberg")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / f"{stem}.png")
    report(result)
    console.print(f"wrote {args.out / stem}.json and .png", highlight=False)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 commits, few repetitions")
    parser.add_argument("--commits", type=int, default=None, help="commits of 10-100 rows (default 1000; quick 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain-iceberg", action="store_true",
                        help="Iceberg without maintenance (no manifest merge, no snapshot expiry); writes "
                             "examples_table-plain-iceberg.json and .png")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_examples_table(parse_args(argv))


if __name__ == "__main__":
    main()
