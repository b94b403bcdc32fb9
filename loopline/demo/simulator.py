"""The traffic replay: predict requests over HTTP at a steady rate, feedback over Kafka after a delay.

Requests go to serving's `POST /v1/predict` from a few keep-alive clients, in the
order of the generated stream and paced at `plan.rate` per second (when serving
answers slower, the replay runs behind rather than bursting). For requests whose
user gives feedback, a `FeedbackEvent` (the intent the user reported) is produced
to the `feedback` topic once its delay has passed, keyed by prediction id with
serving's partitioner (murmur2_random), as applications do (`loopline feedback send`).
Every answer is recorded: when, by which model version, and whether it was the
intent the user meant.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pandas as pd

from loopline.demo.plan import DemoPlan
from services.common.events import FEEDBACK, FeedbackEvent

log = logging.getLogger(__name__)

RETRIES = 5  # per request, for 503 (queue full) and refused connections
MAX_FAILED_SHARE = 0.02  # more failed requests than this ends the replay


@dataclass(frozen=True)
class Answer:
    index: int  # position in the generated stream
    sent: float  # unix seconds
    done: float
    version: str  # model_version serving answered with
    correct: bool  # the intent the user meant
    after_onset: bool
    fallback: bool = False  # serving said it was unsure (answer "not understood")


@dataclass
class SentFeedback:
    index: int
    event_id: str
    ts: float  # the record's timestamp (unix seconds): event time for the feedback service
    acked: bool = False


class ReplayFailed(RuntimeError):
    """Serving or the broker stopped taking the replay's traffic."""


class Simulator:
    """Replays `requests` against serving and the broker, in threads; read its fields while it runs."""

    def __init__(self, plan: DemoPlan, requests: pd.DataFrame, serving_url: str, bootstrap: str) -> None:
        self.plan = plan
        self.texts = requests["text"].tolist()
        self.users = requests["user_id"].tolist()
        self.meant = requests["true_label"].tolist()
        self.reported = requests["label"].tolist()
        self.after = requests["after_onset"].tolist()
        self.answered, self.delays = plan.feedback.plan(self.users, plan.seed)
        self.serving_url, self.bootstrap = serving_url, bootstrap
        self.answers: list[Answer] = []
        self.feedback: list[SentFeedback] = []
        self.failed = 0
        self.failure: str | None = None
        self.started = 0.0
        self.recent: deque[bool] = deque(maxlen=plan.rolling)  # correct, by completion
        self._done_times: deque[float] = deque(maxlen=2_000)
        self._next = 0
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, str]] = []  # (due, index, prediction id)
        self._due_lock = threading.Condition()
        self._stop = threading.Event()
        self._requests_over = threading.Event()
        self._workers = [threading.Thread(target=self._request_loop, name=f"replay-{i}", daemon=True)
                         for i in range(plan.workers)]
        self._sender = threading.Thread(target=self._feedback_loop, name="replay-feedback", daemon=True)

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.started = time.time()
        for worker in self._workers:
            worker.start()
        self._sender.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every request is answered and every feedback produced and acknowledged."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in self._workers):
            return False
        self._requests_over.set()
        with self._due_lock:
            self._due_lock.notify_all()
        self._sender.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self._sender.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._requests_over.set()
        with self._due_lock:
            self._due_lock.notify_all()

    @property
    def sent(self) -> int:
        return len(self.answers) + self.failed

    def rate(self, seconds: float = 5.0) -> float:
        """Answers per second over the last `seconds`."""
        now = time.time()
        recent = [t for t in list(self._done_times) if t >= now - seconds]
        return len(recent) / seconds

    def accuracy(self) -> float | None:
        """Served accuracy over the last `plan.rolling` answers."""
        recent = list(self.recent)
        return float(np.mean(recent)) if recent else None

    # -- requests ----------------------------------------------------------------------------------

    def _request_loop(self) -> None:
        with httpx.Client(base_url=self.serving_url, timeout=30.0) as http:
            while not self._stop.is_set():
                with self._lock:
                    index = self._next
                    self._next += 1
                if index >= len(self.texts):
                    return
                wait = self.started + index / self.plan.rate - time.time()
                if wait > 0 and self._stop.wait(wait):
                    return
                self._request(http, index)

    def _request(self, http: httpx.Client, index: int) -> None:
        sent = time.time()
        body = {"text": self.texts[index], "user_id": self.users[index]}
        problem = ""
        for attempt in range(RETRIES):
            try:
                response = http.post("/v1/predict", json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    self._answered(index, sent, response.json())
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code != 503:
                    break
            if self._stop.wait(0.2 * 2**attempt):
                return
        log.warning("request %d failed: %s", index, problem)
        with self._lock:
            self.failed += 1
            if self.failed > max(20, MAX_FAILED_SHARE * len(self.texts)):
                self.failure = f"{self.failed} predict requests failed, the last with {problem}"
                self.stop()

    def _answered(self, index: int, sent: float, answer: dict[str, Any]) -> None:
        done = time.time()
        correct = answer["intent"] == self.meant[index]
        with self._lock:
            self.answers.append(Answer(index, sent, done, answer["model_version"], correct, self.after[index],
                                       bool(answer.get("fallback", False))))
            self.recent.append(correct)
            self._done_times.append(done)
        if self.answered[index]:
            with self._due_lock:
                heapq.heappush(self._due, (done + float(self.delays[index]), index, answer["prediction_id"]))
                self._due_lock.notify()

    # -- feedback ----------------------------------------------------------------------------------

    def _feedback_loop(self) -> None:
        from confluent_kafka import KafkaError, Message, Producer

        def delivered(err: KafkaError | None, msg: Message) -> None:
            key = msg.key()
            if key is None:
                return
            sent = pending.pop(key, None)
            if sent is None:
                return
            if err is None:
                sent.acked = True
            else:
                self.failure = f"the broker did not take a feedback event: {err.str()}"
                self.stop()

        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", "linger.ms": 20,
                             "message.timeout.ms": 30_000,
                             "partitioner": "murmur2_random",  # as serving's prediction log: same partition
                             "allow.auto.create.topics": False, "log_level": 2})
        pending: dict[bytes, SentFeedback] = {}
        while True:
            with self._due_lock:
                now = time.time()
                if not self._due and self._requests_over.is_set():
                    break
                if self._stop.is_set():
                    break
                if not self._due or self._due[0][0] > now:
                    timeout = 0.05 if not self._due else min(0.05, self._due[0][0] - now)
                    self._due_lock.wait(timeout)
                    producer.poll(0)
                    continue
                _, index, prediction_id = heapq.heappop(self._due)
            event = FeedbackEvent(prediction_id=prediction_id, label=self.reported[index], source="demo",
                                  event_id=uuid.uuid4().hex)
            sent = SentFeedback(index, event.event_id, int(time.time() * 1000) / 1000)  # the record's ms
            pending[prediction_id.encode()] = sent
            self.feedback.append(sent)
            try:
                producer.produce(FEEDBACK, key=prediction_id.encode(), value=event.model_dump_json().encode(),
                                 timestamp=int(sent.ts * 1000), on_delivery=delivered)
            except BufferError:
                producer.poll(0.5)  # librdkafka's queue is full: the broker is behind; retried below
                producer.produce(FEEDBACK, key=prediction_id.encode(), value=event.model_dump_json().encode(),
                                 timestamp=int(sent.ts * 1000), on_delivery=delivered)
            producer.poll(0)
        left = producer.flush(30)
        if left and self.failure is None:
            self.failure = f"{left} feedback events were not acknowledged by the broker within 30 s"
