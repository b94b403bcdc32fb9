"""Progress reporting from inside tasks, without making it a task input.

A callback is not part of what a task computes, so it must not enter the cache
key; the CLI installs a tracker here, tasks ask for one by name.
"""

from __future__ import annotations

from collections.abc import Callable

Advance = Callable[[int], None]
Track = Callable[[str, int], Advance]

_tracker: Track | None = None


def install(track: Track | None) -> None:
    global _tracker
    _tracker = track


def track(description: str, total: int) -> Advance:
    """A callback told how much of `total` got done; does nothing without an installed tracker."""
    if _tracker is None:
        return lambda _n: None
    return _tracker(description, total)
