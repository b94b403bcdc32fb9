"""Reliability scenario: the MLflow server goes away while the loop runs, then comes back.

On real processes, started here: an MLflow server (SQLite), the Tansu broker, `loopline
serve` and `loopline feedback` registering the online head every `registry_interval_s`
of event time. A tiny model (random encoder, head trained on generated traffic) is v1.
A traffic thread predicts over HTTP and sends feedback for every answer to Kafka.

Each trial takes the MLflow server away for `outage_s`: `stop` (SIGSTOP: connections are
accepted and never answered, the nastier case) or `kill` (the process group is killed and
a new server starts on the same store and port). Meanwhile serving must keep getting
online deltas (its `model_version`, N+ftrl.K, advances) and registrations that fall due
must wait, not vanish: once the server is back, a new registry version with
`source=online` must land. At the end the traffic stops and the service must have
learned every feedback event sent exactly once (per event: `reliability_feedback.ledger`
reads which were joined from its checkpoint), serving must answer with the service's
live head, and no predict request may have failed.

`bench/reliability.py` imports this module as `reliability_registry`; heavy imports stay
inside functions. Run alone: `.venv/bin/python bench/reliability_registry.py [--trials 3] [--outage 30]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability_feedback import learned, ledger  # bench/reliability_feedback.py: bench scripts import each other
from reliability_outcome import Outcome

START_TIMEOUT = 180.0  # seconds for a process to be healthy on a busy machine
MODES = ("stop", "kill")


@dataclass
class Traffic:
    """Predict over HTTP, feedback to Kafka for every answer; what was sent and what failed."""

    serving_url: str
    broker: str
    rate: float
    seed: int = 0
    sent: int = 0
    prediction_ids: list[str] = field(default_factory=list)  # of the feedback sent
    failed: int = 0
    versions: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, model_version answered)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        import httpx
        from confluent_kafka import Producer

        from models.traffic import TrafficConfig, generate
        from services.common.events import FEEDBACK, FeedbackEvent

        events = generate(TrafficConfig(n_events=5000, n_users=40, seed=self.seed)).events
        # serving logs predictions with librdkafka's murmur2_random: feedback must land on the same partition
        producer = Producer({"bootstrap.servers": self.broker, "partitioner": "murmur2_random", "acks": "all",
                             "linger.ms": 5})
        rows = events.itertuples()
        with httpx.Client(base_url=self.serving_url, timeout=30) as http:
            next_at = time.monotonic()
            while not self._stop.is_set():
                next_at += 1 / self.rate
                self._stop.wait(max(0.0, next_at - time.monotonic()))
                row = next(rows, None)
                if row is None:
                    rows = events.itertuples()
                    continue
                try:
                    response = http.post("/v1/predict", json={"text": row.text, "user_id": row.user_id})
                    response.raise_for_status()
                    answer = response.json()
                except Exception as exc:  # counted: the guarantee is that none fails
                    self.failed += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                self.versions.append((time.monotonic(), answer["model_version"]))
                event = FeedbackEvent(event_id=uuid.uuid4().hex, prediction_id=answer["prediction_id"],
                                      label=row.label, source="app")
                producer.produce(FEEDBACK, key=event.prediction_id.encode(), value=event.model_dump_json().encode())
                producer.poll(0)
                self.sent += 1
                self.prediction_ids.append(event.prediction_id)
        if producer.flush(30) > 0:
            self.errors.append("feedback not all acknowledged by the broker")


@dataclass
class Stack:
    mlflow: Any  # infra.process.ManagedProcess
    broker: Any
    serving: Any
    feedback: Any
    model_name: str
    tracking_uri: str
    mlflow_state: Path
    mlflow_port: int


def mlflow_down(workdir: Path, trials: int = 2, outage_s: float = 30.0, modes: tuple[str, ...] = MODES,
                registry_interval_s: float = 4.0, rate: float = 15.0, log: Callable[[str], None] = print
                ) -> Outcome:
    """Run `trials` outages of `outage_s` seconds (modes in turn) against one stack in `workdir`; the
    guarantee: deltas keep reaching serving during each outage, a registration lands after each, every
    feedback event is learned once, no predict request fails."""
    if any(mode not in MODES for mode in modes):
        raise ValueError(f"modes must be among {MODES}, got {modes}")
    workdir.mkdir(parents=True, exist_ok=True)
    measured: dict[str, Any] = {"trials": [], "outage_s": outage_s, "registry_interval_s": registry_interval_s,
                                "rate": rate}
    survived = 0
    with ExitStack() as exits:
        started = time.monotonic()
        stack = start_stack(workdir, registry_interval_s, exits, log)
        measured["start_s"] = round(time.monotonic() - started, 1)
        exits.callback(lambda: stack.mlflow.stop())  # a killed server is replaced: stop whichever runs
        traffic = Traffic(stack.serving.url, stack.broker.url, rate)
        traffic.start()
        exits.callback(traffic.stop)
        if not _wait(lambda: "+ftrl." in _current(stack.serving.url), 120):
            raise RuntimeError("serving never got an online delta before the outage:\n"
                               + stack.feedback.log_tail())
        for trial in range(trials):
            mode = modes[trial % len(modes)]
            result = one_outage(stack, mode, outage_s, registry_interval_s, log)
            measured["trials"].append(result)
            survived += result["held"]
            log(f"trial {trial + 1}/{trials} ({mode}): {json.dumps(result)}")
        traffic.stop()
        started = time.monotonic()
        drained = drain(stack, traffic)
        measured["drain_s"] = round(time.monotonic() - started, 1)
        measured |= drained | {"sent": traffic.sent, "requests_failed": traffic.failed,
                               "request_errors": traffic.errors[:5]}
    lost, twice = drained["lost"], drained["applied_twice"]
    if not drained["serving_has_live_head"]:
        survived = min(survived, trials - 1)
    trial_text = "; ".join(
        f"{t['mode']}: {t['served_advances']} served updates in {t['outage_s']:.0f} s down, "
        f"registered v{t['registered_version']} {t['registered_after_s']:.1f} s after it was back"
        if t["registered_version"] else f"{t['mode']}: no registration after the outage"
        for t in measured["trials"])
    detail = (f"{trial_text}; {traffic.sent} feedback events sent, {drained['learned']} learned; "
              f"failed attempts {drained['registrations'].get('failed', 0)}, "
              f"retried {drained['registrations'].get('retried', 0)}")
    return Outcome("MLflow server down (SIGSTOP / killed) while the loop runs", trials, survived, lost, twice,
                   traffic.failed, detail, measured)


def one_outage(stack: Stack, mode: str, outage_s: float, registry_interval_s: float,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Take MLflow away for `outage_s`, watching serving; bring it back and wait for the registration."""
    # Each outage starts from a steady loop, serving on the feedback service's base. Right after the previous
    # outage's registration became champion serving is still fetching it, and taking MLflow away then is
    # another fault (a new champion out of reach), in which serving rightly keeps the whole model it has.
    def serving_on_live_base() -> bool:
        return _base(_current(stack.serving.url)) == _base(_json(stack.feedback.url, "/healthz")["version"])

    waited_from = time.monotonic()
    steady = _wait(serving_on_live_base, 120.0)
    steady_after_s = round(time.monotonic() - waited_from, 1)
    before = _online_versions(stack)
    metrics = _metrics(stack.feedback.url)
    failed_before = metrics.get('loopline_feedback_registrations_total{outcome="failed"}', 0.0)
    down_at = time.monotonic()
    if mode == "stop":
        stack.mlflow.pause()
    else:
        _kill(stack.mlflow)
    log(f"MLflow {'stopped' if mode == 'stop' else 'killed'} for {outage_s:.0f} s")
    seen: list[str] = []
    try:
        while time.monotonic() - down_at < outage_s:
            version = _current(stack.serving.url)
            if not seen or version != seen[-1]:
                seen.append(version)
            time.sleep(0.2)
        metrics = _metrics(stack.feedback.url)
    finally:
        up_at = time.monotonic()
        if mode == "stop":
            stack.mlflow.resume()
        else:
            stack.mlflow = _restart_mlflow(stack)
    back_at = time.monotonic()
    failed = metrics.get('loopline_feedback_registrations_total{outcome="failed"}', 0.0) - failed_before
    pending = metrics.get("loopline_feedback_registrations_pending", 0.0)
    # A registration due in the outage lands after it: a new online version, and none in hand since the outage.
    def landed_since() -> bool:
        waited = _metrics(stack.feedback.url).get("loopline_feedback_registration_pending_seconds", math.inf)
        return bool(_online_versions(stack) - before) and waited < time.monotonic() - back_at

    landed = _wait(landed_since, 60.0 + 2 * registry_interval_s)
    new = sorted(_online_versions(stack) - before)
    served_advances = max(0, len(seen) - 1)
    result = {"mode": mode, "serving_on_live_base": steady, "waited_for_it_s": steady_after_s,
              "outage_s": round(up_at - down_at, 1), "restart_s": round(back_at - up_at, 1),
              "served_versions": seen, "served_advances": served_advances,
              "failed_attempts_in_outage": failed, "pending_in_outage": pending,  # attempts may still hang
              "registered_version": new[-1] if new else None,
              "registered_after_s": round(time.monotonic() - back_at, 1) if landed else None}
    result["held"] = bool(steady and landed and served_advances >= 1 and pending >= 1)
    return result


