"""`loopline demo`: the whole loop on the embedded stack, measured, in one command.

1. the stack's servers (`loopline up`), in an empty state folder;
2. the train flow as a run on the stack's Prefect server (MLflow registry, champion);
3. serving and the feedback service (`loopline up` again), with demo settings, and
   `loopline flows serve` so that a drift alert starts a real retrain flow run;
4. a replay of `new_phrasing` traffic with a drift onset: predict requests over HTTP,
   feedback over Kafka (simulator.py), with a live view of what the stack does;
5. a summary table, `summary.json`, `demo.json` and `demo.png` under `--out`, and the
   UIs' URLs. The stack stays up until `loopline down`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from loopline.cli_stack import STATE_HELP, _port, _settings
from loopline.ui import console, fail, progress_display

if TYPE_CHECKING:
    from infra.stack import Stack
    from loopline.demo.plan import DemoPlan
    from loopline.demo.report import Freshness
    from loopline.demo.simulator import Simulator
    from loopline.demo.watch import Watch
    from loopline.demo.your_data import TestScore

log = logging.getLogger(__name__)

DEMO_MARKER = "demo.json"  # a state folder the demo made; the next demo may stop and replace it
LOOPLINE_DIRS = ("stack.json", DEMO_MARKER, "mlflow", "prefect", "feedback", "feast")
FLOW = "train-quantize-compile-deploy"
FINAL_STATES = {"Completed", "Failed", "Crashed", "Cancelled", "TimedOut"}


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what to look at."""


def demo(
    out: Path = typer.Option(Path("out"), help="Folder for summary.json, demo.json and demo.png."),
    state_dir: Path | None = typer.Option(None, help=STATE_HELP, show_default=False),
    size: str = typer.Option("full", help="full (18,000 requests, about 10 min with MiniLM) or small "
                                          "(3,000 requests, for CI)."),
    encoder: str = typer.Option("minilm", help="minilm, or tiny (a random tiny BERT: fast, less accurate)."),
    events: int | None = typer.Option(None, min=200, help="Requests in the replay [default: by size].",
                                      show_default=False),
    rate: float | None = typer.Option(None, min=1.0, help="Requests per second the replay aims at "
                                                          "[default: by size].", show_default=False),
    seed: int = typer.Option(0),
    data: str | None = typer.Option(None, help="Your own dataset (text,label[,user_id,ts]; CSV, Parquet or JSONL): "
                                               "a few-shot champion trains on it, the rest of its rows are the "
                                               "traffic, their labels the feedback.", show_default=False),
    test: str | None = typer.Option(None, help="With --data: a test file scored through serving before and after "
                                               "the replay.", show_default=False),
    shots: int = typer.Option(10, min=1, help="With --data: rows of every intent the champion trains on."),
    retrain: bool | None = typer.Option(None, "--retrain/--no-retrain", show_default=False,
                                        help="Run `loopline flows serve`, so a drift alert starts a retrain "
                                             "[default: on, off with --data]."),
    reset: bool = typer.Option(False, help="Stop a stack found in the state folder and delete its data first."),
    broker_port: int | None = _port("broker", "LOOPLINE_BROKER_PORT", 9092),
    mlflow_port: int | None = _port("mlflow", "LOOPLINE_MLFLOW_PORT", 5000),
    prefect_port: int | None = _port("prefect", "LOOPLINE_PREFECT_PORT", 4200),
    evidently_port: int | None = _port("evidently", "LOOPLINE_EVIDENTLY_PORT", 8002),
    serving_port: int | None = _port("serving", "LOOPLINE_PORT", 8000),
    feedback_port: int | None = _port("feedback", "LOOPLINE_METRICS_PORT", 8001),
    runner_port: int | None = _port("runner", "LOOPLINE_RUNNER_PORT", 8003),
) -> None:
    """Run the whole loop on the embedded stack and report what it measured (the stack stays up)."""
    began = time.time()
    from infra.stack import Stack, StackError
    from loopline.demo.plan import DemoPlan, Size

    if size not in ("full", "small"):
        fail(f"--size must be full or small, got {size!r}")
    try:
        plan = DemoPlan.make(cast(Size, size), encoder, seed, events, rate,
                             retrain if retrain is not None else data is None, data, test, shots)
    except ValueError as exc:
        fail(str(exc))
    for key, value in plan.stack_env.items():
        os.environ.setdefault(key, value)  # your own LOOPLINE_* settings win
    settings = _settings(state_dir=state_dir, broker_port=broker_port, mlflow_port=mlflow_port,
                         prefect_port=prefect_port, evidently_port=evidently_port, serving_port=serving_port,
                         feedback_port=feedback_port, runner_port=runner_port)
    _quiet_logs()
    _fresh_state(settings.state_dir.resolve(), reset)
    try:
        stack = Stack.for_up(settings)
    except StackError as exc:
        fail(str(exc))
    _write_marker(stack, plan)
    _print_plan(plan, stack)

    try:
        console.rule("[bold]1. the stack")
        _up(stack)
        os.environ.update(stack.client_env())  # before Prefect is imported: the flow runs on the stack's server
        console.rule("[bold]2. the train flow, a run on the stack's Prefect server")
        first = _train(plan, stack)
        console.rule("[bold]3. serving, feedback service" + (", retrain runner" if stack.runner.enabled else ""))
        _up(stack)
        if stack.runner.enabled:
            _wait_deployment(stack)
        before = _score_test(plan, stack, "the few-shot champion")
        console.rule("[bold]4. traffic replay" + ("" if plan.on_data else " with drift onset"))
        sim, watch = _replay(plan, stack, first)
        after = _score_test(plan, stack, "after the replay")
        if plan.on_data and stack.runner.enabled and not watch.runs:
            _start_retrain(stack, watch)  # no drift alert on your data: the retrain a nightly run would do, now
        cut = False
        if stack.runner.enabled and not _wait_retrain(watch, began + plan.budget_s):
            cut = True
            _stop_runner(stack)  # before the summary, so that it says what became of the run
        retrained = None
        if plan.on_data and watch.runs and not cut:
            _serving_follows_champion(stack)
            retrained = _score_test(plan, stack, "after the retrain")
        watch.stop()
        console.rule("[bold]5. summary")
        _report(plan, stack, sim, watch, out, began, cut, before, after, retrained)
    except DemoError as exc:
        fail(f"{exc}\nwhat runs is left for a look: `loopline status{_state_flag(stack)}` shows it, "
             f"`loopline down{_state_flag(stack)}` stops it")
    except typer.Exit:
        raise
    except Exception as exc:  # a bug or an unexpected answer: say where, keep what runs for a look
        console.print_exception(max_frames=4)
        fail(f"the demo stopped: {type(exc).__name__}: {exc}\nthe stack is left running: "
             f"`loopline down{_state_flag(stack)}` stops it")
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]; the stack is still up: `loopline down{_state_flag(stack)}` stops it")
        raise typer.Exit(code=130) from None


