"""Faults on the feedback side, on real processes: the service killed, a checkpoint damaged, the broker paused.

The stack is the one the test suite starts (tests/integration/stack.py): the embedded
Tansu broker, MLflow on a SQLite file, a Feast store, `loopline serve` with a tiny model
as champion (these faults are about processes and state, not about the model) and
`loopline feedback` with windows and checkpoints every second. Traffic is what an
application sends: POST /v1/predict over HTTP, then, for most answers, a FeedbackEvent
with its own event_id on `feedback`.

Two feedback services read the same topics: `steady`, never disturbed, and `victim`.

- kill: the victim gets SIGKILL at a random point of a burst of traffic and is started
  again. Once both have read everything, the victim's newest checkpoint must hold exactly
  the steady head (FTRL z, n and w), the same progressive-validation counts (every event
  scored once) and the same delta sequence. Fewer learned events than the steady service
  are events lost, more are events applied twice.
- damaged checkpoint: the same, but before the restart a file of the victim's newest
  checkpoint gets bytes flipped, or is truncated (or both, to the newest two). The service
  must skip it, say so (a log line, `loopline_feedback_checkpoints_skipped_total`,
  /healthz), resume from the newest good one before it and replay to the same state.
- broker pause: SIGSTOP the broker for `pause_s` under traffic, then SIGCONT. Every
  predict request must be answered (200 within `REQUEST_TIMEOUT_S`) during the pause, and
  afterwards every feedback event sent must be learned once by the steady service or be
  in `feedback-dlq` with a reason.

Heavy imports (the stack, Kafka clients, numpy) are inside the functions:
bench/reliability.py imports this module before it knows what it will run.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reliability_outcome import Outcome  # bench/reliability_outcome.py: bench scripts import each other

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # tests/integration/stack.py starts the processes exactly as the test suite does

if TYPE_CHECKING:
    from kafka import KafkaProducer
    from rich.progress import Progress

    from infra.process import ManagedProcess
    from services.feedback.checkpoint import Checkpoint
    from tests.conftest import TinyModel
    from tests.integration.stack import Feedback, Serving

REQUEST_TIMEOUT_S = 5.0  # a predict request not answered within this counts as failed: it hung
SETTLE_TIMEOUT_S = 90.0  # for a service to read and learn everything after the traffic stops
BURST = 150  # predict requests per crash trial (about 3 s on 2 busy cores)
KILL_AFTER_S = (0.3, 3.5)  # the victim is killed this long after its burst began (uniform)
DAMAGE_KILL_AFTER_S = (1.5, 3.5)  # later: the newest checkpoint then holds part of the burst
DAMAGE_RATE = 25.0  # predict requests per second in damage trials: the burst lasts 6 s, the kill comes within it
PAUSE_RATE = 40.0  # predict requests per second while the broker is paused
FEEDBACK_SHARE = 0.8  # of answers that get feedback
HEAD_ARRAYS = ("z_sparse", "n_sparse", "w_sparse", "z_dense", "n_dense", "w_dense")

KILL = "kill -9 feedback service at a random point, restart"
FLIPPED = "newest checkpoint: bytes flipped, restart"
TRUNCATED = "newest checkpoint: a file truncated, restart"
BOTH = "two newest checkpoints: bytes flipped, a file truncated, restart"
TRIALS = {KILL: 6, FLIPPED: 2, TRUNCATED: 2}
QUICK_TRIALS = {KILL: 3, FLIPPED: 1, TRUNCATED: 1}
PAUSE_S, QUICK_PAUSE_S, PAUSE_TRIALS = 30.0, 10.0, 2


def pause_row(pause_s: float) -> str:
    return f"broker paused (SIGSTOP) {pause_s:g} s under load"


# -- the stack ------------------------------------------------------------------------------------


@dataclass
class Stack:
    """Broker and serving, plus every feedback event the broker acknowledged (the topic's contents)."""

    broker: ManagedProcess
    serving: Serving
    work: Path
    feedback_acked: int = 0

    def feedback_service(self, name: str) -> Feedback:
        """A `loopline feedback` of its own (state folder, consumer group), not started. Feedback waits for
        its prediction as long as by default (not the test suite's 5 s): after a broker pause, predictions
        buffered in serving's log arrive later than the feedback sent next to them."""
        from services.feedback.settings import FeedbackSettings
        from tests.integration.stack import feedback_service

        wait = FeedbackSettings.model_fields["feedback_wait_s"].default
        return feedback_service(self.serving, self.work / name, name, feedback_wait_s=f"{wait:g}")

    def producer(self) -> KafkaProducer:
        from kafka import KafkaProducer

        # Idempotent (kafka-python's default): a retry while the broker stalls cannot write an event twice.
        return KafkaProducer(bootstrap_servers=self.broker.url, acks="all", delivery_timeout_ms=180_000)


@contextmanager
def running_stack(work: Path, model: TinyModel | None = None, **serving_env: str) -> Iterator[Stack]:
    """A broker of its own and `loopline serve` (registry: a SQLite file in `work`)."""
    from infra.broker import start_broker
    from infra.process import free_port
    from services.serving.settings import ServingSettings
    from tests.conftest import tiny_model
    from tests.integration.stack import start_serving

    # Serving's own send timeout for the prediction log, not the 2 s the integration tests use to see
    # drops quickly: a broker pause must cost what it would cost a deployment.
    default_timeout = ServingSettings.model_fields["log_send_timeout_s"].default
    serving_env = {"LOOPLINE_LOG_SEND_TIMEOUT_S": f"{default_timeout:g}", **serving_env}
    broker = start_broker(work / "broker", free_port())
    try:
        with start_serving(f"sqlite:///{work / 'mlflow.db'}", broker.url, model or tiny_model(), work / "serving",
                           work / "bundles", **serving_env) as serving:
            yield Stack(broker, serving, work)
    finally:
        broker.stop()


@dataclass
class Pair:
    steady: Feedback
    victim: Feedback


@contextmanager
def feedback_pair(stack: Stack) -> Iterator[Pair]:
    """Two feedback services on the same topics, started together (start-up is mostly imports)."""
    pair = Pair(stack.feedback_service("steady"), stack.feedback_service("victim"))
    services = (pair.steady, pair.victim)
    try:
        for service in services:
            service.process.start()
        for service in services:
            service.process.wait_healthy(lambda s=service: metrics(s)["up"] == 1.0, 180)
        yield pair
    finally:
        for service in services:
            service.process.stop()


# -- traffic ------------------------------------------------------------------------------------


@dataclass
class Sent:
    """What one run of traffic did: requests, failures, and the feedback events the broker acknowledged."""

    requests: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by what went wrong
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (monotonic start, seconds)
    feedback_ids: list[str] = field(default_factory=list)  # acknowledged by the broker
    prediction_ids: list[str] = field(default_factory=list)  # theirs, in the same order
    send_errors: list[str] = field(default_factory=list)  # feedback the producer gave up on

    @property
    def requests_failed(self) -> int:
        return sum(self.failed.values())


def send_traffic(url: str, producer: KafkaProducer, n: int, seed: int, *, rate: float | None = None,
                 stop: threading.Event | None = None, sent: Sent | None = None) -> Sent:
    """Predict `n` generated requests over HTTP (cycling through them until `stop`, if given) and send
    feedback (the intent the user meant) for `FEEDBACK_SHARE` of the answers, as an application would.
    Never raises for a failed request: it is counted."""
    import httpx

    from models.traffic import TrafficConfig, generate
    from services.common.events import FEEDBACK, FeedbackEvent

    sent = sent if sent is not None else Sent()
    events = list(generate(TrafficConfig(n_events=n, n_users=40, seed=seed)).events.itertuples())
    rng = random.Random(seed)
    lock = threading.Lock()

    def acked(event_id: str, prediction_id: str) -> Callable[[Any], None]:
        def record(_: Any) -> None:
            with lock:
                sent.feedback_ids.append(event_id)
                sent.prediction_ids.append(prediction_id)
        return record

    def failed(event_id: str) -> Callable[[Exception], None]:
        def record(exc: Exception) -> None:
            with lock:
                sent.send_errors.append(f"{event_id}: {exc!r}")
        return record

    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        for i in range(n if stop is None else sys.maxsize):
            if stop is not None and stop.is_set():
                break
            if rate is not None:  # an even pace, not bursts
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            row = events[i % len(events)]
            t0 = time.monotonic()
            sent.requests += 1
            try:
                response = http.post("/v1/predict", json={"text": row.text, "user_id": row.user_id})
            except httpx.HTTPError as exc:
                sent.failed[type(exc).__name__] += 1
                continue
            finally:
                sent.latencies.append((t0, time.monotonic() - t0))
            if response.status_code != 200:
                sent.failed[f"HTTP {response.status_code}"] += 1
                continue
            if rng.random() < FEEDBACK_SHARE:
                pid = response.json()["prediction_id"]
                event = FeedbackEvent(event_id=uuid.uuid4().hex, prediction_id=pid, label=row.true_label,
                                      source="correction")
                future = producer.send(FEEDBACK, key=pid.encode(), value=event.model_dump_json().encode())
                future.add_callback(acked(event.event_id, pid)).add_errback(failed(event.event_id))
    return sent


def flush(producer: KafkaProducer, sent: Sent, stack: Stack, timeout: float = 200.0) -> None:
    """Wait until the producer has an answer for every feedback event; count the acknowledged ones."""
    producer.flush(timeout)
    stack.feedback_acked += len(sent.feedback_ids)


# -- reading a feedback service -----------------------------------------------------------------


def metrics(service: Feedback) -> dict[str, float]:
    """The service's /metrics as {'name{labels}': value}; {'up': 0.0} if it does not answer."""
    import httpx

    try:
        text = httpx.get(f"{service.process.url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {"up": 0.0}
    values = {"up": 1.0}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def learned(values: dict[str, float]) -> int:
    """Feedback events joined and judged: learned (or held back), or withheld by per-user trust (a user it
    no longer vouches for, a correction repeated); either way accounted for, once."""
    from services.common.events import WITHHELD_REASONS

    return int(values.get("loopline_feedback_examples_total", 0) + sum(
        values.get(f'loopline_feedback_dead_letters_total{{reason="{reason}"}}', 0) for reason in WITHHELD_REASONS))


@dataclass(frozen=True)
class Ledger:
    """What became of each feedback event a run sent, read from the service's checkpoint.

    Counts alone cannot tell one event lost from another learned twice: they cancel. Here an
    event is joined when its prediction id is among the join store's labeled ids and no longer
    waiting to be released (so it was learned, held back or withheld by trust: judged; labeled
    ids are remembered for `LOOPLINE_PREDICTION_TTL_S`, an hour, longer than any run here), and
    `judged` is how much the service's judged count rose, which rises once per judging. Sent
    events not joined are lost; judgings beyond the events joined were of an event again.
    Without a checkpoint to read (`read` False) nothing can be vouched for: every event sent
    counts as lost.
    """

    sent: int
    joined: int
    judged: int
    read: bool = True

    @property
    def lost(self) -> int:
        return self.sent - self.joined

    @property
    def twice(self) -> int:
        return max(0, self.judged - self.joined)


def judged_in(state: dict[str, Any]) -> int:
    """`learned` as a checkpoint's state records it."""
    from services.common.events import WITHHELD_REASONS

    return int(state["progress"]["examples"] + sum(state["dead_letters"].get(r, 0) for r in WITHHELD_REASONS))


def ledger(state_dir: Path, prediction_ids: Collection[str], judged_before: int, judged_now: int,
           timeout: float = 30.0) -> Ledger:
    """The ledger of the events for `prediction_ids`, from the first checkpoint the feedback service with
    state folder `state_dir` writes after this call that has caught up with `judged_now` (its counters
    after settling; `judged_before`: before the run sent anything). Not `read` if none does within
    `timeout`."""
    from services.feedback.checkpoint import CheckpointStore
    from services.feedback.join import JoinStore
    from services.feedback.service import JOIN

    newest_at_call = CheckpointStore(state_dir / "feedback" / "checkpoints").restore().checkpoint
    after = -1 if newest_at_call is None else newest_at_call.number
    found = newest_checkpoint(state_dir, after, timeout, lambda c: judged_in(c.state) >= judged_now)
    if found is None:
        return Ledger(len(set(prediction_ids)), 0, 0, read=False)
    join = JoinStore.from_bytes(found.files[JOIN])
    unreleased = {j.prediction.prediction_id for j in join.ready}
    wanted = set(prediction_ids)
    joined = sum(1 for pid in join.labeled if pid in wanted and pid not in unreleased)
    return Ledger(len(wanted), joined, judged_in(found.state) - judged_before)


def feedback_read(values: dict[str, float]) -> int:
    return int(values.get('loopline_feedback_records_total{topic="feedback"}', 0))


def idle(values: dict[str, float]) -> bool:
    """Nothing joined and unlearned, no feedback waiting for its prediction."""
    return all(values.get(f'loopline_feedback_pending{{kind="{kind}"}}', 1) == 0
               for kind in ("joined_unreleased", "feedback_waiting"))


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.25) -> bool:
    """Poll `condition` until it holds or `timeout` passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


def settle(services: list[Feedback], feedback_records: int, timeout: float = SETTLE_TIMEOUT_S) -> bool:
    """Until every service has read `feedback_records` feedback records and learned or dead-lettered them.

    Twice in a row with the same counts: /metrics is read while the service works, and a reading taken
    between a window's release from the join store and its learning shows nothing pending and the
    window's examples not yet counted.
    """
    previous: list[list[float]] = []

    def settled() -> bool:
        readings = [metrics(s) for s in services]
        counts = [[learned(v), feedback_read(v)] for v in readings]
        done = all(feedback_read(v) >= feedback_records and idle(v) for v in readings) and counts == previous
        previous[:] = counts if all(idle(v) for v in readings) else []
        return done

    return wait_for(settled, timeout)


def newest_checkpoint(state_dir: Path, after: int, timeout: float = 30.0,
                      wanted: Callable[[Checkpoint], bool] = lambda _: True) -> Checkpoint | None:
    """The newest checkpoint of the feedback service with state folder `state_dir` once its number is above
    `after` (one written after settling) and it is `wanted`."""
    from services.feedback.checkpoint import CheckpointStore

    store = CheckpointStore(state_dir / "feedback" / "checkpoints")
    found: list[Checkpoint] = []

    def written() -> bool:
        restored = store.restore().checkpoint  # may race with pruning: then an older one, and we poll again
        if restored is not None and restored.number > after and wanted(restored):
            found.append(restored)
            return True
        return False

    return found[-1] if wait_for(written, timeout) else None


def differences(a: Checkpoint, b: Checkpoint) -> list[str]:
    """How two checkpoints' learned state differs (head, progressive counts, deltas); empty if it does not."""
    import numpy as np

    from models.ftrl import FTRLProximal
    from services.feedback.service import HEAD

    heads = FTRLProximal.from_bytes(a.files[HEAD]), FTRLProximal.from_bytes(b.files[HEAD])
    found = [f"head {name}" for name in HEAD_ARRAYS
             if not np.array_equal(getattr(heads[0], name), getattr(heads[1], name))]
    found += [key for key in ("progress", "sequence", "base_version", "windows") if a.state[key] != b.state[key]]
    return found


# -- crash trials: kill -9, optionally damage the newest checkpoint, restart ----------------------


@dataclass
class Trial:
    survived: bool
    lost: int = 0
    twice: int = 0
    requests_failed: int = 0
    notes: list[str] = field(default_factory=list)  # why it did not survive
    measured: dict[str, Any] = field(default_factory=dict)


Damage = Callable[[Path, random.Random], str]  # damages a checkpoint folder, says how


def flip_bytes(folder: Path, rng: random.Random) -> str:
    """Invert 8 bytes somewhere in one of the checkpoint's files, as bit rot or a bad sector would."""
    target = rng.choice(sorted(p for p in folder.iterdir() if p.is_file()))
    data = bytearray(target.read_bytes())
    at = rng.randrange(max(1, len(data) - 8))
    for i in range(at, min(at + 8, len(data))):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return f"{target.name}: 8 bytes flipped at {at} of {len(data)}"


def truncate(folder: Path, rng: random.Random) -> str:
    """Cut one of the checkpoint's files short, as a torn write would."""
    target = rng.choice(sorted(p for p in folder.iterdir() if p.is_file()))
    size = target.stat().st_size
    keep = rng.randrange(size) if size else 0
    os.truncate(target, keep)
    return f"{target.name}: truncated to {keep} of {size} bytes"


def checkpoint_folders(service: Feedback) -> list[Path]:
    folder = service.state / "feedback" / "checkpoints"
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("ckpt-")) if folder.exists() else []