def drain(stack: Stack, traffic: Traffic, timeout: float = 90.0) -> dict[str, Any]:
    """After the traffic stopped: wait until the service learned what was sent and serving caught up."""
    _wait(lambda: learned(_metrics(stack.feedback.url)) >= traffic.sent, timeout)
    time.sleep(3.0)  # anything learned twice would show now
    metrics = _metrics(stack.feedback.url)
    # The service started with this run: everything it judged was sent by `traffic`.
    account = ledger(stack.feedback.state_dir, traffic.prediction_ids, 0, learned(metrics))
    live = _json(stack.feedback.url, "/healthz")["version"]
    caught_up = _wait(lambda: _current(stack.serving.url) == _plain(_json(stack.feedback.url, "/healthz")["version"]),
                      60)
    registrations = {key.split('"')[1]: value for key, value in metrics.items()
                     if key.startswith("loopline_feedback_registrations_total{")}
    dead = {key.split('"')[1]: value for key, value in metrics.items()
            if key.startswith("loopline_feedback_dead_letters_total{")}
    return {"learned": learned(metrics), "sent_not_learned": traffic.sent - learned(metrics),
            "lost": account.lost, "applied_twice": account.twice,
            "dead_letters": dead, "registrations": registrations, "live_head": live,
            "served": _current(stack.serving.url), "serving_has_live_head": caught_up,
            "serving_gaps": _metrics(stack.serving.url).get('loopline_model_updates{outcome="gap"}', 0.0)}


