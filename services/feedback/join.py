"""Joining feedback to the prediction it belongs to, in event time, so that replays learn the same way.

Both sides wait: a prediction until its feedback comes or `prediction_ttl_s` passes
(most predictions never get any), a feedback until its prediction comes or
`feedback_wait_s` passes, after which it is dead-lettered as `unmatched`.

Time here is event time (the Kafka record timestamps), never the wall clock, and
joined examples are released only when the watermark (how far every input
partition has got, minus the allowed lateness; see `Watermark`) has passed them, in
the order of their key (the later of the two timestamps, then the feedback's
event id). Which examples are learned, in which order and in which update window is
then a function of the topics' contents, not of how fetches interleaved: a service
restarted from a checkpoint replays exactly what it would have done. That holds for
records that arrive within the allowed lateness; a later one is still learned,
exactly once, in the next window (and counted as `late`).
"""

from __future__ import annotations

import bisect
import heapq
import io
import json
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StoredPrediction:
    """What learning needs from a prediction event."""

    prediction_id: str
    ts: float
    model_version: str
    user_id: str | None
    text: str
    intent: str
    confidence: float
    indices: np.ndarray  # int64 hashed feature indices
    values: np.ndarray  # float32
    embedding: np.ndarray | None  # float32
    user: dict[str, str] | None = None  # the user features the model was given


@dataclass(frozen=True)
class StoredFeedback:
    """A feedback event and where it came from (kept whole for the dead-letter topic)."""

    event_id: str
    prediction_id: str
    label: str
    ts: float
    partition: int
    offset: int
    key: str | None
    value: bytes


@dataclass(frozen=True)
class Joined:
    prediction: StoredPrediction
    feedback: StoredFeedback

    @property
    def key(self) -> tuple[float, str]:
        return max(self.prediction.ts, self.feedback.ts), self.feedback.event_id


@dataclass(frozen=True)
class Rejected:
    feedback: StoredFeedback
    reason: str  # a services.common.events.DeadLetterReason
    detail: str


@dataclass
class JoinSettings:
    prediction_ttl_s: float = 3600.0
    feedback_wait_s: float = 60.0
    dedup_ttl_s: float = 86_400.0
    max_predictions: int = 100_000
    # At thousands of events per second the dedup TTL alone would keep hundreds of millions of ids.
    # Forgetting the oldest keeps memory and checkpoints bounded; it cannot make an example count twice
    # (a joined prediction is gone from the store, so a repeat of its feedback ends up unmatched), but a
    # repeat older than this many events is dead-lettered as unmatched instead of duplicate.
    max_remembered_ids: int = 1_000_000


