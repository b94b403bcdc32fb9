"""Registry work off the learning loop: one worker thread registers the online head and reads the champion.

Registering a version (bundle link, MLflow run, model version, tags, alias) takes seconds
on a busy machine, and minutes while the MLflow server is down or hangs. So the loop hands
the worker an immutable `HeadSnapshot`, taken at the window boundary where the registration
fell due, and goes on consuming, learning and publishing deltas. The worker registers it,
retrying a failed attempt with capped exponential backoff until the registry answers, and
reports every attempt (`Attempt`). Champion checks go the same way (`ChampionSeen`), with
what following a moved champion needs (its head, whether its inputs match, the deltas
already published on it) fetched here too. The loop applies what comes back on its next pass.

MLflow calls are bounded (`services.common.registry.bound_registry_requests`) so that
one against a dead or stopped server fails in seconds; the worker's retries take over.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.ftrl import FTRLProximal, HeadDelta
from services.common.events import ModelUpdate
from services.common.registry import Version
from services.feedback.guard import Rollback
from services.feedback.history import published_deltas
from services.feedback.join import Joined
from services.feedback.learner import LearnSettings, OnlineLearner, Progress
from services.feedback.observer import Reference, load_reference
from services.feedback.versions import HEAD_TAG, Registered, VersionKeeper

log = logging.getLogger(__name__)
CARRY_LIMIT = 64  # carried deltas kept apart; beyond, they are merged into one (a long registry outage)


@dataclass(frozen=True)
class HeadSnapshot:
    """The live head at a window boundary, with everything registering it needs."""

    base_version: int
    sequence: int
    head: bytes  # FTRL state; at a boundary the model is the live head
    holdout: tuple[Joined, ...]  # what the comparison with the base version is judged on
    progress: dict[str, Any]  # Progress.to_json()
    offsets: Mapping[str, int]
    trigger: str

    @property
    def key(self) -> str:
        return f"{self.base_version}+ftrl.{self.sequence}"

    @classmethod
    def of(cls, learner: OnlineLearner, offsets: Mapping[str, int], trigger: str) -> HeadSnapshot:
        return cls(learner.base_version, learner.sequence, learner.model.to_bytes(), tuple(learner.holdout),
                   learner.progress.to_json(), dict(offsets), trigger)

    def learner(self, settings: LearnSettings) -> OnlineLearner:
        learner = OnlineLearner(FTRLProximal.from_bytes(self.head), self.base_version, settings, self.sequence)
        learner.holdout.extend(self.holdout)
        learner.progress = Progress.from_json(self.progress)
        return learner


@dataclass(frozen=True)
class Carried:
    """A delta published on the old base after the snapshot; on promotion it is published again, numbered on
    the new version, so serving gets from the registered head to the live one."""

    window_end: float | None
    delta: HeadDelta


def merged(deltas: list[HeadDelta]) -> HeadDelta:
    """One delta with the effect of applying `deltas` in order (each sets the weights of its rows)."""
    rows = np.unique(np.concatenate([d.rows for d in deltas])).astype(np.int64)
    weights = np.zeros((len(rows), len(deltas[-1].classes)))
    for delta in deltas:
        weights[np.searchsorted(rows, delta.rows)] = delta.sparse_weights
    dense = next((d.dense_weights for d in reversed(deltas) if d.dense_weights is not None), None)
    return HeadDelta(deltas[-1].classes, rows, weights, dense)


@dataclass
class Registering:
    """The registration the worker holds, as the loop tracks it."""

    snapshot: HeadSnapshot
    carried: list[Carried] = field(default_factory=list)
    waiters: list[Any] = field(default_factory=list)  # Futures of `loopline promote` calls
    holdout_bytes: bytes | None = None  # the snapshot's held-back set as checkpoints store it
    since: float = field(default_factory=time.monotonic)

    def carry(self, window_end: float | None, delta: HeadDelta) -> None:
        """Keep a delta published after the snapshot. Past `CARRY_LIMIT` they are merged, at counts that
        depend only on what was published, so a replay carries the same deltas."""
        self.carried.append(Carried(window_end, delta))
        if len(self.carried) > CARRY_LIMIT:
            self.carried = [Carried(window_end, merged([c.delta for c in self.carried]))]


@dataclass(frozen=True)
class Attempt:
    """One try at registering `snapshot`: `registered` on success, else the error and when the next try is."""

    snapshot: HeadSnapshot
    number: int
    registered: Registered | None
    published: tuple[ModelUpdate, ...] = ()  # deltas already on the new version, when promoted
    error: str | None = None
    retry_in_s: float | None = None


@dataclass(frozen=True)
class ChampionSeen:
    """The registry's champion as seen when asked while learning on `asked_base`; for a moved champion,
    what learning on from it needs (unless it is a registration of this service's own)."""

    asked_base: int
    champion: Version | None
    error: str | None = None
    head: FTRLProximal | None = None
    same_inputs: bool = True
    reference: Reference | None = None
    published: tuple[ModelUpdate, ...] = ()


@dataclass(frozen=True)
class _Check:
    base_version: int


@dataclass(frozen=True)
class _Abandon:
    key: str


@dataclass(frozen=True)
class _RollBack:
    rollback: Rollback


class Registrar:
    """The worker thread; `results` holds what it reports, in the order it happened."""

    def __init__(self, keeper: VersionKeeper, learn_settings: LearnSettings, servers: str | None,
                 retry_first_s: float = 1.0, retry_max_s: float = 60.0, drift: bool = True) -> None:
        self.keeper = keeper
        self.learn_settings = learn_settings
        self.servers = servers
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.drift = drift
        self.results: queue.Queue[Attempt | ChampionSeen] = queue.Queue()
        self._jobs: queue.Queue[HeadSnapshot | _Check | _Abandon | _RollBack | None] = queue.Queue()
        self._own_keys: set[str] = set()  # registrations in hand: as champion, the loop goes on from the snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="registrar", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to end; an MLflow call in flight is not waited for longer than `timeout`."""
        self._stop.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def register(self, snapshot: HeadSnapshot) -> None:
        self._own_keys.add(snapshot.key)
        self._jobs.put(snapshot)

    def check_champion(self, base_version: int) -> None:
        self._jobs.put(_Check(base_version))

    def roll_back(self, rollback: Rollback) -> None:
        """Move `champion` back as the guard decided, then report the champion as a check would."""
        self._jobs.put(_RollBack(rollback))

    def abandon(self, snapshot: HeadSnapshot) -> None:
        """Stop trying to register `snapshot` (a try in flight still reports)."""
        self._jobs.put(_Abandon(snapshot.key))

    def _run(self) -> None:
        pending: HeadSnapshot | None = None
        number, retry_at = 0, 0.0
        while not self._stop.is_set():
            wait = min(max(retry_at - time.monotonic(), 0.0), 1.0) if pending is not None else 1.0
            try:
                job = self._jobs.get(timeout=wait)
            except queue.Empty:
                job = None
            if isinstance(job, HeadSnapshot):
                pending, number, retry_at = job, 0, 0.0
            elif isinstance(job, _Check):
                self.results.put(self.champion_seen(job.base_version))
            elif isinstance(job, _RollBack):
                self.results.put(self.rolled_back(job.rollback))
            elif isinstance(job, _Abandon) and pending is not None and pending.key == job.key:
                self._own_keys.discard(pending.key)
                pending = None
            if pending is not None and time.monotonic() >= retry_at and not self._stop.is_set():
                number += 1
                attempt = self.attempt(pending, number)
                if attempt.registered is not None:
                    # Before the loop sees the result: it may hand over the same key again at once.
                    self._own_keys.discard(pending.key)  # from now on a champion like any other
                    pending = None
                else:
                    retry_at = time.monotonic() + (attempt.retry_in_s or 0.0)
                self.results.put(attempt)

    def attempt(self, snapshot: HeadSnapshot, number: int) -> Attempt:
        """Register `snapshot` once (a replay finds the version an earlier try made, by its key)."""
        try:
            registered = self.keeper.register(snapshot.learner(self.learn_settings), dict(snapshot.offsets),
                                              snapshot.trigger)
            # Only a version found again (a replay) can have deltas on it already; a new one has none, and the
            # loop should go on from it at once: serving may load it any moment.
            published = self._published(registered.version) if registered.promoted and registered.reused else ()
        except Exception as exc:  # the registry being down costs a retry, never the registration
            retry_in = min(self.retry_first_s * 2 ** (number - 1), self.retry_max_s)
            log.warning("registering %s failed (attempt %d), retrying in %.0f s: %s", snapshot.key, number,
                        retry_in, _short(exc))
            return Attempt(snapshot, number, None, error=_short(exc), retry_in_s=retry_in)
        return Attempt(snapshot, number, registered, published)

    def rolled_back(self, rollback: Rollback) -> ChampionSeen:
        try:
            self.keeper.roll_back(rollback.version, rollback.to, rollback.reason)
            log.warning("%s", rollback.reason)
        except Exception as exc:  # the next promotion is guarded again; this one stays
            log.error("guard: rolling v%d back to v%d failed: %s", rollback.version, rollback.to, _short(exc))
        return self.champion_seen(rollback.version)

    def champion_seen(self, base_version: int) -> ChampionSeen:
        try:
            champion = self.keeper.champion()
        except Exception as exc:
            return ChampionSeen(base_version, None, error=_short(exc))
        if champion is None or champion.version == base_version:
            return ChampionSeen(base_version, champion)
        # Reading model-updates ends only after 2 s without a record: it runs while the bundle is fetched.
        history = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        try:
            deltas = history.submit(self._published, champion.version)
            if champion.tags.get(HEAD_TAG) in self._own_keys:
                return ChampionSeen(base_version, champion, published=deltas.result())
            bundles = self.keeper.bundles
            same_inputs = bundles.inputs(champion.version) == bundles.inputs(base_version)
            reference = None
            if self.drift and not same_inputs:
                reference = load_reference(bundles.get(champion.version))
            head = bundles.head(champion.version)
            return ChampionSeen(base_version, champion, head=head, same_inputs=same_inputs, reference=reference,
                                published=deltas.result())
        except Exception as exc:
            return ChampionSeen(base_version, champion, error=f"champion v{champion.version} not loaded: "
                                f"{_short(exc)}")
        finally:
            history.shutdown(wait=False)

    def _published(self, version: int) -> tuple[ModelUpdate, ...]:
        if not self.servers:
            return ()
        return tuple(published_deltas(self.servers, self.keeper.registry.name, version))


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."
