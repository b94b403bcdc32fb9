"""The demo's summary, computed only from what the replay and the watchers recorded, and its plot.

Accuracy is served accuracy: the answer serving gave against the intent the user
meant (`true_label`), in the order of the stream, over windows of `plan.rolling`
requests. Freshness, per feedback event the service learned (not held back, in a
window whose update was published): from the event's record time to the first time
serving answered with the delta of that window or a later version on the same chain
(`window_end` on `model-updates` names the window; serving's versions come from
`/v1/models/current` polls and predict answers).
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from loopline.demo.simulator import Answer, SentFeedback
from loopline.demo.watch import FlowRun, RegistryVersion, Update, version_key


def held_back(event_id: str, share: float) -> bool:
    """The feedback service's rule (`OnlineLearner.held_back`): these events judge updates, never train."""
    return zlib.crc32(event_id.encode()) % 10_000 < share * 10_000


@dataclass(frozen=True)
class Freshness:
    seconds: list[float]  # one per measured event
    held_back: int
    unpublished: int  # its window's update was rejected or had too little evidence
    unseen: int  # published, but serving was not seen answering with it before the end

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.seconds, q)) if self.seconds else None


def freshness(feedback: Sequence[SentFeedback], updates: Sequence[Update], first_seen: dict[str, float],
              interval_s: float, holdout_share: float) -> Freshness:
    deltas: dict[int, Update] = {}
    for update in updates:
        if update.kind == "delta" and update.window_end is not None:
            deltas.setdefault(round(update.window_end / interval_s), update)  # a sync delta reuses a window_end
    chain = sorted((version_key(v), t) for v, t in first_seen.items())
    keys = [k for k, _ in chain]
    earliest = list(np.minimum.accumulate([t for _, t in chain][::-1])[::-1]) if chain else []  # suffix minima
    seconds, counts = [], {"held_back": 0, "unpublished": 0, "unseen": 0}
    for sent in feedback:
        if not sent.acked:
            continue
        if held_back(sent.event_id, holdout_share):
            counts["held_back"] += 1
            continue
        delta = deltas.get(math.floor(sent.ts / interval_s) + 1)  # the aligned window holding the event
        if delta is None:
            counts["unpublished"] += 1
            continue
        at = bisect.bisect_left(keys, (delta.base, delta.sequence))
        if at == len(keys):
            counts["unseen"] += 1
            continue
        seconds.append(float(earliest[at]) - sent.ts)
    return Freshness(seconds, **counts)


