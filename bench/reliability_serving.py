"""Serving-side faults and load on real processes, each scenario returning one `Outcome` row.

- `kill_during_swap`: `champion` moves to a new version (another encoder and head) and
  `model-updates` announces it; serving is killed with SIGKILL at a random moment inside
  the load, measured beforehand on one calibration swap from serving's own log ("loading
  it" to "serving N"). The restarted server must answer with the champion, whole: the
  version the registry names, and for fixed inputs the probabilities of that version's
  bundle computed offline; the download folder the killed server left must be gone.
- `kill_during_deltas`: a stream of head deltas on the champion; serving is killed at a
  random moment inside it. From its first answer on, the restarted server must answer
  with base + deltas 1..K for some K (each answer equal to that head offline: no gap, no
  half-applied delta), and reach the last delta published, each applied once.
- `soak`: predictions and their feedback at a steady rate through serving and the
  feedback service; no failed request, no 5xx, no dead letter (but at most 1% withheld
  by per-user trust), no dropped prediction event, every feedback event judged exactly
  once (per event, from the service's checkpoint); the RSS of both process groups is
  sampled and its growth bounded.
- `label_flip_flood`: a group of users reports wrong intents (`label_flip` traffic);
  per-user trust must withhold most of the poisoned feedback (`TRUST_CATCHES`) and almost
  none of the rest (`TRUST_SPARES`), and no head that reached serving may be less
  accurate on clean traffic than the champion by more than `FLOOD_BOUND`.

The processes are the ones tests/integration/stack.py starts (`loopline serve`, `loopline
feedback`, the embedded broker, MLflow on a SQLite file) with the tests' tiny random
encoder: these scenarios are about processes and state, not about model quality.
tests/reliability runs them with few trials on its session processes; `run` starts
its own for bench/reliability.py. Run alone: `python bench/reliability_serving.py [--quick]`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reliability_outcome import Outcome

if TYPE_CHECKING:
    import numpy as np

    from models.ftrl import Batch, FTRLProximal, HeadDelta
    from tests.conftest import TinyModel
    from tests.integration.stack import Feedback, Serving

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # run alone: tests/integration/stack.py starts the processes as the suite does
RESULTS = Path(__file__).resolve().parent / "results"
PROBABILITY_TOLERANCE = 1e-4  # serving's float64 softmax vs the same head offline; a wrong head differs by far more
READY_TIMEOUT_S = 180.0  # a restart takes about 11 s on a quiet 2-core machine; other tests share the cores
CATCH_UP_TIMEOUT_S = 120.0
FLOOD_BOUND = 0.02  # clean accuracy a head may lose to the champion during a flood: about the noise of 600 texts
TRUST_CATCHES = 0.6  # share of the poisoned feedback per-user trust withholds at least...
TRUST_SPARES = 0.01  # ...while withholding at most this share of all feedback that is not poisoned
# Log lines of services/serving/updates.py and model_store.py that mark a swap's start and end.
LOADING = re.compile(r"^(\S+ \S+) INFO services\.serving\.updates: champion is v(\d+) now", re.MULTILINE)
SERVING = re.compile(r"^(\S+ \S+) INFO services\.serving\.model_store: serving (\d+)(?:\+ftrl\.(\d+))? \(was",
                     re.MULTILINE)
REMOVED = re.compile(r"removed (\d+) download folder")  # services/serving/downloads.py at start


# -- models and bundles --------------------------------------------------------------------------


def tiny_model(seed: int = 1) -> TinyModel:
    """A tiny random encoder and a head trained on its embeddings, as tests/conftest.py's `trained`."""
    from models.encoder import Encoder
    from models.traffic import GENERATED_INTENTS as INTENTS
    from models.traffic import TrafficConfig, generate
    from models.train import HeadConfig, featurize, train_head
    from tests.conftest import SPEC

    events = generate(TrafficConfig(n_events=600, n_users=50, seed=2)).events
    encoder = Encoder.tiny_random(seed=seed)
    texts = list(events["text"])
    head = train_head(featurize(texts, encoder.encode(texts), SPEC), list(events["label"]), INTENTS,
                      HeadConfig(epochs=2))
    return encoder, head, texts


def fixed_texts(n: int = 12, seed: int = 11) -> list[str]:
    """Inputs every check sends, generated apart from any training text."""
    from models.traffic import TrafficConfig, generate

    return list(generate(TrafficConfig(n_events=n, n_users=10, seed=seed)).events["text"])


_TRAINING_FEATURES: dict[int, Batch] = {}


