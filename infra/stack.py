"""The embedded stack behind `loopline up | down | status`: seven parts on 127.0.0.1, one state folder.

Parts, in start order: the Kafka-compatible broker (with loopline's topics), MLflow,
Prefect, the Evidently UI, serving, the feedback service and the retrain runner
(`loopline flows serve`: the nightly and on-drift deployments, at low CPU priority so
that a retrain does not starve serving). The last three need a `champion` in the
registry; before the first `loopline train` there is none, so `up` leaves them
*waiting* and a later `up` starts them. `LOOPLINE_RUNNER_ENABLED=false` leaves the
runner out. Every part runs as a
process group of its own (`infra.process.ManagedProcess`) with `<name>.log` and
`<name>.pid` in the state folder; `stack.json` there records ports and URLs, so
`status`, `down` and other programs find the stack again with `Stack.load`:

    stack = Stack.load(Path(".state"))
    stack.parts["serving"].url   # http://127.0.0.1:8000
    stack.client_env()           # LOOPLINE_* and PREFECT_API_URL for clients of this stack

Serving and the feedback service get `LOOPLINE_ADMIN_TOKEN` from the environment of `up`,
or else the token `up` generated in `<state folder>/admin-token` (`services.common.admin`).

Each process carries `LOOPLINE_STACK_PART=<state folder>:<part>` in its environment,
so a PID file whose pid now belongs to some other process is recognised as stale
and nothing but what `up` started is ever signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra import broker, mlflow_server, prefect_server
from infra.process import HOST, ManagedProcess, ProcessError, port_is_free
from services.common.admin import ensure_stack_admin_token, stack_admin_token
from services.common.settings import CommonSettings
from services.feedback.settings import FeedbackSettings
from services.serving.settings import ServingSettings

log = logging.getLogger(__name__)

INFRA_PARTS = ("broker", "mlflow", "prefect", "evidently")
MODEL_PARTS = ("serving", "feedback", "runner")  # need a champion in the registry
PART_NAMES = INFRA_PARTS + MODEL_PARTS
STATE_FILE = "stack.json"
MARKER = "LOOPLINE_STACK_PART"
HEALTHY, UNHEALTHY, STOPPED, WAITING, OFF = "healthy", "unhealthy", "stopped", "waiting", "off"
RUNNER_OFF = "LOOPLINE_RUNNER_ENABLED=false: drift alerts and the nightly schedule start no retrain"
WAITING_DETAIL = "no champion yet: run `loopline train`, then `loopline up`"
RUNNING_GRACE = 15.0  # seconds a part found running may take to answer before `up` calls it unhealthy
PORT_ENV = {"broker": "LOOPLINE_BROKER_PORT", "mlflow": "LOOPLINE_MLFLOW_PORT", "prefect": "LOOPLINE_PREFECT_PORT",
            "evidently": "LOOPLINE_EVIDENTLY_PORT", "serving": "LOOPLINE_PORT", "feedback": "LOOPLINE_METRICS_PORT",
            "runner": "LOOPLINE_RUNNER_PORT"}
TIMEOUTS = {"broker": broker.START_TIMEOUT, "mlflow": mlflow_server.START_TIMEOUT,
            "prefect": prefect_server.START_TIMEOUT, "evidently": 60.0, "serving": 120.0, "feedback": 120.0,
            "runner": 180.0}
RUNNER_NICE = 10  # retrains yield the CPU to serving and the feedback service on a small machine
RUNNER_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class StackError(RuntimeError):
    """The stack cannot be started, found or stopped as asked; the message says why and what to do."""


class StackSettings(CommonSettings):
    """State folder and ports, from flags or `LOOPLINE_*` variables (serving's and the feedback
    service's ports keep the names their own settings use: LOOPLINE_PORT, LOOPLINE_METRICS_PORT)."""

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", extra="ignore", populate_by_name=True)

    broker_port: int = Field(broker.DEFAULT_PORT, ge=1, le=65535)
    mlflow_port: int = Field(mlflow_server.DEFAULT_PORT, ge=1, le=65535)
    prefect_port: int = Field(prefect_server.DEFAULT_PORT, ge=1, le=65535)
    evidently_port: int = Field(8002, ge=1, le=65535)
    serving_port: int = Field(ServingSettings.model_fields["port"].default, ge=1, le=65535,
                              validation_alias="LOOPLINE_PORT")
    feedback_port: int = Field(FeedbackSettings.model_fields["metrics_port"].default, ge=1, le=65535,
                               validation_alias="LOOPLINE_METRICS_PORT")
    runner_port: int = Field(8003, ge=1, le=65535, description="The runner's health endpoint.")
    runner_enabled: bool = Field(True, description="Run the nightly and on-drift retrain deployments.")
    runner_encoder: str = Field("minilm", description="Encoder the runner's retrains use.")
    runner_cron: str = Field("0 3 * * *", description="Schedule of the nightly retrain (cron, UTC).")

    def port(self, part: str) -> int:
        return int(getattr(self, f"{part}_port"))


@dataclass(frozen=True)
class Part:
    """One part of the stack and where clients reach it."""

    name: str
    port: int

    @property
    def url(self) -> str:
        """Bootstrap servers for the broker, the API URL for Prefect, the base URL for the rest."""
        if self.name == "broker":
            return f"{HOST}:{self.port}"
        return f"http://{HOST}:{self.port}" + ("/api" if self.name == "prefect" else "")


@dataclass(frozen=True)
class PartStatus:
    part: Part
    pid: int | None
    health: str  # healthy, unhealthy, stopped or waiting
    detail: str = ""


@dataclass(frozen=True)
class RunnerSettings:
    enabled: bool = True
    encoder: str = "minilm"
    cron: str = "0 3 * * *"


@dataclass
class Stack:
    """The parts of one state folder; `up`, `status` and `down` act on them."""

    state_dir: Path
    parts: dict[str, Part]
    model_name: str
    waiting: set[str] = field(default_factory=set)  # model parts `up` left waiting for a champion
    runner: RunnerSettings = field(default_factory=lambda: RunnerSettings())

    @classmethod
    def from_settings(cls, settings: StackSettings) -> Stack:
        return cls(settings.state_dir.resolve(), {n: Part(n, settings.port(n)) for n in PART_NAMES},
                   settings.model_name,
                   runner=RunnerSettings(settings.runner_enabled, settings.runner_encoder, settings.runner_cron))

    @classmethod
    def load(cls, state_dir: Path) -> Stack:
        """The stack `loopline up` recorded in `state_dir` (raises `StackError` if it never ran there)."""
        path = Path(state_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StackError(f"no stack in {state_dir}: run `loopline up`") from None
        except ValueError as exc:
            raise StackError(f"{path} is unreadable ({exc}); `loopline down`, remove it and `loopline up`") from exc
        runner = RunnerSettings(**data.get("runner", {}))
        return cls(Path(state_dir).resolve(), {n: Part(n, int(p["port"])) for n, p in data["parts"].items()},
                   data["model_name"], set(data.get("waiting", [])), runner)

    @classmethod
    def for_up(cls, settings: StackSettings) -> Stack:
        """The stack to start: ports set explicitly (flags, LOOPLINE_* variables) win, the others are the
        ones recorded by the last `up` in the state folder, else the defaults. A running part keeps its port."""
        stack = cls.from_settings(settings)
        try:
            recorded = cls.load(stack.state_dir)
        except StackError:
            recorded = cls(stack.state_dir, {}, stack.model_name)
        stack.waiting = recorded.waiting
        for name, part in recorded.parts.items():
            if name not in stack.parts or part.port == stack.parts[name].port:
                continue
            if f"{name}_port" not in settings.model_fields_set:
                stack.parts[name] = part
            elif stack.handle(name) is not None:
                raise StackError(f"{name} already runs on port {part.port}; `loopline down` first to move "
                                 f"it to port {stack.parts[name].port}")
        ports = [p.port for p in stack.parts.values()]
        for part in stack.parts.values():
            if ports.count(part.port) > 1:
                others = [p.name for p in stack.parts.values() if p.port == part.port]
                raise StackError(f"port {part.port} is given to {' and '.join(others)}; each part needs its own")
        return stack

    def save(self) -> None:
        data = {"state_dir": str(self.state_dir), "model_name": self.model_name, "waiting": sorted(self.waiting),
                "parts": {n: {"port": p.port, "url": p.url} for n, p in self.parts.items()},
                "runner": {"enabled": self.runner.enabled, "encoder": self.runner.encoder, "cron": self.runner.cron}}
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_dir / STATE_FILE)

    def client_env(self) -> dict[str, str]:
        """Environment for programs that use this stack (`loopline train`, `loopline promote`, a demo)."""
        return {"LOOPLINE_STATE_DIR": str(self.state_dir),
                "LOOPLINE_MLFLOW_TRACKING_URI": self.parts["mlflow"].url,
                "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS": self.parts["broker"].url,
                "LOOPLINE_MODEL_NAME": self.model_name,
                "LOOPLINE_PORT": str(self.parts["serving"].port),
                "LOOPLINE_METRICS_PORT": str(self.parts["feedback"].port),
                "PREFECT_API_URL": self.parts["prefect"].url}

    # -- one part ----------------------------------------------------------------------------

    def process(self, name: str) -> ManagedProcess:
        """The part's process, not started yet."""
        port, url = self.parts[name].port, self.parts[name].url
        if name == "broker":
            proc = broker.broker_process(self.state_dir, port)
        elif name == "mlflow":
            proc = mlflow_server.mlflow_process(self.state_dir, port)
        elif name == "prefect":
            proc = prefect_server.prefect_process(self.state_dir, port)
        elif name == "evidently":
            workspace = self.state_dir / "evidently"  # where the feedback service writes its drift runs
            cmd = [sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(workspace),
                   "--host", HOST, "--port", str(port)]
            # DO_NOT_TRACK turns off its telemetry; GIT_COMMIT spares it a `git rev-parse` for /api/version.
            proc = ManagedProcess(name, cmd, self.state_dir, env={**os.environ, "DO_NOT_TRACK": "1",
                                                                   "GIT_COMMIT": "-"}, url=url)
        elif name == "runner":
            # One compute thread per retrain (your own *_NUM_THREADS win): with torch on every core, serving's p99
            # beside a retrain was 2.0x its idle value, above the 2x bound (bench/serving_retrain.py).
            threads = dict.fromkeys(RUNNER_THREAD_VARS, "1")
            env = {**threads, **os.environ, **self.client_env(), "PREFECT_RUNNER_SERVER_ENABLE": "true",
                   "PREFECT_RUNNER_SERVER_HOST": HOST, "PREFECT_RUNNER_SERVER_PORT": str(port)}
            command = ["nice", "-n", str(RUNNER_NICE), sys.executable, "-m", "loopline", "flows", "serve",
                       "--encoder", self.runner.encoder, "--cron", self.runner.cron]
            proc = ManagedProcess(name, command, self.state_dir, env=env, url=url)
        else:
            env = {k: v for k, v in os.environ.items() if k != "LOOPLINE_BUNDLE"}  # the stack serves @champion
            env.update(self.client_env(), LOOPLINE_HOST=HOST)
            if not env.get("LOOPLINE_ADMIN_TOKEN") and (token := stack_admin_token(self.state_dir)) is not None:
                env["LOOPLINE_ADMIN_TOKEN"] = token  # in the environment only, never on the command line
            command_name = "serve" if name == "serving" else "feedback"
            proc = ManagedProcess(name, [sys.executable, "-m", "loopline", command_name], self.state_dir, env=env,
                                  url=url)
        return proc

    def healthy(self, name: str) -> bool:
        """One health check; raises or returns False while the part cannot serve."""
        url = self.parts[name].url
        if name == "broker":
            return broker.broker_healthy(url)
        path = {"mlflow": "/health", "prefect": "/health", "evidently": "/api/version", "serving": "/readyz",
                "feedback": "/healthz", "runner": "/health"}[name]
        return httpx.get(url + path, timeout=2.0).status_code == 200

    def ready(self, name: str) -> None:
        """What a part needs once healthy: the broker its topics (idempotent)."""
        if name == "broker":
            broker.create_topics(self.parts[name].url)

    def has_champion(self) -> bool:
        """True if the stack's registry has a `champion` version of the model."""
        # MLflow's REST API rather than its client: importing mlflow costs seconds, this one call does not.
        response = httpx.get(f"{self.parts['mlflow'].url}/api/2.0/mlflow/registered-models/alias",
                             params={"name": self.model_name, "alias": "champion"}, timeout=10.0)
        if response.status_code == 404:  # no such model, or no such alias
            return False
        if response.status_code != 200:
            raise StackError(f"MLflow answered {response.status_code} when asked for the champion: {response.text}")
        return True

    def handle(self, name: str) -> ManagedProcess | None:
        """The running process group `up` started for this part, or None (a stale PID file is removed)."""
        proc = ManagedProcess.from_pidfile(name, self.state_dir, url=self.parts[name].url)
        if proc is None:
            return None
        if not any(self._carries_marker(pid, name) for pid in proc.group_pids()):
            log.warning("%s: pid %s is not a process this stack started; removing the stale PID file",
                        name, proc.pid)
            proc.pid_path.unlink(missing_ok=True)
            return None
        return proc

    # -- the whole stack ---------------------------------------------------------------------

    def up(self, report: Callable[[str, str], None] = lambda name, what: None) -> None:
        """Start what does not run yet, wait until healthy; on any failure stop what this call started."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not os.environ.get("LOOPLINE_ADMIN_TOKEN"):  # admin actions need a token: one of the stack's own
                ensure_stack_admin_token(self.state_dir)
            running = {name: proc for name in PART_NAMES if (proc := self.handle(name)) is not None}
            for name, proc in running.items():
                try:
                    proc.wait_healthy(partial(self.healthy, name), RUNNING_GRACE)
                except ProcessError as exc:
                    raise StackError(f"{name} runs (pid {proc.pid}) but is not healthy: {exc}\n"
                                     "run `loopline down`, then `loopline up`") from exc
                report(name, "already running")
            for name in PART_NAMES:
                if name not in running:
                    self._check_port(name)
            self.save()
            started: list[ManagedProcess] = []
            try:
                if "broker" in running:
                    self.ready("broker")
                self._start([n for n in INFRA_PARTS if n not in running], started, report)
                missing = [n for n in MODEL_PARTS if n not in running and (n != "runner" or self.runner.enabled)]
                if missing and not self.has_champion():
                    self.waiting = set(missing)
                    for name in missing:
                        report(name, WAITING_DETAIL)
                else:
                    self.waiting = set()
                    self._start(missing, started, report)
                self.save()
            except BaseException:
                for proc in reversed(started):
                    try:
                        proc.stop()
                    except ProcessError as exc:
                        log.error("while rolling back: %s", exc)
                raise

    def status(self) -> list[PartStatus]:
        """Each part: its PID if running, and whether it answers."""
        result = []
        for name, part in self.parts.items():
            proc = self.handle(name)
            if proc is None and name == "runner" and not self.runner.enabled:
                result.append(PartStatus(part, None, OFF, RUNNER_OFF))
                continue
            if proc is None:
                waiting = name in self.waiting
                result.append(PartStatus(part, None, WAITING if waiting else STOPPED,
                                         WAITING_DETAIL if waiting else ""))
                continue
            try:
                ok = self.healthy(name)
            except Exception as exc:  # refused, timed out: the part does not answer
                log.debug("%s health check: %s", name, exc)
                ok = False
            result.append(PartStatus(part, proc.pid, HEALTHY if ok else UNHEALTHY,
                                     "" if ok else f"log {proc.log_path}"))
        return result

    def down(self, report: Callable[[str, str], None] = lambda name, what: None) -> list[str]:
        """Stop every part `up` started: serving and feedback first, while the servers they talk to still
        answer, then the rest; the parts of each group stop side by side. Returns the names stopped."""
        stopped: list[str] = []
        problems: list[str] = []
        if not self.state_dir.is_dir():
            return stopped
        with self._lock():
            for group in (MODEL_PARTS, INFRA_PARTS):
                handles = {name: proc for name in reversed(group) if (proc := self.handle(name)) is not None}
                with ThreadPoolExecutor(max_workers=len(PART_NAMES)) as pool:
                    stopping = {name: pool.submit(proc.stop) for name, proc in handles.items()}
                for name, future in stopping.items():
                    if (exc := future.exception()) is not None:
                        problems.append(str(exc))
                        continue
                    stopped.append(name)
                    report(name, "stopped")
            self.waiting = set()
            if (self.state_dir / STATE_FILE).exists():
                self.save()
        if problems:
            raise StackError("\n".join(problems))
        return stopped

    # -- helpers -----------------------------------------------------------------------------

    def _start(self, names: list[str], started: list[ManagedProcess],
               report: Callable[[str, str], None]) -> None:
        """Start the parts together (their boots overlap), then wait for each in turn."""
        began = time.monotonic()
        procs = []
        for name in names:
            proc = self.process(name)
            proc.env = {**(proc.env if proc.env is not None else os.environ), MARKER: self._marker(name)}
            proc.start()
            started.append(proc)
            procs.append((name, proc))
        for name, proc in procs:
            # Each part's timeout counts from its own start; they all started at `began`.
            remaining = TIMEOUTS[name] - (time.monotonic() - began)
            proc.wait_healthy(partial(self.healthy, name), max(remaining, 1.0))
            self.ready(name)
            report(name, f"started in {time.monotonic() - began:.1f} s")

    def _check_port(self, name: str) -> None:
        port = self.parts[name].port
        if not port_is_free(port):
            raise StackError(f"cannot start {name}: port {port} on {HOST} is already in use; stop whatever listens "
                             f"there (`ss -ltnp 'sport = :{port}'`) or give {name} another port "
                             f"(--{name}-port or {PORT_ENV[name]})")

    def _marker(self, name: str) -> str:
        return f"{self.state_dir}:{name}"

    def _carries_marker(self, pid: int, name: str) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"{MARKER}={self._marker(name)}".encode() in environ.split(b"\0")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up` or `down` at a time per state folder."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "stack.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StackError(f"another `loopline up` or `down` is working on {self.state_dir}") from None
            yield
