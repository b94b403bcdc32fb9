"""Hostile events against the real feedback service and broker.

A corpus of malformed feedback and prediction events, interleaved with good traffic
from `loopline serve`, goes onto the topics as any producer could put it there. Each
bad event must land in `feedback-dlq` exactly once, with the reason its kind calls for
(`services.feedback.intake` and `join` decide them), the service must keep running,
its dead-letter counters must match the topic, and the good traffic must still be
joined and learned.

Time in the service is the Kafka record timestamp, never the `time` field of an event
(`services.feedback.join`): a record older than the released windows is late and is
learned once in the next window; a `time` field far in the future is ignored. Records
stamped far in the future must not hold anything else back: the last two tests say so.
One stamped further ahead of the service's clock than LOOPLINE_MAX_CLOCK_SKEW_S goes to
the DLQ as far_future before it counts as event time; one stamped ahead within that
bound waits for its prediction as long as any other, without holding back the rest.

The tests share the suite's feedback service and run in file order.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from infra.broker import DEFAULT_PARTITIONS
from models.traffic import GENERATED_INTENTS as INTENTS
from models.traffic import TrafficConfig, generate
from services.common.events import FEEDBACK, FEEDBACK_DLQ, PREDICTIONS, DeadLetter, FeedbackEvent
from services.feedback.settings import FeedbackSettings
from tests.integration.helpers import read_events, wait_until
from tests.integration.stack import Feedback, Serving

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FAR_FUTURE_S = 10 * 365 * 86_400.0  # ten years ahead
AHEAD_S = FeedbackSettings.model_fields["max_clock_skew_s"].default / 2  # ahead, but within the bound
LATE_S = 600.0  # a record this much older than the released windows is late


@dataclass(frozen=True)
class Sent:
    """One record this test produced, where it went, and what should become of it."""

    kind: str
    topic: str
    partition: int
    offset: int
    reason: str | None  # the expected dead-letter reason; None: usable, no dead letter

    @property
    def where(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset


def produce(producer: KafkaProducer, topic: str, key: str | None, value: bytes, *, kind: str,
            reason: str | None, ts: float | None = None, partition: int | None = None) -> Sent:
    """Send one record and wait for the broker's acknowledgement."""
    meta = producer.send(topic, key=None if key is None else key.encode(), value=value, partition=partition,
                         timestamp_ms=None if ts is None else int(ts * 1000)).get(timeout=10)
    return Sent(kind, topic, meta.partition, meta.offset, reason)


def dead_letter_counts(feedback: Feedback) -> Counter[str]:
    text = httpx.get(f"{feedback.process.url}/metrics", timeout=5).text
    return Counter({m[1]: int(float(m[2])) for m in re.finditer(
        r'^loopline_feedback_dead_letters_total\{reason="([^"]+)"\} (\S+)$', text, re.MULTILINE)})


def read_dead_letters(broker: str, timeout: float = 30.0) -> list[DeadLetter]:
    """Every record on feedback-dlq, from the first to the end offset at the time of the call."""
    partitions = [TopicPartition(FEEDBACK_DLQ, p) for p in range(DEFAULT_PARTITIONS[FEEDBACK_DLQ])]
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False)
    letters: list[DeadLetter] = []
    try:
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, "feedback-dlq could not be read to its end"
            for records in consumer.poll(timeout_ms=500).values():
                letters.extend(DeadLetter.model_validate_json(r.value) for r in records)
    finally:
        consumer.close()
    return letters


def counters_match_topic(feedback: Feedback, broker: str) -> tuple[Counter[str], Counter[str]]:
    """The service's dead-letter counters and the DLQ's letters by reason, once they agree (or not)."""
    counted: Counter[str] = Counter()
    on_topic: Counter[str] = Counter()

    def agree() -> bool:
        nonlocal counted, on_topic
        counted = dead_letter_counts(feedback)
        on_topic = Counter(letter.reason for letter in read_dead_letters(broker))
        return counted == on_topic

    wait_until(agree, 30)
    return counted, on_topic


def consumed(feedback: Feedback, topic: str) -> float:
    return feedback.metric("loopline_feedback_records_total", f'topic="{topic}"')


