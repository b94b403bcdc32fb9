"""What the feedback service keeps of every example it judged: rows for the examples table, exactly once.

Rows are made when a window is released (learned, held back, withheld, or with a label the live model
lacks). They wait in `pending` until the next checkpoint, which stores them as one batch numbered
like the checkpoint; after the checkpoint is on disk the batch is committed to the table under that
number. A crash before the checkpoint replays the events and makes the rows again; a crash after it
finds the batch in the checkpoint and commits it at start, and the table skips a number it holds.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from services.common.examples import SCHEMA, ExamplesTable, user_features_json
from services.feedback.join import Joined

log = logging.getLogger(__name__)
BATCH_FILE = re.compile(r"examples-(\d{12})\.parquet")


class Kept(NamedTuple):
    """One judged example, as released: what its row is made of at the next checkpoint."""

    joined: Joined
    verdict: str
    reason: str | None
    decision: str | None
    window_end: float


def rows_of(kept: list[Kept], written_at: float) -> pa.Table:
    """The examples table's rows for these examples, built column by column (a row dict each cost more
    than a tenth of the service's CPU per event)."""
    p = [k.joined.prediction for k in kept]
    f = [k.joined.feedback for k in kept]
    columns: dict[str, list[Any]] = {
        "event_id": [x.event_id for x in f], "prediction_id": [x.prediction_id for x in p],
        "text": [x.text for x in p], "user_id": [x.user_id for x in p],
        "user_features": [None if x.user is None else user_features_json(x.user) for x in p],
        "model_version": [x.model_version for x in p], "predicted": [x.intent for x in p],
        "confidence": [x.confidence for x in p], "label": [x.label for x in f],
        "verdict": [k.verdict for k in kept], "reason": [k.reason for k in kept],
        "window_decision": [k.decision for k in kept], "prediction_ts": [x.ts for x in p],
        "feedback_ts": [x.ts for x in f], "window_end": [k.window_end for k in kept],
        "partition": [x.partition for x in f], "offset": [x.offset for x in f],
        "written_at": [written_at] * len(kept),
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


class Batch:
    """One checkpoint's examples: built into table rows once, by whichever comes first, the checkpoint writer
    (on its thread, so the loop goes on) or the commit."""

    def __init__(self, kept: list[Kept] | None = None, written_at: float = 0.0, rows: pa.Table | None = None
                 ) -> None:
        self._kept, self._written_at, self._rows = kept or [], written_at, rows
        self.size = len(self._kept) if rows is None else rows.num_rows
        self._lock = threading.Lock()

    def rows(self) -> pa.Table:
        with self._lock:
            if self._rows is None:
                self._rows, self._kept = rows_of(self._kept, self._written_at), []
            return self._rows

    def parquet(self) -> bytes:
        return _parquet(self.rows())


@dataclass
class Collector:
    """Rows released since the last checkpoint, and checkpointed batches not yet in the table."""

    table: ExamplesTable | None
    writer: str  # the table's transaction id for this service's commits
    pending: list[Kept] = field(default_factory=list)
    unsaved: dict[int, Batch] = field(default_factory=dict)  # checkpoint number -> its examples
    rows_committed: int = 0
    failures: int = 0

    def keep(self, joined: Joined, verdict: str, reason: str | None, decision: str | None,
             window_end: float) -> None:
        self.pending.append(Kept(joined, verdict, reason, decision, window_end))

    def seal(self, number: int) -> dict[str, Callable[[], bytes]]:
        """At checkpoint `number`: the pending rows become its batch; every batch not yet committed goes into
        the checkpoint as a file."""
        if self.pending:
            self.unsaved[number] = Batch(self.pending, time.time())
            self.pending = []
        return {f"examples-{n:012d}.parquet": batch.parquet for n, batch in self.unsaved.items()}

    def restore(self, files: dict[str, bytes]) -> None:
        self.pending = []
        self.unsaved = {int(m.group(1)): Batch(rows=pq.read_table(io.BytesIO(data))) for name, data in files.items()
                        if (m := BATCH_FILE.fullmatch(name))}

    def commit(self) -> bool:
        """Commit the checkpointed batches in order; a failure leaves them for the next try (every checkpoint
        carries them until then). True when nothing is left."""
        if self.table is None:
            self.unsaved.clear()
            return True
        for number in sorted(self.unsaved):
            try:
                done = self.table.append(self.unsaved[number].rows(), self.writer, number)
            except Exception as exc:  # the table's store is down: the batch stays in the checkpoints
                self.failures += 1
                log.warning("examples table %s: commit %d failed (%s); retried after the next checkpoint",
                            self.table.uri, number, exc)
                return False
            self.rows_committed += done.rows
            del self.unsaved[number]
        return True

    @property
    def waiting(self) -> int:
        return len(self.pending) + sum(batch.size for batch in list(self.unsaved.values()))


def _parquet(rows: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(rows, sink)
    return sink.getvalue()