# -- set-up ------------------------------------------------------------------------------------


def _quiet_logs() -> None:
    logging.getLogger("infra.process").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("loopline.demo").setLevel(logging.WARNING)


def _state_flag(stack: Stack) -> str:
    default = Path(".state").resolve()
    return "" if stack.state_dir == default else f" --state-dir {stack.state_dir}"


def _fresh_state(state: Path, reset: bool) -> None:
    """An empty state folder: the demo's numbers must not mix with an earlier registry or checkpoint."""
    from infra.stack import STATE_FILE, Stack, StackError
    if not state.exists() or not any(state.iterdir()):
        return
    ours = (state / DEMO_MARKER).exists()
    if not ours and not reset:
        fail(f"{state} already holds a loopline stack or its data; the demo starts from an empty state folder "
             "so that its numbers are its own.\npass --reset to stop that stack and delete its data, or "
             "--state-dir for another folder")
    if not any((state / name).exists() for name in LOOPLINE_DIRS):
        fail(f"{state} does not look like a loopline state folder; not deleting it: choose another --state-dir")
    console.print(f"stopping the stack in {state} and deleting its data ({'an earlier demo' if ours else '--reset'})")
    try:
        if (state / STATE_FILE).exists():
            Stack.load(state).down(lambda name, what: console.print(f"  {name:<10} {what}"))
    except StackError as exc:
        fail(f"could not stop the stack in {state}: {exc}")
    shutil.rmtree(state)


