"""Keep feedback from running ahead of the predictions it belongs to when the service is behind.

A Kafka consumer fills its fetches by bytes, not records: with a backlog on both topics it
gets about twenty 150-byte feedback events for every 3 kB prediction. Feedback then waits
for predictions that are on the broker but not read yet; the join, and learning, move at
the speed of the predictions topic while feedback piles up, and if a prediction partition
is silent between fetches for `idle_s` the watermark passes the waiting feedback, which
is dead-lettered as unmatched although its prediction exists. Pausing a feedback
partition while its event time is more than `max_ahead_s` ahead of its prediction
partition's gives the fetches to the predictions until they catch up.

Feedback always comes after its prediction, so only feedback ahead is held back. A
prediction partition that has gone quiet (nothing for `idle_s`) has nothing left to
catch up with, and does not hold its feedback back. Feedback time counts at most up to
the clock: one record stamped ahead (within `LOOPLINE_MAX_CLOCK_SKEW_S`) would otherwise
hold its partition paused until the predictions reached that time, a minute of no
learning on a live stream for each such record a producer sends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.common.events import FEEDBACK, PREDICTIONS

Partition = tuple[str, int]


@dataclass
class FeedbackPacer:
    max_ahead_s: float
    paused: set[int] = field(default_factory=set)  # feedback partitions held back now
    pauses: int = 0  # how often a partition was held back, for /metrics

    def decide(self, event_time: Mapping[Partition, float], quiet: Callable[[Partition], bool],
               now: float = math.inf) -> tuple[list[int], list[int]]:
        """(feedback partitions to pause, to resume), from the newest record time read per partition and
        the clock `now`.

        A paused partition resumes once its predictions are within half the bound (not at the
        bound itself, so it does not flap on every batch) or have gone quiet.
        """
        pause, resume = [], []
        for (topic, partition), feedback_ts in event_time.items():
            if topic != FEEDBACK:
                continue
            predictions = (PREDICTIONS, partition)
            ahead = min(feedback_ts, now) - event_time.get(predictions, float("-inf"))
            held = partition in self.paused
            bound = self.max_ahead_s / 2 if held else self.max_ahead_s
            hold = ahead > bound and predictions in event_time and not quiet(predictions)
            if hold and not held:
                pause.append(partition)
            elif held and not hold:
                resume.append(partition)
        self.paused.update(pause)
        self.paused.difference_update(resume)
        self.pauses += len(pause)
        return pause, resume

    def forget(self) -> None:
        """After a new assignment every partition starts unpaused."""
        self.paused.clear()