def random_chunk(model: TinyModel, n: int, rng: random.Random) -> tuple[Batch, np.ndarray]:
    """`n` of the model's training texts (features encoded once per encoder) with random labels."""
    import numpy as np

    from models.train import featurize
    from tests.conftest import SPEC

    key = id(model[0])
    if key not in _TRAINING_FEATURES:
        _TRAINING_FEATURES[key] = featurize(model[2], model[0].encode(model[2]), SPEC)
    rows = np.array(rng.sample(range(len(model[2])), n))
    return _TRAINING_FEATURES[key].take(rows), np.array([rng.randrange(len(model[1].classes)) for _ in rows])


def perturbed(head: FTRLProximal, model: TinyModel, rng: random.Random) -> FTRLProximal:
    """A copy of `head` that learned a random chunk with random labels: answers apart from any other version."""
    from tests.conftest import head_copy

    copy = head_copy(head)
    copy.learn_many(*random_chunk(model, 60, rng))
    return copy


@dataclass(frozen=True)
class Published:
    """A registry version this scenario made, with what serving must answer with it."""

    version: int
    folder: Path
    head: FTRLProximal
    answers: np.ndarray  # offline probabilities of the fixed texts


def publish_version(serving: Serving, model: TinyModel, head: FTRLProximal, texts: Sequence[str],
                    drift_reference: bool = False) -> Published:
    """Build, register and load a bundle offline; `champion` does not move yet. Only a version the feedback
    service learns on needs a drift reference (building one encodes 300 texts)."""
    import mlflow

    from models.predict import Predictor
    from tests.conftest import build_bundle

    folder = build_bundle(serving.work / f"version-{uuid.uuid4().hex[:8]}", model[0], head,
                          reference=drift_reference)
    with mlflow.start_run(experiment_id=serving.registry.experiment_id()):
        version = serving.registry.register(folder, {"source": "reliability scenario"}).version
    return Published(version, folder, head, Predictor(folder).predict_proba(list(texts)))


def promote(serving: Serving, published: Published) -> float:
    """Move `champion` and announce it as the feedback service does; returns the wall time of the notice."""
    from services.common.events import ModelUpdate

    serving.registry.promote(published.version, "reliability scenario")
    name, version = serving.settings.model_name, published.version
    sent = time.time()
    serving.announce(ModelUpdate(model=name, kind="full", version=str(version), base_version=version,
                                 uri=f"models:/{name}/{version}"))
    return sent


def settle(serving: Serving, model: TinyModel) -> int:
    """Make `model`'s head a new champion with no delta on it and wait until serving answers with it, so a
    feedback service started afterwards learns on a version whose deltas are its own."""
    published = publish_version(serving, model, model[1], fixed_texts(), drift_reference=True)
    promote(serving, published)
    if not wait_for(lambda: serving.current() == str(published.version), 60):
        raise RuntimeError(f"serving did not load v{published.version}:\n{serving.process.log_tail()}")
    return published.version


# -- the serving process -------------------------------------------------------------------------


def kill_and_restart(serving: Serving) -> float:
    """SIGKILL serving's whole group, start it again on the same port; returns the seconds until ready."""
    import httpx

    with contextlib.suppress(ProcessLookupError):  # the scenario may have killed it already
        os.killpg(serving.process.pgid, signal.SIGKILL)
    serving.process.stop()  # reaps what the kill left: nothing may outlive the group
    started = time.monotonic()
    serving.process.start_healthy(lambda: httpx.get(f"{serving.url}/readyz", timeout=2).status_code == 200,
                                  READY_TIMEOUT_S)
    return time.monotonic() - started


def log_offset(serving: Serving) -> int:
    return serving.process.log_path.stat().st_size if serving.process.log_path.exists() else 0