class JoinStore:
    """Pending predictions and feedback; joined examples wait for the watermark."""

    def __init__(self, settings: JoinSettings | None = None) -> None:
        self.settings = settings or JoinSettings()
        self.predictions: dict[str, StoredPrediction] = {}  # insertion order ~ time order
        self.waiting: dict[str, StoredFeedback] = {}  # feedback by prediction id, prediction not seen yet
        # (ts, prediction id, event id) of waiting feedback, earliest first. Arrival order is no time order
        # to stop at: one feedback stamped ahead would hold back the expiry of everything after it.
        # Entries of feedback that joined since stay until due, and are skipped then.
        self._waiting_due: list[tuple[float, str, str]] = []
        self.labeled: dict[str, float] = {}  # prediction ids already joined -> ts
        self.seen: dict[str, float] = {}  # feedback event ids -> ts, for duplicates
        self.ready: list[Joined] = []  # joined, not yet released
        self._first_ready: float | None = None  # smallest key time in `ready`, kept so ticks need no scan
        self.released_until = float("-inf")  # the watermark of the last release
        self.counts: Counter[str] = Counter()

    # -- input ---------------------------------------------------------------------------------

    def add_prediction(self, prediction: StoredPrediction) -> None:
        """Index a prediction; completes a feedback that was waiting for it. Re-logged ones are ignored."""
        pid = prediction.prediction_id
        if pid in self.predictions or pid in self.labeled:
            self.counts["duplicate_prediction"] += 1  # the prediction log is at-least-once
            return
        feedback = self.waiting.pop(pid, None)
        if feedback is not None:
            self._join(prediction, feedback)
            return
        self.predictions[pid] = prediction
        if len(self.predictions) > self.settings.max_predictions:
            del self.predictions[next(iter(self.predictions))]  # the oldest: bounded memory under load
            self.counts["evicted_prediction"] += 1

    def add_feedback(self, feedback: StoredFeedback) -> Rejected | None:
        """Join or park a feedback event; returns why it cannot be used, if it cannot."""
        if feedback.event_id in self.seen:
            return self._reject(feedback, "duplicate", f"event_id {feedback.event_id} was already received")
        self.seen[feedback.event_id] = feedback.ts
        _forget_oldest(self.seen, self.settings.max_remembered_ids, self.counts, "forgotten_event_id")
        pid = feedback.prediction_id
        if pid in self.labeled or pid in self.waiting:
            return self._reject(feedback, "already_labeled", f"prediction {pid} already has feedback")
        prediction = self.predictions.pop(pid, None)
        if prediction is None:
            self._wait(feedback)
            return None
        self._join(prediction, feedback)
        return None

    # -- time ----------------------------------------------------------------------------------

    def expire(self, watermark: float) -> list[Rejected]:
        """Drop what waited too long; feedback that never met its prediction is returned as unmatched."""
        rejected = [self._reject(f, "unmatched", f"no prediction {f.prediction_id} within "
                                                 f"{self.settings.feedback_wait_s:g} s of event time")
                    for f in self._pop_waiting(watermark - self.settings.feedback_wait_s)]
        self.counts["expired_prediction"] += len(
            _pop_expired(self.predictions, watermark - self.settings.prediction_ttl_s, lambda p: p.ts))
        _pop_expired(self.labeled, watermark - self.settings.prediction_ttl_s, lambda ts: ts)
        _pop_expired(self.seen, watermark - self.settings.dedup_ttl_s, lambda ts: ts)
        return rejected

    def first_key_time(self) -> float | None:
        """Key time of the earliest joined example not yet released."""
        return self._first_ready

    def release(self, until: float) -> list[Joined]:
        """Joined examples with key time before `until`, in key order; later joins before it are late."""
        self.ready.sort(key=lambda j: j.key)
        cut = bisect.bisect_left(self.ready, until, key=lambda j: j.key[0])
        released, self.ready = self.ready[:cut], self.ready[cut:]
        self._first_ready = self.ready[0].key[0] if self.ready else None
        self.released_until = max(self.released_until, until)
        return released

    def advance(self, watermark: float) -> tuple[list[Joined], list[Rejected]]:
        """`expire` and `release` up to `watermark`."""
        rejected = self.expire(watermark)
        return self.release(watermark), rejected

    # -- internals -----------------------------------------------------------------------------

    def _wait(self, feedback: StoredFeedback) -> None:
        self.waiting[feedback.prediction_id] = feedback
        heapq.heappush(self._waiting_due, (feedback.ts, feedback.prediction_id, feedback.event_id))

    def _pop_waiting(self, before: float) -> list[StoredFeedback]:
        """Waiting feedback stamped before `before`, earliest first, out of the store."""
        expired = []
        while self._waiting_due and self._waiting_due[0][0] < before:
            _, pid, event_id = heapq.heappop(self._waiting_due)
            feedback = self.waiting.get(pid)
            if feedback is not None and feedback.event_id == event_id:
                expired.append(self.waiting.pop(pid))
        return expired

    def _join(self, prediction: StoredPrediction, feedback: StoredFeedback) -> None:
        joined = Joined(prediction, feedback)
        self.labeled[prediction.prediction_id] = joined.key[0]
        _forget_oldest(self.labeled, self.settings.max_remembered_ids, self.counts, "forgotten_labeled")
        if joined.key[0] < self.released_until:
            # Later than the allowed lateness: its window is gone. Learn it in the next one.
            self.counts["late"] += 1
            joined = Joined(prediction, _retimed(feedback, self.released_until))
        self.ready.append(joined)
        key_time = joined.key[0]
        if self._first_ready is None or key_time < self._first_ready:
            self._first_ready = key_time
        self.counts["joined"] += 1

    def _reject(self, feedback: StoredFeedback, reason: str, detail: str) -> Rejected:
        self.counts[reason] += 1
        return Rejected(feedback, reason, detail)

    # -- checkpoint ----------------------------------------------------------------------------

    def frozen(self) -> JoinStore:
        """A copy to serialize on another thread while this one changes: the containers are copied, not their
        items (predictions and feedback are never changed in place)."""
        copy = JoinStore(self.settings)
        copy.predictions, copy.waiting, copy.ready = dict(self.predictions), dict(self.waiting), list(self.ready)
        copy.labeled, copy.seen = dict(self.labeled), dict(self.seen)
        copy.released_until, copy.counts = self.released_until, Counter(self.counts)
        return copy

    def to_bytes(self) -> bytes:
        """The whole store as one npz (no pickle): predictions columnar, feedback and ids as JSON."""
        preds = list(self.predictions.values()) + [j.prediction for j in self.ready]
        arrays: dict[str, Any] = _predictions_to_arrays(preds)
        meta = {
            "n_pending": len(self.predictions),
            "waiting": [_feedback_to_json(f) for f in self.waiting.values()],
            "ready_feedback": [_feedback_to_json(j.feedback) for j in self.ready],
            "released_until": self.released_until, "counts": dict(self.counts),
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        # The id -> time maps grow with the traffic (hundreds of thousands of ids): columns, not JSON.
        for name in ("labeled", "seen"):
            ids: dict[str, float] = getattr(self, name)
            arrays[f"{name}_ids"], arrays[f"{name}_chars"] = _pack(list(ids))
            arrays[f"{name}_ts"] = np.fromiter(ids.values(), dtype=np.float64, count=len(ids))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, settings: JoinSettings | None = None) -> JoinStore:
        store = cls(settings)
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            meta = json.loads(f["meta"].tobytes())
            preds = _predictions_from_arrays(f)
            for name in ("labeled", "seen"):
                if name in meta:  # checkpoints written before the columns
                    setattr(store, name, meta[name])
                else:
                    ids = _unpack(f, f"{name}_ids", f"{name}_chars", f"{name}_offsets")
                    setattr(store, name, dict(zip(ids, f[f"{name}_ts"].tolist(), strict=True)))
        n = meta["n_pending"]
        store.predictions = {p.prediction_id: p for p in preds[:n]}
        for f in meta["waiting"]:
            store._wait(_feedback_from_json(f))
        store.ready = [Joined(p, _feedback_from_json(f)) for p, f in zip(preds[n:], meta["ready_feedback"],
                                                                           strict=True)]
        store._first_ready = min((j.key[0] for j in store.ready), default=None)
        store.released_until = float(meta["released_until"])
        store.counts = Counter(meta["counts"])
        return store


