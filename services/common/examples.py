"""The examples table: every example the feedback service judged, kept exactly once, for retrains and audits.

A Delta Lake table (`deltalake`): files in the state folder by default, the same table on S3 or
MinIO at scale (an `s3://` URI with storage options). Delta was chosen over Iceberg by measurement
(README, "The examples table"): its appends stay cheap, a writer's commit carries an application
transaction id that makes a replayed commit a no-op, and rows can be deleted and their files vacuumed,
which retention and forgetting a user need.

Exactly once: the feedback service commits the rows released since its last checkpoint under that
checkpoint's number (`append(rows, writer, number)`); a commit whose number the table already holds
for the writer is skipped, so a replay after a crash never doubles a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import pandas as pd
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

log = logging.getLogger(__name__)

# What became of an example. "withheld" rows name their reason (untrusted_user, repeated_correction,
# stale_model); "unknown_label" rows carry a label the live model lacks: the next retrain may learn it.
VERDICTS = ("learned", "held_back", "withheld", "unknown_label", "reviewed")
TRAINABLE = ("learned", "held_back", "unknown_label", "reviewed")

SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),  # the feedback event's id (a reviewed row's own id)
    pa.field("prediction_id", pa.string()),
    pa.field("text", pa.string(), nullable=False),
    pa.field("user_id", pa.string()),
    pa.field("user_features", pa.string()),  # JSON: the user features the model was given
    pa.field("model_version", pa.string()),  # the version that made the prediction, e.g. "3+ftrl.17"
    pa.field("predicted", pa.string()),
    pa.field("confidence", pa.float64()),
    pa.field("label", pa.string(), nullable=False),
    pa.field("verdict", pa.string(), nullable=False),
    pa.field("reason", pa.string()),  # why a row was withheld or not learned online
    pa.field("window_decision", pa.string()),  # the gate's decision on the window: published, rejected, ...
    pa.field("prediction_ts", pa.float64()),
    pa.field("feedback_ts", pa.float64(), nullable=False),  # event time, seconds since the epoch
    pa.field("window_end", pa.float64()),
    pa.field("partition", pa.int32()),  # the feedback event's partition and offset
    pa.field("offset", pa.int64()),
    pa.field("written_at", pa.float64(), nullable=False),  # wall time the row was released
])
COLUMNS = tuple(SCHEMA.names)
# Statistics on these let a read by time or verdict skip whole files.
STATS_COLUMNS = "feedback_ts,written_at,verdict,label"  # never user_id: the log outlives a deletion
DELETE_CHUNK = 1_000  # event ids per delete statement
COMPACT_EVERY = 100  # commits between compactions: many small files make every read and append slower


class ExamplesError(Exception):
    """The table cannot be read or written (bad URI, damaged table, a bad import file)."""


@dataclass(frozen=True)
class Committed:
    rows: int
    version: int | None  # the table version the commit made; None when it was already there


class ExamplesTable:
    """One Delta table of judged examples at `uri` (a folder path or an s3:// URI)."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        self._table: DeltaTable | None = None
        self._commits = 0

    # -- writing ---------------------------------------------------------------------------------

    def table(self, create: bool = False) -> DeltaTable | None:
        """The table, opened once; None if it does not exist yet (created with `create`)."""
        if self._table is not None:
            return self._table
        try:
            self._table = DeltaTable(self.uri, storage_options=self.storage_options or None)
        except TableNotFoundError:
            if not create:
                return None
            self._table = DeltaTable.create(
                self.uri, schema=SCHEMA, mode="ignore", name="examples",
                description="examples the loopline feedback service judged",
                configuration={"delta.dataSkippingStatsColumns": STATS_COLUMNS},
                storage_options=self.storage_options or None)
        return self._table

    def committed(self, writer: str) -> int | None:
        """The highest commit number `writer` has in the table."""
        table = self.table()
        return None if table is None else table.transaction_version(writer)

    def append(self, rows: pa.Table, writer: str, number: int) -> Committed:
        """Append `rows` as `writer`'s commit `number`, unless the table holds that number (or a later one)
        already: a replay of the same commit is a no-op."""
        table = self.table(create=True)
        assert table is not None
        table.update_incremental()  # another writer (or `loopline examples`) may have committed meanwhile
        done = table.transaction_version(writer)
        if done is not None and done >= number:
            return Committed(0, None)
        write_deltalake(table, conform(rows), mode="append", commit_properties=CommitProperties(
            app_transactions=[Transaction(writer, number)], custom_metadata={"loopline.commit": str(number)}))
        self._commits += 1
        if self._commits % COMPACT_EVERY == 0:
            self.compact()
        return Committed(rows.num_rows, table.version())

    def compact(self) -> None:
        """Merge small files and write a log checkpoint: appends and reads stay fast after thousands of commits."""
        table = self.table()
        if table is None:
            return
        table.optimize.compact()
        table.create_checkpoint()
        table.vacuum(dry_run=False)  # files compacted away a week ago: the table's default retention
        table.cleanup_metadata()
        self._table = None  # a long-lived handle grows with the log it has read

    def delete(self, predicate: str, vacuum: bool = True) -> int:
        """Delete the rows matching a SQL `predicate` and remove the files that held them."""
        table = self.table()
        if table is None:
            return 0
        table.update_incremental()
        deleted = int(table.delete(predicate).get("num_deleted_rows", 0))
        if deleted and vacuum:
            self.vacuum()
        return deleted

    def vacuum(self) -> None:
        """Remove files no version needs now. Deleted rows stay in the older files until then: forgetting means
        gone from disk (time travel to before a delete ends with it)."""
        table = self.table()
        if table is not None:
            table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)

    def forget_users(self, users: Iterable[str]) -> int:
        """Delete every row of these users. The delete names the rows by event id: Delta keeps a delete's
        predicate in its log, and the log must not keep the ids of users it forgot."""
        names = sorted(set(users))
        if not names or self.table() is None:
            return 0
        found = self.read(f"user_id IN ({', '.join(sql_string(u) for u in names)})")  # a read: not logged
        ids = sorted(set(found["event_id"]))
        deleted = 0
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[start:start + DELETE_CHUNK]
            deleted += self.delete(f"event_id IN ({', '.join(sql_string(e) for e in chunk)})", vacuum=False)
        self.vacuum()
        return deleted

    def expire(self, before_ts: float) -> int:
        """Retention: delete rows whose feedback is older than `before_ts`."""
        return self.delete(f"feedback_ts < {float(before_ts)!r}")

    # -- reading ---------------------------------------------------------------------------------

    def version(self) -> int | None:
        table = self.table()
        if table is None:
            return None
        table.update_incremental()
        return table.version()

    def read(self, where: str | None = None, version: int | None = None) -> pd.DataFrame:
        """Rows as a DataFrame (every column of SCHEMA), optionally filtered by a SQL `where` clause and as of a
        table `version`."""
        table = self.table()
        if table is None:
            return pd.DataFrame({name: pd.Series(dtype=_pandas_dtype(f.type)) for name, f in
                                 zip(SCHEMA.names, SCHEMA, strict=True)})
        if version is not None:
            table = DeltaTable(self.uri, version=version, storage_options=self.storage_options or None)
        else:
            table.update_incremental()
        sql = "SELECT * FROM examples" + (f" WHERE {where}" if where else "")
        # SQL rather than a filtered pyarrow read: after a delete, deltalake's pyarrow path fails on string_view.
        found = pa.table(QueryBuilder().register("examples", table).execute(sql).read_all())
        return conform(found).to_pandas()


def conform(rows: pa.Table) -> pa.Table:
    """`rows` with exactly SCHEMA's columns and types (string views and the like cast back)."""
    missing = [name for name in SCHEMA.names if name not in rows.column_names]
    if missing:
        raise ExamplesError(f"examples rows lack column(s) {', '.join(missing)}")
    return pa.table([rows.column(name).cast(field.type) for name, field in zip(SCHEMA.names, SCHEMA, strict=True)],
                    schema=SCHEMA)


def user_features_json(user: Mapping[str, Any]) -> str:
    """The `user_features` column's text: the features as JSON, keys sorted."""
    return msgspec.json.encode(user, order="sorted").decode()


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Row dicts (keys as SCHEMA) as a table; `user_features` may be given as a dict."""
    written_at = time.time()
    prepared = [{**row, "user_features": user_features_json(row["user_features"])
                 if isinstance(row.get("user_features"), dict) else row.get("user_features"),
                 "written_at": row.get("written_at", written_at)} for row in rows]
    return pa.Table.from_pylist(prepared, schema=SCHEMA)


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pandas_dtype(kind: pa.DataType) -> str:
    if pa.types.is_floating(kind):
        return "float64"
    if pa.types.is_integer(kind):
        return "Int64"
    return "object"
