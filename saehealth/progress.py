"""A rich progress bar in tokens for the pass (the replay, or the read of an activation cache)."""

from __future__ import annotations

import time
from collections.abc import Callable


class progress:
    """A rich progress bar in tokens with tokens/s and ETA; silent without a console."""

    def __init__(self, console, total_tokens: int, label: str = "replaying"):
        self.console = console
        self.total = total_tokens
        self.label = label

    def __enter__(self) -> Callable[[int], None]:
        if self.console is None:
            return lambda n: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{self.label}[/]"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("replay", total=self.total, rate="")
        self.started = time.perf_counter()

        def advance(n: int) -> None:
            self.progress.advance(self.task, n)
            done = self.progress.tasks[0].completed
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, rate=f"{rate:,.0f} tok/s")

        return advance

    def __exit__(self, *exc):
        if self.console is not None:
            self.progress.__exit__(*exc)
        return False
