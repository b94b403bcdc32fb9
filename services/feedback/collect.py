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
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from services.common.examples import ExamplesTable, rows_table
from services.feedback.join import Joined

log = logging.getLogger(__name__)
BATCH_FILE = re.compile(r"examples-(\d{12})\.parquet")


def example_row(joined: Joined, verdict: str, reason: str | None, decision: str | None,
                window_end: float) -> dict[str, Any]:
    p, f = joined.prediction, joined.feedback
    return {"event_id": f.event_id, "prediction_id": p.prediction_id, "text": p.text, "user_id": p.user_id,
            "user_features": p.user, "model_version": p.model_version, "predicted": p.intent,
            "confidence": p.confidence, "label": f.label, "verdict": verdict, "reason": reason,
            "window_decision": decision, "prediction_ts": p.ts, "feedback_ts": f.ts, "window_end": window_end,
            "partition": f.partition, "offset": f.offset}


@dataclass
class Collector:
    """Rows released since the last checkpoint, and checkpointed batches not yet in the table."""

    table: ExamplesTable | None
    writer: str  # the table's transaction id for this service's commits
    pending: list[dict[str, Any]] = field(default_factory=list)
    unsaved: dict[int, pa.Table] = field(default_factory=dict)  # checkpoint number -> rows
    rows_committed: int = 0
    failures: int = 0

    def keep(self, joined: Joined, verdict: str, reason: str | None, decision: str | None,
             window_end: float) -> None:
        self.pending.append(example_row(joined, verdict, reason, decision, window_end))

    def seal(self, number: int) -> dict[str, bytes]:
        """At checkpoint `number`: the pending rows become its batch; every batch not yet committed goes into
        the checkpoint as a file."""
        if self.pending:
            self.unsaved[number] = rows_table(self.pending)
            self.pending = []
        return {f"examples-{n:012d}.parquet": _parquet(rows) for n, rows in self.unsaved.items()}

    def restore(self, files: dict[str, bytes]) -> None:
        self.pending = []
        self.unsaved = {int(m.group(1)): pq.read_table(io.BytesIO(data)) for name, data in files.items()
                        if (m := BATCH_FILE.fullmatch(name))}

    def commit(self) -> bool:
        """Commit the checkpointed batches in order; a failure leaves them for the next try (every checkpoint
        carries them until then). True when nothing is left."""
        if self.table is None:
            self.unsaved.clear()
            return True
        for number in sorted(self.unsaved):
            try:
                done = self.table.append(self.unsaved[number], self.writer, number)
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
        return len(self.pending) + sum(rows.num_rows for rows in self.unsaved.values())


def _parquet(rows: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(rows, sink)
    return sink.getvalue()
