"""Records the client skipped: a poll that jumps past a partition's next offset.

loopline's topics are neither compacted nor written in transactions, so consecutive
records of a partition have consecutive offsets. Under load the embedded broker
sometimes hands the client a jump: the freshness bench at 5,000 events/s saw the
service reach the end of `predictions` with 67 records never delivered, whose
feedback then went to the dead letters as `unmatched`. A fresh consumer read them
all. So at a jump the service drops that partition's records from the poll and
seeks back to the offset it expected: the next fetch asks for them again.

A jump that is still there after one seek back (a topic someone else writes with
transactions, whose commit markers take offsets; retention that deleted records
first) is accepted and counted, so the loop never spins on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.feedback.intake import Record


@dataclass
class Gaps:
    """Where the service seeked back, so a jump that comes again is accepted instead."""

    seeked: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> the offset it seeked back to
    refetched: int = 0  # jumps sought back
    accepted: int = 0  # jumps that came again after the seek and were accepted

    def contiguous(self, records: Sequence[Record], next_offsets: Mapping[str, int]
                   ) -> tuple[list[Record], dict[tuple[str, int], int]]:
        """The records to process, and where to seek: at a partition's first jump past its next offset, that
        partition's records from the jump on are left out and it is sought back, once per offset."""
        kept: list[Record] = []
        expected: dict[str, int] = {}
        seeks: dict[tuple[str, int], int] = {}
        for record in records:
            key = f"{record.topic}:{record.partition}"
            if (record.topic, record.partition) in seeks:
                continue  # fetched again after the seek
            want = expected.get(key, next_offsets.get(key))
            if want is not None and record.offset > want:
                if self.seeked.get(key) != want:
                    self.seeked[key], self.refetched = want, self.refetched + 1
                    seeks[(record.topic, record.partition)] = want
                    continue
                self.accepted += 1
            expected[key] = record.offset + 1
            kept.append(record)
        return kept, seeks
