#!/bin/sh
# Creates loopline's topics on the Kafka cluster; the `kafka-topics` Job (k8s/topics.yaml)
# and the `topics` service (compose.yaml) run it in the apache/kafka image.
#
# TOPICS is "name:partitions ..." and must match DEFAULT_PARTITIONS in infra/broker.py
# (tests/code/test_scaleout_files.py checks it). predictions and feedback need the same
# count: the feedback service joins them partition by partition. A topic that already
# exists with another partition count is an error, not something to carry on with.
set -eu
: "${BOOTSTRAP:?}" "${TOPICS:?}" "${REPLICATION_FACTOR:?}" "${MIN_INSYNC_REPLICAS:?}"
KAFKA_TOPICS=/opt/kafka/bin/kafka-topics.sh

for spec in $TOPICS; do
  name=${spec%%:*}
  partitions=${spec#*:}
  # 32 MiB: a head delta can be several MB; the feedback service's producer allows 32 MiB.
  "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$name" \
    --partitions "$partitions" --replication-factor "$REPLICATION_FACTOR" \
    --config min.insync.replicas="$MIN_INSYNC_REPLICAS" --config max.message.bytes=33554432
  if ! "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --describe --topic "$name" \
      | grep -q "^Topic: $name[[:space:]].*PartitionCount: $partitions[[:space:]]"; then
    echo "topic $name exists with a partition count other than $partitions" >&2
    exit 1
  fi
done
echo "topics ready: $TOPICS"
