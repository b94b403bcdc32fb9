"""Drift monitor of the feedback service: each window of joined events against a training reference.

Every event becomes one row of a few plain columns (`drift_frame`); the reference
rows go through the same code, so both sides of a comparison are computed alike:

| columns                         | what                                      | moves when                   |
| ------------------------------- | ----------------------------------------- | ---------------------------- |
| text_length, token_count        | characters and words                      | people phrase things anew    |
| oov_rate                        | share of words no training text used      | new slang, new app names     |
| pc1..pcK                        | embedding on the reference's top PCA axes | meaning moves                |
| predicted_intent, confidence    | what the model said and how sure it was   | intent mix shifts; unsure    |
| device, locale, activity_tier   | user features, "unknown" when missing     | a different user population  |

Evidently compares columns, not 384-d vectors, so the embedding enters as its
projection on the top K principal directions of the reference embeddings (numpy
SVD; K=3 keeps the report small).

A window is compared with the reference by one Evidently Report: the metrics
`DataDriftPreset` generates (`DriftedColumnsCount`, one `ValueDrift` per column)
over those columns, with the per-column test pinned to distances rather than
p-values (Wasserstein distance normed by the reference's standard deviation for
numbers, Jensen-Shannon distance for categories; a column drifts at >= 0.1). With
thousands of rows a p-value flags differences too small to matter; a distance
says how far the distribution moved (small windows add noise: see `DriftSettings`).
Pinning also stops Evidently from switching tests when the reference has 1,000
rows or fewer.

Accuracy: every window row carries `correct` (progressive validation: was the
prediction right before the model learned from it), and `MeanValue(correct)` in
the same Report puts the window accuracy into the snapshot, where the dashboard
plots it next to the drift share. Evidently needs a column on both sides of a
comparison (and NaN would end up in the snapshot JSON the UI has to parse), so the
reference carries `correct` too: whether the model was right on the reference rows.
Build the reference from rows the model did not learn from (the train flow's
held-out split) so that this accuracy is honest: it is the baseline the alert
compares with, unless `DriftSettings.baseline_accuracy` is set.

Alert = drift share >= `drift_share_threshold` AND window accuracy < baseline -
`accuracy_drop`. Drift alone (people talk differently but the model copes) is in
the result and on the dashboard, not alerted: retraining would not help. An
accuracy drop without drift (label noise, poisoning) is the update gate's business.

Out-of-vocabulary rate of the reference rows: a training text is always in its own
vocabulary, so reference rows are scored leave-one-out (a word counts as seen if
another training text has it). That is the rate a fresh text from the training
distribution shows; without it the reference rate would be 0 and every typo would
look like drift.

The Evidently workspace holds one project per `project_name`, looked up by name
(created once, reused after a restart), with the dashboard panels added by title
when missing; window indices continue from the number of snapshots in the project.
One monitor writes to one project: two would share window indices.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.features import tokens

# Evidently is imported where a monitor needs it: importing it takes seconds (most of the feedback
# service's start-up); a service with drift off never imports it, and the observer's thread does otherwise.
if TYPE_CHECKING:
    from evidently import Report
    from evidently.sdk.models import DashboardPanelPlot
    from evidently.ui.workspace import Workspace

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TEXT_COLUMNS = ("text_length", "token_count", "oov_rate")
USER_COLUMNS = ("device", "locale", "activity_tier")
CATEGORICAL_COLUMNS = ("predicted_intent", *USER_COLUMNS)
CORRECT = "correct"
UNKNOWN = "unknown"
NUM_METHOD, CAT_METHOD = "wasserstein", "jensenshannon"  # both: drift when distance >= threshold
FRAME_FILE, PROJECTION_FILE, META_FILE = "frame.parquet", "projection.npz", "reference.json"
REPORTS_DIR = "reports"
DRIFT_SHARE_PANEL, ACCURACY_PANEL, SCORES_PANEL = "Drift share", "Window accuracy", "Drift score by column"

UserRow = Mapping[str, Any] | None


def pc_columns(n_components: int) -> list[str]:
    return [f"pc{i + 1}" for i in range(n_components)]


def feature_columns(n_components: int) -> list[str]:
    """The drift-tested columns of `drift_frame`, in order."""
    return [*TEXT_COLUMNS, *pc_columns(n_components), "predicted_intent", "confidence", *USER_COLUMNS]


@dataclass(frozen=True, eq=False)
class Reference:
    """What windows are compared with: training vocabulary, PCA projection and the reference frame."""

    vocabulary: frozenset[str]
    mean: np.ndarray  # (d,) centre of the reference embeddings
    components: np.ndarray  # (K, d) top principal directions, unit rows
    frame: pd.DataFrame  # drift_frame of the reference rows plus `correct`

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def accuracy(self) -> float:
        """Share of reference rows the model got right: the default alert baseline."""
        return float(self.frame[CORRECT].mean())

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings (n, d) on the reference's principal directions, (n, K)."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self.mean.shape[0]:
            raise ValueError(f"embeddings must have shape (n, {self.mean.shape[0]}), got {emb.shape}")
        return (emb - self.mean) @ self.components.T

    def save(self, folder: str | Path) -> Path:
        """Write parquet (frame), npz (projection) and json (vocabulary); no pickle anywhere."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        self.frame.to_parquet(path / FRAME_FILE, index=False)
        np.savez(path / PROJECTION_FILE, mean=self.mean, components=self.components)
        meta = {"schema_version": SCHEMA_VERSION, "vocabulary": sorted(self.vocabulary)}
        (path / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Reference:
        path = Path(folder)
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: reference schema {meta.get('schema_version')}, expected {SCHEMA_VERSION}")
        with np.load(path / PROJECTION_FILE, allow_pickle=False) as arrays:
            mean, components = arrays["mean"], arrays["components"]
        return cls(frozenset(meta["vocabulary"]), mean, components, pd.read_parquet(path / FRAME_FILE))


def build_reference(
    texts: Sequence[str],
    embeddings: np.ndarray,
    predicted: Sequence[str],
    confidence: np.ndarray,
    users: Sequence[UserRow],
    correct: np.ndarray,
    *,
    n_components: int = 3,
    max_rows: int = 5_000,
    seed: int = 0,
) -> Reference:
    """The reference from training-time rows; `correct` says whether the model was right on each.

    The vocabulary comes from all `texts`; PCA and the frame from a seeded sample
    of at most `max_rows` of them (Evidently's run time grows with the rows).
    """
    n = _check_rows(texts, embeddings=embeddings, predicted=predicted, confidence=confidence, users=users,
                    correct=correct)
    emb = np.asarray(embeddings, dtype=np.float64)
    if not 1 <= n_components <= min(n, emb.shape[1]):
        raise ValueError(f"n_components must be in [1, {min(n, emb.shape[1])}], got {n_components}")
    words = [tokens(t) for t in texts]
    doc_freq = Counter(w for ws in words for w in set(ws))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_rows), replace=False))
    mean = emb[rows].mean(axis=0)
    _, _, vt = np.linalg.svd(emb[rows] - mean, full_matrices=False)
    components = vt[:n_components]
    frame = _frame(
        [texts[i] for i in rows], [words[i] for i in rows], (emb[rows] - mean) @ components.T,
        [predicted[i] for i in rows], np.asarray(confidence)[rows], [users[i] for i in rows],
        seen=lambda w: doc_freq[w] >= 2,  # leave-one-out: some *other* training text has the word
    )
    frame[CORRECT] = np.asarray(correct, dtype=np.float64)[rows]
    return Reference(frozenset(doc_freq), mean, components, frame)


