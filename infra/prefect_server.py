"""The embedded Prefect server on SQLite, with its services (a real server runs schedules).

`PREFECT_HOME` points into the state folder, so the database, profiles and UI
build stay there and nothing in `~/.prefect` is read or written. Clients reach
the server by setting `PREFECT_API_URL` to the `.url` of the returned process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from infra.process import HOST, ManagedProcess, check_can_start

NAME = "prefect"
DEFAULT_PORT = 4200
START_TIMEOUT = 120.0  # seconds; ~17 s on 2 cores, more when the machine is busy


def prefect_env(home: Path) -> dict[str, str]:
    """Environment for the server: its own home and database, no analytics."""
    env = {k: v for k, v in os.environ.items()
           # The UI takes its API URL from PREFECT_API_URL when set: a client setting in our
           # environment would point this server's UI at another server.
           if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    return env


def prefect_healthy(url: str) -> bool:
    """True if the server answers GET /api/health."""
    return httpx.get(f"{url}/health", timeout=2.0).status_code == 200


def prefect_process(state_dir: Path, port: int = DEFAULT_PORT) -> ManagedProcess:
    """The server as a process not yet started, with its home in `state_dir/prefect`."""
    home = (state_dir / NAME).resolve()
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port),
           "--analytics-off"]
    return ManagedProcess(NAME, cmd, state_dir, cwd=home, env=prefect_env(home), url=f"http://{HOST}:{port}/api")


def start_prefect(state_dir: Path, port: int = DEFAULT_PORT, timeout: float = START_TIMEOUT) -> ManagedProcess:
    """Start Prefect in `state_dir/prefect` and wait until healthy; `.url` is the API URL (…/api)."""
    check_can_start(NAME, state_dir, port)
    proc = prefect_process(state_dir, port)
    return proc.start_healthy(lambda: prefect_healthy(proc.url), timeout)
