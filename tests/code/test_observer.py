"""Observer.close: a stopping service does not wait for queued monitoring, and the newest user stats of what
was queued still reach Feast, in one push."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from services.feedback.observer import Observer, UserStat
from services.feedback.settings import FeedbackSettings


class SlowObserver(Observer):
    """Pushes to a list; the first push holds the worker until the test lets it go."""

    def __init__(self, settings: FeedbackSettings) -> None:
        self.pushed: list[list[UserStat]] = []
        self.first_taken = threading.Event()
        self.release = threading.Event()
        super().__init__(settings, reference=None, version=1)

    def _push(self, stats: Sequence[UserStat]) -> None:
        self.pushed.append(list(stats))
        if len(self.pushed) == 1:
            self.first_taken.set()
            self.release.wait(10)
        else:
            time.sleep(1.0)  # a slow feature store: 60 queued windows would take a minute


def test_close_skips_queued_windows_but_pushes_their_newest_stats_once(tmp_path: Path) -> None:
    observer = SlowObserver(FeedbackSettings(state_dir=tmp_path, drift=False))
    observer.observe([], [UserStat("u1", 1, "a", 1.0)])
    assert observer.first_taken.wait(10)
    for count in range(2, 62):  # queued behind the window in hand
        observer.observe([], [UserStat("u1", count, "b", float(count)), UserStat(f"u{count}", 1, "c", 1.0)])
    closing = threading.Thread(target=observer.close)
    began = time.monotonic()
    closing.start()
    observer.release.set()
    closing.join(15)
    assert not closing.is_alive() and time.monotonic() - began < 5, "close waited for the queue"
    assert len(observer.pushed) == 2, "what was queued went out in one push"
    left = {s.user_id: s for s in observer.pushed[1]}
    assert left["u1"].corrections_count == 61 and len(left) == 61
