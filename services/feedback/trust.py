"""Per-user trust: feedback from a user who disagrees with the model far more than users do is not learned.

A label-flip attack is a group of users reporting wrong intents on purpose. Each of
their events is valid, and the gate cannot see them well: the held-back examples it
judges by come from the same users. What gives them away is their record. For every
user the last `history` feedback events are remembered as agreed / disagreed (the
label against the intent serving answered). A user is *distrusted* while some recent
run of their record (the last 1, 2, ... `history` events) holds more disagreements
than a typical user would produce with probability `alpha`: a one-sided binomial tail
at the population's disagreement rate, which is the median of the per-user rates
(robust while attackers are fewer than half of the active users; floored, so a near-
perfect model does not make every correction suspect). Under real drift every user
disagrees more, the median rises with them, and nobody is singled out.

Decisions are taken in the order examples are released, from state that is part of
the checkpoint, so a replay decides the same. A user's first few flipped labels look
like ordinary corrections and are learned (the p-value of a run of k disagreements is
rate**k); from then on their feedback is withheld, and their earlier held-back
examples leave the set the gate judges by.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

RATE_FLOOR = 0.05  # below this a population rate would make two corrections in a row look like an attack
MIN_RECORD = 5  # users with a shorter record do not vote on the population rate
MIN_VOTERS = 10  # fewer voters: the population rate is not known yet, nobody is distrusted


@dataclass(frozen=True)
class TrustSettings:
    alpha: float = 1e-3  # 0: trust everyone
    history: int = 20
    max_users: int = 500_000


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    disagreed: int  # in the run that decided
    run: int
    p_value: float
    rate: float  # the population rate judged against

    def describe(self, user: str) -> str:
        return (f"user {user} disagreed with the served intent on {self.disagreed} of their last {self.run} "
                f"feedback events; users disagree at {self.rate:.3f} (p={self.p_value:.1e})")


class UserTrust:
    """Each user's recent agreement record (a bit per feedback event, newest lowest) and the verdict on it."""

    def __init__(self, settings: TrustSettings | None = None) -> None:
        self.settings = settings or TrustSettings()
        self.records: dict[str, tuple[int, int]] = {}  # user -> (disagreement bits, length); oldest first
        self._tail: np.ndarray | None = None  # P(at least k of n disagree) at `rate`, [n, k]
        self.rate = RATE_FLOOR

    def start_window(self) -> None:
        """Fix the population rate for the window about to be judged (so its order inside does not matter)."""
        rates = [bits.bit_count() / n for bits, n in self.records.values() if n >= MIN_RECORD]
        if len(rates) < MIN_VOTERS:
            self._tail = None
            return
        self.rate = max(RATE_FLOOR, statistics.median(rates))
        n = np.arange(self.settings.history + 1)[:, None]
        k = np.arange(self.settings.history + 1)[None, :]
        self._tail = binom.sf(k - 1, n, self.rate)  # sf(k - 1) = P(X >= k)

    def judge(self, user: str, disagreed: bool) -> Verdict:
        """Add one feedback event to the user's record and say whether their feedback is learned now."""
        bits, n = self.records.pop(user, (0, 0))  # re-inserted last: the dict's order is least recently seen
        bits = ((bits << 1) | int(disagreed)) & ((1 << self.settings.history) - 1)
        n = min(n + 1, self.settings.history)
        self.records[user] = (bits, n)
        if len(self.records) > self.settings.max_users:
            del self.records[next(iter(self.records))]
        if self._tail is None or self.settings.alpha <= 0 or bits == 0:
            return Verdict(True, 0, n, 1.0, self.rate)
        worst = Verdict(True, 0, 0, 1.0, self.rate)
        count = 0
        for length in range(1, n + 1):  # every recent run: an attack that starts late is a short run
            count += (bits >> (length - 1)) & 1
            p = float(self._tail[length, count])
            if p < worst.p_value:
                worst = Verdict(p >= self.settings.alpha, count, length, p, self.rate)
        return worst

    def to_bytes(self) -> bytes:
        return json.dumps({"rate": self.rate, "records": [[u, b, n] for u, (b, n) in self.records.items()]}
                          ).encode()

    @classmethod
    def from_bytes(cls, data: bytes, settings: TrustSettings | None = None) -> UserTrust:
        state = json.loads(data)
        trust = cls(settings)
        trust.rate = float(state["rate"])
        trust.records = {str(u): (int(b), int(n)) for u, b, n in state["records"]}
        return trust
