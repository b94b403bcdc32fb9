"""The drift monitor on generated traffic with synthetic embeddings (no encoder: seconds, not minutes)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evidently.ui.service.base import SeriesFilter
from evidently.ui.service.storage.local.base import InMemoryDataStorage
from evidently.ui.workspace import Workspace

from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from services.feedback.drift import (
    ACCURACY_PANEL,
    DRIFT_SHARE_PANEL,
    DriftMonitor,
    DriftResult,
    DriftSettings,
    Reference,
    build_reference,
    drift_frame,
    feature_columns,
)
from services.feedback.observer import Observer
from services.feedback.settings import FeedbackSettings

DIM = 16
REFERENCE_ROWS = 3_000
WINDOW = 1_000
ACCURACY = 0.95  # of the model on the reference rows and on windows that do not degrade


@dataclass(frozen=True)
class Rows:
    """What the feedback service hands the monitor for a batch of joined events."""

    texts: list[str]
    embeddings: np.ndarray
    predicted: list[str]
    confidence: np.ndarray
    users: list[dict | None]
    correct: np.ndarray

    def args(self) -> tuple:
        return self.texts, self.embeddings, self.predicted, self.confidence, self.users, self.correct


@pytest.fixture(scope="module")
def traffic() -> tuple[pd.DataFrame, dict[str, dict]]:
    """new_phrasing traffic: unseen wordings after the onset (half way)."""
    generated = generate(TrafficConfig(n_events=2 * (REFERENCE_ROWS + WINDOW), n_users=300, seed=3,
                                       scenario="new_phrasing", onset=0.5, strength=0.6))
    users = generated.users.set_index("user_id").to_dict(orient="index")
    return generated.events, users


def _rows(events: pd.DataFrame, users: dict[str, dict], seed: int, *, accuracy: float = ACCURACY,
          shift: np.ndarray | None = None, unsure: bool = False) -> Rows:
    """A model's view of `events`: embeddings around per-intent centres, predictions right with `accuracy`."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(len(INTENTS), DIM))  # the same "encoder" for every batch
    truth = np.array([INTENTS.index(label) for label in events["true_label"]])
    embeddings = centres[truth] + rng.normal(scale=0.5, size=(len(events), DIM))
    if shift is not None:
        embeddings = embeddings + shift
    right = rng.random(len(events)) < accuracy
    predicted = np.where(right, events["true_label"].to_numpy(), rng.choice(INTENTS, size=len(events)))
    right = predicted == events["true_label"].to_numpy()  # a random guess can be right too
    confidence = rng.beta(3, 3, len(events)) if unsure else rng.beta(9, 1, len(events))
    # one unknown user in twenty: the service has no features for them
    user_rows = [None if i % 20 == 0 else users[u] for i, u in enumerate(events["user_id"])]
    return Rows(list(events["text"]), embeddings, list(predicted), confidence, user_rows, right)


@pytest.fixture(scope="module")
def batches(traffic: tuple[pd.DataFrame, dict[str, dict]]) -> dict[str, Rows]:
    events, users = traffic
    before, after = events[~events["after_onset"]], events[events["after_onset"]]
    return {
        "reference": _rows(before.iloc[:REFERENCE_ROWS], users, 1),
        "stable": _rows(before.iloc[REFERENCE_ROWS:], users, 2),
        "after": _rows(after.iloc[:WINDOW], users, 3),  # only the wording changed
    }


@pytest.fixture(scope="module")
def reference(batches: dict[str, Rows]) -> Reference:
    return build_reference(*batches["reference"].args(), n_components=3, max_rows=REFERENCE_ROWS)


def _drifted(traffic: tuple[pd.DataFrame, dict[str, dict]], reference: Reference, accuracy: float) -> Rows:
    """After the onset (unseen words), a few intents only, meaning moved along the main axis, an unsure model."""
    events, users = traffic
    after = events[events["after_onset"]].iloc[WINDOW:]
    few = after["true_label"].value_counts().index[:6]
    rows = after[after["true_label"].isin(few)].iloc[:WINDOW]
    assert len(rows) == WINDOW
    shift = 3.0 * reference.components[0] * reference.frame["pc1"].std()
    return _rows(rows, users, 4, accuracy=accuracy, shift=shift, unsure=True)