def wait_consumed(feedback: Feedback, before: dict[str, float], sent: list[Sent], served: int = 0,
                  timeout: float = 30) -> None:
    """Until the service has read every record in `sent` and `served` predictions logged by serving
    (counted per topic from `before`)."""
    want = Counter(s.topic for s in sent) + Counter({PREDICTIONS: served})
    assert wait_until(lambda: all(consumed(feedback, t) >= before[t] + n for t, n in want.items()), timeout), \
        feedback.process.log_tail()


def assert_healthy(feedback: Feedback) -> None:
    assert feedback.process.running(), feedback.process.log_tail()
    assert httpx.get(f"{feedback.process.url}/healthz", timeout=5).status_code == 200
    log = feedback.process.log_path.read_text(errors="replace")
    assert "Traceback" not in log, feedback.process.log_tail(80)


def logged_prediction(serving: Serving, prediction_id: str) -> dict[str, Any]:
    """The prediction event serving logged for `prediction_id`."""
    found = read_events(serving.settings.kafka_bootstrap_servers or "", {prediction_id})
    assert prediction_id in found, "serving did not log the prediction"
    return found[prediction_id][1]


def as_bytes(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()  # NaN and Infinity as the JavaScript literals JSON parsers may accept


def feedback_json(prediction_id: str, label: str, **fields: Any) -> dict[str, Any]:
    return {"schema_version": 1, "event_id": uuid.uuid4().hex, "time": time.time(),
            "prediction_id": prediction_id, "label": label, "source": "correction", **fields}


@dataclass(frozen=True)
class Bad:
    """A record that cannot be used, and the reason the service must give."""

    kind: str
    topic: str
    key: str | None
    value: bytes
    reason: str


def bad_feedback(good: list[tuple[str, FeedbackEvent]]) -> list[Bad]:
    """Feedback events that cannot be used; `good` is labeled traffic already sent."""
    pid, label = good[0][0], good[0][1].label
    rng = random.Random(7)
    other = next(i for i in INTENTS if i != good[4][1].label)
    events = [
        ("truncated JSON", pid, as_bytes(feedback_json(pid, label))[:40], "invalid_json"),
        ("binary garbage", "garbage", b"\x00" + bytes(rng.randrange(256) for _ in range(300)), "invalid_json"),
        ("non-UTF-8 bytes", pid, as_bytes(feedback_json(pid, "LABEL")).replace(b"LABEL", b"caf\xe9"),
         "invalid_json"),
        ("empty value", pid, b"", "invalid_json"),
        ("JSON that is not an object", pid, b"[1, 2, 3]", "wrong_schema"),
        ("prediction_id is a number", pid, as_bytes(feedback_json(pid, label) | {"prediction_id": 42}),
         "wrong_schema"),
        ("label is a list", pid, as_bytes(feedback_json(pid, label) | {"label": [label]}), "wrong_schema"),
        ("no event_id", pid, as_bytes({k: v for k, v in feedback_json(pid, label).items() if k != "event_id"}),
         "wrong_schema"),
        ("a field the schema does not have", pid, as_bytes(feedback_json(pid, label, weight=1000)),
         "wrong_schema"),
        ("huge payload (100 kB)", pid, as_bytes(feedback_json(pid, label, source="x" * 100_000)), "too_large"),
        ("unknown label", pid, as_bytes(feedback_json(pid, "order_pizza")), "unknown_label"),
        ("no such prediction", "never-served", as_bytes(feedback_json("never-served-" + uuid.uuid4().hex, label)),
         "unmatched"),
        # Same key as the original, so the same partition: read after it.
        ("the same event twice", good[3][0], good[3][1].model_dump_json().encode(), "duplicate"),
        ("a second label for a labeled prediction", good[4][0], as_bytes(feedback_json(good[4][0], other)),
         "already_labeled"),
    ]
    return [Bad(kind, FEEDBACK, key, value, reason) for kind, key, value, reason in events]


def bad_predictions(template: dict[str, Any], dim: int) -> list[Bad]:
    """Prediction events that cannot be used, made from `template` (one serving logged)."""

    def variant(**changes: Any) -> tuple[str, dict[str, Any]]:
        pid = "bad-" + uuid.uuid4().hex
        event = json.loads(json.dumps(template)) | {"prediction_id": pid, "event_id": uuid.uuid4().hex}
        features = changes.pop("features", {})
        event["features"] |= features
        return pid, event | changes

    def packed(values: np.ndarray, dtype: str = "<f4") -> str:
        return base64.b64encode(values.astype(dtype).tobytes()).decode()

    rng = random.Random(11)
    n = len(base64.b64decode(template["features"]["indices"])) // 4
    out: list[tuple[str, str | None, bytes, str]] = []
    pid, event = variant()
    out.append(("prediction: truncated JSON", pid, as_bytes(event)[: len(as_bytes(event)) // 2], "invalid_json"))
    out.append(("prediction: binary garbage", "garbage", b"\x00" + bytes(rng.randrange(256) for _ in range(500)),
                "invalid_json"))
    cases: list[tuple[str, dict[str, Any]]] = [
        ("prediction: schema 1 (features as number lists)",
         {"schema_version": 1, "features": {"indices": list(range(n)), "values": [1.0] * n}}),
        ("prediction: indices that are not base64", {"features": {"indices": "i1 i2 i3"}}),
        ("prediction: NaN feature values", {"features": {"values": packed(np.full(n, np.nan))}}),
        ("prediction: infinite feature values", {"features": {"values": packed(np.full(n, np.inf))}}),
        ("prediction: values of 6 bytes", {"features": {"values": base64.b64encode(bytes(6)).decode()}}),
        ("prediction: indices and values differ in length", {"features": {"values": packed(np.ones(1))}}),
        ("prediction: a feature index out of range", {"features": {"indices": packed(np.full(n, 2**30), "<i4")}}),
        ("prediction: a negative feature index", {"features": {"indices": packed(np.full(n, -1), "<i4")}}),
        ("prediction: embedding that is not base64", {"features": {"embedding": "not*base64!"}}),
        ("prediction: embedding of the wrong length", {"features": {"embedding": packed(np.ones(dim + 3))}}),
        ("prediction: NaN in the embedding", {"features": {"embedding": packed(np.full(dim, np.nan))}}),
        ("prediction: probabilities are text", {"probabilities": "high"}),
    ]
    for kind, changes in cases:
        pid, event = variant(**changes)
        out.append((kind, pid, as_bytes(event), "wrong_schema"))
    pid, event = variant()
    del event["prediction_id"]
    out.append(("prediction: no prediction_id", pid, as_bytes(event), "wrong_schema"))
    return [Bad(kind, PREDICTIONS, key, value, reason) for kind, key, value, reason in out]


def serve_and_label(serving: Serving, n: int, seed: int, *, send: Callable[[str, FeedbackEvent], None] | None = None,
                    ) -> list[tuple[str, FeedbackEvent]]:
    """Predict `n` generated requests over HTTP; returns (prediction id, the feedback meant) for each. With
    `send`, each feedback is sent right after its prediction, as an application would."""
    rows = generate(TrafficConfig(n_events=n, n_users=30, seed=seed)).events
    out = []
    for row in rows.itertuples():
        pid = serving.predict(str(row.text), str(row.user_id))["prediction_id"]
        event = FeedbackEvent(prediction_id=pid, label=str(row.true_label), source="correction")
        out.append((pid, event))
        if send is not None:
            send(pid, event)
    return out


def test_each_malformed_event_is_dead_lettered_once_with_its_reason_and_good_traffic_is_learned(
        serving: Serving, feedback: Feedback) -> None:
    producer, broker = serving.producer, serving.settings.kafka_bootstrap_servers or ""
    before = {t: consumed(feedback, t) for t in (PREDICTIONS, FEEDBACK)}
    learned_before = feedback.judged()
    good_sent: list[Sent] = []

    def send_good(pid: str, event: FeedbackEvent) -> None:
        good_sent.append(produce(producer, FEEDBACK, pid, event.model_dump_json().encode(), kind="good", reason=None))

    good = serve_and_label(serving, 30, seed=101, send=send_good)
    # The `time` field is not event time: one far in the future is learned like any other.
    body_time = FeedbackEvent(prediction_id=serving.predict("wake me up at 7")["prediction_id"], label="set_alarm",
                              time=time.time() + FAR_FUTURE_S)
    send_good(body_time.prediction_id, body_time)
    spare = serve_and_label(serving, 2, seed=102)  # predictions that get no feedback
    template = logged_prediction(serving, good[0][0])
    dim = len(base64.b64decode(template["features"]["embedding"])) // 4

    corpus = bad_feedback(good) + bad_predictions(template, dim)
    more = serve_and_label(serving, len(corpus), seed=103)
    served = len(good) + 1 + len(spare) + len(more)
    bad: list[Sent] = []
    for item, (pid, event) in zip(corpus, more, strict=True):  # interleaved with good traffic
        bad.append(produce(producer, item.topic, item.key, item.value, kind=item.kind, reason=item.reason))
        send_good(pid, event)
    wait_consumed(feedback, before, good_sent + bad, served)

    # A replayed event id on another prediction (so maybe another partition): sent once the original was read.
    replay = FeedbackEvent(event_id=good[5][1].event_id, prediction_id=spare[0][0], label=good[5][1].label)
    bad.append(produce(producer, FEEDBACK, spare[0][0], replay.model_dump_json().encode(),
                       kind="a replayed event id on another prediction", reason="duplicate"))

    # Out of order: a prediction and its feedback stamped LATE_S before the windows already learned; the
    # feedback goes once the prediction was read, or it could wait for it and expire.
    late_pid = "late-" + uuid.uuid4().hex
    old = time.time() - LATE_S
    late = [produce(producer, PREDICTIONS, late_pid, as_bytes(template | {"prediction_id": late_pid,
                                                                          "event_id": uuid.uuid4().hex}),
                    kind="late prediction", reason=None, ts=old)]
    wait_consumed(feedback, before, good_sent + bad + late, served)
    late.append(produce(producer, FEEDBACK, late_pid, as_bytes(feedback_json(late_pid, template["intent"])),
                        kind="late feedback", reason=None, ts=old))

    want_learned = learned_before + len(good_sent) + 1  # every good feedback (one with a far-future `time`), late
    assert wait_until(lambda: feedback.judged() >= want_learned, 60), \
        (feedback.judged(), want_learned, feedback.process.log_tail())
    mine = {s.where for s in bad + good_sent + late}

    def my_letters() -> list[DeadLetter]:
        return [d for d in read_dead_letters(broker) if (d.topic, d.partition, d.offset) in mine]

    assert wait_until(lambda: len(my_letters()) >= len(bad), 60), (len(my_letters()), len(bad))
    # Once the counters (every letter the service made) agree with the topic, nothing is in flight.
    counted, on_topic = counters_match_topic(feedback, broker)
    assert counted == on_topic, f"counters {dict(counted)} != feedback-dlq {dict(on_topic)}"
    letters = Counter((d.topic, d.partition, d.offset, d.reason) for d in my_letters())
    for sent in bad:
        assert letters[(*sent.where, sent.reason)] == 1, (sent, [k for k in letters if k[:3] == sent.where])
    assert sum(letters.values()) == len(bad), "good events were dead-lettered, or bad ones twice"
    assert feedback.judged() == want_learned, "an event was learned twice, or a bad one learned"
    assert_healthy(feedback)


def test_an_oversized_prediction_event_is_dead_lettered_as_too_large(serving: Serving, feedback: Feedback) -> None:
    producer, broker = serving.producer, serving.settings.kafka_bootstrap_servers or ""
    before = {t: consumed(feedback, t) for t in (PREDICTIONS, FEEDBACK)}
    template = logged_prediction(serving, serving.predict("turn the volume down")["prediction_id"])
    pid = "huge-" + uuid.uuid4().hex
    huge = produce(producer, PREDICTIONS, pid, as_bytes(template | {"prediction_id": pid, "text": "x" * 200_000}),
                   kind="prediction of 200 kB", reason="too_large")
    wait_consumed(feedback, before, [huge], served=1)
    assert wait_until(lambda: any((d.topic, d.partition, d.offset, d.reason) == (*huge.where, "too_large")
                                  for d in read_dead_letters(broker)), 5)
    assert_healthy(feedback)


def test_a_feedback_stamped_ahead_does_not_hold_back_the_expiry_of_other_feedback(
        serving: Serving, feedback: Feedback) -> None:
    """Feedback for a prediction never seen waits `feedback_wait_s` of event time, then goes to the DLQ as
    unmatched. One stamped ahead (within the clock skew the service takes) waits until then; the ones after
    it must still expire on time."""
    producer, broker = serving.producer, serving.settings.kafka_bootstrap_servers or ""
    before = {t: consumed(feedback, t) for t in (PREDICTIONS, FEEDBACK)}
    future_pid = "future-" + uuid.uuid4().hex
    ahead = produce(producer, FEEDBACK, future_pid, as_bytes(feedback_json(future_pid, "set_alarm")),
                    kind=f"feedback stamped {AHEAD_S:g} s ahead", reason="unmatched", ts=time.time() + AHEAD_S)
    wait_consumed(feedback, before, [ahead])
    ordinary_pid = "missing-" + uuid.uuid4().hex
    ordinary = produce(producer, FEEDBACK, ordinary_pid, as_bytes(feedback_json(ordinary_pid, "set_alarm")),
                       kind="feedback for a prediction never made", reason="unmatched")
    learned_before = feedback.judged()
    good = serve_and_label(serving, 10, seed=104, send=lambda pid, e: producer.send(
        FEEDBACK, key=pid.encode(), value=e.model_dump_json().encode()).get(10))
    assert wait_until(lambda: feedback.judged() >= learned_before + len(good), 60), feedback.process.log_tail()

    def expired() -> bool:
        return any((d.topic, d.partition, d.offset) == ordinary.where and d.reason == "unmatched"
                   for d in read_dead_letters(broker))

    # Due LOOPLINE_FEEDBACK_WAIT_S (5 s here) + LOOPLINE_IDLE_S after it was sent.
    assert wait_until(expired, 10), "feedback after one stamped ahead did not expire on time as unmatched"
    assert not any((d.topic, d.partition, d.offset) == ahead.where for d in read_dead_letters(broker)), \
        "the one stamped ahead waits its full time"
    assert_healthy(feedback)


def test_far_future_records_on_every_partition_do_not_stop_learning(serving: Serving, feedback: Feedback) -> None:
    """Garbage and a well-formed feedback stamped years ahead on every partition of both topics: they go to
    the DLQ as far_future before they count as event time, and what users send afterwards (predictions
    first, feedback a moment later) is still learned."""
    producer, broker = serving.producer, serving.settings.kafka_bootstrap_servers or ""
    before = {t: consumed(feedback, t) for t in (PREDICTIONS, FEEDBACK)}
    ahead = time.time() + FAR_FUTURE_S
    poison = [produce(producer, topic, None, b"\x00 not an event", kind="garbage stamped ten years ahead",
                      reason="far_future", ts=ahead, partition=p)
              for topic in (PREDICTIONS, FEEDBACK) for p in range(DEFAULT_PARTITIONS[topic])]
    pid = "ahead-" + uuid.uuid4().hex
    poison.append(produce(producer, FEEDBACK, pid, as_bytes(feedback_json(pid, "set_alarm")), ts=ahead,
                          kind="feedback stamped ten years ahead", reason="far_future"))
    wait_consumed(feedback, before, poison)
    learned_before = feedback.judged()
    good = serve_and_label(serving, 20, seed=105)
    wait_consumed(feedback, before, poison, served=len(good))
    for pid, event in good:
        producer.send(FEEDBACK, key=pid.encode(), value=event.model_dump_json().encode())
    producer.flush(10)

    where = {s.where for s in poison}

    def letters() -> list[str]:
        return sorted(d.reason for d in read_dead_letters(broker) if (d.topic, d.partition, d.offset) in where)

    assert wait_until(lambda: letters() == ["far_future"] * len(poison), 30), letters()
    assert wait_until(lambda: feedback.judged() >= learned_before + len(good), 10), \
        f"learned {feedback.judged() - learned_before} of {len(good)}; letters {dict(dead_letter_counts(feedback))}"
    assert_healthy(feedback)
