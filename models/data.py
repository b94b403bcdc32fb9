"""Load and validate a dataset: the user's own CSV, Parquet or JSONL, from a path or an fsspec URI.

A dataset is a table with `text` and `label`, and optionally `user_id` and
`ts`; any label set. Loading validates it and says exactly what is wrong, row
numbers included, instead of training on something half-broken. `s3://` and
other remote URIs go through fsspec (S3 needs the `s3` extra, which installs s3fs).

>>> frame = validate_dataset(pd.DataFrame({"text": ["hi", "wake me at 7"], "label": ["greet", "alarm_set"]}))
>>> class_list(frame["label"])
('alarm_set', 'greet')
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("text", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("user_id", "ts")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STRING_COLUMNS = {"text": "string", "label": "string", "user_id": "string"}


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message says why."""


def class_list(labels: Iterable[str]) -> tuple[str, ...]:
    """The classes a model trained on these labels has: each distinct label once, sorted."""
    return tuple(sorted({str(label) for label in labels}))


def is_uri(source: str | Path) -> bool:
    return "://" in str(source)


def load_dataset(source: str | Path, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Read `source` (a path or URI ending in .csv, .parquet or .jsonl) and validate it, against `labels`
    if given."""
    return validate_dataset(read_table(source), labels=labels, source=str(source))


def read_table(source: str | Path) -> pd.DataFrame:
    """The table at `source`, columns as stored; no validation."""
    name = str(source)
    suffix = Path(name.split("?", 1)[0]).suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise DatasetError(f"{name}: expected a .csv, .parquet or .jsonl file, got {suffix or 'no suffix'!r}")
    if not is_uri(source):
        if not Path(source).is_file():
            raise DatasetError(f"{name}: no such file")
        return _read(Path(source), kind, name)
    import fsspec

    try:
        with fsspec.open(name, "rb") as f:
            return _read(f, kind, name)
    except FileNotFoundError:
        raise DatasetError(f"{name}: no such file") from None
    except ImportError as exc:  # fsspec names the package a protocol needs, e.g. s3fs for s3://
        raise DatasetError(f"{name}: {exc}; for s3:// install loopline with the `s3` extra") from exc
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise DatasetError(f"{name}: unknown storage protocol ({exc})") from exc
        raise


def _read(handle: Path | IO[bytes], kind: str, name: str) -> pd.DataFrame:
    try:
        if kind == "csv":
            return pd.read_csv(handle, dtype=STRING_COLUMNS, keep_default_na=False, na_values=[""])
        if kind == "parquet":
            return pd.read_parquet(handle)
        return _read_jsonl(handle, name)
    except DatasetError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{name}: not a readable {kind} file ({exc})") from exc


def _read_jsonl(handle: Path | IO[bytes], name: str) -> pd.DataFrame:
    if isinstance(handle, Path):
        with open(handle, "rb") as f:
            return _read_jsonl(f, name)
    rows, numbers = [], []
    for number, raw in enumerate(handle, 1):
        line = raw.decode()
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{name}: line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{name}: line {number} is not a JSON object")
        rows.append(row)
        numbers.append(number)
    frame = pd.DataFrame(rows)
    frame.attrs["line_numbers"] = numbers  # errors name lines of the file, not rows of a table
    for column in ("text", "label", "user_id"):
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v)).astype("string")
    frame.index = pd.RangeIndex(len(frame))
    return frame


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
    out = frame.reset_index(drop=True).copy()
    name = _namer(frame)
    text = out["text"].astype("string")
    empty = text.isna() | (text.str.strip() == "")
    if empty.any():
        raise DatasetError(f"{source}: empty text in {name(empty)}")
    label = out["label"].astype("string")
    blank = label.isna() | (label.str.strip() == "")
    if blank.any():
        raise DatasetError(f"{source}: missing label in {name(blank)}")
    if labels is not None:
        unknown = ~label.isin(list(labels))
        if unknown.any():
            names = sorted(set(label[unknown]))[:5]
            raise DatasetError(
                f"{source}: unknown label(s) {', '.join(names)} in {name(unknown)}; "
                f"known labels: {', '.join(labels)}"
            )
    out["text"] = text.astype(str)
    out["label"] = label.str.strip().astype(str)
    if "user_id" in out.columns:
        out["user_id"] = out["user_id"].astype("string").fillna("").astype(str)
    if "ts" in out.columns:
        try:
            out["ts"] = pd.to_datetime(out["ts"], utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{source}: column ts is not a timestamp: {exc}") from exc
        if out["ts"].isna().any():
            raise DatasetError(f"{source}: missing ts in {name(out['ts'].isna())}")
    return out


def _namer(frame: pd.DataFrame) -> Callable[[pd.Series], str]:
    """Names the first five rows a mask selects: lines of a JSONL file, else rows as a spreadsheet shows
    them (1-based, after the header)."""
    lines = frame.attrs.get("line_numbers")

    def name(mask: pd.Series) -> str:
        positions = [int(i) for i in mask[mask].index[:5]]
        shown = [lines[i] for i in positions] if lines is not None else [i + 2 for i in positions]
        more = int(mask.sum()) - len(shown)
        return ("line(s) " if lines is not None else "row(s) ") + ", ".join(map(str, shown)) + (
            f" and {more} more" if more > 0 else "")

    return name