def _run(monitor: DriftMonitor, rows: Rows) -> DriftResult:
    monitor.add(*rows.args())
    return monitor.run(now=0.0)


@dataclass(frozen=True)
class TwoRuns:
    monitor: DriftMonitor
    workspace: Path
    stable: DriftResult
    drifted: DriftResult


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, reference: Reference, batches: dict[str, Rows],
             traffic: tuple[pd.DataFrame, dict[str, dict]]) -> TwoRuns:
    """A stable window, then a drifted one with lower accuracy, in one workspace (Evidently runs are slow)."""
    workspace = tmp_path_factory.mktemp("workspace")
    monitor = DriftMonitor(reference, workspace, project_name="loopline-test", settings=DriftSettings(keep_reports=1))
    stable = _run(monitor, batches["stable"])
    drifted = _run(monitor, _drifted(traffic, reference, accuracy=0.7))
    return TwoRuns(monitor, workspace, stable, drifted)


def test_reference_round_trip(tmp_path: Path, reference: Reference, batches: dict[str, Rows]) -> None:
    loaded = Reference.load(reference.save(tmp_path / "reference"))
    pd.testing.assert_frame_equal(loaded.frame, reference.frame)
    np.testing.assert_array_equal(loaded.mean, reference.mean)
    np.testing.assert_array_equal(loaded.components, reference.components)
    assert loaded.vocabulary == reference.vocabulary
    stable = batches["stable"]
    args = (stable.texts, stable.embeddings, stable.predicted, stable.confidence, stable.users)
    pd.testing.assert_frame_equal(drift_frame(loaded, *args), drift_frame(reference, *args))
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "reference").iterdir())


