"""The summary of the demo on your own data: how far live feedback carried a few-shot champion.

Served accuracy is the answer serving gave against the row's label, in replay order,
over the first and the last `rolling` requests; the test split (if given) is scored
through serving before the replay (the few-shot champion) and after it (the head the
feedback made), with the fallback's coverage and the precision of what was answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from loopline.demo.report import Freshness, rolling_accuracy
from loopline.demo.simulator import Answer, SentFeedback
from loopline.demo.watch import RegistryVersion, Update
from loopline.demo.your_data import TestScore


@dataclass(frozen=True)
class LearningSummary:
    data: str
    shots: int
    requests: int
    failed: int
    replay_s: float
    requests_per_s: float
    feedback_events: int
    feedback_share: float
    rolling: int
    accuracy_first: float  # the first `rolling` requests
    accuracy_last: float  # the last `rolling` requests
    fallback_first: float  # share answered "not understood", first and last `rolling` requests
    fallback_last: float
    freshness_p50_s: float | None
    freshness_p95_s: float | None
    freshness_events: int
    updates_published: int
    updates_rejected: int
    answers_by_online_head: int
    versions: list[dict[str, Any]]
    test_before: dict[str, Any] | None
    test_after: dict[str, Any] | None
    test_retrained: dict[str, Any] | None = None  # after a retrain on the champion's data plus the feedback
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def gain(self) -> float:
        return self.accuracy_last - self.accuracy_first

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "gain": self.gain}


def summarize_learning(data: str, shots: int, answers: Sequence[Answer], feedback: Sequence[SentFeedback],
                       failed: int, rolling: int, fresh: Freshness, metrics: dict[str, float],
                       versions: Sequence[RegistryVersion], before: TestScore | None,
                       after: TestScore | None, retrained: TestScore | None = None) -> LearningSummary:
    if len(answers) < 2 * rolling:
        raise ValueError(f"{len(answers)} answers are too few to compare the first and last {rolling}")
    ordered = sorted(answers, key=lambda a: a.index)
    first, last = ordered[:rolling], ordered[-rolling:]
    start, end = min(a.sent for a in answers), max(a.done for a in answers)

    def windows(decision: str) -> int:
        return int(metrics.get(f'loopline_feedback_windows_total{{decision="{decision}"}}', 0.0))

    return LearningSummary(
        data=data, shots=shots, requests=len(answers), failed=failed, replay_s=end - start,
        requests_per_s=len(answers) / (end - start), feedback_events=sum(1 for f in feedback if f.acked),
        feedback_share=len(feedback) / len(answers), rolling=rolling,
        accuracy_first=float(np.mean([a.correct for a in first])),
        accuracy_last=float(np.mean([a.correct for a in last])),
        fallback_first=float(np.mean([a.fallback for a in first])),
        fallback_last=float(np.mean([a.fallback for a in last])),
        freshness_p50_s=fresh.percentile(50), freshness_p95_s=fresh.percentile(95),
        freshness_events=len(fresh.seconds), updates_published=windows("published"),
        updates_rejected=windows("rejected"),
        answers_by_online_head=sum(1 for a in answers if "+ftrl." in a.version),
        versions=[{"version": v.version, "source": v.source, "parent": v.parent, "decision": v.decision}
                  for v in sorted(versions, key=lambda v: v.version)],
        test_before=None if before is None else asdict(before), test_after=None if after is None else asdict(after),
        test_retrained=None if retrained is None else asdict(retrained))


def _test_row(name: str, score: dict[str, Any] | None) -> tuple[str, str, str]:
    if score is None:
        return name, "-", "no --test file"
    precision = "-" if score["precision"] is None else f"{score['precision']:.3f}"
    return (name, f"{score['accuracy']:.3f}", f"{score['n']:,} test rows through serving, v{score['version']}; "
            f"{score['answered']:.0%} answered (not fallback), precision of those {precision}")


def learning_table(s: LearningSummary) -> Table:
    table = Table(title=f"what the demo measured on {Path(s.data).name} ({s.shots}-shot champion)")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    fresh = ("-" if s.freshness_p50_s is None else
             f"{s.freshness_p50_s:.2f} / {s.freshness_p95_s:.2f} s")
    rows = [
        ("requests answered", f"{s.requests:,}", f"{s.requests_per_s:.0f}/s over {s.replay_s:.0f} s, {s.failed} "
                                                  "failed; the rows the champion did not train on, shuffled"),
        ("feedback events", f"{s.feedback_events:,}", f"{s.feedback_share:.0%} of requests: the row's label"),
        ("accuracy, first requests", f"{s.accuracy_first:.3f}", f"first {s.rolling}; {s.fallback_first:.0%} "
                                                                 "answered with fallback"),
        ("accuracy, last requests", f"{s.accuracy_last:.3f}", f"last {s.rolling}; {s.fallback_last:.0%} "
                                                               "answered with fallback"),
        ("gain", f"{s.gain * 100:+.1f} points", "last minus first"),
        _test_row("test split before", s.test_before),
        _test_row("test split after", s.test_after),
        *([_test_row("test split after the retrain", s.test_retrained)] if s.test_retrained else []),
        ("freshness p50 / p95", fresh, f"feedback produced -> served by the update that learned it "
                                       f"({s.freshness_events:,} events)"),
        ("online updates", f"{s.updates_published} published", f"{s.updates_rejected} rejected by the gate; "
                                                                f"{s.answers_by_online_head:,} answers by an "
                                                                "updated head"),
        ("registry versions", str(len(s.versions)), ", ".join(f"v{v['version']} {v['source']}" for v in s.versions)),
        ("wall time", f"{s.wall_s / 60:.1f} min", "set-up, stack, training, replay, test scoring, summary"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def plot_learning(path: Path, answers: Sequence[Answer], rolling: int, updates: Sequence[Update],
                  summary: LearningSummary) -> Path:
    """Served accuracy over the replay, online updates, and the test split before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(a.sent for a in answers)
    _, done, accuracy = rolling_accuracy(answers, rolling)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    ax.plot(done - start, accuracy, color="tab:blue", lw=1.6, label=f"served accuracy (last {rolling} requests)")
    for score, color, name in ((summary.test_before, "tab:gray", "test split, few-shot champion"),
                               (summary.test_after, "tab:green", "test split, after the replay")):
        if score is not None:
            ax.axhline(score["accuracy"], color=color, ls="--", lw=1.2, label=f"{name}: {score['accuracy']:.3f}")
    low = max(0.0, min(0.5, float(accuracy.min()) - 0.05)) if len(accuracy) else 0.5
    deltas = [u.ts - start for u in updates if u.kind == "delta" and u.ts >= start]
    if deltas:
        ax.plot(deltas, [low + 0.01] * len(deltas), "|", color="tab:green", ms=10,
                label=f"online update published ({len(deltas)})")
    ax.set_ylim(low, 1.005)
    ax.set_xlabel("seconds since the replay started")
    ax.set_ylabel("accuracy (the row's label)")
    ax.set_title(f"loopline demo on {Path(summary.data).name}: {summary.shots}-shot champion, first "
                 f"{summary.accuracy_first:.3f} -> last {summary.accuracy_last:.3f} ({summary.gain * 100:+.1f} "
                 "points) from live feedback")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
