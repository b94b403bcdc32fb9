"""bench/decode.py: every option decodes the same events, and a small run reports each one's cost."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import import_bench


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return import_bench(monkeypatch, "decode")


def test_the_options_give_the_join_store_the_same_predictions(bench: ModuleType) -> None:
    records = bench.prediction_records(50, seed=3)
    before, per_record = bench.pydantic_predictions(records), bench.msgspec_per_record(records)
    batched = bench.decode_predictions(records, bench.SPARSE_DIM, bench.DENSE_DIM, 1 << 20)
    for a, b, c in zip(before, per_record, batched, strict=True):
        assert a is not None and b is not None
        assert a.indices.tobytes() == b.indices.tobytes() == c.indices.tobytes()
        assert a.embedding.tobytes() == b.embedding.tobytes() == c.embedding.tobytes()
        assert a.confidence == b.confidence == c.confidence and a.user == b.user == c.user


def test_a_small_run_reports_every_option(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    result = bench.main(["--events", "2000", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["us_per_event"]["prediction"]) == {
        "pydantic (before)", "msgspec, checks per record", "msgspec, checks per batch (the service)"}
    assert all(us > 0 for timings in result["us_per_event"].values() for us in timings.values())
