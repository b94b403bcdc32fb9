"""The guard after a promotion: a retrained champion must do as well on live feedback as the one it replaced.

A retrain is gated on held-out rows before it is promoted, but live traffic is the real test. The
guard remembers the live head's progressive accuracy (scored before learning) on its last
`events` feedback events. When a newer full version from the train flow becomes champion, it
scores that version the same way on the next `events` events; if it is worse by more than
`margin`, it asks for a rollback to the previous champion, with the two figures as the reason.
KServe's canary rollout and Triton's keep-the-old-model-on-failure are the models for this.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GuardSettings:
    events: int = 500  # feedback events each side is judged on; 0 turns the guard off
    margin: float = 0.02  # progressive accuracy the new champion may lose


@dataclass
class Watch:
    """A promoted version on probation."""

    version: int
    previous: int
    previous_accuracy: float
    right: int = 0
    seen: int = 0


@dataclass(frozen=True)
class Rollback:
    version: int  # the promoted version that did worse
    to: int  # the champion before it
    reason: str


class PromotionGuard:
    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.recent: deque[bool] = deque(maxlen=max(settings.events, 1))  # the live head's last events
        self.watch: Watch | None = None

    def promoted(self, version: int, previous: int) -> bool:
        """A full version from the train flow replaced `previous` as champion: watch it if the previous one has
        a full record to compare with. Returns whether it is watched."""
        self.watch = None
        if self.settings.events <= 0 or len(self.recent) < self.settings.events:
            self.recent.clear()
            return False
        self.watch = Watch(version, previous, sum(self.recent) / len(self.recent))
        self.recent.clear()
        return True

    def reset(self) -> None:
        """The champion moved otherwise (a rollback, an older version): no record to compare with."""
        self.watch = None
        self.recent.clear()

    def observe(self, correct: Iterable[bool]) -> Rollback | None:
        """Progressive correctness of the live head on a window's examples, in order."""
        verdict = None
        for right in correct:
            self.recent.append(bool(right))
            watch = self.watch
            if watch is None:
                continue
            watch.right += bool(right)
            watch.seen += 1
            if watch.seen >= self.settings.events:
                self.watch = None
                accuracy = watch.right / watch.seen
                if accuracy < watch.previous_accuracy - self.settings.margin:
                    verdict = Rollback(watch.version, watch.previous, (
                        f"guard: v{watch.version} scored {accuracy:.4f} on its first {watch.seen} feedback events, "
                        f"v{watch.previous} {watch.previous_accuracy:.4f} on its last {watch.seen} (margin "
                        f"{self.settings.margin:g}): rolled back to v{watch.previous}"))
        return verdict

    def to_json(self) -> dict[str, Any]:
        return {"recent": "".join("1" if r else "0" for r in self.recent),
                "watch": asdict(self.watch) if self.watch is not None else None}

    @classmethod
    def from_json(cls, data: dict[str, Any], settings: GuardSettings) -> PromotionGuard:
        guard = cls(settings)
        guard.recent.extend(c == "1" for c in data.get("recent", ""))
        if data.get("watch") is not None:
            guard.watch = Watch(**data["watch"])
        return guard
