"""Console helpers shared by the `loopline` commands: one console, errors, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class PlainWhenPipedConsole(Console):
    """Rich's console, except that text is not wrapped when the output is not a terminal: a pipe, a log
    file or grep gets each message on one line (rich wraps at 80 columns there, splitting paths)."""

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


console = PlainWhenPipedConsole()


def fail(message: str) -> NoReturn:
    """Print a readable error and exit 2."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def describe_invalid(exc: ValidationError) -> str:
    """Pydantic's errors as one readable line: `field: message; field: message`."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


@contextmanager
def progress_display() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A rich progress display; yields `track(description, total) -> advance(n)`."""
    with Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:

        def track(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield track
