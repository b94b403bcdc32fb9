"""Session-wide embedded servers for integration tests.

Each fixture starts its server only when a test asks for it, in a folder of its
own under pytest's tmp dir, on a free port, and stops the whole process group at
the end of the session. The `*_process` fixtures give the `ManagedProcess`
handle; `mlflow_server`, `broker` and `prefect_server` give only the address and
set no environment variable, so tests say explicitly which server they use.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.broker import start_broker
from infra.mlflow_server import start_mlflow
from infra.prefect_server import start_prefect
from infra.process import ManagedProcess, free_port
from tests.conftest import TinyModel
from tests.integration.stack import Serving, start_serving


@pytest.fixture(scope="session")
def mlflow_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """The session MLflow server's process handle."""
    proc = start_mlflow(tmp_path_factory.mktemp("mlflow-state"), free_port())
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_process: ManagedProcess) -> str:
    """Tracking URI (http://127.0.0.1:port) of a session MLflow server with a SQLite registry."""
    return mlflow_process.url


@pytest.fixture(scope="session")
def broker_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """The session broker's process handle (pause it only with a `finally: resume()`)."""
    proc = start_broker(tmp_path_factory.mktemp("broker-state"), free_port())
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def broker(broker_process: ManagedProcess) -> str:
    """Bootstrap servers (127.0.0.1:port) of a session Tansu broker with loopline's topics."""
    return broker_process.url


@pytest.fixture(scope="module")
def serving(mlflow_server: str, broker: str, trained: TinyModel,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """`loopline serve` on a fresh model name with v1 as champion, one per test module."""
    with start_serving(mlflow_server, broker, trained, tmp_path_factory.mktemp("serving-state"),
                       tmp_path_factory.mktemp("serving-bundles")) as serving:
        yield serving


@pytest.fixture(scope="session")
def prefect_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """The session Prefect server's process handle."""
    proc = start_prefect(tmp_path_factory.mktemp("prefect-state"), free_port())
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def prefect_server(prefect_process: ManagedProcess) -> str:
    """API URL (http://127.0.0.1:port/api) of a session Prefect server on SQLite."""
    return prefect_process.url