def kill(service: Feedback) -> None:
    """SIGKILL the whole process group: no shutdown, no last checkpoint."""
    os.killpg(service.process.pgid, signal.SIGKILL)
    service.process.stop()  # reaps what is left


def crash_trial(stack: Stack, pair: Pair, producer: KafkaProducer, rng: random.Random, seed: int,
                damages: list[Damage] | None = None) -> Trial:
    """One burst of traffic; the victim is killed at a random point of it, its newest checkpoints
    damaged (the newest with `damages[0]`, the one before with `damages[1]`, ...), and started again;
    then its state is compared with the steady one's."""
    from services.feedback.checkpoint import CheckpointError, read

    steady, victim = pair.steady, pair.victim
    before = {"steady": learned(metrics(steady)), "victim": learned(metrics(victim))}
    sent = Sent()
    # Damage trials pace the burst: an unpaced one can be learned and checkpointed whole before the kill, and
    # then the older checkpoint covers as much as the damaged ones.
    traffic = threading.Thread(target=send_traffic, args=(stack.serving.url, producer, BURST, seed),
                               kwargs={"sent": sent, "rate": DAMAGE_RATE if damages else None}, name="traffic")
    traffic.start()
    delay = rng.uniform(*(DAMAGE_KILL_AFTER_S if damages else KILL_AFTER_S))
    time.sleep(delay)  # the random point of the fault
    kill(victim)
    killed_at = time.monotonic()
    trial = Trial(True, measured={"killed_after_s": round(delay, 2)})

    fallback: int | None = None
    damaged: list[str] = []
    if damages:
        folders = checkpoint_folders(victim)
        offsets = read(folders[-1]).state["offsets"]
        for folder, damage in zip(reversed(folders), damages, strict=False):
            trial.measured.setdefault("damaged", []).append(f"{folder.name}: {damage(folder, rng)}")
            damaged.append(folder.name)
            try:
                read(folder)
                trial.notes.append(f"the damage to {folder.name} went unnoticed by the verification")
            except CheckpointError:
                pass
        if len(folders) > len(damages):
            good = read(folders[-1 - len(damages)])
            fallback = good.number
            # Records the older checkpoint had not covered yet: read again after the restart.
            trial.measured["replayed_records"] = sum(offsets[k] - good.state["offsets"].get(k, 0) for k in offsets)

    log_start = victim.process.log_path.stat().st_size
    victim.start()
    trial.measured["restart_s"] = round(time.monotonic() - killed_at, 2)
    if damages:
        trial.notes += damage_reported(victim, log_start, damaged, fallback)

    traffic.join()
    flush(producer, sent, stack)
    trial.requests_failed = sent.requests_failed
    trial.measured["feedback_sent"] = len(sent.feedback_ids)
    caught_up = time.monotonic()
    if not settle([steady, victim], stack.feedback_acked):
        trial.notes.append(f"not settled within {SETTLE_TIMEOUT_S:g} s")
    trial.measured["caught_up_s"] = round(time.monotonic() - caught_up, 2)

    after = {name: metrics(s) for name, s in (("steady", steady), ("victim", victim))}
    accounts = {name: ledger(s.state, sent.prediction_ids, before[name], learned(after[name]))
                for name, s in (("steady", steady), ("victim", victim))}
    victim_account, steady_account = accounts["victim"], accounts["steady"]
    trial.measured["ledgers"] = {name: str(account) for name, account in accounts.items()}
    trial.measured["judged"] = {name: [before[name], learned(after[name])] for name in before}
    if not victim_account.read:
        trial.notes.append("no checkpoint of the victim caught up with what it learned")
    trial.lost, trial.twice = victim_account.lost, victim_account.twice
    # The steady service is the reference only if it learned every event sent once (no dead letters here).
    if steady_account.lost or steady_account.twice:
        trial.notes.append(f"the steady service is no reference: {steady_account}")

    states = [newest_checkpoint(s.state, int(after[name].get("loopline_feedback_checkpoint", 0)))
              for name, s in (("steady", steady), ("victim", victim))]
    if states[0] is None or states[1] is None:
        trial.notes.append("no checkpoint written after settling")
    else:
        differ = differences(states[0], states[1])
        if differ:
            trial.notes.append("victim differs from steady in " + ", ".join(differ))
    trial.survived = not (trial.notes or trial.lost or trial.twice or trial.requests_failed)
    return trial