# -- the stack ---------------------------------------------------------------------------------------


def start_stack(workdir: Path, registry_interval_s: float, exits: ExitStack, log: Callable[[str], None]) -> Stack:
    """MLflow (booting while the model is built), the broker, v1 as champion, then serving and feedback."""
    from infra.broker import start_broker
    from infra.mlflow_server import mlflow_healthy, mlflow_process
    from infra.process import free_port

    port = free_port()
    mlflow = mlflow_process(workdir / "mlflow-state", port).start()
    exits.callback(mlflow.stop)
    broker = start_broker(workdir / "broker-state", free_port())
    exits.callback(broker.stop)
    bundle = tiny_bundle(workdir / "bundle")
    mlflow.wait_healthy(lambda: mlflow_healthy(mlflow.url), START_TIMEOUT)
    model_name = f"reliability-registry-{uuid.uuid4().hex[:8]}"
    register_champion(bundle, mlflow.url, model_name, workdir / "client-state")
    log(f"MLflow at {mlflow.url}, broker at {broker.url}, v1 of {model_name} is champion")

    serving, feedback = _services(workdir, mlflow.url, broker.url, model_name, registry_interval_s)
    for proc in (serving, feedback):
        proc.start()
        exits.callback(proc.stop)
    for proc, path in ((serving, "/readyz"), (feedback, "/healthz")):
        proc.wait_healthy(lambda p=proc, q=path: _json(p.url, q, 2) is not None, START_TIMEOUT)
    return Stack(mlflow, broker, serving, feedback, model_name, mlflow.url, workdir / "mlflow-state", port)


def tiny_bundle(folder: Path) -> Path:
    """A bundle as the train flow writes it, with a tiny random encoder (FP32 ONNX) and no drift reference."""
    from models.bundle import ENCODER_FILE, HEAD_FILE, TOKENIZER_DIR, write_manifest
    from models.compile import export_onnx
    from models.encoder import Encoder
    from models.features import FeatureSpec
    from models.traffic import GENERATED_INTENTS as INTENTS
    from models.traffic import TrafficConfig, generate
    from models.train import HeadConfig, featurize, train_head

    if (folder / "manifest.json").exists():
        return folder
    events = generate(TrafficConfig(n_events=600, n_users=40, seed=2)).events
    encoder, spec, texts = Encoder.tiny_random(seed=1), FeatureSpec(bits=12), list(events["text"])
    head = train_head(featurize(texts, encoder.encode(texts), spec), list(events["label"]), INTENTS,
                      HeadConfig(epochs=2))
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        building = Path(tmp) / "bundle"
        building.mkdir()
        export_onnx(encoder, building / ENCODER_FILE)
        encoder.tokenizer.save_pretrained(building / TOKENIZER_DIR)
        head.save(building / HEAD_FILE)
        write_manifest(building, spec, INTENTS, encoder={"dim": encoder.dim, "max_length": encoder.max_length})
        building.rename(folder)
    return folder


def register_champion(bundle: Path, tracking_uri: str, model_name: str, state: Path) -> None:
    import mlflow

    from services.common.registry import Registry
    from services.common.settings import CommonSettings

    registry = Registry(CommonSettings(state_dir=state, mlflow_tracking_uri=tracking_uri, model_name=model_name))
    with mlflow.start_run(experiment_id=registry.experiment_id()):
        version = registry.register(bundle, {"source": "bench/reliability_registry.py"}).version
    registry.promote(version, "bench/reliability_registry.py")