def drift_frame(
    reference: Reference,
    texts: Sequence[str],
    embeddings: np.ndarray,
    predicted: Sequence[str],
    confidence: np.ndarray,
    users: Sequence[UserRow],
) -> pd.DataFrame:
    """One row per event with the drift-tested columns (see `feature_columns`)."""
    _check_rows(texts, embeddings=embeddings, predicted=predicted, confidence=confidence, users=users)
    return _frame(texts, [tokens(t) for t in texts], reference.project(embeddings), predicted,
                  np.asarray(confidence), users, seen=reference.vocabulary.__contains__)


def _frame(
    texts: Sequence[str],
    words: Sequence[list[str]],
    projected: np.ndarray,
    predicted: Sequence[str],
    confidence: np.ndarray,
    users: Sequence[UserRow],
    seen: Callable[[str], bool],
) -> pd.DataFrame:
    columns: dict[str, Any] = {
        "text_length": np.fromiter((len(t) for t in texts), np.int64, len(texts)),
        "token_count": np.fromiter((len(ws) for ws in words), np.int64, len(words)),
        "oov_rate": np.fromiter((_oov_rate(ws, seen) for ws in words), np.float64, len(words)),
    }
    for i, name in enumerate(pc_columns(projected.shape[1])):
        columns[name] = projected[:, i]
    columns["predicted_intent"] = [str(p) for p in predicted]
    columns["confidence"] = confidence.astype(np.float64)
    for name in USER_COLUMNS:
        columns[name] = [_user_value(u, name) for u in users]
    return pd.DataFrame(columns)


