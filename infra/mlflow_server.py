"""The embedded MLflow tracking server and model registry: SQLite plus proxied local artifacts.

Artifacts go through the server (`--serve-artifacts`, MLflow's default, with
`--artifacts-destination` in the state folder rather than `./mlartifacts` of
whatever directory it starts in): experiments get `mlflow-artifacts:/` as their
root, so a client in any process or on any host uploads and downloads over HTTP
and `models:/name@alias` loads anywhere. `--default-artifact-root <path>` with
`--no-serve-artifacts` would make every client read and write that path itself,
which only works on a shared filesystem.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from infra.process import HOST, ManagedProcess, check_can_start

NAME = "mlflow"
DEFAULT_PORT = 5000
START_TIMEOUT = 120.0  # seconds; ~15-25 s on 2 cores, more when the machine is busy

# Why these: by default the server starts 4 uvicorn workers plus a huey job runner with
# 7 consumer processes (2 GB RSS, ~50 s to healthy on 2 cores). The job runner serves
# GenAI jobs (scorers, evaluation, prompt optimization) and periodic tasks that loopline
# does not use; one worker (`--workers 1`) is plenty for a registry that sees a few
# requests a minute.
SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # nothing leaves the machine
}


def mlflow_command(state_dir: Path, port: int) -> list[str]:
    """The `mlflow server` command line for a store in `state_dir`."""
    state_dir = state_dir.resolve()
    return [
        sys.executable, "-m", "mlflow", "server",  # this interpreter's mlflow, whatever PATH says
        "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination", str(state_dir / "mlartifacts"),
        "--host", HOST,
        "--port", str(port),
        "--workers", "1",
    ]


def mlflow_healthy(url: str) -> bool:
    """True if the server answers GET /health."""
    return httpx.get(f"{url}/health", timeout=2.0).status_code == 200


def mlflow_process(state_dir: Path, port: int = DEFAULT_PORT) -> ManagedProcess:
    """The server as a process not yet started, with its store in `state_dir/mlflow`."""
    workdir = state_dir / NAME
    return ManagedProcess(NAME, mlflow_command(workdir, port), state_dir, cwd=workdir,
                          env={**os.environ, **SERVER_ENV}, url=f"http://{HOST}:{port}")


def start_mlflow(state_dir: Path, port: int = DEFAULT_PORT, timeout: float = START_TIMEOUT) -> ManagedProcess:
    """Start MLflow in `state_dir/mlflow` and wait until healthy; `.url` is the tracking URI."""
    check_can_start(NAME, state_dir, port)
    proc = mlflow_process(state_dir, port)
    return proc.start_healthy(lambda: mlflow_healthy(proc.url), timeout)
