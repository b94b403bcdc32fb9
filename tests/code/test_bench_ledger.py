"""bench/reliability_feedback.py's ledger: lost and applied twice told apart per event, from a real checkpoint."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from services.feedback.checkpoint import Checkpoint, CheckpointStore
from services.feedback.join import JoinStore
from services.feedback.service import JOIN
from tests.code.test_join import feedback, prediction
from tests.conftest import import_bench


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return import_bench(monkeypatch, "reliability_feedback")


def checkpoint(state_dir: Path, joined: list[str], unreleased: list[str], examples: int, untrusted: int,
               number: int = 1, delay_s: float = 0.2) -> None:
    """A feedback service's checkpoint whose join store labeled `joined` (released) and `unreleased`, written
    `delay_s` from now (the ledger reads only a checkpoint written after it was asked)."""
    store = JoinStore()
    for n, pid in enumerate(joined + unreleased):
        store.add_prediction(prediction(pid, 10.0 + n))
        store.add_feedback(feedback(f"e-{pid}", pid, 10.5 + n))
    store.advance(10.0 + len(joined) + 0.4)  # key times are 10.5, 11.5, ...: releases the joined ones only
    assert {j.prediction.prediction_id for j in store.ready} == set(unreleased)
    state = {"progress": {"examples": examples}, "dead_letters": {"untrusted_user": untrusted, "unmatched": 4}}
    saved = Checkpoint(number, state, {JOIN: store.to_bytes()})
    threading.Timer(delay_s, CheckpointStore(state_dir / "feedback" / "checkpoints").save, [saved]).start()


def test_an_event_lost_and_another_judged_twice_do_not_cancel(bench: ModuleType, tmp_path: Path) -> None:
    # p3 never joined (lost); p1 was judged twice: the counts (5 judged, 5 sent) say all is well
    checkpoint(tmp_path, ["p0", "p1", "p2", "p4"], [], examples=7, untrusted=1)
    account = bench.ledger(tmp_path, ["p0", "p1", "p2", "p3", "p4"], judged_before=3, judged_now=8, timeout=5)
    assert (account.sent, account.joined, account.judged) == (5, 4, 5)
    assert (account.lost, account.twice) == (1, 1)


def test_joined_but_not_yet_released_is_not_yet_judged(bench: ModuleType, tmp_path: Path) -> None:
    checkpoint(tmp_path, ["p0", "p1"], ["p2"], examples=2, untrusted=0)
    account = bench.ledger(tmp_path, ["p0", "p1", "p2", "other"], judged_before=0, judged_now=2, timeout=5)
    assert (account.lost, account.twice) == (2, 0), "p2 waits in the store; 'other' was never joined"


def test_only_a_checkpoint_written_after_the_call_that_caught_up_counts(bench: ModuleType, tmp_path: Path) -> None:
    checkpoint(tmp_path, ["p0"], [], examples=1, untrusted=0, delay_s=0)
    time.sleep(0.3)
    unread = bench.ledger(tmp_path, ["p0"], judged_before=0, judged_now=1, timeout=0.5)
    assert not unread.read and (unread.lost, unread.twice) == (1, 0), "written before: nothing vouched for"
    checkpoint(tmp_path, ["p0"], [], examples=1, untrusted=0, number=2)
    assert not bench.ledger(tmp_path, ["p0"], judged_before=0, judged_now=2, timeout=0.5).read, "behind the counters"
    checkpoint(tmp_path, ["p0", "p1"], [], examples=2, untrusted=0, number=3)
    account = bench.ledger(tmp_path, ["p0", "p1"], judged_before=0, judged_now=2, timeout=5)
    assert account.read and (account.lost, account.twice) == (0, 0)
    assert not bench.ledger(tmp_path / "elsewhere", ["p0"], judged_before=0, judged_now=0, timeout=0.3).read
