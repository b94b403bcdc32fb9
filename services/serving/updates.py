"""Following `model-updates`: head deltas in order, full versions from the registry's `champion`.

Every replica reads the whole topic on its own (no consumer group: each one needs
every update) from the beginning, so a replica that starts late replays the deltas
made on top of the version it loaded. One thread does everything in topic order: a
full-version notice, like the periodic check of the alias, loads the champion in
this thread when the alias has moved, so deltas made on the new version wait in the
topic until it is in, and a load never races a delta.

A retrain on collected feedback is loaded and held behind the online head until its
first delta (the feedback service's catch-up) or `ServingSettings.catch_up_wait_s`;
this thread serves it then.

The alias, not the notice, decides which full version serves: `loopline models
rollback` moves it back and announces the older version, and an old notice replayed
from the topic moves nothing because the alias did not change.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from pydantic import ValidationError

from services.common.events import MODEL_UPDATES, ModelUpdate
from services.serving.model_store import LoadError, ModelStore

log = logging.getLogger(__name__)

REPLAY_WAIT_S = 30.0  # a broker that cannot be read at start does not keep a replica unready longer than this
OUTCOMES = ("applied", "stale", "other_version", "gap", "other_model", "invalid", "refused", "loaded",
            "registry_unreachable", "held", "caught_up", "hold_expired")


class UpdateFollower:
    """Applies what `model-updates` says to a ModelStore, in a background thread."""

    def __init__(self, store: ModelStore, model_name: str, bootstrap_servers: str | None, *,
                 champion: Callable[[], int | None] | None, load: Callable[[int], Any],
                 alias_check_s: float = 30.0, topic: str = MODEL_UPDATES,
                 swapped: Callable[[], None] | None = None) -> None:
        self.store = store
        self.model_name = model_name
        self.bootstrap_servers = bootstrap_servers
        self.champion = champion  # reads the alias; None when serving a bundle folder (no registry)
        self.load = load
        self.alias_check_s = alias_check_s
        self.topic = topic
        self.swapped = swapped  # called after a held version starts serving (its old downloads can go)
        self.outcomes: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        self.last_champion: int | None = None
        self._refused: int | None = None  # a champion that failed to load is not fetched again by itself
        self.replayed = threading.Event()  # every update on the topic at start has been handled
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def caught_up(self) -> bool:
        """Whether the served model is the one the topic says (so far as one can wait for it): a replica that
        answered before its replay ended would answer with the plain champion, not the live head."""
        return self.replayed.is_set() or time.monotonic() - self._started > REPLAY_WAIT_S

    def start(self, serving_champion: int | None) -> None:
        """Start following; `serving_champion` is the alias value the served model was loaded from."""
        self.last_champion = serving_champion
        self._started = time.monotonic()
        if self.bootstrap_servers is None:
            self.replayed.set()  # nothing to replay
        if self.bootstrap_servers is None and (self.champion is None or self.alias_check_s <= 0):
            return
        self._thread = threading.Thread(target=self._run, name="model-updates", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def handle(self, value: bytes) -> str:
        """Act on one `model-updates` event; returns what happened (one of OUTCOMES)."""
        try:
            update = ModelUpdate.model_validate_json(value)
        except ValidationError as exc:
            log.warning("model-updates: unreadable event skipped: %s", exc.errors()[0]["msg"])
            return self._count("invalid")
        if update.model != self.model_name:
            return self._count("other_model")
        if update.kind == "full":
            return self._count(self.check_alias(notice=update.base_version))
        try:
            outcome = self.store.apply(update)
        except (LoadError, ValueError) as exc:
            log.error("model-updates: %s", exc)
            return self._count("refused")
        if outcome == "caught_up":
            log.info("model-updates: %s arrived: the held v%d serves now", update.version, update.base_version)
            self._swapped()
        if outcome == "gap":
            current = self.store.current
            log.error("model-updates: %s arrived but %s is serving; waiting for the next full version",
                      update.version, current.version if current else "nothing")
        return self._count(outcome)

    def check_alias(self, notice: int | None = None) -> str:
        """Load the registry's champion if the alias moved since the served model was loaded.

        `notice` is set for a `full` event on the topic: it retries a champion refused before
        (someone may have fixed and announced it); the periodic check does not.
        """
        if self.champion is None:
            return "other_version"
        try:
            champion = self.champion()
        except Exception as exc:  # the registry being down must not stop deltas from flowing
            log.warning("registry unreachable, keeping %s: %s", self.last_champion, exc)
            return "registry_unreachable"
        if champion is None or champion == self.last_champion or (champion == self._refused and notice is None):
            return "stale"
        log.info("champion is v%d now (was v%s): loading it", champion, self.last_champion)
        try:
            self.load(champion)
            held = self.store.held
        except LoadError as exc:
            log.error("champion v%d not loaded, the previous model keeps serving: %s", champion, exc)
            self._refused = champion
            return "refused"
        except Exception as exc:  # a registry that went away mid-download: try again later
            log.warning("champion v%d not fetched, keeping %s: %s", champion, self.last_champion, exc)
            return "registry_unreachable"
        self.last_champion, self._refused = champion, None
        return "held" if held is not None and held.snapshot.base_version == champion else "loaded"

    def release_expired_hold(self) -> None:
        """Serve a held version whose wait for its first delta ran out."""
        if self.store.held is not None and self.store.release_expired() is not None:
            self._count("hold_expired")
            self._swapped()

    def _swapped(self) -> None:
        if self.swapped is not None:
            self.swapped()

    def _count(self, outcome: str) -> str:
        self.outcomes[outcome] += 1
        return outcome

    def _run(self) -> None:
        consumer = self._consumer()
        next_check = 0.0
        try:
            while not self._stop.is_set():
                self.release_expired_hold()
                if self.champion is not None and self.alias_check_s > 0 and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.alias_check_s
                    outcome = self.check_alias()
                    if outcome != "stale":  # an unchanged alias every few seconds is not news
                        self._count(outcome)
                if consumer is None:
                    self._stop.wait(max(0.0, min(next_check - time.monotonic(), 1.0)))
                    continue
                message = consumer.poll(0.5)
                if message is None:
                    # Half a second without a record, fetches answered within 50 ms: the topic is read to its
                    # end (the embedded broker's high watermark is not reliable enough to compare against),
                    # once a fetch has answered at all: the first poll can come back empty before that.
                    if not self.replayed.is_set() and _fetched(consumer):
                        log.info("model-updates replayed (%d events): serving %s", sum(self.outcomes.values()),
                                 self.store.current.version if self.store.current else "nothing")
                        self.replayed.set()
                    continue
                if message.error():
                    log.warning("model-updates: %s", message.error())
                    continue
                try:
                    self.handle(message.value() or b"")
                except Exception:  # one bad update must not end following for good
                    log.exception("model-updates: event at offset %s not handled", message.offset())
                    self._count("refused")
        finally:
            if consumer is not None:
                consumer.close()

    def _consumer(self) -> Consumer | None:
        if self.bootstrap_servers is None:
            return None
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": f"loopline-serving-{uuid.uuid4().hex}",  # required by the client; never joined
            "enable.auto.commit": False,
            "fetch.message.max.bytes": 64 * 1024 * 1024,  # a delta can be several MB
            # The embedded broker answers an empty fetch only when this runs out (measured: with
            # librdkafka's 500 ms default a delta reached the consumer after 115 ms median, 250 ms at
            # worst; with 50 ms, after 5 ms). Deltas are few, so the extra empty fetches cost nothing.
            "fetch.wait.max.ms": 50,
            "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 2000,
        })
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions(consumer)])
        return consumer

    def _partitions(self, consumer: Consumer) -> list[int]:
        """The topic's partitions, waiting for the broker if it is not up yet."""
        while not self._stop.is_set():
            try:
                topic = consumer.list_topics(self.topic, timeout=5).topics[self.topic]
                if topic.error is None and topic.partitions:
                    return sorted(topic.partitions)
                log.warning("model-updates: topic %s not there yet (%s)", self.topic, topic.error)
            except KafkaException as exc:
                log.warning("model-updates: broker at %s unreachable: %s", self.bootstrap_servers, exc)
            self._stop.wait(1.0)
        return []


def _fetched(consumer: Consumer) -> bool:
    """Whether a fetch has answered for every assigned partition (the client caches the watermarks each
    answer carries; before the first one they read -1001)."""
    try:
        return all(consumer.get_watermark_offsets(tp, cached=True)[1] >= 0 for tp in consumer.assignment())
    except KafkaException:
        return False
