"""Loading the user's own data: CSV, Parquet or JSONL, local or by URI; bad data says exactly what is wrong."""

from __future__ import annotations

import json

import fsspec
import pandas as pd
import pytest

from models.data import DatasetError, load_dataset

KNOWN = ("toggle_wifi", "call_contact", "open_app")


def write_csv(tmp_path, text: str):
    path = tmp_path / "mine.csv"
    path.write_text(text)
    return path


def test_csv_parquet_and_jsonl_load_alike(tmp_path) -> None:
    csv = write_csv(tmp_path, "text,label,user_id,ts\nturn on wifi,toggle_wifi,u1,2026-01-02\n"
                              "call mom,call_contact,,2026-01-03T10:00:00Z\nNA,open_app,u2,2026-01-04\n")
    frame = load_dataset(csv, labels=KNOWN)
    assert list(frame["label"]) == ["toggle_wifi", "call_contact", "open_app"]
    assert frame["text"].iloc[2] == "NA"  # a text, not a missing value
    assert str(frame["ts"].dt.tz) == "UTC"
    parquet = tmp_path / "mine.parquet"
    frame.to_parquet(parquet)
    pd.testing.assert_frame_equal(load_dataset(parquet, labels=KNOWN), frame)
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"text": "turn on wifi", "label": "toggle_wifi", "user_id": "u1", "ts": "2026-01-02"},
        {"text": "call mom", "label": "call_contact", "user_id": None, "ts": "2026-01-03T10:00:00Z"},
        {"text": "NA", "label": "open_app", "user_id": "u2", "ts": "2026-01-04"}]) + "\n\n")
    pd.testing.assert_frame_equal(load_dataset(jsonl, labels=KNOWN), frame)


def test_a_uri_is_read_through_fsspec() -> None:
    with fsspec.open("memory://loopline-test/data/mine.csv", "w") as f:
        f.write("text,label\nwake me at 7,alarm_set\nwill it rain,weather_query\n")
    frame = load_dataset("memory://loopline-test/data/mine.csv")
    assert list(frame["label"]) == ["alarm_set", "weather_query"]
    with pytest.raises(DatasetError, match=r"memory://loopline-test/absent\.csv: no such file"):
        load_dataset("memory://loopline-test/absent.csv")
    with pytest.raises(DatasetError, match="unknown storage protocol"):
        load_dataset("nosuchprotocol://bucket/mine.csv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("words,label\nhi,open_app\n", "missing column\\(s\\) text"),
        ("text,label\nturn on wifi,toggle_wifi\n   ,open_app\n", "empty text in row\\(s\\) 3"),
        ("text,label\nturn on wifi,toggle_wifi\nopen maps,\n", "missing label in row\\(s\\) 3"),
        ("text,label\nhi,open_app\nyo,dance\nho,sing\n", "unknown label\\(s\\) dance, sing"),
        ("text,label\n", "no rows"),
        ("text,label,ts\nhi,open_app,not a date\n", "ts is not a timestamp"),
    ],
)
def test_bad_data_gets_a_clear_error(tmp_path, content: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(write_csv(tmp_path, content), labels=KNOWN)


def test_jsonl_errors_name_lines_of_the_file(tmp_path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "hi", "label": "greet"}\n\n{"text": "", "label": "greet"}\n')
    with pytest.raises(DatasetError, match=r"empty text in line\(s\) 3"):
        load_dataset(path)
    path.write_text('{"text": "hi", "label": "greet"}\n{"text": "yo", "label"\n')
    with pytest.raises(DatasetError, match="line 2 is not JSON"):
        load_dataset(path)


def test_wrong_file_type_and_missing_file(tmp_path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "absent.csv")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"\.csv, \.parquet or \.jsonl"):
        load_dataset(tmp_path / "data.json")
