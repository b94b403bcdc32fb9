"""Run one embedded server as a managed process group.

Each part of the embedded stack (broker, MLflow, Prefect) runs in a session of
its own, so the group id equals the leader's pid and signals reach every child
it spawns: MLflow's uvicorn worker (and its job runner, when enabled) would
otherwise outlive a SIGTERM to the `mlflow server` parent. Output goes to `<state>/<name>.log` and the
pid to `<state>/<name>.pid`, so a later `loopline down` or `status` can find
the group again with `ManagedProcess.from_pidfile`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2  # seconds between health checks and liveness checks
REAP_TIMEOUT = 10.0  # seconds to wait for killed members to disappear from the process table
HOST = "127.0.0.1"


class ProcessError(RuntimeError):
    """A managed process failed to start, got unhealthy, or could not be stopped."""


class PortInUseError(ProcessError):
    """The port a part should listen on is already taken."""


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if nothing listens on `host:port` and we could bind it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers themselves set it: on Linux a socket in TIME_WAIT from
        # an earlier run then does not count, while a listening socket still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(port: int, name: str, host: str = HOST) -> None:
    """Raise `PortInUseError` with a message that says who wanted the port and what to do."""
    if not port_is_free(port, host):
        raise PortInUseError(
            f"cannot start {name}: port {port} on {host} is already in use; "
            f"stop whatever listens there (e.g. `ss -ltnp 'sport = :{port}'`) or pick another port"
        )


def check_can_start(name: str, state_dir: Path, port: int, host: str = HOST) -> None:
    """Fail fast, before spawning anything, if `name` already runs from `state_dir` or `port` is taken."""
    running = ManagedProcess.from_pidfile(name, state_dir)
    if running is not None:
        raise ProcessError(f"{name} already runs from {state_dir} (pid {running.pid}); stop it first")
    ensure_port_free(port, name, host)


def free_port(host: str = HOST) -> int:
    """A port the kernel says is free right now (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (zombies count until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process from /proc (R, S, T, Z, ...); None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class ManagedProcess:
    """One command running as its own process group, with a log file and a PID file."""

    def __init__(self, name: str, cmd: Sequence[str], state_dir: Path, *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, url: str = "") -> None:
        self.name = name
        self.cmd = list(cmd)
        self.state_dir = Path(state_dir)
        self.cwd = Path(cwd) if cwd is not None else self.state_dir
        self.env = dict(env) if env is not None else None
        self.url = url  # what clients use to reach it: http://..., or host:port for the broker
        self.log_path = self.state_dir / f"{name}.log"
        self.pid_path = self.state_dir / f"{name}.pid"
        self.pid: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, url={self.url!r})"

    @classmethod
    def from_pidfile(cls, name: str, state_dir: Path, url: str = "") -> ManagedProcess | None:
        """Handle for a group started earlier (e.g. by another `loopline` call); None if gone."""
        handle = cls(name, [], state_dir, url=url)
        try:
            pid = int(handle.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not group_alive(pid):
            handle.pid_path.unlink(missing_ok=True)
            return None
        handle.pid = pid
        return handle

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        """Start the command in a new session; returns self so calls can be chained."""
        if self.running():
            raise ProcessError(f"{self.name} already runs as pid {self.pid}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            logfile.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
            logfile.flush()
            self._popen = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._popen.pid
        self.pid_path.write_text(f"{self.pid}\n")
        log.info("started %s (pid %d), log %s", self.name, self.pid, self.log_path)
        return self

    @property
    def pgid(self) -> int:
        """Process group id; the leader's pid because each part starts its own session."""
        if self.pid is None:
            raise ProcessError(f"{self.name} was never started")
        return self.pid

    def exit_code(self) -> int | None:
        """The leader's exit code once it has exited (None while running or if not our child)."""
        return self._popen.poll() if self._popen is not None else None

    def running(self) -> bool:
        """True while the leader runs (for a handle from a PID file: while the group exists)."""
        if self.pid is None:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        return group_alive(self.pid)

    def wait_healthy(self, check: Callable[[], bool], timeout: float) -> float:
        """Poll `check` until it returns True; returns the seconds it took.

        Raises `ProcessError` with the tail of the log if the process exits first or
        `timeout` passes. Exceptions from `check` count as "not yet healthy".
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.running():
                raise ProcessError(
                    f"{self.name} exited with code {self.exit_code()} before it was healthy; "
                    f"log {self.log_path}:\n{self.log_tail()}")
            try:
                if check():
                    elapsed = time.monotonic() - started
                    log.info("%s healthy after %.1f s at %s", self.name, elapsed, self.url)
                    return elapsed
            except Exception as exc:  # connection refused etc. while it boots
                log.debug("%s not healthy yet: %s", self.name, exc)
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{self.name} not healthy after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def start_healthy(self, check: Callable[[], bool], timeout: float,
                      then: Callable[[], object] | None = None) -> ManagedProcess:
        """Start, wait until `check` holds, run `then` (e.g. create topics); on any failure stop the
        whole group before raising, so nothing is left half-started."""
        self.start()
        try:
            self.wait_healthy(check, timeout)
            if then is not None:
                then()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, wait up to `timeout`, SIGKILL what still runs, wait until it is gone.

        Returns once `os.killpg(pgid, 0)` fails, i.e. no process of the group exists any more,
        not even as a zombie waiting for init to reap it.
        """
        if self.pid is None:
            return
        pgid = self.pgid
        if self._signal_group(signal.SIGTERM):
            # A stopped (paused) group cannot act on SIGTERM until it runs again.
            self._signal_group(signal.SIGCONT)
            if not self._wait(lambda: not self._live_members(), timeout):
                log.warning("%s ignored SIGTERM for %.0f s; killing group %d", self.name, timeout, pgid)
                self._signal_group(signal.SIGKILL)
            # Members orphaned by the leader's exit are reaped by init, which may take a
            # couple of seconds (this machine's init reaps every ~2 s).
            if not self._wait(lambda: not group_alive(pgid), REAP_TIMEOUT):
                raise ProcessError(f"{self.name}: process group {pgid} still exists {REAP_TIMEOUT:.0f} s after kill")
        self.pid_path.unlink(missing_ok=True)
        log.info("stopped %s (group %d)", self.name, pgid)

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP the group and wait until every member is stopped (for fault tests).

        A paused process keeps its sockets: clients connect and send, but get no answer.
        """
        if not self._signal_group(signal.SIGSTOP):
            raise ProcessError(f"{self.name} is not running")
        # The signal is delivered asynchronously; return only once no member can still answer.
        deadline = time.monotonic() + timeout
        while not all(_proc_state(pid) in ("T", "t", "Z", "X", None) for pid in self.group_pids()):
            if time.monotonic() >= deadline:
                raise ProcessError(f"{self.name}: group {self.pgid} did not stop within {timeout:.0f} s")
            time.sleep(0.01)

    def resume(self) -> None:
        """SIGCONT the group after `pause`."""
        self._signal_group(signal.SIGCONT)

    # -- inspection ------------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log file."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64_000))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def group_pids(self) -> list[int]:
        """Pids of every process in the group (zombies included), from /proc."""
        if self.pid is None:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                # Field 5 of /proc/<pid>/stat is the pgrp; split after the ")" of the comm field.
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) == self.pid:
                    pids.append(int(entry))
        return pids

    def rss_bytes(self) -> int:
        """Resident memory of the whole group (sum of RSS, so shared pages count twice)."""
        total = 0
        page = os.sysconf("SC_PAGE_SIZE")
        for pid in self.group_pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        return total

    # -- helpers ---------------------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals) -> bool:
        """Send `sig` to the group; False if the group no longer exists."""
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def _live_members(self) -> list[int]:
        """Group members that still run (zombies excluded)."""
        return [pid for pid in self.group_pids() if _proc_state(pid) not in ("Z", "X", None)]

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll `done` until True or `timeout`; reaps our own child meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            if self._popen is not None:
                self._popen.poll()  # reap the leader, or it stays in the group as a zombie
            else:
                # A handle from a PID file whose leader this process started (e.g. `Stack.up` and
                # `Stack.down` in one program): nobody else can reap it.
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pgid, os.WNOHANG)
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL / 4)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
