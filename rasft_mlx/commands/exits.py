"""How a command ends: an error the user can fix (one line naming it, exit 2), an interruption
(what was kept and how to go on, the signal's exit code), or a warning beside its output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console()
error_console = Console(stderr=True)


def fail(error: Exception) -> NoReturn:
    # Text, not markup: messages quote user input such as "[0, 1]"; soft_wrap keeps paths whole.
    error_console.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
    raise typer.Exit(code=2)


def stopped(headline: str, detail: str, code: int) -> NoReturn:
    """Report an interrupted command (what it kept, how to go on); exit with the signal's code."""
    console.print(Text.assemble((headline, "bold yellow"), detail), soft_wrap=True)
    raise typer.Exit(code=code)


def warn(warning: str | None) -> None:
    if warning:
        error_console.print(Text.assemble(("warning: ", "bold yellow"), warning), soft_wrap=True)


@contextmanager
def stopping_cleanly(kept: str) -> Iterator[None]:
    """A long command outside training (an evaluation, a plan's probes): its phases show
    progress, and the first SIGINT/SIGTERM ends it within seconds with one line saying what was
    kept (`kept`); the exit code is the signal's (130, 143). A second signal ends it at once."""
    from rasft_mlx.console.progress import PhaseInterrupted
    from rasft_mlx.training.stop_signals import interruptible

    signals = None
    try:
        with interruptible(console) as signals:
            yield
    except (PhaseInterrupted, KeyboardInterrupt) as interruption:
        during = f" during {interruption}" if isinstance(interruption, PhaseInterrupted) else ""
        stopped(f"interrupted{during}", kept, signals.exit_code if signals else 130)