def _services(workdir: Path, tracking_uri: str, broker: str, model_name: str, registry_interval_s: float
              ) -> tuple[Any, Any]:
    from infra.process import HOST, ManagedProcess, free_port

    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPLINE_", "MLFLOW_HTTP_"))}
    shared = {"LOOPLINE_MLFLOW_TRACKING_URI": tracking_uri, "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS": broker,
              "LOOPLINE_MODEL_NAME": model_name, "OMP_NUM_THREADS": "1", "LOOPLINE_CHAMPION_CHECK_S": "60"}
    serving_port, feedback_port = free_port(), free_port()
    loopline = str(Path(sys.executable).with_name("loopline"))
    serving_env = {**base, **shared, "LOOPLINE_STATE_DIR": str(workdir / "serving-state"),
                   "LOOPLINE_PORT": str(serving_port), "LOOPLINE_LOG_SEND_TIMEOUT_S": "2"}
    serving = ManagedProcess("serving", [loopline, "serve"], workdir / "serving-state",
                             url=f"http://{HOST}:{serving_port}", env=serving_env)
    feedback = ManagedProcess("feedback", [loopline, "feedback"], workdir / "feedback-state",
                              url=f"http://{HOST}:{feedback_port}", env={
                                  **base, **shared, "LOOPLINE_STATE_DIR": str(workdir / "feedback-state"),
                                  "LOOPLINE_METRICS_PORT": str(feedback_port),
                                  "LOOPLINE_GROUP_ID": f"reliability-{uuid.uuid4().hex[:8]}",
                                  "LOOPLINE_UPDATE_INTERVAL_S": "1", "LOOPLINE_MIN_HOLDOUT": "10",
                                  "LOOPLINE_HOLDOUT_SHARE": "0.2", "LOOPLINE_CHECKPOINT_INTERVAL_S": "1",
                                  "LOOPLINE_IDLE_S": "1", "LOOPLINE_FEEDBACK_WAIT_S": "10",
                                  "LOOPLINE_REGISTRY_INTERVAL_S": f"{registry_interval_s:g}",
                                  "LOOPLINE_REGISTRY_RETRY_MAX_S": "4", "LOOPLINE_CHAMPION_CHECK_S": "10",
                                  "LOOPLINE_DRIFT": "false"})
    return serving, feedback


def _restart_mlflow(stack: Stack) -> Any:
    from infra.mlflow_server import mlflow_healthy, mlflow_process

    proc = mlflow_process(stack.mlflow_state, stack.mlflow_port)
    return proc.start_healthy(lambda: mlflow_healthy(proc.url), START_TIMEOUT)


def _kill(proc: Any) -> None:
    import signal

    os.killpg(proc.pgid, signal.SIGKILL)
    proc.stop()  # reaps the group


# -- reading the processes ---------------------------------------------------------------------------


def _json(url: str, path: str, timeout: float = 5.0) -> Any:
    import httpx

    try:
        response = httpx.get(f"{url}{path}", timeout=timeout)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _current(serving_url: str) -> str:
    body = _json(serving_url, "/v1/models/current")
    return str(body["version"]) if body else ""


def _base(version: str) -> str:
    """The registry version under a served or live head: "4" of "4+ftrl.7"."""
    return version.split("+", 1)[0]


def _plain(version: str) -> str:
    """As serving names it: a full version without deltas is "4", not "4+ftrl.0"."""
    return version.removesuffix("+ftrl.0")


def _metrics(url: str) -> dict[str, float]:
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    pairs = (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, _, value in pairs}


def _online_versions(stack: Stack) -> set[int]:
    """Registry versions with source=online (empty while the registry does not answer)."""
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(stack.tracking_uri).search_model_versions(f"name='{stack.model_name}'")
    except Exception:
        return set()
    return {int(mv.version) for mv in found if mv.tags.get("source") == "online"}


def _wait(condition: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return True
        except Exception:  # a process still starting or a server still coming back
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


@contextmanager
def _workdir(given: str | None) -> Iterator[Path]:
    if given:
        yield Path(given)
        return
    with tempfile.TemporaryDirectory(prefix="reliability-registry-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the MLflow server is away")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--work", help="folder for the servers' state (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "reliability_registry.json")
    args = parser.parse_args()
    with _workdir(args.work) as work:
        outcome = mlflow_down(work, args.trials, args.outage, tuple(args.modes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(outcome.as_json(), indent=2) + "\n")
    print(json.dumps(outcome.as_json(), indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: models, services, infra
    main()
