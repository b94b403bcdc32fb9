"""bench/reliability_feedback.py's ledger: lost and applied twice told apart per event, from a real checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from services.feedback.checkpoint import Checkpoint, CheckpointStore
from services.feedback.join import JoinStore
from services.feedback.service import JOIN
from tests.code.test_join import feedback, prediction

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # bench scripts import each other as top-level modules
    import reliability_feedback

    return reliability_feedback


def checkpoint(state_dir: Path, joined: list[str], unreleased: list[str], examples: int, untrusted: int) -> None:
    """A feedback service's checkpoint whose join store labeled `joined` (released) and `unreleased`."""
    store = JoinStore()
    for n, pid in enumerate(joined + unreleased):
        store.add_prediction(prediction(pid, 10.0 + n))
        store.add_feedback(feedback(f"e-{pid}", pid, 10.5 + n))
    store.advance(10.0 + len(joined) + 0.4)  # key times are 10.5, 11.5, ...: releases the joined ones only
    assert {j.prediction.prediction_id for j in store.ready} == set(unreleased)
    state = {"progress": {"examples": examples}, "dead_letters": {"untrusted_user": untrusted, "unmatched": 4}}
    CheckpointStore(state_dir / "feedback" / "checkpoints").save(Checkpoint(1, state, {JOIN: store.to_bytes()}))


def test_an_event_lost_and_another_judged_twice_do_not_cancel(bench: ModuleType, tmp_path: Path) -> None:
    # p3 never joined (lost); p1 was judged twice: the counts (5 judged, 5 sent) say all is well
    checkpoint(tmp_path, ["p0", "p1", "p2", "p4"], [], examples=7, untrusted=1)
    account = bench.ledger(tmp_path, ["p0", "p1", "p2", "p3", "p4"], judged_before=3, judged_now=8, timeout=1)
    assert (account.sent, account.joined, account.judged) == (5, 4, 5)
    assert (account.lost, account.twice) == (1, 1)


def test_joined_but_not_yet_released_is_not_yet_judged(bench: ModuleType, tmp_path: Path) -> None:
    checkpoint(tmp_path, ["p0", "p1"], ["p2"], examples=2, untrusted=0)
    account = bench.ledger(tmp_path, ["p0", "p1", "p2", "other"], judged_before=0, judged_now=2, timeout=1)
    assert (account.lost, account.twice) == (2, 0), "p2 waits in the store; 'other' was never joined"


def test_no_checkpoint_that_caught_up_is_no_ledger(bench: ModuleType, tmp_path: Path) -> None:
    checkpoint(tmp_path, ["p0"], [], examples=1, untrusted=0)
    assert bench.ledger(tmp_path, ["p0"], judged_before=0, judged_now=2, timeout=0.3) is None
    assert bench.ledger(tmp_path / "elsewhere", ["p0"], judged_before=0, judged_now=0, timeout=0.3) is None
