"""Per-user trust: feedback from a user who disagrees with the model where it was sure is not learned.

A label-flip attack is a group of users reporting wrong intents on purpose. Each of
their events is valid, and the gate cannot see them well: the held-back examples it
judges by come from the same users. What gives them away is their record. For every
user the last `history` feedback events are remembered: whether the label disagreed
with the intent serving answered, and how likely a disagreement was, by the model's own
account (1 - its confidence in that answer). Honest users disagree mostly where the
model was unsure; an attacker disagrees where it was sure.

A user is *distrusted* while some recent run of their record (the last 1, 2, ...
`history` events) holds more disagreements than that run's expected count makes
likely: a Poisson tail below `alpha`, at the expected count scaled by the population's
calibration (the median, over the users seen most recently, of disagreements / expected
disagreements, so a model that is over- or under-confident overall does not make
everyone suspect or no one; robust while attackers are fewer than half of the active
users). A user the
model serves badly has less confident answers and so a higher expected count: their
corrections are not mistaken for an attack, as they were when every user was held to
one population rate.

A user who sends the same correction again (the same request, casefolded, corrected to
the same intent within their last `history` events) is counted once: the repeat is not
learned and does not enter the record. Someone asking the same thing every day and
correcting the same confident answer each time is one piece of evidence, not twenty
(counted each time, such a user was withheld as an attacker); and one user repeating a
flipped label cannot push the model further by repetition.

Decisions are taken in the order examples are released, from state that is part of
the checkpoint, so a replay decides the same. A user's first few flipped labels look
like ordinary corrections and are learned; from then on their feedback is withheld,
and their earlier held-back examples leave the set the gate judges by.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import pdtrc

MIN_EXPECTED = 0.02  # per event: a model sure to 0.999 still makes mistakes a user may honestly correct
CALIBRATION_FLOOR = 0.25  # a population that disagrees far less than the model expects does not make all suspect
MIN_RECORD = 5  # users with a shorter record do not vote on the calibration
MIN_VOTERS = 10  # fewer voters: the calibration is not known yet, nobody is distrusted
VOTERS = 2_000  # the most recently seen users vote: the calibration costs the same with a million users


@dataclass(frozen=True)
class TrustSettings:
    alpha: float = 3e-3  # 0: trust everyone, repeats included
    history: int = 20
    max_users: int = 500_000


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    disagreed: int  # in the run that decided
    run: int
    expected: float  # disagreements expected in that run
    p_value: float
    repeated: bool = False  # the same correction is in the user's record: counted once, not learned again

    def describe(self, user: str) -> str:
        if self.repeated:
            return (f"user {user} already sent this correction (same request, same intent) within their last "
                    f"{self.run} feedback events: one user's correction of a request counts once")
        return (f"user {user} disagreed with the served intent on {self.disagreed} of their last {self.run} "
                f"feedback events where {self.expected:.2f} were expected (p={self.p_value:.1e})")


@dataclass
class _Record:
    bits: int = 0  # disagreements, newest lowest
    expected: bytes = b""  # per event, newest first: round(255 * P(disagree))
    n: int = 0
    trusted: bool = True  # the last verdict
    seen: int = 0  # events in the record ever (n stops at `history`)
    # fingerprint -> `seen` when it was sent; None until the first (most users never correct: 64 bytes each)
    corrections: dict[str, int] | None = None


class UserTrust:
    """Each user's recent record and the verdict on it."""

    def __init__(self, settings: TrustSettings | None = None) -> None:
        self.settings = settings or TrustSettings()
        self.records: dict[str, _Record] = {}  # the dict's order is least recently seen first
        self.calibration: float | None = None  # None: not enough voters yet

    def start_window(self) -> None:
        """Fix the calibration for the window about to be judged (so its order inside does not matter)."""
        recent = itertools.islice(reversed(self.records.values()), VOTERS)
        ratios = [r.bits.bit_count() / _expected(r.expected) for r in recent if r.n >= MIN_RECORD]
        self.calibration = (max(CALIBRATION_FLOOR, statistics.median(ratios))
                            if len(ratios) >= MIN_VOTERS else None)

    def judge(self, user: str, disagreed: bool, confidence: float,
              correction: tuple[str, str] | None = None) -> Verdict:
        """Add one feedback event (on an answer given with `confidence`; `correction`: the request's text and
        the intent the user meant) to the user's record and say whether their feedback is learned now."""
        record = self.records.pop(user, None) or _Record()
        self.records[user] = record
        if len(self.records) > self.settings.max_users:
            del self.records[next(iter(self.records))]
        history = self.settings.history
        if disagreed and correction is not None and self.settings.alpha > 0:
            key = _fingerprint(*correction)
            recent = {k: at for k, at in (record.corrections or {}).items() if at > record.seen - history}
            if key in recent:
                record.corrections = recent
                return Verdict(record.trusted, 0, record.seen - recent[key] + 1, 0.0, 1.0, repeated=True)
            record.corrections = recent | {key: record.seen + 1}
        record.seen += 1
        record.bits = ((record.bits << 1) | int(disagreed)) & ((1 << history) - 1)
        chance = min(max(1.0 - confidence, MIN_EXPECTED), 1.0)
        record.expected = (bytes([round(255 * chance)]) + record.expected)[:history]
        record.n = min(record.n + 1, history)
        if self.calibration is None or self.settings.alpha <= 0 or record.bits == 0:
            record.trusted = True
            return Verdict(True, 0, record.n, 0.0, 1.0)
        if not disagreed and record.trusted:  # an agreement only makes every run less suspect: no need to look
            return Verdict(True, 0, record.n, 0.0, 1.0)
        # Every recent run: an attack that starts late is a short run.
        counts = np.cumsum([(record.bits >> i) & 1 for i in range(record.n)])
        expected = np.cumsum(np.frombuffer(record.expected, dtype=np.uint8)) / 255 * self.calibration
        p = pdtrc(np.maximum(counts - 1, 0), expected)  # P(at least `counts` disagreements) at that expectation
        p[counts == 0] = 1.0
        worst = int(np.argmin(p))
        record.trusted = bool(p[worst] >= self.settings.alpha)
        return Verdict(record.trusted, int(counts[worst]), worst + 1, float(expected[worst]), float(p[worst]))

    def to_bytes(self) -> bytes:
        return self.frozen_bytes()()

    def frozen_bytes(self) -> Callable[[], bytes]:
        """`to_bytes` of the records as they are now, to call later on another thread: a cheap copy of each
        record here, the encoding there (a checkpoint at thousands of users must not stop the loop)."""
        calibration = self.calibration
        rows = [(u, r.bits, r.expected, r.n, r.trusted, r.seen, None if r.corrections is None else dict(r.corrections))
                for u, r in self.records.items()]
        return lambda: json.dumps({"calibration": calibration, "records": [
            [u, bits, base64.b64encode(expected).decode(), n, trusted, seen, corrections]
            for u, bits, expected, n, trusted, seen, corrections in rows]}).encode()

    @classmethod
    def from_bytes(cls, data: bytes, settings: TrustSettings | None = None) -> UserTrust:
        state = json.loads(data)
        trust = cls(settings)
        if "calibration" not in state:  # the first format (no expected counts): records build up again
            return trust
        trust.calibration = state["calibration"]
        trust.records = {str(row[0]): _record(row) for row in state["records"]}
        return trust


def _expected(chances: bytes) -> float:
    return max(sum(chances) / 255, MIN_EXPECTED)


def _record(row: list[Any]) -> _Record:
    record = _Record(int(row[1]), base64.b64decode(row[2]), int(row[3]), bool(row[4]))
    if len(row) > 5:  # the second format had no corrections: its records start collecting them now
        record.seen = int(row[5])
        record.corrections = {str(k): int(at) for k, at in row[6].items()} if row[6] is not None else None
    return record


def _fingerprint(text: str, label: str) -> str:
    """The same correction: the request's words (casefolded, spaces collapsed) and the intent meant."""
    words = " ".join(text.casefold().split())
    return hashlib.blake2b(f"{words}\x00{label}".encode(), digest_size=8).hexdigest()
