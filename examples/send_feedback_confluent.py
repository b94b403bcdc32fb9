"""Send user feedback to loopline from your application, with confluent-kafka (librdkafka).

    pip install confluent-kafka==2.16.1
    export LOOPLINE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
    python send_feedback_confluent.py PREDICTION_ID INTENT [SOURCE]

PREDICTION_ID is the `prediction_id` that POST /v1/predict returned, INTENT the one
the user meant. The event goes to the `feedback` topic as JSON, keyed by the
prediction id. Set `partitioner: murmur2_random`: librdkafka's default
(`consistent_random`, CRC32) would put the feedback on another partition than its
prediction, which serving produces with murmur2, and the feedback service joins
the two within a partition.
"""

import json
import os
import sys
import time
import uuid

from confluent_kafka import Producer

TOPIC = "feedback"


def feedback_event(prediction_id: str, label: str, source: str = "app") -> dict:
    """A FeedbackEvent, schema version 1; the service dead-letters anything else."""
    return {
        "schema_version": 1,
        "event_id": uuid.uuid4().hex,  # unique; a resend of the same event must keep it (dedup)
        "time": time.time(),  # unix seconds
        "prediction_id": prediction_id,  # 1-64 characters
        "label": label,  # 1-64 characters, one of the model's intents
        "source": source,  # up to 64 characters, e.g. correction, confirmation
    }


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    prediction_id, label = sys.argv[1], sys.argv[2]
    event = feedback_event(prediction_id, label, *sys.argv[3:])
    # An application keeps one producer for its lifetime and flushes it at shutdown.
    producer = Producer({
        "bootstrap.servers": os.environ.get("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        "partitioner": "murmur2_random",  # same key -> same partition as serving's predictions
        "acks": "all",  # acknowledged only once the broker has stored it
        "message.timeout.ms": 10_000,  # give up (on_delivery gets the error) after 10 s
    })
    reports = []
    producer.produce(TOPIC, key=prediction_id.encode(), value=json.dumps(event).encode(),
                     on_delivery=lambda err, msg: reports.append((err, msg)))
    # produce() only queues; flush() waits and serves the delivery report (an app calls poll(0) regularly).
    producer.flush(15)
    if not reports or reports[0][0] is not None:
        sys.exit(f"feedback not delivered: {reports[0][0] if reports else 'no report within 15 s'}")
    msg = reports[0][1]
    print(f"sent {event['event_id']} to {TOPIC} partition {msg.partition()} offset {msg.offset()}")


if __name__ == "__main__":
    main()
