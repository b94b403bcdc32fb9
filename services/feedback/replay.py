"""Rehearsal: earlier learned examples learned again beside each window's new ones.

One online pass of FTRL over a stream ends about a point below three batch epochs
over the same rows (HWU64: `bench/real_data.py`, (c) against (d)). Learning each
window twice does not close that gap; learning a sample of *earlier* examples with
each window does, because every example is then seen more than once, spread over
time, as epochs see it.

The pool is a uniform sample of every example learned and published so far: the
`size` examples with the smallest hash of their event id (bottom-k sampling). It
needs no random state, keeps no example twice, and the same stream gives the same
pool. Which pooled examples a window replays is drawn from a generator seeded with
the head's version and delta number, over the pool in hash order, so a restart
from a checkpoint (which stores the pool) learns exactly the same weights.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from services.feedback.join import Joined


def _priority(joined: Joined) -> tuple[int, str]:
    # Salted: the held-back share is chosen by the plain crc32 of the same ids, and the pool must not
    # depend on that choice.
    event_id = joined.feedback.event_id
    return zlib.crc32(b"replay:" + event_id.encode()), event_id


class ReplayPool:
    """At most `size` learned examples, a uniform sample of all of them (bottom-k by event-id hash)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_id: dict[str, tuple[tuple[int, str], Joined]] = {}
        self._cutoff: tuple[int, str] | None = None  # the largest priority kept once the pool is full
        self.changes = 0  # bumped when the pool changes: a checkpoint reuses its bytes otherwise

    def __len__(self) -> int:
        return len(self._by_id)

    def examples(self) -> list[Joined]:
        """In hash order: the same for the same pool, however it was filled."""
        return [joined for _, joined in sorted(self._by_id.values(), key=lambda entry: entry[0])]

    def add(self, examples: Iterable[Joined]) -> None:
        if self.size == 0:
            return
        fresh: dict[str, tuple[tuple[int, str], Joined]] = {}
        for joined in examples:
            priority = _priority(joined)
            if (self._cutoff is None or priority < self._cutoff) and priority[1] not in self._by_id:
                fresh[priority[1]] = (priority, joined)
        if not fresh:
            return
        entries = sorted([*self._by_id.values(), *fresh.values()], key=lambda entry: entry[0])[:self.size]
        self._by_id = {joined.feedback.event_id: (priority, joined) for priority, joined in entries}
        self._cutoff = entries[-1][0] if len(entries) == self.size else None
        self.changes += 1

    def keep(self, wanted: Callable[[Joined], bool]) -> None:
        """Drop the examples `wanted` refuses (a forgotten user, a class the new head lacks)."""
        kept = [entry for entry in self._by_id.values() if wanted(entry[1])]
        if len(kept) != len(self._by_id):
            self._by_id = {joined.feedback.event_id: (priority, joined) for priority, joined in kept}
            self._cutoff = None  # no longer full: any new example may enter
            self.changes += 1

    def sample(self, n: int, seed: Sequence[int]) -> list[Joined]:
        """`n` distinct pooled examples (all of them if fewer), drawn reproducibly from `seed`."""
        pooled = self.examples()
        if n >= len(pooled):
            return pooled
        rows = np.random.default_rng(list(seed)).choice(len(pooled), size=n, replace=False)
        return [pooled[int(i)] for i in np.sort(rows)]
