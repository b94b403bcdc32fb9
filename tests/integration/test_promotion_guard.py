"""The guard after a promotion, on real processes: a retrained champion that does worse on live feedback than
the one it replaced is rolled back by the feedback service, and the registry says why."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from models.train import HeadConfig, featurize, train_head
from services.common.events import ModelUpdate
from tests.conftest import SPEC, TinyModel, build_bundle
from tests.integration.helpers import wait_until
from tests.integration.stack import Serving, feedback_service
from tests.integration.test_loop import converse

pytestmark = pytest.mark.slow


def test_a_retrain_that_does_worse_on_live_feedback_is_rolled_back(
        serving: Serving, trained: TinyModel, tmp_path: Path) -> None:
    service = feedback_service(serving, tmp_path / "state", GUARD_EVENTS="150", GUARD_MARGIN="0.05",
                               CHAMPION_CHECK_S="1", TRUST_ALPHA="0")
    service.start()
    try:
        converse(serving, generate(TrafficConfig(n_events=250, n_users=40, seed=51)).events, seed=51)
        assert wait_until(lambda: service.metric("loopline_feedback_examples_total") >= 200, 60)

        # A "retrain" that learned the wrong intent for every text, registered and promoted as the flow would.
        encoder = trained[0]
        events = generate(TrafficConfig(n_events=600, n_users=50, seed=2)).events
        wrong = [INTENTS[(INTENTS.index(label) + 1) % len(INTENTS)] for label in events["label"]]
        bad = train_head(featurize(list(events["text"]), encoder.encode(list(events["text"])), SPEC), wrong,
                         INTENTS, HeadConfig(epochs=2))
        build_bundle(tmp_path / "bad", encoder, bad)
        with mlflow.start_run(experiment_id=serving.registry.experiment_id()):
            worse = serving.registry.register(tmp_path / "bad", {"source": "train"}).version
        previous = serving.registry.champion()
        assert previous is not None
        serving.registry.promote(worse, "a retrain")
        serving.announce(ModelUpdate(model=serving.settings.model_name, kind="full", version=str(worse),
                                     base_version=worse))
        assert wait_until(lambda: service.metric("loopline_feedback_registrations_total", 'outcome="reset"') >= 1,
                          60), service.process.log_tail()

        converse(serving, generate(TrafficConfig(n_events=300, n_users=40, seed=52)).events, seed=52)
        assert wait_until(lambda: serving.registry.champion().version == previous.version, 90), \
            service.process.log_tail(60)
        reason = serving.registry.get(worse).tags["guard.rolled_back"]
        assert reason.startswith(f"guard: v{worse} scored") and f"rolled back to v{previous.version}" in reason
        assert service.metric("loopline_feedback_registrations_total", 'outcome="guard_rollback"') == 1
    finally:
        service.process.stop()