def log_since(serving: Serving, offset: int) -> str:
    with open(serving.process.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_time(stamp: str) -> float:
    """Wall time of a `logging` timestamp ('2026-11-21 23:16:40,475')."""
    day, _, millis = stamp.partition(",")
    return time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def wait_for(condition: Callable[[], bool], timeout: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return True
        except Exception as exc:  # a restarting server refuses connections for a moment
            log.debug("not yet: %s", exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def answer_matches(answer: dict[str, Any], expected: np.ndarray, classes: Sequence[str]) -> bool:
    """The top-k probabilities serving returned equal the expected row."""
    return all(abs(item["probability"] - float(expected[list(classes).index(item["intent"])]))
               <= PROBABILITY_TOLERANCE for item in answer["probabilities"])


def predict_batch(serving: Serving, texts: Sequence[str]) -> list[dict[str, Any]] | None:
    """One /v1/predict/batch call; None if it failed."""
    import httpx

    try:
        response = httpx.post(f"{serving.url}/v1/predict/batch", json={"items": [{"text": t} for t in texts]},
                              timeout=30)
    except httpx.HTTPError:
        return None
    return list(response.json()["predictions"]) if response.status_code == 200 else None


# -- kill -9 during a full-version swap ------------------------------------------------------------


def swap_window(serving: Serving, published: Published) -> tuple[float, float]:
    """Seconds after the notice at which serving starts and ends loading `published` (one measured swap)."""
    offset = log_offset(serving)
    sent = promote(serving, published)
    if not wait_for(lambda: serving.current() == str(published.version), 60):
        raise RuntimeError(f"serving did not load v{published.version}:\n{serving.process.log_tail()}")
    text = log_since(serving, offset)
    start = next(log_time(m[1]) for m in LOADING.finditer(text) if int(m[2]) == published.version)
    end = next(log_time(m[1]) for m in SERVING.finditer(text) if int(m[2]) == published.version and not m[3])
    return max(0.0, start - sent), max(0.0, end - sent)


def where_the_kill_landed(text: str, version: int) -> str:
    """'before', 'inside' or 'after' the load of `version`, from the killed server's log."""
    loading = any(int(m[2]) == version for m in LOADING.finditer(text))
    served = any(int(m[2]) == version and not m[3] for m in SERVING.finditer(text))
    return "after" if served else "inside" if loading else "before"


def kill_during_swap(serving: Serving, model: TinyModel, trials: int, seed: int = 0, min_inside: int = 0,
                     extra: int = 2) -> Outcome:
    """SIGKILL serving inside full-version swaps; the restarted server must serve the champion, whole, and
    remove the download folder the killed one left. Up to `extra` more trials run while fewer than
    `min_inside` kills landed inside a load (timing on a shared machine varies)."""
    rng = random.Random(seed)
    texts = fixed_texts()
    other = tiny_model(seed=3)  # a second encoder: a version mixing two bundles would answer like neither
    models = [model, other]
    heads = [model[1], other[1]]
    landed: dict[str, int] = {"before": 0, "inside": 0, "after": 0}
    survived = failed = 0
    restarts: list[float] = []
    problems: list[str] = []
    left_behind = 0  # download folders the killed servers left, removed by the restarted ones

    calibration = publish_version(serving, other, perturbed(heads[1], other, rng), texts)
    window = swap_window(serving, calibration)
    trial = 0
    while trial < trials or (landed["inside"] < min_inside and trial < trials + extra):
        which = trial % 2  # alternate encoders, the calibration version used the second one
        target = publish_version(serving, models[which], perturbed(heads[which], models[which], rng), texts)
        offset = log_offset(serving)
        sent = promote(serving, target)
        time.sleep(max(0.0, sent + rng.uniform(*window) - time.time()))
        os.killpg(serving.process.pgid, signal.SIGKILL)
        landed[where_the_kill_landed(log_since(serving, offset), target.version)] += 1
        restarted_at = log_offset(serving)
        restarts.append(kill_and_restart(serving))
        removed = REMOVED.search(log_since(serving, restarted_at))
        left_behind += int(removed[1]) if removed else 0

        answers = [predict_batch(serving, texts) for _ in range(3)]
        failed += sum(a is None for a in answers)
        champion = serving.registry.champion()
        ok = champion is not None and champion.version == target.version
        for batch in filter(None, answers):
            for i, answer in enumerate(batch):
                ok &= answer["model_version"] == str(target.version)
                ok &= answer_matches(answer, target.answers[i], target.head.classes)
        ok &= serving.current() == str(target.version)
        # The running server keeps the version it serves (one folder of its own); any other is a leftover.
        folders = list(serving.settings.state_dir.glob("download-*"))
        leftovers = [f for f in folders if not f.name.startswith(f"download-{serving.process.pid}-")]
        ok &= not leftovers and len(folders) - len(leftovers) <= 1
        survived += ok
        if not ok:
            problems.append(f"trial {trial}: v{target.version} expected, answers {answers[0] and answers[0][:1]}, "
                            f"download folders left: {[f.name for f in leftovers]}")
        trial += 1
    detail = (f"swap took {window[0]:.2f}-{window[1]:.2f} s after the notice; kills landed "
              f"{landed['before']} before, {landed['inside']} inside, {landed['after']} after the load; restart "
              f"to ready median {statistics.median(restarts):.1f} s; {left_behind} download folders the killed "
              "servers left were removed at restart")
    return Outcome("kill -9 serving during a full-version swap", trial, survived, 0, 0, failed,
                   detail + ("; " + "; ".join(problems) if problems else ""),
                   {"swap_window_s": window, "landed": landed, "restart_s": restarts, "problems": problems,
                    "download_folders_removed": left_behind})


# -- kill -9 during delta application -------------------------------------------------------------


@dataclass
class DeltaChain:
    """Deltas on one registry version and the head after each, as serving must hold it."""

    base: Published
    learner: FTRLProximal
    deltas: list[HeadDelta] = field(default_factory=list)
    answers: list[np.ndarray] = field(default_factory=list)  # index K: base + deltas 1..K

    def extend(self, model: TinyModel, features: Any, n: int, rng: random.Random) -> None:
        from models.serving_head import ServingHead

        head = ServingHead.from_model(self.base.head)
        for delta in self.deltas:
            head = head.apply(delta)
        if not self.answers:
            self.answers.append(head.predict_proba_many(features))
        for _ in range(n):
            self.learner.mark()
            self.learner.learn_many(*random_chunk(model, 20, rng))
            delta = self.learner.delta()
            head = head.apply(delta)
            self.deltas.append(delta)
            self.answers.append(head.predict_proba_many(features))

    def update(self, serving: Serving, sequence: int) -> Any:
        from services.common.events import ModelUpdate

        version = self.base.version
        return ModelUpdate(model=serving.settings.model_name, kind="delta", version=f"{version}+ftrl.{sequence}",
                           base_version=version, sequence=sequence,
                           delta=base64.b64encode(self.deltas[sequence - 1].to_bytes()).decode())


def sequence_of(version: str, base: int) -> int | None:
    """K for 'base+ftrl.K' (0 for 'base'); None for another base."""
    head, _, sequence = version.partition("+ftrl.")
    return (int(sequence or 0)) if head == str(base) else None


def kill_during_deltas(serving: Serving, model: TinyModel, trials: int, deltas_per_trial: int = 20,
                       spacing_s: float = 0.05, seed: int = 0) -> Outcome:
    """SIGKILL serving while it applies a stream of deltas; the restarted server must serve base + 1..K, whole."""
    from models.predict import Predictor
    from tests.conftest import head_copy

    rng = random.Random(seed)
    texts = fixed_texts()
    base = publish_version(serving, model, perturbed(model[1], model, rng), texts)
    promote(serving, base)
    if not wait_for(lambda: serving.current() == str(base.version), 60):
        raise RuntimeError(f"serving did not load v{base.version}:\n{serving.process.log_tail()}")
    chain = DeltaChain(base, head_copy(base.head))
    features = Predictor(base.folder).features(texts)
    survived = failed = lost = twice = inside = 0
    caught_up: list[float] = []
    problems: list[str] = []
    for trial in range(trials):
        first = len(chain.deltas) + 1
        chain.extend(model, features, deltas_per_trial, rng)
        offset = log_offset(serving)
        kill_at = rng.uniform(0.0, deltas_per_trial * spacing_s)
        killer = threading.Timer(kill_at, os.killpg, (serving.process.pgid, signal.SIGKILL))
        killer.start()
        for sequence in range(first, len(chain.deltas) + 1):
            serving.announce(chain.update(serving, sequence))
            time.sleep(spacing_s)
        killer.join()
        applied_before = [int(m[3]) for m in SERVING.finditer(log_since(serving, offset))
                          if m[3] and int(m[2]) == base.version]
        inside += bool(applied_before) and max(applied_before) < len(chain.deltas)
        kill_and_restart(serving)

        last, restarted, seen, ok = len(chain.deltas), time.monotonic(), -1, True
        while seen < last and time.monotonic() - restarted < CATCH_UP_TIMEOUT_S:
            answers = predict_batch(serving, texts)
            if answers is None:
                failed += 1
                time.sleep(0.5)
                continue
            for i, answer in enumerate(answers):
                k = sequence_of(answer["model_version"], base.version)
                good = k is not None and k <= last and answer_matches(answer, chain.answers[k][i], base.head.classes)
                if not good:
                    problems.append(f"trial {trial}: {answer['model_version']} answered unlike base + its deltas")
                ok &= good
                seen = max(seen, k or 0)
        caught_up.append(time.monotonic() - restarted)
        applied = int(serving.metric("loopline_model_updates", outcome="applied"))
        gaps = int(serving.metric("loopline_model_updates", outcome="gap"))
        lost += last - max(seen, 0)
        twice += max(0, applied - last)
        ok &= seen == last and applied == last and gaps == 0
        survived += ok
    detail = (f"{trials} x {deltas_per_trial} deltas {spacing_s * 1000:.0f} ms apart; {inside} kills landed "
              f"between two applied deltas of the stream; after a restart every delta was replayed in "
              f"{statistics.median(caught_up):.1f} s (median), the base version answering until then")
    return Outcome("kill -9 serving during delta application", trials, survived, lost, twice, failed,
                   detail + ("; " + "; ".join(problems[:3]) if problems else ""),
                   {"kills_inside_stream": inside, "catch_up_s": caught_up, "problems": problems})


# -- soak ----------------------------------------------------------------------------------------


@dataclass
class RssSeries:
    name: str
    seconds: list[float] = field(default_factory=list)
    mb: list[float] = field(default_factory=list)

    def median_between(self, start: float, end: float) -> float:
        return statistics.median(m for s, m in zip(self.seconds, self.mb, strict=True) if start <= s <= end)

    def growth(self, duration: float, window: float) -> dict[str, float]:
        """First vs last `window` seconds (medians), and growth over the second half alone."""
        first = self.median_between(0.0, window)
        last = self.median_between(duration - window, duration)
        half = self.median_between(duration / 2 - window / 2, duration / 2 + window / 2)
        return {"first_mb": first, "last_mb": last, "growth_mb": last - first,
                "growth_pct": 100 * (last - first) / first, "second_half_mb": last - half}


def soak(serving: Serving, feedback: Feedback, duration_s: float, *, rate: float = 20.0, sample_s: float = 2.0,
         growth_bound_mb: float = 30.0, plot: Path | None = None, seed: int = 0) -> Outcome:
    """Predictions plus feedback for `duration_s`: no error, every feedback event judged once (per event, by
    `reliability_feedback.ledger`), and RSS growth over the second half within bound.

    The bound is on the second half because the first minutes fill caches that are meant
    to fill (ONNX Runtime's arena, the feedback service's join store and held-back set
    up to their caps, the prediction log's buffers); a leak keeps growing after that.
    """
    import httpx
    from reliability_feedback import ledger

    from models.traffic import TrafficConfig, generate
    from services.common.events import FEEDBACK, FeedbackEvent

    users = list(serving.users["user_id"])
    events = generate(TrafficConfig(n_events=5_000, n_users=len(users), seed=seed, user_seed=4)).events
    rows = list(zip(events["text"], events["user_id"], events["true_label"], strict=True))
    series = [RssSeries("serving"), RssSeries("feedback")]
    processes = [serving.process, feedback.process]
    before = soak_counters(serving, feedback)
    judged_before = int(feedback.judged())
    failed = requests = 0
    sent: list[str] = []  # prediction ids of the feedback sent
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(max(0.0, sample_s - (time.monotonic() - started) % sample_s)):
            for rss, process in zip(series, processes, strict=True):
                rss.seconds.append(time.monotonic() - started)
                rss.mb.append(process.rss_bytes() / 1e6)

    sampler = threading.Thread(target=sample, name="rss", daemon=True)
    sampler.start()
    rng = random.Random(seed)
    with httpx.Client(base_url=serving.url, timeout=30) as http:
        while time.monotonic() - started < duration_s:
            batch = [rows[rng.randrange(len(rows))] for _ in range(8 if requests % 10 == 0 else 1)]
            requests += 1
            try:
                if len(batch) == 1:
                    response = http.post("/v1/predict", json={"text": batch[0][0], "user_id": batch[0][1]})
                    answers = [response.json()] if response.status_code == 200 else []
                else:
                    response = http.post("/v1/predict/batch",
                                         json={"items": [{"text": t, "user_id": u} for t, u, _ in batch]})
                    answers = response.json()["predictions"] if response.status_code == 200 else []
            except httpx.HTTPError:
                answers = []
            if not answers:
                failed += 1
            for (_, _, label), answer in zip(batch, answers, strict=False):
                event = FeedbackEvent(event_id=uuid.uuid4().hex, prediction_id=answer["prediction_id"], label=label)
                serving.producer.send(FEEDBACK, key=answer["prediction_id"].encode(),
                                      value=event.model_dump_json().encode())
                sent.append(answer["prediction_id"])
            time.sleep(max(0.0, requests / rate - (time.monotonic() - started)))
            if requests % 100 == 0:
                serving.producer.flush(10)
    stop.set()
    sampler.join()
    serving.producer.flush(10)
    consumed = wait_for(lambda: soak_counters(serving, feedback)["feedback_records"]
                        >= before["feedback_records"] + len(sent) and feedback.judged() >= judged_before + len(sent),
                        120, poll_s=0.5)
    after = soak_counters(serving, feedback)
    account = ledger(feedback.state, sent, judged_before, int(feedback.judged()))
    errors = {k: after[k] - before[k] for k in ("serving_5xx", "dead_letters", "log_dropped")}
    window = min(60.0, duration_s / 4)
    growth = {rss.name: rss.growth(duration_s, window) for rss in series}
    bounded = all(g["second_half_mb"] < growth_bound_mb for g in growth.values())
    if plot is not None:
        plot_rss(series, plot, duration_s, requests, rate)
    # Honest feedback per-user trust withheld (an unlucky run of corrections): not an error, but bounded.
    withheld = after["withheld"] - before["withheld"]
    lost, twice = account.lost, account.twice
    held = (bounded and consumed and failed == 0 and not any(errors.values()) and not lost and not twice
            and withheld <= TRUST_SPARES * len(sent))
    detail = "; ".join(f"{name} RSS {g['first_mb']:.0f} -> {g['last_mb']:.0f} MB ({g['growth_mb']:+.1f} MB, "
                       f"{g['growth_pct']:+.1f}%; second half {g['second_half_mb']:+.1f} MB, bound "
                       f"{growth_bound_mb:.0f})" for name, g in growth.items())
    detail = (f"{duration_s / 60:.1f} min, {requests} requests, {len(sent)} feedback events; {detail}; medians of "
              f"the first and last {window:.0f} s; errors {errors}; {withheld:.0f} withheld by per-user trust; "
              f"{account}" + ("" if consumed else "; feedback not all judged"))
    return Outcome(f"soak: predict + feedback for {duration_s / 60:.0f} min", 1, int(held), lost, twice,
                   failed + int(errors["serving_5xx"]), detail,
                   {"growth": growth, "errors": errors, "requests": requests, "feedback_sent": len(sent),
                    "withheld": withheld, "lost": lost, "applied_twice": twice,
                    "series": {rss.name: {"seconds": rss.seconds, "mb": rss.mb} for rss in series}})


def soak_counters(serving: Serving, feedback: Feedback) -> dict[str, float]:
    import httpx

    from services.common.events import WITHHELD_REASONS

    serving_text = httpx.get(f"{serving.url}/metrics", timeout=10).text
    feedback_text = httpx.get(f"{feedback.process.url}/metrics", timeout=10).text
    withheld = "|".join(WITHHELD_REASONS)
    return {
        "serving_5xx": metric_sum(serving_text, r'loopline_requests_total\{[^}]*status="5\d\d"'),
        "log_dropped": metric_sum(serving_text, r"loopline_prediction_log_dropped\{"),
        "dead_letters": metric_sum(feedback_text, rf'loopline_feedback_dead_letters_total\{{(?!reason="({withheld})")'),
        "withheld": metric_sum(feedback_text, rf'loopline_feedback_dead_letters_total\{{reason="({withheld})"'),
        "feedback_records": metric_sum(feedback_text, r'loopline_feedback_records_total\{topic="feedback"\}'),
    }


def metric_sum(text: str, pattern: str) -> float:
    """Sum of every Prometheus sample whose name and labels match `pattern`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line))


def plot_rss(series: Sequence[RssSeries], path: Path, duration_s: float, requests: int, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(9, 4.5))
    for rss in series:
        ax.plot([s / 60 for s in rss.seconds], rss.mb, label=f"{rss.name} (process group)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"loopline soak: {duration_s / 60:.1f} min, {requests} requests at {rate:g}/s, each answer "
                 "with feedback", fontsize=10)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- label-flip flood ----------------------------------------------------------------------------


def clean_accuracy(serving: Serving, texts: Sequence[str], truth: Sequence[str]) -> tuple[float, int]:
    """Serving's accuracy on clean traffic (answers over HTTP) and the failed requests."""
    right = failed = 0
    for start in range(0, len(texts), 100):
        answers = predict_batch(serving, texts[start:start + 100])
        if answers is None:
            failed += 1
            continue
        right += sum(a["intent"] == t for a, t in zip(answers, truth[start:start + 100], strict=True))
    return right / len(texts), failed


def published_heads_accuracy(serving: Serving, base: int, texts: Sequence[str], truth: Sequence[str]
                             ) -> list[float]:
    """Clean accuracy of every head serving could have held on `base`: base + deltas 1..K from `model-updates`."""
    import numpy as np

    from models.ftrl import HeadDelta
    from models.predict import Predictor
    from models.serving_head import ServingHead
    from services.common.events import ModelUpdate
    from services.feedback.history import published_deltas

    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor(serving.registry.download(base, Path(tmp)))
        features = predictor.features(list(texts))
    head = ServingHead.from_model(predictor.head)
    classes = np.array(head.classes)
    updates: list[ModelUpdate] = sorted(published_deltas(serving.settings.kafka_bootstrap_servers or "",
                                                         serving.settings.model_name, base),
                                        key=lambda u: u.sequence)
    accuracies = []
    for update in updates:
        head = head.apply(HeadDelta.from_bytes(base64.b64decode(update.delta or "")))
        accuracies.append(float((classes[head.predict_proba_many(features).argmax(axis=1)] == np.array(truth)).mean()))
    return accuracies


def label_flip_flood(serving: Serving, feedback: Feedback, *, events: int = 2_000, rate: float = 125.0,
                     strength: float = 0.4, onset: float = 0.3, seed: int = 4, bound: float = FLOOD_BOUND
                     ) -> Outcome:
    """`label_flip` traffic through serving and the feedback service (one trial): per-user trust must withhold
    most of the poisoned feedback and almost none of the rest, and every head that reached serving must stay
    within `bound` of the champion's clean accuracy."""
    import httpx
    import numpy as np

    from models.traffic import TrafficConfig, generate
    from services.common.events import FEEDBACK, FeedbackEvent

    users = len(serving.users)
    flood = generate(TrafficConfig(n_events=events, n_users=users, seed=seed, user_seed=4, scenario="label_flip",
                                   onset=onset, strength=strength)).events
    clean = generate(TrafficConfig(n_events=600, n_users=users, seed=seed + 1000, user_seed=4)).events
    clean_texts, clean_truth = list(clean["text"]), list(clean["true_label"])
    base = int(httpx.get(f"{feedback.process.url}/healthz", timeout=5).json()["version"].split("+")[0])
    champion, failed = clean_accuracy(serving, clean_texts, clean_truth)
    windows_before = flood_windows(feedback)
    chunk, started, onset_index = 20, time.monotonic(), int(onset * events)
    windows_at_onset: dict[str, float] | None = None
    # Users of their own (serving has no features for them): a verdict on them must not follow the stack's users
    # into the next scenario, which sends honest feedback as those.
    flood_users = [f"{user}-flood-{seed}" for user in flood["user_id"]]
    rows = list(zip(flood["text"], flood_users, flood["label"], strict=True))
    for start in range(0, events, chunk):
        if windows_at_onset is None and start >= onset_index:
            windows_at_onset = flood_windows(feedback)
        part = rows[start:start + chunk]
        response = httpx.post(f"{serving.url}/v1/predict/batch",
                              json={"items": [{"text": t, "user_id": u} for t, u, _ in part]}, timeout=30)
        if response.status_code != 200:
            failed += 1
            continue
        for i, ((_, _, label), answer) in enumerate(zip(part, response.json()["predictions"], strict=True)):
            event = FeedbackEvent(event_id=f"flood-{seed}-{start + i}", prediction_id=answer["prediction_id"],
                                  label=label)
            serving.producer.send(FEEDBACK, key=answer["prediction_id"].encode(),
                                  value=event.model_dump_json().encode())
        time.sleep(max(0.0, (start + chunk) / rate - (time.monotonic() - started)))
    serving.producer.flush(10)
    # Everything learned and judged: the windows of the last events close once the watermark passes them.
    settled = wait_for(lambda: flood_windows(feedback)["examples"] >= windows_before["examples"] + events, 120,
                       poll_s=0.5)
    live = httpx.get(f"{feedback.process.url}/healthz", timeout=5).json()["version"].removesuffix("+ftrl.0")
    in_serving = wait_for(lambda: serving.current() == live, 60)
    after, failed_after = clean_accuracy(serving, clean_texts, clean_truth)
    heads = published_heads_accuracy(serving, base, clean_texts, clean_truth)
    windows_after = flood_windows(feedback)
    at_onset = windows_at_onset or windows_before
    rejected = windows_after["rejected"] - at_onset["rejected"]
    published = windows_after["published"] - at_onset["published"]
    worst = min(heads, default=champion)
    worst_after_onset = min(heads[len(heads) - int(published):], default=champion)
    withheld = withheld_event_ids(serving, f"flood-{seed}-")
    poisoned = {f"flood-{seed}-{i}" for i in np.flatnonzero(flood["poisoned"].to_numpy())}
    poisoned_withheld, clean_withheld = len(withheld & poisoned), len(withheld - poisoned)
    trusted_well = (poisoned_withheld >= TRUST_CATCHES * len(poisoned)
                    and clean_withheld <= TRUST_SPARES * (events - len(poisoned)))
    held = settled and in_serving and after >= champion - bound and worst >= champion - bound and trusted_well
    detail = (f"{events} events, {strength:.0%} of users flip every label from {onset:.0%} on; trust withheld "
              f"{poisoned_withheld} of {len(poisoned)} poisoned and {clean_withheld} clean feedback events; after "
              f"the onset the gate rejected {rejected:.0f} windows and published {published:.0f}; clean accuracy "
              f"champion {champion:.3f}, serving after the flood ({live}) {after:.3f}, worst head serving held "
              f"{worst:.3f}, after the onset {worst_after_onset:.3f} (bound {bound}); {len(heads)} deltas on v{base}")
    return Outcome("label-flip flood (poisoned feedback) through serving + feedback", 1, int(held), 0, 0,
                   failed + failed_after, detail,
                   {"champion_accuracy": champion, "after_accuracy": after, "worst_head_accuracy": worst,
                    "worst_head_after_onset": worst_after_onset,
                    "rejected_after_onset": rejected, "published_after_onset": published, "served": live,
                    "poisoned": len(poisoned), "poisoned_withheld": poisoned_withheld,
                    "clean_withheld": clean_withheld})


def withheld_event_ids(serving: Serving, prefix: str) -> set[str]:
    """Event ids of the feedback per-user trust withheld (on feedback-dlq as `untrusted_user` or
    `repeated_correction`) whose id starts with `prefix`."""
    from reliability_feedback import letter_event_id, read_dead_letters

    from services.common.events import WITHHELD_REASONS

    ids = (letter_event_id(x) for x in read_dead_letters(serving.settings.kafka_bootstrap_servers or "")
           if x.reason in WITHHELD_REASONS)
    return {i for i in ids if i is not None and i.startswith(prefix)}


def flood_windows(feedback: Feedback) -> dict[str, float]:
    return {"rejected": feedback.metric("loopline_feedback_windows_total", 'decision="rejected"'),
            "published": feedback.metric("loopline_feedback_windows_total", 'decision="published"'),
            "examples": feedback.judged()}


# -- the bench run -------------------------------------------------------------------------------


@contextmanager
def loop(work: Path, model: TinyModel, with_feedback: bool = True) -> Iterator[tuple[Serving, Feedback | None]]:
    """A broker, an MLflow SQLite registry, `loopline serve` and (optionally) `loopline feedback`, all fresh."""
    from infra.broker import start_broker
    from infra.process import free_port
    from tests.integration.stack import feedback_service, start_serving

    with ExitStack() as stack:
        broker = start_broker(work / "broker", free_port())
        stack.callback(broker.stop)
        serving = stack.enter_context(start_serving(f"sqlite:///{work / 'mlflow.db'}", broker.url, model,
                                                    work / "serving", work / "bundles"))
        service = None
        if with_feedback:
            service = feedback_service(serving, work / "feedback")
            service.start()
            stack.callback(service.process.stop)
        yield serving, service


def merge(outcomes: Sequence[Outcome]) -> Outcome:
    """Trials of one scenario run on separate stacks, as one row."""
    first = outcomes[0]
    return Outcome(first.fault, sum(o.trials for o in outcomes), sum(o.survived for o in outcomes),
                   sum(o.events_lost for o in outcomes), sum(o.applied_twice for o in outcomes),
                   sum(o.requests_failed for o in outcomes), " | ".join(o.detail for o in outcomes),
                   {"trials": [o.measured for o in outcomes]})


SCENARIOS = ("faults", "soak", "flood")


def run(trials: int = 20, soak_s: float = 600.0, floods: int = 3, work: Path | None = None,
        only: Sequence[str] = SCENARIOS) -> list[Outcome]:
    """The serving scenarios (`only` some of them) on processes started here; the soak plot goes to
    bench/results/soak.png."""
    model = tiny_model()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="reliability-serving-") as tmp:
        root = work or Path(tmp)
        if "faults" in only:
            with loop(root / "faults", model, with_feedback=False) as (serving, _):
                outcomes += [kill_during_swap(serving, model, trials), kill_during_deltas(serving, model, trials)]
        if "soak" in only:
            with loop(root / "soak", model) as (serving, feedback):
                assert feedback is not None
                outcomes.append(soak(serving, feedback, soak_s, plot=RESULTS / "soak.png"))
        if "flood" in only and floods:
            flooded = []
            for trial in range(floods):
                with loop(root / f"flood-{trial}", model) as (serving, feedback):
                    assert feedback is not None
                    flooded.append(label_flip_flood(serving, feedback, seed=4 + trial))
            outcomes.append(merge(flooded))
    return outcomes


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="kills per fault scenario")
    parser.add_argument("--soak-min", type=float, default=10.0)
    parser.add_argument("--floods", type=int, default=3, help="label-flip floods, each on a fresh stack")
    parser.add_argument("--quick", action="store_true", help="3 trials, 1 min soak, 1 flood")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, help="JSON of the rows (default bench/results/reliability_serving"
                        "[-<only>].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.soak_min, args.floods = 3, 1.0, 1
    logging.basicConfig(level=logging.WARNING)
    outcomes = run(args.trials, args.soak_min * 60, args.floods, only=args.only)
    suffix = "" if sorted(args.only) == sorted(SCENARIOS) else "-" + "-".join(args.only)
    args.out = args.out or RESULTS / f"reliability_serving{suffix}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([o.as_json() for o in outcomes], indent=2))
    for o in outcomes:
        print(f"{o.fault} | {o.trials} | {o.survived} | {o.events_lost} | {o.applied_twice} | {o.requests_failed}"
              f"\n    {o.detail}")


if __name__ == "__main__":
    main()
