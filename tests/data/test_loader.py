"""Loading the user's own data: clean data loads, bad data says exactly what is wrong."""

from __future__ import annotations

import pandas as pd
import pytest

from models.catalog import INTENTS
from models.data import DatasetError, load_dataset


def write_csv(tmp_path, text: str):
    path = tmp_path / "mine.csv"
    path.write_text(text)
    return path


def test_csv_and_parquet_load(tmp_path) -> None:
    csv = write_csv(tmp_path, "text,label,user_id,ts\nturn on wifi,toggle_wifi,u1,2026-01-02\n"
                              "call mom,call_contact,,2026-01-03T10:00:00Z\n")
    frame = load_dataset(csv, labels=INTENTS)
    assert list(frame["label"]) == ["toggle_wifi", "call_contact"]
    assert str(frame["ts"].dt.tz) == "UTC"
    parquet = tmp_path / "mine.parquet"
    frame.to_parquet(parquet)
    pd.testing.assert_frame_equal(load_dataset(parquet, labels=INTENTS), frame)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("words,label\nhi,open_app\n", "missing column\\(s\\) text"),
        ("text,label\nturn on wifi,toggle_wifi\n   ,open_app\n", "empty text in row\\(s\\) 3"),
        ("text,label\nhi,open_app\nyo,dance\nho,sing\n", "unknown label\\(s\\) dance, sing"),
        ("text,label\n", "no rows"),
        ("text,label,ts\nhi,open_app,not a date\n", "ts is not a timestamp"),
    ],
)
def test_bad_data_gets_a_clear_error(tmp_path, content: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(write_csv(tmp_path, content), labels=INTENTS)


def test_wrong_file_type_and_missing_file(tmp_path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "absent.csv")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"\.csv or \.parquet"):
        load_dataset(tmp_path / "data.json")