def rolling_accuracy(answers: Sequence[Answer], window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stream index, time answered, accuracy of the `window` requests ending there), in stream order."""
    ordered = sorted(answers, key=lambda a: a.index)
    correct = np.array([a.correct for a in ordered], dtype=float)
    if len(correct) < window:
        return np.array([]), np.array([]), np.array([])
    sums = np.convolve(correct, np.ones(window), mode="valid") / window
    index = np.array([a.index for a in ordered])[window - 1:]
    done = np.maximum.accumulate(np.array([a.done for a in ordered]))[window - 1:]
    return index, done, sums


@dataclass(frozen=True)
class Summary:
    requests: int
    failed: int
    replay_s: float
    requests_per_s: float
    feedback_events: int
    feedback_share: float
    accuracy_before: float
    accuracy_worst: float
    accuracy_recovered: float
    rolling: int
    recovered_over: int
    freshness_p50_s: float | None
    freshness_p95_s: float | None
    freshness_events: int
    freshness_excluded: dict[str, int]
    drift_detected: bool
    drift_after_requests: int | None
    drift_after_feedback: int | None
    drift_after_s: float | None
    drift_windows: int
    drift_event_after_alert_s: float | None  # from the alert to its event on the Prefect server
    updates_published: int
    updates_rejected: int
    updates_served: int  # distinct online versions (N+ftrl.K) that answered predict requests
    answers_by_online_head: int
    versions: list[dict[str, Any]]
    retrain: dict[str, Any] | None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(answers: Sequence[Answer], feedback: Sequence[SentFeedback], failed: int, onset_index: int,
              rolling: int, fresh: Freshness, metrics: dict[str, float], drift_time: float | None,
              versions: Sequence[RegistryVersion], runs: Sequence[FlowRun],
              drift_event: float | None = None, retrain_cut: bool = False) -> Summary:
    """`drift_time`: when the feedback service raised its drift alert; `drift_event`: when the
    `loopline.drift.detected` event it emitted reached Prefect (the retrain trigger); `retrain_cut`:
    the retrain was still running at the demo's time budget and was stopped."""
    if not answers:
        raise ValueError("no request was answered")
    ordered = sorted(answers, key=lambda a: a.index)
    before = [a.correct for a in ordered if not a.after_onset]
    after = [a.correct for a in ordered if a.after_onset]
    if not before or len(after) < rolling:
        raise ValueError(f"too few answers around the onset ({len(before)} before, {len(after)} after)")
    worst = float(np.convolve(np.array(after, dtype=float), np.ones(rolling), mode="valid").min() / rolling)
    tail = min(2 * rolling, len(after))
    start, end = min(a.sent for a in answers), max(a.done for a in answers)
    onset_time = min((a.sent for a in answers if a.after_onset), default=None)
    drift_after = None
    if drift_time is not None and onset_time is not None:
        drift_after = (sum(1 for a in answers if a.after_onset and a.done <= drift_time),
                       sum(1 for f in feedback if f.index >= onset_index and f.ts <= drift_time),
                       drift_time - onset_time)
    online = [a.version for a in answers if "+ftrl." in a.version]
    retrain = None
    if runs:
        run = sorted(runs, key=lambda r: r.start or math.inf)[0]
        made = sorted((v for v in versions if v.source == "retrain"), key=lambda v: v.version)
        state = f"stopped at the time budget ({run.state})" if retrain_cut else run.state
        retrain = {"flow_run": run.name, "state": state,
                   "seconds": None if run.start is None or run.end is None else run.end - run.start,
                   "version": made[0].version if made else None, "decision": made[0].decision if made else None,
                   **served_around(ordered, made[0].version if made else None, 2 * rolling)}

    def windows(decision: str) -> int:
        return int(metrics.get(f'loopline_feedback_windows_total{{decision="{decision}"}}', 0.0))

    return Summary(
        requests=len(answers), failed=failed, replay_s=end - start, requests_per_s=len(answers) / (end - start),
        feedback_events=sum(1 for f in feedback if f.acked), feedback_share=len(feedback) / len(answers),
        accuracy_before=float(np.mean(before)), accuracy_worst=worst,
        accuracy_recovered=float(np.mean(after[-tail:])), rolling=rolling, recovered_over=tail,
        freshness_p50_s=fresh.percentile(50), freshness_p95_s=fresh.percentile(95),
        freshness_events=len(fresh.seconds),
        freshness_excluded={"held_back": fresh.held_back, "unpublished": fresh.unpublished,
                            "unseen": fresh.unseen},
        drift_detected=drift_time is not None,
        drift_after_requests=drift_after[0] if drift_after else None,
        drift_after_feedback=drift_after[1] if drift_after else None,
        drift_after_s=drift_after[2] if drift_after else None,
        drift_windows=int(metrics.get('loopline_feedback_observer_total{outcome="drift_windows"}', 0.0)),
        drift_event_after_alert_s=None if drift_event is None or drift_time is None else drift_event - drift_time,
        updates_published=windows("published"), updates_rejected=windows("rejected"),
        updates_served=len(set(online)), answers_by_online_head=len(online),
        versions=[{"version": v.version, "source": v.source, "parent": v.parent, "decision": v.decision}
                  for v in sorted(versions, key=lambda v: v.version)],
        retrain=retrain)