def joined_to_bytes(examples: list[Joined]) -> bytes:
    """Joined examples (e.g. the learner's held-back set) as one npz, no pickle."""
    arrays: dict[str, Any] = _predictions_to_arrays([j.prediction for j in examples])
    feedback = [_feedback_to_json(j.feedback) for j in examples]
    arrays["feedback"] = np.frombuffer(json.dumps(feedback).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def joined_from_bytes(data: bytes) -> list[Joined]:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        feedback = json.loads(f["feedback"].tobytes())
        predictions = _predictions_from_arrays(f)
    return [Joined(p, _feedback_from_json(d)) for p, d in zip(predictions, feedback, strict=True)]


def _pop_expired(items: dict[str, Any], before: float, ts: Any) -> list[Any]:
    """Remove entries older than `before` from the front (insertion order is close to time order; an entry
    stamped ahead keeps later ones a while, which costs memory here, not a dead letter's timing)."""
    expired = []
    while items:
        first = next(iter(items))
        if ts(items[first]) >= before:
            break
        expired.append(items.pop(first))
    return expired


def _forget_oldest(ids: dict[str, float], limit: int, counts: Counter[str], what: str) -> None:
    if len(ids) > limit:
        del ids[next(iter(ids))]
        counts[what] += 1


def _retimed(feedback: StoredFeedback, ts: float) -> StoredFeedback:
    return StoredFeedback(feedback.event_id, feedback.prediction_id, feedback.label, ts, feedback.partition,
                          feedback.offset, feedback.key, feedback.value)


def _feedback_to_json(f: StoredFeedback) -> dict[str, Any]:
    return {"event_id": f.event_id, "prediction_id": f.prediction_id, "label": f.label, "ts": f.ts,
            "partition": f.partition, "offset": f.offset, "key": f.key, "value": f.value.hex()}


def _feedback_from_json(d: dict[str, Any]) -> StoredFeedback:
    return StoredFeedback(d["event_id"], d["prediction_id"], d["label"], float(d["ts"]), int(d["partition"]),
                          int(d["offset"]), d["key"], bytes.fromhex(d["value"]))


STRING_FIELDS = ("prediction_id", "model_version", "user_id", "text", "intent")


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The strings end to end in UTF-8, plus where each starts and ends in characters: one join and one encode,
    not one per string (a checkpoint at thousands of events per second holds a million ids)."""
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)), out=offsets[1:])
    return np.frombuffer("".join(strings).encode(), dtype=np.uint8), offsets


def _unpack(f: Any, data: str, chars: str, byte_offsets: str) -> list[str]:
    """What `_pack` wrote under `data` and `chars` (character offsets); checkpoints written before those hold
    byte offsets under `byte_offsets` instead."""
    raw = f[data].tobytes()
    if chars in f:
        text, bounds = raw.decode(), f[chars].tolist()  # Python ints: indexing numpy scalars is slow
        return [text[start:end] for start, end in pairwise(bounds)]
    return [raw[start:end].decode() for start, end in pairwise(f[byte_offsets].tolist())]


def _predictions_to_arrays(preds: list[StoredPrediction]) -> dict[str, np.ndarray]:
    dims = {len(p.embedding) for p in preds if p.embedding is not None}
    dim = dims.pop() if len(dims) == 1 else 0
    strings = {}
    for name in STRING_FIELDS:
        strings[f"s_{name}"], strings[f"c_{name}"] = _pack([getattr(p, name) or "" for p in preds])
    strings["s_user"], strings["c_user"] = _pack(["" if p.user is None else json.dumps(p.user) for p in preds])
    return {
        **strings,
        "has_user": np.array([p.user_id is not None for p in preds], dtype=bool),
        "ts": np.array([p.ts for p in preds], dtype=np.float64),
        "confidence": np.array([p.confidence for p in preds], dtype=np.float64),
        "offsets": np.cumsum([0] + [len(p.indices) for p in preds]).astype(np.int64),
        "indices": np.concatenate([p.indices for p in preds]).astype(np.int64) if preds else np.zeros(0, np.int64),
        "values": np.concatenate([p.values for p in preds]).astype(np.float32) if preds else np.zeros(0, np.float32),
        "has_embedding": np.array([p.embedding is not None for p in preds], dtype=bool),
        "embeddings": np.stack([p.embedding if p.embedding is not None else np.zeros(dim, np.float32)
                                for p in preds]).astype(np.float32) if preds and dim else np.zeros((len(preds), 0),
                                                                                                   np.float32),
    }


def _predictions_from_arrays(f: Any) -> list[StoredPrediction]:
    # Every `f[name]` reads (and checks) the whole array again: each is read once, before the loop.
    indices, values, embeddings = f["indices"], f["values"], f["embeddings"]
    offsets, has_embedding, has_user = f["offsets"].tolist(), f["has_embedding"].tolist(), f["has_user"].tolist()
    ts, confidence = f["ts"].tolist(), f["confidence"].tolist()
    strings = {name: _unpack(f, f"s_{name}", f"c_{name}", f"o_{name}") for name in STRING_FIELDS}
    users = _unpack(f, "s_user", "c_user", "o_user")
    out = []
    for i in range(len(ts)):
        out.append(StoredPrediction(
            prediction_id=strings["prediction_id"][i], ts=float(ts[i]),
            model_version=strings["model_version"][i],
            user_id=strings["user_id"][i] if has_user[i] else None,
            text=strings["text"][i], intent=strings["intent"][i], confidence=float(confidence[i]),
            indices=indices[offsets[i]:offsets[i + 1]].copy(), values=values[offsets[i]:offsets[i + 1]].copy(),
            embedding=embeddings[i].copy() if has_embedding[i] else None,
            user=json.loads(users[i]) if users[i] else None))
    return out


class Watermark:
    """How far event time has got on every input partition, minus the allowed lateness.

    The smallest, over the partitions, of the largest record timestamp seen, so nothing
    released can still be overtaken by a record on a slower partition (within the
    lateness). A partition that has had no record for `idle_s` of wall time stops
    holding the others back: its contribution becomes the wall clock minus `idle_s`,
    so when the traffic stops everything is released `idle_s + lateness_s` later.
    That clock starts when the partition is assigned, never earlier: a restarted service
    has not asked for the records after its checkpoint before then, and silence before
    the first fetch says nothing about them.
    """

    def __init__(self, lateness_s: float = 0.25, idle_s: float = 2.0) -> None:
        self.lateness_s, self.idle_s = lateness_s, idle_s
        self.max_ts: dict[tuple[str, int], float] = {}
        self._last_seen: dict[tuple[str, int], float] = {}

    def track(self, partitions: list[tuple[str, int]], now: float) -> None:
        """The partitions this consumer reads now (after an assignment); others are forgotten."""
        self.max_ts = {p: self.max_ts.get(p, float("-inf")) for p in partitions}
        self._last_seen = {p: self._last_seen.get(p, now) for p in partitions}

    def restore(self, max_ts: dict[tuple[str, int], float]) -> None:
        """Event time reached before a restart. No partition can go idle before `track` assigns it:
        until then its records after the checkpoint are unread, however long start-up takes."""
        self.max_ts = dict(max_ts)
        self._last_seen = {}

    def observe(self, partition: tuple[str, int], ts: float, now: float) -> None:
        self.max_ts[partition] = max(self.max_ts.get(partition, float("-inf")), ts)
        self._last_seen[partition] = now

    def quiet(self, partition: tuple[str, int], now: float) -> bool:
        """Whether an assigned partition has had no record for `idle_s`."""
        seen = self._last_seen.get(partition)
        return seen is not None and now - seen >= self.idle_s

    def value(self, now: float) -> float:
        if not self.max_ts:
            return float("-inf")
        heads = [max(ts, now - self.idle_s) if self.quiet(p, now) else ts for p, ts in self.max_ts.items()]
        return min(heads) - self.lateness_s
