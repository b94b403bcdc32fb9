"""Consumed records, dead letters that say exactly why a record was not used, and the clock check.

Dead letters carry the original bytes (base64) and an event id derived from where the
record was (topic, partition, offset, reason), so a replay after a restart produces
the same dead letter again and consumers of `feedback-dlq` can drop the repeat.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from services.common.events import FEEDBACK, DeadLetter
from services.feedback.join import Rejected


@dataclass(frozen=True)
class Record:
    """One consumed record, client-independent."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    ts: float  # record timestamp, seconds


def dead_letter(record: Record, reason: str, detail: str, label: str | None = None) -> DeadLetter:
    digest = hashlib.sha256(f"{record.topic}:{record.partition}:{record.offset}:{reason}".encode()).hexdigest()
    return DeadLetter(event_id=digest[:32], reason=reason, detail=detail[:2000],
                      topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
                      value=base64.b64encode(record.value).decode(), label=label)


def rejected_letter(rejected: Rejected) -> DeadLetter:
    f = rejected.feedback
    return dead_letter(Record(FEEDBACK, f.partition, f.offset, f.key, f.value, f.ts), rejected.reason,
                       rejected.detail, f.label)


def far_future(record: Record, now: float, max_skew_s: float) -> DeadLetter | None:
    """A dead letter for a record stamped more than `max_skew_s` ahead of the clock `now`, else None.

    Judged against the wall clock, not against the event time the partitions have reached: a bound
    on event time moves with every record it lets through, so records each just inside it would
    walk event time ahead as far as a producer likes, and honest traffic after a pause longer than
    the bound (or a partition catching up behind the others) would be refused. A replay after a
    crash reads with a later clock, so it can only take a record the first run refused, never
    refuse one it took: what the first run learned is learned the same way again, and a record it
    refused was stamped beyond the bound when first read, after the windows released by then.
    """
    if record.ts <= now + max_skew_s:
        return None
    return dead_letter(record, "far_future", f"record timestamp {record.ts:.3f} is {record.ts - now:.0f} s ahead "
                       f"of the service's clock (LOOPLINE_MAX_CLOCK_SKEW_S is {max_skew_s:g})")
