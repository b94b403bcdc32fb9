"""Producing to the broker: small, explicit, and loud when the broker is not there."""

from __future__ import annotations

import logging

from kafka import KafkaProducer
from kafka.errors import KafkaError

from services.common.events import Event

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The broker did not acknowledge an event in time."""


def publish(bootstrap_servers: str, topic: str, key: str, event: Event, timeout_s: float = 10.0) -> None:
    """Send one event and wait for the broker's acknowledgement."""
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                                 request_timeout_ms=int(timeout_s * 1000), max_block_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise PublishError(f"cannot reach the broker at {bootstrap_servers}: {exc}") from exc
    try:
        future = producer.send(topic, key=key.encode(), value=event.model_dump_json().encode())
        meta = future.get(timeout=timeout_s)
        log.info("published %s to %s[%d]@%d", event.event_id, topic, meta.partition, meta.offset)
    except KafkaError as exc:
        raise PublishError(f"{topic}: event {event.event_id} not acknowledged: {exc}") from exc
    finally:
        producer.close(timeout=timeout_s)
