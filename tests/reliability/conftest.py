"""Real processes for the reliability suite: a broker, `loopline serve` and `loopline feedback`.

The suite gets a broker of its own, so `feedback-dlq` holds exactly what this suite's
feedback service wrote and can be matched against its counters. The registry is MLflow
on a SQLite file (the default when no tracking server is set), shared by the test
process, serving and the feedback service, which spares starting an MLflow server.
Everything is started once per session, on demand, and stopped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra.broker import start_broker
from infra.process import ManagedProcess, free_port
from tests.conftest import TinyModel
from tests.integration.stack import Feedback, Serving, feedback_service, start_serving

FEEDBACK_TOKEN = "f33dback-test-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def reliability_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_broker(tmp_path_factory.mktemp("reliability-broker"), free_port())
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def serving(reliability_broker: ManagedProcess, trained: TinyModel,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """`loopline serve` with v1 as champion (admin token `tests.integration.stack.TOKEN`)."""
    registry = tmp_path_factory.mktemp("reliability-registry") / "mlflow.db"
    with start_serving(f"sqlite:///{registry}", reliability_broker.url, trained,
                       tmp_path_factory.mktemp("reliability-serving"),
                       tmp_path_factory.mktemp("reliability-bundles")) as serving:
        yield serving


@pytest.fixture(scope="session")
def feedback(serving: Serving, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Feedback]:
    """`loopline feedback` on the suite's broker and registry, with `FEEDBACK_TOKEN` for POST /promote."""
    service = feedback_service(serving, tmp_path_factory.mktemp("reliability-feedback"),
                               admin_token=FEEDBACK_TOKEN)
    service.start()
    yield service
    service.process.stop()