def _print_plan(plan: DemoPlan, stack: Stack) -> None:
    from services.feedback.settings import FeedbackSettings

    effective = FeedbackSettings()
    table = Table(title=f"loopline demo ({plan.size}, {plan.encoder}) in {stack.state_dir}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if plan.on_data:
        table.add_row("training", f"{plan.shots} rows of every intent of {plan.data} (seeded draw, seed "
                                  f"{plan.seed}), {plan.encoder}")
        table.add_row("replay", f"the other {plan.events:,} rows, shuffled, as predict requests at {plan.rate:g}/s "
                                f"over HTTP, {plan.workers} clients; made-up users where the data has none")
        table.add_row("test split", f"{plan.test}, through serving before and after the replay" if plan.test
                      else "none (--test)")
    else:
        traffic = plan.traffic()
        table.add_row("training", f"{plan.train_events:,} generated stable utterances, {plan.encoder}, "
                                  f"seed {plan.seed}")
        table.add_row("replay", f"{plan.events:,} predict requests at {plan.rate:g}/s over HTTP, {plan.workers} "
                                f"clients; {traffic.scenario} drift from request {traffic.onset_index:,} on "
                                f"(strength {plan.strength:g}: share of requests in the new wording)")
    table.add_row("feedback", plan.feedback.describe() + "; over Kafka, keyed by prediction id")
    table.add_row("retrain", "on drift: the stack's runner (`loopline flows serve`) trains on the champion's data "
                  "plus the feedback collected" if plan.retrain else "off (LOOPLINE_RUNNER_ENABLED=false)")
    table.add_row("stack settings", ", ".join(
        f"{key}={os.environ[key]}" for key in sorted(plan.stack_env)) + " (your own LOOPLINE_* variables win)")
    table.add_row("feedback service", f"update window {effective.update_interval_s:g} s, hold-back "
                                      f"{effective.holdout_share:g}, registry version every "
                                      f"{effective.registry_interval_s:g} s, drift window "
                                      f"{effective.drift_window_events} events or {effective.drift_window_s:g} s")
    console.print(table)


def _up(stack: Stack) -> None:
    from infra.process import ProcessError
    from infra.stack import StackError

    def report(name: str, what: str) -> None:
        console.print(f"  [{'yellow' if what.startswith('waiting') else 'green'}]{name:<10}[/] {what}")

    try:
        with console.status("starting parts of the stack (MLflow and Prefect take 20-60 s)..."):
            stack.up(report)
    except (StackError, ProcessError) as exc:
        raise DemoError(f"the stack did not start (what this step started was stopped again): {exc}") from exc


def _train(plan: DemoPlan, stack: Stack) -> int:
    """The train flow in this process, as a run on the stack's Prefect server; returns the version."""
    with warnings.catch_warnings():  # libraries' deprecation notices at import time are not the user's business
        warnings.simplefilter("ignore")
        from flows import progress
        from flows.gates import GateFailed
        from flows.train import TrainResult, train_flow

    with progress_display() as track:
        progress.install(track)
        try:
            state = train_flow(plan.train_config(), return_state=True)
            result: TrainResult = state.result()
        except GateFailed as exc:
            raise DemoError(f"the train flow's gate failed, nothing registered: {exc}") from exc
        except Exception as exc:
            raise DemoError(f"the train flow failed: {type(exc).__name__}: {exc}") from exc
        finally:
            progress.install(None)
    ui = stack.parts["prefect"].url.removesuffix("/api")
    console.print(f"v{result.version}: accuracy {result.metrics.get('accuracy', float('nan')):.4f} on held-out "
                  f"rows, {'champion' if result.promoted else 'not promoted'}; flow run "
                  f"{ui}/runs/flow-run/{state.state_details.flow_run_id}")
    if not result.promoted:
        raise DemoError(f"v{result.version} did not become champion: {result.reason}")
    return result.version


def _wait_deployment(stack: Stack, timeout: float = 180.0) -> None:
    url = f"{stack.parts['prefect'].url}/deployments/name/{FLOW}/on-drift"
    deadline = time.monotonic() + timeout
    runner = stack.handle("runner")
    if runner is None:
        raise DemoError(f"the stack's runner is not running; `loopline status{_state_flag(stack)}` says why")
    with console.status("waiting for the on-drift deployment..."):
        while time.monotonic() < deadline:
            if not runner.running():
                raise DemoError(f"the runner (`loopline flows serve`) exited; log {runner.log_path}:\n"
                                f"{runner.log_tail()}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    console.print(f"  [green]{'on-drift':<10}[/] deployment registered: a drift alert starts a "
                                  "train flow run")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
    raise DemoError(f"the on-drift deployment did not appear within {timeout:.0f} s; log {runner.log_path}")


def _stop_runner(stack: Stack) -> None:
    from infra.process import ProcessError

    runner = stack.handle("runner")
    if runner is None:
        return
    try:
        runner.stop()
    except ProcessError as exc:
        console.print(f"[yellow]warning[/]: {exc}")


# -- the replay ----------------------------------------------------------------------------------


def _replay(plan: DemoPlan, stack: Stack, first: int) -> tuple[Simulator, Watch]:
    from loopline.demo.simulator import Simulator
    from loopline.demo.watch import Watch
    from services.common.registry import Registry
    from services.common.settings import CommonSettings

    requests = plan.requests()
    parts = stack.parts
    watch = Watch(parts["serving"].url, parts["feedback"].url, parts["broker"].url, parts["prefect"].url,
                  stack.model_name, Registry(CommonSettings()), first).start()
    sim = Simulator(plan, requests, parts["serving"].url, parts["broker"].url)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("requests", total=len(requests))
    sim.start()
    try:
        with Live(Group(progress, _view(plan, sim, watch)), console=console, refresh_per_second=2) as live:
            while not sim.wait(timeout=0.5):
                progress.update(task, completed=sim.sent)
                live.update(Group(progress, _view(plan, sim, watch)))
            progress.update(task, completed=sim.sent)
            _drain(sim, watch, live, progress, plan)
    except BaseException:
        sim.stop()
        watch.stop()
        raise
    if sim.failure is not None:
        watch.stop()
        raise DemoError(f"the replay failed: {sim.failure}")
    return sim, watch


def _drain(sim: Simulator, watch: Watch, live: Live, progress: Progress, plan: DemoPlan,
           timeout: float = 30.0) -> None:
    """Until the feedback service has consumed every feedback event and released its last window."""
    from services.feedback.settings import FeedbackSettings

    interval = FeedbackSettings().update_interval_s
    sent = sum(1 for f in sim.feedback if f.acked)
    deadline = time.monotonic() + timeout
    consumed_at = None
    while time.monotonic() < deadline:
        live.update(Group(progress, _view(plan, sim, watch, "waiting for the last feedback to be learned")))
        if watch.metric("loopline_feedback_records_total", 'topic="feedback"') >= sent:
            consumed_at = consumed_at or time.monotonic()
            if time.monotonic() - consumed_at > 2 * interval + 2:
                return
        time.sleep(0.5)


def _view(plan: DemoPlan, sim: Simulator, watch: Watch, phase: str = "") -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    onset = plan.onset_index
    if plan.on_data:
        phase = phase or f"your data: the rows the {plan.shots}-shot champion did not train on"
    phase = phase or ("before the drift onset" if sim.sent < onset else f"drift onset at request {onset:,}")
    accuracy = sim.accuracy()
    progressive = watch.metric("loopline_feedback_progressive_accuracy")
    table.add_row("phase", phase)
    table.add_row("requests/s", f"{sim.rate():.0f} (target {plan.rate:g}), {sim.failed} failed")
    table.add_row("accuracy", ("-" if accuracy is None else f"{accuracy:.3f}") + f" served, last {plan.rolling} "
                  f"requests; {progressive:.3f} progressive (feedback service, since start)")
    table.add_row("model version", f"{watch.current} served; champion v{watch.champion or '-'}")
    published = watch.metric("loopline_feedback_windows_total", 'decision="published"')
    rejected = watch.metric("loopline_feedback_windows_total", 'decision="rejected"')
    table.add_row("online updates", f"{published:.0f} published, {rejected:.0f} rejected by the gate")
    acked = sum(1 for f in list(sim.feedback) if f.acked)
    consumed = watch.metric("loopline_feedback_records_total", 'topic="feedback"')
    dead = sum(v for k, v in watch.metrics.items() if k.startswith("loopline_feedback_dead_letters"))
    table.add_row("feedback", f"{acked:,} sent, {consumed:,.0f} consumed, {dead:,.0f} dead letters")
    versions = sorted(list(watch.versions.values()), key=lambda v: v.version)
    table.add_row("registry", ", ".join(f"v{v.version} {v.source}" for v in versions[-6:]) or "-")
    windows = watch.metric("loopline_feedback_observer_total", 'outcome="drift_windows"')
    share = watch.metrics.get("loopline_feedback_drift_share")
    drift = f"{windows:.0f} windows" + ("" if share is None else
                                         f", last: drift share {share:.2f}, accuracy "
                                         f"{watch.metric('loopline_feedback_drift_accuracy'):.3f}")
    if watch.alert_seen is not None or watch.drift_events:
        drift = "[bold red]DRIFT DETECTED[/] (loopline.drift.detected sent to Prefect); " + drift
    table.add_row("drift", drift)
    runs = sorted(list(watch.runs.values()), key=lambda r: r.start or 0.0)
    if plan.retrain:
        table.add_row("retrain", ", ".join(f"{r.name}: {r.state}" for r in runs) or "waiting for a drift alert")
    return table


def _start_retrain(stack: Stack, watch: Watch) -> None:
    """A run of the on-drift deployment, started by hand: the champion's data plus what the replay collected."""
    prefect = stack.parts["prefect"].url
    try:
        deployment = httpx.get(f"{prefect}/deployments/name/{FLOW}/on-drift", timeout=10)
        deployment.raise_for_status()
        run = httpx.post(f"{prefect}/deployments/{deployment.json()['id']}/create_flow_run", json={}, timeout=10)
        run.raise_for_status()
    except httpx.HTTPError as exc:
        raise DemoError(f"could not start the retrain: {exc}") from exc
    console.print(f"  [green]retrain[/]    flow run {run.json()['name']} of the on-drift deployment, started by hand: "
                  "the few-shot draw plus the feedback the replay collected")
    with console.status("waiting for the runner to pick it up..."):
        until = time.time() + 60
        while not watch.runs and time.time() < until:
            time.sleep(1.0)


def _serving_follows_champion(stack: Stack, timeout: float = 90.0) -> None:
    """Wait until serving answers with the registry's champion (a promoted retrain loads in seconds)."""
    from services.common.registry import Registry
    from services.common.settings import CommonSettings

    champion = Registry(CommonSettings()).champion()
    if champion is None:
        return
    until = time.time() + timeout
    with console.status(f"waiting for serving to load v{champion.version}..."):
        while time.time() < until:
            current = httpx.get(f"{stack.parts['serving'].url}/v1/models/current", timeout=10).json()
            if str(current.get("version", "")).split("+")[0] == str(champion.version):
                return
            time.sleep(1.0)


def _wait_retrain(watch: Watch, deadline: float) -> bool:
    """Wait for a triggered retrain run to end, until `deadline` (unix seconds); False if one still runs."""
    if watch.alert_seen is not None and not watch.runs:  # the trigger may take a few seconds
        with console.status("waiting for the on-drift flow run to be created..."):
            until = time.time() + 30
            while not watch.runs and time.time() < until:
                time.sleep(1.0)
    if not watch.runs:
        return True
    with console.status("") as status:
        while time.time() < deadline:
            runs = list(watch.runs.values())
            if all(r.state in FINAL_STATES for r in runs):
                return True
            status.update(f"waiting for the retrain flow run to finish ({', '.join(r.state for r in runs)}; "
                          f"{deadline - time.time():.0f} s left in the time budget)")
            time.sleep(1.0)
    console.print("[yellow]the retrain flow run did not finish within the time budget[/]; it is stopped with "
                  "`loopline flows serve` (see the Prefect UI)")
    return False


# -- summary -------------------------------------------------------------------------------------


def _score_test(plan: DemoPlan, stack: Stack, when: str) -> TestScore | None:
    """The test split through serving's batch endpoint, if the plan has one."""
    if plan.test is None:
        return None
    from loopline.demo.your_data import held_out_rows, score_over_http

    with console.status(f"scoring {plan.test} through serving ({when})..."):
        try:
            score = score_over_http(stack.parts["serving"].url, held_out_rows(plan.test))
        except httpx.HTTPError as exc:
            raise DemoError(f"scoring the test split failed: {exc}") from exc
    console.print(f"  test split, {when}: accuracy {score.accuracy:.3f} on {score.n:,} rows (v{score.version}), "
                  f"{score.answered:.0%} answered, the rest with fallback", highlight=False)
    return score


def _report(plan: DemoPlan, stack: Stack, sim: Simulator, watch: Watch, out: Path, began: float,
            retrain_cut: bool, before: TestScore | None = None, after: TestScore | None = None,
            retrained: TestScore | None = None) -> None:
    from dataclasses import replace

    from loopline.demo.report import freshness, plot, summarize, summary_table
    from services.feedback.settings import FeedbackSettings

    fb = FeedbackSettings()
    for answer in sim.answers:
        watch.seen(answer.version, answer.done)
    fresh = freshness(sim.feedback, watch.updates, watch.first_seen, fb.update_interval_s, fb.holdout_share)
    if plan.on_data:
        _report_learning(plan, stack, sim, watch, out, began, fresh, before, after, retrained)
        return
    events = [e["occurred"] for e in watch.drift_events if e["occurred"] is not None]
    # Detection is the feedback service's alert (seen on its /metrics, 1 s polls); the Prefect event follows it.
    drift_time = watch.alert_seen if watch.alert_seen is not None else min(events, default=None)
    versions, runs = list(watch.versions.values()), list(watch.runs.values())
    try:
        summary = summarize(sim.answers, sim.feedback, sim.failed, plan.onset_index, plan.rolling, fresh,
                            watch.metrics, drift_time, versions, runs, min(events, default=None), retrain_cut)
    except ValueError as exc:
        raise DemoError(f"no summary: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    png = plot(out / "demo.png", sim.answers, plan.rolling, watch.updates, versions, runs, drift_time, summary)
    summary = replace(summary, wall_s=time.time() - began)
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    _write_record(out / "demo.json", plan, sim, watch, fresh.seconds)
    console.print(summary_table(summary))
    _print_links(plan, stack, png, out)


def _print_links(plan: DemoPlan, stack: Stack, png: Path, out: Path) -> None:
    parts = stack.parts
    prefect_ui = parts["prefect"].url.removesuffix("/api")
    console.print(f"plot: [bold]{png}[/]  summary: {out / 'summary.json'}  everything recorded: {out / 'demo.json'}")
    console.print(f"MLflow     {parts['mlflow'].url}/#/models/{stack.model_name}  (versions, drift runs in "
                  f"experiment loopline-drift)\nPrefect    {prefect_ui}/runs  (the train flow run"
                  f"{' and the on-drift retrain' if plan.retrain else ''})\nEvidently  {parts['evidently'].url}  "
                  "(drift share and accuracy per window)\nserving    "
                  f"{parts['serving'].url}/docs", soft_wrap=True, highlight=False)
    console.print(f"the stack stays up for exploring; stop it with `loopline down{_state_flag(stack)}`")


def _report_learning(plan: DemoPlan, stack: Stack, sim: Simulator, watch: Watch, out: Path, began: float,
                     fresh: Freshness, before: TestScore | None, after: TestScore | None,
                     retrained: TestScore | None = None) -> None:
    from dataclasses import replace

    from loopline.demo.learning import learning_table, plot_learning, summarize_learning

    assert plan.data is not None
    try:
        summary = summarize_learning(plan.data, plan.shots, sim.answers, sim.feedback, sim.failed, plan.rolling,
                                     fresh, watch.metrics, list(watch.versions.values()), before, after,
                                     retrained)
    except ValueError as exc:
        raise DemoError(f"no summary: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    png = plot_learning(out / "demo.png", sim.answers, plan.rolling, watch.updates, summary)
    summary = replace(summary, wall_s=time.time() - began)
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    _write_record(out / "demo.json", plan, sim, watch, fresh.seconds)
    console.print(learning_table(summary))
    _print_links(plan, stack, png, out)


def _write_record(path: Path, plan: DemoPlan, sim: Simulator, watch: Watch, fresh: list[float]) -> None:
    from dataclasses import asdict

    record: dict[str, Any] = {
        "written": datetime.now(UTC).isoformat(), "plan": {**asdict(plan), "feedback": asdict(plan.feedback)},
        "answers": [[a.index, round(a.sent, 3), round(a.done, 3), a.version, a.correct] for a in sim.answers],
        "feedback": [[f.index, f.ts, f.acked] for f in sim.feedback], "freshness_s": fresh, **watch.to_json()}
    path.write_text(json.dumps(record, default=str) + "\n")


def _write_marker(stack: Stack, plan: DemoPlan) -> None:
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    (stack.state_dir / DEMO_MARKER).write_text(json.dumps(
        {"started": datetime.now(UTC).isoformat(), "size": plan.size, "encoder": plan.encoder}) + "\n")
