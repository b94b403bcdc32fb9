"""Observer.close: a stopping service does not wait for the drift windows still queued."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from services.feedback.drift import DriftMonitor, Reference
from services.feedback.join import Joined
from services.feedback.observer import Observer
from services.feedback.settings import FeedbackSettings


class SlowObserver(Observer):
    """Observes drift into a list; the first window holds the worker until the test lets it go."""

    def __init__(self, settings: FeedbackSettings) -> None:
        self.observed: list[int] = []
        self.first_taken = threading.Event()
        self.release = threading.Event()
        super().__init__(settings, reference=None, version=1)

    def _make_monitor(self, reference: Reference | None) -> DriftMonitor | None:
        self.drift = "on"
        return cast(DriftMonitor, object())  # never called: _drift below stands in for it

    def _drift(self, examples: Sequence[Joined]) -> None:
        self.observed.append(len(examples))
        if len(self.observed) == 1:
            self.first_taken.set()
            self.release.wait(10)
        else:
            time.sleep(1.0)  # a slow Evidently run: 60 queued windows would take a minute


def test_close_skips_the_queued_windows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.feedback.observer")
    observer = SlowObserver(FeedbackSettings(state_dir=tmp_path))
    window = [cast(Joined, object())]
    observer.observe(window)
    assert observer.first_taken.wait(10)
    for _ in range(60):  # queued behind the window in hand
        observer.observe(window)
    closing = threading.Thread(target=observer.close)
    began = time.monotonic()
    closing.start()
    observer.release.set()
    closing.join(15)
    assert not closing.is_alive() and time.monotonic() - began < 5, "close waited for the queue"
    assert observer.observed == [1], "only the window in hand was observed"
    assert "60 queued windows not observed for drift" in caplog.text
