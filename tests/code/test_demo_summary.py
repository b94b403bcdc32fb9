"""The demo's plan and its summary arithmetic, on recorded data made up here (no stack, no servers)."""

from __future__ import annotations

import io
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from loopline.demo.plan import DemoPlan, FeedbackModel
from loopline.demo.report import (
    freshness,
    held_back,
    plot,
    rolling_accuracy,
    served_around,
    summarize,
    summary_table,
)
from loopline.demo.simulator import Answer, SentFeedback
from loopline.demo.watch import FlowRun, RegistryVersion, Update, parse_metrics, version_key
from models.traffic import generate
from services.feedback.learner import LearnSettings, OnlineLearner


def test_held_back_is_the_feedback_services_rule() -> None:
    learner = SimpleNamespace(settings=LearnSettings(holdout_share=0.1))
    ids = [uuid.uuid4().hex for _ in range(2_000)]
    assert [held_back(i, 0.1) for i in ids] == [OnlineLearner.held_back(learner, i) for i in ids]  # type: ignore[arg-type]


def test_plans_replay_the_same_users_as_training_with_a_seeded_feedback_model() -> None:
    plan = DemoPlan.make("small", "tiny", seed=3)
    assert plan.traffic().user_seed == plan.train_config().seed == 3
    assert plan.traffic().seed != plan.train_config().seed  # other requests than the training stream
    events = generate(plan.traffic()).events
    answered, delays = plan.feedback.plan(events["user_id"].tolist(), plan.seed)
    again, _ = plan.feedback.plan(events["user_id"].tolist(), plan.seed)
    assert (answered == again).all()
    assert 0.25 < answered.mean() < 0.45  # half of the users, 70% of their requests
    assert delays.max() <= plan.feedback.delay_max_s and np.median(delays) == pytest.approx(2.0, rel=0.15)
    givers = {u for u, a in zip(events["user_id"], answered, strict=True) if a}
    assert all(plan.feedback.gives_feedback(u, plan.seed) for u in givers)
    assert plan.stack_env["LOOPLINE_MIN_HOLDOUT"] == "20"
    assert plan.stack_env["LOOPLINE_RUNNER_ENABLED"] == "true"
    assert plan.stack_env["LOOPLINE_RUNNER_ENCODER"] == plan.encoder
    assert DemoPlan.make("small", retrain=False).stack_env["LOOPLINE_RUNNER_ENABLED"] == "false"
    with pytest.raises(ValueError, match="too few"):
        DemoPlan.make("small", events=300)
    with pytest.raises(ValueError, match="encoder"):
        DemoPlan.make("full", "bert")


def test_feedback_model_describes_itself() -> None:
    assert "50% of users" in FeedbackModel().describe()


def test_versions_order_along_one_chain() -> None:
    assert version_key("3") == (3, 0) and version_key("3+ftrl.12") == (3, 12)
    assert sorted(["2+ftrl.3", "1+ftrl.10", "2", "1"], key=version_key) == ["1", "1+ftrl.10", "2", "2+ftrl.3"]


def test_metrics_text_is_read_by_name_and_labels() -> None:
    text = ('# HELP x\nloopline_feedback_windows_total{decision="published"} 4.0\n'
            "loopline_feedback_progressive_accuracy 0.93\n")
    assert parse_metrics(text) == {'loopline_feedback_windows_total{decision="published"}': 4.0,
                                   "loopline_feedback_progressive_accuracy": 0.93}


def _ids(n: int, share: float, held: bool) -> list[str]:
    """n event ids that the hold-back rule does (or does not) hold back."""
    found: list[str] = []
    while len(found) < n:
        candidate = uuid.uuid4().hex
        if held_back(candidate, share) == held:
            found.append(candidate)
    return found


def test_freshness_counts_from_the_record_to_the_first_answer_by_a_version_that_learned_it() -> None:
    learned, held = _ids(4, 0.1, held=False), _ids(1, 0.1, held=True)
    feedback = [SentFeedback(0, learned[0], 100.3, acked=True),  # window (100, 102] -> 1+ftrl.1
                SentFeedback(1, learned[1], 101.9, acked=True),  # same window
                SentFeedback(2, learned[2], 102.5, acked=True),  # window (102, 104]: rejected, no delta
                SentFeedback(3, learned[3], 104.1, acked=True),  # window (104, 106] -> 1+ftrl.2, served as v2
                SentFeedback(4, held[0], 100.5, acked=True)]
    updates = [Update("1+ftrl.1", "delta", 1, 1, 102.0, 102.3), Update("1+ftrl.2", "delta", 1, 2, 106.0, 106.2)]
    seen = {"1": 90.0, "1+ftrl.1": 102.6, "2": 107.0}  # 1+ftrl.2 never polled; v2 (its registration) was
    fresh = freshness(feedback, updates, seen, interval_s=2.0, holdout_share=0.1)
    assert fresh.seconds == pytest.approx([2.3, 0.7, 2.9])
    assert (fresh.held_back, fresh.unpublished, fresh.unseen) == (1, 1, 0)
    late = freshness(feedback[3:4], updates, {"1": 90.0}, 2.0, 0.1)
    assert late.seconds == [] and late.unseen == 1


def _answers(correct: list[bool], onset: int, version: str = "1") -> list[Answer]:
    return [Answer(i, 1000.0 + i, 1000.1 + i, version if i < 50 else "1+ftrl.3", c, i >= onset)
            for i, c in enumerate(correct)]