def _oov_rate(words: Sequence[str], seen: Callable[[str], bool]) -> float:
    return sum(not seen(w) for w in words) / len(words) if words else 0.0


def _user_value(user: UserRow, name: str) -> str:
    value = None if user is None else user.get(name)
    if value is None or value != value or value == "":  # None, NaN (from a parquet user table) or empty
        return UNKNOWN
    return str(value)


def _check_rows(texts: Sequence[str], **others: Any) -> int:
    n = len(texts)
    wrong = {name: len(value) for name, value in others.items() if len(value) != n}
    if wrong:
        raise ValueError(f"{n} texts but {wrong}")
    return n


@dataclass(frozen=True)
class DriftSettings:
    """When a window closes and when its drift is an alert.

    `drift_share_threshold` 0.3: with K=3 there are 11 columns, so 4 must drift.
    Measured with MiniLM and a trained head against a 4,000-row held-out reference:
    2,000-row windows of undrifted traffic had drift share 0.00 (six of six),
    `new_phrasing` after its onset 0.36 (oov_rate, pc1, pc3, confidence),
    `prior_shift` 0.27 (which the model handled: accuracy held). Windows near
    `min_events` are noisier: 200-row windows of undrifted traffic reached 0.27-0.36
    (Jensen-Shannon over 22 intents alone sits near 0.13 at 200 rows), which is one
    reason an alert also needs the accuracy drop.
    """

    window_events: int = 2_000
    window_seconds: float = 60.0
    min_events: int = 200  # a timed-out window waits for this many rows: smaller ones are too noisy
    # A full window closes no sooner than this after the last one. At thousands of events per second
    # `window_events` alone would mean several Evidently runs a second; a busier stream is sampled
    # instead: the window keeps its most recent `window_events` rows.
    min_interval_s: float = 0.0
    drift_share_threshold: float = 0.3
    accuracy_drop: float = 0.05
    n_components: int = 3  # PCA axes: build the reference with these; the monitor checks
    column_threshold: float = 0.1  # distance at which one column counts as drifted
    baseline_accuracy: float | None = None  # None: the reference's accuracy
    keep_reports: int = 100  # newest HTML reports kept under workspace_dir/reports (about 4 MB each)

    def __post_init__(self) -> None:
        if not 1 <= self.min_events <= self.window_events:
            raise ValueError("need 1 <= min_events <= window_events")
        if self.window_seconds <= 0 or self.column_threshold <= 0 or self.n_components < 1 or self.min_interval_s < 0:
            raise ValueError("window_seconds, column_threshold and n_components must be positive, "
                             "min_interval_s not negative")
        if not 0 < self.drift_share_threshold <= 1 or not 0 <= self.accuracy_drop <= 1:
            raise ValueError("drift_share_threshold must be in (0, 1] and accuracy_drop in [0, 1]")
        if self.baseline_accuracy is not None and not 0 <= self.baseline_accuracy <= 1:
            raise ValueError("baseline_accuracy must be in [0, 1]")
        if self.keep_reports < 1:
            raise ValueError("keep_reports must be at least 1")


@dataclass(frozen=True)
class DriftResult:
    """What one window run found; `report_path` is the HTML report to log as an artifact."""

    window: int
    n_events: int
    drift_share: float
    drifted_columns: tuple[str, ...]
    scores: dict[str, float] = field(repr=False)  # per column: Wasserstein (normed) or Jensen-Shannon distance
    accuracy: float
    baseline_accuracy: float
    alert: bool
    snapshot_id: str
    report_path: Path