def test_reference_frame(reference: Reference, batches: dict[str, Rows]) -> None:
    frame = reference.frame
    assert list(frame.columns) == [*feature_columns(3), "correct"]
    assert len(frame) == REFERENCE_ROWS
    assert reference.accuracy == pytest.approx(ACCURACY, abs=0.02)
    # PCA axes are orthonormal and the projection is centred
    np.testing.assert_allclose(reference.components @ reference.components.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(frame[["pc1", "pc2", "pc3"]].mean(), 0.0, atol=1e-9)
    assert frame["pc1"].var() >= frame["pc2"].var() >= frame["pc3"].var()
    assert (frame["device"] == "unknown").mean() == pytest.approx(0.05, abs=0.01)
    # Leave-one-out: typos make the reference OOV rate positive, and about what fresh stable text shows.
    stable = batches["stable"]
    live = drift_frame(reference, stable.texts, stable.embeddings, stable.predicted, stable.confidence, stable.users)
    assert 0.0 < frame["oov_rate"].mean() < 0.05
    assert live["oov_rate"].mean() == pytest.approx(frame["oov_rate"].mean(), abs=0.01)


def test_drift_frame_columns(reference: Reference) -> None:
    frame = drift_frame(reference, ["Turn on WiFi", "zzzq blorp wifi", ""], np.zeros((3, DIM)),
                        ["toggle_wifi", "toggle_wifi", "open_app"], np.array([0.9, 0.5, 0.1]),
                        [{"device": "ios", "locale": "en_US"}, None, {"device": float("nan"), "activity_tier": ""}])
    assert frame["text_length"].tolist() == [12, 15, 0]
    assert frame["token_count"].tolist() == [3, 3, 0]
    assert frame["oov_rate"].tolist() == pytest.approx([0.0, 2 / 3, 0.0])
    assert frame["device"].tolist() == ["ios", "unknown", "unknown"]
    assert frame["activity_tier"].tolist() == ["unknown"] * 3
    with pytest.raises(ValueError, match="3 texts"):
        drift_frame(reference, ["a", "b", "c"], np.zeros((2, DIM)), ["x"] * 3, np.ones(3), [None] * 3)
    with pytest.raises(ValueError, match="shape"):
        drift_frame(reference, ["a"], np.zeros((1, DIM + 1)), ["x"], np.ones(1), [None])


def test_window_like_reference_does_not_alert(two_runs: TwoRuns) -> None:
    stable = two_runs.stable
    assert stable.window == 0 and stable.n_events == WINDOW
    assert stable.drift_share <= 1 / 11  # at most one column by chance
    assert stable.accuracy == pytest.approx(ACCURACY, abs=0.03)
    assert not stable.alert
    assert set(stable.scores) == set(feature_columns(3))


def test_drifted_window_with_accuracy_drop_alerts(two_runs: TwoRuns) -> None:
    drifted = two_runs.drifted
    assert drifted.window == 1
    assert {"oov_rate", "pc1", "predicted_intent", "confidence"} <= set(drifted.drifted_columns)
    assert not {"device", "locale", "activity_tier"} & set(drifted.drifted_columns)  # the same users
    assert drifted.drift_share == pytest.approx(len(drifted.drifted_columns) / 11)
    assert drifted.drift_share >= DriftSettings().drift_share_threshold
    assert drifted.accuracy == pytest.approx(0.7, abs=0.04)
    assert drifted.alert


def test_reports_are_written_and_pruned(two_runs: TwoRuns) -> None:
    assert two_runs.drifted.report_path.parent == two_runs.workspace / "reports"
    assert two_runs.drifted.report_path.stat().st_size > 0
    assert not two_runs.stable.report_path.exists()  # keep_reports=1


def test_new_wording_raises_the_oov_rate(reference: Reference, batches: dict[str, Rows]) -> None:
    after = batches["after"]
    live = drift_frame(reference, after.texts, after.embeddings, after.predicted, after.confidence, after.users)
    assert live["oov_rate"].mean() > 5 * reference.frame["oov_rate"].mean()


def test_drift_without_accuracy_drop_does_not_alert(tmp_path: Path, reference: Reference,
                                                    traffic: tuple[pd.DataFrame, dict[str, dict]]) -> None:
    """Documented: drift the model copes with is reported, not alerted; retraining would not help."""
    result = _run(DriftMonitor(reference, tmp_path), _drifted(traffic, reference, accuracy=ACCURACY))
    assert result.drift_share >= DriftSettings().drift_share_threshold
    assert result.accuracy >= result.baseline_accuracy - DriftSettings().accuracy_drop
    assert not result.alert


def test_workspace_project_snapshots_and_dashboard(two_runs: TwoRuns, reference: Reference) -> None:
    stable, drifted = two_runs.stable, two_runs.drifted
    restarted = DriftMonitor(reference, two_runs.workspace, project_name="loopline-test")  # a service restart
    workspace = Workspace(str(two_runs.workspace))
    projects = workspace.search_project("loopline-test")
    assert [p.id for p in projects] == [restarted.project_id]
    snapshots = {str(s) for s in workspace.list_runs(restarted.project_id)}
    assert snapshots == {stable.snapshot_id, drifted.snapshot_id}
    assert restarted.window == 2  # numbering continues

    titles = [panel.title for panel in workspace.get_dashboard(restarted.project_id).panels]
    assert titles.count(DRIFT_SHARE_PANEL) == 1 and titles.count(ACCURACY_PANEL) == 1

    # The series the UI plots for those panels, read by the UI's own storage code.
    storage = InMemoryDataStorage(str(two_runs.workspace))
    filters = [SeriesFilter(tags=[], metadata={}, metric=value.metric, metric_labels=value.metric_labels)
               for panel in workspace.get_dashboard(restarted.project_id).panels
               if panel.title in (DRIFT_SHARE_PANEL, ACCURACY_PANEL) for value in panel.values]
    series = asyncio.run(storage.get_data_series(restarted.project_id, filters, None, None)).series
    by_metric = {s.metric_type.rsplit(":", 1)[-1]: s.values for s in series if s.params.get("value_type") != "count"}
    assert by_metric["MeanValue"] == pytest.approx([stable.accuracy, drifted.accuracy])
    assert by_metric["DriftedColumnsCount"] == pytest.approx([stable.drift_share, drifted.drift_share])


def test_due_by_events(reference: Reference, batches: dict[str, Rows], tmp_path: Path) -> None:
    monitor = DriftMonitor(reference, tmp_path, settings=DriftSettings(window_events=500, min_events=100))
    stable = batches["stable"]
    assert not monitor.due(now=0.0)
    monitor.add(*_head(stable, 499).args())
    assert not monitor.due(now=1.0)
    monitor.add(*_head(stable, 1).args())
    assert monitor.pending == 500 and monitor.due(now=2.0)


def test_a_busy_stream_is_sampled_and_windows_close_no_more_often_than_min_interval(
        reference: Reference, batches: dict[str, Rows], tmp_path: Path) -> None:
    settings = DriftSettings(window_events=300, min_events=100, min_interval_s=10.0)
    monitor = DriftMonitor(reference, tmp_path, settings=settings)
    stable = batches["stable"]
    assert not monitor.due(now=0.0)  # starts the clock
    monitor.add(*_head(stable, 250).args())
    monitor.add(*_head(stable, 200).args())
    assert monitor.pending == 300 and monitor.offered == 450, "the newest 300 rows are kept"
    assert not monitor.due(now=9.9), "full, but the last window closed less than 10 s ago"
    monitor.add(*_head(stable, 1000).args())  # more than a window at once: only its newest rows are computed
    assert monitor.pending == 300 and monitor.due(now=10.0)
    expected = _head(stable, 1000)
    kept = drift_frame(reference, expected.texts[-300:], expected.embeddings[-300:], expected.predicted[-300:],
                       expected.confidence[-300:], expected.users[-300:])
    window = pd.concat(monitor._frames, ignore_index=True)
    pd.testing.assert_frame_equal(window[kept.columns].reset_index(drop=True), kept)
    assert monitor.run(now=10.0).n_events == 300 and monitor.offered == 0


def test_due_by_time_needs_min_events(reference: Reference, batches: dict[str, Rows], tmp_path: Path) -> None:
    monitor = DriftMonitor(reference, tmp_path, settings=DriftSettings(window_seconds=60.0, min_events=200))
    stable = batches["stable"]
    assert not monitor.due(now=100.0)  # starts the clock
    monitor.add(*_head(stable, 199).args())
    assert not monitor.due(now=159.0)
    assert not monitor.due(now=500.0)  # time is up, but too few rows to say anything
    monitor.add(*_head(stable, 1).args())
    assert not monitor.due(now=159.9) and monitor.due(now=160.0)


def test_run_starts_a_new_window(two_runs: TwoRuns, batches: dict[str, Rows]) -> None:
    monitor = two_runs.monitor  # ran its last window at now=0
    assert monitor.pending == 0
    with pytest.raises(ValueError, match="empty"):
        monitor.run(now=1.0)
    monitor.add(*_head(batches["stable"], 200).args())
    assert not monitor.due(now=59.0) and monitor.due(now=60.0)


def test_settings_are_checked(reference: Reference, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DriftSettings(min_events=3_000)
    with pytest.raises(ValueError):
        DriftSettings(drift_share_threshold=0.0)
    with pytest.raises(ValueError, match="PCA axes"):
        DriftMonitor(reference, tmp_path, settings=DriftSettings(n_components=2))


def _head(rows: Rows, n: int) -> Rows:
    return Rows(rows.texts[:n], rows.embeddings[:n], rows.predicted[:n], rows.confidence[:n], rows.users[:n],
                rows.correct[:n])


def test_the_observer_says_whether_drift_monitoring_is_on(tmp_path: Path, reference: Reference,
                                                         batches: dict[str, Rows]) -> None:
    """What the feedback service's /healthz reports as "drift": the project is in the workspace once "on"."""
    settings = FeedbackSettings(state_dir=tmp_path, model_name="loopline-test")

    def settled(reference: Reference | None, settings: FeedbackSettings = settings) -> str:
        observer = Observer(settings, reference, version=1)
        deadline = time.monotonic() + 60
        while observer.drift == "starting" and time.monotonic() < deadline:
            time.sleep(0.05)
        observer.close()
        return observer.drift

    assert settled(reference) == "on"
    assert Workspace(str(tmp_path / "evidently")).search_project("loopline-test")
    assert settled(None) == "off"
    assert settled(reference, settings.model_copy(update={"drift": False})) == "off"
    two_axes = build_reference(*batches["reference"].args(), n_components=2, max_rows=REFERENCE_ROWS)
    assert settled(two_axes) == "failed"  # it does not fit the monitor's 3 axes
