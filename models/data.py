"""Load and write datasets: generated traffic or the user's own CSV/Parquet.

A dataset is a table with `text` and `label`, and optionally `user_id` and
`ts`. Loading validates it and says exactly what is wrong, row numbers
included, instead of training on something half-broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("text", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("user_id", "ts")


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message says why."""


def load_dataset(path: str | Path, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Read `path` (.csv or .parquet) and validate it against `labels` if given."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path, dtype={"text": "string", "label": "string", "user_id": "string"})
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        raise DatasetError(f"{path}: expected a .csv or .parquet file, got {suffix or 'no suffix'!r}")
    return validate_dataset(frame, labels=labels, source=str(path))


def validate_dataset(
    frame: pd.DataFrame, labels: Sequence[str] | None = None, source: str = "dataset"
) -> pd.DataFrame:
    """Check columns, empty texts and labels; return a clean copy with typed columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"expected text,label[,user_id,ts], found {', '.join(map(str, frame.columns)) or 'none'}"
        )
    if frame.empty:
        raise DatasetError(f"{source}: no rows")
    out = frame.copy()
    text = out["text"].astype("string")
    empty = text.isna() | (text.str.strip() == "")
    if empty.any():
        raise DatasetError(f"{source}: empty text in {_rows(empty)}")
    label = out["label"].astype("string")
    if label.isna().any():
        raise DatasetError(f"{source}: missing label in {_rows(label.isna())}")
    if labels is not None:
        unknown = ~label.isin(list(labels))
        if unknown.any():
            names = sorted(set(label[unknown]))[:5]
            raise DatasetError(
                f"{source}: unknown label(s) {', '.join(names)} in {_rows(unknown)}; "
                f"known labels: {', '.join(labels)}"
            )
    out["text"] = text.astype(str)
    out["label"] = label.astype(str)
    if "user_id" in out.columns:
        out["user_id"] = out["user_id"].astype("string").fillna("").astype(str)
    if "ts" in out.columns:
        try:
            out["ts"] = pd.to_datetime(out["ts"], utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{source}: column ts is not a timestamp: {exc}") from exc
    return out.reset_index(drop=True)


def _rows(mask: pd.Series) -> str:
    # Row numbers as a spreadsheet shows them: 1-based, after the header.
    rows = [int(i) + 2 for i in mask[mask].index[:5]]
    more = int(mask.sum()) - len(rows)
    return "row(s) " + ", ".join(map(str, rows)) + (f" and {more} more" if more > 0 else "")
