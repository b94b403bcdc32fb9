"""One row of bench/reliability.py's table: a fault or hostile input, how many trials, what survived.

Scenario modules (`reliability_feedback`, `reliability_serving`, `reliability_registry`)
each return `Outcome`s; tests/reliability runs the same scenarios with fewer trials and
asserts the guarantee (nothing lost, nothing applied twice, no failed request).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Outcome:
    fault: str  # the table row, e.g. "kill -9 feedback service at a random point"
    trials: int
    survived: int  # trials whose guarantee held
    events_lost: int  # summed over trials
    applied_twice: int
    requests_failed: int
    detail: str = ""  # what was measured, for a person: times, RSS growth, versions
    measured: dict[str, Any] = field(default_factory=dict)  # numbers behind `detail`, for the JSON file

    @property
    def held(self) -> bool:
        return self.survived == self.trials and not (self.events_lost or self.applied_twice or self.requests_failed)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"held": self.held}