class DriftMonitor:
    """Accumulates one window of events and checks it against the reference with Evidently.

    Not thread-safe. Holds the drift columns of the current window only (not texts
    or embeddings): `add` computes them, `run` resets the window, also when it fails.
    """

    def __init__(
        self,
        reference: Reference,
        workspace_dir: str | Path,
        project_name: str = "loopline",
        settings: DriftSettings = DriftSettings(),
    ) -> None:
        if reference.n_components != settings.n_components:
            raise ValueError(f"the reference has {reference.n_components} PCA axes, settings say "
                             f"{settings.n_components}: build it with n_components=settings.n_components")
        from evidently import DataDefinition, Dataset
        from evidently.ui.workspace import Workspace

        self.reference = reference
        self.settings = settings
        self.workspace_dir = Path(workspace_dir)
        self.columns = feature_columns(reference.n_components)
        self._definition = DataDefinition(
            numerical_columns=[c for c in self.columns if c not in CATEGORICAL_COLUMNS] + [CORRECT],
            categorical_columns=list(CATEGORICAL_COLUMNS),
        )
        self._reference_data = Dataset.from_pandas(reference.frame, data_definition=self._definition)
        self._workspace = Workspace(str(self.workspace_dir))
        self.project_id = _project_id(self._workspace, project_name)
        _ensure_panels(self._workspace, self.project_id, self.columns)
        self.window = len(self._workspace.list_runs(self.project_id))  # continue numbering after a restart
        self._frames: list[pd.DataFrame] = []
        self._rows = 0
        self.offered = 0  # rows added to this window, sampled-out ones included
        self._started: float | None = None

    @property
    def baseline_accuracy(self) -> float:
        if self.settings.baseline_accuracy is not None:
            return self.settings.baseline_accuracy
        return self.reference.accuracy

    @property
    def pending(self) -> int:
        """Rows in the current window."""
        return self._rows

    def add(
        self,
        texts: Sequence[str],
        embeddings: np.ndarray,
        predicted: Sequence[str],
        confidence: np.ndarray,
        users: Sequence[UserRow],
        correct: np.ndarray,
    ) -> None:
        """Add joined events to the current window; `correct`: was each prediction right."""
        _check_rows(texts, correct=correct)
        keep = slice(-self.settings.window_events, None)  # rows that would be dropped are not computed
        frame = drift_frame(self.reference, texts[keep], embeddings[keep], predicted[keep], confidence[keep],
                            users[keep])
        frame[CORRECT] = np.asarray(correct, dtype=np.float64)[keep]
        self._frames.append(frame)
        self._rows += len(frame)
        self.offered += len(texts)
        while self._rows > self.settings.window_events:  # a full window keeps its most recent rows
            surplus, first = self._rows - self.settings.window_events, self._frames[0]
            self._frames[0] = first.iloc[surplus:]
            if self._frames[0].empty:
                self._frames.pop(0)
            self._rows -= min(surplus, len(first))

    def due(self, now: float) -> bool:
        """Window full, or `window_seconds` since it started with at least `min_events` rows.

        The clock of the first window starts at the first `due` call, later ones at the last `run`.
        """
        if self._started is None:
            self._started = now
        if self._rows >= self.settings.window_events:
            return now - self._started >= self.settings.min_interval_s
        return self._rows >= self.settings.min_events and now - self._started >= self.settings.window_seconds

    def run(self, now: float) -> DriftResult:
        """Compare the window with the reference, record it in the workspace, start a new window."""
        if not self._rows:
            raise ValueError("the window is empty")
        try:
            return self._run(pd.concat(self._frames, ignore_index=True), self.offered)
        finally:
            self._frames, self._rows, self._started, self.offered = [], 0, now, 0

    def _run(self, current: pd.DataFrame, offered: int) -> DriftResult:
        from evidently import Dataset

        index, settings = self.window, self.settings
        current_data = Dataset.from_pandas(current, data_definition=self._definition)
        snapshot = _report(self.columns, settings).run(  # current first, reference second
            current_data, self._reference_data, name=f"window {index}",
            metadata={"window": str(index), "n_events": str(len(current)), "events_seen": str(offered)})
        share, scores, accuracy = _read_results(snapshot.dict())
        ref = self._workspace.add_run(self.project_id, snapshot)
        report_path = self.workspace_dir / REPORTS_DIR / f"window-{index:06d}-{ref.id}.html"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report_path))
        _prune(report_path.parent, settings.keep_reports)
        self.window += 1

        baseline = self.baseline_accuracy
        drifted = tuple(c for c in self.columns if scores[c] >= settings.column_threshold)
        alert = share >= settings.drift_share_threshold and accuracy < baseline - settings.accuracy_drop
        result = DriftResult(index, len(current), share, drifted, scores, accuracy, baseline, alert,
                             str(ref.id), report_path)
        (log.warning if alert else log.info)(
            "drift window %d: %d events, drift share %.2f (%s), accuracy %.3f (baseline %.3f)%s",
            index, len(current), share, ", ".join(drifted) or "none", accuracy, baseline,
            ": ALERT" if alert else "")
        return result


