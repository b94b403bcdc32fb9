"""The prediction log: every prediction to the `predictions` topic without ever blocking a response.

Built on confluent-kafka (librdkafka) rather than kafka-python: its I/O runs in C
threads that do not hold the GIL, at about 7 µs of CPU per event against about
500 µs for kafka-python's pure-Python sender, which competes with request handling
for the GIL (measured on this repo's Tansu broker). librdkafka's own queue is the
bounded buffer: `produce()` never waits, it raises `BufferError` when full.
Idempotence stays off so a send timeout cannot wedge the producer; a send that
timed out while the broker was stalled may still land later (at-least-once),
which is fine because consumers dedup by `event_id`.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Message, Producer

log = logging.getLogger(__name__)

DROP_REASONS = ("buffer_full", "send_failed", "closed")
_CLOSED_ERRORS = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}
_LOG_EVERY = 10.0  # seconds between warnings per drop reason, so a dead broker does not flood the log


class PredictionLog:
    """A bounded, non-blocking queue of (key, value) events in front of a Kafka producer."""

    def __init__(self, bootstrap_servers: str | None, topic: str = "predictions", capacity: int = 10_000, *,
                 send_timeout: float = 10.0, probe_interval: float = 1.0, stale_after: float = 3.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.capacity = capacity
        self.send_timeout = send_timeout  # an event not acknowledged within this is dropped as send_failed
        self.probe_interval = probe_interval  # how often an idle log asks the broker for metadata
        self.stale_after = stale_after  # broker_ok turns False this long after the last success
        self.sent = 0
        self._buffered = 0  # queued or in flight; len(producer) would also count protocol requests
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._last_warned = dict.fromkeys(DROP_REASONS, 0.0)
        self._last_ok = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._running = False

    @property
    def enabled(self) -> bool:
        return self.bootstrap_servers is not None

    @property
    def dropped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    @property
    def buffered(self) -> int:
        """Events offered but not yet acknowledged or dropped (queued or in flight)."""
        return self._buffered

    @property
    def broker_ok(self) -> bool:
        return self.enabled and time.monotonic() - self._last_ok < self.stale_after

    def start(self) -> None:
        if not self.enabled or self._running:
            return
        self._producer = Producer({
            "bootstrap.servers": self.bootstrap_servers,
            "enable.idempotence": False,
            "acks": "all",
            "linger.ms": 5,  # small batches: latency of the log matters less than CPU per event
            "queue.buffering.max.messages": self.capacity,
            "message.timeout.ms": int(self.send_timeout * 1000),
            "request.timeout.ms": int(self.send_timeout * 1000),
            "retry.backoff.ms": 100, "retry.backoff.max.ms": 1000,
            "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 2000,
            # Same key -> same partition as kafka-python and Java clients, so `feedback` (published
            # with kafka-python) and `predictions` stay co-partitioned for local joins.
            "partitioner": "murmur2_random",
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            # librdkafka logs each failed reconnect at error level; a child logger lets a deployment mute it.
            "logger": logging.getLogger(f"{__name__}.rdkafka"),
        })
        self._stop.clear()
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="prediction-log", daemon=True)
        self._thread.start()
        log.info("prediction log to %s on %s, capacity %d", self.topic, self.bootstrap_servers, self.capacity)

    def offer(self, key: str, value: bytes) -> bool:
        """Queue one event without waiting; False if it was not queued (disabled, full, closed)."""
        if not self.enabled:
            return False  # logging switched off is configuration, not a loss
        # Under the lock so close() cannot slip between the check and produce() and strand the event.
        with self._lock:
            if self._producer is None or not self._running:
                reason, detail = "closed", ""
            else:
                try:
                    self._producer.produce(self.topic, value=value, key=key.encode())
                    self._buffered += 1
                    return True
                except BufferError:
                    reason, detail = "buffer_full", ""
                except KafkaException as exc:  # e.g. a message over the broker's size limit
                    reason, detail = "send_failed", str(exc)
        self._drop(reason, detail)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within `timeout`; whatever is left is dropped as `closed`."""
        producer = self._producer
        if producer is None or not self._running:
            return
        with self._lock:
            self._running = False  # later offers count as closed
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        left = producer.flush(timeout)
        if left:
            # Purging fires each remaining delivery callback with a _PURGE_* error, counted as closed.
            producer.purge()
            stranded = producer.flush(1.0)
            if stranded:  # no callback came for these; count them rather than lose them silently
                with self._lock:
                    self._dropped["closed"] += stranded
                    self._buffered -= stranded
        log.info("prediction log closed: %d sent, dropped %s", self.sent, self.dropped)

    def _serve(self) -> None:
        """Serve delivery reports, and probe the broker when no delivery proved it alive lately."""
        assert self._producer is not None
        next_probe, was_ok = 0.0, False
        while not self._stop.is_set():
            self._producer.poll(0.1)
            if self.broker_ok != was_ok:
                was_ok = not was_ok
                log.log(logging.INFO if was_ok else logging.WARNING, "prediction log: broker %s %s",
                        self.bootstrap_servers, "reachable" if was_ok else "not answering")
            now = time.monotonic()
            if now >= next_probe and now - self._last_ok >= self.probe_interval:
                next_probe = now + self.probe_interval
                try:
                    self._producer.list_topics(self.topic, timeout=self.probe_interval)
                    self._last_ok = time.monotonic()
                except KafkaException as exc:
                    log.debug("broker probe failed: %s", exc)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            self._buffered -= 1
            if err is None:
                self.sent += 1
        if err is None:
            self._last_ok = time.monotonic()
        elif err.code() in _CLOSED_ERRORS:
            self._drop("closed")
        else:
            self._drop("send_failed", err.str())

    def _on_error(self, err: KafkaError) -> None:
        # Connection errors repeat with every reconnect; broker_ok and its transitions say it once.
        log.log(logging.ERROR if err.fatal() else logging.DEBUG, "prediction log producer: %s", err.str())
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._last_ok = float("-inf")

    def _drop(self, reason: str, detail: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            self._dropped[reason] += 1
            warn = now - self._last_warned[reason] >= _LOG_EVERY
            if warn:
                self._last_warned[reason] = now
        if warn:  # first drop of a burst, then at most every _LOG_EVERY seconds
            log.warning("prediction log dropping events (%s%s); dropped so far %s",
                        reason, f": {detail}" if detail else "", self.dropped)