def served_around(ordered: Sequence[Answer], version: int | None, n: int) -> dict[str, Any]:
    """Served accuracy over the `n` requests before the first answer by `version` (or an online head on it)
    and the `n` from it on; none if it never answered."""
    if version is None:
        return {}
    mark = f"{version}+ftrl."
    first = next((i for i, a in enumerate(ordered) if a.version == str(version) or a.version.startswith(mark)),
                 None)
    if first is None or first == 0:
        return {}
    before, after = ordered[max(0, first - n):first], ordered[first:first + n]
    return {"served_before": float(np.mean([a.correct for a in before])), "served_before_n": len(before),
            "served_after": float(np.mean([a.correct for a in after])), "served_after_n": len(after)}


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def summary_table(s: Summary) -> Table:
    table = Table(title="what the demo measured")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    rows = [
        ("requests answered", f"{s.requests:,}", f"{s.requests_per_s:.0f}/s over {s.replay_s:.0f} s, "
                                                  f"{s.failed} failed"),
        ("feedback events", f"{s.feedback_events:,}", f"{s.feedback_share:.0%} of requests, over Kafka"),
        ("accuracy before drift", f"{s.accuracy_before:.3f}", "served answer = intent meant, before the onset"),
        ("accuracy at its worst", f"{s.accuracy_worst:.3f}", f"worst {s.rolling} consecutive requests after it"),
        ("accuracy recovered", f"{s.accuracy_recovered:.3f}", f"last {s.recovered_over} requests"),
        ("freshness p50 / p95", f"{_fmt(s.freshness_p50_s, '.2f')} / {_fmt(s.freshness_p95_s, '.2f')} s",
         f"feedback produced -> served by the update that learned it ({s.freshness_events:,} events)"),
        ("drift detected after",
         "not detected" if not s.drift_detected else
         f"{s.drift_after_requests:,} requests", "" if not s.drift_detected else
         f"{s.drift_after_feedback:,} feedback events, {_fmt(s.drift_after_s, '.0f')} s after the onset "
         f"({s.drift_windows} drift windows in all); on Prefect "
         f"{_fmt(s.drift_event_after_alert_s, '.0f', ' s')} later"),
        ("online updates", f"{s.updates_published} published", f"{s.updates_rejected} rejected by the gate; "
         f"{s.updates_served} served ({s.answers_by_online_head:,} answers by an updated head)"),
        ("registry versions", str(len(s.versions)),
         ", ".join(f"v{v['version']} {v['source']}" for v in s.versions)),
    ]
    if s.retrain is not None:
        took = _fmt(s.retrain["seconds"], ".0f", " s")
        made = f", registered v{s.retrain['version']}" if s.retrain["version"] else ""
        if s.retrain["decision"]:
            made += f" ({s.retrain['decision']})"
        rows.append(("retrain on drift", s.retrain["state"], f"flow run {s.retrain['flow_run']}, {took}{made}"))
        if "served_after" in s.retrain:
            rows.append(("served around its promotion",
                         f"{s.retrain['served_before']:.3f} / {s.retrain['served_after']:.3f}",
                         f"accuracy over the {s.retrain['served_before_n']:,} requests before v{s.retrain['version']} "
                         f"first answered / the {s.retrain['served_after_n']:,} from then on"))
    rows.append(("wall time", f"{s.wall_s / 60:.1f} min", "set-up, stack, training, replay, summary"))
    for row in rows:
        table.add_row(*row)
    return table


def plot(path: Path, answers: Sequence[Answer], rolling: int, updates: Sequence[Update],
         versions: Sequence[RegistryVersion], runs: Sequence[FlowRun], drift_time: float | None,
         summary: Summary) -> Path:
    """Served accuracy over time with the onset, the drift alert, online updates, versions and retrains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(a.sent for a in answers)
    _, done, accuracy = rolling_accuracy(answers, rolling)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    ax.plot(done - start, accuracy, color="tab:blue", lw=1.6,
            label=f"served accuracy (last {rolling} requests)")
    low = max(0.0, min(0.5, float(accuracy.min()) - 0.05) if len(accuracy) else 0.5)
    onset = min((a.sent for a in answers if a.after_onset), default=None)
    if onset is not None:
        ax.axvline(onset - start, color="tab:red", lw=1.5, ls="--", label="drift onset (new phrasing)")
    if drift_time is not None:
        ax.axvline(drift_time - start, color="tab:orange", lw=1.5, label="drift alert (Evidently window)")
    deltas = [u.ts - start for u in updates if u.kind == "delta" and u.ts >= start]
    if deltas:
        ax.plot(deltas, [low + 0.01] * len(deltas), "|", color="tab:green", ms=10,
                label=f"online update published ({len(deltas)})")
    for v in versions:
        if v.source == "train" and v.created < start:
            continue
        color = "tab:purple" if v.source == "retrain" else "tab:gray"
        kept = " (not champion)" if v.decision.startswith("kept") else ""
        ax.axvline(v.created - start, color=color, lw=1, ls=":")
        ax.text(v.created - start, 1.0, f" v{v.version} {v.source}{kept}", rotation=90, va="top", ha="right",
                fontsize=8, color=color)
    for run in runs:
        if run.start is not None:
            end = run.end if run.end is not None else max(a.done for a in answers)
            ax.axvspan(run.start - start, end - start, color="tab:purple", alpha=0.12,
                       label=f"retrain flow run ({run.state})")
    ax.set_ylim(low, 1.005)
    ax.set_xlabel("seconds since the replay started")
    ax.set_ylabel("accuracy (intent the user meant)")
    ax.set_title(f"loopline demo: before {summary.accuracy_before:.3f}, worst {summary.accuracy_worst:.3f}, "
                 f"recovered {summary.accuracy_recovered:.3f}; {summary.updates_published} online updates")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
