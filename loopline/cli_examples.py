"""`loopline examples`: what the loop collected, for the people who label, audit and retrain."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from loopline.ui import console, fail

if TYPE_CHECKING:
    import pandas as pd

    from services.common.examples import ExamplesTable

examples_app = typer.Typer(help="The examples the feedback service judged: counts, export, reviewed labels, "
                                "forgetting a user.", invoke_without_command=True)

# An export is a dataset `loopline train --data` reads (text,label,user_id,ts), followed by the audit columns.
EXPORT_COLUMNS = ("text", "label", "user_id", "ts", "event_id", "prediction_id", "predicted", "confidence",
                  "verdict", "reason", "model_version", "window_decision")
IMPORT_WRITER = "loopline-examples-import"


def _table() -> ExamplesTable:
    from services.common.examples import ExamplesTable
    from services.common.settings import CommonSettings

    try:
        return ExamplesTable(CommonSettings().examples_location)
    except ValueError as exc:
        fail(f"bad settings: {exc}")


def _read(table: ExamplesTable, where: str | None = None) -> pd.DataFrame:
    try:
        return table.read(where)
    except Exception as exc:  # a damaged table or an unreachable store: say which and why
        fail(f"cannot read the examples table at {table.uri}: {exc}")


@examples_app.callback()
def show(
    ctx: typer.Context,
    days: int = typer.Option(14, min=1, help="Days shown in the per-day table."),
) -> None:
    """Counts per label and verdict, and per day."""
    if ctx.invoked_subcommand is not None:
        return
    table = _table()
    frame = _read(table)
    if frame.empty:
        console.print(f"no examples yet in {table.uri}: the feedback service adds every example it judges")
        return
    console.print(f"{len(frame):,} examples in {table.uri} (table version {table.version()})", highlight=False)
    by_label = frame.pivot_table(index="label", columns="verdict", values="event_id", aggfunc="count", fill_value=0)
    label_table = Table("label", *by_label.columns, "total", title="per label")
    for label, counts in by_label.assign(total=by_label.sum(axis=1)).sort_values("total", ascending=False).iterrows():
        label_table.add_row(str(label), *(f"{int(n):,}" for n in counts))
    console.print(label_table)
    import pandas as pd

    day = pd.to_datetime(frame["feedback_ts"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    by_day = frame.assign(day=day).pivot_table(index="day", columns="verdict", values="event_id", aggfunc="count",
                                               fill_value=0).sort_index().tail(days)
    day_table = Table("day (UTC)", *by_day.columns, title=f"per day, last {len(by_day)}")
    for name, counts in by_day.iterrows():
        day_table.add_row(str(name), *(f"{int(n):,}" for n in counts))
    console.print(day_table)


@examples_app.command("export")
def export(
    out: Path = typer.Argument(..., help="A .csv or .parquet file."),
    verdict: list[str] = typer.Option([], help="Only rows with this verdict (repeatable)."),
    since: str | None = typer.Option(None, help="Only feedback at or after this time (ISO 8601, UTC if no zone)."),
) -> None:
    """Export examples for labeling or audit; the file is also a dataset `loopline train --data` reads."""
    from services.common.examples import VERDICTS, sql_string

    if out.suffix.lower() not in (".csv", ".parquet"):
        fail(f"{out}: expected a .csv or .parquet file name")
    unknown = sorted(set(verdict) - set(VERDICTS))
    if unknown:
        fail(f"unknown verdict(s) {', '.join(unknown)}; verdicts are {', '.join(VERDICTS)}")
    where = []
    if verdict:
        where.append(f"verdict IN ({', '.join(sql_string(v) for v in verdict)})")
    if since is not None:
        where.append(f"feedback_ts >= {_timestamp(since)!r}")
    table = _table()
    frame = _read(table, " AND ".join(where) or None)
    import pandas as pd

    frame = frame.assign(ts=pd.to_datetime(frame["feedback_ts"], unit="s", utc=True)).sort_values("ts")
    frame = frame.loc[:, list(EXPORT_COLUMNS)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        frame.assign(ts=frame["ts"].map(lambda t: t.isoformat())).to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    console.print(f"wrote {len(frame):,} examples to {out}", highlight=False)


@examples_app.command("import")
def import_reviewed(
    source: str = typer.Argument(..., help="A reviewed file (.csv, .parquet or .jsonl) with text,label and "
                                           "optionally user_id, ts and event_id (as exported)."),
) -> None:
    """Import reviewed labels as rows with verdict `reviewed`: a later label for an exported event_id wins at
    the next retrain. Importing the same file twice adds nothing."""
    import pandas as pd

    from models.data import DatasetError, load_dataset
    from services.common.examples import rows_table

    try:
        frame = load_dataset(source)
    except DatasetError as exc:
        fail(str(exc))
    now = time.time()
    ts = (pd.to_datetime(frame["ts"], utc=True).map(lambda t: t.timestamp()) if "ts" in frame.columns
          else pd.Series(now, index=frame.index))
    users = frame["user_id"].replace("", None) if "user_id" in frame.columns else pd.Series(None, index=frame.index)
    given = frame["event_id"].astype("string") if "event_id" in frame.columns else pd.Series(pd.NA, index=frame.index)
    rows = []
    for i in frame.index:
        text, label, user = frame.at[i, "text"], frame.at[i, "label"], users.at[i]
        event_id = given.at[i] if not pd.isna(given.at[i]) else "reviewed-" + hashlib.sha256(
            f"{text}\x00{label}\x00{user}".encode()).hexdigest()[:32]
        rows.append({"event_id": str(event_id), "prediction_id": None, "text": text, "user_id": user,
                     "user_features": None, "model_version": None, "predicted": None, "confidence": None,
                     "label": label, "verdict": "reviewed", "reason": None, "window_decision": None,
                     "prediction_ts": None, "feedback_ts": float(ts.at[i]), "window_end": None, "partition": None,
                     "offset": None, "written_at": now})
    # One commit per distinct file content: the table skips a file it already holds.
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()[:16]
    table = _table()
    try:
        done = table.append(rows_table(rows), f"{IMPORT_WRITER}-{digest}", 1)
    except Exception as exc:
        fail(f"cannot write the examples table at {table.uri}: {exc}")
    if done.rows == 0:
        console.print(f"{source}: already imported (nothing added)", highlight=False)
    else:
        console.print(f"imported {done.rows:,} reviewed examples ({frame['label'].nunique()} labels) into "
                      f"{table.uri}", highlight=False)


@examples_app.command("forget")
def forget(
    user: list[str] = typer.Option(..., help="A user whose examples are deleted (repeatable)."),
) -> None:
    """Delete every example of these users from the table and from its files on disk."""
    table = _table()
    try:
        deleted = table.forget_users(user)
    except Exception as exc:
        fail(f"cannot delete from the examples table at {table.uri}: {exc}")
    console.print(f"deleted {deleted:,} examples of {len(set(user))} user(s) from {table.uri}", highlight=False)


def _timestamp(text: str) -> float:
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
    except ValueError as exc:
        fail(f"--since {text!r} is not a time: {exc}")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return float(stamp.timestamp())
