"""`loopline demo`, shortened (tiny encoder, small scenario), end to end on its own stack.

It runs the command as users do, in a temporary state folder on free ports, and
checks that the summary's numbers are measurements: the replay's answers in
`demo.json` give the same accuracies, drift was detected by the feedback service
(and the event reached Prefect), online updates were published and answered
requests, the feedback service registered a version, and the plot was written.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from infra.process import free_port
from infra.stack import PORT_ENV
from tests.integration.made_up import made_up
from tests.integration.stack import bin_command

pytestmark = pytest.mark.slow


def test_a_short_demo_reports_what_the_loop_did(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPLINE_", "PREFECT_"))}
    env.update({variable: str(free_port()) for variable in PORT_ENV.values()})
    # Without the retrain runner: the drift event reaching Prefect is checked here, and that such an event
    # starts an on-drift flow run in tests/integration/test_deployments.py; waiting for a whole retrain
    # here would add minutes.
    # Small, and shorter still: 2,400 requests at 80/s replay in 30 s instead of 60.
    command = bin_command("demo", "--size", "small", "--encoder", "tiny", "--no-retrain", "--events", "2400",
                          "--rate", "80", "--state-dir", str(state), "--out", str(out))
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=480)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
        summary = json.loads((out / "summary.json").read_text())
        record = json.loads((out / "demo.json").read_text())

        # accuracies are the replay's own answers (index, sent, done, version, correct), recomputed here
        answers = sorted(record["answers"])
        onset = round(record["plan"]["events"] * record["plan"]["onset"])  # TrafficConfig.onset_index
        before = [a[4] for a in answers if a[0] < onset]
        after = [a[4] for a in answers if a[0] >= onset]
        assert summary["requests"] == len(answers) >= 0.98 * record["plan"]["events"]
        assert summary["accuracy_before"] == pytest.approx(np.mean(before))
        assert summary["accuracy_recovered"] == pytest.approx(np.mean(after[-summary["recovered_over"]:]))
        for name in ("accuracy_before", "accuracy_worst", "accuracy_recovered"):
            assert 0.0 <= summary[name] <= 1.0, name
        assert summary["accuracy_worst"] < summary["accuracy_before"]  # the drift did hurt
        # ...and the loop recovered: the last requests are answered clearly better than the worst stretch
        # (measured with the tiny encoder, one run: worst 0.513, recovered 0.860).
        print(f"demo: before {summary['accuracy_before']:.3f}, worst {summary['accuracy_worst']:.3f}, "
              f"recovered {summary['accuracy_recovered']:.3f}")
        assert summary["accuracy_recovered"] >= summary["accuracy_worst"] + 0.1, summary

        assert summary["drift_detected"], done.stdout[-4000:]
        assert summary["drift_after_requests"] > 0 and summary["drift_windows"] >= 1
        assert record["drift_events"], "loopline.drift.detected reached the Prefect server"

        assert summary["updates_published"] >= 1
        assert summary["updates_served"] >= 1 and summary["answers_by_online_head"] >= 1
        assert any("+ftrl." in a[3] for a in answers)
        assert summary["freshness_events"] > 0 and 0 < summary["freshness_p50_s"] <= summary["freshness_p95_s"]

        assert any(v["source"] == "online" for v in summary["versions"]), summary["versions"]
        assert summary["versions"][0]["source"] == "train"
        assert (out / "demo.png").stat().st_size > 20_000
        for url in ("MLflow", "Prefect", "Evidently", "loopline down --state-dir"):
            assert url in done.stdout

        status = subprocess.run(bin_command("status", "--state-dir", str(state)), env=env, capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0, status.stdout  # the stack stays up for exploring
    finally:
        down = subprocess.run(bin_command("down", "--state-dir", str(state)), env=env, capture_output=True,
                              text=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr


def test_the_demo_on_your_data_learns_your_intents_from_feedback(tmp_path: Path) -> None:
    train, test = tmp_path / "wizard.csv", tmp_path / "wizard-test.csv"
    made_up(300, seed=3).to_csv(train, index=False)
    made_up(20, seed=4).to_csv(test, index=False)
    state, out = tmp_path / "state", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPLINE_", "PREFECT_"))}
    env.update({variable: str(free_port()) for variable in PORT_ENV.values()})
    command = bin_command("demo", "--data", str(train), "--test", str(test), "--shots", "10", "--size", "small",
                          "--encoder", "tiny", "--rate", "80", "--state-dir", str(state), "--out", str(out))
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=480)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
        summary = json.loads((out / "summary.json").read_text())
        record = json.loads((out / "demo.json").read_text())

        answers = [a[4] for a in sorted(record["answers"])]
        rolling = summary["rolling"]
        # every row but the champion's 10 per intent (and their repeats: the made-up rows repeat some texts)
        assert summary["requests"] == len(answers) >= 0.98 * record["plan"]["events"]
        assert 0.6 * (6 * 300) < record["plan"]["events"] <= 6 * 300 - 6 * 10
        assert summary["accuracy_first"] == pytest.approx(np.mean(answers[:rolling]))
        assert summary["accuracy_last"] == pytest.approx(np.mean(answers[-rolling:]))
        assert summary["updates_published"] >= 1 and summary["answers_by_online_head"] >= 1
        before, after = summary["test_before"], summary["test_after"]
        assert before["n"] == after["n"] == 6 * 20 and before["version"] == "1"
        # answered by a head the feedback made: v1 plus deltas, or a registry version of the online head
        assert after["version"] != "1", after
        # the champion saw 10 rows of each intent; the feedback taught it the wordings it had not seen
        assert after["accuracy"] > before["accuracy"], (before, after)
        assert summary["accuracy_last"] > summary["accuracy_first"], summary
        assert (out / "demo.png").stat().st_size > 20_000
    finally:
        down = subprocess.run(bin_command("down", "--state-dir", str(state)), env=env, capture_output=True,
                              text=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