def test_summary_numbers_come_from_the_recorded_answers_and_metrics(tmp_path) -> None:
    rng = np.random.default_rng(0)
    correct = list(rng.random(400) < 0.95)  # before the onset (200)
    correct[200:300] = list(rng.random(100) < 0.6)  # the drop
    answers = _answers(correct, onset=200)
    feedback = [SentFeedback(i, uuid.uuid4().hex, 1000.5 + i, acked=True) for i in range(0, 400, 3)]
    fresh = freshness(feedback, [], {}, 2.0, 0.1)
    metrics = {'loopline_feedback_windows_total{decision="published"}': 7.0,
               'loopline_feedback_windows_total{decision="rejected"}': 1.0,
               'loopline_feedback_observer_total{outcome="drift_windows"}': 3.0}
    versions = [RegistryVersion(1, 900.0, "train", "", "promoted", "0.95"),
                RegistryVersion(2, 1300.0, "online", "1", "promoted", "0.9"),
                RegistryVersion(3, 1350.0, "retrain", "2", "promoted", "0.97")]
    runs = [FlowRun("r", "brave-fox", "Completed", 1260.0, 1340.0)]
    s = summarize(answers, feedback, 2, onset_index=200, rolling=50, fresh=fresh, metrics=metrics,
                  drift_time=1250.05, versions=versions, runs=runs)
    assert s.accuracy_before == pytest.approx(np.mean(correct[:200]))
    assert s.accuracy_worst < 0.75 < s.accuracy_before
    assert s.accuracy_recovered == pytest.approx(np.mean(correct[300:]))
    assert s.drift_detected and s.drift_after_requests == 50 and s.drift_after_s == pytest.approx(50.05)
    assert s.drift_after_feedback == len([f for f in feedback if f.index >= 200 and f.ts <= 1250.05])
    assert (s.updates_published, s.updates_rejected, s.drift_windows) == (7, 1, 3)
    assert s.updates_served == 1 and s.answers_by_online_head == 350
    assert [v["source"] for v in s.versions] == ["train", "online", "retrain"]
    assert s.retrain == {"flow_run": "brave-fox", "state": "Completed", "seconds": 80.0, "version": 3,
                         "decision": "promoted"}
    cut = summarize(answers, feedback, 2, 200, 50, fresh, metrics, None, versions, runs, retrain_cut=True)
    assert cut.retrain is not None and cut.retrain["state"] == "stopped at the time budget (Completed)"
    assert not cut.drift_detected and cut.drift_after_requests is None
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(summary_table(cut))
    text = console.export_text()
    assert "not detected" in text and "stopped at the time budget" in text
    assert s.freshness_p50_s is None and s.freshness_excluded["unpublished"] > 0

    png = plot(tmp_path / "demo.png", answers, 50, [Update("1+ftrl.1", "delta", 1, 1, 1010.0, 1010.2)],
               versions, runs, 1250.15, s)
    assert png.stat().st_size > 10_000


def test_rolling_accuracy_follows_the_stream_order() -> None:
    answers = list(reversed(_answers([True] * 10 + [False] * 10, onset=10)))
    index, _, accuracy = rolling_accuracy(answers, 10)
    assert list(index) == list(range(9, 20)) and accuracy[0] == 1.0 and accuracy[-1] == 0.0


def test_a_summary_needs_answers_on_both_sides_of_the_onset() -> None:
    fresh = freshness([], [], {}, 2.0, 0.1)
    with pytest.raises(ValueError, match="too few"):
        summarize(_answers([True] * 20, onset=100), [], 0, 100, 10, fresh, {}, None, [], [])


def test_demo_refuses_bad_options_and_foreign_state_folders_before_starting_anything(tmp_path) -> None:
    from typer.testing import CliRunner

    from loopline.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["demo", "--size", "huge"]).exit_code == 2
    bad = runner.invoke(app, ["demo", "--encoder", "bert", "--state-dir", str(tmp_path / "s")])
    assert bad.exit_code == 2 and "encoder must be minilm or tiny" in bad.output

    used = tmp_path / "used"
    (used / "mlflow").mkdir(parents=True)
    kept = runner.invoke(app, ["demo", "--state-dir", str(used)])
    assert kept.exit_code == 2 and "--reset" in kept.output and (used / "mlflow").is_dir()

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    refused = runner.invoke(app, ["demo", "--state-dir", str(foreign), "--reset"])
    assert refused.exit_code == 2 and "not deleting" in refused.output and (foreign / "cat.jpg").exists()


def test_the_retrain_deployments_train_on_the_champions_data_plus_what_was_collected() -> None:
    from flows.deployments import build_deployments

    nightly, on_drift = build_deployments(encoder="tiny")
    for deployment in (nightly, on_drift):
        config = deployment.parameters["config"]
        assert config["from_champion"] and config["collected"] and config["encoder"] == "tiny"


def test_served_accuracy_around_a_promotion_counts_requests_before_and_from_the_first_answer_by_it() -> None:
    versions = ["1+ftrl.3"] * 10 + ["5"] * 2 + ["5+ftrl.1"] * 8
    answers = [Answer(i, float(i), float(i), v, correct=i % 2 == 0 if i < 10 else True, after_onset=True)
               for i, v in enumerate(versions)]
    around = served_around(answers, 5, 4)
    assert around == {"served_before": 0.5, "served_before_n": 4, "served_after": 1.0, "served_after_n": 4}
    assert served_around(answers, 7, 4) == {} and served_around(answers, None, 4) == {}
