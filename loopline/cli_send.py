"""`loopline feedback` as a group: the service with no subcommand, `send` for one feedback event.

`send` produces with confluent-kafka configured as serving's prediction log is
(`partitioner: murmur2_random`, which hashes a key as kafka-python's and the Java
client's default partitioner do), so feedback lands on the partition of its
prediction and the feedback service can join the two locally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from loopline.cli_feedback import feedback
from loopline.ui import console, describe_invalid, fail

if TYPE_CHECKING:
    from services.common.events import FeedbackEvent

BOOTSTRAP_ENV = "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS"

feedback_app = typer.Typer()


@feedback_app.callback(invoke_without_command=True)
def feedback_group(ctx: typer.Context) -> None:
    """Run the feedback service, or `send` one feedback event.

    With no subcommand: the service (LOOPLINE_* settings) until Ctrl-C or SIGTERM.
    """
    if ctx.invoked_subcommand is None:
        feedback()


@feedback_app.command("send")
def send(
    prediction_id: str = typer.Option(..., help="The prediction_id that /v1/predict returned."),
    label: str = typer.Option(..., help="The intent the user meant, e.g. toggle_wifi."),
    source: str = typer.Option("cli", help="Where the feedback comes from, e.g. correction, confirmation."),
    bootstrap_servers: str = typer.Option("", envvar=BOOTSTRAP_ENV, show_default=False,
                                          help="The broker's host:port list."),
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for the broker's acknowledgement."),
) -> None:
    """Send one feedback event to the `feedback` topic, keyed by prediction id; waits for the broker."""
    from pydantic import ValidationError

    from services.common.events import FeedbackEvent

    try:
        event = FeedbackEvent(prediction_id=prediction_id, label=label, source=source)
    except ValidationError as exc:
        fail(f"not a valid feedback event: {describe_invalid(exc)}")
    if not bootstrap_servers.strip():
        fail(f"no broker: pass --bootstrap-servers or set {BOOTSTRAP_ENV} (host:port)")
    _warn_if_unknown(label)
    try:
        partition, offset = produce_feedback(bootstrap_servers.strip(), event, timeout)
    except SendError as exc:
        fail(str(exc))
    console.print(f"sent feedback {event.event_id} (prediction {event.prediction_id}, label {event.label}) "
                  f"to feedback partition {partition} offset {offset}", soft_wrap=True, highlight=False)


def _warn_if_unknown(label: str) -> None:
    """Say so when the champion has no such class. The event is sent anyway: feedback with a new label is
    how a new intent gets asked for (the feedback service dead-letters it for online learning, as
    unknown_label, and counts it per label)."""
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    if not settings.mlflow_tracking_uri and not (settings.state_dir / "mlflow" / "mlflow.db").exists():
        return  # no registry configured here: nothing to check against
    try:
        from services.common.registry import Registry, bound_registry_requests

        bound_registry_requests(timeout_s=5, retries=0)  # a warning must not hold the send for minutes
        registry = Registry(settings)
        champion = registry.champion()
        classes = registry.classes(champion) if champion is not None else None
    except Exception as exc:  # the registry is only asked for a warning: never fail a send on it
        console.print(f"[yellow]note[/]: could not read the champion's classes ({type(exc).__name__}); "
                      "sending anyway")
        return
    if champion is not None and classes is not None and label not in classes:
        console.print(f"[yellow]warning[/]: champion v{champion.version} has no class {label!r} "
                      f"({len(classes)} classes); sending anyway: the feedback service will not learn it "
                      "online (feedback-dlq, unknown_label, counted per label)")


class SendError(Exception):
    """The broker did not take the event."""


def produce_feedback(bootstrap_servers: str, event: FeedbackEvent, timeout_s: float) -> tuple[int, int]:
    """Produce one FeedbackEvent keyed by its prediction id and wait for the ack; (partition, offset)."""
    from confluent_kafka import KafkaError, KafkaException, Message, Producer

    from services.common.events import FEEDBACK, PREDICTIONS

    results: list[tuple[KafkaError | None, Message]] = []
    try:
        producer = Producer({
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "partitioner": "murmur2_random",  # as serving's prediction log: same key, same partition
            "allow.auto.create.topics": False,  # a missing topic is an error, not a new topic with other counts
            "message.timeout.ms": int(timeout_s * 1000),
            "request.timeout.ms": int(timeout_s * 1000),
            "log_level": 2,  # librdkafka would print every failed reconnect; the errors below say it once
        })
        # Metadata first: it tells "no broker" from "no topic", which a delivery timeout does not.
        topics = producer.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise SendError(f"no broker answered at {bootstrap_servers} within {timeout_s:g} s "
                        f"({exc.args[0].str()})") from exc
    if FEEDBACK not in topics:
        raise SendError(f"the broker at {bootstrap_servers} has no topic {FEEDBACK!r}: create it with as many "
                        f"partitions as {PREDICTIONS!r}")
    if PREDICTIONS in topics and len(topics[PREDICTIONS].partitions) != len(topics[FEEDBACK].partitions):
        console.print(f"[yellow]warning[/]: {FEEDBACK!r} has {len(topics[FEEDBACK].partitions)} partitions and "
                      f"{PREDICTIONS!r} {len(topics[PREDICTIONS].partitions)}: feedback and predictions are not "
                      "co-partitioned, so a feedback service with several members cannot join them",
                      soft_wrap=True)
    try:
        producer.produce(FEEDBACK, key=event.prediction_id.encode(), value=event.model_dump_json().encode(),
                         on_delivery=lambda err, msg: results.append((err, msg)))
    except (KafkaException, BufferError) as exc:
        raise SendError(f"cannot send to {bootstrap_servers}: {exc}") from exc
    producer.flush(timeout_s + 5)  # the delivery report comes by message.timeout.ms at the latest
    if not results:
        raise SendError(f"no delivery report from {bootstrap_servers} within {timeout_s:g} s")
    err, msg = results[0]
    if err is not None:
        raise SendError(f"the broker at {bootstrap_servers} did not take the event: {err.str()}")
    partition, offset = msg.partition(), msg.offset()
    assert partition is not None and offset is not None
    return partition, offset