def damage_reported(service: Feedback, log_start: int, damaged: list[str], fallback: int | None) -> list[str]:
    """What is missing from the report of a skipped checkpoint: log lines, metric, /healthz."""
    import httpx

    problems = []
    text = service.process.log_path.read_bytes()[log_start:].decode(errors="replace")
    problems += [f"no log line for skipped {name}" for name in damaged if f"checkpoint {name} skipped" not in text]
    resumed = re.search(r"resumed from checkpoint (\d+)", text)
    if fallback is not None and (resumed is None or int(resumed.group(1)) != fallback):
        problems.append(f"did not resume from checkpoint {fallback} ({resumed.group(0) if resumed else 'no'})")
    if metrics(service).get("loopline_feedback_checkpoints_skipped_total") != len(damaged):
        problems.append(f"loopline_feedback_checkpoints_skipped_total is not {len(damaged)}")
    health = httpx.get(f"{service.process.url}/healthz", timeout=5).json()
    named = [p.split(":", 1)[0] for p in health.get("checkpoints_skipped", [])]
    if named != damaged:
        problems.append(f"/healthz names {named} as skipped, not {damaged}")
    return problems


def crash_outcome(fault: str, trials: list[Trial]) -> Outcome:
    restarts = [t.measured["restart_s"] for t in trials]
    catch_up = [t.measured["caught_up_s"] for t in trials]
    replayed = [t.measured["replayed_records"] for t in trials if "replayed_records" in t.measured]
    detail = (f"{statistics.mean(t.measured['feedback_sent'] for t in trials):.0f} feedback events/trial; "
              f"restart p50 {statistics.median(restarts):.1f} s, settled {statistics.median(catch_up):.1f} s "
              "after the traffic; state equal to the steady service's")
    if replayed:
        detail += f"; {statistics.median(replayed):.0f} records replayed from the older checkpoint (median)"
    notes = sorted({n for t in trials for n in t.notes})
    if notes:
        detail += "; FAILED: " + "; ".join(notes)
    return Outcome(fault, len(trials), sum(t.survived for t in trials), sum(t.lost for t in trials),
                   sum(t.twice for t in trials), sum(t.requests_failed for t in trials), detail,
                   {"trials": [t.measured | {"survived": t.survived, "notes": t.notes} for t in trials]})


