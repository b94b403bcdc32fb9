"""Real processes for the reliability suite: a broker, `loopline serve` and `loopline feedback`.

The suite gets a broker of its own, so `feedback-dlq` holds exactly what this suite's
feedback service wrote and can be matched against its counters. The registry is MLflow
on a SQLite file (the default when no tracking server is set), shared by the test
process, serving and the feedback service, which spares starting an MLflow server.
Everything is started once per session, on demand, and stopped at the end.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from infra.broker import start_broker
from infra.process import ManagedProcess, free_port
from tests.conftest import TinyModel
from tests.integration.stack import Feedback, Serving, feedback_service, start_serving

FEEDBACK_TOKEN = "f33dback-test-" + uuid.uuid4().hex
BENCH = Path(__file__).resolve().parents[2] / "bench"


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


@pytest.fixture(scope="session")
def serving_scenarios() -> Iterator[ModuleType]:
    """bench/reliability_serving.py, imported as bench/reliability.py imports it (bench/ on sys.path)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("reliability_serving")
    sys.modules.pop("reliability_serving", None)


@pytest.fixture(scope="session")
def loop_serving(reliability_broker: ManagedProcess, trained: TinyModel,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """A second `loopline serve` on a model of its own, for scenarios that kill it, move its champion or
    poison its feedback: the `serving` fixture's champion stays v1 for the tests that expect it."""
    registry = tmp_path_factory.mktemp("loop-registry") / "mlflow.db"
    with start_serving(f"sqlite:///{registry}", reliability_broker.url, trained,
                       tmp_path_factory.mktemp("loop-serving"), tmp_path_factory.mktemp("loop-bundles")) as serving:
        yield serving


@pytest.fixture(scope="session")
def loop_feedback(loop_serving: Serving, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Feedback]:
    """`loopline feedback` on `loop_serving`'s model, started from its champion when first asked for."""
    service = feedback_service(loop_serving, tmp_path_factory.mktemp("loop-feedback"))
    service.start()
    yield service
    service.process.stop()
