"""bench/examples_table.py --quick end to end: both formats measured, replays skipped, a forgotten user unread."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import import_bench


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return import_bench(monkeypatch, "examples_table")


@pytest.mark.slow
def test_a_quick_run_measures_both_formats_and_replays_are_no_ops(bench: ModuleType, tmp_path: Path) -> None:
    result = bench.main(["--quick", "--out", str(tmp_path)])

    written = json.loads((tmp_path / "examples_table.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (tmp_path / "examples_table.png").stat().st_size > 10_000
    assert set(written["formats"]) == {"delta", "iceberg"}
    for name, measured in written["formats"].items():
        assert measured["replay"]["noop"] is True and measured["forget"]["replay_noop_after"] is True, name
        assert set(measured["append"]) == {"10", "500", "5000"}, name
        assert measured["commits"]["rows"] == written["formats"]["delta"]["commits"]["rows"], "the same rows"
        assert len(written["commit_ms"][name]) == 100
    assert written["formats"]["delta"]["forget"]["after_delete"]["user_rows_in_data_files"] == 0, \
        "Delta's forget vacuums: no row of the user is left in any data file"
    assert all(v is None or v > 0 for v in written["ratios"].values())


def teardown_module() -> None:
    sys.modules.pop("examples_table", None)  # another test may import a module of that name