def crash_trials(stack: Stack, pair: Pair, fault: str, trials: int, seed: int, damages: list[Damage] | None = None,
                 advance: Callable[[], None] | None = None) -> Outcome:
    rng = random.Random(seed)
    producer = stack.producer()
    results = []
    try:
        for i in range(trials):
            results.append(crash_trial(stack, pair, producer, rng, seed * 1000 + i, damages))
            if advance is not None:
                advance()
    finally:
        producer.close(10)
    return crash_outcome(fault, results)


def kill_feedback(stack: Stack, pair: Pair, trials: int, seed: int = 1,
                  advance: Callable[[], None] | None = None) -> Outcome:
    """kill -9 the victim at a random point of each of `trials` bursts; restart; compare with steady."""
    return crash_trials(stack, pair, KILL, trials, seed, None, advance)


def damaged_checkpoint(stack: Stack, pair: Pair, trials: int, how: str, seed: int | None = None,
                       advance: Callable[[], None] | None = None) -> Outcome:
    """As `kill_feedback`, with checkpoints damaged before each restart. `how`: "flip" or "truncate" the
    newest; "flip+truncate": flip the newest and truncate the one before (both skipped, the third used)."""
    fault, damages, default_seed = {"flip": (FLIPPED, [flip_bytes], 2), "truncate": (TRUNCATED, [truncate], 4),
                                    "flip+truncate": (BOTH, [flip_bytes, truncate], 6)}[how]
    return crash_trials(stack, pair, fault, trials, default_seed if seed is None else seed, damages, advance)


