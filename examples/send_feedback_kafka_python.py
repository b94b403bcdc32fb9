"""Send user feedback to loopline from your application, with kafka-python.

    pip install kafka-python==3.0.12
    export LOOPLINE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
    python send_feedback_kafka_python.py PREDICTION_ID INTENT [SOURCE]

PREDICTION_ID is the `prediction_id` that POST /v1/predict returned, INTENT the one
the user meant. The event goes to the `feedback` topic as JSON, keyed by the
prediction id: kafka-python's default partitioner hashes keys with murmur2 (as the
Java client does, and as serving does for `predictions`), so the feedback lands on
the partition of its prediction, where the feedback service joins the two.
No other setting is needed for loopline's embedded broker (Tansu): kafka-python
negotiates the protocol versions with it at connect time.
"""

import json
import os
import sys
import time
import uuid

from kafka import KafkaProducer

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
    # An application keeps one producer for its lifetime and closes it at shutdown.
    producer = KafkaProducer(
        bootstrap_servers=os.environ.get("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        acks="all",  # acknowledged only once the broker has stored it
    )
    try:
        future = producer.send(TOPIC, key=prediction_id.encode(), value=json.dumps(event).encode())
        # get() waits for the acknowledgement; an app that does not wait calls flush() before it exits.
        meta = future.get(timeout=10)
        print(f"sent {event['event_id']} to {TOPIC} partition {meta.partition} offset {meta.offset}")
    finally:
        producer.close(timeout=10)


if __name__ == "__main__":
    main()
