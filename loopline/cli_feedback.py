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
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if token is None:
        console.print("[yellow]POST /promote is off[/]: LOOPLINE_ADMIN_TOKEN is not set")
    try:
        serve_metrics(service, settings.metrics_port, token)
    except OSError as exc:
        fail(f"cannot listen on 127.0.0.1:{settings.metrics_port} ({exc}); set LOOPLINE_METRICS_PORT")
    learner = service.learner
    console.print(f"feedback service: v{learner.base_version}+ftrl.{learner.sequence}, windows of "
                  f"{settings.update_interval_s:g} s, metrics on http://127.0.0.1:{settings.metrics_port}/metrics")
    try:
        service.run(stop)
    except ServiceError as exc:
        fail(str(exc))


def promote() -> None:
    """Register the feedback service's online head as a registry version now; move `champion` if it passes.

    Sends LOOPLINE_ADMIN_TOKEN, or else the token `loopline up` generated in LOOPLINE_STATE_DIR."""
    import httpx
    from pydantic import ValidationError

    from services.common.admin import stack_admin_token
    from services.feedback.settings import FeedbackSettings

    try:
        settings = FeedbackSettings()
    except ValidationError as exc:
        fail(describe_invalid(exc))
    url = f"http://127.0.0.1:{settings.metrics_port}/promote"
    token = settings.admin_token.get_secret_value() if settings.admin_token else stack_admin_token(settings.state_dir)
    if token is None:
        fail("no admin token: set LOOPLINE_ADMIN_TOKEN to the feedback service's, or for a `loopline up` stack "
             'run `eval "$(loopline status --env)"` so that LOOPLINE_STATE_DIR names its state folder')
    headers = {"Authorization": f"Bearer {token}"}
    with console.status("waiting for the next update window to finish..."):
        try:
            response = httpx.post(url, headers=headers, timeout=330)
        except httpx.HTTPError as exc:
            fail(f"no feedback service at {url} ({exc}): is `loopline feedback` running with this "
                 "LOOPLINE_METRICS_PORT?")
    body = response.json() if response.headers.get("content-type") == "application/json" else {}
    detail = body.get("detail", response.text)
    if response.status_code != 200:
        fail(f"promote refused ({response.status_code}): {detail}")
    status, version = body["status"], body.get("version")
    color = {"promoted": "green", "registered": "yellow"}.get(status, "white")
    console.print(f"[{color}]{status}[/]" + (f" v{version}" if version is not None else "") + f": {detail}")