# -- broker pause -----------------------------------------------------------------------------------


def read_dead_letters(broker: str, quiet_s: float = 3.0, timeout: float = 60.0) -> list[Any]:
    """Every letter on feedback-dlq, read from the beginning until none came for `quiet_s` (Tansu's high
    watermark is not trusted)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from infra.broker import DEFAULT_PARTITIONS
    from services.common.events import FEEDBACK_DLQ, DeadLetter

    partitions = [TopicPartition(FEEDBACK_DLQ, p) for p in range(DEFAULT_PARTITIONS[FEEDBACK_DLQ])]
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False)
    letters: list[DeadLetter] = []
    try:
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline, last = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                letters.extend(DeadLetter.model_validate_json(r.value) for r in records)
                last = time.monotonic()
    finally:
        consumer.close()
    return letters


def letter_event_id(letter: Any) -> str | None:
    """The event_id of the feedback event a dead letter carries, if it has one."""
    try:
        return str(json.loads(base64.b64decode(letter.value))["event_id"])
    except (ValueError, KeyError, TypeError):
        return None


def serving_drops(stack: Stack) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{stack.serving.url}/metrics", timeout=10).text
    return {m[1]: float(m[2]) for m in re.finditer(r'^loopline_prediction_log_dropped\{reason="([^"]+)"\} (\S+)$',
                                                   text, re.MULTILINE)}


def pause_trial(stack: Stack, service: Feedback, pause_s: float, seed: int) -> Trial:
    """Traffic at `PAUSE_RATE`/s; the broker stopped for `pause_s` in the middle of it; then every feedback
    event sent is looked for: learned once by `service`, or in feedback-dlq with a reason."""
    from services.common.events import FEEDBACK

    producer = stack.producer()
    before, drops_before = metrics(service), serving_drops(stack)
    sent, stop = Sent(), threading.Event()
    traffic = threading.Thread(target=send_traffic, args=(stack.serving.url, producer, 2_000, seed),
                               kwargs={"rate": PAUSE_RATE, "stop": stop, "sent": sent}, name="traffic")
    trial = Trial(True)
    traffic.start()
    try:
        wait_for(lambda: sent.requests >= PAUSE_RATE * 2, 30)  # load first
        stack.broker.pause()
        paused = time.monotonic()
        try:
            time.sleep(pause_s)  # the fault itself
        finally:
            stack.broker.resume()
        resumed = time.monotonic()
        wait_for(lambda: sent.requests >= PAUSE_RATE * (resumed - paused + 4), 30)  # load after it too
    finally:
        stop.set()
        traffic.join()
    flush(producer, sent, stack)
    producer.close(10)

    during = [s for t, s in sent.latencies if paused <= t < resumed]
    trial.requests_failed = sent.requests_failed
    trial.measured |= {"requests": sent.requests, "requests_during_pause": len(during),
                       "slowest_during_pause_s": round(max(during, default=0.0), 3),
                       "p99_during_pause_s": round(quantile(during, 0.99), 3),
                       "failed": dict(sent.failed), "feedback_sent": len(sent.feedback_ids),
                       "feedback_send_errors": len(sent.send_errors)}
    if sent.send_errors:
        trial.notes.append(f"{len(sent.send_errors)} feedback events not acknowledged: {sent.send_errors[0]}")

    settled_from = time.monotonic()
    if not settle([service], stack.feedback_acked):
        trial.notes.append(f"the feedback service had not read and settled everything {SETTLE_TIMEOUT_S:g} s "
                           "after the traffic")
    trial.measured["settled_s"] = round(time.monotonic() - settled_from, 2)
    if not service.process.running():
        trial.notes.append("the feedback service died")

    mine = set(sent.feedback_ids)
    reasons: dict[str, str] = {}
    copies = 0
    for letter in read_dead_letters(stack.broker.url):
        event_id = letter_event_id(letter)
        if letter.topic != FEEDBACK or event_id not in mine:
            continue
        if letter.reason == "duplicate":
            copies += 1  # a second copy of a sent event, refused: the first one counts
        else:
            reasons.setdefault(event_id, letter.reason)
    gained = learned(metrics(service)) - learned(before)
    # Every feedback event here is for a prediction serving answered: one not learned is lost, whatever
    # the dead letter says (`unmatched` when serving's log dropped its prediction during the pause).
    account = ledger(service.state, sent.prediction_ids, learned(before), learned(metrics(service)))
    if not account.read:
        trial.notes.append("no checkpoint caught up with what the service learned")
    trial.lost, trial.twice = account.lost, account.twice
    drops = {k: v - drops_before.get(k, 0.0) for k, v in serving_drops(stack).items()}
    trial.measured |= {"learned": gained, "dead_lettered": dict(Counter(reasons.values())),
                       "duplicate_copies_refused": copies,
                       "prediction_events_dropped": {k: int(v) for k, v in drops.items() if v}}
    trial.survived = not (trial.notes or trial.lost or trial.twice or trial.requests_failed)
    return trial


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pause_broker(stack: Stack, pair: Pair, pause_s: float, trials: int, seed: int = 3,
                 advance: Callable[[], None] | None = None) -> Outcome:
    """`trials` broker pauses under load, watched by the steady service alone: the victim is stopped first,
    because dead letters do not say which service wrote them, and the two may judge a feedback event
    differently (one joins it to a prediction that reached the broker late, the other has expired it)."""
    pair.victim.process.stop()
    results = []
    for i in range(trials):
        results.append(pause_trial(stack, pair.steady, pause_s, seed * 1000 + i))
        if advance is not None:
            advance()
    m = [t.measured for t in results]
    dead: Counter[str] = sum((Counter(x["dead_lettered"]) for x in m), Counter())
    dropped: Counter[str] = sum((Counter(x["prediction_events_dropped"]) for x in m), Counter())
    detail = (f"{sum(x['requests_during_pause'] for x in m)} predict requests during the pauses, slowest "
              f"{max(x['slowest_during_pause_s'] for x in m):.2f} s; {sum(x['feedback_sent'] for x in m)} feedback "
              f"events: {sum(x['learned'] for x in m)} learned, dead-lettered "
              f"{dict(dead) or 'none'}; prediction events dropped by serving's log {dict(dropped) or 'none'}; "
              f"settled {statistics.median(x['settled_s'] for x in m):.1f} s after the traffic (median)")
    notes = sorted({n for t in results for n in t.notes})
    if notes:
        detail += "; FAILED: " + "; ".join(notes)
    return Outcome(pause_row(pause_s), trials, sum(t.survived for t in results), sum(t.lost for t in results),
                   sum(t.twice for t in results), sum(t.requests_failed for t in results), detail,
                   {"pause_s": pause_s, "trials": [x | {"survived": t.survived, "notes": t.notes}
                                                   for x, t in zip(m, results, strict=True)]})


# -- hostile input ------------------------------------------------------------------------------


def malformed_events(stack: Stack, pair: Pair, seed: int = 5) -> Outcome:
    """tests/reliability/test_hostile_events.py's corpus of malformed feedback and prediction events,
    interleaved with good traffic: each one must be dead-lettered by each service exactly once with the
    reason its kind calls for, and every good feedback event learned once."""
    from services.common.events import FEEDBACK
    from tests.reliability.test_hostile_events import (
        bad_feedback,
        bad_predictions,
        logged_prediction,
        produce,
        serve_and_label,
    )

    services = [pair.steady, pair.victim]
    producer = stack.producer()
    before = learned(metrics(pair.steady))
    good_sent, good_ids = [], []

    def send_good(pid: str, event: Any) -> None:
        good_ids.append(pid)
        good_sent.append(produce(producer, FEEDBACK, pid, event.model_dump_json().encode(), kind="good",
                                 reason=None))

    good = serve_and_label(stack.serving, 30, seed=seed * 100 + 1, send=send_good)
    template = logged_prediction(stack.serving, good[0][0])
    corpus = bad_feedback(good) + bad_predictions(template, len(base64.b64decode(template["features"]["embedding"]))
                                                  // 4)
    more = serve_and_label(stack.serving, len(corpus), seed=seed * 100 + 2)
    bad = []
    for item, (pid, event) in zip(corpus, more, strict=True):  # interleaved with good traffic
        bad.append(produce(producer, item.topic, item.key, item.value, kind=item.kind, reason=item.reason))
        send_good(pid, event)
    producer.close(10)
    stack.feedback_acked += len(good_sent) + sum(b.topic == FEEDBACK for b in bad)
    settled = settle(services, stack.feedback_acked)

    reasons: dict[tuple[str, int, int], list[str]] = {}
    for letter in read_dead_letters(stack.broker.url):
        reasons.setdefault((letter.topic, letter.partition, letter.offset), []).append(letter.reason)
    wrong = [f"{b.kind}: {reasons.get(b.where, [])}" for b in bad
             if reasons.get(b.where, []) != [b.reason] * len(services)]
    gained = learned(metrics(pair.steady)) - before
    good_letters = sum(len(reasons.get(g.where, [])) for g in good_sent)
    account = ledger(pair.steady.state, good_ids, before, learned(metrics(pair.steady)))
    lost = sum(not reasons.get(b.where) for b in bad) + account.lost
    twice = sum(max(0, len(reasons.get(b.where, [])) - len(services)) for b in bad) + account.twice
    detail = (f"{len(bad)} malformed events ({len({b.topic for b in bad})} topics) among {len(good_sent)} good "
              f"feedback events, {len(services)} feedback services: dead-lettered with the expected reason by each "
              f"{len(bad) - len(wrong)}; good events learned {gained}, dead-lettered {good_letters}")
    if wrong or not settled:
        detail += "; FAILED: " + "; ".join(wrong + ([] if settled else ["not settled"]))
    return Outcome("malformed events (tests/reliability/test_hostile_events.py corpus)", len(bad),
                   len(bad) - len(wrong), lost, twice, 0, detail,
                   {"kinds": {b.kind: reasons.get(b.where, []) for b in bad}, "good_sent": len(good_sent),
                    "good_learned": gained, "good_dead_lettered": good_letters})


# -- every scenario of this module, as bench/reliability.py runs them --------------------------------


def run(work: Path, trials: int | None = None, quick: bool = False, progress: Progress | None = None
        ) -> list[Outcome]:
    """Every scenario here on one stack and one pair of feedback services: the crashes first, the broker
    pause last (it disturbs both services alike, so nothing is compared with the steady one after it)."""
    counts = dict.fromkeys(TRIALS, trials) if trials else (QUICK_TRIALS if quick else TRIALS)
    pause_s, pause_trials = (QUICK_PAUSE_S, 1) if quick else (PAUSE_S, PAUSE_TRIALS)
    with running_stack(work) as stack, feedback_pair(stack) as pair:

        def advance(fault: str, n: int) -> Callable[[], None] | None:
            if progress is None:
                return None
            task = progress.add_task(fault, total=n)
            return lambda: progress.advance(task)

        outcomes = [kill_feedback(stack, pair, counts[KILL], advance=advance(KILL, counts[KILL]))]
        for how, fault in (("flip", FLIPPED), ("truncate", TRUNCATED)):
            outcomes.append(damaged_checkpoint(stack, pair, counts[fault], how,
                                               advance=advance(fault, counts[fault])))
        try:
            outcomes.append(malformed_events(stack, pair))
        except Exception:  # a row that could not be measured is left out, never made up
            log.exception("malformed events: not measured")
        n = trials or pause_trials
        outcomes.append(pause_broker(stack, pair, pause_s, n, advance=advance(pause_row(pause_s), n)))
        return outcomes


def main() -> None:
    """Only the broker pause, on a stack of its own: `bench/reliability.py` runs every row."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="The broker paused under load (the other rows: bench/reliability.py)")
    parser.add_argument("--pause", type=float, default=PAUSE_S, help="seconds the broker is stopped")
    parser.add_argument("--trials", type=int, default=PAUSE_TRIALS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability_pause.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with (tempfile.TemporaryDirectory(prefix="reliability-pause-") as tmp, running_stack(Path(tmp)) as stack,
          feedback_pair(stack) as pair):
        outcome = pause_broker(stack, pair, args.pause, args.trials)
    args.out.write_text(json.dumps(outcome.as_json(), indent=2) + "\n")
    print(f"{outcome.fault} | trials {outcome.trials} | survived {outcome.survived} | lost {outcome.events_lost} | "
          f"twice {outcome.applied_twice} | requests failed {outcome.requests_failed}\n{outcome.detail}")


if __name__ == "__main__":
    main()
