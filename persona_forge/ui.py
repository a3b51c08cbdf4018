"""What the user sees: rich progress bars on long loops and a summary table per command.

Progress and summaries go to stderr so that stdout stays clean for --json output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

_state = {"verbosity": 0}
console = Console(stderr=True)
stdout = Console()


def set_verbosity(level: int) -> None:
    _state["verbosity"] = level
    console.quiet = level < 0
    quiet_libraries(level <= 0)


def quiet_libraries(quiet: bool = True) -> None:
    """Hide the libraries' own progress bars and info logs; ours say what matters."""
    import os

    if quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import sys

        import logging

        # bitsandbytes warns on import that a GPU kernel package is missing: true, and not news on a CPU.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        if "transformers" in sys.modules:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()


def verbosity() -> int:
    return _state["verbosity"]


class _RateColumn(TextColumn):
    def __init__(self):
        super().__init__("")

    def render(self, task):  # items per second, as the user counts them
        from rich.text import Text

        elapsed = task.finished_time if task.finished else task.elapsed
        speed = task.completed / elapsed if elapsed else None

        return Text(f"{speed:,.1f}/s" if speed else "-/s", style="progress.data.speed")


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A progress bar (done/total, rate, ETA); yields advance(n=1)."""
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), _RateColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=console.quiet) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def summary(title: str, rows: Mapping[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, _fmt(value))
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def info(message: str) -> None:
    console.print(message)


def debug(message: str) -> None:
    if _state["verbosity"] > 0:
        console.print(f"[dim]{message}[/dim]")
