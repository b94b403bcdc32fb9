"""`loopline feedback`: the feedback service in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading

from loopline.ui import console, describe_invalid, fail


def feedback() -> None:
    """Join feedback to predictions, learn every few seconds, publish gated updates (LOOPLINE_* settings)."""
    from pydantic import ValidationError

    from services.feedback.metrics import serve_metrics
    from services.feedback.service import FeedbackService, ServiceError
    from services.feedback.settings import FeedbackSettings

    try:
        settings = FeedbackSettings()
    except ValidationError as exc:
        fail(describe_invalid(exc))
    if not settings.kafka_bootstrap_servers:
        fail("LOOPLINE_KAFKA_BOOTSTRAP_SERVERS is not set: the feedback service reads predictions and "
             "feedback from a broker (`loopline up` starts one)")
    try:
        service = FeedbackService(settings)
    except ServiceError as exc:
        fail(str(exc))
    for problem in service.problems:
        console.print(f"[yellow]checkpoint skipped[/]: {problem}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve_metrics(service, settings.metrics_port)
    learner = service.learner
    console.print(f"feedback service: v{learner.base_version}+ftrl.{learner.sequence}, windows of "
                  f"{settings.update_interval_s:g} s, metrics on http://127.0.0.1:{settings.metrics_port}/metrics")
    try:
        service.run(stop)
    except ServiceError as exc:
        fail(str(exc))
