"""`loopline models`: review, promote and roll back registry versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from loopline.ui import console, fail

if TYPE_CHECKING:
    from services.common.registry import Registry

models_app = typer.Typer(help="Review, promote and roll back versions in the MLflow registry.",
                         no_args_is_help=True)


def _registry() -> Registry:
    from services.common.registry import Registry
    from services.common.settings import CommonSettings

    try:
        return Registry(CommonSettings())
    except ValueError as exc:
        fail(f"bad settings: {exc}")


@models_app.command("list")
def list_versions(limit: int = typer.Option(20, min=1, help="Newest versions to show.")) -> None:
    """Every version with what a reviewer needs: metrics vs champion, gates, size, lineage, decision."""
    registry = _registry()
    versions = registry.versions()[:limit]
    if not versions:
        console.print(f"no versions of [bold]{registry.name}[/] at {registry.settings.tracking_uri}")
        return
    table = Table(title=f"{registry.name} at {registry.settings.tracking_uri}")
    for column in ("version", "aliases", "created", "source", "classes", "accuracy", "vs champion", "fallback",
                   "gates", "MB", "parent", "decision"):
        table.add_column(column, overflow="fold")
    for v in versions:
        created = datetime.fromtimestamp(v.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        delta = v.tags.get("vs_champion.accuracy_delta", "")
        vs = f"{delta} vs v{v.tags['vs_champion.version']}" if delta else ""
        if delta and "shared classes" in v.tags.get("vs_champion.scored_on", ""):
            vs += " (shared classes only)"
        fallback = (f"{v.tags['fallback.precision']} precision, {v.tags['fallback.coverage']} answered at "
                    f"{v.tags['fallback.threshold']}" if "fallback.threshold" in v.tags else "")
        gates = "passed" if v.tags.get("gate.passed") == "true" else v.tags.get("gate.passed", "")
        if gates == "passed":
            gates += f" ({v.tags.get('gate.agreement', '?')} agree)"
        table.add_row(str(v.version), ",".join(v.aliases), created, v.tags.get("source", ""),
                      v.tags.get("n_classes", ""), v.tags.get("metric.accuracy", ""), vs, fallback, gates,
                      v.tags.get("deployed_mb", ""),
                      v.tags.get("parent_version", "") or "-", v.tags.get("deploy.decision", ""))
    console.print(table)


@models_app.command("promote")
def promote(version: int = typer.Argument(..., help="Version to make champion."),
            reason: str = typer.Option("manual promote", help="Recorded in the champion history.")) -> None:
    """Point `champion` at VERSION (serving follows the alias)."""
    from services.common.registry import RegistryError

    registry = _registry()
    try:
        previous = registry.promote(version, reason)
    except RegistryError as exc:
        fail(str(exc))
    was = f" (was v{previous.version})" if previous else ""
    console.print(f"[green]champion[/] of {registry.name} is now v{version}{was}")
    _announce(registry, version)


@models_app.command("rollback")
def rollback(version: int | None = typer.Argument(None, help="Version to return to; default: the previous "
                                                             "champion.")) -> None:
    """Move `champion` back to an earlier version."""
    from services.common.registry import RegistryError

    registry = _registry()
    try:
        target = registry.rollback(version)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"[green]rolled back[/]: champion of {registry.name} is v{target.version}")
    _announce(registry, target.version)


def _announce(registry: Registry, version: int) -> None:
    """Tell serving at once when a broker is configured; otherwise it sees the alias on its next check."""
    from services.common.events import MODEL_UPDATES, ModelUpdate
    from services.common.kafka import PublishError, publish

    servers = registry.settings.kafka_bootstrap_servers
    if not servers:
        return
    event = ModelUpdate(model=registry.name, kind="full", version=str(version), base_version=version,
                        uri=f"models:/{registry.name}/{version}")
    try:
        publish(servers, MODEL_UPDATES, registry.name, event)
    except PublishError as exc:
        fail(f"alias moved, but serving was not told: {exc}")
    console.print(f"announced v{version} on {MODEL_UPDATES}")