def _report(columns: Sequence[str], settings: DriftSettings) -> Report:
    """Drift share, one drift score per column, and the window accuracy.

    The metrics `DataDriftPreset` generates, without its extra rendering of a legacy
    drift table, which doubled the run time (3.9 s against 2.0 s for 2,000 rows).
    """
    from evidently import Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, ValueDrift

    def method(column: str) -> str:
        return CAT_METHOD if column in CATEGORICAL_COLUMNS else NUM_METHOD

    return Report([
        DriftedColumnsCount(columns=list(columns), num_method=NUM_METHOD, cat_method=CAT_METHOD,
                            threshold=settings.column_threshold, drift_share=settings.drift_share_threshold),
        *(ValueDrift(column=c, method=method(c), threshold=settings.column_threshold) for c in columns),
        MeanValue(column=CORRECT),
    ])


def _read_results(snapshot: Mapping[str, Any]) -> tuple[float, dict[str, float], float]:
    """Drift share, per-column scores and window accuracy from `Snapshot.dict()`."""
    share, accuracy, scores = None, None, {}
    for metric in snapshot["metrics"]:
        config, value = metric["config"], metric["value"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            share = float(value["share"])
        elif kind == "ValueDrift":
            scores[config["column"]] = float(value)
        elif kind == "MeanValue" and config["column"] == CORRECT:
            accuracy = float(value)
    if share is None or accuracy is None:
        raise RuntimeError("the Evidently snapshot lacks the drift share or the accuracy")
    return share, scores, accuracy


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` reports: one every minute would fill the disk (the caller logs them)."""
    for old in sorted(folder.glob("window-*.html"))[:-keep]:
        old.unlink(missing_ok=True)


def _project_id(workspace: Workspace, name: str) -> uuid.UUID:
    """The project called `name`, created on first use; the oldest one if several exist."""
    found = workspace.search_project(name)
    if not found:
        project = workspace.create_project(name, description="loopline feedback service: drift per window")
        log.info("created Evidently project %r (%s)", name, project.id)
        return project.id
    if len(found) > 1:
        log.warning("%d Evidently projects are called %r; using the oldest", len(found), name)
    return min((p.id for p in found), key=str)  # uuid7: string order is creation order


def _ensure_panels(workspace: Workspace, project_id: uuid.UUID, columns: Sequence[str]) -> None:
    """Add the dashboard panels that are missing, by title, so restarts do not duplicate them."""
    project = workspace.get_project(project_id)
    assert project is not None
    present = {panel.title for panel in workspace.get_dashboard(project_id).panels}
    for panel in _panels(columns):
        if panel.title not in present:
            project.dashboard.add_panel(panel)  # no tab name: Evidently 0.7.23 lists a panel twice in a named tab


def _panels(columns: Sequence[str]) -> list[DashboardPanelPlot]:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    return [
        line_plot_panel(
            DRIFT_SHARE_PANEL, size="half", description="share of drift-tested columns that drifted, per window",
            values=[PanelMetric(legend="drift share", metric="DriftedColumnsCount",
                                metric_labels={"value_type": "share"})]),
        line_plot_panel(
            ACCURACY_PANEL, size="half", description="progressive validation: predictions right before learning",
            values=[PanelMetric(legend="accuracy", metric="MeanValue", metric_labels={"column": CORRECT})]),
        line_plot_panel(
            SCORES_PANEL, description="Wasserstein (normed) or Jensen-Shannon distance to the reference",
            values=[PanelMetric(legend=c, metric="ValueDrift", metric_labels={"column": c}) for c in columns]),
    ]
