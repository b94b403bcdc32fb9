"""CheckpointStore: all or nothing, verified on restore, a damaged newest one falls back to the previous."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.feedback.checkpoint import Checkpoint, CheckpointStore, CheckpointWriter, read


def checkpoint(number: int) -> Checkpoint:
    return Checkpoint(number, {"offsets": {"feedback:0": number * 10}}, {"head.npz": b"h" * number,
                                                                         "join.npz": b"j" * number})


def test_newest_checkpoint_is_restored_and_old_ones_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    assert store.restore().checkpoint is None
    for number in (1, 2, 3):
        store.save(checkpoint(number))
    restored = store.restore()
    assert restored.checkpoint == checkpoint(3) and restored.problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000002", "ckpt-000000000003"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "state"])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))
    newest = store.save(checkpoint(2))
    target = newest / ("state.json" if damage == "state" else "join.npz")
    if damage == "flip":
        target.write_bytes(b"x" + target.read_bytes()[1:])
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:1])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text("{not json")
    restored = store.restore()
    assert restored.checkpoint == checkpoint(1)
    assert len(restored.problems) == 1 and restored.problems[0].startswith("ckpt-000000000002")


def test_a_write_interrupted_before_the_rename_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))
    (tmp_path / ".tmp-ckpt-000000000002-123").mkdir()  # what a kill -9 mid-write leaves
    (tmp_path / ".tmp-ckpt-000000000002-123" / "head.npz").write_bytes(b"half")
    assert store.restore().checkpoint == checkpoint(1)
    store.save(checkpoint(2))
    assert not list(tmp_path.glob(".tmp-*")), "leftovers are cleaned on the next save"
    with pytest.raises(ValueError, match="keep at least 2"):
        CheckpointStore(tmp_path, keep=1)


def test_the_writer_writes_one_checkpoint_at_a_time_with_the_state_it_was_given(tmp_path: Path) -> None:
    writer = CheckpointWriter(CheckpointStore(tmp_path))
    assert writer.written() is None and not writer.busy
    moved_on = threading.Event()

    def head_bytes() -> bytes:  # serialized on the writer's thread, after the loop changed its state
        assert moved_on.wait(10)
        return b"h"

    first = Checkpoint(1, {"offsets": {"feedback:0": 10}}, {"head.npz": head_bytes})
    writer.start(first)
    first.state["offsets"]["feedback:0"] = 999  # the loop moves on while the checkpoint is written
    moved_on.set()
    with pytest.raises(RuntimeError, match="still being written"):
        writer.start(checkpoint(2))
    path = writer.written(wait=True)
    assert path is not None and not writer.busy
    assert read(path).state == {"offsets": {"feedback:0": 10}}, "the state as it was when writing started"
    assert read(path).files == {"head.npz": b"h"}
    writer.close()


def test_a_failed_write_is_raised_to_the_loop_that_asks(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the checkpoint folder should be")
    writer = CheckpointWriter(CheckpointStore(tmp_path / "blocked"))
    writer.start(checkpoint(1))
    with pytest.raises(OSError):
        writer.written(wait=True)
    assert not writer.busy
    writer.close()
