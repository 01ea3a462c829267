"""The one look of linecheck's progress bars (rich): description, bar, count, elapsed time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Step = Callable[..., None]
"""``step(n=1, *, completed=None, description=None)``: advance by ``n``, or set the count to
``completed``; ``description`` replaces the bar's text."""


@contextmanager
def progress_bar(console: Console, description: str, total: int) -> Iterator[Step]:
    """A bar on ``console`` (stderr in the CLI) for ``total`` steps; yields its ``step``."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(description, total=total)

        def step(
            n: int = 1, *, completed: int | None = None, description: str | None = None
        ) -> None:
            if completed is not None:
                progress.update(task, completed=completed, description=description)
            else:
                progress.update(task, advance=n, description=description)

        yield step
