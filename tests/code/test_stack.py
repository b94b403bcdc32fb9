"""The stack's orchestration with stand-in parts: start order, waiting for a model, rollback, ports, down.

Each part here is a `sleep` process whose health the test decides, so these tests run in
seconds; tests/integration/test_stack_cli.py runs the real servers through `loopline`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from infra.process import ManagedProcess, free_port
from infra.stack import (
    HEALTHY,
    MODEL_PARTS,
    PART_NAMES,
    STOPPED,
    WAITING,
    Part,
    Stack,
    StackError,
    StackSettings,
)
from services.common.admin import ADMIN_TOKEN_FILE


class FakeStack(Stack):
    """Parts are `sleep 300`; `failing` parts exit at once, `champion` says whether the registry has one."""

    failing: set[str]
    champion: bool

    def process(self, name: str) -> ManagedProcess:
        cmd = ["sh", "-c", "echo 'bad config'; exit 3"] if name in self.failing else ["sleep", "300"]
        return ManagedProcess(name, cmd, self.state_dir, url=self.parts[name].url)

    def healthy(self, name: str) -> bool:
        return name not in self.failing

    def ready(self, name: str) -> None:
        pass

    def has_champion(self) -> bool:
        return self.champion


def fake_stack(state: Path, champion: bool = False, failing: set[str] | None = None) -> FakeStack:
    stack = FakeStack(state.resolve(), {n: Part(n, free_port()) for n in PART_NAMES}, "test-model")
    stack.champion, stack.failing = champion, failing or set()
    return stack


def pids(stack: Stack) -> dict[str, int | None]:
    return {row.part.name: row.pid for row in stack.status()}


def assert_all_gone(stack: Stack, seen: dict[str, int | None]) -> None:
    assert not list(stack.state_dir.glob("*.pid"))
    for pid in filter(None, seen.values()):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_up_waits_for_a_champion_then_starts_the_model_parts(tmp_path: Path) -> None:
    stack = fake_stack(tmp_path)
    stack.up()
    first = pids(stack)
    health = {row.part.name: row.health for row in stack.status()}
    assert health == {**dict.fromkeys(PART_NAMES, HEALTHY), **dict.fromkeys(MODEL_PARTS, WAITING)}
    assert Stack.load(tmp_path).waiting == set(MODEL_PARTS)

    stack.champion = True
    stack.up()  # idempotent: what runs is left alone, the waiting parts start
    second = pids(stack)
    assert all(second[n] == first[n] for n in PART_NAMES if n not in MODEL_PARTS)
    assert all(second[n] is not None for n in MODEL_PARTS)
    assert {row.health for row in stack.status()} == {HEALTHY}
    assert Stack.load(tmp_path).waiting == set()

    assert stack.down() == list(reversed(PART_NAMES))
    assert {row.health for row in Stack.load(tmp_path).status()} == {STOPPED}
    assert_all_gone(stack, second)
    assert stack.down() == []  # nothing left to stop is not an error


def test_a_part_that_fails_stops_what_this_up_started_and_only_that(tmp_path: Path) -> None:
    stack = fake_stack(tmp_path)
    stack.up()
    before = pids(stack)

    stack.champion, stack.failing = True, {"feedback"}
    with pytest.raises(Exception, match=r"(?s)feedback exited with code 3.*bad config"):
        stack.up()
    after = pids(stack)
    assert after["serving"] is None  # started by the failed call: stopped again
    assert all(after[n] == before[n] for n in PART_NAMES if n not in MODEL_PARTS)  # ran before: untouched
    stack.down()
    assert_all_gone(stack, before)


def test_failure_on_a_clean_state_leaves_nothing_running(tmp_path: Path) -> None:
    stack = fake_stack(tmp_path, failing={"prefect"})
    with pytest.raises(Exception, match="prefect exited"):
        stack.up()
    assert {row.health for row in stack.status()} == {STOPPED}
    assert not list(tmp_path.glob("*.pid"))


def test_a_taken_port_names_the_part_and_starts_nothing(tmp_path: Path) -> None:
    stack = fake_stack(tmp_path, champion=True)
    port = stack.parts["evidently"].port
    with socket.create_server(("127.0.0.1", port)), pytest.raises(StackError, match=rf"evidently: port {port} "):
        stack.up()
    assert not list(tmp_path.glob("*.pid"))


def test_down_leaves_a_process_it_did_not_start_alone(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (tmp_path / "mlflow.pid").write_text(f"{stranger.pid}\n")  # e.g. a pid reused after a reboot
        stack = fake_stack(tmp_path)
        assert stack.down() == []
        assert stranger.poll() is None
        assert not (tmp_path / "mlflow.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_ports_come_from_flags_then_the_last_up_then_defaults(tmp_path: Path) -> None:
    stack = fake_stack(tmp_path)
    stack.save()
    again = Stack.for_up(StackSettings(state_dir=tmp_path, prefect_port=4321))
    assert again.parts["prefect"].port == 4321  # given
    assert again.parts["mlflow"].port == stack.parts["mlflow"].port  # recorded
    assert Stack.for_up(StackSettings(state_dir=tmp_path / "other")).parts["mlflow"].port == 5000  # default

    with pytest.raises(StackError, match="port 7000 is given to serving and feedback"):
        Stack.for_up(StackSettings(state_dir=tmp_path, serving_port=7000, feedback_port=7000))


def test_a_running_part_keeps_its_port(tmp_path: Path) -> None:
    stack = fake_stack(tmp_path)
    stack.up()
    try:
        with pytest.raises(StackError, match="mlflow already runs on port"):
            Stack.for_up(StackSettings(state_dir=tmp_path, mlflow_port=free_port()))
    finally:
        stack.down()


def test_client_env_points_at_the_stack(tmp_path: Path) -> None:
    stack = fake_stack(tmp_path)
    env = stack.client_env()
    assert env["LOOPLINE_MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{stack.parts['mlflow'].port}"
    assert env["LOOPLINE_KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{stack.parts['broker'].port}"
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{stack.parts['prefect'].port}/api"
    assert env["LOOPLINE_PORT"] == str(stack.parts["serving"].port)


def test_up_gives_serving_and_feedback_a_generated_admin_token_unless_one_is_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOPLINE_ADMIN_TOKEN", raising=False)
    stack = fake_stack(tmp_path)
    stack.up()
    try:
        path = tmp_path / ADMIN_TOKEN_FILE
        token = path.read_text().strip()
        assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
        for name in ("serving", "feedback"):  # the runner takes no admin actions
            process = Stack.process(stack, name)  # the real part's process, not the stand-in's
            assert (process.env or {})["LOOPLINE_ADMIN_TOKEN"] == token and token not in " ".join(process.cmd)
        assert token not in str(stack.client_env()) and token not in (tmp_path / "stack.json").read_text()
        stack.up()
        assert path.read_text().strip() == token, "kept across `up`s"
        monkeypatch.setenv("LOOPLINE_ADMIN_TOKEN", "the-users-own-" + "x" * 16)
        assert (Stack.process(stack, "feedback").env or {})["LOOPLINE_ADMIN_TOKEN"].startswith("the-users-own-")
        runner = Stack.process(stack, "runner")
        assert runner.cmd[:3] == ["nice", "-n", "10"] and runner.cmd[-6:-2] == ["flows", "serve", "--encoder",
                                                                               "minilm"]
    finally:
        stack.down()
